"""The synthetic tasks of Adaptive Computation Time (Graves 2016, Section 3): parity, logic,
addition and sort.

All four report the **sequence error rate** (fraction of sequences with any wrong target);
variable-length tasks pad to a fixed T, set ``Batch.lengths`` and mark target positions in
``Batch.mask``.  Padding positions have zero inputs and zero targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Batch, GeneratedTask, masked_cross_entropy, masked_mean, sequence_error_parts

PARITY_LAYOUTS = ("random", "prefix")


class ParityTask(GeneratedTask):
    """Parity of a signed vector, one input step (all computation is pondering).

    x: (B, 1, size) float; ``k ~ U{min_nonzero..max_nonzero}`` entries are set to +1 or -1
    (fair coin each), the rest are 0. ``layout`` places them: "random" (default) at uniformly
    random positions, as the paper ("randomly chosen elements"); "prefix" in the first k
    positions (``x[:k]``), as Fojo et al.'s code and other public ACT code, an easier task.
    For one seed both layouts draw the same k and the same random stream.
    y: (B, 1) float, 1.0 if the number of +1 entries is odd.
    pred: (B, 1), one logit; loss: binary cross-entropy with logits.
    ``max_nonzero=0`` means ``size``.  ``test_min_nonzero`` / ``test_max_nonzero`` change the
    range of the test split only, for the PonderNet extrapolation setup; 0 means as in training,
    except that ``test_max_nonzero`` defaults to ``size`` when ``test_min_nonzero`` is given.
    """

    name = "parity"
    num_outputs = 1
    per_step = False
    metric_name = "sequence_error"
    higher_is_better = False

    def __init__(
        self,
        seed: int = 0,
        size: int = 64,
        min_nonzero: int = 1,
        max_nonzero: int = 0,
        test_min_nonzero: int = 0,
        test_max_nonzero: int = 0,
        layout: str = "random",
        val_size: int = 1000,
        test_size: int = 10000,
    ) -> None:
        super().__init__(seed, val_size, test_size)
        if layout not in PARITY_LAYOUTS:
            raise ValueError(f"parity: layout must be one of {', '.join(PARITY_LAYOUTS)}, got {layout!r}")
        self.layout = layout
        self.size = self.input_size = size
        self.range = (min_nonzero, max_nonzero or size)
        # a test range given only by its minimum extends to `size` (train 1..48, test 49..96)
        test_max = test_max_nonzero or (size if test_min_nonzero else self.range[1])
        self.test_range = (test_min_nonzero or self.range[0], test_max)
        for lo, hi in (self.range, self.test_range):
            if not 1 <= lo <= hi <= size:
                raise ValueError(f"parity: non-zero count range [{lo}, {hi}] must lie in [1, size={size}]")

    def _sample(self, g: torch.Generator, n: int, split: str = "train") -> Batch:
        lo, hi = self.test_range if split == "test" else self.range
        count = torch.randint(lo, hi + 1, (n, 1), generator=g)
        # rank of each position in a random permutation: the `count` lowest ranks are non-zero
        rank = torch.rand(n, self.size, generator=g).argsort(dim=1).argsort(dim=1)
        if self.layout == "prefix":  # drawn all the same, so the signs below come from the same stream
            rank = torch.arange(self.size).expand(n, -1)
        sign = torch.randint(0, 2, (n, self.size), generator=g) * 2 - 1
        x = torch.where(rank < count, sign, 0).float()  # (B, size)
        y = ((x == 1).sum(dim=1, keepdim=True) % 2).float()  # (B, 1)
        return Batch(x.unsqueeze(1), y)

    def loss(self, pred: Tensor, batch: Batch) -> Tensor:
        return F.binary_cross_entropy_with_logits(pred, batch.y)

    def metric_parts(self, pred: Tensor, batch: Batch) -> tuple[float, float]:
        return sequence_error_parts((pred.detach() > 0) != (batch.y > 0.5), None)


# Truth tables in the paper's order (Table 1), outputs for (p, q) = (1,1), (1,0), (0,1), (0,0).
LOGIC_GATES = ("NOR", "Xq", "ABJ", "XOR", "NAND", "AND", "XNOR", "if/then", "then/if", "OR")
_TRUTH = torch.tensor(
    [
        [0, 0, 0, 1],  # NOR
        [0, 0, 1, 0],  # Xq: not p and q
        [0, 1, 0, 0],  # ABJ: p and not q
        [0, 1, 1, 0],  # XOR
        [0, 1, 1, 1],  # NAND
        [1, 0, 0, 0],  # AND
        [1, 0, 0, 1],  # XNOR
        [1, 0, 1, 1],  # if/then: p -> q
        [1, 1, 0, 1],  # then/if: q -> p
        [1, 1, 1, 0],  # OR
    ]
)


class LogicTask(GeneratedTask):
    """Sequences of chained binary logic gates.

    x: (B, max_len, 2 + 10 * max_gates) float.  Element 0 is b_0, element 1 is b_1, then
    ``max_gates`` chunks of 10: chunk i (0-based) is the one-hot index (into
    :data:`LOGIC_GATES`) of gate T_{i+1}; chunks after the first G (G ~ U{1..max_gates}, drawn
    per vector) are zero.  The vector's target is b_{G+1} with
    ``b_{i+1} = T_i(b_i, b_{i-1})``, i.e. p = b_i, q = b_{i-1} in the truth tables.
    b_1 is always random; b_0 is random in the first vector; in later vectors b_0 is the
    previous vector's target and is given as 0 in the input.
    Sequence length L ~ U{min_len..max_len}; lengths: (B,) = L.
    y: (B, max_len) float bits; mask: (B, max_len) True for t < L.
    pred: (B, max_len, 1), one logit per step; loss: BCE averaged over the masked positions.
    """

    name = "logic"
    num_outputs = 1
    per_step = True
    metric_name = "sequence_error"
    higher_is_better = False

    def __init__(
        self,
        seed: int = 0,
        min_len: int = 1,
        max_len: int = 10,
        max_gates: int = 10,
        val_size: int = 1000,
        test_size: int = 10000,
    ) -> None:
        super().__init__(seed, val_size, test_size)
        if not 1 <= min_len <= max_len or max_gates < 1:
            raise ValueError("logic: need 1 <= min_len <= max_len and max_gates >= 1")
        self.min_len, self.max_len, self.max_gates = min_len, max_len, max_gates
        self.input_size = 2 + 10 * max_gates

    def _sample(self, g: torch.Generator, n: int, split: str = "train") -> Batch:
        T, G = self.max_len, self.max_gates
        lengths = torch.randint(self.min_len, T + 1, (n,), generator=g)
        num_gates = torch.randint(1, G + 1, (n, T, 1), generator=g)
        gates = torch.randint(0, len(LOGIC_GATES), (n, T, G), generator=g)
        active = torch.arange(G) < num_gates  # (B, T, G)
        b1 = torch.randint(0, 2, (n, T), generator=g)
        b0 = torch.randint(0, 2, (n,), generator=g)
        y = torch.zeros(n, T, dtype=torch.long)
        for t in range(T):
            prev, cur = (b0 if t == 0 else y[:, t - 1]), b1[:, t]
            for i in range(G):
                out = _TRUTH[gates[:, t, i], 2 * (1 - cur) + (1 - prev)]
                on = active[:, t, i]
                prev, cur = torch.where(on, cur, prev), torch.where(on, out, cur)
            y[:, t] = cur
        mask = torch.arange(T) < lengths[:, None]  # (B, T)
        onehot = F.one_hot(gates, 10) * active[..., None]  # (B, T, G, 10)
        first_bit = torch.zeros(n, T, dtype=torch.long)
        first_bit[:, 0] = b0
        x = torch.cat([first_bit[..., None], b1[..., None], onehot.reshape(n, T, 10 * G)], dim=2)
        x = x * mask[..., None]
        return Batch(x.float(), (y * mask).float(), lengths=lengths, mask=mask)

    def loss(self, pred: Tensor, batch: Batch) -> Tensor:
        bce = F.binary_cross_entropy_with_logits(pred.squeeze(-1), batch.y, reduction="none")
        return masked_mean(bce, batch.mask)

    def metric_parts(self, pred: Tensor, batch: Batch) -> tuple[float, float]:
        return sequence_error_parts((pred.detach().squeeze(-1) > 0) != (batch.y > 0.5), batch.mask)


class AdditionTask(GeneratedTask):
    """Running sum of decimal numbers.

    x: (B, max_len, 10 * max_digits) float.  Each vector is a number of D digits
    (D ~ U{1..max_digits}, each digit ~ U{0..9}, leading zeros allowed), **least significant
    digit first**: chunk j (elements 10j..10j+9) is the one-hot of the 10^j digit; chunks
    j >= D are zero.  Sequence length L ~ U{min_len..max_len}.
    y: (B, max_len, out_digits) int64 (out_digits = 6 by default), the cumulative sum up to
    and including step t, least significant digit first: entry j is the 10^j digit for
    j < number of digits of the sum (0 has one digit) and class 10 ("number complete") after.
    mask: (B, max_len) True for 1 <= t < L (no target for the first vector).
    pred: (B, max_len, 11 * out_digits) = num_outputs, read as (B, T, out_digits, 11);
    loss: joint CE (sum over the digits) averaged over the masked steps.
    Sequences with L = 1 have no target and are left out of the sequence-error denominator.
    """

    name = "addition"
    per_step = True
    metric_name = "sequence_error"
    higher_is_better = False

    def __init__(
        self,
        seed: int = 0,
        min_len: int = 1,
        max_len: int = 5,
        max_digits: int = 5,
        val_size: int = 1000,
        test_size: int = 10000,
    ) -> None:
        super().__init__(seed, val_size, test_size)
        if not 1 <= min_len <= max_len or max_digits < 1:
            raise ValueError("addition: need 1 <= min_len <= max_len and max_digits >= 1")
        self.min_len, self.max_len, self.max_digits = min_len, max_len, max_digits
        self.input_size = 10 * max_digits
        self.out_digits = len(str(max_len * (10**max_digits - 1)))
        self.num_outputs = 11 * self.out_digits

    def _sample(self, g: torch.Generator, n: int, split: str = "train") -> Batch:
        T, D = self.max_len, self.max_digits
        lengths = torch.randint(self.min_len, T + 1, (n,), generator=g)
        num_digits = torch.randint(1, D + 1, (n, T, 1), generator=g)
        digits = torch.randint(0, 10, (n, T, D), generator=g)
        valid = torch.arange(T)[None, :] < lengths[:, None]  # (B, T)
        active = (torch.arange(D) < num_digits) & valid[..., None]  # (B, T, D)
        x = (F.one_hot(digits, 10) * active[..., None]).reshape(n, T, 10 * D)
        values = (digits * active * 10 ** torch.arange(D)).sum(dim=2)  # (B, T)
        y = self._encode(values.cumsum(dim=1))
        mask = valid & (torch.arange(T) >= 1)
        return Batch(x.float(), y * mask[..., None], lengths=lengths, mask=mask)

    def _encode(self, total: Tensor) -> Tensor:
        """Digits of ``total`` (B, T), LSB first, class 10 past the end -> (B, T, out_digits)."""
        powers = 10 ** torch.arange(self.out_digits)  # (O,)
        ndig = 1 + (total[..., None] >= powers[1:]).sum(dim=-1, keepdim=True)  # (B, T, 1)
        digit = (total[..., None] // powers) % 10
        return torch.where(torch.arange(self.out_digits) < ndig, digit, 10)

    def _logits(self, pred: Tensor) -> Tensor:
        return pred.reshape(*pred.shape[:2], self.out_digits, 11)  # (B, T, O, 11)

    def loss(self, pred: Tensor, batch: Batch) -> Tensor:
        logits = self._logits(pred)
        ce = F.cross_entropy(logits.flatten(0, 2), batch.y.flatten(), reduction="none")
        return masked_mean(ce.view(batch.y.shape).sum(dim=-1), batch.mask)

    def metric_parts(self, pred: Tensor, batch: Batch) -> tuple[float, float]:
        wrong = (self._logits(pred.detach()).argmax(dim=-1) != batch.y).any(dim=-1)  # (B, T)
        return sequence_error_parts(wrong, batch.mask)


class SortTask(GeneratedTask):
    """Sort N ~ U{min_len..max_len} numbers drawn from N(0, 1).

    x: (B, 2 * max_len, 2) float.  Steps 0..N-1 carry (value, end flag) with the flag 1 only
    at step N-1; steps N..2N-1 (and the padding) are zero.
    y: (B, 2 * max_len) int64: at step N + i the index (0-based input position) of the
    i-th smallest value (ascending order); 0 elsewhere.
    mask: (B, 2 * max_len) True on steps N..2N-1; lengths: (B,) = 2N.
    pred: (B, 2 * max_len, max_len); loss: CE averaged over the masked steps.
    """

    name = "sort"
    input_size = 2
    per_step = True
    metric_name = "sequence_error"
    higher_is_better = False

    def __init__(
        self,
        seed: int = 0,
        min_len: int = 2,
        max_len: int = 15,
        val_size: int = 1000,
        test_size: int = 10000,
    ) -> None:
        super().__init__(seed, val_size, test_size)
        if not 1 <= min_len <= max_len:
            raise ValueError("sort: need 1 <= min_len <= max_len")
        self.min_len, self.max_len = min_len, max_len
        self.num_outputs = max_len

    def _sample(self, g: torch.Generator, n: int, split: str = "train") -> Batch:
        M = self.max_len
        count = torch.randint(self.min_len, M + 1, (n, 1), generator=g)
        values = torch.randn(n, M, generator=g)
        valid = torch.arange(M) < count  # (B, M)
        # padding sorts last, so the first `count` entries of `order` index the real numbers
        order = torch.where(valid, values, torch.inf).argsort(dim=1, stable=True)
        steps = torch.arange(2 * M)
        out_pos = steps - count  # (B, 2M): output index i at step count + i
        mask = (out_pos >= 0) & (out_pos < count)
        y = order.gather(1, out_pos.clamp(0, M - 1)) * mask
        x = torch.zeros(n, 2 * M, 2)
        x[:, :M, 0] = values * valid
        x[..., 1] = (steps == count - 1).float()
        return Batch(x, y, lengths=2 * count.squeeze(1), mask=mask)

    def loss(self, pred: Tensor, batch: Batch) -> Tensor:
        return masked_mean(masked_cross_entropy(pred, batch.y, batch.mask), batch.mask)

    def metric_parts(self, pred: Tensor, batch: Batch) -> tuple[float, float]:
        return sequence_error_parts(pred.detach().argmax(dim=-1) != batch.y, batch.mask)
