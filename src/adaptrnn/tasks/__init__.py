"""Task registry: ``make_task("adding", seed=0, length="100")``.

Options are the keyword arguments of each task class; values may arrive as strings from the
command line and are coerced to the type of the option's default.
"""

from __future__ import annotations

import inspect
from typing import Any

from .act_tasks import AdditionTask, LogicTask, ParityTask, SortTask
from .base import Batch, Task
from .images import PixelFashionMNISTTask, PixelImageTask, PixelMNISTTask, read_idx
from .synthetic import AddingTask, CopyTask, FrequencyTask
from .text import CharLMTask

TASKS: dict[str, type[Task]] = {
    cls.name: cls
    for cls in (
        AddingTask,
        FrequencyTask,
        PixelMNISTTask,
        PixelFashionMNISTTask,
        ParityTask,
        LogicTask,
        AdditionTask,
        SortTask,
        CharLMTask,
        CopyTask,
    )
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def task_options(name: str) -> dict[str, Any]:
    """The options of task ``name`` with their defaults (``seed`` excluded)."""
    cls = _task_class(name)
    params = inspect.signature(cls.__init__).parameters
    return {p: v.default for p, v in params.items() if p not in ("self", "seed")}


def _task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[name]


def _coerce(value: Any, default: Any) -> Any:
    """``value`` converted to the type of ``default``; raises ValueError/TypeError if impossible."""
    if default is None or isinstance(default, str):  # paths and names
        if not isinstance(value, (str, bytes)) and not hasattr(value, "__fspath__"):
            raise TypeError(f"expected a string, got {type(value).__name__}")
        return str(value)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise ValueError(f"expected a boolean (true/false), got {value!r}")
    if isinstance(default, int):
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise TypeError(f"expected an integer, got {value!r}")
        try:
            return int(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise ValueError(f"expected an integer, got {value!r}") from None
    if isinstance(default, float):
        if isinstance(value, bool):
            raise TypeError(f"expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {value!r}") from None
    if isinstance(default, tuple):
        items = value.split(",") if isinstance(value, str) else list(value)
        if len(items) != len(default):
            raise ValueError(f"expected {len(default)} comma-separated values, got {value!r}")
        return tuple(_coerce(v, d) for v, d in zip(items, default, strict=True))
    return value


def make_task(name: str, seed: int = 0, **options: Any) -> Task:
    """Build task ``name``; unknown names/options raise ValueError listing the valid ones."""
    valid = task_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for task {name!r}; valid options: {', '.join(valid)}")
    kwargs = {}
    for key, value in options.items():
        try:
            kwargs[key] = _coerce(value, valid[key])
        except (TypeError, ValueError) as err:
            raise type(err)(f"task {name!r}: bad value for option {key!r}: {err}") from err
    return _task_class(name)(seed=int(seed), **kwargs)


__all__ = [
    "TASKS",
    "AddingTask",
    "AdditionTask",
    "Batch",
    "CharLMTask",
    "CopyTask",
    "FrequencyTask",
    "LogicTask",
    "ParityTask",
    "PixelFashionMNISTTask",
    "PixelImageTask",
    "PixelMNISTTask",
    "SortTask",
    "Task",
    "make_task",
    "read_idx",
    "task_options",
]
