"""A task model: optional embedding, one recurrent stack of any method, a linear head.

Model names (DESIGN.md): dense ``lstm|gru|rnn``; ``skip-``, ``act-``, ``vc-``, ``sa-`` + cell;
and the random-skip baselines of Skip RNN Table 1, ``random-skip-`` + cell.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .cells import CELLS
from .layer import RecurrentBase, RecurrentState, Stats
from .methods import METHODS
from .methods.skip import RandomSkipRNN
from .tasks import Task

MODEL_CLASSES: dict[str, type[RecurrentBase]] = {**METHODS, "random-skip": RandomSkipRNN}
MODEL_NAMES: tuple[str, ...] = (
    *CELLS,
    *(f"{method}-{cell}" for method in MODEL_CLASSES if method != "dense" for cell in CELLS),
)


def parse_model_name(name: str) -> tuple[type[RecurrentBase], str]:
    """The recurrent class and the cell of a model name; ValueError listing the valid names."""
    if name in CELLS:
        return MODEL_CLASSES["dense"], name
    method, _, cell = name.rpartition("-")
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}")
    return MODEL_CLASSES[method], cell


def model_options(name: str) -> dict[str, Any]:
    """The method options of a model name with their defaults."""
    return dict(parse_model_name(name)[0].OPTIONS)


class SequenceModel(nn.Module):
    """Embedding (token tasks) -> recurrent stack -> linear head.

    Args:
        rnn: a batch-first recurrent module of this package.
        num_outputs: width of the head.
        per_step: apply the head at every step; else at each sequence's last valid step.
        vocab_size, embed_size: an ``nn.Embedding`` in front when ``vocab_size`` is given.
    """

    def __init__(
        self,
        rnn: RecurrentBase,
        num_outputs: int,
        per_step: bool,
        vocab_size: int | None = None,
        embed_size: int | None = None,
    ) -> None:
        super().__init__()
        if not rnn.batch_first:
            raise ValueError("SequenceModel needs a batch_first recurrent module")
        self.embedding = nn.Embedding(vocab_size, embed_size) if vocab_size is not None else None
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size, num_outputs)
        self.per_step = per_step

    def forward(
        self, x: Tensor, lengths: Tensor | None = None, state: RecurrentState | None = None
    ) -> tuple[Tensor, Stats, RecurrentState]:
        """Predictions for a batch.

        Args:
            x: (B, T, I) float features, or (B, T) int64 token ids with an embedding.
            lengths: optional (B,) valid lengths.
            state: a carried state (truncated BPTT) or None for the initial state.
        Returns:
            pred: (B, T, num_outputs) if per_step, else (B, num_outputs) at the last valid step.
            stats: the recurrent module's :class:`Stats`.
            state: the state after each sequence's last valid step.
        """
        if self.embedding is not None:
            x = self.embedding(x)  # (B, T, E)
        out, state, stats = self.rnn(x, state=state, lengths=lengths)  # out: (B, T, H)
        if self.per_step:
            return self.head(out), stats, state
        if lengths is None:
            last = out[:, -1]  # (B, H)
        else:
            index = (lengths.to(out.device) - 1).view(-1, 1, 1).expand(-1, 1, out.shape[2])
            last = out.gather(1, index).squeeze(1)  # (B, H)
        return self.head(last), stats, state

    def dense_step_macs(self) -> int:
        """Multiply-adds of one dense step of the recurrent stack (the FLOPs baseline)."""
        return sum(self.rnn.dense_step_macs())


def build_model(
    task: Task, model_name: str, hidden_size: int, num_layers: int = 1, embed_size: int = 64, **method_options: Any
) -> SequenceModel:
    """The model ``model_name`` sized for ``task``.

    Args:
        task: gives input_size (the vocabulary size for token tasks), num_outputs, per_step.
        model_name: one of :data:`MODEL_NAMES`.
        hidden_size, num_layers: of the recurrent stack.
        embed_size: embedding width for token tasks (ignored otherwise).
        **method_options: the method's options (``model_options(model_name)`` lists them).
    Raises:
        ValueError: unknown model name or option.
    """
    cls, cell = parse_model_name(model_name)
    if task.tokens:
        rnn = cls(cell, embed_size, hidden_size, num_layers, batch_first=True, **method_options)
        return SequenceModel(rnn, task.num_outputs, task.per_step, task.input_size, embed_size)
    rnn = cls(cell, task.input_size, hidden_size, num_layers, batch_first=True, **method_options)
    return SequenceModel(rnn, task.num_outputs, task.per_step)


def set_schedule_values(model: nn.Module, sharpness: float | None = None, slope: float | None = None) -> None:
    """Set the annealed quantities of every VCRNN (sharpness) and SA-RNN (slope) inside ``model``."""
    for module in model.modules():
        if sharpness is not None and hasattr(module, "set_sharpness"):
            module.set_sharpness(sharpness)
        if slope is not None and hasattr(module, "set_slope"):
            module.set_slope(slope)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["MODEL_NAMES", "SequenceModel", "build_model", "count_parameters", "model_options", "parse_model_name"]
