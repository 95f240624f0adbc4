"""``adaptrnn bench``: wall-clock speed of every method, side by side with ``torch.nn`` in one process.

For each shape (B, T, I, H) and cell it times ``torch.nn.LSTM/GRU/RNN`` (cuDNN / oneDNN), our
``DenseRNN`` (ATen) and its per-step reference loop, and each adaptive method's reference
loop and fast inference path, in training (forward + backward of ``out.sum() + stats.cost``)
and inference (``torch.no_grad()``, eval mode), at controlled computation fractions f.

How f is controlled (gates fixed by their parameters, so the fraction is exact):
- Skip RNN: ``update_weight = 0``, ``update_bias = logit(Δ)`` with ``Δ = threshold / (1/f - 0.5)``
  (0.9 for f = 1), so every sequence updates once every 1/f steps (eq. 6); the initial ũ of
  each row is set so the rows' phases are spread over the period (at B > 1 some rows are due
  at most steps: the realistic case for batching, not the best one).
- SA-RNN: ``W_u = 0``, ``W_i = 0``, ``update_bias = +1`` for a random f·D of the neurons and -1
  for the others (ũ = 1 or 0); every row updates the same neurons.
- VCRNN: scheduler weights 0, ``bias = logit((round(f·D) - 0.5) / D)``, so d_t = round(f·D).
- ACT: ``halting_weight = 0``, ``σ(halting_bias) = (1 - ε) / (N - 0.5)`` (0.999 for N = 1) with
  N = round(1/f): every input is pondered N times. For ACT "f" is 1/N and the measured
  ``updates_fraction`` is N(t), the dense steps per input (≥ 1).
Training rows use the same settings (VCRNN then runs its soft mask).

CSV columns: device, threads, method, cell, B, T, I, H, mode, path, target_fraction,
updates_fraction (mean of ``stats.updates``), flops_ratio (counted ``stats.flops`` over the
dense count), median_ms, paired_torch_nn_ms (``torch.nn``'s median timed in alternation with
this row), ratio_to_torch_nn (median_ms / paired_torch_nn_ms: same shape, cell, mode, threads).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .cells import CELLS
from .config import ConfigError
from .console import output_path
from .layer import RecurrentBase, RecurrentState
from .methods import METHODS

CPU_SHAPES = ((256, 50, 2, 110), (1, 1000, 40, 256), (32, 200, 1, 128))
CUDA_SHAPES = ((256, 50, 2, 110), (256, 784, 1, 110), (128, 100, 64, 1000), (1, 1000, 40, 256))
QUICK_SHAPES = ((4, 12, 2, 16), (1, 30, 3, 16))
FRACTIONS = (1.0, 0.5, 0.2, 0.1)
ADAPTIVE = ("skip", "act", "vc", "sa")
TORCH_NN = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
COLUMNS = (
    "device threads method cell B T I H mode path target_fraction updates_fraction flops_ratio median_ms "
    "paired_torch_nn_ms ratio_to_torch_nn"
).split()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="write the rows to this CSV file")
    parser.add_argument("--quick", action="store_true", help="a tiny subset that runs in seconds (smoke test)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--cells", default="lstm", help="comma-separated cells (rnn, gru, lstm)")
    parser.add_argument("--methods", default=",".join(ADAPTIVE), help="comma-separated adaptive methods")
    parser.add_argument("--modes", default="train,infer", help="train, infer or both")
    parser.add_argument("--fractions", help="comma-separated computation fractions (default 1,0.5,0.2,0.1)")
    parser.add_argument(
        "--shapes",
        help="semicolon-separated B,T,I,H, e.g. '256,50,2,110;1,1000,40,256' (default on a CPU: "
        + ";".join(",".join(map(str, s)) for s in CPU_SHAPES)
        + ", on a GPU: "
        + ";".join(",".join(map(str, s)) for s in CUDA_SHAPES)
        + "; docs/speed.md explains them)",
    )
    parser.add_argument("--repeats", type=int, help="timed calls per row, median reported (default 7; quick 2)")
    parser.add_argument(
        "--threads",
        default="default",
        help="comma-separated thread counts for torch.set_num_threads, each measured in turn; "
        "'default' is torch's own choice (default: default)",
    )
    parser.add_argument(
        "--paths", default="reference,fast", help="adaptive methods' paths to time: reference, fast or both"
    )


def choices(flag: str, text: str, allowed: tuple[str, ...]) -> list[str]:
    """A comma-separated list of names from ``allowed``; ConfigError naming the flag otherwise."""
    items = [item.strip() for item in text.split(",")]
    bad = [item for item in items if item not in allowed]
    if bad:
        raise ConfigError(f"{flag}: unknown {', '.join(map(repr, bad))}; choose from {', '.join(allowed)}")
    return items


def parse_shapes(text: str) -> list[tuple[int, ...]]:
    """``B,T,I,H;B,T,I,H...`` as tuples of four positive ints."""
    shapes = []
    for item in text.split(";"):
        try:
            shape = tuple(int(v) for v in item.split(","))
        except ValueError:
            shape = ()
        if len(shape) != 4 or min(shape) < 1:
            raise ConfigError(f"--shapes: {item!r} is not B,T,I,H (four positive integers, e.g. 256,50,2,110)")
        shapes.append(shape)
    return shapes


def parse_fractions(text: str) -> list[float]:
    """Computation fractions in (0, 1]."""
    fractions = []
    for item in text.split(","):
        try:
            fraction = float(item)
        except ValueError:
            fraction = math.nan
        if not 0 < fraction <= 1:
            raise ConfigError(f"--fractions: {item.strip()!r} is not a fraction in (0, 1]")
        fractions.append(fraction)
    return fractions


def parse_threads(text: str, default: int) -> list[int]:
    """``default,1``-style thread counts; ``default`` is torch's own choice."""
    counts = []
    for item in text.split(","):
        item = item.strip()
        count = default if item == "default" else int(item) if item.isdigit() else 0
        if count < 1:
            raise ConfigError(f"--threads: {item!r} is not 'default' or a positive integer")
        counts.append(count)
    return counts


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and name != "cuda" and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available")
    return torch.device(name)


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    cells = choices("--cells", args.cells, CELLS)
    methods = choices("--methods", args.methods, ADAPTIVE)
    modes = choices("--modes", args.modes, ("train", "infer"))
    paths = choices("--paths", args.paths, ("reference", "fast"))
    if args.repeats is not None and args.repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {args.repeats}")
    default_threads = torch.get_num_threads()
    threads = parse_threads(str(args.threads), default_threads)
    if args.shapes:
        shapes = parse_shapes(args.shapes)
    else:
        shapes = QUICK_SHAPES if args.quick else CUDA_SHAPES if device.type == "cuda" else CPU_SHAPES
    fractions = parse_fractions(args.fractions) if args.fractions else (1.0, 0.2) if args.quick else FRACTIONS
    repeats = args.repeats or (2 if args.quick else 7)
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads by default; load average {_load()}")
    for count in threads:
        torch.set_num_threads(count)
        for shape in shapes:
            for cell in cells:
                for mode in modes:
                    rows += bench_shape(device, cell, shape, mode, methods, fractions, repeats, paths)
    torch.set_num_threads(default_threads)
    print_table(rows)
    print(f"load average after: {_load()}")
    if args.out:
        with open(output_path(args.out), "w", newline="") as f:
            writer = csv.DictWriter(f, COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {len(rows)} rows to {args.out}")
    return 0


def bench_shape(device, cell, shape, mode, methods, fractions, repeats, paths=("reference", "fast")) -> list[dict]:
    """Every row of one (cell, shape, mode): torch.nn first, then ours, with ratios to torch.nn."""
    batch, seq_len, in_size, hidden = shape
    torch.manual_seed(0)
    x = torch.randn(seq_len, batch, in_size, device=device)
    train = mode == "train"
    base = {"device": device_name(device), "threads": torch.get_num_threads(), "cell": cell, "mode": mode}
    base.update(B=batch, T=seq_len, I=in_size, H=hidden)
    reference_nn = TORCH_NN[cell](in_size, hidden).to(device)
    rows = [{**base, "method": "dense", "path": "torch.nn", "target_fraction": 1.0, "updates_fraction": 1.0}]
    baseline = lambda: reference_nn(x)[0]  # noqa: E731
    rows[0]["median_ms"] = rows[0]["paired_torch_nn_ms"] = timed(baseline, train, device, repeats)
    dense = METHODS["dense"](cell, in_size, hidden).to(device)
    for path, impl in (("dense", "auto"), ("reference", "reference"))[: 2 if "reference" in paths else 1]:
        dense.options["impl"] = impl
        rows.append({**base, "method": "dense", "path": path, "target_fraction": 1.0, "updates_fraction": 1.0})
        times = timed_pair(lambda m=dense: m(x)[0], baseline, train, device, repeats)
        rows[-1]["median_ms"], rows[-1]["paired_torch_nn_ms"] = times
    for row in rows:
        row["flops_ratio"] = 1.0
    for method in methods:
        for fraction in fractions:
            module = METHODS[method](cell, in_size, hidden).to(device).train(train)
            state = controlled(module, fraction, batch, x)
            for path in ("reference",) if train else [p for p in ("reference", "fast") if p in paths]:
                module.options["impl"] = "reference" if path == "reference" else "auto"
                rows.append(measure(module, x, state, train, device, repeats, baseline))
                rows[-1].update(base, method=method, path=path, target_fraction=fraction)
    for row in rows:
        row["ratio_to_torch_nn"] = row["median_ms"] / row["paired_torch_nn_ms"]
    return rows


def measure(module: RecurrentBase, x: Tensor, state, train: bool, device, repeats: int, baseline) -> dict[str, Any]:
    """Time one module (paired with ``baseline``, see :func:`timed_pair`) and read its
    computation statistics from one extra call."""

    def call() -> Tensor:
        out, _, stats = module(x, state)
        return out.sum() + stats.cost

    median, paired = timed_pair(call, baseline, train, device, repeats)
    with torch.no_grad():
        _, _, stats = module(x, state)
    dense_macs = x.shape[0] * sum(module.dense_step_macs())
    return {
        "updates_fraction": float(stats.updates.mean()),
        "flops_ratio": float(stats.flops.mean()) / dense_macs,
        "median_ms": median,
        "paired_torch_nn_ms": paired,
    }


def timed_pair(fn, baseline, train: bool, device: torch.device, repeats: int) -> tuple[float, float]:
    """Median milliseconds of ``fn`` and of ``baseline`` (torch.nn), timed in alternation.

    On a machine shared with other jobs the speed drifts over seconds; timing each call next
    to a baseline call and taking the ratio of the two medians cancels most of that drift.
    """
    times, base_times = [], []
    for _ in range(repeats):
        times.append(timed(fn, train, device, 1, warmup=0 if times else 2))
        base_times.append(timed(baseline, train, device, 1, warmup=0 if base_times else 1))
        if len(times) >= 3 and sum(times) + sum(base_times) > 3e3:
            break
    return statistics.median(times), statistics.median(base_times)


def timed(
    fn: Callable[[], Tensor], train: bool, device: torch.device, repeats: int, warmup: int = 2, budget_s: float = 3.0
) -> float:
    """Median milliseconds of ``fn`` (with ``.sum().backward()`` when training, under no_grad otherwise).

    At most ``repeats`` timed calls, fewer (at least 3) once they have taken ``budget_s`` seconds,
    so that a slow row (ACT with 10 ponder steps) does not dominate the run.
    """

    def once() -> None:
        if train:
            fn().sum().backward()
        else:
            with torch.no_grad():
                fn()

    times = []
    for i in range(warmup + repeats):
        sync(device)
        start = time.perf_counter()
        once()
        sync(device)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
            if len(times) >= 3 and sum(times) > budget_s * 1e3:
                break
    return statistics.median(times)


def controlled(module: RecurrentBase, fraction: float, batch: int, x: Tensor) -> RecurrentState | None:
    """Fix a module's gate so it computes the fraction f (see the module docstring).

    Returns the state to start from (Skip RNN's phases), or None for the initial state.
    """
    size = module.hidden_size
    name = type(module).__name__
    with torch.no_grad():
        if name == "SkipRNN":
            threshold = float(module.options["threshold"])
            period = max(1, round(1 / fraction))
            delta = threshold / (period - 0.5) if period > 1 else 0.9
            module.update_weight.zero_()
            module.update_bias.fill_(math.log(delta / (1 - delta)))
            first = torch.arange(batch, device=x.device) % period  # the row's first update step
            prob = torch.where(first == 0, 1.0, threshold - (first - 0.5) * delta).to(x.dtype)
            start = module.initial_state(batch, x)
            return RecurrentState(start.cell, {"update_prob": prob, "delta_prob": torch.full_like(prob, delta)})
        if name == "SARNN":
            on = torch.randperm(size)[: round(fraction * size)]
            for layer in range(module.num_layers):
                diag, w_i, bias = module.gate_weights(layer)
                diag.zero_(), w_i.zero_(), bias.fill_(-1.0)
                bias[on] = 1.0
        elif name == "VCRNN":
            m = (max(1, round(fraction * size)) - 0.5) / size
            for layer in range(module.num_layers):
                getattr(module, f"scheduler_h_l{layer}").zero_()
                getattr(module, f"scheduler_x_l{layer}").zero_()
                getattr(module, f"scheduler_bias_l{layer}").fill_(math.log(m / (1 - m)))
        elif name == "ACTRNN":
            steps = max(1, round(1 / fraction))
            h = (1 - float(module.options["epsilon"])) / (steps - 0.5) if steps > 1 else 0.999
            module.halting_weight.zero_()
            module.halting_bias.fill_(math.log(h / (1 - h)))
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def print_table(rows: list[dict[str, Any]]) -> None:
    """One line per (threads, shape, cell, mode, method, path): at each fraction, the ratio to
    torch.nn, the median time and the counted FLOPs as a fraction of the dense count."""
    fractions = sorted({r["target_fraction"] for r in rows}, reverse=True)
    groups: dict[tuple, dict[float, dict[str, Any]]] = {}
    for r in rows:
        key = (r["threads"], r["B"], r["T"], r["I"], r["H"], r["cell"], r["mode"], r["method"], r["path"])
        groups.setdefault(key, {})[r["target_fraction"]] = r
    header = " ".join(f"{f'f={f:g}: ratio ms flops':<27}" for f in fractions)
    print(f"{'thr':>3} {'B,T,I,H':>14} {'cell':4} {'mode':5} {'method':6} {'path':9} {header}")
    for key, by_fraction in groups.items():
        cells = []
        for f in fractions:
            r = by_fraction.get(f)
            text = f"{r['ratio_to_torch_nn']:6.2f}x {r['median_ms']:7.1f} {r['flops_ratio']:6.3f}" if r else ""
            cells.append(f"{text:<27}")
        shape = ",".join(str(v) for v in key[1:5])
        print(f"{key[0]:>3} {shape:>14} {key[5]:4} {key[6]:5} {key[7]:6} {key[8]:9} " + " ".join(cells))


def _load() -> str:
    """The 1, 5 and 15 minute load averages (other processes competing for the cores), if known."""
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except (OSError, AttributeError):
        return "unknown"
