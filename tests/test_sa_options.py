"""SA-RNN's gate initialisation (``gate_init``) and the detached gate state (``detach_gate_state``)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torch.func import functional_call

import adaptrnn as ar
from adaptrnn.methods.sa import hard_sigmoid
from conftest import CELLS, DTYPE, TORCH_CELLS, B, D, I, T, make_module, random_cell, random_input


def test_official_init_bounds_and_half_the_neurons_updating() -> None:
    m = ar.SARNN("gru", 2, 256, num_layers=2)
    for layer, in_size in ((0, 2), (1, 256)):
        bound = 1 / math.sqrt(in_size + 256)  # nn.Linear(I + D, D) of the official code
        params = [getattr(m, f"update_{n}_l{layer}") for n in ("weight_hh", "weight_ih", "bias")]
        assert all(p.abs().max() <= bound for p in params)
        assert all(p.abs().max() > 0.8 * bound for p in params)  # spread over the whole range
    # zero input and state: ũ = (b + 1) / 2, so exactly the neurons with b > 0 update
    one = ar.SARNN("gru", 2, 256)
    _, _, stats = one(torch.zeros(1, 1, 2))
    positive = (one.update_bias_l0 > 0).float()
    assert torch.equal(stats.extras["neuron_updates"].view(-1), positive)
    assert 0.4 < positive.mean() < 0.6
    _, _, stats = m(torch.randn(5, 64, 2))
    assert 0.35 < stats.updates.mean() < 0.65  # about half, as the official code starts


def test_open_init_starts_with_every_neuron() -> None:
    m = ar.SARNN("gru", 2, 64, gate_init="open")
    assert torch.equal(m.update_bias_l0, torch.full((64,), 0.5))
    _, _, stats = m(torch.zeros(1, 1, 2))
    assert stats.updates.mean() == 1.0
    with pytest.raises(ValueError, match="SARNN: gate_init must be official or open, got .zero."):
        ar.SARNN("gru", 2, 64, gate_init="zero")


def reference_step(m: ar.SARNN, x_t: Tensor, s: Tensor) -> Tensor:
    """One SA step written here: the gate reads h_{t-1}.detach(); s: (B, K, D)."""
    diag, w_i, b = m.gate_weights(0)
    likelihood = hard_sigmoid(diag * s[:, 0].detach() + x_t @ w_i.T + b, float(m.slope))
    u = likelihood + ((likelihood > 0.5).to(DTYPE) - likelihood).detach()  # straight-through
    cell = TORCH_CELLS[m.cell](m.input_size, m.hidden_size, dtype=DTYPE)
    params = {k: getattr(m, f"{k}_l0") for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    if m.cell == "lstm":
        new = torch.stack(functional_call(cell, params, (x_t, (s[:, 0], s[:, 1]))), dim=1)
    else:
        new = functional_call(cell, params, (x_t, s[:, 0])).unsqueeze(1)
    u = u.unsqueeze(1)
    return u * new + (1 - u) * s, likelihood


@pytest.mark.parametrize("cell", CELLS)
def test_detached_gate_state_same_forward_gradients_as_written(cell: str) -> None:
    torch.manual_seed(1)
    plain = make_module("sa", cell, budget=0.2)
    torch.manual_seed(1)
    cut = make_module("sa", cell, budget=0.2, detach_gate_state=True)
    x, s0 = random_input(), random_cell(plain)[0]
    a, b = plain(x, state=ar.RecurrentState(s0.unsqueeze(0))), cut(x, state=ar.RecurrentState(s0.unsqueeze(0)))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1].cell, b[1].cell)
    assert torch.equal(a[2].updates, b[2].updates) and torch.equal(a[2].cost, b[2].cost)
    u = a[2].extras["neuron_updates"]
    assert (u == 0).any() and (u == 1).any()

    def loss_of(out: Tensor, cost: Tensor) -> Tensor:
        return (out * torch.linspace(-1, 1, out.numel(), dtype=DTYPE).view_as(out)).sum() + cost

    names = [n for n, _ in cut.named_parameters()]
    h0 = s0.clone().requires_grad_(True)
    out, _, stats = cut(x, state=ar.RecurrentState(h0.unsqueeze(0)))
    got = torch.autograd.grad(loss_of(out, stats.cost), [*cut.parameters(), h0])
    h0_ref = s0.clone().requires_grad_(True)
    s, outs, likelihood_sum = h0_ref, [], 0
    for t in range(T):
        s, likelihood = reference_step(cut, x[t], s)
        outs.append(s[:, 0])
        likelihood_sum = likelihood_sum + likelihood.sum()
    want = torch.autograd.grad(loss_of(torch.stack(outs), 0.2 * likelihood_sum / B), [*cut.parameters(), h0_ref])
    for name, g, w in zip([*names, "h0"], got, want, strict=True):
        assert torch.allclose(g, w, atol=1e-12, rtol=1e-10), name
    # and the graph is really different from the default one
    h0 = s0.clone().requires_grad_(True)
    out, _, stats = plain(x, state=ar.RecurrentState(h0.unsqueeze(0)))
    full = torch.autograd.grad(loss_of(out, stats.cost), [h0])[0]
    assert not torch.allclose(full, got[-1])


@pytest.mark.parametrize("cell", CELLS)
def test_detached_gate_state_gives_the_gate_no_path_into_h(cell: str) -> None:
    """With T = 1 and loss = λ Σ ũ the gradient into h_0 runs only through the gate: zero when cut."""
    for detach in (False, True):
        m = make_module("sa", cell, budget=0.3, detach_gate_state=detach)
        h0 = (random_cell(m) * 0.1).requires_grad_()  # small: the hard sigmoid stays unclamped
        out, _, stats = m(random_input(seq_len=1) * 0.1, state=ar.RecurrentState(h0))
        (stats.cost + 0 * out.sum()).backward()  # 0 · out: h_0 is reached, with a zero gradient
        assert h0.grad.shape == (1, B, m.state_parts, D) and I == m.input_size
        assert (h0.grad.abs().max() == 0) == detach
