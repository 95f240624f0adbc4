"""Bad options, states and dtypes are rejected at once, with one line naming the setting and its range."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import adaptrnn as ar
from adaptrnn.config import load_config_file, make_config
from adaptrnn.fast.skip import skip_inference
from adaptrnn.methods.skip import RandomSkipRNN
from adaptrnn.model import parse_model_name
from adaptrnn.options import RULES, check_option, check_options
from conftest import DTYPE, METHOD_NAMES, B, D, I, T, make_module, random_input

NAN = float("nan")

BAD = [
    ("skip", "budget", -1e-5, r"SkipRNN: budget must be a finite number >= 0, got -1e-05"),
    ("skip", "budget", NAN, r"budget must be a finite number >= 0, got nan"),
    ("skip", "budget", float("inf"), r"budget must be a finite number >= 0, got inf"),
    ("skip", "budget", "1e-5", r"budget must be a finite number >= 0, got '1e-5'"),
    ("skip", "budget", True, r"budget must be a finite number >= 0, got True"),
    ("skip", "threshold", -1, r"SkipRNN: threshold must be in \[0, 1\], got -1"),
    ("skip", "threshold", 1.01, r"threshold must be in \[0, 1\], got 1.01"),
    ("skip", "stochastic", "yes", r"stochastic must be True or False"),
    ("sa", "budget", -1.0, r"SARNN: budget must be a finite number >= 0"),
    ("sa", "slope", 0.0, r"SARNN: slope must be a finite number > 0, got 0.0"),
    ("sa", "slope", -2.0, r"slope must be a finite number > 0"),
    ("sa", "threshold", 1.5, r"SARNN: threshold must be in \[0, 1\], got 1.5"),
    ("act", "time_penalty", -1e-3, r"ACTRNN: time_penalty must be a finite number >= 0"),
    ("act", "time_penalty", NAN, r"time_penalty must be a finite number >= 0, got nan"),
    ("act", "max_steps", 2.5, r"ACTRNN: max_steps must be an integer >= 1, got 2.5"),
    ("act", "max_steps", 3.0, r"max_steps must be an integer >= 1, got 3.0"),
    ("act", "max_steps", "3", r"max_steps must be an integer >= 1, got '3'"),
    ("act", "epsilon", -0.1, r"ACTRNN: epsilon must be in \[0, 1\)"),
    ("act", "halting_input", "c", r"ACTRNN: halting_input must be h or state, got 'c'"),
    ("vc", "penalty", -1.0, r"VCRNN: penalty must be a finite number >= 0"),
    ("vc", "penalty", NAN, r"penalty must be a finite number >= 0, got nan"),
    ("vc", "target", 1.5, r"VCRNN: target must be in \[0, 1\], got 1.5"),
    ("vc", "target", -0.1, r"target must be in \[0, 1\]"),
    ("vc", "sharpness", 0.0, r"VCRNN: sharpness must be a finite number > 0"),
    ("vc", "epsilon", 0.5, r"VCRNN: epsilon must be in \[0, 0.5\)"),
    ("vc", "scale", -1.0, r"VCRNN: scale must be a finite number >= 0"),
    ("vc", "hard", "no", r"VCRNN: hard must be None, True or False"),
]


@pytest.mark.parametrize(("method", "option", "value", "message"), BAD, ids=lambda v: repr(v)[:20])
def test_bad_option_is_rejected_at_construction(method: str, option: str, value, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        ar.METHODS[method]("gru", I, D, **{option: value})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_unknown_impl_is_rejected_at_construction(method: str) -> None:
    with pytest.raises(ValueError, match=r"impl must be auto, reference or fast, got 'bogus'"):
        ar.METHODS[method]("gru", I, D, impl="bogus")


def test_random_skip_probability_range() -> None:
    with pytest.raises(ValueError, match=r"RandomSkipRNN: skip_prob must be in \[0, 1\], got 1.5"):
        RandomSkipRNN("gru", I, D, skip_prob=1.5)


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("skip", {"budget": 0, "threshold": 0.0, "stochastic": True}),
        ("skip", {"budget": np.float32(1e-5), "threshold": 1.0}),
        ("sa", {"budget": 0.0, "slope": 1e-3, "threshold": 0.0}),
        ("sa", {"threshold": 1}),
        ("act", {"time_penalty": 0, "max_steps": 1, "epsilon": 0.0, "halting_input": "state"}),
        ("act", {"max_steps": np.int64(5), "halting_bias_init": -3.0}),
        ("vc", {"target": 0.0, "penalty": 0.0, "epsilon": 0.0, "scale": 0.0, "hard": True}),
        ("vc", {"target": 1, "sharpness": 50.0, "hard": None}),
        ("dense", {"impl": "reference"}),
    ],
)
def test_boundary_values_are_accepted(method: str, options: dict) -> None:
    m = ar.METHODS[method]("lstm", I, D, **options).to(DTYPE)
    out, _, _ = m(random_input())
    assert torch.isfinite(out).all()


def test_an_option_without_a_rule_keeps_the_type_of_its_default() -> None:
    class Custom(ar.SkipRNN):
        OPTIONS = {**ar.SkipRNN.OPTIONS, "warmup_steps": 10, "note": "x", "scale_up": 1.0}

    assert not {"warmup_steps", "note", "scale_up"} & set(RULES)
    for option, value, message in [
        ("warmup_steps", 2.5, r"Custom: warmup_steps must be an integer, got 2.5"),
        ("note", 3, r"note must be a string, got 3"),
        ("scale_up", "big", r"scale_up must be a finite number, got 'big'"),
    ]:
        with pytest.raises(ValueError, match=message):
            Custom("gru", I, D, **{option: value})
    Custom("gru", I, D, warmup_steps=3, note="y", scale_up=2)


def test_check_option_is_the_same_check_for_a_knob_set_later() -> None:
    m = ar.SkipRNN("gru", I, D)
    check_option(type(m), "threshold", 0.7)
    with pytest.raises(ValueError, match=r"SkipRNN: threshold must be in \[0, 1\], got -1.0"):
        check_option(type(m), "threshold", -1.0)


# ---- states and dtypes ---------------------------------------------------------------------


@pytest.mark.parametrize("method", METHOD_NAMES)
@pytest.mark.parametrize("bad", [NAN, float("inf")])
def test_nan_initial_state_is_rejected(method: str, bad: float) -> None:
    m = make_module(method, "lstm")
    h0, c0 = torch.zeros(1, B, D, dtype=DTYPE), torch.zeros(1, B, D, dtype=DTYPE)
    c0[0, 1, 2] = bad
    with pytest.raises(ValueError, match=r"^state contains NaN or inf$"):
        m(random_input(), state=(h0, c0))
    state = m(random_input())[1]
    state.cell[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match=r"^state contains NaN or inf$"):
        m(random_input(), state=state)


def test_nan_in_a_method_state_quantity_is_rejected() -> None:
    m = make_module("skip", "gru")
    state = m(random_input())[1]
    state.extras["update_prob"][0] = NAN
    with pytest.raises(ValueError, match=r"^state contains NaN or inf$"):
        m(random_input(), state=state)


DTYPE_MESSAGE = (
    r"^input is torch.float64 on cpu, the module's parameters are torch.float32 on cpu; "
    r"convert one to match, e.g. x.to\(module.weight_ih_l0\)$"
)


@pytest.mark.parametrize("method", METHOD_NAMES)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_float64_input_into_a_float32_module_one_message_on_every_path(method: str, cell: str) -> None:
    m = ar.METHODS[method](cell, I, D)  # float32
    x = torch.randn(T, B, I, dtype=torch.float64)
    with pytest.raises(TypeError, match=DTYPE_MESSAGE):  # training: the reference loop
        m(x)
    m.eval()
    with torch.no_grad(), pytest.raises(TypeError, match=DTYPE_MESSAGE):  # inference: the fast path
        m(x)
    m.options["impl"] = "reference"
    with torch.no_grad(), pytest.raises(TypeError, match=DTYPE_MESSAGE):
        m(x)
    if method == "skip":
        with pytest.raises(TypeError, match=DTYPE_MESSAGE):
            skip_inference(m, x)


def test_every_shipped_config_and_stored_run_passes_the_option_checks() -> None:
    root = Path(__file__).resolve().parent.parent
    paths = [*(root / "configs").rglob("*.yaml"), *(root / "benchmarks" / "results" / "runs").rglob("config.yaml")]
    assert len(paths) > 100
    for path in paths:
        config = make_config(load_config_file(path))
        cls = parse_model_name(config.model)[0]
        check_options(cls, {**cls.OPTIONS, **config.method_options}, cls.OPTIONS)
