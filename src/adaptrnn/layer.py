"""What every recurrent module shares: parameters with ``torch.nn`` names, input checks,
layouts, padded batches, state and statistics.

A method subclasses :class:`RecurrentBase`, declares its options (``OPTIONS``, with the
papers' defaults) and writes its own time loop in ``_forward`` over time-major input.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from . import dispatch
from .cells import GATES, STATE_PARTS, check_cell, joint_step, joint_weights, step_macs
from .options import check_options


@dataclass
class Stats:
    """Per-call statistics of a recurrent module.

    updates: (B, T) computation at each step relative to one dense step of the whole stack
        (Skip: 0/1; VC: d_t/D; SA: fraction of neurons updated; ACT: ponder steps N(t));
        0 at padded positions.
    cost: scalar, the method's weighted regulariser, to add to the task loss.
    flops: (B,) multiply-adds actually needed per sequence, the method's gates included.
    extras: method-specific per-step quantities for analysis and plots (see each method).
    """

    updates: Tensor
    cost: Tensor
    flops: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class RecurrentState:
    """State to continue a sequence from.

    cell: (L, B, K, D) the cell state of every layer (K = 2 for the LSTM: h, c).
    extras: the method's own recurrent quantities, each batch-first (e.g. Skip RNN's
        accumulated update probability ``update_prob`` (B,)).
    """

    cell: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)

    @property
    def h(self) -> Tensor:
        """(L, B, D) hidden state, like ``nn.LSTM``'s ``h_n``."""
        return self.cell[:, :, 0]

    @property
    def c(self) -> Tensor:
        """(L, B, D) LSTM cell state, like ``nn.LSTM``'s ``c_n``."""
        if self.cell.shape[2] < 2:
            raise AttributeError("only the LSTM has a cell state c")
        return self.cell[:, :, 1]

    def detach(self) -> RecurrentState:
        return RecurrentState(self.cell.detach(), {k: v.detach() for k, v in self.extras.items()})


StateLike = RecurrentState | Tensor | tuple[Tensor, Tensor] | None


class RecurrentBase(nn.Module):
    """A stack of ``num_layers`` cells with ``torch.nn``'s parameter names and init.

    Args:
        cell: "rnn" (tanh), "gru" or "lstm".
        input_size, hidden_size, num_layers, batch_first, dropout, bias: as in ``nn.LSTM``.
        **options: the method's options (``OPTIONS`` lists them with their defaults).
    """

    OPTIONS: dict[str, Any] = {}
    full_computation = False  # set by the ``full_computation`` context manager

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        batch_first: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
        **options: Any,
    ) -> None:
        super().__init__()
        self.cell = check_cell(cell)
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            valid = ", ".join(self.OPTIONS) or "none"
            raise ValueError(f"{type(self).__name__}: unknown option(s) {', '.join(unknown)}; valid: {valid}")
        self.options = {**self.OPTIONS, **options}
        check_options(type(self), self.options, self.OPTIONS)  # one table of allowed values: options.py
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.batch_first, self.dropout, self.bias = batch_first, dropout, bias
        self.state_parts = STATE_PARTS[cell]
        rows = GATES[cell] * hidden_size
        for layer in range(num_layers):
            in_size = input_size if layer == 0 else hidden_size
            self.register_parameter(f"weight_ih_l{layer}", nn.Parameter(torch.empty(rows, in_size)))
            self.register_parameter(f"weight_hh_l{layer}", nn.Parameter(torch.empty(rows, hidden_size)))
            if bias:
                self.register_parameter(f"bias_ih_l{layer}", nn.Parameter(torch.empty(rows)))
                self.register_parameter(f"bias_hh_l{layer}", nn.Parameter(torch.empty(rows)))
        self.reset_cell_parameters()

    def reset_cell_parameters(self) -> None:
        """``torch.nn``'s initialisation: U(-1/sqrt(D), 1/sqrt(D)) for every cell weight."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for layer in range(self.num_layers):
            for p in self.layer_weights(layer):
                if p is not None:
                    nn.init.uniform_(p, -bound, bound)

    def layer_weights(self, layer: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """(weight_ih, weight_hh, bias_ih, bias_hh) of one layer; biases None without bias."""
        get = lambda n: getattr(self, f"{n}_l{layer}", None)  # noqa: E731
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")

    def dense_step_macs(self) -> list[int]:
        """Multiply-adds of one dense step of each layer (see ``cells.step_macs``)."""
        return [
            step_macs(self.cell, self.input_size if layer == 0 else self.hidden_size, self.hidden_size)
            for layer in range(self.num_layers)
        ]

    def extra_repr(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return (
            f"{self.cell!r}, {self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"batch_first={self.batch_first}{opts}"
        )

    # ---- the public call -------------------------------------------------------------

    def forward(
        self, x: Tensor, state: StateLike = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, RecurrentState, Stats]:
        """Run the stack over a batch of sequences.

        Args:
            x: (T, B, I), or (B, T, I) with ``batch_first``.
            state: a :class:`RecurrentState` returned by an earlier call (to continue the
                sequences), an ``nn.RNN/GRU``-style ``h0`` (L, B, D), an ``nn.LSTM``-style
                ``(h0, c0)``, or None for the module's initial state.
            lengths: optional (B,) valid lengths in 1..T; padded steps change nothing and
                their outputs are 0.
        Returns:
            out: (T, B, D) (or (B, T, D)) top-layer hidden state at every step.
            state: :class:`RecurrentState` after each sequence's last valid step.
            stats: :class:`Stats`.
        """
        x = self._check_input(x)
        if self.batch_first:
            x = x.transpose(0, 1)
        seq_len, batch = x.shape[:2]
        valid = self._valid_mask(lengths, seq_len, batch, x.device)
        init = self._check_state(state, batch, x)
        out, final, stats = dispatch.run(self, x, init, valid)  # a registered fast path, or _forward
        if valid is not None:
            out = out * valid.unsqueeze(-1).to(out.dtype)
        if self.batch_first:
            out = out.transpose(0, 1)
        return out, final, stats

    def _forward(self, x: Tensor, state: RecurrentState, valid: Tensor | None) -> tuple[Tensor, RecurrentState, Stats]:
        """The method's reference loop. x: (T, B, I) time-major; valid: (T, B) bool or None (all valid).

        ``forward`` may run a fast inference path instead (``adaptrnn.dispatch``), which gives the same results.
        """
        raise NotImplementedError

    # ---- state -----------------------------------------------------------------------

    def initial_state(self, batch: int, x: Tensor) -> RecurrentState:
        """The state a sequence starts from when none is given (zeros; methods may learn it)."""
        cell = x.new_zeros(self.num_layers, batch, self.state_parts, self.hidden_size)
        return RecurrentState(cell, self.initial_extras(batch, x))

    def initial_extras(self, batch: int, x: Tensor) -> dict[str, Tensor]:
        """The method's own recurrent quantities at the start of a sequence."""
        return {}

    def _check_state(self, state: StateLike, batch: int, x: Tensor) -> RecurrentState:
        if state is None:
            return self.initial_state(batch, x)
        defaults = self.initial_extras(batch, x)
        if isinstance(state, RecurrentState):
            cell, extras = state.cell, dict(state.extras)
        else:
            parts = state if isinstance(state, tuple) else (state,)
            if len(parts) != self.state_parts:
                want = "(h0, c0)" if self.state_parts == 2 else "h0"
                raise ValueError(f"a {self.cell} state is {want}, got {len(parts)} tensor(s)")
            for p in parts:
                if not isinstance(p, Tensor) or p.dim() != 3:
                    raise ValueError("h0/c0 must be tensors of shape (num_layers, batch, hidden_size)")
            cell = torch.stack(parts, dim=2)
            extras = defaults
        want = (self.num_layers, batch, self.state_parts, self.hidden_size)
        if tuple(cell.shape) != want:
            raise ValueError(f"state has shape {tuple(cell.shape)}, expected (L, B, K, D) = {want}")
        missing = set(defaults) - set(extras)
        if missing:
            raise ValueError(f"state lacks this method's quantities: {', '.join(sorted(missing))}")
        for name, value in extras.items():
            if value.shape[:1] != (batch,):
                raise ValueError(f"state extra {name!r} has shape {tuple(value.shape)}, batch is {batch}")
        if not all(bool(torch.isfinite(t).all()) for t in (cell, *extras.values()) if t.is_floating_point()):
            raise ValueError("state contains NaN or inf")  # it would spread to every later output
        return RecurrentState(cell.to(x.dtype), extras)

    # ---- input checks ----------------------------------------------------------------

    def _check_input(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"input must be a tensor, got {type(x).__name__}")
        if x.dim() != 3:
            layout = "(B, T, I)" if self.batch_first else "(T, B, I)"
            raise ValueError(f"input must be 3-D {layout}, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"input must be a floating-point tensor, got {x.dtype}")
        param = self.weight_ih_l0
        if x.dtype != param.dtype or x.device != param.device:
            # Checked here, before any path runs, so that the reference loop and every fast path
            # give this message instead of each its own from deep inside torch.
            raise TypeError(
                f"input is {x.dtype} on {x.device}, the module's parameters are {param.dtype} on {param.device}; "
                f"convert one to match, e.g. x.to(module.weight_ih_l0)"
            )
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input has {x.shape[-1]} features, the module expects input_size={self.input_size}")
        if 0 in x.shape[:2]:
            raise ValueError(f"input has an empty time or batch dimension: {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("input contains NaN or inf")
        return x

    @staticmethod
    def _valid_mask(lengths: Tensor | None, seq_len: int, batch: int, device: torch.device) -> Tensor | None:
        """(T, B) bool, True where step t < lengths[b]; None when there are no lengths."""
        if lengths is None:
            return None
        lengths = torch.as_tensor(lengths)
        if lengths.shape != (batch,):
            raise ValueError(f"lengths must have shape (B,) = ({batch},), got {tuple(lengths.shape)}")
        if lengths.is_floating_point() or lengths.dtype == torch.bool:
            raise TypeError(f"lengths must be integers, got {lengths.dtype}")
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 1 or hi > seq_len:
            raise ValueError(f"lengths must lie in 1..T = 1..{seq_len}, got values in {lo}..{hi}")
        steps = torch.arange(seq_len, device=device).unsqueeze(1)
        return steps < lengths.to(device).unsqueeze(0)

    # ---- helpers for the time loops ----------------------------------------------------

    def joint_stack_weights(self, first_weight_ih: Tensor | None = None) -> list[tuple[Tensor, Tensor | None]]:
        """Every layer's ``[W_ih, W_hh]`` side by side (``cells.joint_weights``), for :meth:`stack_step`.

        first_weight_ih: layer 0's input weights, if not ``weight_ih_l0`` (ACT appends its flag's column).
        """
        weights = []
        for layer in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh = self.layer_weights(layer)
            if layer == 0 and first_weight_ih is not None:
                w_ih = first_weight_ih
            weights.append(joint_weights(self.cell, w_ih, w_hh, b_ih, b_hh))
        return weights

    def stack_step(self, x: Tensor, cell: Tensor, weights: list[tuple[Tensor, Tensor | None]]) -> Tensor:
        """One step of the whole stack, for methods whose decision spans the layers.

        x: (B, I) layer 0's input; cell: (L, B, K, D); weights: from :meth:`joint_stack_weights`.
        Returns (L, B, K, D). Each layer is one product of ``[input, h_{t-1}]`` (``cells.joint_step``):
        at a small input a (T, B, G*D) input projection and its gradient cost more in training.
        """
        new = []
        below = x
        for layer, (weight_t, bias) in enumerate(weights):
            s = cell[layer]  # (B, K, D)
            new.append(joint_step(self.cell, below, s[:, 0], s, weight_t, bias))
            below = self.layer_input_dropout(new[-1][:, 0], layer)
        return torch.stack(new)

    def layer_input_dropout(self, layer_out: Tensor, layer: int) -> Tensor:
        """``nn.LSTM``'s dropout on the outputs of every layer but the last."""
        if self.dropout and self.training and layer < self.num_layers - 1:
            return nn.functional.dropout(layer_out, self.dropout, training=True)
        return layer_out


def keep_where(valid_t: Tensor | None, new: Tensor, old: Tensor, batch_dim: int = 0) -> Tensor:
    """``new`` where the step is valid, ``old`` at padded positions.

    valid_t: (B,) bool; batch_dim: the axis of ``new``/``old`` that is B (1 for a (L, B, K, D) stack).
    """
    if valid_t is None:
        return new
    shape = [1] * new.dim()
    shape[batch_dim] = -1
    return torch.where(valid_t.view(shape), new, old)


def valid_float(valid: Tensor | None, seq_len: int, batch: int, like: Tensor) -> Tensor:
    """(T, B) 1.0 at valid steps, 0.0 at padded ones."""
    if valid is None:
        return like.new_ones(seq_len, batch)
    return valid.to(like.dtype)


@contextlib.contextmanager
def full_computation(module: nn.Module) -> Iterator[nn.Module]:
    """Force every adaptive module inside ``module`` to compute everything.

    Skip RNN updates at every step, SA-RNN updates every neuron, VCRNN uses all D
    dimensions and ACT takes exactly one ponder step; each then equals the plain
    ``torch.nn.RNN/GRU/LSTM`` with the same weights.
    """
    mods = [m for m in module.modules() if isinstance(m, RecurrentBase)]
    before = [m.full_computation for m in mods]
    for m in mods:
        m.full_computation = True
    try:
        yield module
    finally:
        for m, b in zip(mods, before, strict=True):
            m.full_computation = b
