"""Execution paths that turn counted savings into saved time; each is tested to give the
outputs of the reference implementation in ``adaptrnn.methods``.

- ``skip``: Skip RNN jumps from update to update (eq. 6), gathering only the due rows;
  inputs can be produced on demand, so skipped inputs are never read.
- ``vc``: VCRNN hard mode multiplies only the upper-left d_t × d_t blocks.
- ``sa``: SA-RNN multiplies only the rows of the neurons that update.
- ``act``: ACT drops halted rows from the ponder loop.
- ``native``: at batch 1 every method's whole loop runs in C (``native.c``, built by
  ``pip install``; PyTorch where it was not built).
- ``stream``: batch-1 step-by-step use with kept state.
- ``speculate``: in the batched Skip, VC, SA and ACT paths, runs of steps at which every row
  computes everything go through one ATen whole-sequence call (a speculative window whose
  decisions are checked afterwards); the per-step loops run at one thread when a step is small.

Dependencies run one way: these paths import the methods, never the reverse. Importing this
package registers each path with ``adaptrnn.dispatch``, which ``RecurrentBase.forward`` asks:
a method takes its fast path by default where it applies (eval mode, no autograd, no
``full_computation``); the option ``impl="reference"`` forces the readable loop.
"""

from __future__ import annotations

from ..dispatch import register, use_fast
from ..methods import ACTRNN, SARNN, VCRNN, SkipRNN
from . import act, sa, skip, vc


def _skip_forward(module, x, state, valid):
    return skip.skip_forward(module, x, x.shape[0], x.shape[1], state, valid)


# Looked up at call time (``module.function``), so that a replaced function is the one called.
register(SkipRNN, _skip_forward, applies=lambda m: type(m).binarize is SkipRNN.binarize)  # jumps need the fixed gate
register(VCRNN, lambda *args: vc.vc_forward(*args), applies=lambda m: m.is_hard)
register(SARNN, lambda *args: sa.sa_forward(*args))
register(ACTRNN, lambda *args: act.act_forward(*args))

__all__ = ["use_fast"]
