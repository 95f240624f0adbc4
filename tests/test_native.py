"""The native loops (``native.c``, built by ``pip install``) against the reference loops.

Each method's whole sequence loop runs in C at batch 1 (Skip RNN's jumps, VCRNN's d_t blocks,
SA-RNN's active rows, ACT's ponder steps). In float64 the C loops must give the reference's
outputs, state and statistics to float64 rounding; in float32 to float32 rounding (sums run in
another order, exp is a polynomial). Sizes are chosen so that every code path of the C
products runs: D = 40 gives G·D = 160 > the 128-wide register block, and dot products with a
16-lane body and a remainder. Skipped (not failed) where the extension was not built.
"""

from __future__ import annotations

import copy

import pytest
import torch

import adaptrnn as ar
from adaptrnn.fast import native, native_batch
from conftest import vary_gates

CELLS = ("rnn", "gru", "lstm")
NATIVE = {"skip": "skip_run", "vc": "vc_layer", "sa": "sa_layer", "act": "act_loop"}
I, D, T = 5, 40, 60
TOLERANCE = {torch.float64: {"rtol": 1e-9, "atol": 1e-10}, torch.float32: {"rtol": 2e-5, "atol": 2e-6}}

needs_native = pytest.mark.skipif(native.library() is None, reason="the native extension was not built")


def lively(method: str, cell: str, num_layers: int, dtype: torch.dtype, bias: bool = True) -> ar.RecurrentBase:
    """An eval-mode module whose gate varies over steps (as in test_fast.py, at a larger D)."""
    m = ar.METHODS[method](cell, I, D, num_layers=num_layers, bias=bias).to(dtype).eval()
    return vary_gates(m, act_scale=8.0, max_steps=6)  # ACT's cap is reached too


def assert_same(got, want, dtype) -> None:
    (out, state, stats), (out_r, state_r, stats_r) = got, want
    close = lambda a, b: torch.testing.assert_close(a, b, **TOLERANCE[dtype])  # noqa: E731
    close(out, out_r)
    close(state.cell, state_r.cell)
    assert state.extras.keys() == state_r.extras.keys()
    for key in state.extras:
        close(state.extras[key], state_r.extras[key])
    torch.testing.assert_close(stats.updates, stats_r.updates)  # the same decisions
    close(stats.flops, stats_r.flops)
    close(stats.cost, stats_r.cost)
    assert stats.extras.keys() == stats_r.extras.keys()
    for key in stats.extras:
        close(stats.extras[key], stats_r.extras[key])


@needs_native
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("method", list(NATIVE))
def test_native_loop_equals_reference(method, cell, num_layers, padded, dtype, monkeypatch):
    calls = []
    original = getattr(native, NATIVE[method])
    monkeypatch.setattr(native, NATIVE[method], lambda *a: calls.append(1) or original(*a))
    torch.manual_seed(5)
    m = lively(method, cell, num_layers, dtype)
    x = torch.randn(T, 1, I, dtype=dtype)
    lengths = torch.tensor([T - 17]) if padded else None
    twin = copy.deepcopy(m)
    twin.options["impl"] = "reference"
    with torch.no_grad():
        got, want = m(x, lengths=lengths), twin(x, lengths=lengths)
    assert calls  # the C loop ran
    assert_same(got, want, dtype)
    updates = want[2].updates[:, : T - 17 if padded else T]
    if method == "act":
        assert updates.max() > 1 and updates.min() < updates.max()  # ponder counts vary over steps
    else:
        assert 0.05 < float(updates.mean()) < 0.9  # some computation was saved, not all


@needs_native
@pytest.mark.parametrize("method", list(NATIVE))
def test_native_without_bias_and_from_a_state(method):
    torch.manual_seed(6)
    m = lively(method, "lstm", 2, torch.float64, bias=False)
    x = torch.randn(1, T, I, dtype=torch.float64)
    m.batch_first = True
    state = m.initial_state(1, x)
    state = ar.RecurrentState(torch.rand_like(state.cell) * 2 - 1, state.extras)
    twin = copy.deepcopy(m)
    twin.options["impl"] = "reference"
    with torch.no_grad():
        assert_same(m(x, state), twin(x, state), torch.float64)


@needs_native
def test_sa_native_with_no_neuron_and_every_neuron_active():
    for bias in (-10.0, 10.0):
        m = lively("sa", "gru", 1, torch.float64)
        with torch.no_grad():
            m.update_bias_l0.fill_(bias)
        twin = copy.deepcopy(m)
        twin.options["impl"] = "reference"
        x = torch.randn(T, 1, I, dtype=torch.float64)
        with torch.no_grad():
            assert_same(m(x), twin(x), torch.float64)


@needs_native
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("cell", CELLS)
def test_sa_packed_rows_are_the_neurons_gate_rows(cell, bias):
    """sa_run's layout: neuron i's block holds W_ih[q*D + i] for q < G, each zero-padded to
    cp = I rounded up to SA_PAD, then the W_hh rows padded to dp; biases at 0..G-1 and 4..4+G-1."""
    from adaptrnn.cells import GATES

    m = ar.METHODS["sa"](cell, 3, 21, num_layers=2, bias=bias).double()
    pad, g = native.library().native_sa_pad(), GATES[cell]
    for layer, (rows, packed_bias) in enumerate(native.sa_packed(m)):
        w_ih, w_hh, b_ih, b_hh = (None if w is None else w.detach() for w in m.layer_weights(layer))
        cp, dp = -(-w_ih.shape[1] // pad) * pad, -(-21 // pad) * pad
        assert rows.shape == (21, g * (cp + dp)) and rows.is_contiguous()
        for i in (0, 7, 20):
            block = rows[i]
            for q in range(g):
                ih, hh = block[q * cp : (q + 1) * cp], block[g * cp + q * dp : g * cp + (q + 1) * dp]
                assert torch.equal(ih[: w_ih.shape[1]], w_ih[q * 21 + i]) and not ih[w_ih.shape[1] :].any()
                assert torch.equal(hh[:21], w_hh[q * 21 + i]) and not hh[21:].any()
                assert float(packed_bias[i, q]) == (float(b_ih[q * 21 + i]) if bias else 0.0)
                assert float(packed_bias[i, 4 + q]) == (float(b_hh[q * 21 + i]) if bias else 0.0)
            assert not packed_bias[i, g:4].any() and not packed_bias[i, 4 + g :].any()


@needs_native
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell", CELLS)
def test_sa_native_at_sizes_off_the_vector_width(cell, dtype, monkeypatch):
    """Sizes that need the packed rows' zero padding (I = 3, D = 21 and layer 1's input 21, none
    a multiple of the vector lanes) and a last chunk of active neurons that ends part-way."""
    calls = []
    original = native.sa_layer
    monkeypatch.setattr(native, "sa_layer", lambda *a: calls.append(1) or original(*a))
    torch.manual_seed(9)
    m = ar.METHODS["sa"](cell, 3, 21, num_layers=2).to(dtype).eval()
    vary_gates(m)
    x = torch.randn(T, 1, 3, dtype=dtype)
    twin = copy.deepcopy(m)
    twin.options["impl"] = "reference"
    with torch.no_grad():
        got, want = m(x), twin(x)
    assert len(calls) == 2  # both layers in C
    assert_same(got, want, dtype)
    assert 0.05 < float(want[2].updates.mean()) < 0.9


def test_native_is_not_used_for_other_dtypes_or_batches():
    m = lively("vc", "gru", 1, torch.float64)
    assert not native.applies(m, torch.zeros(1, 2, 1, D, dtype=torch.float64))  # batch 2
    assert not native.applies(m, torch.zeros(1, 1, 1, D, dtype=torch.float32))  # state dtype differs
    assert not native.applies(m.to(torch.bfloat16), torch.zeros(1, 1, 1, D, dtype=torch.bfloat16))


@needs_native
@pytest.mark.parametrize("summed", [False, True], ids=["apart", "summed"])
@pytest.mark.parametrize("d", [5, 16, 37])  # under one block of 16 lanes, one block, blocks and a tail
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell", CELLS)
def test_native_pointwise_equals_cells_pointwise(cell, dtype, d, summed):
    """The batched fast paths' one-call element-wise step, on row-strided projections; with
    ``summed`` (RNN, LSTM) the projections come as one pre-activation gx + gh."""
    from adaptrnn.cells import GATES, STATE_PARTS, pointwise

    if summed and cell == "gru":
        with pytest.raises(ValueError, match="gh is required"):
            native.pointwise(cell, torch.zeros(2, 3 * d), None, torch.zeros(2, 1, d))
        return
    torch.manual_seed(7)
    n = 33
    gx = torch.randn(n, GATES[cell] * d + 5, dtype=dtype)[:, : GATES[cell] * d]  # rows with a stride
    gh = torch.randn(n, GATES[cell] * d, dtype=dtype) * 3
    s = torch.randn(n, STATE_PARTS[cell], d, dtype=dtype)
    got = native.pointwise(cell, gx + gh, None, s) if summed else native.pointwise(cell, gx, gh, s)
    torch.testing.assert_close(got, pointwise(cell, gx, gh, s), **TOLERANCE[dtype])
    assert got.data_ptr() != s.data_ptr()  # out of place: the caller's state is kept


@needs_native
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("method", list(NATIVE))
def test_batched_fast_paths_in_float32(method, cell, monkeypatch):
    """Batch > 1 at float32: the fast paths (with the native element-wise call, or the native
    batched loops) against the reference."""
    from adaptrnn.fast import sa as fast_sa

    monkeypatch.setattr(fast_sa, "GATHER_MIN_MACS", 0)  # SA: the row gather, not the masked step
    calls = []
    for name in ("pointwise", "batch_step", "skip_rounds", "vc_batch_layer", "sa_batch_layer", "act_batch"):
        home = native if name == "pointwise" else native_batch
        original = getattr(home, name)
        monkeypatch.setattr(home, name, lambda *a, _f=original: calls.append(1) or _f(*a))
    torch.manual_seed(8)
    m = lively(method, cell, 2, torch.float32)
    x = torch.randn(T, 4, I)
    lengths = torch.tensor([T, 20, T - 5, 1])
    twin = copy.deepcopy(m)
    twin.options["impl"] = "reference"
    with torch.no_grad():
        assert_same(m(x, lengths=lengths), twin(x, lengths=lengths), torch.float32)
    assert calls


@needs_native
def test_an_out_of_date_extension_is_not_used(monkeypatch):
    """An extension built from an older native.c (an editable install not rebuilt) warns and is left unused."""
    monkeypatch.setitem(native.SIGNATURES, "no_such_function", ([], None))
    with pytest.warns(UserWarning, match="out of date"):
        assert native.library.__wrapped__() is None


def test_native_off_by_environment(monkeypatch):
    monkeypatch.setenv("ADAPTRNN_NATIVE", "0")
    assert native.library.__wrapped__() is None
