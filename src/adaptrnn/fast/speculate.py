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
  layer's state after step i-1. For the LSTM that is c, which whole-sequence calls do not
  return per step: :class:`LstmWindow` recovers it (from the outputs h, one product gives
  every step's gates, then c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t element-wise), where a dense step
  costs fewer than ``LSTM_WINDOW_MAX_MACS`` multiply-adds; above that the recomputed product
  costs more than it saves and the window is :func:`stepwise`, one-step calls without the
  per-step bookkeeping, stopping at the first step that leaves some row not due.
- ACT decides step i from the halting unit on the state after step i's first ponder step.
A window that keeps only its first a < k steps needs the state after step a-1: from the
outputs where a single layer's state is its h (RNN, GRU), from h and the recovered c for an
LSTM's top layer, else by running the a steps again (a stack's lower layers).

Waste is bounded by :class:`Window`: a window starts only at a step known (or, for ACT,
found at the previous step) to compute everything; its length doubles after each fully
accepted window and falls back to ``Window.MIN`` after a failed one, and after consecutive
failures windows are not tried for 1, 2, 4, ... (at most ``Window.MAX_PAUSE``) chances.
(:func:`stepwise` windows waste nothing and need no such bound.)
Decisions are the reference's thresholds on states that differ from its own only by
rounding (the kernels are ``DenseRNN``'s, tested equal to the reference cells), the standard
the one-step ATen calls of the per-step paths already meet. The LSTM's recovered c meets it
too: it is the cell's own equation on the kernel's h, in a different order of rounding than
the kernel's c (and the state after a fully accepted window is the kernel's own).

``COUNTS`` counts windows and accepted steps, and which kind the LSTM's were ("recovered",
"stepwise"): for the tests, a window path that silently falls back fails them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch
from torch import Tensor

from .aten_step import AtenStep

# "windows", "steps" (accepted), "failed"; the LSTM's: "recovered", "stepwise", "native" (native.skip_window)
COUNTS: Counter[str] = Counter()


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


# (k, n, P, D) the top layer's state after each window step (h: P = 1; h and c: P = 2, LstmWindow)
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


def stepwise(
    step: Callable[[Tensor, Tensor], Tensor], xs: Tensor, s: Tensor, next_ok: Callable[[Tensor], bool]
) -> tuple:
    """A window whose decisions read the LSTM's c, which a whole-sequence call does not return
    per step: one-step calls ``step(x, s)`` ((n, C), (L, n, K, D) -> the new state), each
    followed by ``next_ok(s)`` on the new state saying whether the next step computes
    everything; stops after the first that does not, so no step is wasted. Same returns as
    :func:`window`, outs only for accepted steps.
    """
    COUNTS["stepwise"] += 1
    tops = []
    for i in range(xs.shape[0]):
        s = step(xs[i], s)
        tops.append(s[-1, :, 0])
        if not next_ok(s):
            break
    return torch.stack(tops), len(tops), s


class LstmWindow:
    """Whole-sequence windows for an LSTM stack whose decisions read the top layer's c.

    ATen's whole-sequence call returns h at every step but c only after the last. c is
    recovered without a second recurrence of products: h_{t-1} is known at every step (the
    state before the window, then the outputs), so the gates i, f, g of all k steps are ONE
    product of [x_t, h_{t-1}] with the top layer's weights, and c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
    is an element-wise scan (k ``addcmul`` calls; the o gate is not needed for c, so 3/4 of the
    gate rows, in chunks of steps). The recovered c differs from the kernel's own only by rounding.

    The stack runs as two calls, the layers below the top (one multi-layer call, for L > 1)
    and the top layer: the lower stack's output sequence is the top layer's input, the one
    thing the recovery needs besides the top layer's own outputs. Not one call per layer: ATen
    runs a stack layer by layer anyway (each layer's whole sequence before the next), so the
    split adds one call's overhead and no work, and the lower layers' c is needed only when a
    window fails after its first step, where the accepted steps of the lower stack run again
    (one call), as :func:`window` does for stacks.
    """

    CHUNK_ROWS = 512  # rows (steps · batch) per gate product: the chunk's gates stay in cache (measured)

    def __init__(self, module) -> None:
        layers = module.num_layers
        self.lower = AtenStep(module, range(layers - 1)) if layers > 1 else None
        self.top = AtenStep(module, range(layers - 1, layers))
        params, size = self.top.params, module.hidden_size  # ATen's gate order: i, f, g, o
        weight = torch.cat([params[0], params[1]], 1).t()  # (C + D, 4D): [x, h_{t-1}] -> gates
        bias = params[2] + params[3] if self.top.has_biases else None
        # Two products, [i, f] and g, so that sigmoid and tanh run on contiguous blocks (measured
        # faster than slices of one product); the o gate is not needed for c.
        self.weight = weight[:, : 2 * size].contiguous(), weight[:, 2 * size : 3 * size].contiguous()
        self.bias = (None, None) if bias is None else (bias[: 2 * size], bias[2 * size : 3 * size])

    def __call__(self, xs: Tensor, s: Tensor, check: Check) -> tuple[Tensor, int, Tensor]:
        """Same arguments and returns as :func:`window` (``check`` sees h and c: P = 2)."""
        COUNTS["recovered"] += 1
        steps = xs.shape[0]
        inputs, below = (xs, None) if self.lower is None else self.lower.sequence(xs, s[:-1])
        outs, final = self.top.sequence(inputs, s[-1:])
        tops = torch.stack([outs, self.cells(inputs, s[-1, :, 0], s[-1, :, 1], outs)], dim=2)  # (k, n, 2, D)
        accepted = leading(check(tops))
        if accepted == 0:
            return outs, 0, s
        if accepted < steps:
            final = tops[accepted - 1].unsqueeze(0)  # the kernel's h, the recovered c
            if below is not None:
                below = self.lower.sequence(xs[:accepted], s[:-1])[1]
        return outs, accepted, final if below is None else torch.cat([below, final])

    def cells(self, inputs: Tensor, h0: Tensor, c0: Tensor, outs: Tensor) -> Tensor:
        """The top layer's c after each step: inputs (k, n, C), h0 and c0 (n, D) the state
        before the window, outs (k, n, D) its h after each step -> (k, n, D)."""
        steps, batch, size = outs.shape
        before = torch.cat([h0.unsqueeze(0), outs[:-1]])  # h_{t-1}
        cells, prev = torch.empty_like(outs), c0
        chunk = max(1, self.CHUNK_ROWS // batch)
        for start in range(0, steps, chunk):
            end = min(start + chunk, steps)
            z = torch.cat([inputs[start:end], before[start:end]], 2).view((end - start) * batch, -1)
            i_f, g = (z @ w if b is None else torch.addmm(b, z, w) for w, b in zip(self.weight, self.bias, strict=True))
            i_f = i_f.sigmoid_().view(end - start, batch, 2, size)
            ig = g.tanh_().view(end - start, batch, size).mul_(i_f[:, :, 0])
            for i in range(end - start):  # c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
                prev = torch.addcmul(ig[i], i_f[i, :, 1], prev, out=cells[start + i])
        return cells


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


# Skip RNN with the LSTM: whole-sequence windows (:class:`LstmWindow`) below this many
# multiply-adds per dense stack step of the batch, one-step calls (:func:`stepwise`) from it.
# Recovering c recomputes 3/4 of the gate products: on the CPU measured (one thread, the
# products in MKL) it costs 1.3-1.45x a whole nn.LSTM call (oneDNN's fused kernel), more than
# the one-step calls add over one whole-sequence call (~0.4x) at (B, H) = (256, 110); at
# small steps the calls' fixed cost dominates. f = 1, ratio to nn.LSTM, recovered / stepwise
# (benchmarks/skip_lstm_windows.py --threads 1, loaded machine, CPU time): 2.1 M (32, 200, 1,
# 128) 3.2x / 4.7x; 3.2 M (64, 50, 2, 110) 3.3x / 3.2x; 4.2 M (64, 200, 1, 128) 3.0x / 3.1x;
# 4.7 M (96, 50, 2, 110) 3.3x / 2.7x; 12.6 M (256, 50, 2, 110) 2.8x / 2.0x. Not measured on a GPU.
LSTM_WINDOW_MAX_MACS = 3e6


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
