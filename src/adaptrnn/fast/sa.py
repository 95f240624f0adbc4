"""SA-RNN inference that computes only the neurons that update.

At each step the neurons with u = 1 in any row of the batch (the union; at batch 1, the
row's own set) are gathered: their G gate rows of W_ih and W_hh (contiguous in the
neuron-major layout of ``weights.neuron_major``) are selected with one ``index_select``
each and multiplied; every other neuron keeps its state without being touched. Within the
union, a row whose own u is 0 for a neuron keeps that neuron's state, as in the reference.
When the gather would leave out too little work to pay for its own operations (small
batches and hidden sizes, or most neurons active), the step is one masked dense step instead.
A step at which every neuron of every row updates starts a speculative window of such steps
in one ATen call (``speculate``).
At batch 1 (float32 or float64 on the CPU) the whole loop of a layer runs in C
(``native.sa_layer``), computing only the active neurons' rows.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cells import GATES
from ..layer import RecurrentState, Stats, valid_float
from . import native, native_batch
from .aten_step import AtenStep
from .speculate import StepThreads, Window, step_macs, window
from .weights import gate_major, neuron_major, project, stack_step, transposed

# Gathering the active rows adds ~10 tensor operations per step (tens of microseconds from
# Python); it pays only when it leaves out more multiply-adds than this, else one masked
# dense step is faster (measured on CPU with ``adaptrnn bench --methods sa``: docs/speed.md).
GATHER_MIN_MACS = 7e6


def sa_forward(module, x: Tensor, state: RecurrentState, valid: Tensor | None) -> tuple[Tensor, RecurrentState, Stats]:
    """SA-RNN over time-major x (T, B, I); same outputs, state and stats as the reference in eval mode."""
    seq_len, batch = x.shape[:2]
    gates, size = GATES[module.cell], module.hidden_size
    weight = valid_float(valid, seq_len, batch, x)  # (T, B)
    use_native = batch == 1 and native.applies(module, state.cell)
    finals, fractions = [], []
    flops, likelihood_sum = x.new_zeros(batch), x.new_zeros(batch)
    layer_in = x  # (T, B, I)
    if use_native:  # the C loop reads its own packed weights (native.sa_packed)
        rearranged = [(None, None)] * module.num_layers
    else:
        rearranged = list(zip(neuron_major(module, transpose=False), transposed(module), strict=True))
    for layer, (rows, full) in enumerate(rearranged):
        in_size = layer_in.shape[-1]
        _, w_i, b_u = module.gate_weights(layer)
        s = state.cell[layer].clone()  # (B, K, D)
        if use_native:  # batch 1: the whole loop in C
            gate_x = torch.nn.functional.linear(layer_in, w_i, b_u)  # (T, B, D) W_i x_t + b for all steps
            s = s.contiguous()
            steps = seq_len if valid is None else int(valid[:, 0].sum())
            out, masks, likelihoods = native.sa_layer(module, layer, layer_in[:, 0], steps, gate_x[:, 0], s[0])
            if steps < seq_len:
                out[steps:] = s[0, 0]  # padded steps keep the state
            # zero after `steps` already: the padding weights would change nothing
            mask, likelihoods = masks.unsqueeze(1), likelihoods.unsqueeze(1)
            out, active_count = out.unsqueeze(1), mask.sum(-1)
        elif native_batch.batch_applies(module, s):  # a batch: the whole loop in C, products in torch's BLAS
            s = s.contiguous()
            gate = gate_terms(module, layer)
            out, mask, likelihoods, active_count = native_batch.sa_batch_layer(module, layer, layer_in, gate, valid, s)
            likelihoods = likelihoods * weight  # (T, B); mask and active_count are zero where not valid
        else:
            s, out, masks, likelihoods = _steps(module, layer, layer_in, rows, full, s, valid)
            mask = masks if valid is None else masks * weight.unsqueeze(-1)  # (T, B, D)
            likelihoods, active_count = likelihoods * weight, mask.sum(-1)  # (T, B)
        likelihood_sum = likelihood_sum + likelihoods.sum(0)
        gate_macs = size * (1 + in_size)
        flops = flops + (gates * active_count * (in_size + size) + weight * gate_macs).sum(0)
        fractions.append(active_count / size)
        finals.append(s)
        layer_in = out
    updates = torch.stack(fractions).mean(0).t()  # (B, T)
    cost = module.options["budget"] * likelihood_sum.mean()
    extras = {"neuron_updates": mask.transpose(0, 1)}
    return layer_in, RecurrentState(torch.stack(finals)), Stats(updates, cost, flops, extras)


def _steps(module, layer: int, layer_in: Tensor, rows, full, s: Tensor, valid) -> tuple:
    """One layer's time loop in PyTorch. layer_in (T, B, C); s (B, K, D).

    ``rows``: the layer's neuron-major weights, ``full``: transposed. Returns the final state
    (B, K, D), out (T, B, D), the mask u (T, B, D) and Σ_i ũ (T, B).
    """
    seq_len, batch, in_size = layer_in.shape
    gates, size = GATES[module.cell], module.hidden_size
    threshold = float(module.options["threshold"])
    # ũ_t = clamp(a ⊙ h_{t-1} + c_t, 0, 1), the hard sigmoid folded into the gate's weights
    # exactly as the reference does (METHODS.md §4), c_t for every step at once.
    gate_a, w_c, b_c = gate_terms(module, layer)
    gate_c = torch.nn.functional.linear(layer_in, w_c, b_c)  # (T, B, D)
    dense = AtenStep(module, range(layer, layer + 1))
    out = layer_in.new_empty(seq_len, batch, size)
    masks = layer_in.new_empty(seq_len, batch, size)
    likelihoods = layer_in.new_empty(seq_len, batch)
    spans, t = Window(), 0
    with StepThreads(step_macs(module, batch), layer_in.device) as threads:
        while t < seq_len:
            likelihood = torch.addcmul(gate_c[t], gate_a, s[:, 0]).clamp(0.0, 1.0)  # (B, D) ũ_t
            u = likelihood > threshold
            if valid is not None:
                u &= valid[t].unsqueeze(1)
            every = bool(u.all())  # every neuron of every row updates
            steps = spans.length(seq_len - t) if every else 0
            if steps >= 2:  # try a dense window from t
                with threads.wide():
                    inputs, results = (layer_in, gate_a, gate_c, valid), (out, masks, likelihoods)
                    t, s = _window(dense, spans, inputs, results, t, steps, s, likelihood)
                continue
            likelihoods[t] = likelihood.sum(1)
            masks[t] = u
            active = u.any(0).nonzero().squeeze(1)  # (k,) neurons updated by some row
            k = active.numel()
            if every:  # a dense step, no mask
                s = stack_step(module.cell, [full], layer_in[t], s.unsqueeze(0))[0]
            elif (size - k) * gates * (in_size + size) * batch < GATHER_MIN_MACS:
                gx = project(layer_in[t], full.ih, full.b_ih)
                gh = project(s[:, 0], full.hh, full.b_hh)
                s = torch.where(u.unsqueeze(1), native.pointwise(module.cell, gx, gh, s), s)
            elif k:
                gx = gate_major(neuron_product(layer_in[t], rows.ih, rows.b_ih, active, gates), gates)  # (B, G*k)
                gh = gate_major(neuron_product(s[:, 0], rows.hh, rows.b_hh, active, gates), gates)
                old = s.index_select(2, active)  # (B, K, k)
                new = native.pointwise(module.cell, gx, gh, old)
                if batch > 1:
                    new = torch.where(u.index_select(1, active).unsqueeze(1), new, old)
                s.index_copy_(2, active, new)
            out[t] = s[:, 0]
            t += 1
    return s, out, masks, likelihoods


def gate_terms(module, layer: int) -> tuple[Tensor, Tensor, Tensor]:
    """a (D,), W_c (D, C) and b_c (D,) of ũ_t = clamp(a ⊙ h_{t-1} + x_t W_cᵀ + b_c, 0, 1): the gate's
    weights with the hard sigmoid folded in, exactly as the reference does."""
    diag, w_i, b_u = module.gate_weights(layer)
    half_slope = float(module.slope) / 2
    return diag * half_slope, w_i * half_slope, b_u * half_slope + 0.5


def _window(dense, spans: Window, inputs: tuple, results: tuple, t: int, steps: int, s: Tensor, first) -> tuple:
    """A speculative dense window of ``steps`` steps from t, at which every neuron of every row
    updates (``first``: ũ_t (B, D), computed before).

    Step i > 0 of the window updates everything iff ũ from h_{i-1} (the window's own output)
    exceeds the threshold for every neuron of every valid row. Writes the accepted steps' out,
    u (all ones) and Σ ũ into ``results``; returns the next step and the state there (B, K, D).
    """
    layer_in, gate_a, gate_c, valid = inputs
    out, masks, likelihoods = results
    module = dense.module
    threshold = float(module.options["threshold"])
    later = slice(t + 1, t + steps)  # the steps decided from the window's own states
    seen: dict[str, Tensor] = {}

    def check(tops: Tensor) -> Tensor:
        seen["likelihood"] = likelihood = torch.addcmul(gate_c[later], gate_a, tops[:-1, :, 0]).clamp(0.0, 1.0)
        u = likelihood > threshold
        if valid is not None:
            u &= valid[later].unsqueeze(2)
        return torch.cat([u.new_ones(1), u.flatten(1).all(1)])  # step t: known

    outs, accepted, state = window(dense, layer_in[t : t + steps], s.unsqueeze(0), check)
    spans.record(steps, accepted)
    done = slice(t, t + accepted)
    out[done] = outs[:accepted]
    masks[done] = 1.0  # every neuron of every row at the accepted steps
    likelihoods[t] = first.sum(1)
    likelihoods[t + 1 : t + accepted] = seen["likelihood"][: accepted - 1].sum(2)
    return t + accepted, state[0]


def neuron_product(z: Tensor, weight: Tensor, bias: Tensor | None, active: Tensor, gates: int) -> Tensor:
    """The gate rows of the ``active`` neurons only: z (n, C) times the selected rows of a
    neuron-major weight (D, G*C) -> (n, k*G), neuron-major."""
    rows = weight.index_select(0, active).view(active.numel() * gates, -1)  # (k*G, C)
    if bias is not None:
        bias = bias.view(-1, gates).index_select(0, active).view(-1)
    return torch.nn.functional.linear(z, rows, bias)
