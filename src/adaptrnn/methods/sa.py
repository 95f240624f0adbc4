"""SA-RNN (Hartvigsen et al., CIKM 2020): selectively update individual state neurons.

Notation as in METHODS.md §4: per-neuron update likelihood ũ_t, binary update u_t.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..cells import GATES, cell_step, input_projection
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

    def update_likelihood(self, h: Tensor, gate_x: Tensor, diag: Tensor) -> Tensor:
        """ũ_t = hardσ_α(W_u h_{t-1} + W_i x_t + b); gate_x holds W_i x_t + b. -> (B, D)."""
        return hard_sigmoid(diag * h + gate_x, float(self.slope))

    def binarize(self, likelihood: Tensor) -> Tensor:
        """u_t = 1[ũ_t > threshold], straight-through."""
        if self.full_computation:
            return torch.ones_like(likelihood)
        hard = (likelihood > self.options["threshold"]).to(likelihood.dtype)
        return straight_through(hard, likelihood)

    def _forward(self, x: Tensor, state: RecurrentState, valid: Tensor | None) -> tuple[Tensor, RecurrentState, Stats]:
        seq_len, batch = x.shape[:2]
        weight = valid_float(valid, seq_len, batch, x)  # (T, B)
        gates = GATES[self.cell]
        finals, fractions = [], []
        flops, likelihood_sum = x.new_zeros(batch), x.new_zeros(batch)
        layer_in = x  # (T, B, I)
        for layer in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = self.layer_weights(layer)
            diag, w_i, b_u = self.gate_weights(layer)
            in_size = layer_in.shape[-1]
            # Unbound once: indexing a (T, ...) tensor at [t] in the loop makes autograd build a
            # full-size gradient per step.
            gx = input_projection(layer_in, w_ih, b_ih).unbind(0)  # T × (B, G*D)
            gate_x = input_projection(layer_in, w_i, b_u).unbind(0)  # T × (B, D)
            s = state.cell[layer]  # (B, K, D)
            outs, masks, likelihoods = [], [], []
            for t in range(seq_len):
                h_gate = s[:, 0].detach() if self.options["detach_gate_state"] else s[:, 0]
                likelihood = self.update_likelihood(h_gate, gate_x[t], diag)
                u = self.binarize(likelihood)  # (B, D)
                candidate = cell_step(self.cell, gx[t], s, w_hh, b_hh)
                u3 = u.unsqueeze(1)  # (B, 1, D) keeps h and c alike
                s = keep_where(None if valid is None else valid[t], u3 * candidate + (1 - u3) * s, s)
                outs.append(s[:, 0])
                masks.append(u.detach())
                likelihoods.append(likelihood)
            mask = torch.stack(masks) * weight.unsqueeze(-1)  # (T, B, D)
            active = mask.sum(-1)  # (T, B) neurons updated
            likelihood_sum = likelihood_sum + (torch.stack(likelihoods).sum(-1) * weight).sum(0)
            # Rows of the active neurons only, plus the gate (diagonal and W_i x).
            gate_macs = self.hidden_size * (1 + in_size)
            flops = flops + (gates * active * (in_size + self.hidden_size) + weight * gate_macs).sum(0)
            fractions.append(active / self.hidden_size)
            finals.append(s)
            layer_in = self.layer_input_dropout(torch.stack(outs), layer)
        updates = torch.stack(fractions).mean(0).t()  # (B, T)
        cost = self.options["budget"] * likelihood_sum.mean()
        extras = {"neuron_updates": mask.transpose(0, 1)}
        return layer_in, RecurrentState(torch.stack(finals)), Stats(updates, cost, flops, extras)
