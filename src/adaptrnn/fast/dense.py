"""Dense stacks through ATen's fused RNN kernels (cuDNN on a GPU)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

_KERNELS = {"rnn": torch.rnn_tanh, "gru": torch.gru, "lstm": torch.lstm}


def aten_forward(module, x: Tensor, cell: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
    """Run a ``RecurrentBase`` stack densely with ATen.

    Args:
        module: the module whose ``weight_ih_l*`` etc. are used.
        x: (T, B, I); cell: (L, B, K, D) initial state; valid: (T, B) bool or None.
    Returns:
        out (T, B, D) (zeros at padded steps) and the final state (L, B, K, D).
    """
    params = [p for layer in range(module.num_layers) for p in module.layer_weights(layer) if p is not None]
    hx = [cell[:, :, k].contiguous() for k in range(cell.shape[2])]  # each (L, B, D)
    kernel = _KERNELS[module.cell]
    args = (params, module.bias, module.num_layers, float(module.dropout), module.training, False)
    if valid is None:
        result = kernel(x, hx if module.cell == "lstm" else hx[0], *args, False)
        return result[0], torch.stack(list(result[1:]), dim=2)
    lengths = valid.sum(0).cpu()
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    hx = [h.index_select(1, packed.sorted_indices) for h in hx]
    result = kernel(packed.data, packed.batch_sizes, hx if module.cell == "lstm" else hx[0], *args)
    out, _ = pad_packed_sequence(packed._replace(data=result[0]), total_length=x.shape[0])
    final = torch.stack([h.index_select(1, packed.unsorted_indices) for h in result[1:]], dim=2)
    return out, final
