"""Where a batched fast path spends its time: ``torch.profiler`` over one call, one thread.

Run: ``python benchmarks/profile_fast.py skip 1.0`` (method, computation fraction f as in
``adaptrnn bench``; shape (256, 50, 2, 110), LSTM). The native calls (ctypes) do not appear
as operators; the table lists the ATen operators around them.
"""

import sys

import torch

import adaptrnn as ar
from adaptrnn import bench

torch.set_num_threads(1)
B, T, I, H = 256, 50, 2, 110
x = torch.randn(T, B, I)
method, fraction = sys.argv[1], float(sys.argv[2])
m = ar.METHODS[method]("lstm", I, H).eval()
state = bench.controlled(m, fraction, B, x)
with torch.no_grad():
    m(x, state)
    with torch.profiler.profile() as prof:
        m(x, state)
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
