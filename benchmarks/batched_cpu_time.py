"""Batched fast paths against ``torch.nn.LSTM`` in process CPU time, for a loaded machine.

``adaptrnn bench`` times wall clock, which on a machine shared with other jobs measures the
waits for a core as much as the code. This script times the same calls (LSTM, one thread,
gates fixed by ``adaptrnn.bench.controlled``) in ``time.process_time``: CPU time of this
process only, so another job's load changes it far less (cache and memory contention remain).
Each row alternates ``nn.LSTM`` and the method 15 times and prints the ratio of the minima
and of the medians.

Run: ``python benchmarks/batched_cpu_time.py [methods] [fractions] [B,T,I,H]``, e.g.
``python benchmarks/batched_cpu_time.py skip,vc,sa,act 1,0.5,0.2,0.1`` (shape (256, 50, 2, 110) by
default; ``... sa 1,0.5,0.2,0.1 1,1000,40,256`` times the batch-1 C loops the same way).
"""

import sys
import time

import torch

import adaptrnn as ar
from adaptrnn import bench

torch.set_num_threads(1)
B, T, I, H = (int(v) for v in sys.argv[3].split(",")) if len(sys.argv) > 3 else (256, 50, 2, 110)
REPEATS = 15
x = torch.randn(T, B, I)
lstm = torch.nn.LSTM(I, H).eval()
methods = sys.argv[1].split(",") if len(sys.argv) > 1 else ["skip", "vc", "sa", "act"]
fractions = [float(f) for f in sys.argv[2].split(",")] if len(sys.argv) > 2 else [1.0]
for method in methods:
    for fraction in fractions:
        m = ar.METHODS[method]("lstm", I, H).eval()
        state = bench.controlled(m, fraction, B, x)
        base, ours = [], []
        with torch.no_grad():
            for _ in range(3):  # warm-up
                lstm(x), m(x, state)
            for _ in range(REPEATS):
                t0 = time.process_time()
                lstm(x)
                t1 = time.process_time()
                m(x, state)
                t2 = time.process_time()
                base.append(t1 - t0)
                ours.append(t2 - t1)
        base.sort(), ours.sort()
        mid = REPEATS // 2
        print(
            f"{method:4} f={fraction:<4g} ratio of minima {ours[0] / base[0]:.2f} "
            f"(nn.LSTM {base[0] * 1e3:.1f} ms, method {ours[0] * 1e3:.1f} ms), "
            f"ratio of medians {ours[mid] / base[mid]:.2f}",
            flush=True,
        )
