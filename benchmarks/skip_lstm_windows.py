"""Skip RNN LSTM at f = 1: its two kinds of windows against nn.LSTM, to place ``LSTM_WINDOW_MAX_MACS``.

    python benchmarks/skip_lstm_windows.py [--shapes "256,50,2,110;32,200,1,128"] [--threads 1]

For each (B, T, I, H) the fast path (gate fixed by ``adaptrnn.bench.controlled`` at f = 1, so
every step updates every row) runs with whole-sequence windows that recover c
(``speculate.LstmWindow``) and with one-step windows (``speculate.stepwise``), each alternated
with ``nn.LSTM`` (``--repeats`` each after 2 warm-up calls). Printed: the ratios of the medians
to ``nn.LSTM``, of wall clock and of process CPU time, and the dense step's multiply-adds (the
quantity the rule compares); then the recovered window's two parts over the whole sequence, each
alternated with ``nn.LSTM`` (CPU time): the whole-sequence call and the recovery of c from its h.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import adaptrnn as ar
import adaptrnn.fast.skip as fast_skip
from adaptrnn.bench import controlled
from adaptrnn.fast.speculate import LstmWindow, step_macs


def once(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def alternated(ours, base, repeats: int) -> tuple[float, float]:
    """Ratios of the medians (wall clock, CPU time) of ``ours()`` to ``base()``, called in alternation."""
    times = [], []
    for _ in range(repeats):
        times[0].append(once(ours))
        times[1].append(once(base))
    return tuple(statistics.median(t[i] for t in times[0]) / statistics.median(t[i] for t in times[1]) for i in (0, 1))


def time_shape(shape: str, repeats: int) -> None:
    batch, seq_len, in_size, hidden = (int(v) for v in shape.split(","))
    torch.manual_seed(0)
    x = torch.randn(seq_len, batch, in_size)
    lstm = torch.nn.LSTM(in_size, hidden)
    module = ar.METHODS["skip"]("lstm", in_size, hidden).eval()
    state = controlled(module, 1.0, batch, x)
    row = [f"{shape:>14} ({step_macs(module, batch) / 1e6:5.2f} M MACs/step)"]
    for kind, limit in (("recovered", float("inf")), ("stepwise", 0.0)):
        fast_skip.LSTM_WINDOW_MAX_MACS = limit
        for _ in range(2):
            module(x, state), lstm(x)
        wall, cpu = alternated(lambda: module(x, state), lambda: lstm(x), repeats)
        row.append(f"{kind} wall {wall:.2f}x cpu {cpu:.2f}x")
    base = 1e3 * statistics.median(once(lambda: lstm(x))[0] for _ in range(repeats))
    print(" | ".join(row) + f" (nn.LSTM {base:.1f} ms)", flush=True)
    parts = LstmWindow(module)
    start = module.initial_state(batch, x).cell
    outs = parts.top.sequence(x, start)[0]
    calls = {
        "sequence call": lambda: parts.top.sequence(x, start),
        "c recovery": lambda: parts.cells(x, start[-1, :, 0], start[-1, :, 1], outs),
    }
    row = [f"{'':>14} parts, cpu"]
    for name, call in calls.items():
        row.append(f"{name} {alternated(call, lambda: lstm(x), repeats)[1]:.2f}x")
    print(" | ".join(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="256,50,2,110;128,50,2,110;64,50,2,110;32,200,1,128")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.threads} thread(s), torch {torch.__version__}")
    with torch.no_grad():
        for shape in args.shapes.split(";"):
            time_shape(shape, args.repeats)


if __name__ == "__main__":
    main()
