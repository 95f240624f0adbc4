"""The contract every method shares: reduction to ``torch.nn`` under full computation,
padding, chunking, gradients, statistics, layouts. Method-specific gate behaviour is in
``test_gates.py``."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import adaptrnn as ar
from conftest import (
    ADAPTIVE,
    CELLS,
    COSTLY,
    DTYPE,
    LENGTHS,
    METHOD_NAMES,
    TORCH_CLASSES,
    B,
    D,
    I,
    T,
    as_hx,
    make_module,
    random_cell,
    random_input,
    run_torch,
)


def lazy(module: ar.RecurrentBase) -> None:
    """Gate biases far from "compute everything": Skip and SA update (almost) never, VC uses
    one dimension, ACT ponders to its cap."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith(("update_bias", "halting_bias", "scheduler_bias")):
                p.fill_(-10.0)


def full_flops(method: str, cell: str, num_layers: int) -> int:
    """Multiply-adds of one step under full computation, gates included (closed form)."""
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[cell]
    inputs = [I] + [D] * (num_layers - 1)
    cells = sum(gates * D * (i + D) for i in inputs)
    gate = {
        "dense": 0,
        "skip": D,  # one Δũ dot product for the stack
        "act": D,  # one halting dot product per ponder step
        "vc": sum(D + i for i in inputs),  # u·h and v·x per layer
        "sa": sum(D * (1 + i) for i in inputs),  # diagonal W_u and W_i x per layer
    }[method]
    return cells + gate


def assert_lively(method: str, stats: ar.Stats) -> None:
    """The test data must exercise the gate: some steps compute less (or more) than dense."""
    u = stats.updates
    if method == "act":
        assert (u > 1).any(), "ACT never pondered more than one step"
    elif method != "dense":
        assert (u < 1).any() and (u > 0).any(), f"{method}: the gate never varied"


# ---- (a) full computation equals torch.nn ---------------------------------------------


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("method", ADAPTIVE)
def test_full_computation_equals_torch(method: str, cell: str, num_layers: int, training: bool) -> None:
    options = {**COSTLY[method], **({"max_steps": 5} if method == "act" else {})}
    m = make_module(method, cell, num_layers, **options).train(training)
    lazy(m)
    ref = TORCH_CLASSES[cell](I, D, num_layers=num_layers, dtype=DTYPE)
    own = {k: v.clone() for k, v in m.state_dict().items() if k not in ref.state_dict()}
    result = m.load_state_dict(ref.state_dict(), strict=False)
    assert set(result.missing_keys) == set(own) and not result.unexpected_keys
    for name, value in m.state_dict().items():
        assert torch.equal(value, own[name] if name in own else ref.state_dict()[name]), name
    x, h0 = random_input(), random_cell(m)
    with ar.full_computation(m):
        assert m.full_computation
        out, state, stats = m(x, state=as_hx(h0, cell), lengths=LENGTHS)
        out_none, state_none, _ = m(x)
    assert not m.full_computation, "the context manager must restore the flag"
    ref_out, ref_final = run_torch(ref, x, h0, LENGTHS)
    assert_close(out, ref_out)
    assert_close(state.cell, ref_final)
    valid = (torch.arange(T) < LENGTHS.unsqueeze(1)).to(DTYPE)
    assert torch.equal(stats.updates, valid)
    assert_close(stats.flops, (full_flops(method, cell, num_layers) * LENGTHS).to(DTYPE))
    # With state=None, the module's initial state (Skip RNN: its learned s_0, zeros at init).
    ref_out, ref_final = run_torch(ref, x, m.initial_state(B, x).cell)
    assert_close(out_none, ref_out)
    assert_close(state_none.cell, ref_final)
    # Outside the context the lazy gates change the computation, so the comparison was not vacuous.
    _, _, lazy_stats = m(x, lengths=LENGTHS)
    assert not torch.equal(lazy_stats.updates, valid)


# ---- (b) a padded batch equals each sequence run alone --------------------------------


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_padded_batch_equals_sequences_alone(method: str, cell: str, training: bool) -> None:
    m = make_module(method, cell, num_layers=2, **COSTLY[method]).train(training)
    x = random_input()
    out, state, stats = m(x, lengths=LENGTHS)
    assert_lively(method, stats)
    costs = []
    for b, length in enumerate(LENGTHS.tolist()):
        out_b, state_b, stats_b = m(x[:length, b : b + 1])
        costs.append(stats_b.cost)
        assert_close(out[:length, b], out_b[:, 0])
        assert torch.all(out[length:, b] == 0)
        assert_close(state.cell[:, b], state_b.cell[:, 0])
        assert state.extras.keys() == state_b.extras.keys()
        for name, value in state.extras.items():
            assert_close(value[b], state_b.extras[name][0])
        assert_close(stats.updates[b, :length], stats_b.updates[0])
        assert torch.all(stats.updates[b, length:] == 0)
        assert_close(stats.flops[b], stats_b.flops[0])
        assert stats.extras.keys() == stats_b.extras.keys()
        for name, value in stats.extras.items():
            assert_close(value[b, :length], stats_b.extras[name][0])
            assert torch.all(value[b, length:] == 0), name
    assert_close(stats.cost, torch.stack(costs).mean())


# ---- (c) chunked processing equals processing whole ----------------------------------


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_chunked_equals_whole(method: str, cell: str, training: bool) -> None:
    # Eval mode runs VC's hard mask; Skip's state also carries ũ and Δũ across the cut.
    m = make_module(method, cell, num_layers=2).train(training)
    if method == "skip":
        with torch.no_grad():  # the learned s_0, used by both runs since state=None
            m.initial_cell.copy_(torch.rand_like(m.initial_cell) * 2 - 1)
    x = random_input()
    out, state, stats = m(x)
    assert_lively(method, stats)
    for k in (1, 3):
        out_a, state_a, stats_a = m(x[:k])
        out_b, state_b, stats_b = m(x[k:], state=state_a)
        assert_close(torch.cat([out_a, out_b]), out)
        assert_close(torch.cat([stats_a.updates, stats_b.updates], dim=1), stats.updates)
        assert_close(stats_a.flops + stats_b.flops, stats.flops)
        assert_close(state_b.cell, state.cell)
        for name, value in state.extras.items():
            assert_close(state_b.extras[name], value)


# ---- (d) gradients reach every parameter -----------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_gradients_reach_every_parameter(method: str, cell: str) -> None:
    m = make_module(method, cell, num_layers=2, **COSTLY[method]).train()
    out, _, stats = m(random_input(), lengths=LENGTHS)
    (out.sum() + stats.cost).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{name} got a zero gradient"


@pytest.mark.parametrize("loss", ["output", "cost"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("method", ADAPTIVE)
def test_gate_parameters_learn_from_output_and_from_cost(method: str, cell: str, loss: str) -> None:
    """Each term alone reaches the gate: through the straight-through estimator (Skip, SA),
    the soft mask (VC) or the halting weights p_t^n (ACT)."""
    m = make_module(method, cell, **COSTLY[method]).train()
    own = set(m.state_dict()) - set(TORCH_CLASSES[cell](I, D).state_dict())
    out, _, stats = m(random_input())
    (out.sum() if loss == "output" else stats.cost).backward()
    # ACT's flag column and Skip's s_0 are cell inputs, not gate parameters.
    gate = [n for n, _ in m.named_parameters() if n in own and n not in ("flag_weight", "initial_cell")]
    assert gate
    for name in gate:
        grad = m.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, f"{name}: no gradient from the {loss}"


# ---- (i) statistics ----------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_stats_shapes_and_dtypes(method: str, cell: str) -> None:
    m = make_module(method, cell, **COSTLY[method])
    _, _, stats = m(random_input(), lengths=LENGTHS)
    assert stats.updates.shape == (B, T) and stats.updates.dtype == DTYPE
    assert stats.flops.shape == (B,) and stats.flops.dtype == DTYPE
    assert stats.cost.shape == () and stats.cost.dtype == DTYPE
    assert stats.cost.requires_grad == (method != "dense")
    padded = torch.arange(T) >= LENGTHS.unsqueeze(1)
    assert torch.all(stats.updates[padded] == 0)
    valid_updates = stats.updates[~padded]
    assert torch.all(valid_updates >= 0)
    if method in ("dense", "skip"):
        assert set(valid_updates.tolist()) <= {0.0, 1.0}
    if method == "act":  # whole ponder steps, at least one
        assert torch.all(valid_updates >= 1) and torch.equal(valid_updates, valid_updates.round())
    if method == "vc":  # at least the first dimension, soft or hard
        assert torch.all(valid_updates > 0) and torch.all(valid_updates <= 1)
    if method == "sa":
        assert torch.all(valid_updates <= 1)
    assert torch.all(stats.flops > 0)
    for name, value in stats.extras.items():
        assert value.shape[:2] == (B, T), name


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("method", ["skip", "act", "sa"])
def test_flops_follow_updates(method: str, cell: str) -> None:
    """FLOPs as a closed form of the counted updates (one layer)."""
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[cell]
    m = make_module(method, cell).eval()
    _, _, stats = m(random_input(), lengths=LENGTHS)
    steps = LENGTHS.to(DTYPE)
    if method in ("skip", "act"):  # per update / ponder step: the cell and one dot product of the gate
        expected = stats.updates.sum(1) * (gates * D * (I + D) + D)
    else:  # the rows of the updated neurons, plus the gate (diagonal and W_i x) at every step
        expected = (gates * stats.updates * D * (I + D)).sum(1) + steps * D * (1 + I)
    assert_close(stats.flops, expected)


def test_vc_flops_follow_updates() -> None:
    """Hard VC computes the upper-left d×(I+d) blocks of each gate, plus the scheduler."""
    m = make_module("vc", "gru").eval()
    _, _, stats = m(random_input(), lengths=LENGTHS)
    d = stats.updates * D
    assert_close(d, d.round())
    expected = (3 * d * (I + d)).sum(1) + LENGTHS.to(DTYPE) * (D + I)
    assert_close(stats.flops, expected)


# ---- (j) batch_first ---------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("method", METHOD_NAMES)
def test_batch_first_equals_time_major(method: str, cell: str) -> None:
    m = make_module(method, cell, num_layers=2)
    x = random_input()
    out, state, stats = m(x, lengths=LENGTHS)
    m.batch_first = True
    out_bf, state_bf, stats_bf = m(x.transpose(0, 1), lengths=LENGTHS)
    assert_close(out_bf, out.transpose(0, 1))
    assert_close(state_bf.cell, state.cell)
    assert_close(stats_bf.updates, stats.updates)
    assert_close(stats_bf.flops, stats.flops)
