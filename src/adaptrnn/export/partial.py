"""Exportable steps of the methods that update part of each layer: VCRNN and SA-RNN.

The part to compute is known only at run time, so the weights are cut inside the step:

- VCRNN (METHODS.md §3, hard mask): the first d_t = ceil(m_t·D) dimensions. The recurrent
  product uses the upper-left block of W_hh that covers d_t (``vc_blocks``: blocks stored at
  eight sizes, chosen by nested ONNX ``If``), so it costs about (d_t/D)² of the dense one;
  the input product (I columns, small) is computed whole and sliced (ONNX ``Slice`` with a
  runtime end) to the first d_t rows of each gate, as are the state and the element-wise work.
- SA-RNN (METHODS.md §4): the neurons with u_t,i = 1. The step gathers their rows of
  every gate block (ONNX ``Gather`` with runtime indices), computes them, and scatters the
  new values back (``ScatterElements``).

Layers run one after the other within the step (layer k reads layer k-1's new h), which
is the reference's order. With B > 1 the cut covers every example's part (the largest d_t,
the union of active neurons) and a per-example mask keeps the rest, as the reference does.
"""

# No ``from __future__ import annotations``: TorchScript reads the annotations as real types.
import torch
from torch import Tensor, nn

from ..methods.sa import SARNN
from ..methods.vc import VCRNN
from ..model import SequenceModel
from .parts import Head, Layer
from .steps import make_encoder
from .vc_blocks import BlockProduct


class VCLayer(nn.Module):
    """One VCRNN layer with its scheduler m_t = σ(u·h_{t-1} + v·x_t + b) (times ``scale``)."""

    hidden: int
    gates: int
    scale: float

    def __init__(self, rnn: VCRNN, layer: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.cell = Layer(rnn, layer, dtype)
        self.hidden, self.gates = self.cell.hidden, self.cell.gates
        self.scale = float(rnn.options["scale"])
        for part in ("h", "x", "bias"):
            value = getattr(rnn, f"scheduler_{part}_l{layer}").detach().to(dtype).clone()
            self.register_buffer(f"scheduler_{part}", value)
        self.recurrent = BlockProduct(self.cell.w_hh, self.cell.b_hh, self.gates, self.hidden)

    def forward(self, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """x: (B, I) layer input; s: (B, K, D) -> new s (B, K, D), d_t (B,) int64."""
        h = s[:, 0]
        m = torch.sigmoid(torch.matmul(h, self.scheduler_h) + torch.matmul(x, self.scheduler_x) + self.scheduler_bias)
        m = (m * self.scale).clamp(max=1.0)
        d = torch.ceil(m * self.hidden).long().clamp(1, self.hidden)  # (B,) d_t
        top = int(d.max())  # the runtime bound of the slices
        batch, gates, width = x.shape[0], self.gates, self.hidden
        # e_t: 1 on each example's first d_t dimensions.
        e = (torch.arange(1, width + 1, device=x.device).unsqueeze(0) <= d.unsqueeze(1)).to(x.dtype)  # (B, D)
        # The input product is small (I columns): computed whole, its first d_t rows per gate kept.
        gx = self.cell.project(x).reshape(batch, gates, width)[:, :, :top]  # (B, G, top)
        gh = self.recurrent(e * h, top)  # (B, G, top)
        e = e[:, :top]
        head = s[:, :, :top]  # (B, K, top)
        candidate = self.cell.pointwise(gx, gh, head)
        # e_t ⊙ S + (1 - e_t) ⊙ s as a selection (e is 0 or 1); it masks h and c alike.
        return torch.cat((torch.where(e.unsqueeze(1) > 0, candidate, head), s[:, :, top:]), dim=2), d


class VCStep(nn.Module):
    """VCRNN, hard mask.

    forward(x, cell (L, B, K, D)) -> y (B, O), cell_next, updates (B,) = mean over layers
        of d_t/D, active_dims (L, B) int64 d_t of each layer.
    """

    hidden: int

    def __init__(self, model: SequenceModel, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        rnn = model.rnn
        assert isinstance(rnn, VCRNN)
        self.encoder = make_encoder(model, dtype)
        self.layers = nn.ModuleList([VCLayer(rnn, k, dtype) for k in range(rnn.num_layers)])
        self.head = Head(model.head, dtype)
        self.hidden = rnn.hidden_size

    def forward(self, x: Tensor, cell: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        layer_in = self.encoder(x)
        new, dims = [], []
        k = 0
        for layer in self.layers:
            s, d = layer(layer_in, cell[k])
            new.append(s)
            dims.append(d)
            layer_in = s[:, 0]
            k += 1
        active = torch.stack(dims)  # (L, B)
        updates = (active.to(cell.dtype) / self.hidden).mean(0)
        return self.head(layer_in), torch.stack(new), updates, active


class SALayer(nn.Module):
    """One SA-RNN layer: ũ_t = hardσ_α(W_u ⊙ h + W_i x + b), u_t = 1[ũ_t > threshold]."""

    hidden: int
    gates: int
    slope: float
    threshold: float

    def __init__(self, rnn: SARNN, layer: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.cell = Layer(rnn, layer, dtype)
        self.hidden, self.gates = self.cell.hidden, self.cell.gates
        self.slope, self.threshold = float(rnn.slope), float(rnn.options["threshold"])
        diag, w_i, b_u = rnn.gate_weights(layer)
        for name, value in (("gate_diag", diag), ("gate_w", w_i), ("gate_b", b_u)):
            self.register_buffer(name, value.detach().to(dtype).clone())

    def forward(self, x: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """x: (B, I) layer input; s: (B, K, D) -> new s (B, K, D), u_t (B, D) float."""
        h = s[:, 0]
        likelihood = (self.slope * (self.gate_diag * h + nn.functional.linear(x, self.gate_w, self.gate_b)) + 1) / 2
        u = (likelihood.clamp(0.0, 1.0) > self.threshold).to(x.dtype)  # (B, D)
        rows = torch.nonzero(u.sum(0) > 0).reshape(-1)  # (n,) the active neurons of any example
        if rows.shape[0] == 0:
            return s, u
        batch, gates, width, n = x.shape[0], self.gates, self.hidden, rows.shape[0]
        w_ih = self.cell.w_ih.reshape(gates, width, -1).index_select(1, rows).reshape(gates * n, -1)
        b_ih = self.cell.b_ih.reshape(gates, width).index_select(1, rows).reshape(gates * n)
        w_hh = self.cell.w_hh.reshape(gates, width, width).index_select(1, rows).reshape(gates * n, width)
        b_hh = self.cell.b_hh.reshape(gates, width).index_select(1, rows).reshape(gates * n)
        gx = nn.functional.linear(x, w_ih, b_ih).reshape(batch, gates, n)
        gh = nn.functional.linear(h, w_hh, b_hh).reshape(batch, gates, n)  # the whole h is read
        old = s.index_select(2, rows)  # (B, K, n)
        candidate = self.cell.pointwise(gx, gh, old)
        keep = u.index_select(1, rows).unsqueeze(1) > 0  # u ⊙ S + (1 - u) ⊙ s as a selection; h and c alike
        return s.index_copy(2, rows, torch.where(keep, candidate, old)), u


class SAStep(nn.Module):
    """SA-RNN.

    forward(x, cell (L, B, K, D)) -> y (B, O), cell_next, updates (B,) = mean over layers
        of the fraction of neurons updated, neuron_mask (B, D) u_t of the top layer.
    """

    hidden: int

    def __init__(self, model: SequenceModel, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        rnn = model.rnn
        assert isinstance(rnn, SARNN)
        self.encoder = make_encoder(model, dtype)
        self.layers = nn.ModuleList([SALayer(rnn, k, dtype) for k in range(rnn.num_layers)])
        self.head = Head(model.head, dtype)
        self.hidden = rnn.hidden_size

    def forward(self, x: Tensor, cell: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        layer_in = self.encoder(x)
        new, fractions = [], []
        mask = torch.zeros_like(cell[0, :, 0])
        k = 0
        for layer in self.layers:
            s, mask = layer(layer_in, cell[k])
            new.append(s)
            fractions.append(mask.sum(1) / self.hidden)
            layer_in = s[:, 0]
            k += 1
        return self.head(layer_in), torch.stack(new), torch.stack(fractions).mean(0), mask
