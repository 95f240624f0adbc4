"""The fast paths at one thread and at two, timed in alternation in one process.

Run: ``python benchmarks/batched_threads.py [rounds] [B,T,I,H]`` (default 4 and 256,50,2,110; the
batch-1 shape of ``adaptrnn bench`` is 1,1000,40,256). LSTM, eval mode, each method's gate fixed
by ``adaptrnn.bench.controlled`` at f in {1, 0.5, 0.2, 0.1} (ACT: N = 1/f ponder steps). Each
round times the module at one thread and then at two (median of 9 calls after 5 warm-up calls:
the first calls at a new size also pay for the allocator's first page faults); printed are the
medians over the rounds and their ratio, two threads over one (below 1: the second thread helps).
"""

import statistics
import sys
import time

import torch

import adaptrnn as ar
from adaptrnn.bench import controlled


def median_ms(module, state, calls: int = 9) -> float:
    for _ in range(5):
        module(x, state)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        module(x, state)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 4
B, T, I, H = (int(n) for n in (sys.argv[2] if len(sys.argv) > 2 else "256,50,2,110").split(","))
torch.manual_seed(0)
x = torch.randn(T, B, I)
print(f"# (B, T, I, H) = {(B, T, I, H)}, LSTM, torch {torch.__version__}, medians of {rounds} rounds")
with torch.no_grad():
    for method in ("skip", "vc", "sa", "act"):
        for fraction in (1.0, 0.5, 0.2, 0.1):
            module = ar.METHODS[method]("lstm", I, H).eval()
            state = controlled(module, fraction, B, x)
            times: dict[int, list[float]] = {1: [], 2: []}
            for _ in range(rounds):
                for threads in (1, 2):
                    torch.set_num_threads(threads)
                    times[threads].append(median_ms(module, state))
            one, two = statistics.median(times[1]), statistics.median(times[2])
            print(f"{method:4s} f={fraction:<4}: 1 thread {one:6.2f} ms, 2 threads {two:6.2f} ms, 2/1 {two / one:.2f}")
