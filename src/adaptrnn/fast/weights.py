"""Cell weights rearranged once for the fast paths, and one stack step over a subset of rows.

The fast paths multiply by the same weights at every step, in layouts that make the
skipped work easy to leave out:
- transposed (C, G*D), so a step is one ``addmm`` (a row-vector times a matrix runs faster
  through BLAS than ``linear``'s transposed product at batch 1);
- neuron-major: row ``i*G + g`` is gate g of neuron i, so the G rows of a neuron are
  contiguous; the first d neurons are one slice (VCRNN, transposed) and any set of neurons
  is one ``index_select`` of rows (SA-RNN).

Rearranged weights are cached per module and rebuilt when any parameter changes
(``Tensor._version`` counts in-place writes such as ``load_state_dict`` or an optimiser step).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor, nn

from ..cells import GATES
from . import native

T = TypeVar("T")
_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[tuple, object]]] = weakref.WeakKeyDictionary()


def cached(module: nn.Module, key: str, build: Callable[[], T]) -> T:
    """``build()``, remembered for ``module`` until one of its parameters or buffers changes."""
    stamp = tuple((t.data_ptr(), t._version, t.dtype) for t in (*module.parameters(), *module.buffers()))
    entries = _CACHE.setdefault(module, {})
    hit = entries.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]  # type: ignore[return-value]
    with torch.no_grad():
        value = build()
    entries[key] = (stamp, value)
    return value


@dataclass
class LayerWeights:
    """One layer's input and recurrent weights and biases (G*D,) or None, in a builder's layout;
    ``b_sum``: b_ih + b_hh (either alone where the other is None), the one bias of a summed step."""

    ih: Tensor
    hh: Tensor
    b_ih: Tensor | None
    b_hh: Tensor | None

    def __post_init__(self) -> None:
        both = self.b_ih is not None and self.b_hh is not None
        self.b_sum = self.b_ih + self.b_hh if both else (self.b_hh if self.b_ih is None else self.b_ih)


def transposed(module) -> list[LayerWeights]:
    """Every layer's weights of a ``RecurrentBase``, transposed: ih (C, G*D), hh (D, G*D). Cached."""

    def build() -> list[LayerWeights]:
        layers = []
        for layer in range(module.num_layers):
            w_ih, w_hh, b_ih, b_hh = module.layer_weights(layer)
            layers.append(LayerWeights(w_ih.t().contiguous(), w_hh.t().contiguous(), b_ih, b_hh))
        return layers

    return cached(module, "transposed", build)


def neuron_major(module, transpose: bool) -> list[LayerWeights]:
    """Every layer's weights with rows reordered neuron-major (row ``i*G + g`` is gate g of neuron i).

    With ``transpose`` ih / hh are (C, D*G), so the first d neurons are the first ``G*d``
    columns; without, (D, G*C), so a set of neurons is an ``index_select`` of rows.
    Biases are reordered alike, (D*G,). Cached.
    """

    def build() -> list[LayerWeights]:
        gates = GATES[module.cell]
        reorder = lambda w: w.view(gates, module.hidden_size, -1).transpose(0, 1)  # noqa: E731  (D, G, C)
        layers = []
        for layer in range(module.num_layers):
            w_ih, w_hh, b_ih, b_hh = module.layer_weights(layer)
            biases = [None if b is None else reorder(b.unsqueeze(-1)).reshape(-1) for b in (b_ih, b_hh)]
            if transpose:
                mats = [reorder(w).reshape(w.shape).t().contiguous() for w in (w_ih, w_hh)]
            else:
                mats = [reorder(w).reshape(module.hidden_size, -1) for w in (w_ih, w_hh)]
            layers.append(LayerWeights(*mats, *biases))
        return layers

    return cached(module, f"neuron_major_{transpose}", build)


def gate_major(z: Tensor, gates: int) -> Tensor:
    """(n, d*G) neuron-major projections -> (n, G*d) in ``pointwise``'s gate-major order."""
    return z.view(z.shape[0], -1, gates).transpose(1, 2).reshape(z.shape[0], -1)


def project(z: Tensor, w_t: Tensor, bias: Tensor | None) -> Tensor:
    """``z W^T + b`` with W given transposed. z: (n, C), w_t: (C, R) -> (n, R)."""
    return torch.mm(z, w_t) if bias is None else torch.addmm(bias, z, w_t)


def stack_step(cell: str, layers: list[LayerWeights], x: Tensor, s: Tensor) -> Tensor:
    """One step of the whole stack for the rows given (inference; no dropout).

    x: (n, I) layer 0's input; s: (L, n, K, D) -> (L, n, K, D). ``layers`` from :func:`transposed`.
    """
    return _stack(cell, layers, x, None, s)


def projected_stack_step(cell: str, layers: list[LayerWeights], gx0: Tensor, s: Tensor) -> Tensor:
    """:func:`stack_step` given layer 0's input projection gx0 (n, G*D), its bias b_ih included."""
    return _stack(cell, layers, None, gx0, s)


def _stack(cell: str, layers: list[LayerWeights], x: Tensor | None, gx0: Tensor | None, s: Tensor) -> Tensor:
    new: list[Tensor] = []
    for layer, w in enumerate(layers):
        z, h = x if layer == 0 else new[-1][:, 0], s[layer, :, 0]
        given = gx0 if layer == 0 else None
        if cell == "gru":  # the candidate reads r ⊙ (W_hn h + b_hn): the products stay apart
            gx = given if given is not None else project(z, w.ih, w.b_ih)
            new.append(native.pointwise(cell, gx, project(h, w.hh, w.b_hh), s[layer]))
            continue
        # RNN, LSTM: one pre-activation, the recurrent product accumulated onto the input's
        # (addmm's beta = 1), so no (n, G*D) sum is formed apart
        if given is None:
            pre = project(z, w.ih, w.b_sum).addmm_(h, w.hh)
        else:
            pre = torch.addmm(given, h, w.hh) if w.b_hh is None else torch.addmm(given + w.b_hh, h, w.hh)
        new.append(native.pointwise(cell, pre, None, s[layer]))  # one call where the extension is built
    return new[0].unsqueeze(0) if len(new) == 1 else torch.stack(new)  # one layer: a view, no copy
