"""Skip RNN (Campos et al., ICLR 2018): learn to skip whole state updates.

Equations are numbered as in METHODS.md §1 (the paper's numbering).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layer import RecurrentBase, RecurrentState, Stats, keep_where, valid_float
from ..options import RULES


def straight_through(hard: Tensor, soft: Tensor, clip: float | None = None) -> Tensor:
    """``hard`` in the forward pass, gradient of the identity to ``soft`` (eq. 7).

    clip: if given, the gradient passed to ``soft`` is clamped elementwise to [-clip, clip].
    """
    if clip is not None and soft.requires_grad:
        soft = soft.clone()  # the hook must see the gradient of u alone, not soft's other uses
        soft.register_hook(lambda grad: grad.clamp(-clip, clip))
    return soft + (hard - soft).detach()


def steps_to_skip(delta_prob: Tensor, threshold: float = 0.5) -> Tensor:
    """N_skip of eq. 6: after an update with increment Δũ, the number of steps skipped.

    ``min{n ≥ 1 : n·Δũ > threshold} - 1``, as integers; ``> threshold`` (not ``≥``) matches
    the binarisation ``u = 1[ũ > threshold]`` used here, i.e. ``torch.round`` (half to even)
    at the default 0.5, including the exact tie ``ũ = 0.5`` which rounds to 0 (skip).
    Exact ties aside, this is the paper's formula. delta_prob: (B,) in [0, 1]; a Δũ that
    underflowed to 0 never updates again, which the cap at 2**62 steps stands for.
    """
    n = torch.floor(threshold / delta_prob).clamp(max=2.0**62) + 1  # smallest n with n·Δũ > threshold
    return (n - 1).clamp(min=0).long()


# The straight-through gradient graphs of ``SkipRNN(graph=...)``; the first is the default.
GRAPHS = RULES["graph"].choices


class SkipRNN(RecurrentBase):
    """A recurrent stack with the Skip RNN binary update gate.

    Options (METHODS.md §1):
        budget: λ of the budget loss ``λ Σ_t u_t`` (eq. 8), averaged over the batch. 0 by default.
        stochastic: sample ``u_t ~ Bernoulli(ũ_t)`` in training instead of rounding.
        threshold: ``u_t = 1[ũ_t > threshold]``; 0.5 is the paper's ``round`` (half to even:
            ũ = 0.5 skips). Raise it at inference to update less (the compute dial); in [0, 1],
            where 1 updates never.
        impl: "auto" jumps from update to update at inference (``adaptrnn.fast.skip``; eval
            mode under ``torch.no_grad()``), "reference" always runs this loop.
        graph: which straight-through gradient graph training uses (METHODS.md §1). The three
            give identical forward values (outputs, decisions, ũ, Δũ, cost); only gradients differ.
            With s̃_t the candidate state S(s_{t-1}, x_t) and s_t the gated state of eq. 3:

            - "official" (default), the graph of the official TensorFlow code that the paper's
              numbers came from: Δũ_t = u_t·σ(W_p s̃_t + b_p) + (1 − u_t)·Δũ_{t−1} (from the
              *candidate*, carried while skipping); cum'_t = (1 − u_t)·ũ_t;
              ũ_{t+1} = cum'_t + min(Δũ_t, 1 − cum'_t).
            - "paper-carried" (adaptrnn's only graph before this option existed): Δũ_t =
              u_t·σ(W_p s_t + b_p) + (1 − u_t)·Δũ_{t−1} (from the *gated* state, carried);
              ũ_{t+1} = u_t·Δũ_t + (1 − u_t)·(ũ_t + min(Δũ_t, 1 − ũ_t)) (eq. 5 as written).
            - "paper", eqs. 4-5 literally: Δũ_t = σ(W_p s_t + b_p) recomputed at every step from
              the gated state (when skipping s_t = s_{t−1}, so the value is the carried one), and
              eq. 5 as written. A hand-made state whose ``delta_prob`` is not σ(W_p s + b_p) is
              the one case where this form's values differ: it never reads ``delta_prob``.
        gate_grad_clip: None (default, as the paper) or a bound c > 0 on the gradient that the
            straight-through estimator passes from u_t to ũ_t, clamped elementwise to [-c, c].
            Forward values do not change. The gate feeds back into the state (eq. 3: ∂s_t/∂u_t =
            s̃_t − s_{t−1}) and the state into the gate (eq. 4), a loop the backward pass
            multiplies over every update; the bound caps what each pass of the loop carries
            (docs/stability.md measures it).

    Parameters beyond ``torch.nn``'s: ``update_weight`` (D,) and ``update_bias`` () of eq. 4
    (bias initialised to 1), and the learned initial state ``initial_cell`` (L, K, D).
    One gate serves the whole stack, computed from the top layer: from its cell state c
    for the LSTM (as the official code), from h otherwise — of the candidate or of the gated
    state as ``graph`` says (equal values: at an update the gated state is the candidate).

    Stats: ``updates`` is u_t; extras ``update_prob`` (B, T) is ũ_t.
    State extras: ``update_prob`` (B,) ũ for the next step, ``delta_prob`` (B,) the last Δũ.
    Full computation: u_t = 1 at every step.
    """

    OPTIONS = {
        "budget": 0.0,
        "stochastic": False,
        "threshold": 0.5,
        "impl": "auto",
        "graph": "official",
        "gate_grad_clip": None,
    }

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1, **kw) -> None:
        super().__init__(cell, input_size, hidden_size, num_layers, **kw)
        self.update_weight = nn.Parameter(torch.empty(hidden_size))
        self.update_bias = nn.Parameter(torch.ones(()))
        self.initial_cell = nn.Parameter(torch.zeros(num_layers, self.state_parts, hidden_size))
        bound = 1.0 / hidden_size**0.5
        nn.init.uniform_(self.update_weight, -bound, bound)

    def initial_state(self, batch: int, x: Tensor) -> RecurrentState:
        cell = self.initial_cell.unsqueeze(1).expand(-1, batch, -1, -1).to(x.dtype)  # (L, B, K, D)
        return RecurrentState(cell, self.initial_extras(batch, x))

    def initial_extras(self, batch: int, x: Tensor) -> dict[str, Tensor]:
        # ũ_1 = 1 forces an update at the first step; Δũ is recomputed there.
        return {"update_prob": x.new_ones(batch), "delta_prob": x.new_ones(batch)}

    def update_increment(self, cell: Tensor) -> Tensor:
        """Δũ = σ(W_p s + b_p) (eq. 4) from the top layer. cell: (L, B, K, D) -> (B,)."""
        top = cell[-1, :, -1]  # c for the LSTM, h otherwise
        return torch.sigmoid(top @ self.update_weight + self.update_bias)

    def binarize(self, update_prob: Tensor) -> Tensor:
        """u_t from ũ_t (eq. 2), straight-through in training."""
        if self.full_computation:
            return torch.ones_like(update_prob)
        if self.training and self.options["stochastic"]:
            hard = torch.bernoulli(update_prob.detach())
        else:
            hard = (update_prob > self.options["threshold"]).to(update_prob.dtype)
        return straight_through(hard, update_prob, self.options["gate_grad_clip"])

    def next_probability(
        self, u: Tensor, candidate: Tensor, new_cell: Tensor, update_prob: Tensor, delta_prob: Tensor
    ) -> tuple[Tensor, Tensor]:
        """(Δũ_t, ũ_{t+1}) (eqs. 4-5) in the straight-through graph of the ``graph`` option.

        u, update_prob (ũ_t), delta_prob (Δũ_{t-1}): (B,); candidate (s̃_t), new_cell (s_t):
        (L, B, K, D). The values agree for every graph; see the class docstring for the gradients.
        """
        graph = self.options["graph"]
        if graph == "official":
            # Skipping copies the state, so Δũ is carried rather than recomputed.
            delta = u * self.update_increment(candidate) + (1 - u) * delta_prob
            kept = (1 - u) * update_prob  # cum'_t: 0 after an update, ũ_t after a skip
            return delta, kept + torch.minimum(delta, 1 - kept)
        if graph == "paper-carried":
            delta = u * self.update_increment(new_cell) + (1 - u) * delta_prob
        else:  # "paper": eq. 4 at every step, from the gated state
            delta = self.update_increment(new_cell)
        return delta, u * delta + (1 - u) * (update_prob + torch.minimum(delta, 1 - update_prob))  # eq. 5

    def _forward(self, x: Tensor, state: RecurrentState, valid: Tensor | None) -> tuple[Tensor, RecurrentState, Stats]:
        seq_len, batch = x.shape[:2]
        weights = self.joint_stack_weights()
        # Unbound once: indexing a (T, ...) tensor at [t] in the loop makes autograd build a
        # full-size gradient per step.
        steps = x.unbind(0)  # T × (B, I)
        cell = state.cell  # (L, B, K, D)
        update_prob, delta_prob = state.extras["update_prob"], state.extras["delta_prob"]
        outs, gates, probs = [], [], []
        for t in range(seq_len):
            valid_t = None if valid is None else valid[t]
            u = self.binarize(update_prob)  # (B,)
            candidate = self.stack_step(steps[t], cell, weights)
            # Eq. 3, s_t = u_t·S + (1 − u_t)·s_{t-1}, as one lerp s + u·(S − s): exactly S at u = 1
            # and s at u = 0, with the same gradients.
            new_cell = torch.lerp(cell, candidate, u.view(1, -1, 1, 1))
            new_delta, new_prob = self.next_probability(u, candidate, new_cell, update_prob, delta_prob)
            probs.append(update_prob)
            gates.append(u)
            cell = keep_where(valid_t, new_cell, cell, batch_dim=1)  # (L, B, K, D)
            delta_prob = keep_where(valid_t, new_delta, delta_prob)
            update_prob = keep_where(valid_t, new_prob, update_prob)
            outs.append(cell[-1, :, 0])
        weight = valid_float(valid, seq_len, batch, x)  # (T, B)
        updates = (torch.stack(gates) * weight).t()  # (B, T), differentiable (straight-through)
        cost = self.options["budget"] * updates.sum(1).mean()
        macs_per_update = sum(self.dense_step_macs()) + self.hidden_size  # cell stack + gate
        flops = updates.detach().sum(1) * macs_per_update
        final = RecurrentState(cell, {"update_prob": update_prob, "delta_prob": delta_prob})
        extras = {"update_prob": (torch.stack(probs) * weight).t().detach()}
        return torch.stack(outs), final, Stats(updates.detach(), cost, flops, extras)


class RandomSkipRNN(SkipRNN):
    """The random-skip baseline of Skip RNN Table 1: ``u_t ~ Bernoulli(1 - skip_prob)`` per step.

    Options:
        skip_prob: probability of skipping a step (0.5 in the paper), in training and at inference.

    The gate is not learned: its parameters are frozen and the budget is 0. The FLOPs count
    the cell stack only, since no gate is evaluated (the paper's 1.23e6 = half of the LSTM's).
    Full computation: u_t = 1 at every step.
    """

    OPTIONS = {"skip_prob": 0.5}

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1, **kw) -> None:
        super().__init__(cell, input_size, hidden_size, num_layers, **kw)
        self.options = {**SkipRNN.OPTIONS, **self.options}
        self.update_weight.requires_grad_(False)
        self.update_bias.requires_grad_(False)

    def binarize(self, update_prob: Tensor) -> Tensor:
        if self.full_computation:
            return torch.ones_like(update_prob)
        return torch.bernoulli(torch.full_like(update_prob, 1.0 - float(self.options["skip_prob"])))

    def _forward(self, x: Tensor, state: RecurrentState, valid: Tensor | None) -> tuple[Tensor, RecurrentState, Stats]:
        out, final, stats = super()._forward(x, state, valid)
        stats.flops = stats.updates.sum(1) * sum(self.dense_step_macs())
        return out, final, stats
