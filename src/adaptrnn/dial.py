"""``adaptrnn dial``: turn a trained model's compute knob at inference, without retraining.

Each method has one knob that trades accuracy for computation at inference:
- Skip RNN ``threshold``: u_t = 1[ũ_t > threshold]; above 0.5 it updates less often (eq. 6
  gives N_skip = floor(threshold / Δũ)).
- SA-RNN ``threshold``: a neuron updates when ũ > threshold; higher, fewer neurons.
- VCRNN ``scale``: multiplies the scheduler's m_t, so d_t = ceil(scale · m_t · D).
- ACT ``epsilon`` (halt when Σh ≥ 1 - ε; larger, fewer ponder steps) or ``max_steps`` (the cap M).
- random-skip ``skip_prob``.

For each value the run's best checkpoint is evaluated (task metric, updates, counted FLOPs) and
its inference is timed (median ms per sequence, eval mode, default fast paths), and one CSV row
is written; a PNG plots the metric against the computation and the time.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

from .config import ConfigError
from .console import output_path
from .evaluation import evaluate_split, measure_inference
from .options import check_option
from .runs import load_run

KNOBS: dict[str, tuple[str, tuple[float, ...]]] = {
    "SkipRNN": ("threshold", (0.5, 0.6, 0.7, 0.8, 0.9)),
    "RandomSkipRNN": ("skip_prob", (0.0, 0.25, 0.5, 0.75, 0.9)),
    "SARNN": ("threshold", (0.5, 0.6, 0.7, 0.8, 0.9)),
    "VCRNN": ("scale", (1.0, 0.8, 0.6, 0.4, 0.2)),
    "ACTRNN": ("epsilon", (0.01, 0.05, 0.1, 0.2, 0.4)),
}
INTEGER_KNOBS = ("max_steps",)
COLUMNS = (
    "task model knob knob_value metric value updates_fraction flops_per_sequence dense_flops_per_sequence "
    "ms_per_sequence time_batch split device"
).split()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run directory (written by adaptrnn train)")
    parser.add_argument("--knob", help="the option to turn (default: the method's, see adaptrnn.dial)")
    parser.add_argument("--values", help="comma-separated knob values (default: the method's sweep)")
    parser.add_argument("--out", help="CSV file (default RUN/dial.csv); the plot goes next to it as .png")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--max-batches", type=int, help="evaluate the metric on at most this many batches")
    parser.add_argument("--time-batch", type=int, default=1, help="sequences per timed call (default 1: latency)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per value (median reported)")


def run(args: argparse.Namespace) -> int:
    for flag in ("max_batches", "time_batch", "repeats"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    model, task, config, device, _ = load_run(args.run, args.device)
    rnn = model.rnn
    default_knob, default_values = KNOBS.get(type(rnn).__name__, (None, ()))
    knob = args.knob or default_knob
    if knob is None or knob not in rnn.options:
        valid = ", ".join(k for k in ("threshold", "scale", "epsilon", "max_steps", "skip_prob") if k in rnn.options)
        raise ConfigError(f"model {config.model!r} has no compute knob {knob!r}; valid: {valid or 'none (dense)'}")
    values = parse_values(args.values, type(rnn), knob) if args.values else list(default_values)
    rows = sweep(model, task, config, device, knob, values, args)
    out = output_path(args.out) if args.out else Path(args.run) / "dial.csv"
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out.with_suffix(".png"))
    for r in rows:
        print(
            f"{knob}={r['knob_value']:<6g} {r['metric']}={r['value']:.4g} updates={r['updates_fraction']:.3f} "
            f"flops={r['flops_per_sequence'] / r['dense_flops_per_sequence']:.3f} of dense "
            f"time={r['ms_per_sequence']:.3f} ms/sequence"
        )
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def parse_values(text: str, cls: type, knob: str) -> list[float | int]:
    """``--values`` as numbers, each checked against the option's allowed range (``adaptrnn.options``)."""
    values = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            raise ConfigError(f"--values: {item.strip()!r} is not a number (give e.g. --values 0.5,0.7,0.9)") from None
        if knob in INTEGER_KNOBS and value.is_integer():
            value = int(value)
        try:
            check_option(cls, knob, value)
        except ValueError as err:
            raise ConfigError(f"--values: {err}") from None
        values.append(value)
    return values


def sweep(model, task, config, device, knob: str, values: list, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per knob value: metric and computation on the split, and measured inference time."""
    rnn = model.rnn
    original = rnn.options[knob]
    rows = []
    try:
        for value in values:
            rnn.options[knob] = value
            metrics = evaluate_split(model, task, args.split, config.eval_batch_size, device, args.max_batches)
            ms, batch = measure_inference(model, task, device, args.time_batch, args.repeats)
            rows.append(
                {
                    "task": config.task,
                    "model": config.model,
                    "knob": knob,
                    "knob_value": value,
                    "metric": task.metric_name,
                    "value": metrics["value"],
                    "updates_fraction": metrics["updates_fraction"],
                    "flops_per_sequence": metrics["flops_per_sequence"],
                    "dense_flops_per_sequence": metrics["dense_flops_per_sequence"],
                    "ms_per_sequence": ms,
                    "time_batch": batch,
                    "split": args.split,
                    "device": str(device),
                }
            )
    finally:
        rnn.options[knob] = original
    return rows


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Metric against counted computation and against measured time, one point per knob value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in (
        (axes[0], "updates_fraction", "updates per step (stats.updates)"),
        (axes[1], "ms_per_sequence", "inference time (ms per sequence)"),
    ):
        xs, ys = [r[key] for r in rows], [r["value"] for r in rows]
        ax.plot(xs, ys, "o-")
        for r, xv, yv in zip(rows, xs, ys, strict=True):
            ax.annotate(f"{r['knob_value']:g}", (xv, yv), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel(rows[0]["metric"] if rows else "metric")
        ax.grid(alpha=0.3)
    if rows:
        fig.suptitle(f"{rows[0]['model']} on {rows[0]['task']}: {rows[0]['knob']} dial")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
