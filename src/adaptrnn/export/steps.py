"""Exportable steps of the methods that decide for the whole stack: dense, Skip RNN, ACT.

Each step takes one input x_t and the recurrent state, and returns the head's output, the
new state and the method's per-step quantities, for a batch B (batch 1 is the streaming
case). The savings are control flow in the step itself, so they survive ``torch.jit.script``
and the TorchScript-based ONNX exporter (a scripted ``if`` becomes an ONNX ``If``, a
``while`` an ONNX ``Loop``):

- Skip RNN: the cell stack (and the input projection and embedding) run inside
  ``if any(u_t)``; a step where no example updates only carries ũ forward (eq. 5).
- ACT: the ponder steps are a loop that stops as soon as every example has halted.

With B > 1 a branch runs when any example needs it and a per-example mask keeps the
others' state, exactly as the reference does; the saving is then that of the union.
"""

# No ``from __future__ import annotations``: TorchScript reads the annotations as real types.
import torch
from torch import Tensor, nn

from ..methods.act import ACTRNN
from ..methods.skip import SkipRNN
from ..model import SequenceModel
from .parts import FeatureInput, Head, Stack, TokenInput


def make_encoder(model: SequenceModel, dtype: torch.dtype) -> nn.Module:
    """The layer-0 input: the embedding of a token model, else the features unchanged."""
    if model.embedding is not None:
        return TokenInput(model.embedding.weight.to(dtype))
    return FeatureInput()


class DenseStep(nn.Module):
    """Dense stack: every layer every step.

    forward(x (B, I) or (B,) ids, cell (L, B, K, D)) ->
        y (B, O), cell_next (L, B, K, D), updates (B,) = 1.
    """

    def __init__(self, model: SequenceModel, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.encoder = make_encoder(model, dtype)
        self.stack = Stack(model.rnn, dtype)
        self.head = Head(model.head, dtype)

    def forward(self, x: Tensor, cell: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        new = self.stack(self.stack.first.project(self.encoder(x)), cell)
        y = self.head(new[-1, :, 0])
        return y, new, torch.ones_like(y[:, 0])


class SkipStep(nn.Module):
    """Skip RNN (METHODS.md §1): u_t = 1[ũ_t > threshold] (eq. 2), the stack runs only if some u_t = 1.

    forward(x, cell (L, B, K, D), update_prob ũ_t (B,), delta_prob Δũ (B,)) ->
        y (B, O), cell_next, update_prob_next ũ_{t+1}, delta_prob_next, updates u_t (B,),
        update_prob_t ũ_t (B,) (the probability this step's decision was taken from),
        skips_ahead (B,) int64 how many of the following steps will skip (at most ``max_jump``);
        -1 at a step where every example skipped (not computed there),
        update_prob_ahead (B,) ũ after those skipped steps (the state to resume from after a jump).
    """

    threshold: float
    max_jump: int
    never: float

    def __init__(self, model: SequenceModel, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        rnn = model.rnn
        assert isinstance(rnn, SkipRNN)
        self.encoder = make_encoder(model, dtype)
        self.stack = Stack(rnn, dtype)
        self.head = Head(model.head, dtype)
        self.threshold = float(rnn.options["threshold"])
        self.max_jump = 4096
        # A threshold >= 1 is never crossed once ũ has been used up (the compute dial turned to 0).
        self.never = float(self.max_jump) if self.threshold >= 1.0 else 0.0
        # the smallest value of the model's dtype above the threshold (u = 1 from it on)
        above = torch.nextafter(torch.tensor(self.threshold, dtype=dtype), torch.tensor(2.0, dtype=dtype))
        self.register_buffer("above_threshold", above)
        self.register_buffer("update_weight", rnn.update_weight.detach().to(dtype).clone())
        self.register_buffer("update_bias", rnn.update_bias.detach().to(dtype).clone())

    def forward(
        self, x: Tensor, cell: Tensor, update_prob: Tensor, delta_prob: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        update = update_prob > self.threshold  # (B,) eq. 2
        u = update.to(cell.dtype)
        if bool(update.any()):
            candidate = self.stack(self.stack.first.project(self.encoder(x)), cell)
            # Blends of eq. 3-5 as selections: u is 0 or 1, so u·a + (1-u)·b is exactly a or b
            # (finite values), and one Where is cheaper than four element-wise operators.
            new_cell = torch.where(update.view(1, -1, 1, 1), candidate, cell)  # eq. 3
            top = new_cell[-1, :, -1]  # c for the LSTM, h otherwise (as SkipRNN.update_increment)
            increment = torch.sigmoid(torch.matmul(top, self.update_weight) + self.update_bias)  # eq. 4
            new_delta = torch.where(update, increment, delta_prob)
            new_prob = torch.where(update, new_delta, update_prob + torch.minimum(new_delta, 1 - update_prob))  # eq. 5
            skips, ahead = self.look_ahead(new_prob, new_delta)
        else:  # every example skips: the state is copied, x_t is never read; eq. 5 with u = 0
            new_cell = cell
            new_delta = delta_prob
            new_prob = update_prob + torch.minimum(delta_prob, 1 - update_prob)
            skips, ahead = torch.full_like(update_prob, -1, dtype=torch.int64), new_prob  # not looked ahead
        y = self.head(new_cell[-1, :, 0])
        return y, new_cell, new_prob, new_delta, u, update_prob, skips, ahead

    def look_ahead(self, prob: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
        """How many of the following steps skip, and ũ after them: N_skip of eq. 6 from (ũ, Δũ).

        Closed form, as ``adaptrnn.fast.skip.first_update`` (float64): 0 if ũ > threshold, else
        the smallest k with ũ + k·Δũ > threshold; stepping adds Δũ one step at a time in the
        model's precision, so the two agree except where ũ + k·Δũ ties the threshold to
        rounding (the library's fast path has the same caveat). ``ahead`` is raised to just
        above the threshold if rounding left it there, so the step jumped to always updates.
        Runs only where the stack ran, so a skipped step stays cheap; at most ``max_jump``.
        """
        p, d = prob.double(), delta.double()
        k = torch.floor((self.threshold - p) / d) + 1  # Δũ = 0 (underflow): inf, never again
        k = torch.where(p > self.threshold, torch.zeros_like(k), k + self.never).clamp(max=float(self.max_jump))
        ahead = torch.minimum(p + k * d, torch.ones_like(p)).to(prob.dtype)  # eq. 5 over k steps
        ahead = torch.where(k < self.max_jump, torch.maximum(ahead, self.above_threshold), ahead)
        return k.to(torch.int64), ahead


class ACTStep(nn.Module):
    """ACT (METHODS.md §2): ponder steps in a loop that ends once every example has halted.

    forward(x, cell (L, B, K, D)) -> y (B, O), cell_next (the mean-field state),
        updates N(t) (B,), remainder R(t) (B,).
    """

    max_steps: int
    threshold: float

    def __init__(self, model: SequenceModel, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        rnn = model.rnn
        assert isinstance(rnn, ACTRNN)
        self.encoder = make_encoder(model, dtype)
        self.stack = Stack(rnn, dtype)
        self.head = Head(model.head, dtype)
        self.max_steps = int(rnn.options["max_steps"])
        self.threshold = 1.0 - float(rnn.options["epsilon"])
        for name in ("flag_weight", "halting_weight", "halting_bias"):
            self.register_buffer(name, getattr(rnn, name).detach().to(dtype).clone())

    def forward(self, x: Tensor, cell: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        gx = self.stack.first.project(self.encoder(x))  # (B, G*D), the same for every ponder step
        zeros = torch.zeros_like(gx[:, 0])  # (B,)
        halted = zeros > 0
        cum, steps, remainder = zeros, zeros, zeros
        mean_cell = torch.zeros_like(cell)
        s = cell
        flag = torch.ones_like(self.halting_bias)  # the first-step flag of layer 0's input
        n = torch.zeros_like(self.halting_bias)  # the ponder step, as a tensor so the graph can count
        go = True
        while go:
            n = n + 1
            s = self.stack(gx + flag * self.flag_weight, s)
            flag = flag * 0
            h = torch.sigmoid(torch.matmul(s[-1, :, 0], self.halting_weight) + self.halting_bias)
            running = ~halted
            # Halt at n if the sum would reach 1 - ε, or at the cap M.
            stop = running & ((cum + h >= self.threshold) | (n >= self.max_steps))
            go_on = running & ~stop
            p = torch.where(stop, 1 - cum, torch.where(go_on, h, zeros))
            mean_cell = mean_cell + p.view(1, -1, 1, 1) * s
            remainder = torch.where(stop, 1 - cum, remainder)
            steps = torch.where(stop, n + zeros, steps)
            cum = torch.where(go_on, cum + h, cum)
            halted = halted | stop
            go = not bool(halted.all())
        y = self.head(mean_cell[-1, :, 0])
        return y, mean_cell, steps, remainder
