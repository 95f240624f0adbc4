"""The allowed values of the methods' options, in one table.

Every recurrent module checks its options against :data:`RULES` when it is built
(``RecurrentBase.__init__``), and ``adaptrnn dial`` checks a knob value the same way before
setting it, so a bad setting fails at once with one line that names the option and the
allowed values, instead of later, deep in a forward pass (or never, as a NaN budget would).

A rule is looked up first under ``(class name, option)`` for every class in the module's
MRO (an option whose meaning differs between methods, such as ``epsilon``), then under the
option's name. An option without a rule (a method's new option) must have the type of its
default (bool, int, float or str; a None default accepts anything).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Rule:
    """Allowed values of one option.

    kind: "number" (a finite real; ints accepted), "int" (an integral number, not bool),
        "bool", "str", "choice" (one of ``choices``) or "optional_bool" (None, True or False).
    optional: None is allowed too (a number option that can be off).
    low, high: bounds of a number; ``low_open``/``high_open`` exclude the bound itself.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    optional: bool = False

    def allowed(self) -> str:
        """The allowed values in words, e.g. ``in [0, 1)`` or ``a finite number >= 0``."""
        if self.optional:
            return "None or " + replace(self, optional=False).allowed()
        if self.kind == "bool":
            return "True or False"
        if self.kind == "optional_bool":
            return "None, True or False"
        if self.kind == "str":
            return "a string"
        if self.kind == "choice":
            return ", ".join(self.choices[:-1]) + " or " + self.choices[-1]
        what = "an integer" if self.kind == "int" else "a finite number"
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{what} {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{what} {'<' if self.high_open else '<='} {self.high:g}"
        return what

    def accepts(self, value: Any) -> bool:
        if self.optional and value is None:
            return True
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "optional_bool":
            return value is None or isinstance(value, bool)
        if self.kind == "str":
            return isinstance(value, str)
        if self.kind == "choice":
            return isinstance(value, str) and value in self.choices
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False  # a string "1e-5" or a bool is a mistake, not a number
        if self.kind == "int" and not isinstance(value, numbers.Integral):
            return False
        value = float(value)
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))


NON_NEGATIVE = Rule("number", low=0.0)
POSITIVE = Rule("number", low=0.0, low_open=True)
UNIT = Rule("number", low=0.0, high=1.0)  # [0, 1]
UNIT_OPEN_TOP = Rule("number", low=0.0, high=1.0, high_open=True)  # [0, 1)

RULES: dict[str | tuple[str, str], Rule] = {
    # Regularisers' weights (Skip/SA λ, ACT τ, VC penalty): a negative weight rewards computation.
    "budget": NON_NEGATIVE,
    "time_penalty": NON_NEGATIVE,
    "penalty": NON_NEGATIVE,
    # VC: m̄ is a fraction of the D dimensions; the scale dial multiplies m_t (clamped to 1).
    "target": UNIT,
    "scale": NON_NEGATIVE,
    "sharpness": POSITIVE,  # λ of σ(λ(m·D - i)); at 0 the mask would be 1/2 everywhere
    ("VCRNN", "epsilon"): Rule("number", low=0.0, high=0.5, high_open=True),  # Thres_ε: ε < 1 - ε
    # SA: α of the hard sigmoid; at α <= 0 the gate no longer increases with its input.
    "slope": POSITIVE,
    # Skip and SA: u = 1[ũ > threshold] with ũ in [0, 1]. 0 updates whenever ũ > 0; 1 is the
    # dial's end where nothing updates (not even Skip RNN's forced first step, ũ_1 = 1);
    # beyond 1 nothing changes, and below 0 eq. 6's count of skipped steps would be negative.
    "threshold": UNIT,
    # ACT: M ponder steps (a count), halting when Σh >= 1 - ε.
    "max_steps": Rule("int", low=1.0),
    ("ACTRNN", "epsilon"): UNIT_OPEN_TOP,
    "halting_bias_init": Rule("number"),
    "halting_input": Rule("choice", choices=("h", "state")),
    "skip_prob": UNIT,
    "stochastic": Rule("bool"),
    "hard": Rule("optional_bool"),
    "impl": Rule("choice", choices=("auto", "reference", "fast")),
    # Skip: the straight-through gradient graph (methods/skip.py); SA: the gate's init and graph.
    "graph": Rule("choice", choices=("official", "paper-carried", "paper")),
    # Skip: the bound on the straight-through gradient at the binary gate; None leaves it unbounded.
    "gate_grad_clip": Rule("number", low=0.0, low_open=True, optional=True),
    "gate_init": Rule("choice", choices=("official", "open")),
    "detach_gate_state": Rule("bool"),
    "detach_scheduler_state": Rule("bool"),
}


def rule_for(cls: type, name: str) -> Rule | None:
    """The rule of option ``name`` of module class ``cls`` (see the module docstring)."""
    for klass in cls.__mro__:
        if (klass.__name__, name) in RULES:
            return RULES[(klass.__name__, name)]
    return RULES.get(name)


def check_option(cls: type, name: str, value: Any, default: Any = None) -> None:
    """Raise ValueError ``"<Class>: <name> must be <allowed>, got <value>"`` if ``value`` is not allowed."""
    rule = rule_for(cls, name)
    if rule is None:
        rule = _rule_from_default(default)
        if rule is None:
            return
    if not rule.accepts(value):
        raise ValueError(f"{cls.__name__}: {name} must be {rule.allowed()}, got {value!r}")


def check_options(cls: type, options: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    """Check every option of a module of class ``cls`` (``defaults``: its ``OPTIONS``)."""
    for name, value in options.items():
        check_option(cls, name, value, defaults.get(name))


def _rule_from_default(default: Any) -> Rule | None:
    """An option without a rule keeps the type of its default."""
    if isinstance(default, bool):
        return Rule("bool")
    if isinstance(default, int):
        return Rule("int")
    if isinstance(default, float):
        return Rule("number")
    if isinstance(default, str):
        return Rule("str")
    return None
