"""Build the exportable step of a trained task model, and describe its interface.

The step's inputs are ``x`` then the state tensors; its outputs are ``y``, the new state
tensors (the input's name + ``_next``) and the method's per-step quantities. The
description (:func:`interface`) travels with the exported file, so a deployment needs no
Python from this package: it reads the names and the initial state and loops.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..methods import ACTRNN, SARNN, VCRNN, DenseRNN, SkipRNN
from ..methods.skip import RandomSkipRNN
from ..model import SequenceModel
from .partial import SAStep, VCStep
from .steps import ACTStep, DenseStep, SkipStep

# method -> (step class, state tensors after x, per-step quantities after the new state)
STEPS: dict[type, tuple[type[nn.Module], tuple[str, ...], tuple[str, ...]]] = {
    DenseRNN: (DenseStep, ("cell",), ("updates",)),
    SkipRNN: (
        SkipStep,
        ("cell", "update_prob", "delta_prob"),
        ("updates", "update_prob_t", "skips_ahead", "update_prob_ahead"),
    ),
    ACTRNN: (ACTStep, ("cell",), ("updates", "remainder")),
    VCRNN: (VCStep, ("cell",), ("updates", "active_dims")),
    SARNN: (SAStep, ("cell",), ("updates", "neuron_mask")),
}
METHOD_NAMES = {DenseRNN: "dense", SkipRNN: "skip", ACTRNN: "act", VCRNN: "vc", SARNN: "sa"}

QUANTITIES = {
    "updates": "(B,) this step's computation relative to a dense step (stats.updates: Skip u_t, "
    "VC mean d_t/D, SA fraction of neurons, ACT N(t), dense 1)",
    "update_prob_t": "(B,) Skip RNN's ũ_t, from which u_t = 1[ũ_t > threshold] was taken",
    "skips_ahead": "(B,) int64 Skip RNN: how many of the following steps will skip (a batch-1 stream may jump "
    "them); -1 on a step where every example skipped",
    "update_prob_ahead": "(B,) Skip RNN: ũ after those skipped steps; feed it as update_prob after a jump",
    "remainder": "(B,) ACT's remainder R(t)",
    "active_dims": "(L, B) int64 VCRNN's d_t of each layer",
    "neuron_mask": "(B, D) SA-RNN's u_t of the top layer (1 = the neuron updated)",
}


class ExportError(ValueError):
    """A model or setting that cannot be exported; one-line message."""


def _spec(model: SequenceModel) -> tuple[type[nn.Module], tuple[str, ...], tuple[str, ...]]:
    rnn = model.rnn
    if isinstance(rnn, RandomSkipRNN):
        raise ExportError("random-skip models draw their gate at random and are not exported; export skip-* instead")
    spec = STEPS.get(type(rnn))
    if spec is None:
        raise ExportError(f"cannot export a {type(rnn).__name__}; exportable: {', '.join(METHOD_NAMES.values())}")
    if isinstance(rnn, VCRNN) and rnn.options["hard"] is False:
        raise ExportError("VCRNN with hard=False uses the soft mask at inference; export needs hard=None or True")
    return spec


def build_step(model: SequenceModel, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The eager, scriptable step module of ``model`` (weights copied; see the method's step class)."""
    step_class, _, _ = _spec(model)
    return step_class(model, dtype).eval()


def initial_state(model: SequenceModel, batch: int = 1, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The state tensors a sequence starts from, by input name (Skip RNN's learned h_0, ũ_1 = 1 ...)."""
    rnn = model.rnn
    _spec(model)
    like = torch.empty(0, dtype=dtype, device=next(model.parameters()).device)
    with torch.no_grad():
        state = rnn.initial_state(batch, like)
    tensors = {"cell": state.cell.to(dtype).detach().clone()}
    tensors.update({k: v.to(dtype).detach().clone() for k, v in state.extras.items()})
    return {name: tensors[name] for name in _spec(model)[1]}


def example_input(model: SequenceModel, batch: int = 1) -> torch.Tensor:
    """An input of the step's form: token ids (B,) int64 with an embedding, else zeros (B, I)."""
    if model.embedding is not None:
        return torch.zeros(batch, dtype=torch.int64)
    return torch.zeros(batch, model.rnn.input_size)


def interface(model: SequenceModel) -> dict[str, Any]:
    """The step's description: names of inputs, state and outputs, shapes, the initial state (batch 1)."""
    _, state_names, quantities = _spec(model)
    rnn = model.rnn
    return {
        "format": "adaptrnn-step",
        "method": METHOD_NAMES[type(rnn)],
        "cell": rnn.cell,
        "num_layers": rnn.num_layers,
        "hidden_size": rnn.hidden_size,
        "num_outputs": model.head.out_features,
        "x": "(B,) int64 token ids" if model.embedding is not None else f"(B, {rnn.input_size}) float32 features",
        "input_size": None if model.embedding is not None else rnn.input_size,
        "vocab_size": model.embedding.num_embeddings if model.embedding is not None else None,
        "inputs": ["x", *state_names],
        "outputs": ["y", *(f"{n}_next" for n in state_names), *quantities],
        "state": {n: f"{n}_next" for n in state_names},
        "quantities": {q: QUANTITIES[q] for q in quantities},
        "initial_state": {k: v.tolist() for k, v in initial_state(model).items()},
        "head": "applied at every step (the task model's head on the top layer's h)",
    }
