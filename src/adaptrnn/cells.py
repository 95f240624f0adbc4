"""The three plain cells as single steps over explicit weights.

Every recurrent state is one tensor ``s`` of shape (B, K, D): K = 1 for the tanh-RNN and
the GRU (``s[:, 0]`` is h), K = 2 for the LSTM (``s[:, 0]`` is h, ``s[:, 1]`` is c). One
tensor per state keeps every method's "copy the old state" a single broadcast product,
whatever the cell.

The input projection ``gx = x W_ih^T + b_ih`` does not depend on the state, so callers
compute it for all time steps in one matrix product (:func:`input_projection`) and the
step functions only do the recurrent product. Gate order and parameter shapes are
``torch.nn``'s: LSTM (i, f, g, o), GRU (r, z, n) with ``n = tanh(gx_n + r ⊙ (W_hn h + b_hn))``.
"""

from __future__ import annotations

import torch
from torch import Tensor

CELLS = ("rnn", "gru", "lstm")
GATES = {"rnn": 1, "gru": 3, "lstm": 4}  # weight blocks per cell (rows of W_ih = GATES * D)
STATE_PARTS = {"rnn": 1, "gru": 1, "lstm": 2}  # K: h, or (h, c)


def check_cell(cell: str) -> str:
    if cell not in CELLS:
        raise ValueError(f"unknown cell {cell!r}; expected one of {', '.join(CELLS)}")
    return cell


def input_projection(x: Tensor, w_ih: Tensor, b_ih: Tensor | None) -> Tensor:
    """``x W_ih^T + b_ih`` for every step at once. x: (..., I) -> (..., G*D)."""
    return torch.nn.functional.linear(x, w_ih, b_ih)


def cell_step(cell: str, gx: Tensor, s: Tensor, w_hh: Tensor, b_hh: Tensor | None) -> Tensor:
    """One step of a plain cell.

    Args:
        cell: "rnn", "gru" or "lstm".
        gx: (B, G*D) input projection of this step (bias b_ih included).
        s: (B, K, D) previous state.
        w_hh: (G*D, D) recurrent weights; b_hh: (G*D,) or None.
    Returns:
        (B, K, D) the new state.
    """
    h = s[:, 0]
    gh = torch.nn.functional.linear(h, w_hh, b_hh)  # (B, G*D)
    return pointwise(cell, gx, gh, s)


def pointwise(cell: str, gx: Tensor, gh: Tensor, s: Tensor) -> Tensor:
    """The element-wise part of a step, given both projections. Shapes as in :func:`cell_step`.

    Split out so that fast paths which compute ``gh`` for a subset of rows or columns
    (sub-matrix, gathered rows) share the exact cell arithmetic.
    """
    if cell == "rnn":
        return torch.tanh(gx + gh).unsqueeze(1)
    if cell == "gru":
        xr, xz, xn = gx.chunk(3, dim=-1)
        hr, hz, hn = gh.chunk(3, dim=-1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return ((1 - z) * n + z * s[:, 0]).unsqueeze(1)
    i, f, g, o = (gx + gh).chunk(4, dim=-1)
    c = torch.sigmoid(f) * s[:, 1] + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return torch.stack((h, c), dim=1)


def step_macs(cell: str, input_size: int, hidden_size: int) -> int:
    """Multiply-adds of one dense step: the two matrix products, ``G·D·(I + D)``.

    This is the count the Skip RNN paper uses (LSTM, I=2, D=110, T=50: 2.46e6 per sequence).
    Element-wise work and biases are left out, as in the papers.
    """
    return GATES[cell] * hidden_size * (input_size + hidden_size)
