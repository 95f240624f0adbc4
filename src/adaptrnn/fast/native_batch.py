"""The native batched inference loops (``native_batch.h``, ``native_batch_neurons.h``).

At batch > 1 every method's whole loop runs in C like the batch-1 loops of :mod:`.native`,
with each step's products in the BLAS that torch itself links: the Fortran ``sgemm_`` /
``dgemm_`` exported by torch's library (MKL in the x86 wheels), found by name and checked once
on a small product (:func:`blas_gemm`). Where torch's library exports none, or the extension
was not built, :func:`batch_applies` is False and the PyTorch loops run.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os

import numpy as np
import torch
from torch import Tensor

from .native import SUFFIX, check, library, native_net, stack_net

BLAS_GEMM = {torch.float32: "sgemm_", torch.float64: "dgemm_"}  # Fortran names, as MKL and OpenBLAS export them


@functools.cache
def blas_gemm(dtype: torch.dtype) -> int | None:
    """The address of the ``?gemm_`` of the BLAS in torch's own library, if it exports one that
    passes ``gemm_probe`` (a small strided product against a plain loop); else None, and the
    batched paths stay in PyTorch. Found by name in the library file, never loaded from elsewhere."""
    lib = library()
    if lib is None or dtype not in BLAS_GEMM:
        return None
    folder = os.path.join(os.path.dirname(torch.__file__), "lib")
    for path in sorted(glob.glob(os.path.join(folder, "libtorch_cpu*"))):
        try:
            address = ctypes.cast(getattr(ctypes.CDLL(path), BLAS_GEMM[dtype]), ctypes.c_void_p).value
        except (OSError, AttributeError):
            continue
        if address and getattr(lib, "gemm_probe" + SUFFIX[dtype])(address):
            return address
    return None


def batch_applies(module, state_cell: Tensor) -> bool:
    """Whether the native batched loops can run: as :func:`applies` at any batch, with torch's BLAS found."""
    dtype = state_cell.dtype
    params = (*module.parameters(), state_cell)
    ok = dtype in SUFFIX and all(p.device.type == "cpu" and p.dtype == dtype for p in params)
    return ok and library() is not None and blas_gemm(dtype) is not None


def skip_rounds(module, x: Tensor, next_t: np.ndarray, ends: np.ndarray, threshold: float, cell: Tensor, out: Tensor):
    """Skip RNN's batched rounds, whole in C (``skip_rounds`` in native_batch.h).

    x: (T, B, I); next_t (B,) float64, each row's first update (inf: none), updated; ends (B,)
    valid lengths; cell (L, B, K, D) contiguous, stepped in place; out (T, B, D) filled.
    Returns the update events' steps and rows (E,) int64 arrays and Δũ (E,) float64 array.
    Needs :func:`batch_applies`.
    """
    if next_t.dtype != np.float64 or not next_t.flags.c_contiguous:
        raise ValueError("next_t must be a contiguous float64 array (the C loop updates it in place)")
    net = stack_net(module)
    seq_len, batch = x.shape[:2]
    ends = np.ascontiguousarray(ends, dtype=np.int64)
    steps, rows = np.empty(seq_len * batch, dtype=np.int64), np.empty(seq_len * batch, dtype=np.int64)
    deltas = x.new_empty(seq_len * batch)
    arrays = (ends.ctypes.data, next_t.ctypes.data)
    count = net.call(
        "skip_rounds", blas_gemm(net.dtype), x.contiguous(), seq_len, batch, *arrays, threshold, cell, out,
        steps.ctypes.data, rows.ctypes.data, deltas,
    )  # fmt: skip
    check(0 if count >= 0 else -1)
    return steps[:count], rows[:count], deltas[:count].double().numpy()


def batch_step(module, x: Tensor, cell: Tensor) -> Tensor:
    """One stack step for every row of ``cell`` (L, n, K, D), contiguous and stepped in place
    (``batch_step`` in native_batch.h). x: (n, I). Returns the rows' Δũ (n,) (Skip RNN's gate;
    zeros' sigmoid, 0.5, for a module without one). Needs :func:`batch_applies`."""
    net = stack_net(module)
    gate = x.new_empty(x.shape[0])
    check(net.call("batch_step", blas_gemm(net.dtype), x.contiguous(), x.shape[0], cell, gate))
    return gate


def vc_batch_layer(module, layer: int, x: Tensor, x_score: Tensor, valid: Tensor | None, s: Tensor) -> tuple:
    """VCRNN's hard-mode loop over one layer for a batch (``vc_batch_run`` in native_batch.h).

    x: (T, B, C); x_score: (T, B) the scheduler's input term; valid: (T, B) bool or None; s:
    (B, K, D) contiguous, updated in place. Returns out (T, B, D), m (T, B) and d (T, B) int64.
    Needs :func:`batch_applies`.
    """
    net = native_net(module)
    seq_len, batch = x.shape[:2]
    out = x.new_empty(seq_len, batch, module.hidden_size)
    ms, ds = x.new_empty(seq_len, batch), torch.empty(seq_len, batch, dtype=torch.int64)
    u = getattr(module, f"scheduler_h_l{layer}").detach().contiguous()
    bias, scale = float(getattr(module, f"scheduler_bias_l{layer}")), float(module.options["scale"])
    mask = None if valid is None else valid.to(torch.uint8).contiguous()
    gemm, x, x_score = blas_gemm(net.dtype), x.contiguous(), x_score.contiguous()
    args = (gemm, layer, x, seq_len, batch, x_score, None if mask is None else mask.data_ptr(), u, bias, scale)
    check(net.call("vc_batch_run", *args, s, out, ms, ds.numpy().ctypes.data))
    return out, ms, ds


def sa_batch_layer(module, layer: int, x: Tensor, gate: tuple[Tensor, Tensor, Tensor], valid: Tensor | None, s: Tensor):
    """SA-RNN's loop over one layer for a batch (``sa_batch_run`` in native_batch_neurons.h).

    x: (T, B, C); gate: a (D,), W_c (D, C) and b_c (D,) of ũ_t = clamp(x_t W_cᵀ + b_c + a ⊙ h, 0, 1)
    (``fast.sa.gate_terms``); valid: (T, B) bool or None; s: (B, K, D) contiguous, updated in place.
    Returns out (T, B, D), the masks u (T, B, D; zero where not valid), Σ_i ũ (T, B) and Σ_i u (T, B).
    Needs :func:`batch_applies`.
    """
    net = native_net(module)
    seq_len, batch = x.shape[:2]
    out, masks = x.new_empty(seq_len, batch, module.hidden_size), x.new_empty(seq_len, batch, module.hidden_size)
    likelihoods, actives = x.new_empty(2, seq_len, batch)
    mask = None if valid is None else valid.to(torch.uint8).contiguous()
    gate_a, gate_w, gate_b = gate[0].contiguous(), gate[1].t().contiguous(), gate[2].contiguous()
    settings = (None if mask is None else mask.data_ptr(), float(module.options["threshold"]))
    args = (blas_gemm(net.dtype), layer, x.contiguous(), seq_len, batch, gate_w, gate_b, gate_a, *settings)
    check(net.call("sa_batch_run", *args, s, out, masks, likelihoods, actives))
    return out, masks, likelihoods, actives


def act_batch(module, x: Tensor, valid: Tensor | None, cell: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """ACT for a batch (``act_batch_run`` in native_batch.h; the halting unit reads the top h).

    x: (T, B, I); valid: (T, B) bool or None; cell: (L, B, K, D) contiguous, updated in place.
    Returns out (T, B, D), N(t) (T, B) and R(t) (T, B), zero where not valid. Needs :func:`batch_applies`.
    """
    net = native_net(module, ("halting_weight", "halting_bias"))
    seq_len, batch = x.shape[:2]
    out, ponders, remainders = x.new_empty(seq_len, batch, module.hidden_size), *x.new_empty(2, seq_len, batch)
    flag = module.flag_weight.detach().contiguous()
    max_steps, threshold = int(module.options["max_steps"]), 1.0 - float(module.options["epsilon"])
    mask = None if valid is None else valid.to(torch.uint8).contiguous()
    args = (blas_gemm(net.dtype), x.contiguous(), seq_len, batch, None if mask is None else mask.data_ptr(), flag)
    check(net.call("act_batch_run", *args, max_steps, threshold, cell, out, ponders, remainders))
    return out, ponders, remainders
