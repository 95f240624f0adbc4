"""Dense windows (every row, every neuron, several steps) through ATen's fused RNN kernels.

When every row of a batch computes everything at a run of steps (Skip RNN: every row due;
VCRNN: every row at d_t = D; SA-RNN: every neuron of every row; ACT: the first ponder step),
the batched fast paths need nothing but the plain cell, and ATen's ``torch.lstm`` /
``torch.gru`` / ``torch.rnn_tanh`` over those steps computes them in one call (oneDNN on a
CPU), the kernels ``DenseRNN`` runs, tested equal to the reference cells
(``adaptrnn.fast.speculate`` decides which steps qualify). A single such step is not called
this way: at (B, D) = (256, 110) a one-step call cost 0.60 ms (LSTM, one thread), where
``weights.stack_step`` (the products in BLAS, the element-wise cell in one native call) cost
0.38 ms; it was faster at every shape measured (``benchmarks/results/one_step_ab.txt``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..cells import STATE_PARTS

KERNELS = {"rnn": torch.rnn_tanh, "gru": torch.gru, "lstm": torch.lstm}


class AtenStep:
    """The weights of some layers of a module in ATen's flat order, and the step that uses them.

    ``layers``: which layers (consecutive); ``first_bias``: a (G*D,) vector added to the first
    layer's input bias (ACT's flag weights at the first ponder step), or None.
    """

    def __init__(self, module, layers: range, first_bias: Tensor | None = None) -> None:
        self.module, self.cell, self.count = module, module.cell, len(layers)
        self.parts = STATE_PARTS[module.cell]
        self.has_biases = module.bias or first_bias is not None
        self.params: list[Tensor] = []
        self.first_input_bias: Tensor | None = None  # the first layer's b_ih (+ first_bias), or None
        for layer in layers:
            w_ih, w_hh, b_ih, b_hh = (p.detach() if p is not None else None for p in module.layer_weights(layer))
            if self.has_biases:
                b_ih = torch.zeros_like(w_ih[:, 0]) if b_ih is None else b_ih
                b_hh = torch.zeros_like(w_hh[:, 0]) if b_hh is None else b_hh
                if first_bias is not None and layer == layers[0]:
                    b_ih = b_ih + first_bias.detach()
                self.params += [w_ih, w_hh, b_ih, b_hh]
            else:
                self.params += [w_ih, w_hh]
            if layer == layers[0]:
                self.first_input_bias = b_ih

    def sequence(self, xs: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """Several steps in one call (``adaptrnn.fast.speculate``'s windows).

        xs: (k, n, C) the first layer's inputs; s: (layers, n, K, D) the state before them.
        Returns the last layer's h at each step (k, n, D) and the state after the last (layers, n, K, D).
        """
        out, hx = self.raw(xs, [s[:, :, k].contiguous() for k in range(self.parts)])
        return out, hx[0].unsqueeze(2) if self.parts == 1 else torch.stack(hx, dim=2)

    def raw(self, xs: Tensor, hx: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """The kernel call on ATen's own state layout: hx is [h] or [h, c], each (layers, n, D)
        contiguous. Returns the last layer's h at each step (k, n, D) and the new [h] or [h, c]."""
        args = (self.params, self.has_biases, self.count, 0.0, False, False, False)
        result = KERNELS[self.cell](xs, hx if self.cell == "lstm" else hx[0], *args)
        return result[0], list(result[1:])
