"""``torch.nn.LSTM`` forward + backward at (128, T, 1, 110) with subnormal floats kept and flushed.

    python benchmarks/subnormal_backward.py

Gradients that vanish back through T steps become subnormal; CPU arithmetic on them is slow
(docs/speed.md, "Long sequences: subnormal gradients").
"""

import torch

from adaptrnn import bench

torch.set_num_threads(1)
lstm = torch.nn.LSTM(1, 110, batch_first=True)
cpu = torch.device("cpu")
for flush in (False, True):
    torch.set_flush_denormal(flush)
    for steps in (100, 200, 784):
        x = torch.randn(128, steps, 1)
        ms = bench.timed(lambda x=x: lstm(x)[0][:, -1], True, cpu, repeats=3, warmup=1)
        print(f"flush_denormal={flush}: T={steps}: forward + backward {ms / 1e3:.2f} s")
