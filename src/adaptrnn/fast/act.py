"""ACT inference in which halted rows leave the computation.

The reference ponders every row of the batch until the last one halts, masking the halted
ones. Here, after each ponder step, the rows that halted are dropped (the running rows are
compacted with ``index_select``), so a ponder step costs in proportion to the rows still
running; padded steps are not pondered at all. The mean-field sum adds each row's terms in
the same order as the reference. At batch 1 (float32 or float64 on the CPU) the whole loop
runs in C (``native.act_loop``), taking only the ponder steps needed; at batch > 1 too where
torch's BLAS is found and the halting unit reads the top h (``native_batch.act_batch``: the same
compaction, the products in BLAS), the loop here being the fallback.
After an input step at which every row halted at its first ponder step, a speculative
window (``speculate``) runs the next first ponder steps of every row in one ATen call and
keeps those at which every row halts again (``halting_input="h"``; with ``"state"`` the
halting unit reads every layer's c, which a whole-sequence call does not return per step).

On a CPU, reading the halting decision on the host after each ponder step costs nothing.
On a GPU each compaction is a host synchronisation; the plan there (docs/speed.md) is to
compact only every few ponder steps, or to decide halting inside a fused kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cells import input_projection
from ..layer import RecurrentState, Stats
from . import native, native_batch
from .aten_step import AtenStep
from .speculate import StepThreads, Window, flat, step_macs, window
from .weights import project, projected_stack_step, transposed


def act_forward(module, x: Tensor, state: RecurrentState, valid: Tensor | None) -> tuple[Tensor, RecurrentState, Stats]:
    """ACT over time-major x (T, B, I); same outputs, state and stats as the reference in eval mode."""
    seq_len, batch = x.shape[:2]
    layers = transposed(module)
    cell = state.cell.clone()  # (L, B, K, D)
    out = x.new_empty(seq_len, batch, module.hidden_size)
    steps, remainders = x.new_zeros(seq_len, batch), x.new_zeros(seq_len, batch)
    every = torch.arange(batch, device=x.device)
    if batch == 1 and native.applies(module, cell):  # the whole loop in C
        cell = cell.contiguous()
        ends = seq_len if valid is None else int(valid[:, 0].sum())
        w_ih, _, b_ih, _ = module.layer_weights(0)
        gx0 = input_projection(x[:, 0], w_ih, b_ih)  # (T, G*D), every step is pondered
        out, steps, remainders = native.act_loop(module, gx0, ends, cell[:, 0])
        out[ends:] = cell[-1, 0, 0]  # padded steps keep the state
        out, steps, remainders = out.unsqueeze(1), steps.unsqueeze(1), remainders.unsqueeze(1)
    elif module.options["halting_input"] == "h" and native_batch.batch_applies(module, cell):  # a batch, in C
        cell = cell.contiguous()
        out, steps, remainders = native_batch.act_batch(module, x, valid, cell)
    else:
        first = AtenStep(module, range(module.num_layers), first_bias=module.flag_weight)
        # Steps [0, full) have every row valid: where windows may run.
        full = seq_len if valid is None else int(valid.all(1).long().cumprod(0).sum())
        spans, once, t = Window(), False, 0  # once: every row halted at its first ponder step at t-1
        with StepThreads(step_macs(module, batch), x.device) as threads:
            while t < seq_len:
                length = spans.length(full - t) if once and module.options["halting_input"] == "h" else 0
                if length >= 2:
                    with threads.wide():
                        t, cell, once = _window(first, spans, x, (out, steps, remainders), t, length, cell)
                    continue
                rows = every if valid is None else valid[t].nonzero().squeeze(1)
                once = False
                if rows.numel() == batch:
                    cell, steps[t], remainders[t] = ponder(module, layers, cell, x[t], first)
                    once = bool(steps[t].eq(1).all())
                elif rows.numel():
                    picked = cell[:, rows], x[t].index_select(0, rows)
                    new, steps_t, remainders_t = ponder(module, layers, *picked, first)
                    cell.index_copy_(1, rows, new)
                    steps[t].index_copy_(0, rows, steps_t)
                    remainders[t].index_copy_(0, rows, remainders_t)
                out[t] = cell[-1, :, 0]
                t += 1
    steps, remainders = steps.t(), remainders.t()  # (B, T)
    ponder_cost = steps + remainders
    stats = Stats(
        steps,
        module.options["time_penalty"] * ponder_cost.sum(1).mean(),
        steps.sum(1) * module.ponder_macs(),
        {"ponder": ponder_cost, "remainder": remainders},
    )
    return out, RecurrentState(cell), stats


def _window(first: AtenStep, spans: Window, x: Tensor, results: tuple, t: int, length: int, cell: Tensor) -> tuple:
    """A speculative window of ``length`` first ponder steps from t (every row valid there).

    Step i of the window is complete iff every row halts at its first ponder step (h ≥ 1 - ε
    from the top h, or max_steps = 1): then s_t is that step's state, N(t) = R(t) = 1. Writes
    the accepted steps' out, N and R; returns the next step, the state there and whether the
    last step tried halted every row at once (False after a failed window: its failing step is
    left to ``ponder``).
    """
    out, steps, remainders = results
    module = first.module
    threshold = 1.0 - float(module.options["epsilon"])

    def check(tops: Tensor) -> Tensor:
        if int(module.options["max_steps"]) == 1:
            return torch.ones(tops.shape[0], dtype=torch.bool, device=tops.device)
        return module.halting_prob(flat(tops)).view(tops.shape[:2]).ge(threshold).all(1)

    outs, accepted, cell = window(first, x[t : t + length], cell, check)
    spans.record(length, accepted)
    done = slice(t, t + accepted)
    out[done] = outs[:accepted]
    steps[done], remainders[done] = 1.0, 1.0
    return t + accepted, cell, accepted == length


def ponder(module, layers, cell: Tensor, x: Tensor, first: AtenStep) -> tuple[Tensor, Tensor, Tensor]:
    """All ponder steps of one input step for the rows given, dropping rows as they halt.

    cell: (L, n, K, D) s_{t-1}; x: (n, I) the input; ``first``: the stack's first ponder step
    (flag set), whose input bias (``first_input_bias``) projects it for n = 1; its projection
    for the later ones is computed only if
    some row ponders on (not for every step ahead: at (T, B, I, D) = (50, 256, 2, 110) that
    (T, B, G*D) projection took 7-16 ms where ``nn.LSTM``'s whole call took 25 ms, one thread,
    loaded machine).
    Returns the mean-field state s_t (L, n, K, D), N(t) (n,) and R(t) (n,).
    """
    max_steps = int(module.options["max_steps"])
    threshold = 1.0 - float(module.options["epsilon"])
    count = x.shape[0]
    # n = 1: the flag's weights are part of the first layer's input bias
    s = projected_stack_step(module.cell, layers, project(x, layers[0].ih, first.first_input_bias), cell)
    h = module.halting_prob(s)  # (n,)
    if max_steps == 1 or bool((h >= threshold).all()):
        # Every row halts at the first ponder step: p = 1 - 0 = 1, so the mean-field state is
        # s itself (exactly, as in the reference's 0 + 1·s), N(t) = 1 and R(t) = 1.
        ones = x.new_ones(count)
        return s, ones, ones.clone()
    gx = project(x, layers[0].ih, layers[0].b_ih)  # (n, G*D) layer 0's input projection
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
