"""Variable Computation RNN (Jernite et al., ICLR 2017): update only the first d_t dimensions.

Notation as in METHODS.md §3: scheduler m_t, soft mask e_t with sharpness λ and threshold ε.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..cells import GATES, joint_step, joint_weights
from ..layer import RecurrentBase, RecurrentState, Stats, keep_where, valid_float


def threshold_eps(z: Tensor, epsilon: float) -> Tensor:
    """Thres_ε: 1 above 1 - ε, 0 below ε, identity in between (gradient kept in between)."""
    return torch.where(z > 1 - epsilon, 1.0, torch.where(z < epsilon, 0.0, z))


def soft_mask(m: Tensor, hidden_size: int, sharpness: float, epsilon: float) -> Tensor:
    """(e_t)_i = Thres_ε(σ(λ (m_t·D - i))), counting i = 0..D-1. m: (B,) -> (B, D).

    Counting from 0 makes the λ → ∞ limit the hard mask: dimension i (0-based) is on iff
    i < m_t·D, i.e. the first ceil(m_t·D) dimensions, and the first one always (e_0 ≥ 1/2).
    Counting from 1 (the paper's notation) would give floor(m_t·D), one fewer than
    :func:`hard_mask`, so training and inference would disagree.
    """
    # λ (m D - i) as λ D m - λ i: one add of the scaled column onto the (D,) offsets, a few fewer
    # (B, D) operations per step in the training loop (forward and backward)
    offsets = torch.arange(hidden_size, device=m.device, dtype=m.dtype) * -sharpness
    return threshold_eps(torch.sigmoid(torch.add(offsets, m.unsqueeze(1), alpha=sharpness * hidden_size)), epsilon)


def hard_mask(m: Tensor, hidden_size: int) -> Tensor:
    """1 on the first d_t = ceil(m_t·D) dimensions (at least one), 0 after. m: (B,) -> (B, D)."""
    d = active_dims(m, hidden_size)
    i = torch.arange(1, hidden_size + 1, device=m.device)
    return (i.unsqueeze(0) <= d.unsqueeze(1)).to(m.dtype)


def active_dims(m: Tensor, hidden_size: int) -> Tensor:
    """d_t = ceil(m_t·D), clamped to 1..D. m: (B,) -> (B,) int64."""
    return torch.ceil(m * hidden_size).long().clamp(1, hidden_size)


class VCRNN(RecurrentBase):
    """A recurrent stack whose scheduler picks how many leading dimensions to update.

    Options (METHODS.md §3):
        target: m̄, the target fraction of computation (0.5).
        penalty: weight of the cost ``penalty · mean_t |m_t - m̄|`` (mean over steps and
            layers, averaged over the batch; a mean so the weight does not scale with T). 1.0.
        sharpness: λ of the soft mask at the start; raise it with ``set_sharpness``. 1.0.
        epsilon: ε of Thres_ε (0.1).
        hard: None = the hard version in eval mode and the soft one in training;
            True / False to force either.
        scale: multiplies m_t before the mask; the inference compute dial (1.0).
        detach_scheduler_state: stop the gradient through h_{t-1} inside the scheduler (m_t
            reads h_{t-1}, its gradient reaches u but not h_{t-1}). Not in the paper (False).
            Why offer it: the soft mask's slope in m_t is about λD/4 at the active boundary, so
            the recurrent Jacobian gains a term of that size through u·h_{t-1}; as λ ramps up
            it can make the gradient explode over the BPTT window (docs/results.md, VCRNN).
        impl: "auto" multiplies only the d_t × d_t blocks in hard mode at inference
            (``adaptrnn.fast.vc``; eval mode under ``torch.no_grad()``), "reference" always runs this loop.

    Each layer has its own scheduler ``m_t = σ(u·h_{t-1} + v·x_t + b)``: parameters
    ``scheduler_h_l{k}`` (D,), ``scheduler_x_l{k}`` (I_k,), ``scheduler_bias_l{k}`` ().
    Soft version: the recurrent matrix product reads ``e_t ⊙ h_{t-1}`` (``W_hh (e_t ⊙ h_{t-1})``,
    for every gate), while the cell's own carry reads the raw previous state: the GRU's
    ``z ⊙ h_{t-1}`` and the LSTM's ``f ⊙ c_{t-1}``. The new state (h and c) is then
    ``e_t ⊙ S + (1 - e_t) ⊙ s_{t-1}``. Why the carry is not masked: where the hard version
    computes a dimension, e_i = 1 and masking changes nothing, so either choice has the same hard
    limit; but in the soft version a masked carry would leave a GRU dimension
    ``e_i(1 - z_i) n_i + (e_i² z_i + 1 - e_i) h_i``, weights summing to less than 1: a decay
    towards 0 of every partly masked dimension that neither the plain GRU nor the hard version
    has. Unmasked, each new value is a convex combination of the candidate n_i and h_i.
    The input x_t is not masked (for a one-hot or embedded input, masking it would discard
    information). Hard version: the binary mask of the first d_t dimensions, which is what
    computing only the upper-left blocks of the weights gives (``adaptrnn.fast`` does that).

    Stats: ``updates`` is the mean over layers of d_t/D (soft: Σ_i e_i / D); extras
    ``scheduler`` (B, T) is m_t (mean over layers).
    Full computation: e_t = 1 (all D dimensions).
    """

    OPTIONS = {
        "target": 0.5,
        "penalty": 1.0,
        "sharpness": 1.0,
        "epsilon": 0.1,
        "hard": None,
        "scale": 1.0,
        "impl": "auto",
        "detach_scheduler_state": False,
    }

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1, **kw) -> None:
        super().__init__(cell, input_size, hidden_size, num_layers, **kw)
        self.register_buffer("sharpness", torch.tensor(float(self.options["sharpness"])))
        for layer in range(num_layers):
            in_size = input_size if layer == 0 else hidden_size
            h_w, x_w = torch.empty(hidden_size), torch.empty(in_size)
            nn.init.uniform_(h_w, -1 / math.sqrt(hidden_size), 1 / math.sqrt(hidden_size))
            nn.init.uniform_(x_w, -1 / math.sqrt(in_size), 1 / math.sqrt(in_size))
            self.register_parameter(f"scheduler_h_l{layer}", nn.Parameter(h_w))
            self.register_parameter(f"scheduler_x_l{layer}", nn.Parameter(x_w))
            self.register_parameter(f"scheduler_bias_l{layer}", nn.Parameter(torch.zeros(())))

    def set_sharpness(self, value: float) -> None:
        """The sharpness-schedule hook: set λ of the soft mask (kept in checkpoints)."""
        self.sharpness.fill_(float(value))

    @property
    def is_hard(self) -> bool:
        hard = self.options["hard"]
        return (not self.training) if hard is None else bool(hard)

    def scheduler(self, layer: int, h: Tensor, x_score: Tensor) -> Tensor:
        """m_t = σ(u·h_{t-1} + v·x_t + b), times the ``scale`` dial (capped at 1).

        h: (B, D); x_score: (B,) the input term v·x_t (:meth:`input_scores`) -> (B,).
        """
        u, b = getattr(self, f"scheduler_h_l{layer}"), getattr(self, f"scheduler_bias_l{layer}")
        h = h.detach() if self.options["detach_scheduler_state"] else h
        m = torch.sigmoid(h @ u + x_score + b)
        scale = float(self.options["scale"])
        return m if scale == 1.0 else (m * scale).clamp(max=1.0)

    def input_scores(self, layer: int, layer_in: Tensor) -> Tensor:
        """v·x_t for every step at once: (T, B, C) -> (T, B)."""
        return layer_in @ getattr(self, f"scheduler_x_l{layer}")

    def mask(self, m: Tensor) -> Tensor:
        """e_t (B, D): soft in training, binary in hard mode, all ones under full computation."""
        if self.full_computation:
            return torch.ones(m.shape[0], self.hidden_size, device=m.device, dtype=m.dtype)
        if self.is_hard:
            return hard_mask(m, self.hidden_size)
        return soft_mask(m, self.hidden_size, float(self.sharpness), float(self.options["epsilon"]))

    def _forward(self, x: Tensor, state: RecurrentState, valid: Tensor | None) -> tuple[Tensor, RecurrentState, Stats]:
        seq_len, batch = x.shape[:2]
        weight = valid_float(valid, seq_len, batch, x)  # (T, B)
        gates = GATES[self.cell]
        finals, fractions, schedules, flops = [], [], [], x.new_zeros(batch)
        deviation = x.new_zeros(batch)
        layer_in = x  # (T, B, I)
        for layer in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = self.layer_weights(layer)
            in_size = layer_in.shape[-1]
            # The cell: one product of [x_t, e_t ⊙ h_{t-1}] per step (cells.joint_step).
            weight_t, bias = joint_weights(self.cell, w_ih, w_hh, b_ih, b_hh)
            # Unbound once: indexing a (T, ...) tensor at [t] in the loop makes autograd build a
            # full-size gradient per step.
            steps_in = layer_in.unbind(0)  # T × (B, I)
            x_scores = self.input_scores(layer, layer_in).unbind(0)  # T × (B,) the scheduler's input term
            s = state.cell[layer]  # (B, K, D)
            h = s[:, 0]  # h_{t-1}: selected once per step, read by the scheduler, the product and the output
            outs, layer_fraction, layer_m = [], [], []
            for t in range(seq_len):
                m = self.scheduler(layer, h, x_scores[t])  # (B,)
                e = self.mask(m)  # (B, D)
                candidate = joint_step(self.cell, steps_in[t], e * h, s, weight_t, bias)  # S_masked(h_{t-1}, x_t)
                # h_t = e_t ⊙ S + (1 − e_t) ⊙ s_{t-1} for h and c alike, as one lerp s + e ⊙ (S − s)
                # (exactly S where e = 1 and s where e = 0), with the same gradients.
                s = keep_where(None if valid is None else valid[t], torch.lerp(s, candidate, e.unsqueeze(1)), s)
                h = s[:, 0]
                outs.append(h)
                layer_fraction.append(e.detach().sum(1))
                layer_m.append(m)
            d = torch.stack(layer_fraction) * weight  # (T, B) dimensions updated
            m = torch.stack(layer_m)  # (T, B)
            # Cell rows/columns actually needed, plus the scheduler's two dot products.
            flops = flops + ((gates * d * (in_size + d)) + weight * (self.hidden_size + in_size)).sum(0)
            fractions.append(d / self.hidden_size)
            schedules.append(m.detach() * weight)
            target = float(self.options["target"])
            deviation = deviation + ((m - target).abs() * weight).sum(0) / weight.sum(0).clamp(min=1)
            finals.append(s)
            layer_in = self.layer_input_dropout(torch.stack(outs), layer)
        updates = (torch.stack(fractions).mean(0)).t()  # (B, T)
        cost = self.options["penalty"] * (deviation / self.num_layers).mean()
        extras = {"scheduler": torch.stack(schedules).mean(0).t()}
        return layer_in, RecurrentState(torch.stack(finals)), Stats(updates, cost, flops, extras)
