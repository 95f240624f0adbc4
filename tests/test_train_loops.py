"""The reference training loops, written for speed, against straightforward re-formulations.

SA-RNN's loop folds the hard sigmoid's affine part into the gate's weights, takes one product
of [x_t, h_{t-1}] per step (``cells.joint_step``) and blends with ``torch.lerp``; VCRNN's takes
one product of [x_t, e_t ⊙ h_{t-1}] per step and blends alike. Here each
method is written again the plain way, step by step with ``torch.nn``'s cells, in float64, and
outputs, final state, statistics and the gradients of every parameter, the input and the
initial state must agree to rounding.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.func import functional_call

import adaptrnn as ar
from adaptrnn.cells import cell_step, joint_step, joint_weights, pointwise
from conftest import CELLS, DTYPE, LENGTHS, TORCH_CELLS, B, D, I, T, make_module, random_cell, random_input

CELL_WEIGHTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


def torch_step(m: ar.RecurrentBase, layer: int, x_t: Tensor, h_in: Tensor, s: Tensor) -> Tensor:
    """One step of ``nn.{RNN,GRU,LSTM}Cell`` with the layer's weights; the product reads h_in,
    the carry (the GRU's z ⊙ h, the LSTM's f ⊙ c) reads s. -> (B, K, D)."""
    cell = TORCH_CELLS[m.cell](x_t.shape[-1], D, bias=m.bias, dtype=DTYPE)
    params = {k: getattr(m, f"{k}_l{layer}") for k in CELL_WEIGHTS if hasattr(m, f"{k}_l{layer}")}
    if m.cell == "lstm":
        return torch.stack(functional_call(cell, params, (x_t, (h_in, s[:, 1]))), dim=1)
    new = functional_call(cell, params, (x_t, h_in))
    if m.cell == "gru":  # nn.GRUCell's carry reads h_in: h' = (1 - z) n + z h_in; give z ⊙ (h - h_in) back
        zero = torch.zeros(3 * D, dtype=DTYPE)
        a_z = (x_t @ params["weight_ih"].T + params.get("bias_ih", zero)).chunk(3, -1)[1]
        a_z = a_z + (h_in @ params["weight_hh"].T + params.get("bias_hh", zero)).chunk(3, -1)[1]
        new = new + torch.sigmoid(a_z) * (s[:, 0] - h_in)
    return new.unsqueeze(1)


def sa_written_out(m: ar.SARNN, x: Tensor, s0: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """SA-RNN as METHODS.md §4 states it, one layer and step at a time.

    Returns out (T, B, D), final state (L, B, K, D), the cost and u of the top layer (T, B, D).
    """
    slope, threshold = float(m.slope), m.options["threshold"]
    layer_in, finals, likelihood_sum = x, [], 0
    for layer in range(m.num_layers):
        diag, w_i, b = m.gate_weights(layer)
        s, outs, masks = s0[layer], [], []
        for t in range(T):
            h = s[:, 0].detach() if m.options["detach_gate_state"] else s[:, 0]
            likelihood = ((slope * (diag * h + layer_in[t] @ w_i.T + b) + 1) / 2).clamp(0, 1)  # ũ_t
            hard = (likelihood > threshold).to(DTYPE)
            u = (likelihood + (hard - likelihood).detach()).unsqueeze(1)  # straight-through
            new = u * torch_step(m, layer, layer_in[t], s[:, 0], s) + (1 - u) * s
            s = torch.where(valid[t].view(B, 1, 1), new, s)
            outs.append(s[:, 0])
            masks.append(hard * valid[t].unsqueeze(1))
            likelihood_sum = likelihood_sum + (likelihood.sum(1) * valid[t]).sum()
        finals.append(s)
        layer_in = torch.stack(outs)
    cost = m.options["budget"] * likelihood_sum / B
    return layer_in, torch.stack(finals), cost, torch.stack(masks)


def weighted_loss(out: Tensor, cost: Tensor) -> Tensor:
    """Distinct weights per output element, so that every gradient path counts."""
    return (out * torch.linspace(-1, 1, out.numel(), dtype=DTYPE).view_as(out)).sum() + cost


def check_against_written_out(m, written_out, padded: bool) -> tuple:
    """Run ``m`` from a random state on a random float64 batch and compare its output, final state
    and cost with ``written_out(m, x, s0, valid)``; returns (x, s0, out, stats, valid, its values)."""
    x = random_input().requires_grad_(True)
    s0 = random_cell(m).requires_grad_(True)
    lengths = LENGTHS if padded else torch.full((B,), T)
    valid = torch.arange(T).unsqueeze(1) < lengths.unsqueeze(0)  # (T, B)
    out, final, stats = m(x, state=ar.RecurrentState(s0), lengths=lengths if padded else None)
    want = want_out, want_final, want_cost, _ = written_out(m, x, s0, valid)
    torch.testing.assert_close(out, want_out * valid.unsqueeze(-1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final.cell, want_final, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(stats.cost, want_cost, rtol=1e-12, atol=1e-12)
    return x, s0, out, stats, valid, want


@pytest.mark.parametrize("options", [{}, {"detach_gate_state": True, "threshold": 0.6}, {"bias": False}])
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_sa_loop_equals_the_written_out_method(cell: str, num_layers: int, padded: bool, options: dict) -> None:
    m = make_module("sa", cell, num_layers=num_layers, budget=0.2, **options).train()
    m.set_slope(1.7)
    x, s0, out, stats, valid, (want_out, _, want_cost, want_u) = check_against_written_out(m, sa_written_out, padded)
    assert torch.equal(stats.extras["neuron_updates"], want_u.transpose(0, 1))
    assert (want_u[valid] == 0).any() and (want_u[valid] == 1).any(), "both decisions exercised"

    inputs = [*m.parameters(), x, s0]
    got = torch.autograd.grad(weighted_loss(out, stats.cost), inputs)
    want = torch.autograd.grad(weighted_loss(want_out * valid.unsqueeze(-1), want_cost), inputs)
    names = [n for n, _ in m.named_parameters()] + ["x", "initial state"]
    for name, g, w in zip(names, got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12, msg=lambda e, name=name: f"{name}: {e}")
        assert name == "initial state" or g.abs().max() > 0, f"{name}: no gradient at all"


def vc_written_out(m: ar.VCRNN, x: Tensor, s0: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """VCRNN as METHODS.md §3 and its docstring state it, one layer and step at a time.

    Returns out (T, B, D), final state (L, B, K, D), the cost and m_t (T, B) of the last layer.
    """
    sharpness, eps, scale = float(m.sharpness), m.options["epsilon"], m.options["scale"]
    count = valid.sum(0).to(DTYPE)  # (B,) valid steps
    layer_in, finals, deviation = x, [], 0
    for layer in range(m.num_layers):
        u, v, b = (getattr(m, f"scheduler_{n}_l{layer}") for n in ("h", "x", "bias"))
        s, outs, schedule = s0[layer], [], []
        for t in range(T):
            h = s[:, 0]
            h_scheduler = h.detach() if m.options["detach_scheduler_state"] else h
            m_t = (torch.sigmoid(h_scheduler @ u + layer_in[t] @ v + b) * scale).clamp(max=1.0)  # (B,)
            if m.is_hard:
                e = (torch.arange(D) < torch.ceil(m_t * D).clamp(1, D).unsqueeze(1)).to(DTYPE)
            else:
                z = torch.sigmoid(sharpness * (m_t.unsqueeze(1) * D - torch.arange(D, dtype=DTYPE)))
                e = torch.where(z > 1 - eps, torch.ones_like(z), torch.where(z < eps, torch.zeros_like(z), z))
            e3 = e.unsqueeze(1)
            new = e3 * torch_step(m, layer, layer_in[t], e * h, s) + (1 - e3) * s
            s = torch.where(valid[t].view(B, 1, 1), new, s)
            outs.append(s[:, 0])
            schedule.append(m_t)
            deviation = deviation + (m_t - m.options["target"]).abs() * valid[t] / count
        finals.append(s)
        layer_in = torch.stack(outs)
    cost = m.options["penalty"] * (deviation / m.num_layers).mean()
    return layer_in, torch.stack(finals), cost, torch.stack(schedule)


@pytest.mark.parametrize(
    "options",
    [{}, {"hard": True, "scale": 0.8}, {"bias": False, "sharpness": 3.0}, {"detach_scheduler_state": True}],
)
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_vc_loop_equals_the_written_out_method(cell: str, num_layers: int, padded: bool, options: dict) -> None:
    m = make_module("vc", cell, num_layers=num_layers, penalty=0.7, target=0.4, **options).train()
    x, s0, out, stats, valid, (want_out, _, want_cost, want_m) = check_against_written_out(m, vc_written_out, padded)
    if num_layers == 1:
        torch.testing.assert_close(stats.extras["scheduler"], (want_m.detach() * valid).t(), rtol=1e-12, atol=1e-12)

    inputs = [*m.parameters(), x, s0]
    got = torch.autograd.grad(weighted_loss(out, stats.cost), inputs, allow_unused=True)
    want = torch.autograd.grad(weighted_loss(want_out * valid.unsqueeze(-1), want_cost), inputs, allow_unused=True)
    names = [n for n, _ in m.named_parameters()] + ["x", "initial state"]
    for name, g, w in zip(names, got, want, strict=True):
        if w is None:  # hard mode: the scheduler gets gradient only from the cost
            assert g is None or g.abs().max() == 0, name
            continue
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12, msg=lambda e, name=name: f"{name}: {e}")


@pytest.mark.parametrize("cell", CELLS)
def test_vc_detached_scheduler_state_cuts_only_that_path(cell: str) -> None:
    """``detach_scheduler_state`` leaves the forward pass alone and removes only the gradient
    that reaches h_{t-1} through m_t: the scheduler's u still learns, the initial state's
    gradient differs, and with u = 0 (m_t reads no state) the two agree."""
    plain = make_module("vc", cell, sharpness=2.0).train()
    cut = make_module("vc", cell, sharpness=2.0, detach_scheduler_state=True).train()
    cut.load_state_dict(plain.state_dict())
    x, s0 = random_input(), random_cell(plain)

    def run(m: ar.VCRNN) -> tuple[Tensor, Tensor, Tensor]:
        start = s0.clone().requires_grad_(True)
        out, _, stats = m(x, state=ar.RecurrentState(start))
        g_start, g_u = torch.autograd.grad(weighted_loss(out, stats.cost), [start, m.scheduler_h_l0])
        return out.detach(), g_start, g_u

    (out_p, start_p, _), (out_c, start_c, u_c) = run(plain), run(cut)
    assert torch.equal(out_p, out_c)
    assert u_c.abs().max() > 0, "u still gets a gradient"
    assert not torch.allclose(start_p, start_c), "the path through m_t was not cut"
    with torch.no_grad():
        plain.scheduler_h_l0.zero_()
        cut.scheduler_h_l0.zero_()
    torch.testing.assert_close(run(plain)[1], run(cut)[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cell", CELLS)
def test_joint_step_equals_cell_step_with_gradients(cell: str, bias: bool) -> None:
    """One product of [x_t, h] with the joint weights = the input projection plus cell_step."""
    m = ar.DenseRNN(cell, I, D, bias=bias).to(DTYPE)
    w_ih, w_hh, b_ih, b_hh = m.layer_weights(0)
    x_t = torch.randn(B, I, dtype=DTYPE, requires_grad=True)
    s = random_cell(m)[0].requires_grad_(True)
    h_in = torch.rand(B, D, dtype=DTYPE, requires_grad=True)  # what the product reads (VC masks it)
    got = joint_step(cell, x_t, h_in, s, *joint_weights(cell, w_ih, w_hh, b_ih, b_hh))
    gx = torch.nn.functional.linear(x_t, w_ih, b_ih)
    # cells.pointwise with the recurrent product of h_in; the carry (GRU's z ⊙ h, LSTM's f ⊙ c) reads s
    want = pointwise(cell, gx, torch.nn.functional.linear(h_in, w_hh, b_hh), s)
    same = joint_step(cell, x_t, s[:, 0], s, *joint_weights(cell, w_ih, w_hh, b_ih, b_hh))  # h_in = h_{t-1}
    torch.testing.assert_close(same, cell_step(cell, gx, s, w_hh, b_hh), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    inputs = [*m.parameters(), x_t, s, h_in]
    weights = torch.randn_like(got)
    g_got = torch.autograd.grad((got * weights).sum(), inputs, allow_unused=True)
    g_want = torch.autograd.grad((want * weights).sum(), inputs, allow_unused=True)
    for g, w in zip(g_got, g_want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
