"""VCRNN batched inference: computing up to the batch's largest d_t (what ``adaptrnn.fast.vc``
does) against grouping the rows by d_t (one sub-matrix product per distinct d_t).

    PYTHONPATH=src python benchmarks/vc_strategies.py

The grouping variant is written here, not in the library, because it measured slower at every
shape tried (docs/speed.md); it covers one layer without padding, enough for the comparison.
"""

import torch

import adaptrnn as ar
from adaptrnn import bench
from adaptrnn.cells import GATES, pointwise
from adaptrnn.fast import vc as fvc
from adaptrnn.fast.weights import gate_major, neuron_major, project
from adaptrnn.methods.vc import active_dims

torch.set_num_threads(1)


def group_forward(module, x):
    """Hard-mode VCRNN with rows grouped by d_t. x: (T, B, I) -> out (T, B, D)."""
    seq_len, batch = x.shape[:2]
    gates, size = GATES[module.cell], module.hidden_size
    w = neuron_major(module, transpose=True)[0]
    blocks = fvc.SubMatrices(w, gates)
    u, v, b = module.scheduler_h_l0, module.scheduler_x_l0, module.scheduler_bias_l0
    xs = x @ v
    s = module.initial_state(batch, x).cell[0].clone()
    outs = []
    for t in range(seq_len):
        m = torch.sigmoid(s[:, 0] @ u + xs[t] + b) * float(module.options["scale"])
        d = active_dims(m.clamp(max=1.0), size)
        for dv in torch.unique(d).tolist():
            rows = (d == dv).nonzero().squeeze(1)
            ih, hh, bi, bh = blocks[dv]
            sr = s.index_select(0, rows)
            gx = gate_major(project(x[t].index_select(0, rows), ih, bi), gates)
            gh = gate_major(project(sr[:, 0, :dv], hh, bh), gates)
            new = pointwise(module.cell, gx, gh, sr[:, :, :dv])
            sr[:, :, :dv] = new
            s.index_copy_(0, rows, sr)
        outs.append(s[:, 0].clone())
    return torch.stack(outs)


def t(fn, n=5):
    return bench.timed(fn, False, torch.device("cpu"), n, warmup=1)


for B, T, I, H in ((256, 50, 2, 110), (32, 200, 1, 128)):
    for spread in (0.5, 4.0):
        torch.manual_seed(0)
        m = ar.VCRNN("lstm", I, H, scale=0.6).eval()
        with torch.no_grad():
            m.scheduler_h_l0.mul_(spread)
            m.scheduler_x_l0.mul_(spread)
            x = torch.randn(T, B, I)
            ref = m(x)
            g = group_forward(m, x)
            assert torch.allclose(g, ref[0], atol=1e-5)
            d = ref[2].updates * H
            distinct = sum(len(torch.unique(d[:, k])) for k in range(T)) / T
            fast_ms, group_ms = t(lambda m=m, x=x: m(x)), t(lambda m=m, x=x: group_forward(m, x))
            print(
                f"B={B} T={T} H={H} spread={spread}: mean d/D={ref[2].updates.mean():.2f}, "
                f"distinct d per step={distinct:.1f}, max-d {fast_ms:.1f} ms, group {group_ms:.1f} ms"
            )
