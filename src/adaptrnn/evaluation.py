"""Evaluation of a trained model: task metric, computation used, measured inference time, samples."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .bench import timed
from .model import SequenceModel
from .tasks import Batch, Task


@torch.no_grad()
def evaluate_split(
    model: SequenceModel, task: Task, split: str, batch_size: int, device: torch.device, max_batches: int | None = None
) -> dict[str, float]:
    """The task metric and the computation used on a fixed split.

    The recurrent state is carried between batches that continue each other (char-lm).
    Args:
        model: the unwrapped model (not DDP); its train/eval mode is restored afterwards.
        split: "val" or "test"; max_batches: stop after this many batches (None = all).
    Returns:
        value: the task metric; updates_fraction: updates per valid step (Skip: fraction of
        steps updated, ACT: ponder steps per input); updates_per_sequence; flops_per_sequence
        (recurrent stack, as counted by the method) and dense_flops_per_sequence (every step
        dense); sequences: the number evaluated.
    """
    was_training = model.training
    model.eval()
    num = den = updates = valid = flops = dense = 0.0
    sequences = 0
    state = None
    for index, batch in enumerate(task.eval_batches(split, batch_size)):
        if max_batches is not None and index >= max_batches:
            break
        batch = batch.to(device)
        pred, stats, state = model(batch.x, batch.lengths, state if batch.carry_state else None)
        part_num, part_den = task.metric_parts(pred, batch)
        num, den = num + part_num, den + part_den
        steps = valid_steps(batch)
        updates += float(stats.updates.sum())
        valid += steps
        flops += float(stats.flops.sum())
        dense += steps * model.dense_step_macs()
        sequences += batch.x.shape[0]
    model.train(was_training)
    if sequences == 0:
        raise ValueError(f"the {split} split of task {task.name!r} is empty")
    return {
        "value": num / den if den else float("nan"),
        "updates_fraction": updates / valid,
        "updates_per_sequence": updates / sequences,
        "flops_per_sequence": flops / sequences,
        "dense_flops_per_sequence": dense / sequences,
        "sequences": sequences,
    }


def valid_steps(batch: Batch) -> int:
    """Number of valid (unpadded) steps in a batch."""
    if batch.lengths is None:
        return batch.x.shape[0] * batch.x.shape[1]
    return int(batch.lengths.sum())


def solved(task: Task, value: float) -> bool | None:
    """The papers' "solved" criterion where the task has one, else None.

    adding: test MSE at least 100x below the target variance; frequency: accuracy > 99%.
    """
    if task.name == "adding" and hasattr(task, "target_variance"):
        return bool(value <= task.target_variance / 100)
    if task.name == "frequency":
        return bool(value > 0.99)
    return None


@torch.no_grad()
def measure_inference(
    model: SequenceModel, task: Task, device: torch.device, batch_size: int, repeats: int = 5
) -> tuple[float, int]:
    """Median wall time of the eval-mode forward pass over the first test batch.

    Returns (milliseconds per sequence, the batch size measured). One warm-up call first;
    on CUDA the device is synchronised around each call.
    """
    was_training = model.training
    model.eval()
    batch = next(iter(task.eval_batches("test", batch_size))).to(device)
    ms = timed(lambda: model(batch.x, batch.lengths)[0], False, device, repeats, warmup=1)
    model.train(was_training)
    rows = batch.x.shape[0]
    return ms / rows, rows


@torch.no_grad()
def sample_arrays(model: SequenceModel, task: Task, device: torch.device, count: int = 8) -> dict[str, np.ndarray]:
    """Per-step computation on the first ``count`` test sequences, for plots.

    Returns x (inputs as given), updates (N, T), every per-step extra of the method's stats
    (Skip ``update_prob``, SA ``neuron_updates`` (N, T, D), ACT ``ponder``, VC ``scheduler`` ...),
    lengths (N,) for padded tasks, and text (0-d string) of the first sequence when the task
    can ``decode`` its token ids.
    """
    was_training = model.training
    model.eval()
    batch = next(iter(task.eval_batches("test", count))).to(device)
    _, stats, _ = model(batch.x, batch.lengths)
    model.train(was_training)
    arrays = {"x": _numpy(batch.x), "updates": _numpy(stats.updates)}
    arrays.update({name: _numpy(value) for name, value in stats.extras.items()})
    if batch.lengths is not None:
        arrays["lengths"] = _numpy(batch.lengths)
    decode = getattr(task, "decode", None)
    if callable(decode) and task.tokens:
        arrays["text"] = np.array(decode(batch.x[0].cpu()))
    return arrays


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy() if t.is_floating_point() else t.detach().cpu().numpy()


def summary_line(result: dict[str, Any]) -> str:
    """One human line: metric, solved, updates, FLOPs, time."""
    solved_text = {True: " (solved)", False: " (not solved)", None: ""}[result.get("solved")]
    parts = [
        f"{result['split']} {result['metric']} {result['value']:.4g}{solved_text}",
        f"{result['updates_fraction']:.2f} ponder steps per input"
        if result["model"].startswith("act-")
        else f"updates {100 * result['updates_fraction']:.1f}% of steps",
        f"{result['flops_per_sequence']:.3g} FLOPs/seq (dense {result['dense_flops_per_sequence']:.3g})",
    ]
    if "wall_s" in result:
        parts.append(f"trained {result['train_steps']} steps in {result['wall_s']:.0f} s")
    return " | ".join(parts)
