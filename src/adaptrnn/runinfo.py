"""What a run records beside its metric: where the reported value comes from, whether training
collapsed, per-group gradient norms, and the code and machine it ran on.

Collapse rule (:func:`detect_collapse`), on the run's validation values v_1..v_n oriented so
that lower is better (accuracy negated): with best b = min, worst w = max and final f = v_n,
the run *collapsed* when

    f − b > ½·(w − b)   and   w − b ≥ ¼·max(|w|, |b|)

— the last validation gave back more than half of the range the run covered, and that range is
more than noise (at least a quarter of the metric's scale: a run that stays at chance, its
validation wandering by a few points, is not flagged).
A NaN final validation after a finite one counts as a collapse. Runs whose table row shows the
best checkpoint must say so: result.json's ``checkpoint`` / ``checkpoint_step`` name it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import platform
import re
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .report import metric_lines

COLLAPSE_GIVE_BACK = 0.5  # fraction of the covered range the final validation may give back
COLLAPSE_MIN_RANGE = 0.25  # the covered range, relative to the metric's scale, that counts as learning
GROUPS = ("cell", "gate", "head")
# The recurrent stack's parameters that belong to the plain cells (torch.nn names), ACT's flag
# column of the input weights and the learned initial state; every other one is the method's gate.
_CELL_PARAM = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh)_l\d+$|^flag_weight$|^initial_cell$")


def parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters of a ``SequenceModel`` by role.

    cell: the recurrent cells' weights (``weight_ih_l0`` ...), ACT's ``flag_weight`` and Skip
    RNN's learned ``initial_cell``; gate: the method's decision parameters (Skip ``update_*``,
    ACT ``halting_*``, VC ``scheduler_*``, SA ``update_*``); head: the output layer and the
    embedding, if any. A dense model's gate group is empty.
    """
    groups: dict[str, list[nn.Parameter]] = {g: [] for g in GROUPS}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("rnn."):
            groups["cell" if _CELL_PARAM.match(name[4:]) else "gate"].append(p)
        else:
            groups["head"].append(p)
    return groups


def group_grad_norms(groups: dict[str, list[nn.Parameter]]) -> dict[str, float]:
    """The L2 norm of each group's gradient (0.0 for an empty group or no gradient), before clipping."""
    norms = {}
    for name, params in groups.items():
        grads = [p.grad for p in params if p.grad is not None]
        norms[name] = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))) if grads else 0.0
    return norms


def detect_collapse(values: Sequence[float | None], higher_is_better: bool) -> bool:
    """The collapse rule of this module's docstring over a run's validation values, in step order."""
    oriented = [(-v if higher_is_better else v) for v in values if v is not None]
    finite = [v for v in oriented if math.isfinite(v)]
    if len(oriented) < 2 or not finite:
        return False
    final = oriented[-1]
    if not math.isfinite(final):
        return True
    best, worst = min(finite), max(finite)
    covered = worst - best
    if covered < COLLAPSE_MIN_RANGE * max(abs(worst), abs(best)):
        return False
    return final - best > COLLAPSE_GIVE_BACK * covered


def validation_history(lines: Iterable[dict[str, Any]]) -> list[tuple[int, float]]:
    """(step, validation value) of every ``metrics.jsonl`` line that holds a validation (NaN kept)."""
    return [(int(line["step"]), float(line["val_metric"])) for line in lines if line.get("val_metric") is not None]


def collapse_record(metrics_path: str | Path, higher_is_better: bool) -> dict[str, Any]:
    """``final_val_value``, ``final_val_step`` and ``collapsed`` from a run's metrics.jsonl."""
    metrics_path = Path(metrics_path)
    history = validation_history(metric_lines(metrics_path) if metrics_path.is_file() else [])
    if not history:
        return {"final_val_value": None, "final_val_step": None, "collapsed": False}
    step, value = history[-1]
    return {
        "final_val_value": None if math.isnan(value) else value,
        "final_val_step": step,
        "collapsed": detect_collapse([v for _, v in history], higher_is_better),
    }


@functools.cache
def code_version() -> tuple[str | None, bool | None]:
    """(git commit, whether tracked files differ from it) of the source tree this package runs
    from; (None, None) when it is not a git checkout or git is missing."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return (commit or None), bool(status.strip())


@functools.cache
def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``), or None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip() or None
    except OSError:
        pass
    return platform.processor() or None


def environment() -> dict[str, Any]:
    """code_commit, code_dirty, torch_version, python_version, cpu_model, threads (torch's intra-op pool)."""
    commit, dirty = code_version()
    return {
        "code_commit": commit,
        "code_dirty": dirty,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "cpu_model": cpu_model(),
        "threads": torch.get_num_threads(),
    }


def run_record(
    config: Any, checkpoint: str, checkpoint_step: int | None, metrics_path: str | Path, higher_is_better: bool
) -> dict[str, Any]:
    """The provenance part of result.json: which checkpoint was tested, the collapse flag, the
    environment and every setting (``config``, the resolved TrainConfig)."""
    return {
        "checkpoint": checkpoint,
        "checkpoint_step": checkpoint_step,
        **collapse_record(metrics_path, higher_is_better),
        **environment(),
        "config": dataclasses.asdict(config),
    }
