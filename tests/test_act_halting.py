"""ACT's halting unit: the top layer's h by default, or the whole state (h and the LSTM's c)."""

from __future__ import annotations

import copy

import pytest
import torch

import adaptrnn as ar
from conftest import DTYPE, B, D, I, T

LENGTHS = torch.tensor([T, 2, T - 2, 1])


def act(cell: str, num_layers: int = 1, **options) -> ar.ACTRNN:
    """A float64 ACT module whose rows ponder 1 to a few steps."""
    m = ar.ACTRNN(cell, I, D, num_layers=num_layers, **options).to(DTYPE)
    with torch.no_grad():
        m.halting_weight.mul_(4.0)
        m.halting_bias.fill_(-1.0)
    return m


def test_default_reads_the_top_layer_h() -> None:
    m = act("lstm", num_layers=2)
    assert m.options["halting_input"] == "h" and m.halting_weight.shape == (D,)
    cell = torch.randn(2, B, 2, D, dtype=DTYPE)
    want = torch.sigmoid(cell[1, :, 0] @ m.halting_weight + m.halting_bias)
    torch.testing.assert_close(m.halting_prob(cell), want, rtol=0, atol=0)
    cell[:, :, 1] += 10.0  # the memory cells do not reach the halting unit
    cell[0] -= 3.0  # nor does the lower layer
    torch.testing.assert_close(m.halting_prob(cell), want, rtol=0, atol=0)


@pytest.mark.parametrize(("cell", "parts"), [("lstm", 2), ("gru", 1)])
def test_state_option_reads_every_layer_h_and_c(cell: str, parts: int) -> None:
    m = act(cell, num_layers=2, halting_input="state")
    assert m.halting_weight.shape == (2 * parts * D,)
    state = torch.randn(2, B, parts, D, dtype=DTYPE)
    # layer 0 (h, c), then layer 1 (h, c): the order of halting_weight's entries
    features = torch.cat([state[layer, :, k] for layer in range(2) for k in range(parts)], dim=1)
    want = torch.sigmoid(features @ m.halting_weight + m.halting_bias)
    torch.testing.assert_close(m.halting_prob(state), want, rtol=1e-12, atol=0)
    if cell == "lstm":
        moved = state.clone()
        moved[0, :, 1] += 1.0  # the lower layer's memory cells now change the halting probability
        assert not torch.allclose(m.halting_prob(moved), want)


def test_state_option_changes_pondering_and_trains_the_c_weights() -> None:
    torch.manual_seed(3)
    x = torch.randn(T, B, I, dtype=DTYPE)
    m = act("lstm", halting_input="state", time_penalty=0.1)
    _, _, stats = m(x)
    (stats.cost + m(x)[0].sum()).backward()
    grad_c = m.halting_weight.grad[D:]  # the entries that read c
    assert grad_c.abs().sum() > 0
    with torch.no_grad():
        m.halting_weight[D:] = 0.0  # a halting unit blind to c ponders differently
    assert not torch.equal(m(x)[2].updates, stats.updates)


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_fast_path_equals_reference_with_the_full_state(cell: str, padded: bool) -> None:
    torch.manual_seed(1)
    m = act(cell, num_layers=2, halting_input="state", max_steps=6).eval()
    twin = copy.deepcopy(m)
    twin.options["impl"] = "reference"
    x = torch.randn(T, B, I, dtype=DTYPE)
    lengths = LENGTHS if padded else None
    with torch.no_grad():
        (out, state, stats), (out_r, state_r, stats_r) = m(x, lengths=lengths), twin(x, lengths=lengths)
    for got, want in ((out, out_r), (state.cell, state_r.cell), (stats.updates, stats_r.updates)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(stats.flops, stats_r.flops, rtol=0, atol=0)
    torch.testing.assert_close(stats.cost, stats_r.cost, rtol=1e-9, atol=1e-12)
    assert stats_r.updates.max() > 1  # rows pondered more than once: the comparison means something
    # per ponder step: the two-layer stack plus one dot product over the whole state (L·K·D)
    parts = 2 if cell == "lstm" else 1
    macs = sum(m.dense_step_macs()) + 2 * parts * D
    torch.testing.assert_close(stats_r.flops, stats_r.updates.sum(1) * macs, rtol=0, atol=0)


def test_full_computation_still_equals_torch_nn() -> None:
    m = act("lstm", halting_input="state")
    ref = torch.nn.LSTM(I, D, dtype=DTYPE)
    ref.load_state_dict({k: v for k, v in m.state_dict().items() if k in ref.state_dict()})
    x = torch.randn(T, B, I, dtype=DTYPE)
    with ar.full_computation(m):
        out = m(x)[0]
    torch.testing.assert_close(out, ref(x)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_flag_is_one_more_input_column(cell: str) -> None:
    """x_t^1 = [x_t, 1]: one ponder step per input equals torch.nn on the input with a column
    of ones and ``flag_weight`` as that column's weights, gradients included."""
    m = act(cell, num_layers=2)
    with torch.no_grad():
        m.flag_weight.normal_()
    ref = getattr(torch.nn, cell.upper() if cell != "rnn" else "RNN")(I + 1, D, num_layers=2, dtype=DTYPE)
    own = m.state_dict()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(torch.cat((own[name], own["flag_weight"].unsqueeze(1)), 1) if name == "weight_ih_l0" else own[name])
    x = torch.randn(T, B, I, dtype=DTYPE)
    with ar.full_computation(m):
        out = m(x)[0]
    want = ref(torch.cat((x, torch.ones(T, B, 1, dtype=DTYPE)), -1))[0]
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    (out.sum()).backward()
    want.sum().backward()
    torch.testing.assert_close(m.flag_weight.grad, ref.weight_ih_l0.grad[:, I], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(m.weight_ih_l0.grad, ref.weight_ih_l0.grad[:, :I], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_fast_path_equals_reference_with_a_trained_flag(cell: str) -> None:
    """Later ponder steps read the flag as 0: with pondering and a non-zero flag_weight the fast
    path (the flag as a bias of the first step) and the reference (an input column) agree."""
    m = act(cell, num_layers=2, max_steps=6).eval()
    with torch.no_grad():
        m.flag_weight.normal_()
    twin = copy.deepcopy(m)
    twin.options["impl"] = "reference"
    x = torch.randn(T, B, I, dtype=DTYPE)
    with torch.no_grad():
        (out, state, stats), (out_r, state_r, stats_r) = m(x), twin(x)
    assert stats_r.updates.max() > 1
    torch.testing.assert_close(out, out_r, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(state.cell, state_r.cell, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(stats.updates, stats_r.updates, rtol=0, atol=0)
