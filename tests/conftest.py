"""Shared helpers for the tests of the reference implementations.

Everything runs in float64 so that comparisons with ``torch.nn`` can be tight, at tiny sizes
(I=3, D=5, T=7, B=4) so that the whole suite stays fast on two CPU cores. Test modules
import the helpers with ``from conftest import ...`` (pytest puts ``tests/`` on the path).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import adaptrnn as ar

torch.set_num_threads(1)  # tiny tensors: threads only add overhead on a shared 2-core machine

DTYPE = torch.float64
I, D, T, B = 3, 5, 7, 4  # input size, hidden size, sequence length, batch
CELLS = ("rnn", "gru", "lstm")
METHOD_NAMES = ("dense", "skip", "act", "vc", "sa")
ADAPTIVE = ("skip", "act", "vc", "sa")
TORCH_CLASSES = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
TORCH_CELLS = {"rnn": nn.RNNCell, "gru": nn.GRUCell, "lstm": nn.LSTMCell}
# Options with a nonzero regulariser, so that stats.cost carries gradient.
COSTLY = {
    "dense": {},
    "skip": {"budget": 0.1},
    "act": {"time_penalty": 0.1},
    "vc": {"penalty": 1.0},
    "sa": {"budget": 0.1},
}
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """The script ``benchmarks/NAME.py`` as a module (registered in sys.modules under ``name``)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# Lengths of a padded batch: unsorted, with both extremes 1 and T.
LENGTHS = torch.tensor([T, 2, T - 2, 1])


@pytest.fixture(autouse=True)
def _seed() -> Iterator[None]:
    torch.manual_seed(0)
    yield
    torch.set_flush_denormal(False)  # the trainer sets it process-wide; each test starts from torch's default


def make_module(
    method: str, cell: str, num_layers: int = 1, batch_first: bool = False, lively: bool = True, **options
) -> ar.RecurrentBase:
    """A float64 module of size (I, D).

    ``lively`` moves the gates away from their "always compute" initialisation so that
    decisions vary over steps and examples (Skip skips, SA updates about half the neurons,
    ACT ponders 1-4 steps); otherwise the adaptive behaviour would hardly be exercised.
    """
    m = ar.METHODS[method](cell, I, D, num_layers=num_layers, batch_first=batch_first, **options).to(DTYPE)
    if lively:
        with torch.no_grad():
            if method == "skip":
                m.update_weight.mul_(4.0)
                m.update_bias.fill_(-0.3)
            elif method == "act":
                m.halting_weight.mul_(4.0)
                m.halting_bias.fill_(0.0)
            elif method == "sa":
                for layer in range(num_layers):
                    getattr(m, f"update_bias_l{layer}").zero_()
    return m


def torch_twin(module: ar.RecurrentBase) -> nn.RNNBase:
    """``nn.RNN/GRU/LSTM`` with the cell weights of ``module`` (its gate parameters ignored)."""
    ref = TORCH_CLASSES[module.cell](
        module.input_size,
        module.hidden_size,
        num_layers=module.num_layers,
        bias=module.bias,
        batch_first=module.batch_first,
        dtype=DTYPE,
    )
    own = module.state_dict()
    ref.load_state_dict({k: own[k] for k in ref.state_dict()}, strict=True)
    return ref


def torch_cell_twin(module: ar.RecurrentBase, layer: int = 0) -> nn.RNNCellBase:
    """``nn.RNNCell/GRUCell/LSTMCell`` with the weights of one layer of ``module``."""
    in_size = module.input_size if layer == 0 else module.hidden_size
    ref = TORCH_CELLS[module.cell](in_size, module.hidden_size, bias=module.bias, dtype=DTYPE)
    own = module.state_dict()
    ref.load_state_dict({k: own[f"{k}_l{layer}"] for k in ref.state_dict()}, strict=True)
    return ref


def as_hx(cell: Tensor, cell_name: str) -> Tensor | tuple[Tensor, Tensor]:
    """(L, B, K, D) -> ``nn``-style ``h0`` or ``(h0, c0)``."""
    if cell_name == "lstm":
        return cell[:, :, 0].contiguous(), cell[:, :, 1].contiguous()
    return cell[:, :, 0].contiguous()


def run_torch(
    ref: nn.RNNBase, x: Tensor, cell: Tensor | None = None, lengths: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Run ``nn.RNN/GRU/LSTM``; padded batches go through ``pack_padded_sequence``.

    Args:
        x: (T, B, I) or (B, T, I) following ``ref.batch_first``; cell: (L, B, K, D) or None.
    Returns:
        out in the layout of x (zeros at padded steps) and the final state (L, B, K, D).
    """
    name = "lstm" if isinstance(ref, nn.LSTM) else "rnn"
    hx = None if cell is None else as_hx(cell, name)
    if lengths is None:
        out, final = ref(x, hx)
    else:
        packed = pack_padded_sequence(x, lengths, batch_first=ref.batch_first, enforce_sorted=False)
        out, final = ref(packed, hx)
        total = x.shape[1] if ref.batch_first else x.shape[0]
        out, _ = pad_packed_sequence(out, batch_first=ref.batch_first, total_length=total)
    parts = final if isinstance(final, tuple) else (final,)
    return out, torch.stack(parts, dim=2)


def random_input(batch: int = B, seq_len: int = T, batch_first: bool = False) -> Tensor:
    shape = (batch, seq_len, I) if batch_first else (seq_len, batch, I)
    return torch.randn(shape, dtype=DTYPE)


def random_cell(module: ar.RecurrentBase, batch: int = B) -> Tensor:
    """A random (L, B, K, D) state, inside (-1, 1) like a tanh output."""
    shape = (module.num_layers, batch, module.state_parts, module.hidden_size)
    return torch.rand(shape, dtype=DTYPE) * 2 - 1


def vary_gates(
    m: ar.RecurrentBase,
    skip_bias: float = -0.8,
    act_scale: float = 4.0,
    max_steps: int | None = None,
    sa_bias: float = -0.2,
    vc_scale: float = 0.8,
    vc_scheduler_scale: float | None = 4.0,
) -> ar.RecurrentBase:
    """Move a module's gate away from "always compute" so decisions vary over steps and rows.

    Skip: sharper Δũ with bias ``skip_bias``; ACT: halting weights x ``act_scale``, bias -1
    (``max_steps`` caps the ponder loop); SA: recurrent gate weights x4, bias ``sa_bias``;
    VC: scale ``vc_scale`` and scheduler weights x ``vc_scheduler_scale`` (None: unchanged).
    """
    layers = range(m.num_layers)
    with torch.no_grad():
        if isinstance(m, ar.SkipRNN):
            m.update_weight.mul_(4.0)
            m.update_bias.fill_(skip_bias)
        elif isinstance(m, ar.ACTRNN):
            m.halting_weight.mul_(act_scale)
            m.halting_bias.fill_(-1.0)
            if max_steps is not None:
                m.options["max_steps"] = max_steps
        elif isinstance(m, ar.SARNN):
            for layer in layers:
                getattr(m, f"update_weight_hh_l{layer}").mul_(4.0)
                getattr(m, f"update_bias_l{layer}").fill_(sa_bias)
        elif isinstance(m, ar.VCRNN):
            m.options["scale"] = vc_scale
            if vc_scheduler_scale is not None:
                for layer in layers:
                    getattr(m, f"scheduler_h_l{layer}").mul_(vc_scheduler_scale)
    return m
