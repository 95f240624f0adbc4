"""Skip RNN LSTM at f = 1: its two kinds of windows against nn.LSTM, to place ``LSTM_WINDOW_MAX_MACS``.

    python benchmarks/skip_lstm_windows.py [--shapes "256,50,2,110;32,200,1,128"] [--threads 1]

For each (B, T, I, H) the fast path (gate fixed by ``adaptrnn.bench.controlled`` at f = 1, so
every step updates every row) runs with whole-sequence windows that recover c
(``speculate.LstmWindow``) and with one-step windows (``speculate.stepwise``), each alternated
with ``nn.LSTM`` (``--repeats`` each after 2 warm-up calls). Printed: the ratios of the medians
to ``nn.LSTM``, of wall clock and of process CPU time, and the dense step's multiply-adds (the
quantity the rule compares).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import adaptrnn as ar
import adaptrnn.fast.skip as fast_skip
from adaptrnn.bench import controlled
from adaptrnn.fast.speculate import step_macs


def once(fn) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


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
                ours, base = [], []
                for _ in range(args.repeats):
                    ours.append(once(lambda m=module, x=x, s=state: m(x, s)))
                    base.append(once(lambda f=lstm, x=x: f(x)))
                ratio = [statistics.median(t[i] for t in ours) / statistics.median(t[i] for t in base) for i in (0, 1)]
                ms = 1e3 * statistics.median(t[0] for t in base)
                row.append(f"{kind} wall {ratio[0]:.2f}x cpu {ratio[1]:.2f}x (nn.LSTM {ms:.1f} ms)")
            print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
