"""The task interface every task family implements.

A task is deterministic given its seed: the training batch at step ``k`` is a pure
function of ``(seed, k)``, so a resumed run sees exactly the batches an uninterrupted
run would have seen, and the validation/test sets are fixed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Batch:
    """One batch, always batch-first.

    x: (B, T, I) float features, or (B, T) int64 token ids when ``task.tokens``.
    y: targets; shape and dtype are the task's business (its ``loss``/``metric_parts`` read them).
    lengths: (B,) int64 valid lengths, or None when every sequence has length T.
    mask: (B, T) bool, positions that carry a target (per-step tasks), or None.
    carry_state: True when this batch continues the previous batch's sequences
        (truncated BPTT for language modelling), so the trainer keeps the recurrent state.
    """

    x: Tensor
    y: Tensor
    lengths: Tensor | None = None
    mask: Tensor | None = None
    carry_state: bool = False

    def to(self, device: torch.device | str) -> Batch:
        def move(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return Batch(move(self.x), move(self.y), move(self.lengths), move(self.mask), self.carry_state)


class Task:
    """Base class. Subclasses set the attributes and implement the four methods.

    Attributes:
        name: the CLI name (``adding``, ``parity`` ...).
        input_size: features per step, or the vocabulary size when ``tokens`` is True.
        tokens: inputs are token ids (the model puts an embedding in front).
        num_outputs: width of the model's output head.
        per_step: the head is applied at every step (else at the last valid step).
        metric_name: e.g. ``"mse"``, ``"accuracy"``, ``"sequence_error"``, ``"bpc"``.
        higher_is_better: direction of the metric (for "best" checkpoints).
    """

    name: str = ""
    input_size: int = 0
    tokens: bool = False
    num_outputs: int = 0
    per_step: bool = False
    metric_name: str = ""
    higher_is_better: bool = False

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def train_batch(self, step: int, batch_size: int) -> Batch:
        """The training batch of step ``step`` (a pure function of seed and step)."""
        raise NotImplementedError

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """The fixed ``"val"`` or ``"test"`` set, in batches."""
        raise NotImplementedError

    def check_batch_size(self, batch_size: int) -> None:
        """Raise ValueError if training batches of ``batch_size`` cannot be drawn (e.g. a corpus
        too small), so that the trainer says so before it starts, not at its first step."""

    def loss(self, pred: Tensor, batch: Batch) -> Tensor:
        """Scalar training loss. ``pred``: (B, num_outputs), or (B, T, num_outputs) if per_step."""
        raise NotImplementedError

    def metric_parts(self, pred: Tensor, batch: Batch) -> tuple[float, float]:
        """(numerator, denominator) summed over batches; the metric is their ratio."""
        raise NotImplementedError

    def generator(self, *key: int) -> torch.Generator:
        """A CPU generator seeded from the task seed and ``key`` (e.g. a step or split id)."""
        g = torch.Generator()
        g.manual_seed(hash((self.seed, *key)) & 0x7FFF_FFFF_FFFF_FFFF)
        return g


# ---------------------------------------------------------------------------------------------
# Small shared helpers for the task implementations (not part of the trainer-facing interface).

SPLIT_KEYS = {"val": 1, "test": 2}


def split_key(split: str) -> int:
    """Generator key of an evaluation split; a clear error for anything but val/test."""
    if split not in SPLIT_KEYS:
        raise ValueError(f"unknown split {split!r}; expected 'val' or 'test'")
    return SPLIT_KEYS[split]


def masked_cross_entropy(logits: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    """Per-position CE in nats, zero where ``mask`` is False.

    logits: (B, T, C); target: (B, T) int64; mask: (B, T) bool or None.  Returns (B, T).
    """
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")  # (B, T)
    return ce if mask is None else ce * mask


def masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``values`` (B, T) over the positions where ``mask`` (B, T) is True."""
    if mask is None:
        return values.mean()
    return (values * mask).sum() / mask.sum().clamp_min(1)


def sequence_error_parts(wrong: Tensor, mask: Tensor | None) -> tuple[float, float]:
    """(sequences with any mistake, sequences with at least one target) from ``wrong`` (B, T) bool."""
    if mask is None:
        return float(wrong.any(dim=1).sum()), float(wrong.shape[0])
    wrong = wrong & mask
    return float(wrong.any(dim=1).sum()), float(mask.any(dim=1).sum())


class GeneratedTask(Task):
    """A task whose data is sampled online: ``_sample(g, n)`` draws ``n`` examples.

    Training batch ``k`` comes from ``generator(0, k)``; the val/test sets are drawn once from
    ``generator(1)`` / ``generator(2)`` with a size independent of the evaluation batch size, so
    the sets do not change with ``batch_size``.
    """

    def __init__(self, seed: int = 0, val_size: int = 1000, test_size: int = 10000) -> None:
        super().__init__(seed)
        if val_size < 1 or test_size < 1:
            raise ValueError("val_size and test_size must be >= 1")
        self.eval_sizes = {"val": val_size, "test": test_size}
        self._eval_cache: dict[str, Batch] = {}

    def _sample(self, g: torch.Generator, n: int, split: str = "train") -> Batch:
        raise NotImplementedError

    def train_batch(self, step: int, batch_size: int) -> Batch:
        return self._sample(self.generator(0, step), batch_size)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        key = split_key(split)
        if split not in self._eval_cache:
            self._eval_cache[split] = self._sample(self.generator(key), self.eval_sizes[split], split)
        full = self._eval_cache[split]
        for start in range(0, full.x.shape[0], batch_size):
            yield slice_batch(full, start, start + batch_size)


def slice_batch(batch: Batch, start: int, stop: int) -> Batch:
    """Rows ``start:stop`` of every tensor in ``batch``."""

    def cut(t: Tensor | None) -> Tensor | None:
        return None if t is None else t[start:stop]

    return Batch(batch.x[start:stop], batch.y[start:stop], cut(batch.lengths), cut(batch.mask), batch.carry_state)


class ClassificationMixin:
    """CE loss and accuracy for one prediction per sequence: pred (B, C), y (B,) int64."""

    def loss(self, pred: Tensor, batch: Batch) -> Tensor:
        return torch.nn.functional.cross_entropy(pred, batch.y)

    def metric_parts(self, pred: Tensor, batch: Batch) -> tuple[float, float]:
        return float((pred.detach().argmax(dim=-1) == batch.y).sum()), float(batch.y.numel())
