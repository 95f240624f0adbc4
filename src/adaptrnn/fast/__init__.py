"""Execution paths that turn counted savings into saved time; each is tested to give the
outputs of the reference implementation in ``adaptrnn.methods``.

- ``skip``: Skip RNN jumps from update to update (eq. 6), gathering only the due rows;
  inputs can be produced on demand, so skipped inputs are never read. At batch 1 the loop
  runs in C (``native``: ``native.c`` compiled on first use, PyTorch if no compiler).
- ``vc``: VCRNN hard mode multiplies only the upper-left d_t × d_t blocks.
- ``sa``: SA-RNN multiplies only the rows of the neurons that update.
- ``act``: ACT drops halted rows from the ponder loop.
- ``dense``: dense stacks through ATen's fused kernels.
- ``stream``: batch-1 step-by-step use with kept state.

Every method takes its fast path by default when it applies (eval mode, no autograd, no
``full_computation``); the option ``impl="reference"`` forces the readable loop.
"""

from __future__ import annotations

import torch
from torch import nn

IMPLS = ("auto", "reference", "fast")


def use_fast(module: nn.Module, applicable: bool = True) -> bool:
    """Whether a method's ``_forward`` takes its fast inference path.

    ``impl="auto"`` (default): in eval mode, without autograd and outside ``full_computation``
    (and where the method's own condition ``applicable`` holds, e.g. VCRNN's hard mode).
    ``impl="reference"``: never. ``impl="fast"``: always, an error where it cannot apply.
    """
    impl = module.options.get("impl", "auto")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    if impl == "reference":
        return False
    applies = applicable and not module.training and not torch.is_grad_enabled() and not module.full_computation
    if impl == "fast" and not applies:
        raise ValueError(
            f"{type(module).__name__}: impl='fast' is inference only (eval mode, torch.no_grad(), "
            "not under full_computation, and VCRNN in hard mode)"
        )
    return applies
