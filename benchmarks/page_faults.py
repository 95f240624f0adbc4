"""Page faults per call: fresh memory from the C library versus reused memory, in one process.

    python benchmarks/page_faults.py            # this environment, then the tuned one in a child

A call that allocates megabytes (SA-RNN's fast path returns the output and the neuron mask, each
(T, B, D): 5.6 MB at (256, 50, 2, 110)) gets them from glibc's malloc. Above its mmap threshold
(128 KB at first, raised to the size of each freed mmapped block) and its trim threshold (twice
that) the memory goes back to the system when it is freed, so the next call faults it in again,
page by page. Printed for each case: the median of 9 calls (after 3 warm-up calls) and the minor
page faults per call, back to back and with an ``nn.LSTM`` call between (as ``adaptrnn bench``
pairs its calls), at one thread; then ``nn.LSTM`` training (forward + backward) at two threads.
The child repeats it all with ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` raised, so
that freed memory is kept for reuse.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time

import torch

import adaptrnn as ar
from adaptrnn.bench import controlled

TUNED = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 32)}


def timed(fn, between=None) -> tuple[float, float]:
    """(median ms, minor page faults per call) of ``fn``, with ``between`` run after each call."""
    for _ in range(3):
        fn()
    times, faults = [], resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(9):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
        if between is not None:
            between()
    return statistics.median(times), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 9


def main() -> None:
    tuned = all(os.environ.get(k) == v for k, v in TUNED.items())
    print("environment:", "malloc thresholds raised" if tuned else "default malloc")
    torch.manual_seed(0)
    x = torch.randn(50, 256, 2)
    lstm = torch.nn.LSTM(2, 110)
    torch.set_num_threads(1)
    with torch.no_grad():
        for fraction in (0.1, 1.0):
            module = ar.SARNN("lstm", 2, 110).eval()
            state = controlled(module, fraction, 256, x)
            call = lambda m=module, s=state: m(x, s)  # noqa: E731
            alone, paired, again = timed(call), timed(call, lambda: lstm(x)), timed(call)
            rows = (("back to back", alone), ("nn.LSTM between", paired), ("back to back again", again))
            cells = ", ".join(f"{k} {ms:.2f} ms {pf:.0f} faults" for k, (ms, pf) in rows)
            print(f"SA f={fraction:g}, 1 thread: {cells}")
    torch.set_num_threads(2)
    ms, pf = timed(lambda: lstm(x)[0].sum().backward())
    print(f"nn.LSTM forward + backward, 2 threads: {ms:.1f} ms, {pf:.0f} faults per step")
    if not tuned:
        subprocess.run([sys.executable, __file__], env={**os.environ, **TUNED}, check=True)


if __name__ == "__main__":
    main()
