"""The native loops split over threads (OpenMP, torch's thread count) give the one-thread results.

The C loops split each step's products by whole output blocks (Skip RNN, ACT), whole gate
products (VCRNN) or whole chunks of 16 active neurons (SA-RNN), so no sum changes order: two
threads must give bit-identical outputs, state and statistics to one thread, and the reference's to rounding.
The sizes make the products large enough to be split (≥ PARALLEL_MIN = 32768 multiply-adds
per step in native.c: here G·D·(I + D) = 4·200·206 ≈ 165 K for the LSTM, 41 K for the RNN),
with G·D = 800 = 6 register blocks of 128 and a 32-column tail. Where the extension was
built without OpenMP the loops run serially and the comparison still holds.
"""

from __future__ import annotations

import copy

import pytest
import torch

import adaptrnn as ar
from adaptrnn.fast import native, native_batch
from conftest import vary_gates
from test_native import CELLS, NATIVE, assert_same, needs_native

I, D, T = 6, 200, 40


def wide(method: str, cell: str, dtype: torch.dtype) -> ar.RecurrentBase:
    """A two-layer eval-mode module whose gate varies over steps, with products worth splitting."""
    torch.manual_seed(11)
    m = ar.METHODS[method](cell, I, D, num_layers=2).to(dtype).eval()
    # most SA neurons active and VC's schedule as is, so the threaded split runs
    return vary_gates(m, skip_bias=-0.5, act_scale=8.0, max_steps=4, sa_bias=0.4, vc_scale=0.9, vc_scheduler_scale=None)


def run_with_threads(m, x: torch.Tensor, threads: int):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert native.threads() == (threads if native.library().native_openmp() else 1)
        with torch.no_grad():
            return m(x)
    finally:
        torch.set_num_threads(before)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("method", list(NATIVE))
def test_two_threads_equal_one_thread_and_the_reference(method, cell, dtype, monkeypatch):
    calls = []
    original = getattr(native, NATIVE[method])
    monkeypatch.setattr(native, NATIVE[method], lambda *a: calls.append(1) or original(*a))
    m = wide(method, cell, dtype)
    x = torch.randn(T, 1, I, dtype=dtype)
    one, two = run_with_threads(m, x, 1), run_with_threads(m, x, 2)
    assert len(calls) >= 2  # the C loop ran both times
    (out1, state1, stats1), (out2, state2, stats2) = one, two
    assert torch.equal(out1, out2) and torch.equal(state1.cell, state2.cell)  # bit-identical
    assert torch.equal(stats1.updates, stats2.updates)
    for key in stats1.extras:
        assert torch.equal(stats1.extras[key], stats2.extras[key])
    twin = copy.deepcopy(m)
    twin.options["impl"] = "reference"
    with torch.no_grad():
        assert_same(two, twin(x), dtype)
    assert float(stats2.updates.float().mean()) > 0.2  # enough work per step for the split


@needs_native
def test_threads_follow_torch():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert native.threads() == 1
        torch.set_num_threads(2)
        assert native.threads() == (2 if native.library().native_openmp() else 1)
    finally:
        torch.set_num_threads(before)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("method", ["skip", "vc", "sa", "act"])
def test_batched_loops_at_two_threads(method, cell, dtype, monkeypatch):
    """Every method at batch > 1 through the native batched loops (products in torch's
    BLAS): they run at the caller's thread count, not the Python loop's one thread, and two
    threads give the reference's results (to rounding: the BLAS may split sums by threads)."""
    if native_batch.blas_gemm(dtype) is None:
        pytest.skip("torch's BLAS exports no ?gemm_ here")
    seen = set()
    for name in ("skip_rounds", "batch_step", "vc_batch_layer", "sa_batch_layer", "act_batch"):
        real = getattr(native_batch, name)
        monkeypatch.setattr(native_batch, name, lambda *a, _f=real: seen.add(torch.get_num_threads()) or _f(*a))
    m = wide(method, cell, dtype)
    if method == "skip":
        with torch.no_grad():
            m.update_weight.normal_(0.0, 0.3)  # Δũ varies by row and step: rounds where rows part
            m.update_bias.fill_(0.0)
    x = torch.randn(T, 32, I, dtype=dtype)  # 32 rows of D = 200: the per-row passes split too (≥ 4,096)
    two = run_with_threads(m, x, 2)
    twin = copy.deepcopy(m)
    twin.options["impl"] = "reference"
    with torch.no_grad():
        assert_same(two, twin(x), dtype)
    assert seen == {2}
    updates = float(two[2].updates.mean())  # ACT: N(t), the ponder steps
    assert updates > 1.0 if method == "act" else 0.2 < updates < 1.0
