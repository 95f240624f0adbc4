"""Each method's gate against an independent recomputation of its equations (METHODS.md):
ACT's halting and ponder-cost gradient, VC's masks, Skip RNN's eq. 6, SA-RNN's neuron updates."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torch.testing import assert_close

import adaptrnn as ar
from adaptrnn.methods.skip import steps_to_skip
from conftest import CELLS, DTYPE, B, D, I, T, as_hx, make_module, random_cell, random_input, torch_cell_twin


def cell_step_torch(ref: torch.nn.RNNCellBase, x: Tensor, s: Tensor) -> Tensor:
    """One ``nn.*Cell`` step on a (B, K, D) state -> (B, K, D)."""
    if isinstance(ref, torch.nn.LSTMCell):
        return torch.stack(ref(x, (s[:, 0], s[:, 1])), dim=1)
    return ref(x, s[:, 0]).unsqueeze(1)


def stepwise_states(m: ar.RecurrentBase, x: Tensor) -> list[Tensor]:
    """The (L, B, K, D) state before every step and after the last, one call per step."""
    state = m.initial_state(x.shape[1], x)
    cells = [state.cell]
    for t in range(x.shape[0]):
        _, state, _ = m(x[t : t + 1], state=state)
        cells.append(state.cell)
    return cells


# ---- ACT -------------------------------------------------------------------------------


class HaltingProbe:
    """Records, per input step, every halting probability h_t^n (retaining its gradient)
    and the stack state s_t^n it was computed from."""

    def __init__(self, m: ar.ACTRNN, monkeypatch: pytest.MonkeyPatch) -> None:
        self.steps: list[list[tuple[Tensor, Tensor]]] = []
        halting_prob, ponder = m.halting_prob, m.ponder

        def probe_halting(cell: Tensor) -> Tensor:
            h = halting_prob(cell)
            h.retain_grad()
            self.steps[-1].append((h, cell))
            return h

        def probe_ponder(*args: Tensor):
            self.steps.append([])
            return ponder(*args)

        monkeypatch.setattr(m, "halting_prob", probe_halting)
        monkeypatch.setattr(m, "ponder", probe_ponder)


def halting(h: list[float], epsilon: float, max_steps: int) -> tuple[int, float]:
    """N(t) = min{n : Σ_{n'≤n} h ≥ 1 - ε} capped at M, and R(t) = 1 - Σ_{n<N} h."""
    total = 0.0
    for n in range(1, max_steps + 1):
        if total + h[n - 1] >= 1 - epsilon or n == max_steps:
            return n, 1 - total
        total += h[n - 1]
    raise AssertionError("unreachable")


@pytest.mark.parametrize("max_steps", [100, 3])
@pytest.mark.parametrize("cell", CELLS)
def test_act_halting_and_mean_field(cell: str, max_steps: int, monkeypatch: pytest.MonkeyPatch) -> None:
    epsilon = 0.05
    m = make_module("act", cell, num_layers=2, max_steps=max_steps, epsilon=epsilon)
    with torch.no_grad():
        m.halting_bias.fill_(-1.0)  # h ≈ 0.27: several ponder steps, some examples at the cap M = 3
    probe = HaltingProbe(m, monkeypatch)
    out, state, stats = m(random_input())
    assert len(probe.steps) == T
    capped = False
    for t, steps in enumerate(probe.steps):
        for b in range(B):
            h = [float(p.detach()[b]) for p, _ in steps]
            n_t, r_t = halting(h, epsilon, max_steps)
            capped |= n_t == max_steps
            assert stats.updates[b, t] == n_t
            assert stats.extras["remainder"][b, t] == pytest.approx(r_t, abs=1e-12)
            assert stats.extras["ponder"][b, t] == pytest.approx(n_t + r_t, abs=1e-12)
            # Mean field: s_t = Σ_n p_t^n s_t^n with p = h before N(t) and R(t) at N(t).
            p = h[: n_t - 1] + [r_t]
            mean = sum(w * s[:, b] for w, (_, s) in zip(p, steps, strict=False))  # (L, K, D)
            assert_close(out[t, b], mean[-1, 0])
            if t == T - 1:
                assert_close(state.cell[:, b], mean)
    assert (stats.updates > 1).any()
    assert capped == (max_steps == 3), "the cap should bind exactly in the capped setting"


@pytest.mark.parametrize("cell", CELLS)
def test_act_ponder_cost_gradient(cell: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """dP/dh_t^n = -1 for n < N(t) and 0 at N(t) (the loss is τ·mean_b P, so -τ/B).

    Checked at the last step, whose h's reach the cost only through R(t); earlier steps'
    h's also move later states through the mean field."""
    tau = 0.3
    m = make_module("act", cell, time_penalty=tau)
    with torch.no_grad():
        m.halting_bias.fill_(-1.0)
    probe = HaltingProbe(m, monkeypatch)
    _, _, stats = m(random_input(seq_len=3))
    stats.cost.backward()
    last = probe.steps[-1]
    n_last = stats.updates[:, -1]
    assert (n_last > 1).any()
    for n, (h, _) in enumerate(last, start=1):
        expected = torch.where(n < n_last, torch.full_like(h, -tau / B), torch.zeros_like(h))
        grad = torch.zeros_like(h) if h.grad is None else h.grad
        assert_close(grad, expected)


# ---- VC --------------------------------------------------------------------------------


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_vc_soft_equals_hard_when_mask_is_binary(cell: str, num_layers: int) -> None:
    m = make_module("vc", cell, num_layers=num_layers, sharpness=1e6)
    x = random_input()
    m.options["hard"] = False
    soft = m(x)
    m.options["hard"] = True
    hard = m(x)
    dims = soft[2].updates * D * num_layers  # Σ_i e_i summed over layers
    assert_close(dims, dims.round(), msg="the soft mask was not binary")
    assert_close(soft[0], hard[0])
    assert_close(soft[1].cell, hard[1].cell)
    assert_close(soft[2].updates, hard[2].updates)
    assert_close(soft[2].flops, hard[2].flops)


def test_vc_soft_mode_is_the_default_in_training_and_hard_in_eval() -> None:
    m = make_module("vc", "gru")
    x = random_input()
    soft_d = m.train()(x)[2].updates * D
    hard_d = m.eval()(x)[2].updates * D
    assert not torch.equal(soft_d, soft_d.round()), "sharpness 1 gives fractional masks in training"
    assert torch.equal(hard_d, hard_d.round())


@pytest.mark.parametrize("scale", [1.0, 0.6])
@pytest.mark.parametrize("cell", CELLS)
def test_vc_hard_updates_the_first_ceil_mD_dims(cell: str, scale: float) -> None:
    m = make_module("vc", cell, hard=True, scale=scale)
    ref = torch_cell_twin(m)
    x = random_input()
    _, _, stats = m(x)
    cells = stepwise_states(m, x)
    dims = torch.arange(D)
    partial = False
    for t in range(T):
        s, new = cells[t][0], cells[t + 1][0]  # (B, K, D)
        h = s[:, 0]
        sched = torch.sigmoid(h @ m.scheduler_h_l0 + x[t] @ m.scheduler_x_l0 + m.scheduler_bias_l0)
        sched = (sched * scale).clamp(max=1.0)
        d = torch.ceil(sched * D).clamp(1, D)
        assert_close(stats.extras["scheduler"][:, t], sched)
        assert_close(stats.updates[:, t], d / D)
        # The first d dims come from the cell reading only the first d dims of h_{t-1}.
        candidate = cell_step_torch(ref, x[t], torch.stack([h * (dims < d.unsqueeze(1)), *s[:, 1:].unbind(1)], 1))
        for b in range(B):
            k = int(d[b])
            partial |= k < D
            assert_close(new[b, :, :k], candidate[b, :, :k])
            assert torch.equal(new[b, :, k:], s[b, :, k:]), "dims past d_t must be copied bit-exactly"
    assert partial


# ---- Skip RNN ----------------------------------------------------------------------------


def n_skip(delta: float, threshold: float) -> int:
    """Eq. 6 by enumeration: min{n ≥ 1 : n·Δũ > threshold} - 1."""
    n = 1
    while n * delta <= threshold:
        n += 1
    return n - 1


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.7])
@pytest.mark.parametrize("cell", CELLS)
def test_skip_eq6_in_eval(cell: str, threshold: float) -> None:
    seq_len = 9
    m = make_module("skip", cell, num_layers=2, threshold=threshold).eval()
    x = random_input(seq_len=seq_len)
    # Centre Δũ on the threshold over the dense trajectory, so that some steps are skipped and some not.
    with torch.no_grad(), ar.full_computation(m):
        tops = torch.stack([cell[-1, :, -1] for cell in stepwise_states(m, x)[1:]])  # (T, B, D)
        centre = (tops @ m.update_weight).median()
        m.update_bias.fill_(math.log(threshold / (1 - threshold)) - float(centre))
    out, _, stats = m(x)
    u, prob = stats.updates, stats.extras["update_prob"]
    assert torch.all(u[:, 0] == 1), "ũ_1 = 1 forces an update at the first step"
    skips = []
    for b in range(B):
        t = 0
        while t < seq_len:
            assert u[b, t] == 1
            # Δũ_t = σ(W_p s_t + b_p) from the top layer's state after step t (c for the LSTM).
            _, after, _ = m(x[: t + 1, b : b + 1])
            delta = torch.sigmoid(after.cell[-1, 0, -1] @ m.update_weight + m.update_bias).detach()
            if t + 1 < seq_len:
                assert_close(prob[b, t + 1], delta)  # ũ_{t+1} = Δũ_t after an update
            skip = n_skip(float(delta), threshold)
            assert int(steps_to_skip(delta.view(1), threshold)) == skip
            nxt = min(t + 1 + skip, seq_len)
            assert torch.all(u[b, t + 1 : nxt] == 0)
            assert torch.equal(out[t + 1 : nxt, b], out[t, b].expand(nxt - t - 1, D)), "skipping copies the state"
            skips.append(skip)
            t = t + 1 + skip
    assert 0 in skips and max(skips) > 0, f"threshold {threshold}: no variety in the skips {skips}"


@pytest.mark.parametrize("cell", CELLS)
def test_skip_first_step_update_and_state_given_probability(cell: str) -> None:
    m = make_module("skip", cell).eval()
    with torch.no_grad():
        m.update_bias.fill_(-30.0)  # Δũ ≈ 0: after the forced first update, never again
    x = random_input()
    h0 = random_cell(m)
    for state in (None, as_hx(h0, cell)):
        _, _, stats = m(x, state=state)
        assert torch.equal(stats.updates[:, 0], torch.ones(B, dtype=DTYPE))
        assert torch.all(stats.updates[:, 1:] == 0)
    # A continued state carries its own ũ: below the threshold, the first step is skipped.
    extras = {"update_prob": torch.full((B,), 0.2, dtype=DTYPE), "delta_prob": torch.full((B,), 0.2, dtype=DTYPE)}
    out, _, stats = m(x, state=ar.RecurrentState(h0, extras))
    assert torch.equal(stats.updates[:, :2], torch.zeros(B, 2, dtype=DTYPE))
    assert torch.all(stats.updates[:, 2] == 1)  # ũ = 0.2, 0.4, 0.6
    assert torch.equal(out[0], h0[-1, :, 0])


@pytest.mark.parametrize("cell", CELLS)
def test_skip_learned_initial_state(cell: str) -> None:
    m = make_module("skip", cell, num_layers=2).train()
    assert dict(m.named_parameters())["initial_cell"].shape == (2, m.state_parts, D)
    with torch.no_grad():
        m.initial_cell.copy_(torch.rand_like(m.initial_cell) * 2 - 1)
    x = random_input()
    out, _, _ = m(x)
    s0 = m.initial_cell.detach().unsqueeze(1).expand(-1, B, -1, -1)  # (L, B, K, D)
    assert_close(out, m(x, state=as_hx(s0, cell))[0])
    assert not torch.allclose(out, m(x, state=as_hx(torch.zeros_like(s0), cell))[0])
    out.sum().backward()
    assert m.initial_cell.grad is not None and m.initial_cell.grad.abs().sum() > 0


@pytest.mark.parametrize("cell", CELLS)
def test_skip_stochastic(cell: str) -> None:
    m = make_module("skip", cell, stochastic=True)
    x = random_input()
    _, _, stats = m.train()(x)
    assert set(stats.updates.unique().tolist()) <= {0.0, 1.0} and torch.all(stats.updates[:, 0] == 1)
    deterministic = make_module("skip", cell).eval()
    deterministic.load_state_dict(m.state_dict())
    assert torch.equal(m.eval()(x)[0], deterministic(x)[0]), "sampling is for training only"


# ---- SA-RNN --------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.5, 0.7])
@pytest.mark.parametrize("cell", CELLS)
def test_sa_neuron_updates(cell: str, threshold: float) -> None:
    slope = 2.0
    m = make_module("sa", cell, threshold=threshold)
    m.set_slope(slope)
    ref = torch_cell_twin(m)
    x = random_input()
    _, _, stats = m(x)
    cells = stepwise_states(m, x)
    for t in range(T):
        s, new = cells[t][0], cells[t + 1][0]  # (B, K, D)
        z = m.update_weight_hh_l0 * s[:, 0] + x[t] @ m.update_weight_ih_l0.T + m.update_bias_l0
        u = ((slope * z + 1) / 2).clamp(0, 1) > threshold  # (B, D)
        assert torch.equal(stats.extras["neuron_updates"][:, t], u.to(DTYPE))
        assert_close(stats.updates[:, t], u.sum(1).to(DTYPE) / D)
        keep = ~u.unsqueeze(1).expand_as(new)  # h and c alike
        assert torch.equal(new[keep], s[keep]), "non-updated neurons must keep h (and c) bit-exactly"
        assert_close(new[~keep], cell_step_torch(ref, x[t], s)[~keep])
    u = stats.extras["neuron_updates"]
    assert (u == 0).any() and (u == 1).any()


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_sa_update_matrix_is_diagonal(cell: str, num_layers: int) -> None:
    """W_u is stored as its diagonal, and ũ_i depends on h_{t-1} only through h_i:
    with T = 1 and cost = λ Σ_i ũ_i (batch mean), dcost/dh0 = λ/B · α/2 · diag(W_u) for the
    top layer (a lower layer's h0 also reaches the gates above through its output)."""
    budget = 0.3
    m = make_module("sa", cell, num_layers=num_layers, budget=budget)
    for layer in range(num_layers):
        assert getattr(m, f"update_weight_hh_l{layer}").shape == (D,)
        assert getattr(m, f"update_weight_ih_l{layer}").shape == (D, I if layer == 0 else D)
    h0 = (random_cell(m) * 0.1).requires_grad_()  # small: the hard sigmoid stays unclamped
    _, _, stats = m(random_input(seq_len=1) * 0.1, state=ar.RecurrentState(h0))
    stats.cost.backward()
    diag = getattr(m, f"update_weight_hh_l{num_layers - 1}").detach()
    assert_close(h0.grad[-1, :, 0], (budget / B * float(m.slope) / 2 * diag).expand(B, D))
    if cell == "lstm":
        assert torch.all(h0.grad[-1, :, 1] == 0), "the gate does not read c"


def test_hard_sigmoid_and_threshold_eps() -> None:
    from adaptrnn.methods.sa import hard_sigmoid
    from adaptrnn.methods.vc import threshold_eps

    z = torch.tensor([-3.0, -0.5, 0.0, 0.25, 2.0], dtype=DTYPE)
    assert_close(hard_sigmoid(z, 2.0), torch.tensor([0.0, 0.0, 0.5, 0.75, 1.0], dtype=DTYPE))
    e = torch.tensor([0.05, 0.1, 0.5, 0.9, 0.95], dtype=DTYPE)
    assert_close(threshold_eps(e, 0.1), torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=DTYPE))
    assert math.isclose(float(hard_sigmoid(torch.tensor(0.3), 1.0)), 0.65, rel_tol=1e-6)


def test_steps_to_skip_survives_a_vanishing_increment():
    skips = steps_to_skip(torch.tensor([0.0, 0.3, 0.5, 1.0]))
    assert skips[0] >= 2**61  # Δũ = 0: never updates again (no overflow to a negative count)
    assert skips[1:].tolist() == [1, 1, 0]  # 2·0.3 > 0.5; 0.5 alone is a tie (skip), 2·0.5 > 0.5; 1 > 0.5
