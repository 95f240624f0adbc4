"""Batch-1 streaming: feed one input at a time, keep the state between calls.

    stream = Stream(model.eval())
    for frame in source:
        if stream.needs_input():          # Skip RNN: False on steps it will skip
            h, updated = stream.step(encoder(frame))
        else:
            h, updated = stream.step()    # the frame is never encoded

A Skip RNN stream knows after each update how many steps it will skip (eq. 6), so skipped
steps cost nothing and need no input. A dense stack runs one cell step per input; the
other methods run their fast inference path one step at a time. The outputs and the state
equal those of one call over the whole sequence.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .. import dispatch
from ..layer import RecurrentBase, RecurrentState
from ..methods.dense import DenseRNN
from ..methods.skip import SkipRNN
from . import native
from .skip import first_update, skip_counts
from .weights import stack_step, transposed


class Stream:
    """Step-by-step inference of one sequence with any module of this package.

    Args:
        module: a recurrent module in eval mode. Its weights are prepared when the stream is
            created and on ``reset()``: call ``reset()`` after changing them.
        state: a ``RecurrentState`` (batch 1) to start from; None for the module's initial state.
    """

    def __init__(self, module: RecurrentBase, state: RecurrentState | None = None) -> None:
        if module.training:
            raise ValueError("Stream runs inference: call module.eval() first")
        self.module = module
        self.jumps = isinstance(module, SkipRNN) and type(module).binarize is SkipRNN.binarize
        self.reset(state)

    def reset(self, state: RecurrentState | None = None) -> None:
        """Start a new sequence from ``state`` (None: the module's initial state)."""
        param = next(self.module.parameters())
        with torch.no_grad():
            self._state = self.module._check_state(state, 1, param.new_empty(0))
        cell = self._state.cell
        self._native = None  # the C step of a Skip RNN or dense stack, in place on its own state
        if (self.jumps or isinstance(self.module, DenseRNN)) and native.applies(self.module, cell):
            self._native = native.stack_net(self.module)
            self._state = RecurrentState(cell.contiguous().clone(), self._state.extras)
        self._h = self._top()
        if self.jumps:
            self._prob = float(self._state.extras["update_prob"][0])
            self._delta = float(self._state.extras["delta_prob"][0])
            threshold = float(self.module.options["threshold"])
            self._wait = first_update(np.array([self._prob]), np.array([self._delta]), threshold)[0]

    @property
    def state(self) -> RecurrentState:
        """The state after the last step, as ``module(x, state)`` would return it."""
        cell = self._state.cell.clone() if self._native is not None else self._state.cell
        if not self.jumps:
            return RecurrentState(cell, self._state.extras)
        return RecurrentState(
            cell, {"update_prob": cell.new_tensor([self._prob]), "delta_prob": cell.new_tensor([self._delta])}
        )

    def needs_input(self) -> bool:
        """Whether the next ``step`` reads its input (False only on steps a Skip RNN skips)."""
        return not self.jumps or self._wait == 0

    def step(self, x_t: Tensor | None = None) -> tuple[Tensor, float]:
        """Advance one step.

        Args:
            x_t: (I,) or (1, I) input of this step; may be None when ``needs_input()`` is False.
        Returns:
            h_t (D,) the top layer's output and the step's computation relative to a dense step
            (``stats.updates``: Skip 0/1, VC d_t/D, SA fraction of neurons, ACT ponder steps).
        """
        module = self.module
        if self.jumps and self._wait > 0:
            self._wait -= 1
            self._prob = min(self._prob + self._delta, 1.0)  # eq. 5 while skipping
            return self._h, 0.0
        if x_t is None:
            raise ValueError("this step reads its input: pass x_t")
        x_t = x_t.reshape(1, module.input_size).to(self._state.cell.dtype)
        with torch.no_grad():
            if self._native is not None:
                delta, updated = self._native.step(x_t, self._state.cell), 1.0
                return self._after_update(delta), updated
            delta = 0.0
            if self.jumps or isinstance(module, DenseRNN):
                cell = stack_step(module.cell, transposed(module), x_t, self._state.cell)
                self._state, updated = RecurrentState(cell, self._state.extras), 1.0
                delta = float(module.update_increment(cell)[0]) if self.jumps else 0.0
            else:
                _, self._state, stats = dispatch.run(module, x_t.unsqueeze(0), self._state, None)
                updated = float(stats.updates[0, 0])
            return self._after_update(delta), updated

    def _after_update(self, delta: float) -> Tensor:
        """Schedule a Skip RNN's next update (eq. 6); the new top-layer h (D,)."""
        if self.jumps:
            self._delta = self._prob = delta
            self._wait = skip_counts(np.array([delta]), float(self.module.options["threshold"]))[0]
        self._h = self._top()
        return self._h

    def _top(self) -> Tensor:
        """The top layer's h (D,), a tensor of its own where the C step rewrites the state in place."""
        h = self._state.cell[-1, 0, 0]
        return h.clone() if self._native is not None else h
