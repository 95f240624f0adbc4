"""Adaptive Computation Time (Graves, 2016): several internal steps per input.

Notation as in METHODS.md §2: ponder steps n = 1..N(t), halting unit h_t^n, remainder R(t).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layer import RecurrentBase, RecurrentState, Stats, keep_where, valid_float


class ACTRNN(RecurrentBase):
    """A recurrent stack that ponders each input for a learned number of steps.

    Options (METHODS.md §2, the paper's defaults):
        time_penalty: τ; the cost is ``τ Σ_t (N(t) + R(t))`` (a sum over steps, as in the
            paper, not a mean), averaged over the batch. Default 1e-3 (sweep it).
        max_steps: M, the cap on ponder steps (100).
        epsilon: ε; halting when Σ h ≥ 1 - ε (0.01).
        halting_bias_init: initial b_h (1.0, so early training ponders little).
        halting_input: what the halting unit reads as the state s_t^n: "h" (default) the top
            layer's h; "state" the whole state, every layer's h and, for the LSTM, c (L·K·D
            values: the paper's s_t^n is the network's state, which includes the LSTM's memory
            cells). ``halting_weight`` has D or L·K·D entries accordingly.
        impl: "auto" drops halted rows at inference (``adaptrnn.fast.act``; eval mode under
            ``torch.no_grad()``), "reference" always runs this loop.

    Every ponder step runs the whole stack; layer 0 sees the input plus a flag that is 1
    only at n = 1. The flag's weights are ``flag_weight`` (G*D,), a column kept apart from
    ``weight_ih_l0`` so that ``torch.nn`` weights load unchanged; it starts at 0. The halting
    unit is ``σ(halting_weight · s + halting_bias)`` (s per ``halting_input``). States (h and c
    of every layer) are combined mean-field with the weights p_t^n, so the output (the top
    h) is the mean-field combination too.

    Stats: ``updates`` is N(t); extras ``ponder`` (B, T) is N(t) + R(t), ``remainder`` R(t).
    Full computation: exactly one ponder step (then equal to ``torch.nn``).
    The reference loop checks on the host after each ponder step whether every example
    has halted; the fast path (``adaptrnn.fast``) removes that synchronisation.
    """

    OPTIONS = {
        "time_penalty": 1e-3,
        "max_steps": 100,
        "epsilon": 0.01,
        "halting_bias_init": 1.0,
        "halting_input": "h",
        "impl": "auto",
    }

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1, **kw) -> None:
        super().__init__(cell, input_size, hidden_size, num_layers, **kw)
        rows = self.weight_ih_l0.shape[0]
        self.flag_weight = nn.Parameter(torch.zeros(rows))
        # The halting unit reads D values (top h) or the whole state: L·K·D (every layer's h, c).
        reads = hidden_size if self.options["halting_input"] == "h" else num_layers * self.state_parts * hidden_size
        self.halting_weight = nn.Parameter(torch.empty(reads))
        self.halting_bias = nn.Parameter(torch.full((), float(self.options["halting_bias_init"])))
        bound = 1.0 / reads**0.5
        nn.init.uniform_(self.halting_weight, -bound, bound)

    def halting_prob(self, cell: Tensor) -> Tensor:
        """h_t^n = σ(W_h s_t^n + b_h). cell: (L, B, K, D) -> (B,).

        s_t^n is the top layer's h (``halting_input="h"``) or the whole state, every layer's
        h and (LSTM) c flattened layer by layer (``"state"``).
        """
        if self.options["halting_input"] == "h":
            features = cell[-1, :, 0]  # (B, D)
        else:
            features = cell.transpose(0, 1).reshape(cell.shape[1], -1)  # (B, L·K·D)
        return torch.sigmoid(features @ self.halting_weight + self.halting_bias)

    def ponder_macs(self) -> int:
        """Multiply-adds of one ponder step: the whole stack plus the halting unit's dot product."""
        return sum(self.dense_step_macs()) + self.halting_weight.numel()

    def ponder(
        self, flagged: Tensor, unflagged: Tensor, cell: Tensor, weights: list[tuple[Tensor, Tensor | None]]
    ) -> tuple[Tensor, Tensor, Tensor]:
        """All ponder steps of one input step.

        flagged, unflagged: (B, I + 1) x_t^n for n = 1 and n > 1, the input with its flag column;
        cell: (L, B, K, D) s_{t-1}; weights: the stack's, layer 0 reading the flag
        (``joint_stack_weights``). Returns the mean-field state s_t (L, B, K, D), N(t) (B,) and R(t) (B,).
        """
        max_steps = 1 if self.full_computation else int(self.options["max_steps"])
        threshold = 1.0 - float(self.options["epsilon"])
        batch = cell.shape[1]
        halted = torch.zeros(batch, dtype=torch.bool, device=cell.device)
        cum = cell.new_zeros(batch)  # Σ_{n' < n} h_t^{n'} over the steps taken so far
        steps = cell.new_zeros(batch)  # N(t) once halted
        remainder = cell.new_zeros(batch)
        mean_cell = torch.zeros_like(cell)
        s = cell
        for n in range(1, max_steps + 1):
            s = self.stack_step(flagged if n == 1 else unflagged, s, weights)
            h = self.halting_prob(s)
            running = ~halted
            # Halt at n if the sum would reach 1 - ε, or at the cap M.
            stop = running & ((cum + h >= threshold) | (n == max_steps))
            go_on = running & ~stop
            # p_t^n = R(t) = 1 - Σ_{n'<N} h at the halting step (its gradient reaches every
            # earlier h as -1), h_t^n before it, 0 after.
            p = torch.where(stop, 1 - cum, torch.where(go_on, h, torch.zeros_like(h)))
            mean_cell = mean_cell + p.view(1, -1, 1, 1) * s
            remainder = torch.where(stop, 1 - cum, remainder)
            steps = torch.where(stop, torch.full_like(steps, n), steps)
            cum = torch.where(go_on, cum + h, cum)
            halted = halted | stop
            if bool(halted.all()):
                break
        return mean_cell, steps, remainder

    def _forward(self, x: Tensor, state: RecurrentState, valid: Tensor | None) -> tuple[Tensor, RecurrentState, Stats]:
        seq_len, batch = x.shape[:2]
        # x_t^n = [x_t, 1[n = 1]]: the flag is one more input column, its weights flag_weight.
        weights = self.joint_stack_weights(torch.cat((self.weight_ih_l0, self.flag_weight.unsqueeze(1)), dim=1))
        ones, zeros = x.new_ones(seq_len, batch, 1), x.new_zeros(seq_len, batch, 1)
        # Unbound once: indexing a (T, ...) tensor at [t] in the loop makes autograd build a
        # full-size gradient per step.
        flagged = torch.cat((x, ones), dim=-1).unbind(0)  # T × (B, I + 1)
        unflagged = torch.cat((x, zeros), dim=-1).unbind(0)
        cell = state.cell
        outs, all_steps, all_remainders = [], [], []
        for t in range(seq_len):
            valid_t = None if valid is None else valid[t]
            new_cell, steps, remainder = self.ponder(flagged[t], unflagged[t], cell, weights)
            cell = keep_where(valid_t, new_cell, cell, batch_dim=1)  # (L, B, K, D)
            outs.append(cell[-1, :, 0])
            all_steps.append(steps)
            all_remainders.append(remainder)
        weight = valid_float(valid, seq_len, batch, x)  # (T, B)
        steps = (torch.stack(all_steps) * weight).t()  # (B, T) N(t), no gradient (piecewise constant)
        remainder = (torch.stack(all_remainders) * weight).t()  # (B, T) R(t), differentiable
        ponder = steps + remainder
        cost = self.options["time_penalty"] * ponder.sum(1).mean()
        flops = steps.sum(1) * self.ponder_macs()
        extras = {"ponder": ponder.detach(), "remainder": remainder.detach()}
        return torch.stack(outs), RecurrentState(cell), Stats(steps, cost, flops, extras)
