"""Every bad input raises an error whose message names the problem."""

from __future__ import annotations

import pytest
import torch

import adaptrnn as ar
from conftest import CELLS, DTYPE, METHOD_NAMES, B, D, I, T, make_module, random_input

NAN_INF = [float("nan"), float("inf"), float("-inf")]


@pytest.fixture(params=METHOD_NAMES)
def method(request: pytest.FixtureRequest) -> str:
    return request.param


# ---- construction ------------------------------------------------------------------------


def test_unknown_cell(method: str) -> None:
    with pytest.raises(ValueError, match=r"unknown cell 'lstmx'; expected one of rnn, gru, lstm"):
        ar.METHODS[method]("lstmx", I, D)


def test_unknown_option_lists_valid_ones(method: str) -> None:
    cls = ar.METHODS[method]
    with pytest.raises(ValueError, match=r"unknown option\(s\) bogus; valid: ") as info:
        cls("gru", I, D, bogus=1)
    for name in cls.OPTIONS:
        assert name in str(info.value)


@pytest.mark.parametrize("name", ["input_size", "hidden_size", "num_layers"])
@pytest.mark.parametrize("value", [0, -1, 2.5])
def test_non_positive_sizes(method: str, name: str, value: float) -> None:
    sizes = {"input_size": I, "hidden_size": D, "num_layers": 1, name: value}
    with pytest.raises(ValueError, match=rf"{name} must be a positive int"):
        ar.METHODS[method]("lstm", **sizes)


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5])
def test_dropout_out_of_range(method: str, dropout: float) -> None:
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        ar.METHODS[method]("rnn", I, D, num_layers=2, dropout=dropout)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("max_steps", 0, "max_steps must be an integer >= 1"), ("epsilon", 1.0, r"epsilon must be in \[0, 1\)")],
)
def test_act_option_ranges(option: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ar.ACTRNN("gru", I, D, **{option: value})


def test_dense_unknown_impl() -> None:
    with pytest.raises(ValueError, match=r"impl must be auto, reference or fast, got 'bogus'"):
        ar.DenseRNN("gru", I, D, impl="bogus")(torch.randn(T, B, I))


# ---- input tensor --------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(T, I), (T, B, 1, I)])
def test_wrong_rank(method: str, shape: tuple[int, ...]) -> None:
    m = make_module(method, "gru")
    with pytest.raises(ValueError, match=r"input must be 3-D \(T, B, I\), got shape"):
        m(torch.randn(shape, dtype=DTYPE))
    m.batch_first = True
    with pytest.raises(ValueError, match=r"input must be 3-D \(B, T, I\)"):
        m(torch.randn(shape, dtype=DTYPE))


def test_wrong_feature_size(method: str) -> None:
    with pytest.raises(ValueError, match=rf"input has {I + 1} features, the module expects input_size={I}"):
        make_module(method, "lstm")(torch.randn(T, B, I + 1, dtype=DTYPE))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_input(method: str, dtype: torch.dtype) -> None:
    with pytest.raises(TypeError, match=r"input must be a floating-point tensor"):
        make_module(method, "rnn")(torch.ones(T, B, I, dtype=dtype))


def test_not_a_tensor(method: str) -> None:
    with pytest.raises(TypeError, match=r"input must be a tensor, got list"):
        make_module(method, "rnn")([[[0.0] * I]])


@pytest.mark.parametrize("shape", [(0, B, I), (T, 0, I)])
def test_empty_input(method: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"empty time or batch dimension"):
        make_module(method, "rnn")(torch.randn(shape, dtype=DTYPE))


@pytest.mark.parametrize("bad", NAN_INF)
def test_nan_and_inf(method: str, bad: float) -> None:
    x = random_input()
    x[T - 1, B - 1, I - 1] = bad
    with pytest.raises(ValueError, match=r"input contains NaN or inf"):
        make_module(method, "gru")(x)


# ---- lengths ------------------------------------------------------------------------------


@pytest.mark.parametrize("lengths", [torch.full((B + 1,), T), torch.full((B, 1), T), torch.tensor(T)])
def test_lengths_wrong_shape(method: str, lengths: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=rf"lengths must have shape \(B,\) = \({B},\)"):
        make_module(method, "rnn")(random_input(), lengths=lengths)


@pytest.mark.parametrize("lengths", [torch.full((B,), float(T)), torch.ones(B, dtype=torch.bool), [float(T)] * B])
def test_lengths_not_integers(method: str, lengths) -> None:
    with pytest.raises(TypeError, match=r"lengths must be integers"):
        make_module(method, "rnn")(random_input(), lengths=lengths)


@pytest.mark.parametrize("bad", [0, -1, T + 1])
def test_lengths_out_of_range(method: str, bad: int) -> None:
    lengths = torch.full((B,), T)
    lengths[1] = bad
    with pytest.raises(ValueError, match=rf"lengths must lie in 1..T = 1..{T}"):
        make_module(method, "rnn")(random_input(), lengths=lengths)


def test_lengths_as_a_list_are_accepted(method: str) -> None:
    m = make_module(method, "gru").eval()
    x = random_input()
    lengths = [T, 2, 3, 1]
    assert torch.equal(m(x, lengths=lengths)[0], m(x, lengths=torch.tensor(lengths))[0])


# ---- state ----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["L", "B", "D"])
@pytest.mark.parametrize("cell", CELLS)
def test_state_wrong_shape(method: str, cell: str, which: str) -> None:
    m = make_module(method, cell, num_layers=2)
    shape = {"L": (3, B, D), "B": (2, B + 1, D), "D": (2, B, D + 1)}[which]
    h0 = torch.zeros(shape, dtype=DTYPE)
    state = (h0, h0) if cell == "lstm" else h0
    with pytest.raises(ValueError, match=r"state has shape .* expected \(L, B, K, D\)"):
        m(random_input(), state=state)
    bad_cell = torch.zeros(*shape[:2], m.state_parts, shape[2], dtype=DTYPE)
    extras = m.initial_extras(B, random_input())
    with pytest.raises(ValueError, match=r"state has shape .* expected \(L, B, K, D\)"):
        m(random_input(), state=ar.RecurrentState(bad_cell, extras))


def test_lstm_given_a_single_tensor(method: str) -> None:
    with pytest.raises(ValueError, match=r"a lstm state is \(h0, c0\), got 1 tensor"):
        make_module(method, "lstm")(random_input(), state=torch.zeros(1, B, D, dtype=DTYPE))


@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_rnn_given_a_pair(method: str, cell: str) -> None:
    h0 = torch.zeros(1, B, D, dtype=DTYPE)
    with pytest.raises(ValueError, match=rf"a {cell} state is h0, got 2 tensor"):
        make_module(method, cell)(random_input(), state=(h0, h0))


def test_state_of_wrong_rank(method: str) -> None:
    with pytest.raises(ValueError, match=r"h0/c0 must be tensors of shape \(num_layers, batch, hidden_size\)"):
        make_module(method, "gru")(random_input(), state=torch.zeros(B, D, dtype=DTYPE))


def test_state_missing_method_quantities() -> None:
    m = make_module("skip", "gru")
    with pytest.raises(ValueError, match=r"state lacks this method's quantities: delta_prob, update_prob"):
        m(random_input(), state=ar.RecurrentState(torch.zeros(1, B, 1, D, dtype=DTYPE)))


def test_state_extras_of_wrong_batch() -> None:
    m = make_module("skip", "gru")
    extras = {"update_prob": torch.ones(B + 1, dtype=DTYPE), "delta_prob": torch.ones(B, dtype=DTYPE)}
    with pytest.raises(ValueError, match=rf"state extra 'update_prob' has shape \({B + 1},\), batch is {B}"):
        m(random_input(), state=ar.RecurrentState(torch.zeros(1, B, 1, D, dtype=DTYPE), extras))
