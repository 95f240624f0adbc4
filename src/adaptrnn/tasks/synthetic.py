"""Synthetic tasks of the Skip RNN / SA-RNN papers: adding, frequency discrimination, copy memory.

All data is sampled online; see :class:`~adaptrnn.tasks.base.GeneratedTask` for how the
training batches and the fixed val/test sets are keyed to the seed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Batch, ClassificationMixin, GeneratedTask, masked_cross_entropy, masked_mean


def _window_start(frac: float, length: int) -> int:
    """First index ``i`` with ``i >= frac * length`` (tolerant of float noise like 0.1 * 30)."""
    return math.ceil(frac * length - 1e-9)


class AddingTask(GeneratedTask):
    """Adding problem (Hochreiter & Schmidhuber; Skip RNN Table 1).

    x: (B, T, 2) float, channel 0 = value ~ U[value_low, value_high], channel 1 = marker.
    Exactly two markers are 1: the first at an index ``i < first_marker_frac * T``, the second
    at an index ``i >= second_marker_start_frac * T``.
    y: (B, 1) float, the sum of the two marked values.
    pred: (B, 1).  Loss: plain MSE (the official code's ``l2_loss / batch`` is half of it).
    Metric ``mse``: (sum of squared errors, number of examples).  "Solved" means
    ``mse <= target_variance / 100``.
    """

    name = "adding"
    input_size = 2
    num_outputs = 1
    per_step = False
    metric_name = "mse"
    higher_is_better = False

    def __init__(
        self,
        seed: int = 0,
        length: int = 50,
        value_low: float = -0.5,
        value_high: float = 0.5,
        first_marker_frac: float = 0.1,
        second_marker_start_frac: float = 0.5,
        val_size: int = 1000,
        test_size: int = 10000,
    ) -> None:
        super().__init__(seed, val_size, test_size)
        if not value_low < value_high:
            raise ValueError("value_low must be < value_high")
        self.length = length
        self.value_low, self.value_high = value_low, value_high
        self.first_end = max(1, _window_start(first_marker_frac, length))  # first marker in [0, first_end)
        self.second_start = _window_start(second_marker_start_frac, length)  # second in [second_start, T)
        if not (0 < self.first_end <= self.second_start < length):
            raise ValueError(
                f"adding: length={length} with first_marker_frac={first_marker_frac} and "
                f"second_marker_start_frac={second_marker_start_frac} leaves no valid marker positions"
            )

    @property
    def target_variance(self) -> float:
        """Variance of the target: the sum of two independent uniform values."""
        return 2.0 * (self.value_high - self.value_low) ** 2 / 12.0

    def _sample(self, g: torch.Generator, n: int, split: str = "train") -> Batch:
        T = self.length
        values = torch.rand(n, T, generator=g) * (self.value_high - self.value_low) + self.value_low
        first = torch.randint(0, self.first_end, (n,), generator=g)
        second = torch.randint(self.second_start, T, (n,), generator=g)
        markers = torch.zeros(n, T)
        rows = torch.arange(n)
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        y = (values[rows, first] + values[rows, second]).unsqueeze(1)  # (B, 1)
        return Batch(torch.stack([values, markers], dim=2), y)

    def loss(self, pred: Tensor, batch: Batch) -> Tensor:
        return F.mse_loss(pred, batch.y)

    def metric_parts(self, pred: Tensor, batch: Batch) -> tuple[float, float]:
        return float(((pred.detach() - batch.y) ** 2).sum()), float(batch.y.numel())


class FrequencyTask(ClassificationMixin, GeneratedTask):
    """Frequency discrimination (Phased LSTM; Skip RNN Table 4).

    A sine wave ``sin(2*pi*(t + shift) / period)`` observed for ``duration_ms`` at
    ``t = 0, dt, 2*dt, ...`` with ``dt = sampling_period_ms`` (T = duration / dt: 100 or 200).
    Class 1: period ~ U[target_low_ms, target_high_ms]; class 0: period uniform on
    ``[period_low_ms, period_high_ms]`` minus the target range.  shift ~ U[0, period).
    Each batch is balanced (labels alternate, then shuffled).
    x: (B, T, 1) float; y: (B,) int64; pred: (B, 2) from the last step.

    Note: periods below ``2 * dt`` alias (at dt = 1 ms a period in [1.2, 1.25] ms is
    indistinguishable from one in [5, 6] ms); this is inherent to the published setup and affects
    about 0.05% of class-0 examples.
    """

    name = "frequency"
    input_size = 1
    num_outputs = 2
    per_step = False
    metric_name = "accuracy"
    higher_is_better = True

    def __init__(
        self,
        seed: int = 0,
        sampling_period_ms: float = 1.0,
        duration_ms: float = 100.0,
        target_low_ms: float = 5.0,
        target_high_ms: float = 6.0,
        period_low_ms: float = 1.0,
        period_high_ms: float = 100.0,
        val_size: int = 1000,
        test_size: int = 10000,
    ) -> None:
        super().__init__(seed, val_size, test_size)
        if not (0 < period_low_ms <= target_low_ms < target_high_ms <= period_high_ms):
            raise ValueError("frequency: need 0 < period_low_ms <= target_low_ms < target_high_ms <= period_high_ms")
        if sampling_period_ms <= 0:
            raise ValueError("frequency: sampling_period_ms must be > 0")
        self.dt = sampling_period_ms
        self.length = int(round(duration_ms / sampling_period_ms))
        if self.length < 2:
            raise ValueError("frequency: duration_ms / sampling_period_ms must give at least 2 steps")
        self.target = (target_low_ms, target_high_ms)
        self.period_range = (period_low_ms, period_high_ms)

    def _periods(self, g: torch.Generator, labels: Tensor) -> Tensor:
        """Period in ms per example (n,), inside the target range where ``labels`` is 1."""
        (lo, hi), (tlo, thi) = self.period_range, self.target
        u = torch.rand(labels.shape[0], generator=g, dtype=torch.float64)
        inside = tlo + u * (thi - tlo)
        below = tlo - lo  # length of [lo, tlo); the outside set is [lo, tlo) + (thi, hi]
        v = u * (below + hi - thi)
        outside = torch.where(v < below, lo + v, thi + (v - below))
        return torch.where(labels.bool(), inside, outside)

    def _sample(self, g: torch.Generator, n: int, split: str = "train") -> Batch:
        labels = (torch.arange(n) % 2)[torch.randperm(n, generator=g)]
        period = self._periods(g, labels)  # (n,) ms
        shift = torch.rand(n, generator=g, dtype=torch.float64) * period
        t = torch.arange(self.length, dtype=torch.float64) * self.dt  # (T,)
        wave = torch.sin(2 * math.pi * (t[None, :] + shift[:, None]) / period[:, None])  # (B, T)
        return Batch(wave.float().unsqueeze(2), labels)


class CopyTask(GeneratedTask):
    """Copy memory (Hochreiter & Schmidhuber; Arjovsky et al.).

    Token ids: 0 = blank, 1..num_symbols = symbols, num_symbols + 1 = go marker.
    Input (T = 2 * copy_length + delay): ``copy_length`` random symbols, then ``delay`` steps
    of blanks whose last one is the go marker, then ``copy_length`` blanks during which the
    network must reproduce the symbols in order.
    x: (B, T) int64; y: (B, T) int64 = symbol - 1 (in 0..num_symbols-1) on the output
    positions, 0 elsewhere; mask: (B, T) True on the last ``copy_length`` steps.
    pred: (B, T, num_symbols); per-step CE averaged over the masked positions.
    Metric ``accuracy``: correct masked positions / masked positions.
    """

    name = "copy"
    tokens = True
    per_step = True
    metric_name = "accuracy"
    higher_is_better = True

    def __init__(
        self,
        seed: int = 0,
        num_symbols: int = 8,
        copy_length: int = 10,
        delay: int = 100,
        val_size: int = 1000,
        test_size: int = 10000,
    ) -> None:
        super().__init__(seed, val_size, test_size)
        if num_symbols < 1 or copy_length < 1 or delay < 1:
            raise ValueError("copy: num_symbols, copy_length and delay must be >= 1")
        self.num_symbols, self.copy_length, self.delay = num_symbols, copy_length, delay
        self.input_size = num_symbols + 2
        self.num_outputs = num_symbols
        self.length = 2 * copy_length + delay

    def _sample(self, g: torch.Generator, n: int, split: str = "train") -> Batch:
        L, T = self.copy_length, self.length
        symbols = torch.randint(1, self.num_symbols + 1, (n, L), generator=g)
        x = torch.zeros(n, T, dtype=torch.long)
        x[:, :L] = symbols
        x[:, L + self.delay - 1] = self.num_symbols + 1
        y = torch.zeros(n, T, dtype=torch.long)
        y[:, T - L :] = symbols - 1
        mask = torch.zeros(n, T, dtype=torch.bool)
        mask[:, T - L :] = True
        return Batch(x, y, mask=mask)

    def loss(self, pred: Tensor, batch: Batch) -> Tensor:
        return masked_mean(masked_cross_entropy(pred, batch.y, batch.mask), batch.mask)

    def metric_parts(self, pred: Tensor, batch: Batch) -> tuple[float, float]:
        correct = (pred.detach().argmax(dim=-1) == batch.y) & batch.mask
        return float(correct.sum()), float(batch.mask.sum())
