"""VCRNN hard-mode inference on sub-matrices: a step that updates d_t dimensions costs ∝ d_t².

The hard version updates the first d_t dimensions from the first d_t dimensions of h_{t-1}
and all of x_t (METHODS.md §3). With the weights stored neuron-major (``weights.neuron_major``)
the rows needed are the first ``G·d`` of each matrix and the columns of W_hh the first d, so a
step is two products with strided sub-matrices, no copy of the weights. In a batch the blocks
are copied gate-major once per call and d where that is cheap (``SubMatrices``), and a step at
which every row has d_t = D is one ATen RNN call (``aten_step``), or the start of a
speculative window of such steps in one call (``speculate``).

At batch 1 (float32 or float64 on the CPU) the whole loop of a layer runs in C
(``native.vc_layer``), computing the same blocks; at batch > 1 too where torch's BLAS is
found (``native_batch.vc_batch_layer``, the masked blocks below), the loop here being the fallback.

A batch whose rows want different d_t is computed up to the largest d_t with each row's
extra columns of h zeroed and its extra dimensions left unchanged — exactly the reference's
masked step restricted to the first max d_t dimensions (the alternative, grouping rows by
d_t, measured slower: see docs/speed.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cells import GATES
from ..layer import RecurrentState, Stats, valid_float
from ..methods.vc import active_dims
from . import native, native_batch
from .aten_step import AtenStep
from .speculate import StepThreads, Window, step_macs, window
from .weights import gate_major, neuron_major, project, stack_step, transposed


def vc_forward(module, x: Tensor, state: RecurrentState, valid: Tensor | None) -> tuple[Tensor, RecurrentState, Stats]:
    """Hard-mode VCRNN over time-major x (T, B, I); same outputs, state and stats as the reference."""
    seq_len, batch = x.shape[:2]
    gates, size = GATES[module.cell], module.hidden_size
    weight = valid_float(valid, seq_len, batch, x)  # (T, B)
    target = float(module.options["target"])
    use_native = batch == 1 and native.applies(module, state.cell)
    finals, fractions, schedules = [], [], []
    flops, deviation = x.new_zeros(batch), x.new_zeros(batch)
    layer_in = x  # (T, B, I)
    for layer, (w, full) in enumerate(zip(neuron_major(module, transpose=True), transposed(module), strict=True)):
        in_size = layer_in.shape[-1]
        x_score = module.input_scores(layer, layer_in)  # (T, B) the scheduler's input term, for all steps at once
        s = state.cell[layer].clone()  # (B, K, D)
        if use_native:  # batch 1: the whole loop in C
            s = s.contiguous()
            steps = seq_len if valid is None else int(valid[:, 0].sum())
            out, ms, ds = native.vc_layer(module, layer, layer_in[:, 0], steps, x_score[:, 0], s[0])
            out[steps:] = s[0, 0]  # padded steps keep the state
            out, ms, ds = out.unsqueeze(1), ms.unsqueeze(1), ds.to(x.dtype).unsqueeze(1)
        elif native_batch.batch_applies(module, s):  # a batch: the whole loop in C, products in torch's BLAS
            s = s.contiguous()
            out, ms, ds = native_batch.vc_batch_layer(module, layer, layer_in, x_score, valid, s)
            ds = ds.to(x.dtype)
        else:
            out, ms, ds = _steps(module, layer, layer_in, x_score, SubMatrices(w, full, gates), s, valid)
        ds = ds * weight
        flops = flops + (gates * ds * (in_size + ds) + weight * (size + in_size)).sum(0)
        fractions.append(ds / size)
        schedules.append(ms * weight)
        deviation = deviation + ((ms - target).abs() * weight).sum(0) / weight.sum(0).clamp(min=1)
        finals.append(s)
        layer_in = out
    updates = torch.stack(fractions).mean(0).t()  # (B, T)
    cost = module.options["penalty"] * (deviation / module.num_layers).mean()
    extras = {"scheduler": torch.stack(schedules).mean(0).t()}
    return layer_in, RecurrentState(torch.stack(finals)), Stats(updates, cost, flops, extras)


def _steps(module, layer: int, layer_in: Tensor, x_score: Tensor, blocks: SubMatrices, s: Tensor, valid) -> tuple:
    """One layer's time loop in PyTorch. layer_in (T, B, C); x_score (T, B); s (B, K, D) updated in place.

    Returns out (T, B, D), m (T, B) and d (T, B).
    """
    seq_len, batch = layer_in.shape[:2]
    size, scale = module.hidden_size, float(module.options["scale"])
    u, b = (getattr(module, f"scheduler_{n}_l{layer}") for n in ("h", "bias"))
    dims = torch.arange(size, device=layer_in.device)
    out = layer_in.new_empty(seq_len, batch, size)
    ms, ds = layer_in.new_empty(seq_len, batch), layer_in.new_empty(seq_len, batch)
    dense = AtenStep(module, range(layer, layer + 1))
    state = s  # the rows' state, replaced by each full step's output, copied back into s at the end
    spans, t = Window(), 0
    with StepThreads(step_macs(module, batch), layer_in.device) as threads:
        while t < seq_len:
            m = torch.sigmoid(state[:, 0] @ u + x_score[t] + b)  # (B,) m_t
            if scale != 1.0:
                m = (m * scale).clamp(max=1.0)
            d = active_dims(m, size)  # (B,)
            if valid is not None:
                d = torch.where(valid[t], d, 0)
            low, top = torch.stack(torch.aminmax(d)).tolist()  # one host read
            full = top == size and low == top  # every row updates every dimension
            steps = spans.length(seq_len - t) if full else 0
            if steps >= 2:  # try a dense window from t
                with threads.wide():
                    inputs = (layer_in, x_score, valid, u, b)
                    t, state = _window(dense, spans, inputs, (out, ms, ds), t, steps, state, m)
                continue
            if full:  # a dense step
                state = stack_step(module.cell, [transposed(module)[layer]], layer_in[t], state.unsqueeze(0))[0]
            elif top:
                mixed = low != top
                h = state[:, 0, :top]
                if mixed:
                    keep = dims[:top] < d.unsqueeze(1)  # (B, top) dimensions each row updates
                    h = h * keep
                gx, gh = blocks.products(top, layer_in[t], h)  # (B, G*top) each, gate-major
                new = native.pointwise(module.cell, gx, gh, state[:, :, :top])  # (B, K, top)
                if mixed:
                    new = torch.where(keep.unsqueeze(1), new, state[:, :, :top])
                state[:, :, :top] = new
            out[t] = state[:, 0]
            ms[t], ds[t] = m, d
            t += 1
    if state is not s:
        s.copy_(state)
    return out, ms, ds


def _window(dense, spans: Window, inputs: tuple, results: tuple, t: int, steps: int, s: Tensor, first) -> tuple:
    """A speculative dense window of ``steps`` steps from t, at which every row has d_t = D
    (``first``: m_t (B,), computed before).

    Step i > 0 of the window is dense iff m from h_{i-1} (the window's own output) gives
    d = D for every valid row. Writes the accepted steps' out, m and d into ``results``;
    returns the next step and the state there (B, K, D).
    """
    layer_in, x_score, valid, u, b = inputs
    out, ms, ds = results
    module = dense.module
    size, scale = module.hidden_size, float(module.options["scale"])
    later = slice(t + 1, t + steps)  # the steps decided from the window's own states
    seen: dict[str, Tensor] = {}

    def check(tops: Tensor) -> Tensor:
        m = torch.sigmoid(tops[:-1, :, 0] @ u + x_score[later] + b)  # (k-1, B) from h_{i-1}
        if scale != 1.0:
            m = (m * scale).clamp(max=1.0)
        seen["m"] = torch.cat([first.unsqueeze(0), m])  # step t's m_t: computed before
        d = active_dims(m, size)
        full = d.eq(size) if valid is None else d.eq(size) & valid[later]
        return torch.cat([full.new_ones(1), full.all(1)])

    outs, accepted, state = window(dense, layer_in[t : t + steps], s.unsqueeze(0), check)
    spans.record(steps, accepted)
    done = slice(t, t + accepted)
    out[done], ms[done], ds[done] = outs[:accepted], seen["m"][:accepted], size  # d_t = D at accepted steps
    return t + accepted, state[0]


class SubMatrices:
    """One layer's weights for the products of a step that updates the first d neurons.

    ``full``: the gate-major transposed weights (``weights.transposed``) for d = D. For d < D
    the upper-left blocks, gate-major: copied once per call and d into contiguous (C, G*d) and
    (d, G*d) blocks while their total size stays within ``BLOCK_BUDGET`` times the layer's
    weights (a step then needs no reordering), else multiplied as strided neuron-major views
    (``weights.neuron_major``, no copy of the weights) with the products reordered per step.
    """

    BLOCK_BUDGET = 2.0

    def __init__(self, weights, full, gates: int) -> None:
        self.weights, self.full, self.gates = weights, full, gates
        self.views: dict[int, tuple] = {}
        self.blocks: dict[int, tuple] = {}
        self.room = self.BLOCK_BUDGET * (full.ih.numel() + full.hh.numel())

    def products(self, d: int, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """x (n, C) and h (n, d) times the first d neurons' gate rows -> gx, gh (n, G*d), gate-major."""
        block = self.blocks.get(d)
        if block is None and (x.shape[1] + d) * self.gates * d <= self.room:
            block = self.blocks[d] = self._block(d)
            self.room -= block[0].numel() + block[1].numel()
        if block is not None:
            ih_t, hh_t, b_ih, b_hh = block
            return project(x, ih_t, b_ih), project(h, hh_t, b_hh)
        ih_t, hh_t, b_ih, b_hh = self[d]
        return gate_major(project(x, ih_t, b_ih), self.gates), gate_major(project(h, hh_t, b_hh), self.gates)

    def _block(self, d: int) -> tuple:
        """The gate-major blocks for the first d neurons, contiguous."""
        ih_t, hh_t, b_ih, b_hh = self.full.ih, self.full.hh, self.full.b_ih, self.full.b_hh
        size = hh_t.shape[0]
        cut = lambda w: w.view(w.shape[0], self.gates, size)[:, :, :d].reshape(w.shape[0], -1)  # noqa: E731
        bias = lambda b: None if b is None else b.view(self.gates, size)[:, :d].reshape(-1)  # noqa: E731
        return cut(ih_t), cut(hh_t[:d]), bias(b_ih), bias(b_hh)

    def __getitem__(self, d: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Neuron-major views: (W_ih^T columns for the first d neurons (C, G*d), W_hh^T block
        (d, G*d), b_ih (G*d,), b_hh (G*d,)); strided, no copies."""
        if d not in self.views:
            w, rows = self.weights, self.gates * d
            cut = lambda b: None if b is None else b[:rows]  # noqa: E731
            self.views[d] = (w.ih[:, :rows], w.hh[:d, :rows], cut(w.b_ih), cut(w.b_hh))
        return self.views[d]
