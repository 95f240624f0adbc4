"""DenseRNN, both the reference loop and the ATen path, against ``torch.nn.RNN/GRU/LSTM``."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import adaptrnn as ar
from conftest import (
    CELLS,
    DTYPE,
    LENGTHS,
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

IMPLS = ("reference", "auto")


def dense(cell: str, impl: str, num_layers: int = 1, batch_first: bool = False, **kw) -> ar.DenseRNN:
    return make_module("dense", cell, num_layers, batch_first, impl=impl, **kw)


def torch_with_weights_of(module: ar.DenseRNN) -> torch.nn.RNNBase:
    ref = TORCH_CLASSES[module.cell](
        I, D, num_layers=module.num_layers, batch_first=module.batch_first, bias=module.bias, dtype=DTYPE
    )
    ref.load_state_dict(module.state_dict(), strict=True)  # same names, nothing extra
    return ref


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("impl", IMPLS)
def test_equals_torch(impl: str, cell: str, num_layers: int, batch_first: bool) -> None:
    m = dense(cell, impl, num_layers, batch_first)
    ref = torch_with_weights_of(m)
    x = random_input(batch_first=batch_first)
    h0 = random_cell(m)
    for start in (None, h0):
        out, state, _ = m(x, state=None if start is None else as_hx(start, cell))
        ref_out, ref_final = run_torch(ref, x, start)
        assert_close(out, ref_out)
        assert_close(state.cell, ref_final)
        assert_close(state.h, ref_final[:, :, 0])


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("impl", IMPLS)
def test_lengths_equal_packed_torch(impl: str, cell: str, num_layers: int, batch_first: bool) -> None:
    m = dense(cell, impl, num_layers, batch_first)
    ref = torch_with_weights_of(m)
    x = random_input(batch_first=batch_first)
    h0 = random_cell(m)
    out, state, stats = m(x, state=ar.RecurrentState(h0), lengths=LENGTHS)
    ref_out, ref_final = run_torch(ref, x, h0, LENGTHS)
    assert_close(out, ref_out)
    assert_close(state.cell, ref_final)
    time_major = out.transpose(0, 1) if batch_first else out
    for b, length in enumerate(LENGTHS.tolist()):
        assert torch.all(time_major[length:, b] == 0), "padded outputs must be exactly 0"
        # The final state is the state after the last valid step.
        assert_close(state.h[-1, b], time_major[length - 1, b])
    assert torch.equal(stats.updates, (torch.arange(T) < LENGTHS.unsqueeze(1)).to(DTYPE))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cell", CELLS)
def test_torch_state_dict_loads_strictly(cell: str, bias: bool) -> None:
    ref = TORCH_CLASSES[cell](I, D, num_layers=2, bias=bias, dtype=DTYPE)
    m = make_module("dense", cell, num_layers=2, bias=bias)
    m.load_state_dict(ref.state_dict(), strict=True)
    assert m.state_dict().keys() == ref.state_dict().keys()
    x = random_input()
    out, state, _ = m(x)
    ref_out, ref_final = run_torch(ref, x)
    assert_close(out, ref_out)
    assert_close(state.cell, ref_final)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("impl", IMPLS)
def test_flops_closed_form(impl: str, cell: str, num_layers: int) -> None:
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[cell]
    # G·D·(I + D) for layer 0, G·D·(D + D) for each layer above, per valid step.
    per_step = gates * D * (I + D) + (num_layers - 1) * gates * D * (D + D)
    m = dense(cell, impl, num_layers)
    _, _, stats = m(random_input(), lengths=LENGTHS)
    assert stats.flops.shape == (B,)
    assert_close(stats.flops, (per_step * LENGTHS).to(DTYPE))
    assert stats.cost.shape == () and float(stats.cost) == 0.0


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_inactive_in_eval(cell: str) -> None:
    m = dense(cell, "reference", num_layers=2, dropout=0.5).eval()
    ref = torch_with_weights_of(m).eval()
    x = random_input()
    assert_close(m(x)[0], run_torch(ref, x)[0])


@pytest.mark.parametrize("lengths", [None, LENGTHS])
@pytest.mark.parametrize("cell", CELLS)
def test_gradients_reference_equal_aten(cell: str, lengths: torch.Tensor | None) -> None:
    ref_impl = dense(cell, "reference", num_layers=2)
    aten = dense(cell, "auto", num_layers=2)
    aten.load_state_dict(ref_impl.state_dict())
    x0, h0 = random_input(), random_cell(ref_impl)
    w_out, w_state = torch.randn(T, B, D, dtype=DTYPE), torch.randn_like(h0)
    grads = []
    for m in (ref_impl, aten):
        x, h = x0.clone().requires_grad_(), h0.clone().requires_grad_()
        out, state, _ = m(x, state=ar.RecurrentState(h), lengths=lengths)
        ((out * w_out).sum() + (state.cell * w_state).sum()).backward()
        grads.append([x.grad, h.grad] + [p.grad for p in m.parameters()])
    for g_ref, g_aten in zip(*grads, strict=True):
        assert g_ref is not None and g_ref.abs().sum() > 0
        assert_close(g_aten, g_ref)
