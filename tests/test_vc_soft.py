"""What VCRNN's soft version reads, as its docstring says: the recurrent product reads e ⊙ h,
the GRU's and the LSTM's carry read the raw previous state."""

from __future__ import annotations

import torch

import adaptrnn as ar
from adaptrnn.methods.vc import soft_mask
from conftest import DTYPE, B, D, I


def one_soft_step(cell: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, ar.VCRNN]:
    """(module's new state (B, K, D), x, s0, e) of one soft step from a random state."""
    torch.manual_seed(4)
    m = ar.VCRNN(cell, I, D, hard=False, sharpness=0.7).to(DTYPE)
    x = torch.randn(1, B, I, dtype=DTYPE)
    s0 = torch.randn(1, B, 2 if cell == "lstm" else 1, D, dtype=DTYPE)
    new = m(x, state=ar.RecurrentState(s0))[1].cell[0]
    m_t = m.scheduler(0, s0[0, :, 0], m.input_scores(0, x)[0])
    e = soft_mask(m_t, D, float(m.sharpness), float(m.options["epsilon"]))
    assert ((e > 0.05) & (e < 0.95)).any()  # partly masked dimensions: where the two readings differ
    return new, x[0], s0[0], e, m


def test_soft_gru_masks_the_recurrent_product_but_not_the_carry() -> None:
    new, x, s0, e, m = one_soft_step("gru")
    h = s0[:, 0]
    xr, xz, xn = (x @ m.weight_ih_l0.T + m.bias_ih_l0).chunk(3, -1)
    hr, hz, hn = ((e * h) @ m.weight_hh_l0.T + m.bias_hh_l0).chunk(3, -1)
    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    raw_carry = (1 - z) * n + z * h
    masked_carry = (1 - z) * n + z * (e * h)
    torch.testing.assert_close(new[:, 0], e * raw_carry + (1 - e) * h, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(new[:, 0], e * masked_carry + (1 - e) * h)


def test_soft_lstm_masks_the_recurrent_product_but_not_the_memory() -> None:
    new, x, s0, e, m = one_soft_step("lstm")
    h, c = s0[:, 0], s0[:, 1]
    gates = x @ m.weight_ih_l0.T + m.bias_ih_l0 + (e * h) @ m.weight_hh_l0.T + m.bias_hh_l0
    i, f, g, o = gates.chunk(4, -1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new = torch.sigmoid(o) * torch.tanh(c_new)
    torch.testing.assert_close(new[:, 1], e * c_new + (1 - e) * c, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(new[:, 0], e * h_new + (1 - e) * h, rtol=1e-12, atol=1e-12)
