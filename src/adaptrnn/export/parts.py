"""Scriptable pieces of an exported step: input encoders, cell arithmetic, layers, the head.

Everything here is written for ``torch.jit.script``: one class per cell (chosen in Python
when the step is built, so no string comparison reaches the graph), weights held as
buffers copied from the trained module, fixed shapes documented per method.

Gate blocks are addressed as (B, G, n) tensors, n the number of state dimensions being
computed: D for a full step, d_t for a VCRNN sub-block, the active neurons for SA-RNN. The
arithmetic is that of ``adaptrnn.cells.pointwise`` (``torch.nn``'s gate order), so an
exported step agrees with the reference to float rounding.
"""

# No ``from __future__ import annotations``: TorchScript reads the annotations as real types.
import torch
from torch import Tensor, nn

from ..cells import GATES
from ..layer import RecurrentBase


class FeatureInput(nn.Module):
    """Float features: x_t (B, I) is the layer-0 input as it is."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class TokenInput(nn.Module):
    """Token ids: x_t (B,) int64 -> the embedding rows (B, E)."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.embedding(x, self.weight)


class RNNPointwise(nn.Module):
    """tanh-RNN: h = tanh(gx + gh). gx, gh: (B, 1, n); s: (B, 1, n) -> (B, 1, n)."""

    def forward(self, gx: Tensor, gh: Tensor, s: Tensor) -> Tensor:
        return torch.tanh(gx[:, 0] + gh[:, 0]).unsqueeze(1)


class GRUPointwise(nn.Module):
    """GRU (r, z, n), n = tanh(gx_n + r ⊙ gh_n). gx, gh: (B, 3, n); s: (B, 1, n) -> (B, 1, n)."""

    def forward(self, gx: Tensor, gh: Tensor, s: Tensor) -> Tensor:
        r = torch.sigmoid(gx[:, 0] + gh[:, 0])
        z = torch.sigmoid(gx[:, 1] + gh[:, 1])
        n = torch.tanh(gx[:, 2] + r * gh[:, 2])
        return ((1 - z) * n + z * s[:, 0]).unsqueeze(1)


class LSTMPointwise(nn.Module):
    """LSTM (i, f, g, o). gx, gh: (B, 4, n); s: (B, 2, n) holding (h, c) -> (B, 2, n)."""

    def forward(self, gx: Tensor, gh: Tensor, s: Tensor) -> Tensor:
        g = gx + gh
        c = torch.sigmoid(g[:, 1]) * s[:, 1] + torch.sigmoid(g[:, 0]) * torch.tanh(g[:, 2])
        h = torch.sigmoid(g[:, 3]) * torch.tanh(c)
        return torch.stack((h, c), dim=1)


POINTWISE = {"rnn": RNNPointwise, "gru": GRUPointwise, "lstm": LSTMPointwise}


class Layer(nn.Module):
    """One layer's weights in ``torch.nn`` layout and its full step.

    Buffers: ``w_ih`` (G*D, I), ``w_hh`` (G*D, D), ``b_ih``/``b_hh`` (G*D,) (zeros for a
    module built without bias, which adds nothing).
    """

    gates: int
    hidden: int

    def __init__(self, module: RecurrentBase, layer: int, dtype: torch.dtype) -> None:
        super().__init__()
        w_ih, w_hh, b_ih, b_hh = module.layer_weights(layer)
        rows = w_ih.shape[0]
        self.gates, self.hidden = GATES[module.cell], module.hidden_size
        for name, value in (("w_ih", w_ih), ("w_hh", w_hh), ("b_ih", b_ih), ("b_hh", b_hh)):
            value = torch.zeros(rows) if value is None else value
            self.register_buffer(name, value.detach().to(dtype).clone().contiguous())
        self.pointwise = POINTWISE[module.cell]()

    def project(self, x: Tensor) -> Tensor:
        """gx = x W_ih^T + b_ih. x: (B, I) -> (B, G*D)."""
        return nn.functional.linear(x, self.w_ih, self.b_ih)

    def step(self, gx: Tensor, s: Tensor) -> Tensor:
        """The full cell step. gx: (B, G*D); s: (B, K, D) -> (B, K, D)."""
        gh = nn.functional.linear(s[:, 0], self.w_hh, self.b_hh)  # (B, G*D)
        shape = [gx.shape[0], self.gates, self.hidden]
        return self.pointwise(gx.reshape(shape), gh.reshape(shape), s)


class Stack(nn.Module):
    """Layers 0..L-1 stepped together, for methods whose decision spans the stack (Skip, ACT)."""

    def __init__(self, module: RecurrentBase, dtype: torch.dtype) -> None:
        super().__init__()
        self.first = Layer(module, 0, dtype)
        self.upper = nn.ModuleList([Layer(module, k, dtype) for k in range(1, module.num_layers)])

    def forward(self, gx0: Tensor, cell: Tensor) -> Tensor:
        """gx0: (B, G*D) layer 0's input projection; cell: (L, B, K, D) -> (L, B, K, D)."""
        s = self.first.step(gx0, cell[0])
        new = [s]
        k = 1
        for layer in self.upper:
            s = layer.step(layer.project(s[:, 0]), cell[k])
            new.append(s)
            k += 1
        return torch.stack(new)


class Head(nn.Module):
    """The task model's linear head: h (B, D) -> (B, num_outputs)."""

    def __init__(self, head: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("weight", head.weight.detach().to(dtype).clone())
        self.register_buffer("bias", head.bias.detach().to(dtype).clone())

    def forward(self, h: Tensor) -> Tensor:
        return nn.functional.linear(h, self.weight, self.bias)
