"""The batched fast paths' shortcuts for steps at which every row computes everything.

At such a step the fast paths skip their gathers, masks and copies (Skip RNN: every row due;
VCRNN: every row at d_t = D; SA-RNN: every neuron of every row; ACT: every row halts at the
first ponder step). Each test drives the gate so that these steps occur, mixed with ordinary
ones, checks from the reference's statistics that both kinds happened, and compares the fast
path with the reference (float64, the tolerance of ``test_fast.py``).
"""

from __future__ import annotations

import pytest
import torch

from test_fast import CELLS, DTYPE, LENGTHS, B, T, assert_same, lively, reference_twin


def alternating_inputs(size: int = 3) -> torch.Tensor:
    """(T, B, size): every row large and positive at even steps, large and negative at odd ones,
    so a gate that reads the input with positive weights opens for every row at even steps."""
    sign = torch.tensor([1.0, -1.0]).repeat(T // 2)[:T].view(T, 1, 1)
    return sign * (4.0 + torch.rand(T, B, size, dtype=DTYPE))


def run_both(m, x, lengths):
    """Fast and reference calls compared, and the reference's updates (B, T) without padding (to
    check which kinds of steps occurred)."""
    with torch.no_grad():
        assert_same(m(x, lengths=lengths), reference_twin(m)(x, lengths=lengths))
        return reference_twin(m)(x)[2].updates


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_skip_every_row_due(cell, num_layers, padded):
    """Δũ > threshold everywhere: every row updates at every step (f = 1); then a bias at which
    all-due steps and partly-due ones mix (the first of a few that gives the mix)."""
    torch.manual_seed(10)
    lengths = LENGTHS if padded else None
    kinds = set()
    for bias in (6.0, 0.3, 0.0, -0.3, -0.6):
        m = lively("skip", cell, num_layers)
        with torch.no_grad():
            m.update_bias.fill_(bias)
        every = run_both(m, torch.randn(T, B, 3, dtype=DTYPE), lengths).eq(1).all(0)  # (T,)
        if bias == 6.0:
            assert bool(every.all())
        elif bool(every.any()) and not bool(every.all()):
            kinds.add("mixed")
            break
    assert kinds == {"mixed"}


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_vc_every_row_at_full_size(cell, num_layers, padded):
    """d_t = D for every row at even steps, smaller (and mixed) at odd ones; then d_t = D throughout."""
    torch.manual_seed(11)
    lengths = LENGTHS if padded else None
    for always in (False, True):
        m = lively("vc", cell, num_layers)
        with torch.no_grad():
            m.options["scale"] = 1.0
            for layer in range(num_layers):
                getattr(m, f"scheduler_x_l{layer}").abs_().mul_(2.0)
                getattr(m, f"scheduler_h_l{layer}").mul_(0.25)
                getattr(m, f"scheduler_bias_l{layer}").fill_(20.0 if always or layer else 0.0)
        full = run_both(m, alternating_inputs(), lengths).eq(1).all(0)  # (T,)
        assert bool(full.all()) if always else bool(full[0]) and not bool(full[1])


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_sa_every_neuron_of_every_row(cell, num_layers, padded):
    """Every neuron of every row updates at even steps and none at odd ones, then always."""
    torch.manual_seed(12)
    lengths = LENGTHS if padded else None
    for always in (False, True):
        m = lively("sa", cell, num_layers)
        with torch.no_grad():
            for layer in range(num_layers):
                diag, w_i, bias = m.gate_weights(layer)
                diag.zero_()
                w_i.fill_(0.0 if always or layer else 1.0)
                bias.fill_(5.0 if always or layer else 0.0)
        full = run_both(m, alternating_inputs(), lengths).eq(1).all(0)
        assert bool(full.all()) if always else bool(full[0]) and not bool(full[1])


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_act_every_row_halts_at_once(cell, num_layers, padded):
    """Every row halts at its first ponder step (a high halting bias, or max_steps = 1); then a
    bias at which such steps mix with longer ones (the first of a few that gives the mix)."""
    torch.manual_seed(13)
    lengths = LENGTHS if padded else None
    mixed = False
    for bias, max_steps in ((8.0, 100), (-1.0, 1), (4.0, 100), (4.6, 100), (5.0, 100), (5.5, 100)):
        m = lively("act", cell, num_layers, max_steps=max_steps)
        with torch.no_grad():
            m.halting_bias.fill_(bias)
        once = run_both(m, torch.randn(T, B, 3, dtype=DTYPE), lengths).eq(1).all(0)  # every row pondered once
        if bias in (8.0, -1.0):
            assert bool(once.all())
        elif bool(once.any()) and not bool(once.all()):
            mixed = True
            break
    assert mixed


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["skip", "vc", "sa", "act"])
def test_full_steps_without_bias_and_in_float32(method, dtype):
    """The ATen step's weight lists without biases (ACT: the flag then is the only input bias),
    and float32 (to float32 tolerance), every row computing everything at every step."""
    torch.manual_seed(14)
    m = lively(method, "lstm", 2, bias=False)
    with torch.no_grad():
        if method == "skip":
            m.update_bias.fill_(6.0)
        elif method == "act":
            m.halting_bias.fill_(8.0)
        for layer in range(2):
            if method == "vc":
                getattr(m, f"scheduler_bias_l{layer}").fill_(20.0)
                m.options["scale"] = 1.0
            elif method == "sa":
                m.gate_weights(layer)[2].fill_(5.0)
        m = m.to(dtype)
        x = torch.randn(T, B, 3, dtype=dtype)
        got, want = m(x), reference_twin(m)(x)
        assert bool(want[2].updates.eq(1).all())
        if dtype == torch.float64:
            assert_same(got, want)
        else:
            torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got[1].cell, want[1].cell, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got[2].updates, want[2].updates)
