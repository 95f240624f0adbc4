"""Skip RNN inference that jumps ahead: skipped steps cost nothing, not even their input.

After an update at step t with increment Δũ_t the next update is known (eq. 6): the
accumulated probability grows as ``ũ_{t+k} = min(k·Δũ_t, 1)`` while skipping (eq. 5), so the
next update is ``t + 1 + N_skip`` with ``N_skip = floor(threshold / Δũ_t)``. Each sequence gets
its own next-update time. A batch runs in rounds: each round takes every sequence's next
update, each at its own step, as one batched step (a row's update needs only its own state and
input), so a call costs about f·T rounds, and skipped steps are never visited. Where every row
is due at the same step, a speculative window (``speculate``) runs the next steps for every
row at once and keeps those at which every row stays due (Δũ > threshold).
Skipped steps repeat the last output; ũ for the statistics is filled in afterwards from the
closed form above.

The results equal ``SkipRNN``'s reference loop in eval mode to float tolerance. The one
difference is in exact arithmetic: the reference accumulates ũ by repeated float additions and
this path multiplies, so a decision can differ only when k·Δũ lies within rounding of the threshold.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ..layer import RecurrentState, Stats, valid_float
from . import native, native_batch
from .aten_step import AtenStep
from .speculate import COUNTS, LSTM_WINDOW_MAX_MACS, LstmWindow, StepThreads, Window, flat, step_macs, stepwise, window
from .weights import stack_step, transposed

Features = Callable[[Tensor, Tensor], Tensor]  # (steps (n,), rows (n,)) -> (n, I)


def skip_counts(delta: np.ndarray, threshold: float) -> np.ndarray:
    """N_skip of eq. 6 after an update with increment Δũ (float64, inf = never again).

    ``floor(threshold / Δũ)`` is the smallest n ≥ 0 with ``(n+1)·Δũ > threshold``; with a
    threshold ≥ 1 the capped probability never exceeds it, so there is no next update.
    """
    with np.errstate(divide="ignore"):
        n = np.floor(threshold / delta)
    return np.where((delta > 0) & (threshold < 1), n, np.inf)


def first_update(update_prob: np.ndarray, delta: np.ndarray, threshold: float) -> np.ndarray:
    """Steps until the first update, from the state's ũ and Δũ: 0 if ũ > threshold, else the
    smallest k ≥ 1 with ``ũ + k·Δũ > threshold`` (inf if never). float64 (B,)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.floor((threshold - update_prob) / delta) + 1
    k = np.where((delta > 0) & (threshold < 1), k, np.inf)
    return np.where(update_prob > threshold, 0.0, k)


def skip_inference(
    module,
    inputs: Tensor | Features,
    seq_len: int | None = None,
    batch: int | None = None,
    state: RecurrentState | None = None,
    lengths: Tensor | None = None,
) -> tuple[Tensor, RecurrentState, Stats]:
    """Run a ``SkipRNN`` for inference, computing only the steps that update.

    Args:
        module: a ``SkipRNN`` (its eval-mode behaviour is used: u = 1[ũ > threshold]).
        inputs: the input tensor (in the module's layout, like ``forward``), or a callable
            ``features(steps, rows) -> (n, I)`` that returns the input features of the
            (step, row) pairs requested (two (n,) LongTensors) — only steps that update are
            ever requested, so an expensive encoder runs only where it is needed.
        seq_len, batch: T and B; required with a callable, read from a tensor otherwise.
        state: a ``RecurrentState`` to continue from (None: the module's initial state).
        lengths: optional (B,) valid lengths.
    Returns:
        ``(out, state, stats)`` exactly as ``module(x, state, lengths)`` in eval mode; with a
        callable, ``out`` is time-major (T, B, D) unless the module is ``batch_first``.
    """
    if isinstance(inputs, Tensor):
        x = module._check_input(inputs)
        x = x.transpose(0, 1) if module.batch_first else x
        seq_len, batch = x.shape[:2]
        like = x
    else:
        if seq_len is None or batch is None:
            raise ValueError("seq_len and batch are required when inputs is a callable")
        param = module.update_weight
        like = param.new_empty(0)
        x = None
    valid = module._valid_mask(lengths, seq_len, batch, like.device)
    init = module._check_state(state, batch, like)
    with torch.no_grad():
        out, final, stats = skip_forward(module, inputs if x is None else x, seq_len, batch, init, valid)
    if valid is not None:
        out = out * valid.unsqueeze(-1).to(out.dtype)
    return (out.transpose(0, 1) if module.batch_first else out), final, stats


def skip_forward(
    module, inputs: Tensor | Features, seq_len: int, batch: int, state: RecurrentState, valid: Tensor | None
) -> tuple[Tensor, RecurrentState, Stats]:
    """The jump-ahead loop over time-major inputs (T, B, I) or a ``features`` callable.

    Returns out (T, B, D) (padded steps not yet zeroed), the final state and the stats.
    """
    threshold = float(module.options["threshold"])
    ends = np.full(batch, seq_len) if valid is None else valid.sum(0).cpu().numpy()
    prob = state.extras["update_prob"].double().cpu().numpy()
    delta = state.extras["delta_prob"].double().cpu().numpy()
    next_t = first_update(prob, delta, threshold)  # (B,) float64, inf = no further update
    next_t[next_t >= ends] = np.inf
    if batch == 1:
        log = _run_single(module, inputs, next_t, ends, state.cell.clone(), threshold)
    else:
        out = state.cell.new_empty(seq_len, batch, module.hidden_size)
        log = _run_batch(module, inputs, next_t, ends, state.cell.clone(), threshold, out)
    return _assemble(module, state, seq_len, batch, valid, log)


class UpdateLog:
    """What the loops record: the final cell (L, B, K, D) and, per update event, its step,
    row and Δũ (host lists, turned into tensors once at the end).

    Outputs: while every row's state is at the same step, the batched loop writes them in time
    order into ``out`` (T, B, D), ``out[:filled]`` done. From the first round that steps rows at
    different steps on (the split), each event's new top-layer h is logged in ``hidden``, and the
    outputs from ``filled`` on are assembled at the end from those and the top h at the split.
    """

    def __init__(self, cell: Tensor, out: Tensor | None = None) -> None:
        self.cell = cell
        self.steps: list[np.ndarray] = []
        self.rows: list[np.ndarray] = []
        self.hidden: list[Tensor] = []  # of the events from the split on
        self.deltas: list[np.ndarray] = []
        self.out, self.filled = out, 0
        self.in_order = out is not None  # every row's state at the same step: outputs written in order
        # Events before the split, and the top h there (None: the initial state's).
        self.split_events, self.split_hidden = 0, None

    def add(self, step: int | np.ndarray, rows: np.ndarray, hidden: Tensor | None, deltas: np.ndarray) -> None:
        """Events at ``step`` (one, or one per row): rows (n,), Δũ (n,), and their new top h (n, D)
        unless the outputs are written in time order (``hidden`` None)."""
        self.steps.append(np.full(rows.size, step))
        self.rows.append(rows)
        if hidden is not None:
            self.hidden.append(hidden)
        self.deltas.append(deltas)

    def record(self, steps, rows: np.ndarray, hidden: Tensor, deltas: np.ndarray, start: int, frames: Tensor) -> None:
        """Log update events (``add``). In time order, ``frames`` (k, B, D), the outputs of steps
        ``start`` .. ``start + k - 1``, are written instead of keeping ``hidden``."""
        if self.in_order:
            self.out[start : start + frames.shape[0]] = frames
            self.filled = start + frames.shape[0]
            hidden = None
        self.add(steps, rows, hidden, deltas)

    def hold_until(self, t: int) -> None:
        """In time order: steps [filled, t) repeat the current state (no row updated there)."""
        if self.in_order and t > self.filled:
            self.out[self.filled : t] = self.cell[-1, :, 0]
            self.filled = t

    def split(self, t: int) -> None:
        """Leave time order at step t: outputs from t on come from the log."""
        self.hold_until(t)
        self.split_events, self.split_hidden = sum(r.size for r in self.rows), self.cell[-1, :, 0]
        self.in_order = False


def _run_batch(
    module, inputs, next_t: np.ndarray, ends: np.ndarray, cell: Tensor, threshold: float, out: Tensor
) -> UpdateLog:
    """Rounds of updates: each round steps every row that has an update left at its own next
    update step, in one batched step. A row's k-th update depends only on its own state and
    input, so rows need not be at the same step, and a call makes about f·T rounds (the most
    updates of any row) instead of a step for every time at which some row is due.

    When every row is due at the same step, a speculative window runs from there (``_window``);
    when most rows are due at the earliest step, only those step (rows realign for windows).
    Until the first round across steps, outputs are written in time order into ``out``.
    """
    in_c = native_batch.batch_applies(module, cell)  # the rounds' steps in C, with torch's BLAS
    if in_c and isinstance(inputs, Tensor):  # and the whole loop
        return _run_native(module, inputs, next_t, ends, cell, threshold, out)
    layers, dense = transposed(module), AtenStep(module, range(module.num_layers))
    log = UpdateLog(cell, out)  # log.cell (L, B, K, D): the current state of every row
    batch = cell.shape[1]
    spans, all_end = Window(), int(ends.min())  # every row is valid before all_end
    macs = step_macs(module, batch)
    # The LSTM's windows: whole-sequence with c recovered at small steps, else one-step calls.
    lstm = LstmWindow(module) if dense.parts == 2 and macs < LSTM_WINDOW_MAX_MACS else None
    with StepThreads(macs, cell.device) as threads:
        while (live := np.flatnonzero(next_t < np.inf)).size:
            t = int(next_t[live].min())
            due = live[next_t[live] == t]
            log.hold_until(t)  # in time order, before the state moves on
            length = 0
            # Windows read inputs ahead, so not from a callable (asked only for updating steps);
            # the LSTM's stepwise ones waste nothing, so they need no adaptive length.
            if isinstance(inputs, Tensor) and due.size == batch:
                length = all_end - t if dense.parts == 2 and lstm is None else spans.length(all_end - t)
            if length >= 2:  # every row is due at t: try a dense window from t
                _window(module, (layers, dense, lstm), spans, inputs, log, t, length, next_t, threshold, threads)
            else:
                # Most rows due at the earliest step: step those alone, so that the others can
                # fall back in line with them and a window can follow; else a round of every row.
                rows = due if 2 * due.size > live.size else live
                if log.in_order and rows.size > due.size:
                    log.split(t)
                _round(module, (layers, in_c), inputs, log, rows, next_t, threshold, threads)
            next_t[next_t >= ends] = np.inf
    log.hold_until(out.shape[0])
    return log


def _run_native(module, x: Tensor, next_t: np.ndarray, ends: np.ndarray, cell: Tensor, threshold, out) -> UpdateLog:
    """The rounds of :func:`_run_batch`, whole in C (``native_batch.skip_rounds``): the same policy,
    outputs written in place with each update held until the next, the events logged."""
    COUNTS["native"] += 1
    cell = cell.contiguous()
    steps, rows, deltas = native_batch.skip_rounds(module, x, next_t, ends, threshold, cell, out)
    log = UpdateLog(cell, out)
    log.filled = out.shape[0]
    log.steps, log.rows, log.deltas = [steps], [rows], [deltas]
    return log


def _round(module, kernels: tuple, inputs, log: UpdateLog, rows: np.ndarray, next_t, threshold: float, threads) -> None:
    """The next update of ``rows``, each at its own step (``next_t``), as one batched step: their
    new state, logged with its top-layer h, and their next update. ``kernels``: the transposed
    weights, and whether the step runs in C (``native_batch.batch_step``)."""
    layers, in_c = kernels
    device = log.cell.device
    steps = next_t[rows].astype(np.int64)
    rows_t, steps_t = torch.from_numpy(rows).to(device), torch.from_numpy(steps).to(device)
    x = inputs[steps_t, rows_t] if isinstance(inputs, Tensor) else inputs(steps_t, rows_t)  # (n, I)
    every = rows.size == log.cell.shape[1]  # every row: no gather, and the new state replaces the old
    if in_c:  # stepped in place in C: on a copy, the log keeps views
        new = log.cell.clone(memory_format=torch.contiguous_format) if every else log.cell.index_select(1, rows_t)
        with threads.wide():  # no per-step hand-offs from Python: the threads pay here
            delta = native_batch.batch_step(module, x, new)
    else:
        new = stack_step(module.cell, layers, x, log.cell if every else log.cell.index_select(1, rows_t))
        delta = module.update_increment(new)  # (n,) Δũ of eq. 4
    log.cell = new if every else log.cell.index_copy(1, rows_t, new)  # out of place, as above
    delta = delta.double().cpu().numpy()
    _schedule(next_t, rows, steps, delta, threshold)
    # In time order every row's state is at steps[0], and its output there is the current top h.
    log.record(steps, rows, new[-1, :, 0], delta, int(steps[0]), log.cell[-1:, :, 0])


def _schedule(next_t: np.ndarray, rows, t: int | np.ndarray, delta: np.ndarray, threshold: float) -> None:
    """The next update of the rows updated at t (one step, or each row's own), from their Δũ (eq. 6)."""
    if threshold < 1 and delta.min() > threshold:  # N_skip = floor(threshold / Δũ) = 0 for every row
        next_t[rows] = t + 1
    else:
        next_t[rows] = t + 1 + skip_counts(delta, threshold)


def _window(
    module, kernels: tuple, spans: Window, x: Tensor, log: UpdateLog, t: int, length: int, next_t, threshold, threads
) -> None:
    """A speculative dense window of ``length`` steps from t, at which every row is due.

    Step i > 0 of the window is due for every row iff Δũ_{i-1} > threshold for every row
    (after an update ũ = Δũ: eq. 5, then N_skip = 0: eq. 6), Δũ from the top layer's state
    after step i-1 (c for the LSTM: recovered by ``lstm``, a ``speculate.LstmWindow``, or, when
    it is None, read after each of ``speculate.stepwise``'s one-step calls). The accepted steps
    are logged as updates of every row; the last one's Δũ schedules each row's next update.
    """
    layers, dense, lstm = kernels  # transposed weights; the stack's AtenStep; an LstmWindow or None
    every = np.arange(log.cell.shape[1])
    seen: dict[str, list[Tensor]] = {"delta": []}

    def check(tops: Tensor) -> Tensor:
        delta = module.update_increment(flat(tops)).view(tops.shape[:2]).double()  # (k, B)
        seen["delta"].append(delta)
        due = delta.gt(threshold).all(1) if threshold < 1 else torch.zeros_like(delta[:, 0], dtype=torch.bool)
        return torch.cat([due.new_ones(1), due[:-1]])  # step 0 is due for every row

    def next_ok(state: Tensor) -> bool:  # the LSTM: Δũ from the top layer's c
        delta = module.update_increment(state).double()  # (B,)
        seen["delta"].append(delta.unsqueeze(0))
        return threshold < 1 and bool(delta.gt(threshold).all())

    xs = x[t : t + length]
    if dense.parts == 2 and lstm is None:
        step = lambda x_t, s: stack_step(module.cell, layers, x_t, s)  # noqa: E731
        outs, accepted, log.cell = stepwise(step, xs, log.cell, next_ok)
    else:
        with threads.wide():  # whole-sequence calls; the LSTM's one-step calls keep one thread
            if lstm is None:
                outs, accepted, log.cell = window(dense, xs, log.cell, check)
            else:
                outs, accepted, log.cell = lstm(xs, log.cell, check)
    deltas = torch.cat(seen["delta"])[:accepted].cpu().numpy()
    spans.record(length, accepted)
    steps = np.repeat(np.arange(t, t + accepted), every.size)  # step-major, as outs
    log.record(steps, np.tile(every, accepted), outs[:accepted].flatten(0, 1), deltas.reshape(-1), t, outs[:accepted])
    _schedule(next_t, every, t + accepted - 1, deltas[-1], threshold)


def _run_single(module, inputs, next_t: np.ndarray, ends: np.ndarray, cell: Tensor, threshold: float) -> UpdateLog:
    """Batch 1: the same jumps with the schedule in Python scalars, no gathers; in C where it can."""
    use_native = native.applies(module, cell)
    first, end = next_t[0], int(ends[0])
    if use_native and isinstance(inputs, Tensor):
        start = int(first) if first < end else end
        steps, hidden, deltas = native.skip_run(module, inputs[:, 0], start, end, threshold, cell)
        log = UpdateLog(cell)
        if steps.size:
            log.steps, log.rows, log.hidden, log.deltas = [steps], [np.zeros_like(steps)], [hidden], [deltas]
        return log
    layers, net = transposed(module), native.stack_net(module) if use_native else None
    t, steps, hidden, deltas = first, [], [], []
    while t < end:
        t = int(t)
        x_t = inputs[t] if isinstance(inputs, Tensor) else inputs(torch.tensor([t]), torch.tensor([0]))
        if net is not None:
            cell = cell.clone()  # the C step works in place; the logged h must not change
            delta = net.step(x_t, cell)
        else:
            cell = stack_step(module.cell, layers, x_t, cell)
            delta = module.update_increment(cell).item()  # Δũ of eq. 4
        steps.append(t)
        hidden.append(cell[-1, :, 0])
        deltas.append(delta)
        t = t + 1 + skip_counts(np.array(delta), threshold)
    log = UpdateLog(cell)
    if steps:
        log.steps, log.rows = [np.array(steps)], [np.zeros(len(steps), dtype=np.int64)]
        log.hidden, log.deltas = hidden, [np.array(deltas)]
    return log


def _assemble(module, state: RecurrentState, seq_len: int, batch: int, valid: Tensor | None, log: UpdateLog):
    """Outputs, final state and statistics from the log of updates (all vectorised)."""
    cell = log.cell
    device, dtype = cell.device, cell.dtype
    step_idx, row_idx = _joined(log.steps, device, torch.long), _joined(log.rows, device, torch.long)
    deltas = _joined(log.deltas, device, dtype)
    events = step_idx.numel()
    # Event index of the latest update at or before each step, -1 before the first.
    latest = torch.full((seq_len + 1, batch), -1, dtype=torch.long, device=device)
    latest[step_idx, row_idx] = torch.arange(events, device=device)
    latest = latest.cummax(0).values  # (T+1, B); row T has no updates, so it repeats row T-1
    rows = torch.arange(batch, device=device)
    out = log.out if log.out is not None else state.cell.new_empty(seq_len, batch, cell.shape[-1])
    if log.filled < seq_len:  # from the split on: the latest update's h, or the top h at the split
        start = state.cell[-1, :, 0] if log.split_hidden is None else log.split_hidden
        table = torch.cat([start, *log.hidden])  # (B + E', D)
        tail = latest[log.filled : seq_len]
        index = torch.where(tail >= log.split_events, tail - log.split_events + batch, rows).flatten()
        torch.index_select(table, 0, index, out=out[log.filled :].view(-1, table.shape[1]))  # in place
    updated = torch.zeros(seq_len + 1, batch, dtype=dtype, device=device)
    updated[step_idx, row_idx] = 1.0
    # ũ at each step t = 0..T (eq. 5 in closed form): min(k·Δũ, 1) k steps after an update,
    # ũ_0 + t·Δũ_0 (capped) before the first one.
    before = torch.cat([latest.new_full((1, batch), -1), latest[:-1]])  # latest update strictly before t
    delta_all = torch.cat([deltas, state.extras["delta_prob"].to(dtype)])
    last_delta = delta_all[torch.where(before >= 0, before, events + rows)]  # (T+1, B)
    steps = torch.arange(seq_len + 1, device=device, dtype=dtype).unsqueeze(1)
    p0 = state.extras["update_prob"].to(dtype)
    since = steps - step_idx[before.clamp(min=0)].to(dtype) if events else steps
    prob = torch.where(
        before >= 0,
        (since * last_delta).clamp(max=1.0),
        torch.where(steps == 0, p0, (p0 + steps * last_delta).clamp(max=1.0)),
    )
    ends = torch.full((batch,), seq_len, device=device) if valid is None else valid.sum(0)
    final_delta = delta_all[torch.where(latest[ends - 1, rows] >= 0, latest[ends - 1, rows], events + rows)]
    final = RecurrentState(cell, {"update_prob": prob[ends, rows], "delta_prob": final_delta})
    weight = valid_float(valid, seq_len, batch, cell)  # (T, B)
    updates = (updated[:seq_len] * weight).t()  # (B, T)
    macs_per_update = sum(module.dense_step_macs()) + module.hidden_size
    stats = Stats(
        updates,
        module.options["budget"] * updates.sum(1).mean(),
        updates.sum(1) * macs_per_update,
        {"update_prob": (prob[:seq_len] * weight).t()},
    )
    return out, final, stats


def _joined(parts: list[np.ndarray], device: torch.device, dtype: torch.dtype) -> Tensor:
    """One tensor from the host arrays the loops logged."""
    return torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0)).to(device, dtype)


def _all_rows(step: int, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """The (steps, rows) request of a ``features`` callable for every row at one step."""
    rows = torch.arange(batch, device=device)
    return torch.full_like(rows, step), rows
