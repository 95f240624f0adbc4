"""The batch-1 C loops at one thread and at two, timed in alternation (LSTM, (T, I, H) = (1000, 40, 256)).

Run: ``python benchmarks/native_threads.py [repeats]`` (default 5). Each method's fast path at
batch 1 runs its whole loop in C (``adaptrnn.fast.native``), which splits a step's products
over ``torch.get_num_threads()`` threads when its timing says that pays. Prints the median
and best milliseconds per sequence for one and two threads. Skip RNN's gate is opened
(f = 1); the others run at their initial gates. Run it once more under
``OMP_WAIT_POLICY=PASSIVE`` to see what OpenMP threads that spin on shared cores cost.
"""

import statistics
import sys
import time

import torch

import adaptrnn as ar

repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
torch.manual_seed(0)
x = torch.randn(1000, 1, 40)
for method in ("skip", "act", "vc", "sa"):
    m = ar.METHODS[method]("lstm", 40, 256).eval()
    if method == "skip":
        with torch.no_grad():
            m.update_bias.fill_(10.0)  # every step an update
    times: dict[int, list[float]] = {1: [], 2: []}
    with torch.no_grad():
        m(x)  # warm-up
        for _ in range(repeats):
            for threads in times:
                torch.set_num_threads(threads)
                start = time.perf_counter()
                m(x)
                times[threads].append(1e3 * (time.perf_counter() - start))
    cells = (f"{t} thread(s): median {statistics.median(v):6.1f} ms, best {min(v):6.1f} ms" for t, v in times.items())
    print(f"{method:5s}", "  ".join(cells))
