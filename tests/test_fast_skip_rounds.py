"""Skip RNN's batched inference in rounds: each round steps rows at their own next update."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import adaptrnn as ar
from adaptrnn.bench import controlled
from adaptrnn.fast import native, native_batch
from adaptrnn.fast import skip as fast_skip
from test_fast import CELLS, DTYPE, assert_same, reference_twin

I, D, T, B = 3, 8, 40, 12


def spied_rounds(monkeypatch) -> list[int]:
    """Patches ``_round``; returns the list that gets, per call, how many distinct steps it took."""
    distinct: list[int] = []
    real = fast_skip._round

    def spy(module, kernels, inputs, log, rows, next_t, threshold, threads):
        distinct.append(np.unique(next_t[rows]).size)
        return real(module, kernels, inputs, log, rows, next_t, threshold, threads)

    monkeypatch.setattr(fast_skip, "_round", spy)
    return distinct


@pytest.fixture(params=["native", "python"])
def in_c(request, monkeypatch) -> list[str]:
    """The rounds whole in C with torch's BLAS (``native_batch.skip_rounds``; a ``features`` callable:
    Python rounds of ``native_batch.batch_step``), or all from Python (``weights.stack_step``).
    Returns the list of native functions called, in order."""
    calls: list[str] = []
    if request.param == "python":
        monkeypatch.setattr(native_batch, "batch_applies", lambda *a: False)
    elif native.library() is None or native_batch.blas_gemm(DTYPE) is None:
        pytest.skip("the native batched loops are not available here")
    else:
        for name in ("skip_rounds", "batch_step"):
            real = getattr(native_batch, name)
            monkeypatch.setattr(native_batch, name, lambda *a, _f=real, _n=name: calls.append(_n) or _f(*a))
    return calls


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("fraction", [0.5, 0.2])
@pytest.mark.parametrize("cell", CELLS)
def test_spread_phases_take_about_f_t_rounds(monkeypatch, in_c, cell: str, fraction: float, padded: bool) -> None:
    """One update every 1/f steps with the rows' phases spread (``bench.controlled``): the fast
    path equals the reference and makes about f·T rounds, not one per step."""
    m = ar.SkipRNN(cell, I, D, num_layers=2).to(DTYPE).eval()
    x = torch.randn(T, B, I, dtype=DTYPE)
    state = controlled(m, fraction, B, x)
    lengths = torch.randint(1, T + 1, (B,)) if padded else None
    distinct = spied_rounds(monkeypatch)
    with torch.no_grad():
        got = m(x, state, lengths)
        want = reference_twin(m)(x, state, lengths)
    assert_same(got, want)
    if in_c:  # one call of the C loop, and no round from Python
        assert in_c == ["skip_rounds"] and not distinct
    else:
        assert max(distinct) > 1  # rows at different steps stepped together
        assert len(distinct) <= fraction * T + 2  # the most updates of any row, plus the first step


@pytest.mark.parametrize("cell", CELLS)
def test_learned_gates_and_a_callable_input(in_c, cell: str) -> None:
    """Data-dependent schedules (random gate weights, random initial ũ and Δũ), the inputs given
    as a tensor and as a ``features(steps, rows)`` callable: both equal the reference."""
    m = ar.SkipRNN(cell, I, D, num_layers=2).to(DTYPE).eval()
    with torch.no_grad():
        m.update_weight.normal_(0.0, 2.0)
        m.update_bias.fill_(-0.5)
    x = torch.randn(T, B, I, dtype=DTYPE)
    extras = {"update_prob": torch.rand(B, dtype=DTYPE), "delta_prob": torch.rand(B, dtype=DTYPE)}
    state = ar.RecurrentState(m.initial_state(B, x).cell, extras)
    with torch.no_grad():
        want = reference_twin(m)(x, state)
        assert_same(m(x, state), want)
        got = fast_skip.skip_inference(m, lambda steps, rows: x[steps, rows], seq_len=T, batch=B, state=state)
    assert_same(got, want)
    assert 0.1 < float(want[2].updates.mean()) < 0.9
    assert not in_c or set(in_c) == {"skip_rounds", "batch_step"}  # the tensor's loop in C, the callable's steps


@pytest.mark.parametrize("cell", CELLS)
def test_outputs_in_time_order_then_from_the_log(monkeypatch, cell: str) -> None:
    """Every row due at step 0 (ũ = 1): the loop starts in time order (a window, outputs written
    as it goes), then the rows' schedules part and it continues in rounds from the log (the
    Python loop's bookkeeping: the C loop writes every output in place)."""
    monkeypatch.setattr(native_batch, "batch_applies", lambda *a: False)
    m = ar.SkipRNN(cell, I, D, num_layers=2).to(DTYPE).eval()
    with torch.no_grad():
        m.update_weight.normal_(0.0, 2.0)
        m.update_bias.fill_(0.3)
    x = torch.randn(T, B, I, dtype=DTYPE)
    state = m.initial_state(B, x)  # ũ = 1: every row updates at step 0
    splits: list[int] = []
    real = fast_skip.UpdateLog.split
    monkeypatch.setattr(fast_skip.UpdateLog, "split", lambda log, t: splits.append(t) or real(log, t))
    with torch.no_grad():
        got = m(x, state)
        want = reference_twin(m)(x, state)
    assert_same(got, want)
    assert len(splits) == 1 and splits[0] > 0  # written in order up to the split, logged after it
