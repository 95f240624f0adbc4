"""The dense baseline: every step, every neuron. Same interface as the adaptive methods."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..cells import joint_step
from ..layer import RecurrentBase, RecurrentState, Stats, keep_where, valid_float


class DenseRNN(RecurrentBase):
    """A plain tanh-RNN / GRU / LSTM stack; equals ``torch.nn.RNN/GRU/LSTM``.

    Runs ``torch``'s fused ATen kernels (cuDNN on a GPU) by default; ``impl="reference"``
    runs the readable per-step loop that the adaptive methods share.
    """

    OPTIONS = {"impl": "auto"}

    def _forward(self, x: Tensor, state: RecurrentState, valid: Tensor | None) -> tuple[Tensor, RecurrentState, Stats]:
        impl = self.options["impl"]
        if impl not in ("auto", "reference", "fast"):
            raise ValueError(f"impl must be auto, reference or fast, got {impl!r}")
        if impl == "reference":
            out, cell = self._reference(x, state.cell, valid)
        else:
            out, cell = aten_forward(self, x, state.cell, valid)
        seq_len, batch = x.shape[:2]
        updates = valid_float(valid, seq_len, batch, x).t()  # (B, T)
        flops = updates.sum(1) * sum(self.dense_step_macs())
        return out, RecurrentState(cell), Stats(updates, x.new_zeros(()), flops)

    def _reference(self, x: Tensor, cell: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
        """Layer by layer, one product of ``[x_t, h_{t-1}]`` per step (``cells.joint_step``)."""
        finals = []
        layer_in = x  # (T, B, I)
        for layer, (weight_t, bias) in enumerate(self.joint_stack_weights()):
            # Unbound once: indexing a (T, ...) tensor at [t] in the loop makes autograd build a
            # full-size gradient per step.
            steps = layer_in.unbind(0)  # T × (B, I)
            s = cell[layer]  # (B, K, D)
            outs = []
            for t in range(x.shape[0]):
                new = joint_step(self.cell, steps[t], s[:, 0], s, weight_t, bias)
                s = keep_where(None if valid is None else valid[t], new, s)
                outs.append(s[:, 0])
            finals.append(s)
            layer_in = self.layer_input_dropout(torch.stack(outs), layer)
        return layer_in, torch.stack(finals)


_KERNELS = {"rnn": torch.rnn_tanh, "gru": torch.gru, "lstm": torch.lstm}


def aten_forward(module, x: Tensor, cell: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
    """Run a ``RecurrentBase`` stack densely with ATen's fused kernels (oneDNN on a CPU, cuDNN on a GPU).

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
