"""ACT at batch 1 with the thread count switched between calls, as a user's process may do.

    python benchmarks/threads_alternate.py

(B, T, I, H) = (1, 1000, 40, 256), LSTM, eval mode, no_grad; the ponder steps fixed by
``adaptrnn.bench.controlled`` at N = 2, 5 and 10 (f = 0.5, 0.2, 0.1). For each N, one module is
timed at 1, 2, 1 and 2 threads in turn (5 calls each, after one warm-up call, alternated with
``nn.LSTM``), and each round prints its median, ``nn.LSTM``'s and the five calls. The native loop
decides by timing whether its threads pay (the Tuner in ``fast/native.c``); a second two-thread
round as fast as the first shows that the decision recovers after the count changes.
"""

from __future__ import annotations

import statistics
import time

import torch

import adaptrnn as ar
from adaptrnn.bench import controlled


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(1000, 1, 40)
    lstm = torch.nn.LSTM(40, 256).eval()
    for fraction in (0.5, 0.2, 0.1):
        module = ar.ACTRNN("lstm", 40, 256).eval()
        state = controlled(module, fraction, 1, x)
        rounds = []
        for threads in (1, 2, 1, 2):
            torch.set_num_threads(threads)
            with torch.no_grad():
                module(x, state), lstm(x)
                ours, base = [], []
                for _ in range(5):
                    start = time.perf_counter()
                    module(x, state)
                    ours.append((time.perf_counter() - start) * 1e3)
                    start = time.perf_counter()
                    lstm(x)
                    base.append((time.perf_counter() - start) * 1e3)
            mine, theirs = statistics.median(ours), statistics.median(base)
            calls = " ".join(f"{t:.0f}" for t in ours)
            rounds.append(f"{threads} thr {mine:.1f} ms, nn.LSTM {theirs:.1f} ({mine / theirs:.2f}x) [{calls}]")
        print(f"N = {round(1 / fraction)}: " + " | ".join(rounds))


if __name__ == "__main__":
    main()
