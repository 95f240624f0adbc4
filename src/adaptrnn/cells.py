"""The three plain cells as single steps over explicit weights.

Every recurrent state is one tensor ``s`` of shape (B, K, D): K = 1 for the tanh-RNN and
the GRU (``s[:, 0]`` is h), K = 2 for the LSTM (``s[:, 0]`` is h, ``s[:, 1]`` is c). One
tensor per state keeps every method's "copy the old state" a single broadcast product,
whatever the cell.

The input projection ``gx = x W_ih^T + b_ih`` does not depend on the state, so callers
compute it for all time steps in one matrix product (:func:`input_projection`) and the
step functions only do the recurrent product. In training at a small input (the adding
task's I = 2) that (T, B, G·D) projection and its gradient measured slower than one product
of ``[x_t, h_{t-1}]`` per step (:func:`joint_step`, used by SA-RNN's and VCRNN's training
loops; docs/speed.md). Gate order and parameter shapes are ``torch.nn``'s: LSTM (i, f, g, o),
GRU (r, z, n) with ``n = tanh(gx_n + r ⊙ (W_hn h + b_hn))``.
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
        return gru_gates(xr + hr, xz + hz, xn, hn, s)
    return lstm_gates(gx + gh, s)


def gru_gates(a_r: Tensor, a_z: Tensor, a_nx: Tensor, a_nh: Tensor, s: Tensor) -> Tensor:
    """The GRU's element-wise step from its pre-activations (B, D) each: ``a_r = W_ir x + b_ir +
    W_hr h + b_hr`` (a_z alike), ``a_nx = W_in x + b_in``, ``a_nh = W_hn h + b_hn``. -> (B, 1, D)."""
    r = torch.sigmoid(a_r)
    z = torch.sigmoid(a_z)
    n = torch.tanh(a_nx + r * a_nh)
    return ((1 - z) * n + z * s[:, 0]).unsqueeze(1)


def lstm_gates(pre: Tensor, s: Tensor) -> Tensor:
    """The LSTM's element-wise step from ``pre = gx + gh`` (B, 4D), gates (i, f, g, o). -> (B, 2, D)."""
    # One sigmoid over all four gates, with tanh(g) = 2σ(2g) − 1: one contiguous (B, 4D) call,
    # which torch spreads over threads, instead of four (B, D) slices; a training step measured
    # 6-9% faster at two threads, the same at one (docs/speed.md).
    size = s.shape[-1]
    scale = pre.new_ones(4 * size)
    scale[2 * size : 3 * size] = 2.0  # g doubled
    i, f, g2, o = torch.sigmoid(pre * scale).chunk(4, dim=-1)
    c = f * s[:, 1] + i * (2 * g2 - 1)
    h = o * torch.tanh(c)
    return torch.stack((h, c), dim=1)


def joint_weights(
    cell: str, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """The input and recurrent weights side by side, for :func:`joint_step`.

    One product of ``[x_t, h_{t-1}]`` with ``[W_ih, W_hh]^T`` gives ``gx_t + gh_t`` (biases
    summed). The GRU needs ``W_hn h + b_hn`` apart (``r`` multiplies it), so its n rows are
    split in two blocks, ``[W_in, 0]`` and ``[0, W_hn]``: four blocks of D rows.
    Returns the transposed weight (I + D, rows) and the bias (rows,) or None.
    """
    size = w_hh.shape[1]
    if cell == "gru":
        zeros_x, zeros_h = w_ih.new_zeros(size, w_ih.shape[1]), w_hh.new_zeros(size, size)
        w_x = torch.cat((w_ih, zeros_x))  # r, z, n from x; the 4th block reads only h
        w_h = torch.cat((w_hh[: 2 * size], zeros_h, w_hh[2 * size :]))
        if b_ih is None:
            bias = None
        else:
            bias = torch.cat((b_ih[: 2 * size] + b_hh[: 2 * size], b_ih[2 * size :], b_hh[2 * size :]))
    else:
        w_x, w_h = w_ih, w_hh
        bias = None if b_ih is None else b_ih + b_hh
    return torch.cat((w_x, w_h), dim=1).t(), bias


def joint_step(cell: str, x: Tensor, h: Tensor, s: Tensor, weight_t: Tensor, bias: Tensor | None) -> Tensor:
    """One step of a plain cell as one matrix product per step (weights from :func:`joint_weights`).

    Equal to :func:`cell_step` with ``gx = x W_ih^T + b_ih``, but without a (T, B, G*D) input
    projection: for a small input (I = 2) that projection's product and its gradient cost more
    than the per-step concatenation. x: (B, I); h: (B, D), what the product reads (h_{t-1}, or a
    masked one); s: (B, K, D) the previous state, read by the carry. Returns (B, K, D).
    """
    xh = torch.cat((x, h), dim=1)  # (B, I + D)
    pre = xh @ weight_t if bias is None else torch.addmm(bias, xh, weight_t)
    if cell == "gru":
        return gru_gates(*pre.chunk(4, dim=-1), s)
    if cell == "rnn":
        return torch.tanh(pre).unsqueeze(1)
    return lstm_gates(pre, s)


def step_macs(cell: str, input_size: int, hidden_size: int) -> int:
    """Multiply-adds of one dense step: the two matrix products, ``G·D·(I + D)``.

    This is the count the Skip RNN paper uses (LSTM, I=2, D=110, T=50: 2.46e6 per sequence).
    Element-wise work and biases are left out, as in the papers.
    """
    return GATES[cell] * hidden_size * (input_size + hidden_size)
