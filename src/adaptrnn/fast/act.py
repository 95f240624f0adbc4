"""ACT inference in which halted rows leave the computation.

The reference ponders every row of the batch until the last one halts, masking the halted
ones. Here, after each ponder step, the rows that halted are dropped (the running rows are
compacted with ``index_select``), so a ponder step costs in proportion to the rows still
running; padded steps are not pondered at all. The mean-field sum adds each row's terms in
the same order as the reference. At batch 1 (float32 or float64 on the CPU) the whole loop
runs in C (``native.act_loop``), taking only the ponder steps needed.

On a CPU, reading the halting decision on the host after each ponder step costs nothing.
On a GPU each compaction is a host synchronisation; the plan there (docs/speed.md) is to
compact only every few ponder steps, or to decide halting inside a fused kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cells import input_projection
from ..layer import RecurrentState, Stats
from . import native
from .aten_step import AtenStep
from .weights import projected_stack_step, transposed


def act_forward(module, x: Tensor, state: RecurrentState, valid: Tensor | None) -> tuple[Tensor, RecurrentState, Stats]:
    """ACT over time-major x (T, B, I); same outputs, state and stats as the reference in eval mode."""
    seq_len, batch = x.shape[:2]
    layers = transposed(module)
    w_ih, _, b_ih, _ = module.layer_weights(0)
    gx0 = input_projection(x, w_ih, b_ih)  # (T, B, G*D), every step is pondered
    cell = state.cell.clone()  # (L, B, K, D)
    out = x.new_empty(seq_len, batch, module.hidden_size)
    steps, remainders = x.new_zeros(seq_len, batch), x.new_zeros(seq_len, batch)
    every = torch.arange(batch, device=x.device)
    if batch == 1 and native.applies(module, cell):  # the whole loop in C
        cell = cell.contiguous()
        ends = seq_len if valid is None else int(valid[:, 0].sum())
        out, steps, remainders = native.act_loop(module, gx0[:, 0], ends, cell[:, 0])
        out[ends:] = cell[-1, 0, 0]  # padded steps keep the state
        out, steps, remainders = out.unsqueeze(1), steps.unsqueeze(1), remainders.unsqueeze(1)
    else:
        first = AtenStep(module, range(module.num_layers), first_bias=module.flag_weight)
        for t in range(seq_len):
            rows = every if valid is None else valid[t].nonzero().squeeze(1)
            if rows.numel() == batch:
                cell, steps[t], remainders[t] = ponder(module, layers, gx0[t], cell, x[t], first)
            elif rows.numel():
                picked = gx0[t].index_select(0, rows), cell[:, rows], x[t].index_select(0, rows)
                new, steps_t, remainders_t = ponder(module, layers, *picked, first)
                cell.index_copy_(1, rows, new)
                steps[t].index_copy_(0, rows, steps_t)
                remainders[t].index_copy_(0, rows, remainders_t)
            out[t] = cell[-1, :, 0]
    steps, remainders = steps.t(), remainders.t()  # (B, T)
    ponder_cost = steps + remainders
    stats = Stats(
        steps,
        module.options["time_penalty"] * ponder_cost.sum(1).mean(),
        steps.sum(1) * module.ponder_macs(),
        {"ponder": ponder_cost, "remainder": remainders},
    )
    return out, RecurrentState(cell), stats


def ponder(module, layers, gx: Tensor, cell: Tensor, x: Tensor, first: AtenStep) -> tuple[Tensor, Tensor, Tensor]:
    """All ponder steps of one input step for the rows given, dropping rows as they halt.

    gx: (n, G*D) layer 0's input projection; cell: (L, n, K, D) s_{t-1}; x: (n, I) the
    input, for ``first``: the stack's first ponder step (flag set) in one ATen call.
    Returns the mean-field state s_t (L, n, K, D), N(t) (n,) and R(t) (n,).
    """
    max_steps = int(module.options["max_steps"])
    threshold = 1.0 - float(module.options["epsilon"])
    count = gx.shape[0]
    s = first(x, cell)  # n = 1: the flag's weights are part of the first layer's input bias
    h = module.halting_prob(s)  # (n,)
    if max_steps == 1 or bool((h >= threshold).all()):
        # Every row halts at the first ponder step: p = 1 - 0 = 1, so the mean-field state is
        # s itself (exactly, as in the reference's 0 + 1·s), N(t) = 1 and R(t) = 1.
        ones = gx.new_ones(count)
        return s, ones, ones.clone()
    mean = torch.zeros_like(cell)
    steps, remainders = gx.new_zeros(count), gx.new_zeros(count)
    place = torch.arange(count, device=gx.device)  # running row -> its place in the output
    cum = gx.new_zeros(count)  # Σ h of the steps taken so far
    for n in range(1, max_steps + 1):
        if n > 1:
            s = projected_stack_step(module.cell, layers, gx, s)
            h = module.halting_prob(s)  # (r,)
        stop = (cum + h >= threshold) | (n == max_steps)
        p = torch.where(stop, 1 - cum, h)  # p_t^n: R(t) at the halting step, h before
        mean.index_add_(1, place, p.view(1, -1, 1, 1) * s)
        halted = place[stop]
        steps[halted] = float(n)
        remainders[halted] = (1 - cum)[stop]
        go_on = ~stop
        if not bool(go_on.any()):
            break
        cum = cum + h
        if not bool(go_on.all()):
            keep = go_on.nonzero().squeeze(1)
            s, gx, cum, place = s.index_select(1, keep), gx.index_select(0, keep), cum[keep], place[keep]
    return mean, steps, remainders
