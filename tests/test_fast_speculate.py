"""The batched fast paths' speculative dense windows (``adaptrnn.fast.speculate``) against the reference.

Each method's gate is swept from "every row computes everything at every step" (f = 1: the
windows must carry the whole sequence, none may fail) through biases at which windows are
accepted and then fail on a state-dependent decision (mixed), to f < 1. Every run compares the
fast path with the reference loop (float64 to the tolerance of ``test_fast.py``; float32 to
float32 tolerance with the statistics' decisions equal), from a random initial state, with and
without padding, for the three cells and one and two layers. ``speculate.COUNTS`` says whether
windows ran and failed, so a path that silently stops using them fails the f = 1 checks.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import adaptrnn as ar
from adaptrnn.fast import native, native_batch, speculate
from adaptrnn.layer import RecurrentState
from conftest import COSTLY, vary_gates
from test_fast import CELLS, assert_same, reference_twin

I, D, T, B = 3, 8, 40, 3
LENGTHS = torch.tensor([T, T - 3, T - 11])

# Per method: the knob that opens the gate, from "everything at every step" to f < 1.
# Skip: update_bias (Δũ = σ(w·s + b) > 0.5 keeps every row due); VC: the schedulers' bias
# (d_t = D needs m_t > 7/8); SA: the update bias (every neuron of every row: a·h + c > 1/2);
# ACT: halting_bias (halting at the first ponder step needs h ≥ 0.99).
SWEEPS = {
    "skip": (8.0, 2.5, 2.0, 1.5, 1.0, 0.75, 0.5, 0.25, 0.0, -1.0),
    "vc": (20.0, 4.0, 3.5, 3.0, 2.5, 2.0, 0.0),
    "sa": (20.0, 2.0, 1.5, 1.25, 1.0, 0.75, 0.5, 0.0),
    "act": (12.0, 6.0, 5.5, 5.0, 4.8, 4.6, 4.2, 0.0),
}


def module_at(method: str, cell: str, num_layers: int, dtype: torch.dtype, knob: float) -> ar.RecurrentBase:
    torch.manual_seed(21)
    module = ar.METHODS[method](cell, I, D, num_layers=num_layers, **COSTLY[method])  # costs read every ũ
    m = vary_gates(module.to(dtype).eval(), act_scale=2.0)
    with torch.no_grad():
        if method == "skip":
            m.update_bias.fill_(knob)
        elif method == "act":
            m.halting_bias.fill_(knob)
        for layer in range(num_layers):
            if method == "vc":
                m.options["scale"] = 1.0
                getattr(m, f"scheduler_bias_l{layer}").fill_(knob)
            elif method == "sa":
                m.gate_weights(layer)[2].fill_(knob)
    return m


def run(m: ar.RecurrentBase, dtype: torch.dtype, lengths) -> tuple[dict, torch.Tensor]:
    """Fast vs reference from a random initial state; returns the window counts and the updates (B, T)."""
    torch.manual_seed(22)
    x = torch.randn(T, B, I, dtype=dtype)
    cell = torch.rand(m.num_layers, B, m.state_parts, D, dtype=dtype) * 2 - 1
    state = RecurrentState(cell, m.initial_extras(B, x))
    speculate.COUNTS.clear()
    with torch.no_grad():
        got = m(x, state, lengths)
        counts = dict(speculate.COUNTS)
        want = reference_twin(m)(x, state, lengths)
    if dtype == torch.float64:
        assert_same(got, want)
    else:
        close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # noqa: E731
        close(got[0], want[0])
        close(got[1].cell, want[1].cell)
        assert torch.equal(got[2].updates, want[2].updates)  # the decisions, exactly
        for key in got[2].extras:
            close(got[2].extras[key], want[2].extras[key])
    return counts, want[2].updates


@pytest.mark.parametrize(
    ("dtype", "padded"),
    [(torch.float64, False), (torch.float64, True), (torch.float32, False)],
    ids=["f64", "f64-padded", "f32"],
)
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("method", ["skip", "vc", "sa", "act"])
def test_windows_equal_the_reference(monkeypatch, method, cell, num_layers, dtype, padded):
    # the windows are the PyTorch loops': with the native batched loops the whole loop runs in C
    monkeypatch.setattr(ar.fast.native_batch, "batch_applies", lambda *a: False)
    windows = sweep(method, cell, num_layers, dtype, padded)
    if method == "skip" and cell == "lstm":  # whole-sequence windows, c recovered (LstmWindow)
        assert windows["recovered"] == windows["windows"] > 0 and not windows["stepwise"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_skip_lstm_stepwise_windows_equal_the_reference(monkeypatch, num_layers, dtype):
    """Above ``LSTM_WINDOW_MAX_MACS`` the Skip LSTM's windows are one-step calls (``stepwise``)."""
    monkeypatch.setattr(ar.fast.native_batch, "batch_applies", lambda *a: False)  # the PyTorch path
    monkeypatch.setattr("adaptrnn.fast.skip.LSTM_WINDOW_MAX_MACS", 0)
    windows = sweep("skip", "lstm", num_layers, dtype, padded=False)
    assert windows["stepwise"] == windows["windows"] > 0 and not windows["recovered"]


def sweep(method: str, cell: str, num_layers: int, dtype: torch.dtype, padded: bool) -> Counter:
    """Fast vs reference along the method's sweep: the f = 1 end must run on windows that all
    succeed, and the sweep must pass through mixed and f < 1. Returns the summed window counts."""
    total: Counter = Counter()
    lengths = LENGTHS if padded else None
    shortest = int(LENGTHS.min()) if padded else T
    full = torch.arange(T) < (LENGTHS if padded else torch.full((B,), T)).unsqueeze(1)  # (B, T) valid steps
    kinds = set()
    for i, knob in enumerate(SWEEPS[method]):
        counts, updates = run(module_at(method, cell, num_layers, dtype, knob), dtype, lengths)
        total.update(counts)
        if i == 0:  # f = 1: the windows carry every step where every row is valid
            assert bool(updates[full].eq(1).all())
            # ACT tries a window once a step halted every row; a last window of one step is a plain step
            assert counts.get("steps", 0) >= shortest - (2 if method == "act" else 1)
            if not padded or method in ("skip", "act"):  # VC and SA check the padded steps and fail there
                assert counts.get("failed", 0) == 0
        elif counts.get("failed", 0) and counts.get("steps", 0) > (0 if method == "act" else counts["windows"]):
            # windows failed, and accepted steps decided from their own states (Skip, SA and VC
            # know the first step of a window before it runs; ACT does not)
            kinds.add("mixed")
        if bool(updates[full].ne(1).any()):  # ACT: N(t) > 1
            kinds.add("f<1")
    assert kinds == {"mixed", "f<1"}
    return total


def test_window_lengths_adapt():
    """Doubling after accepted windows; back to the minimum and paused after a failure, longer each time."""
    w = speculate.Window()
    sizes = []
    for _ in range(3):
        sizes.append(w.length(100))
        w.record(sizes[-1], sizes[-1])
    assert sizes == [4, 8, 16]
    assert w.length(5) == 5
    w.record(5, 2)
    assert w.length(100) == 0  # one chance let pass
    assert w.length(100) == 4
    w.record(4, 0)
    assert [w.length(100) for _ in range(3)] == [0, 0, 4]  # two passed after the second failure in a row


def test_step_threads_scope(monkeypatch):
    """Per-step work below the rule runs at one thread, windows at the caller's count, which is
    restored after the call, also when the loop raises."""
    before = torch.get_num_threads()
    seen = {"window": set(), "step": set()}
    original_window, original_pointwise = speculate.window, native.pointwise
    # the PyTorch loop (SA's C loop: test_native_threads)
    monkeypatch.setattr(native_batch, "batch_applies", lambda *a: False)

    def spy(kind, original):
        return lambda *a, **k: seen[kind].add(torch.get_num_threads()) or original(*a, **k)

    monkeypatch.setattr("adaptrnn.fast.sa.window", spy("window", original_window))
    monkeypatch.setattr(native, "pointwise", spy("step", original_pointwise))
    try:
        torch.set_num_threads(2)
        counts, _ = run(module_at("sa", "gru", 1, torch.float64, 1.0), torch.float64, None)  # windows and masked steps
        assert counts["failed"] and seen == {"window": {2}, "step": {1}}
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(native, "pointwise", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
        with pytest.raises(RuntimeError, match="boom"), torch.no_grad():
            module_at("sa", "gru", 1, torch.float64, 0.0)(torch.randn(T, B, I, dtype=torch.float64))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("limit", [0, float("inf")], ids=["stepwise", "recovered"])
def test_skip_lstm_window_threads(monkeypatch, limit):
    """The LSTM's Skip windows of one-step calls from Python (``stepwise``, at large steps) run at
    the loop's one thread; its whole-sequence windows (``LstmWindow``) at the caller's count."""
    before, seen = torch.get_num_threads(), set()
    monkeypatch.setattr(ar.fast.native_batch, "batch_applies", lambda *a: False)  # the PyTorch path
    monkeypatch.setattr("adaptrnn.fast.skip.LSTM_WINDOW_MAX_MACS", limit)
    original = ar.fast.skip.stepwise, speculate.LstmWindow.__call__
    monkeypatch.setattr(
        "adaptrnn.fast.skip.stepwise", lambda *a, **k: seen.add(torch.get_num_threads()) or original[0](*a, **k)
    )
    monkeypatch.setattr(
        speculate.LstmWindow, "__call__", lambda *a, **k: seen.add(torch.get_num_threads()) or original[1](*a, **k)
    )
    try:
        torch.set_num_threads(2)
        counts, _ = run(module_at("skip", "lstm", 1, torch.float64, 8.0), torch.float64, None)
        kind = "stepwise" if limit == 0 else "recovered"
        assert counts.get(kind) == counts.get("windows") > 0 and seen == {1 if limit == 0 else 2}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_skip_features_callable_takes_no_window():
    """With a features callable only updating steps may be requested, so no window runs (none would
    read steps that end up skipped), and the result is the tensor path's."""
    m = module_at("skip", "gru", 1, torch.float64, 8.0)
    x = torch.randn(T, B, I, dtype=torch.float64)
    speculate.COUNTS.clear()
    got = ar.fast.skip.skip_inference(m, lambda steps, rows: x[steps, rows], seq_len=T, batch=B)
    assert speculate.COUNTS.get("windows", 0) == 0
    with torch.no_grad():
        assert_same(got, m(x))
