"""Inference time of trained models against the dense ``torch.nn`` cell at the same shapes.

    python benchmarks/trained_inference.py RUN_DIR... [--batches 1,test] [--threads default,1]
        [--sequences 8] [--repeats 5] [--out FILE.csv]

For each run directory (an ``adaptrnn train`` output: config.yaml and checkpoints/best, or
last) the model is loaded with its trained weights, the run's own test inputs are drawn from
its task, and the recurrent stack is timed in eval mode under ``torch.no_grad()`` on those
inputs along three paths:

- ``fast``: the model as shipped (``impl="auto"``: the fast path wherever it applies);
- ``reference``: the same weights through the readable reference loop (``impl="reference"``);
- ``torch.nn``: ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` with the same input size, hidden size and
  layers (random weights: the dense cost does not depend on them).

Batches: ``1`` streams ``--sequences`` test sequences one at a time, each cut to its valid
length (every path then computes only valid steps); ``test`` is one batch of the run's
``eval_batch_size`` (``torch.nn`` then computes the padded steps too, as it would in use). Any
integer is a batch of that size. Only the recurrent stack is timed: the embedding of token
tasks is applied once beforehand and the linear head (the same for every path) is left out.

Each time is the fastest of ``--repeats`` calls after one warm-up, the paths timed in
alternation. The CSV has one row per run x batch x threads x path: milliseconds per sequence,
the ratio to ``torch.nn`` in the same setting, and the trained model's computation on those
inputs as its own statistics count it: ``updates_fraction`` (updates per valid step as in
``result.json``: Skip the fraction of steps, SA of neurons, VC d_t/D, ACT ponder steps per
input) and ``flops_fraction`` (counted multiply-adds over the dense count). Those are counts,
printed beside the measured times; the measured ratio is the only speed claim.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from adaptrnn.bench import TORCH_NN, parse_threads
from adaptrnn.config import ConfigError
from adaptrnn.fast import native
from adaptrnn.runs import load_run

COLUMNS = (
    "run task model cell layers input_size hidden batch sequences mean_length threads path ms_per_seq "
    "ratio_to_torch_nn updates_fraction flops_fraction native load_average"
).split()
PATHS = ("fast", "reference", "torch.nn")


def parse_batches(text: str) -> list[str]:
    """``1,test``-style batch sizes: positive integers or ``test`` (the run's eval batch size)."""
    items = [item.strip() for item in text.split(",")]
    for item in items:
        if item != "test" and not (item.isdigit() and int(item) > 0):
            raise SystemExit(f"--batches: {item!r} is not 'test' or a positive integer")
    return items


def fastest_ms(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """The fastest of ``repeats`` calls of each function in milliseconds, timed in alternation
    after one warm-up call each (a drift of the machine's speed then touches every path alike)."""
    best = dict.fromkeys(fns, float("inf"))
    with torch.no_grad():
        for fn in fns.values():
            fn()
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                best[name] = min(best[name], (time.perf_counter() - start) * 1e3)
    return best


def inputs(model, task, batch: str, eval_batch_size: int, sequences: int) -> list[tuple[Tensor, Tensor | None]]:
    """The recurrent stack's inputs: a list of (x (B, T, C) batch-first, lengths or None).

    Batch ``1``: ``sequences`` test sequences, one per entry, each cut to its valid length.
    """
    size = sequences if batch == "1" else eval_batch_size if batch == "test" else int(batch)
    data = next(iter(task.eval_batches("test", size)))
    with torch.no_grad():
        x = model.embedding(data.x) if model.embedding is not None else data.x
    if batch != "1":
        return [(x, data.lengths)]
    lengths = data.lengths.tolist() if data.lengths is not None else [x.shape[1]] * x.shape[0]
    return [(x[i : i + 1, : lengths[i]], None) for i in range(x.shape[0])]


def computation(rnn, parts: list[tuple[Tensor, Tensor | None]]) -> tuple[float, float]:
    """(updates per valid step, counted multiply-adds over the dense count) of ``rnn`` on ``parts``."""
    updates = flops = valid = 0.0
    with torch.no_grad():
        for x, lengths in parts:
            _, _, stats = rnn(x, lengths=lengths)
            updates += float(stats.updates.sum())
            flops += float(stats.flops.sum())
            valid += float(lengths.sum()) if lengths is not None else x.shape[0] * x.shape[1]
    return updates / valid, flops / (valid * sum(rnn.dense_step_macs()))


def measure_run(
    run_dir: str | Path,
    batches: list[str],
    threads: list[int],
    sequences: int = 8,
    repeats: int = 5,
) -> list[dict[str, Any]]:
    """Every row (batch x threads x path) of one run; see the module docstring."""
    default_threads = torch.get_num_threads()
    model, task, config, _, _ = load_run(run_dir, device="cpu")
    torch.set_num_threads(default_threads)  # load_run applies the run's `threads` setting
    rnn = model.rnn
    cell, layers, hidden, in_size = rnn.cell, rnn.num_layers, rnn.hidden_size, rnn.input_size
    torch.manual_seed(0)
    dense = TORCH_NN[cell](in_size, hidden, num_layers=layers, batch_first=True).eval()
    impl = rnn.options.get("impl")
    base = {"run": Path(run_dir).name, "task": config.task, "model": config.model, "cell": cell}
    base.update(layers=layers, input_size=in_size, hidden=hidden, native=native.library() is not None)
    rows = []
    try:
        for batch in batches:
            parts = inputs(model, task, batch, config.eval_batch_size, sequences)
            count = sum(x.shape[0] for x, _ in parts)
            steps = sum(float(lengths.sum()) if lengths is not None else x.numel() / x.shape[2] for x, lengths in parts)

            def call(path: str, parts=parts) -> None:
                for x, lengths in parts:
                    if path == "torch.nn":
                        dense(x)
                    else:
                        if impl is not None:
                            rnn.options["impl"] = "auto" if path == "fast" else "reference"
                        rnn(x, lengths=lengths)

            for count_threads in threads:
                torch.set_num_threads(count_threads)
                load = " ".join(f"{v:.2f}" for v in os.getloadavg())
                ms = fastest_ms({path: lambda p=path: call(p) for path in PATHS}, repeats)
                for path in PATHS:
                    if path == "torch.nn":
                        fraction = (1.0, 1.0)
                    else:
                        if impl is not None:
                            rnn.options["impl"] = "auto" if path == "fast" else "reference"
                        fraction = computation(rnn, parts)
                    rows.append(
                        {
                            **base,
                            "batch": parts[0][0].shape[0],
                            "sequences": count,
                            "mean_length": steps / count,
                            "threads": count_threads,
                            "path": path,
                            "ms_per_seq": ms[path] / count,
                            "ratio_to_torch_nn": ms[path] / ms["torch.nn"],
                            "updates_fraction": fraction[0],
                            "flops_fraction": fraction[1],
                            "load_average": load,
                        }
                    )
    finally:
        if impl is not None:
            rnn.options["impl"] = impl
        torch.set_num_threads(default_threads)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    """One line per run x batch x threads: each path's ratio to torch.nn and ms/seq, and the counts."""
    groups: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["run"], r["model"], r["batch"], r["threads"]), {})[r["path"]] = r
    print(f"{'run':28} {'model':16} {'batch':>5} {'thr':>3}  {'fast':>17} {'reference':>17} {'torch.nn':>9}  counted")
    for (run, model, batch, thr), paths in groups.items():
        fast, ref, base = paths["fast"], paths["reference"], paths["torch.nn"]
        cells = [f"{p['ratio_to_torch_nn']:6.2f}x {p['ms_per_seq']:7.3f}ms" for p in (fast, ref)]
        counted = f"updates {fast['updates_fraction']:.3f}, FLOPs {fast['flops_fraction']:.3f}"
        line = f"{run[:28]:28} {model:16} {batch:>5} {thr:>3}  {cells[0]:>17} {cells[1]:>17}"
        print(f"{line} {base['ms_per_seq']:7.3f}ms  {counted}")


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories (adaptrnn train --out)")
    parser.add_argument("--batches", default="1,test", help="comma-separated: 1 (streaming), test, or sizes")
    parser.add_argument("--threads", default="default,1", help="comma-separated thread counts; default = torch's")
    parser.add_argument("--sequences", type=int, default=8, help="sequences streamed one at a time at batch 1")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per path; the fastest is kept")
    parser.add_argument("--out", help="write the rows to this CSV file")
    args = parser.parse_args(argv)
    if args.sequences < 1 or args.repeats < 1:
        raise SystemExit("--sequences and --repeats must be >= 1")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads by default; load average {os.getloadavg()}")
    rows = []
    try:
        batches, threads = parse_batches(args.batches), parse_threads(args.threads, torch.get_num_threads())
        for run in args.runs:
            rows += measure_run(run, batches, threads, args.sequences, args.repeats)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_table(rows)
    if args.out:
        write_csv(rows, args.out)
        print(f"wrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
