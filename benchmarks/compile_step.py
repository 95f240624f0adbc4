"""One batched LSTM step at (B, H) = (256, 110): eager PyTorch vs ``torch.compile`` vs the native
one-call element-wise cell (``adaptrnn.fast.native.pointwise``), one thread.

Run: ``python benchmarks/compile_step.py`` (compiles two functions first: ~45 s on a loaded
2-core machine). Prints the compile time and median microseconds per call.
"""

import time

import torch

from adaptrnn.cells import pointwise
from adaptrnn.fast import native

torch.set_num_threads(1)
n, d = 256, 110
gx, gh = torch.randn(n, 4 * d), torch.randn(n, 4 * d)
s = torch.randn(n, 2, d)
w = torch.randn(d, 4 * d) * 0.1


def step(gx, s):
    """The recurrent product and the element-wise cell, as the batched fast paths run them."""
    return pointwise("lstm", gx, torch.mm(s[:, 0], w), s)


def native_step(gx, s):
    return native.pointwise("lstm", gx, torch.mm(s[:, 0], w), s)


def median_us(fn, calls: int = 300) -> float:
    with torch.no_grad():
        for _ in range(20):
            fn()
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return sorted(times)[calls // 2] * 1e6


start = time.perf_counter()
compiled_cell = torch.compile(lambda gx, gh, s: pointwise("lstm", gx, gh, s))
compiled_step = torch.compile(step)
with torch.no_grad():
    compiled_cell(gx, gh, s)
    compiled_step(gx, s)
print(f"compile time {time.perf_counter() - start:.1f} s")
cell = [median_us(f) for f in (lambda: pointwise("lstm", gx, gh, s), lambda: compiled_cell(gx, gh, s))]
cell.append(median_us(lambda: native.pointwise("lstm", gx, gh, s)))
print("element-wise cell: eager {:.0f} us, compiled {:.0f} us, native {:.0f} us".format(*cell))
steps = [median_us(f) for f in (lambda: step(gx, s), lambda: compiled_step(gx, s), lambda: native_step(gx, s))]
print("step (mm + cell): eager {:.0f} us, compiled {:.0f} us, native cell {:.0f} us".format(*steps))
