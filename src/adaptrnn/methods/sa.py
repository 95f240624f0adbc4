"""SA-RNN (Hartvigsen et al., CIKM 2020): selectively update individual state neurons.

Notation as in METHODS.md §4: per-neuron update likelihood ũ_t, binary update u_t.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..cells import GATES, input_projection, joint_step, joint_weights
from ..layer import RecurrentBase, RecurrentState, Stats, keep_where, valid_float
from .skip import straight_through


def hard_sigmoid(z: Tensor, slope: float) -> Tensor:
    """hardσ_α(z) = clamp((α z + 1) / 2, 0, 1)."""
    return ((slope * z + 1) / 2).clamp(0.0, 1.0)


class SARNN(RecurrentBase):
    """A recurrent stack in which each neuron decides at each step whether to update.

    Options (METHODS.md §4):
        budget: λ of the cost ``λ Σ_t Σ_i ũ_t,i`` (on the probabilities, as the paper;
            the official code penalises the binarised values), summed over layers and
            averaged over the batch. 0 by default (the paper reports λ = 0 as reasonable).
        slope: α of the hard sigmoid at the start; anneal it with ``set_slope``
            (the paper: ``α = min(5, 1 + 0.04·epoch)``). 1.0.
        threshold: u = 1[ũ > threshold]; 0.5 in the paper; the inference compute dial, in [0, 1].
        impl: "auto" computes only the updating neurons' rows at inference
            (``adaptrnn.fast.sa``; eval mode under ``torch.no_grad()``), "reference" always runs this loop.
        gate_init: "official" (default), the official code's ``nn.Linear(I_k + D, D)`` init:
            diag(W_u), W_i and b all ~ U(±1/sqrt(I_k + D)), so about half the neurons update at
            the start; "open", adaptrnn's earlier init: diag(W_u) ~ U(±1/sqrt(D)),
            W_i ~ U(±1/sqrt(I_k)), b = 0.5, so every neuron updates at first (ũ = 0.75 with a
            zero pre-activation).
        detach_gate_state: stop the gradient through h_{t-1} inside the gate (ũ_t reads
            ``h_{t-1}.detach()``). Forward values are unchanged; the straight-through path
            u_t -> ũ_t -> h_{t-1} that makes gradients explode over long sequences (METHODS.md §4)
            is cut. False by default (the paper's and the official code's graph).

    Per layer: ``update_weight_hh_l{k}`` (D,) is the diagonal of W_u, a vector by
    construction so it cannot grow off-diagonal terms; ``update_weight_ih_l{k}`` (D, I_k)
    is W_i; ``update_bias_l{k}`` (D,) is b. For the LSTM both h and c of a neuron are kept
    when it does not update.

    Stats: ``updates`` is the fraction of neurons updated (mean over layers); extras
    ``neuron_updates`` (B, T, D) is u_t of the top layer.
    Full computation: u_t = 1 for every neuron.
    """

    OPTIONS = {
        "budget": 0.0,
        "slope": 1.0,
        "threshold": 0.5,
        "impl": "auto",
        "gate_init": "official",
        "detach_gate_state": False,
    }

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1, **kw) -> None:
        super().__init__(cell, input_size, hidden_size, num_layers, **kw)
        self.register_buffer("slope", torch.tensor(float(self.options["slope"])))
        for layer in range(num_layers):
            in_size = input_size if layer == 0 else hidden_size
            diag, w_i, bias = torch.empty(hidden_size), torch.empty(hidden_size, in_size), torch.empty(hidden_size)
            if self.options["gate_init"] == "official":
                bound = 1 / math.sqrt(in_size + hidden_size)  # nn.Linear over the concatenation [h, x]
                for p in (diag, w_i, bias):
                    nn.init.uniform_(p, -bound, bound)
            else:
                nn.init.uniform_(diag, -1 / math.sqrt(hidden_size), 1 / math.sqrt(hidden_size))
                nn.init.uniform_(w_i, -1 / math.sqrt(in_size), 1 / math.sqrt(in_size))
                bias.fill_(0.5)
            self.register_parameter(f"update_weight_hh_l{layer}", nn.Parameter(diag))
            self.register_parameter(f"update_weight_ih_l{layer}", nn.Parameter(w_i))
            self.register_parameter(f"update_bias_l{layer}", nn.Parameter(bias))

    def set_slope(self, value: float) -> None:
        """The annealing hook: set α of the hard sigmoid (kept in checkpoints)."""
        self.slope.fill_(float(value))

    def gate_weights(self, layer: int) -> tuple[Tensor, Tensor, Tensor]:
        """(diagonal of W_u (D,), W_i (D, I), b (D,)) of one layer."""
        return tuple(getattr(self, f"update_{n}_l{layer}") for n in ("weight_hh", "weight_ih", "bias"))

    def binarize(self, likelihood: Tensor) -> Tensor:
        """u_t = 1[ũ_t > threshold], straight-through."""
        if self.full_computation:
            return torch.ones_like(likelihood)
        hard = (likelihood > self.options["threshold"]).to(likelihood.dtype)
        return straight_through(hard, likelihood)

    def _forward(self, x: Tensor, state: RecurrentState, valid: Tensor | None) -> tuple[Tensor, RecurrentState, Stats]:
        seq_len, batch = x.shape[:2]
        weight = valid_float(valid, seq_len, batch, x)  # (T, B)
        gates, size = GATES[self.cell], self.hidden_size
        half_slope = float(self.slope) / 2
        finals, fractions = [], []
        flops, likelihood_sum = x.new_zeros(batch), x.new_zeros(batch)
        layer_in = x  # (T, B, I)
        for layer in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = self.layer_weights(layer)
            diag, w_i, b_u = self.gate_weights(layer)
            in_size = layer_in.shape[-1]
            # ũ_t = hardσ_α(W_u h_{t-1} + W_i x_t + b) = clamp(a ⊙ h_{t-1} + c_t, 0, 1) (METHODS.md §4),
            # with a = α/2 · diag(W_u) and c_t = α/2 · (W_i x_t + b) + 1/2: the hard sigmoid's affine
            # part folded into the gate's weights, so that a step adds one fused product and a clamp.
            # c_t does not depend on the state: one product for every step at once.
            gate_a = diag * half_slope  # (D,)
            gate_c = input_projection(layer_in, w_i * half_slope, b_u * half_slope + 0.5).unbind(0)  # T × (B, D)
            # The cell: one product of [x_t, h_{t-1}] per step (cells.joint_step).
            weight_t, bias = joint_weights(self.cell, w_ih, w_hh, b_ih, b_hh)
            # Unbound once: indexing a (T, ...) tensor at [t] in the loop makes autograd build a
            # full-size gradient per step.
            steps = layer_in.unbind(0)  # T × (B, I)
            s = state.cell[layer]  # (B, K, D)
            h = s[:, 0]  # h_{t-1}: selected once per step, read by the gate, the product and the output
            outs, masks, likelihoods = [], [], []
            for t in range(seq_len):
                h_gate = h.detach() if self.options["detach_gate_state"] else h
                likelihood = torch.addcmul(gate_c[t], gate_a, h_gate).clamp(0.0, 1.0)  # ũ_t (B, D)
                u = self.binarize(likelihood)  # u_t (B, D), straight-through
                candidate = joint_step(self.cell, steps[t], h, s, weight_t, bias)  # S(s_{t-1}, x_t)
                # s_t = u_t ⊙ S + (1 − u_t) ⊙ s_{t-1} for h and c alike, as one lerp s + u ⊙ (S − s):
                # exactly S where u = 1 and s where u = 0 (torch.lerp), with the same gradients.
                s = keep_where(None if valid is None else valid[t], torch.lerp(s, candidate, u.unsqueeze(1)), s)
                h = s[:, 0]
                outs.append(h)
                masks.append(u.detach())
                likelihoods.append(likelihood)
            mask = torch.stack(masks) * weight.unsqueeze(-1)  # (T, B, D)
            active = mask.sum(-1)  # (T, B) neurons updated
            likelihood_sum = likelihood_sum + (torch.stack(likelihoods).sum(-1) * weight).sum(0)
            # Rows of the active neurons only, plus the gate (diagonal and W_i x).
            gate_macs = size * (1 + in_size)
            flops = flops + (gates * active * (in_size + size) + weight * gate_macs).sum(0)
            fractions.append(active / size)
            finals.append(s)
            layer_in = self.layer_input_dropout(torch.stack(outs), layer)
        updates = torch.stack(fractions).mean(0).t()  # (B, T)
        cost = self.options["budget"] * likelihood_sum.mean()
        extras = {"neuron_updates": mask.transpose(0, 1)}
        return layer_in, RecurrentState(torch.stack(finals)), Stats(updates, cost, flops, extras)
