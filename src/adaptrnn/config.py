"""Training configuration: the dataclass, per-task defaults, YAML files and ``--set key=value``.

Precedence, lowest first: :class:`TrainConfig` defaults < :data:`TASK_DEFAULTS` of the task <
the YAML file (``--config``) < command-line flags (``--steps`` ...) < ``--set key=value``.
A ``--set`` key is routed to the trainer fields, the task's options or the method's options
(``task.KEY`` / ``method.KEY`` name the group explicitly).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .checkpoint import atomic_write
from .model import model_options, parse_model_name
from .tasks import TASKS, task_options


class ConfigError(ValueError):
    """A problem the user can fix in the configuration; the message is one line."""


@dataclass
class TrainConfig:
    """Everything needed to (re)run a training run.

    task, model: names (``adaptrnn.tasks.TASKS``, ``adaptrnn.model.MODEL_NAMES``).
    task_options, method_options: keyword options of the task and of the recurrent method.
    hidden_size, num_layers: the recurrent stack (110 units, 1 layer: the Skip RNN setup).
    embed_size: embedding width in front of token tasks.
    steps, batch_size: optimisation steps and global batch size (split over DDP ranks).
    lr, optimizer (adam|adamw), weight_decay, grad_clip (gradient-norm clip; 0 = none):
        the papers' Adam with lr 1e-4, betas (0.9, 0.999), eps 1e-8, clip 1.
    lr_final, lr_decay_start: None = constant lr; otherwise the lr stays ``lr`` until step
        ``lr_decay_start`` and then follows a half cosine down to ``lr_final`` at the last step
        (a schedule of the step alone, so resuming needs no extra state).
    log_every: steps per line of ``metrics.jsonl``; eval_every: steps per validation (and
        ``last`` checkpoint); eval_batches: validation batches per periodic evaluation
        (None = the whole set); eval_batch_size: batch size of every evaluation.
    seed: model initialisation, data and sampling.
    device: auto (cuda if available) | cpu | cuda | cuda:N.
    threads: CPU threads of torch's intra-op pool (None = torch's default). 1 by default: the
        per-step loops are many small ops that gain little from more threads, and on a busy
        2-core machine two threads spin waiting for each other (measured: adding, skip-lstm,
        batch 256, 0.3 s per step with one thread, 15 s with two).
    flush_denormal: flush subnormal floats to zero on the CPU. Gradients that vanish back
        through hundreds of steps can turn subnormal, and CPU arithmetic on them can be slow
        (benchmarks/subnormal_backward.py: the gain depends on the CPU and the weights; see
        docs/speed.md and benchmarks/results/subnormal_backward_threads1.txt, where a rerun found
        none); values below ~1e-38 carry nothing a float32 update could use.
    sharpness_final: VCRNN sharpness reached at the last step by a linear ramp from the
        ``sharpness`` option (None = constant).
    slope_epoch_steps: steps per "epoch" of the SA-RNN slope schedule
        ``α = min(5, α_0 + 0.04·epoch)`` (None = steps / 100, so α reaches 5 at the end).
    patience: stop once this many validations in a row found no better metric than the best
        (None = train all ``steps``); the best checkpoint is tested as always, and result.json
        says ``stopped_early``. Schedules keep their ``steps``-long shape.
    """

    task: str
    model: str
    task_options: dict[str, Any] = field(default_factory=dict)
    method_options: dict[str, Any] = field(default_factory=dict)
    hidden_size: int = 110
    num_layers: int = 1
    embed_size: int = 64
    steps: int = 10000
    batch_size: int = 256
    lr: float = 1e-4
    lr_final: float | None = None
    lr_decay_start: int = 0
    optimizer: str = "adam"
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    log_every: int = 50
    eval_every: int = 500
    eval_batches: int | None = None
    eval_batch_size: int = 1000
    seed: int = 0
    device: str = "auto"
    threads: int | None = 1
    flush_denormal: bool = True
    sharpness_final: float | None = None
    slope_epoch_steps: int | None = None
    patience: int | None = None


# The papers' batch sizes where they differ from Skip RNN's 256 (ACT.md). Adding and frequency
# get quick-start defaults so that a bare ``adaptrnn train --task adding --model skip-lstm`` solves
# the task in about 5 minutes on a 2-core CPU (measured: solved, MSE < var/100, from ~1,300 steps;
# 0.15 s per step); the configs under configs/ pin the papers' lr 1e-4, batch 256 and step counts.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "adding": {"lr": 1e-3, "batch_size": 128, "steps": 2000, "eval_every": 100},
    "frequency": {"lr": 1e-3, "batch_size": 128, "steps": 2000, "eval_every": 100},
    "parity": {"batch_size": 128},
    "logic": {"batch_size": 16},
    "addition": {"batch_size": 32},
    "sort": {"batch_size": 16},
}

TRAINER_FIELDS = tuple(
    f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("task_options", "method_options")
)
_POSITIVE = (
    "hidden_size",
    "num_layers",
    "embed_size",
    "steps",
    "batch_size",
    "log_every",
    "eval_every",
    "eval_batch_size",
)
_TRUE, _FALSE, _NONE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}, {"none", "null", "~"}


def coerce(value: Any, kind: Any) -> Any:
    """``value`` (often a string from the command line) as type ``kind``.

    ``kind`` is a type annotation (``int``, ``float | None`` ...) or, for task/method options,
    the option's default value, whose type is used (a None default accepts anything).
    Raises ValueError with a short reason.
    """
    if not isinstance(kind, type) and not _is_annotation(kind):
        return _coerce_like(value, kind)
    args = typing.get_args(kind)
    if type(None) in args:
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            return None
        kind = next(a for a in args if a is not type(None))
    return _coerce_like(value, kind())


def _is_annotation(kind: Any) -> bool:
    return isinstance(kind, types.UnionType) or typing.get_origin(kind) is not None


def _coerce_like(value: Any, default: Any) -> Any:
    """``value`` as the type of ``default``."""
    text = value.strip() if isinstance(value, str) else None
    if default is None:  # untyped option: booleans, none, numbers and strings as written
        if text is None:
            return value
        low = text.lower()
        if low in _NONE:
            return None
        if low in ("true", "false"):
            return low == "true"
        for parse in (int, float):
            try:
                return parse(text)
            except ValueError:
                pass
        return text
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise ValueError(f"expected true or false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        number = _number(value, "an integer")
        if not float(number).is_integer():
            raise ValueError(f"expected an integer, got {value!r}")
        return int(number)
    if isinstance(default, float):
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        return float(_number(value, "a number"))
    if isinstance(default, str):
        if text is None:
            raise ValueError(f"expected a string, got {value!r}")
        return text
    if isinstance(default, tuple):
        items = text.split(",") if text is not None else value
        if not isinstance(items, (list, tuple)) or len(items) != len(default):
            raise ValueError(f"expected {len(default)} comma-separated values, got {value!r}")
        return tuple(_coerce_like(v, d) for v, d in zip(items, default, strict=True))
    return value


def _number(value: Any, what: str) -> int | float:
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        for parse in (int, float):
            try:
                return parse(value.strip())
            except ValueError:
                pass
    raise ValueError(f"expected {what}, got {value!r}")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file; ConfigError if unreadable or not a mapping."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(err).split())}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, got {type(values).__name__}")
    return values


def save_config(config: TrainConfig, path: str | Path) -> None:
    """Write the fully resolved config as YAML (tuples as lists), atomically (a kill leaves the old file)."""
    data = dataclasses.asdict(config)
    for group in ("task_options", "method_options"):
        data[group] = {k: list(v) if isinstance(v, tuple) else v for k, v in data[group].items()}
    text = yaml.safe_dump(data, sort_keys=False)
    atomic_write(Path(path), lambda f: f.write(text.encode()))


def make_config(
    file_values: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    sets: Sequence[str] = (),
) -> TrainConfig:
    """Resolve a :class:`TrainConfig` from its layers (see the module docstring).

    Args:
        file_values: the mapping of a YAML file (or of a run's ``config.yaml``).
        overrides: trainer fields from command-line flags; None values are ignored.
        sets: ``key=value`` strings.
    Raises:
        ConfigError: missing task/model, unknown names or keys, values of the wrong type.
    """
    file_values = dict(file_values or {})
    unknown = sorted(set(file_values) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(unknown)}; valid keys: task_options, method_options, "
            + ", ".join(TRAINER_FIELDS)
        )
    pairs = [_split_set(s) for s in sets]
    top = {**file_values, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    top.update({k: v for k, v in pairs if k in ("task", "model")})
    for key in ("task", "model"):
        if not top.get(key):
            raise ConfigError(f"no {key} given: pass --{key} or a --config file that sets it")
    task, model = str(top["task"]), str(top["model"])
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    try:
        parse_model_name(model)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    groups = {"task": task_options(task), "method": model_options(model)}
    hints = typing.get_type_hints(TrainConfig)
    values: dict[str, Any] = {**TASK_DEFAULTS.get(task, {})}
    options: dict[str, dict[str, Any]] = {"task": dict(groups["task"]), "method": dict(groups["method"])}
    for key, value in top.items():
        if key in ("task_options", "method_options"):
            group = key.split("_")[0]
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key} must be a mapping, got {value!r}")
            for name, item in value.items():
                options[group][name] = _coerce_option(group, name, item, groups[group], task, model)
        elif key not in ("task", "model"):
            values[key] = _coerce_field(key, value, hints)
    for key, value in pairs:
        if key in ("task", "model"):
            continue
        group, name = _route(key, groups, task, model)
        if group == "trainer":
            values[name] = _coerce_field(name, value, hints)
        else:
            options[group][name] = _coerce_option(group, name, value, groups[group], task, model)
    config = TrainConfig(task, model, options["task"], options["method"], **values)
    _validate(config)
    return config


# Settings a resumed run may take from the command line without --allow-changed-settings:
# extending the run (steps) and where it runs. The rest define the experiment.
RESUME_FREE = ("steps", "device", "threads")
# Settings that fix the shapes of the saved weights: a resumed run can never change them.
RESUME_FIXED = ("task", "model", "hidden_size", "num_layers", "embed_size")


def changed_settings(old: TrainConfig, new: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """``{name: (old value, new value)}`` for every setting that differs; options as ``task.X`` / ``method.X``."""
    flat = []
    for config in (old, new):
        values = dataclasses.asdict(config)
        for group in ("task_options", "method_options"):
            values.update({f"{group.split('_')[0]}.{k}": v for k, v in values.pop(group).items()})
        flat.append(values)
    return {k: (flat[0].get(k), flat[1].get(k)) for k in flat[0] | flat[1] if flat[0].get(k) != flat[1].get(k)}


def _split_set(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {item!r}")
    return key.strip(), value


def _route(key: str, groups: dict[str, dict[str, Any]], task: str, model: str) -> tuple[str, str]:
    """(group, name) of a ``--set`` key: ``trainer``, ``task`` or ``method``."""
    prefix, dot, rest = key.partition(".")
    if dot and prefix in groups:
        if rest not in groups[prefix]:
            raise ConfigError(_unknown_message(rest, groups, task, model))
        return prefix, rest
    owners = [g for g in ("task", "method") if key in groups[g]]
    if key in TRAINER_FIELDS:
        owners.insert(0, "trainer")
    if not owners:
        raise ConfigError(_unknown_message(key, groups, task, model))
    if len(owners) > 1:
        raise ConfigError(f"setting {key!r} is ambiguous ({' and '.join(owners)}); write task.{key} or method.{key}")
    return owners[0], key


def _unknown_message(key: str, groups: dict[str, dict[str, Any]], task: str, model: str) -> str:
    trainer = ", ".join(k for k in TRAINER_FIELDS if k not in ("task", "model"))
    task_keys, method_keys = ", ".join(groups["task"]) or "none", ", ".join(groups["method"]) or "none"
    return (
        f"unknown setting {key!r}; valid: trainer: {trainer}; task {task!r}: {task_keys}; "
        f"model {model!r}: {method_keys}"
    )


def _coerce_field(key: str, value: Any, hints: dict[str, Any]) -> Any:
    try:
        return coerce(value, hints[key])
    except ValueError as err:
        raise ConfigError(f"bad value for {key!r}: {err}") from None


def _coerce_option(group: str, name: str, value: Any, valid: dict[str, Any], task: str, model: str) -> Any:
    if name not in valid:
        owner = f"task {task!r}" if group == "task" else f"model {model!r}"
        raise ConfigError(f"unknown option {name!r} for {owner}; valid options: {', '.join(valid) or 'none'}")
    try:
        return coerce(value, valid[name])
    except ValueError as err:
        raise ConfigError(f"bad value for {group} option {name!r}: {err}") from None


def _validate(config: TrainConfig) -> None:
    for key in _POSITIVE:
        if getattr(config, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {getattr(config, key)}")
    # Written so that NaN fails every check; grad_clip may be inf (no clipping, as 0).
    for key, ok, allowed in (
        ("lr", 0 < config.lr < math.inf, "a finite number > 0"),
        ("grad_clip", config.grad_clip >= 0, "a number >= 0 (0 or inf: no clipping)"),
        ("lr_final", config.lr_final is None or 0 < config.lr_final < math.inf, "a finite number > 0 or none"),
        ("lr_decay_start", 0 <= config.lr_decay_start, "an integer >= 0"),
        ("weight_decay", 0 <= config.weight_decay < math.inf, "a finite number >= 0"),
        ("sharpness_final", config.sharpness_final is None or 0 < config.sharpness_final < math.inf,
         "a finite number > 0 or none"),
    ):  # fmt: skip
        if not ok:
            raise ConfigError(f"{key} must be {allowed}, got {getattr(config, key)}")
    if config.optimizer not in ("adam", "adamw"):
        raise ConfigError(f"optimizer must be adam or adamw, got {config.optimizer!r}")
    if config.device not in ("auto", "cpu", "cuda") and not config.device.startswith("cuda:"):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {config.device!r}")
    for key in ("eval_batches", "slope_epoch_steps", "threads", "patience"):
        if getattr(config, key) is not None and getattr(config, key) < 1:
            raise ConfigError(f"{key} must be >= 1 or none, got {getattr(config, key)}")
