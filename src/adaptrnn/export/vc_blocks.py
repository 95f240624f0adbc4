"""VCRNN's recurrent product on the upper-left block of W_hh, without copying weights at run time.

Cutting a d_t × d_t block out of W_hh with a runtime bound is a ``Slice``, and ONNX Runtime
materialises every Slice: a copy of the block on every step, which costs about as much as
the product it saves. Instead the blocks of eight sizes ``ceil(k·D/8)``, k = 1..8, are stored
once (about 3.2 times W_hh in all), and a binary tree of conditionals (three nested ONNX
``If``) picks the smallest block that covers d_t. A step then multiplies a block of at most
``d_t + D/8`` rows and columns; h beyond d_t is zero (the mask e_t), so the extra columns add
nothing, and the extra rows are dropped.
"""

# No ``from __future__ import annotations``: TorchScript reads the annotations as real types.
import math

import torch
from torch import Tensor, nn

LEVELS = 8


class BlockProduct(nn.Module):
    """gh = e_t ⊙ h_{t-1} times the upper-left blocks of W_hh, plus b_hh, for the first ``top`` dimensions.

    Buffers ``w0`` .. ``w7``: (G, L_k, L_k) the transposed blocks (rows = input dimension),
    ``bias`` (G, D). ``l0`` .. ``l7`` are the sizes L_k (non-decreasing, L_7 = D).
    """

    l0: int
    l1: int
    l2: int
    l3: int
    l4: int
    l5: int
    l6: int

    def __init__(self, w_hh: Tensor, b_hh: Tensor, gates: int, hidden: int) -> None:
        super().__init__()
        blocks = w_hh.reshape(gates, hidden, hidden).transpose(1, 2)  # (G, D_in, D_out)
        sizes = [math.ceil(k * hidden / LEVELS) for k in range(1, LEVELS + 1)]
        for k, size in enumerate(sizes):
            self.register_buffer(f"w{k}", blocks[:, :size, :size].contiguous().clone())
            if k < LEVELS - 1:
                setattr(self, f"l{k}", size)
        self.register_buffer("bias", b_hh.reshape(gates, hidden).clone())

    def forward(self, masked_h: Tensor, top: int) -> Tensor:
        """masked_h: (B, D), zero beyond each example's d_t; top: max d_t -> gh (B, G, top)."""
        # A binary search over the eight sizes: three nested conditionals. Each leaf does its own
        # product, so a branch returns the small gh, never a weight (which would be copied out).
        if top <= self.l3:
            if top <= self.l1:
                if top <= self.l0:
                    gh = self.product(masked_h, self.w0)
                else:
                    gh = self.product(masked_h, self.w1)
            elif top <= self.l2:
                gh = self.product(masked_h, self.w2)
            else:
                gh = self.product(masked_h, self.w3)
        elif top <= self.l5:
            if top <= self.l4:
                gh = self.product(masked_h, self.w4)
            else:
                gh = self.product(masked_h, self.w5)
        elif top <= self.l6:
            gh = self.product(masked_h, self.w6)
        else:
            gh = self.product(masked_h, self.w7)
        return (gh[:, :, :top] + self.bias[:, :top].unsqueeze(1)).permute(1, 0, 2)

    def product(self, masked_h: Tensor, w: Tensor) -> Tensor:
        """(B, D) times one stored block (G, L, L) -> (G, B, L)."""
        return torch.matmul(masked_h[:, : w.shape[1]].unsqueeze(0), w)
