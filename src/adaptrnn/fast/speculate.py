"""Speculative dense windows for the batched fast paths, and their thread rule.

When every row computes everything at a step (Skip RNN: every row due; VCRNN: d_t = D for
every row; SA-RNN: every neuron of every row; ACT: every row halts at its first ponder step),
the method's step is the dense cell's step (ACT's with the flag's weights in the first input
bias). Where that holds for many steps in a row, the batched paths need not pay a one-step
call and its bookkeeping per step: :func:`window` runs the next k steps for every row in ONE
ATen whole-sequence call (``AtenStep.sequence``, the kernels ``nn.LSTM`` runs), computes the
method's decision quantity for all k steps at once from the states it produced, and keeps the
leading steps at which every row would indeed have computed everything. From the first step
that fails the per-step path continues, from the exact state before it.

Which states a decision reads decides what is accepted (the callers' ``check``):
- SA-RNN and VCRNN decide step i from h_{i-1}; step 0's decision is known before the window.
- Skip RNN: step 0 is known to be due for every row; step i > 0 is due for every row iff
  Δũ_{i-1} > threshold for every row (after an update ũ = Δũ, eq. 5), Δũ read from the top
  layer's state after step i-1 (c for the LSTM: whole-sequence calls do not return c per
  step, so the LSTM's window is :func:`stepwise`, one-step calls without the per-step
  bookkeeping, stopping at the first step that leaves some row not due).
- ACT decides step i from the halting unit on the state after step i's first ponder step.
A window that keeps only its first a < k steps needs the state after step a-1: from the
outputs where a single layer's state is its h (RNN, GRU), else by running the a steps again.

Waste is bounded by :class:`Window`: a window starts only at a step known (or, for ACT,
found at the previous step) to compute everything; its length doubles after each fully
accepted window and falls back to ``Window.MIN`` after a failed one, and after consecutive
failures windows are not tried for 1, 2, 4, ... (at most ``Window.MAX_PAUSE``) chances.
(:func:`stepwise` windows waste nothing and need no such bound.)
Decisions are the reference's thresholds on states that differ from its own only by
rounding (the kernels are ``DenseRNN``'s, tested equal to the reference cells), the standard
the one-step ATen calls of the per-step paths already meet.

``COUNTS`` counts windows and accepted steps (for the tests: a window path that silently
falls back fails them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch
from torch import Tensor

from .aten_step import AtenStep

COUNTS: Counter[str] = Counter()  # "windows", "steps" (accepted), "failed"


class Window:
    """The adaptive length of the next window within one call of a batched path."""

    MIN = 4
    MAX_PAUSE = 64

    def __init__(self) -> None:
        self.size = self.MIN
        self.pause = 0  # chances to let pass before the next try
        self.penalty = 1  # the pause after the next failure

    def length(self, remaining: int) -> int:
        """Steps to try from here (< 2: take the per-step path). Counts a chance let pass."""
        if self.pause:
            self.pause -= 1
            return 0
        return min(self.size, remaining)

    def record(self, tried: int, accepted: int) -> None:
        COUNTS["windows"] += 1
        COUNTS["steps"] += accepted
        if accepted == tried:
            self.size, self.penalty = 2 * self.size, 1
        else:
            COUNTS["failed"] += 1
            self.size, self.pause = self.MIN, self.penalty
            self.penalty = min(2 * self.penalty, self.MAX_PAUSE)


# (k, n, 1, D) the top layer's h after each window step
# -> (k,) bool: whether every row computes everything at that step, given the steps before it did.
Check = Callable[[Tensor], Tensor]


def window(dense: AtenStep, xs: Tensor, s: Tensor, check: Check) -> tuple[Tensor, int, Tensor]:
    """Run k dense steps for every row and keep the leading ones that ``check`` accepts.

    dense: the stack's (or one layer's) ATen step; xs: (k, n, C) its inputs; s: (L, n, P, D) the
    state before the window. ``check`` sees the top layer's h only (P = 1 in its argument).
    Returns the last layer's h at each step (k, n, D) (valid for the accepted steps), the number
    of accepted steps a, and the state after step a-1 (``s`` if a = 0).
    """
    steps = xs.shape[0]
    outs, final = dense.sequence(xs, s)
    accepted = leading(check(outs.unsqueeze(2)))
    if accepted == steps:
        return outs, accepted, final
    if accepted == 0:
        return outs, 0, s
    if dense.count == 1 and dense.parts == 1:  # one layer whose state is its h
        return outs, accepted, outs[accepted - 1].view(1, *s.shape[1:])
    return outs, accepted, dense.sequence(xs[:accepted], s)[1]  # the accepted steps again


def stepwise(dense: AtenStep, xs: Tensor, s: Tensor, next_ok: Callable[[list[Tensor]], bool]) -> tuple:
    """A window whose decisions read the LSTM's c, which a whole-sequence call does not return
    per step: one-step calls, each followed by ``next_ok(hx)`` (hx: ATen's [h, c] after the step,
    each (L, n, D)) saying whether the next step computes everything; stops after the first that
    does not, so no step is wasted. Same returns as :func:`window`, outs only for accepted steps.
    """
    hx = [s[:, :, k].contiguous() for k in range(dense.parts)]
    tops = []
    for i in range(xs.shape[0]):
        _, hx = dense.raw(xs[i : i + 1], hx)
        tops.append(hx[0][-1])
        if not next_ok(hx):
            break
    return torch.stack(tops), len(tops), torch.stack(hx, dim=2)


def leading(ok: Tensor) -> int:
    """The number of leading True values of a (k,) bool tensor (one host read)."""
    return int(ok.long().cumprod(0).sum())


def flat(tops: Tensor) -> Tensor:
    """(k, n, P, D) -> (1, k·n, P, D): the window's states as one stack layer of k·n rows, for a
    method's own decision function (``update_increment``, ``halting_prob``) on the top layer."""
    return tops.reshape(1, -1, *tops.shape[2:])


# One thread for the per-step loops below this many multiply-adds per step (the batch's dense
# stack step). Measured at (B, I, D) = (256, 2, 110) LSTM (12.6 M per step): every batched path
# ran slower with two threads than with one (docs/speed.md), while one whole-sequence call
# (nn.LSTM) took the same time either way. Each small per-step operation hands its work to the
# OpenMP pool and waits for it; the work does not repay the hand-off.
STEP_THREADS_MIN_MACS = 32e6


class StepThreads:
    """Scoped thread count for a batched path's per-step loop.

    ``with StepThreads(macs, device):`` runs the block with one thread when a step costs fewer
    than ``STEP_THREADS_MIN_MACS`` multiply-adds on the CPU, restoring the caller's count on exit
    (also when the block raises); ``with threads.wide():`` inside it gives whole-window calls the
    caller's count back. The count is torch's, process-wide: other Python threads running torch
    operations meanwhile get one thread too.
    """

    def __init__(self, macs_per_step: float, device: torch.device) -> None:
        self.outer = torch.get_num_threads()
        small = device.type == "cpu" and macs_per_step < STEP_THREADS_MIN_MACS
        self.inner = 1 if small else self.outer

    def __enter__(self) -> StepThreads:
        if self.inner != self.outer:
            torch.set_num_threads(self.inner)
        return self

    def __exit__(self, *exc) -> None:
        if self.inner != self.outer:
            torch.set_num_threads(self.outer)

    def wide(self) -> _Wide:
        return _Wide(self)


class _Wide:
    def __init__(self, threads: StepThreads) -> None:
        self.threads = threads

    def __enter__(self) -> None:
        if self.threads.inner != self.threads.outer:
            torch.set_num_threads(self.threads.outer)

    def __exit__(self, *exc) -> None:
        if self.threads.inner != self.threads.outer:
            torch.set_num_threads(self.threads.inner)


def step_macs(module, batch: int) -> float:
    """Multiply-adds of one dense stack step for ``batch`` rows (the thread rule's measure)."""
    return float(batch * sum(module.dense_step_macs()))
