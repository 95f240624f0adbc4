"""The native batch-1 Skip RNN loop (``native.c``): compiled on first use, optional.

At batch 1 a Python step costs ~25 tensor operations of a few microseconds each, several
times the arithmetic of the step itself, so skipping steps from Python saves far less than
it should. ``native.c`` runs the whole jump-ahead loop (or one step, for streaming and for
inputs produced on demand) in C. It is compiled once per machine with the system C compiler
(``$CC``, default ``cc``) into ``~/.cache/adaptrnn`` (``$ADAPTRNN_CACHE``); without a compiler,
or with ``ADAPTRNN_NATIVE=0``, everything runs through PyTorch instead, with the same results.

Used for float32 CPU modules at batch 1; equal to the reference to float32 rounding
(sums run in another order; exp is a polynomial with relative error ~2e-7).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..cells import CELLS
from .weights import cached, transposed

SOURCE = Path(__file__).with_name("native.c")
FLAGS = ("-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno")
_float_p = ctypes.POINTER(ctypes.c_float)
_int64_p = ctypes.POINTER(ctypes.c_int64)


class _Net(ctypes.Structure):
    """``Net`` of native.c."""

    _fields_ = [
        ("cell", ctypes.c_int32),
        ("layers", ctypes.c_int32),
        ("input_size", ctypes.c_int32),
        ("hidden", ctypes.c_int32),
        ("w_ih_t", ctypes.POINTER(_float_p)),
        ("w_hh_t", ctypes.POINTER(_float_p)),
        ("b_ih", ctypes.POINTER(_float_p)),
        ("b_hh", ctypes.POINTER(_float_p)),
        ("gate_w", _float_p),
        ("gate_b", ctypes.c_float),
    ]


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled library, or None (no compiler, no source, or ``ADAPTRNN_NATIVE=0``)."""
    if os.environ.get("ADAPTRNN_NATIVE", "1") == "0" or not SOURCE.is_file():
        return None
    compiler = os.environ.get("CC", "cc")
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join((compiler, *FLAGS, _cpu_id())).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("ADAPTRNN_CACHE", Path.home() / ".cache" / "adaptrnn"))
    target = cache / f"native-{key}.so"
    if not target.is_file():
        try:
            cache.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                built = Path(tmp) / target.name
                subprocess.run(
                    [compiler, *FLAGS, str(SOURCE), "-o", str(built), "-lm"],
                    check=True,
                    capture_output=True,
                    timeout=120,
                )
                os.replace(built, target)  # atomic: concurrent first uses do not see a half-written file
        except (OSError, subprocess.SubprocessError) as err:
            warnings.warn(f"adaptrnn: native Skip RNN loop unavailable ({err}); using the PyTorch path", stacklevel=2)
            return None
    lib = ctypes.CDLL(str(target))
    net_p = ctypes.POINTER(_Net)
    lib.stack_step.argtypes = [net_p, _float_p, _float_p, _float_p]
    lib.update_increment.argtypes = [net_p, _float_p]
    lib.update_increment.restype = ctypes.c_float
    lib.skip_run.argtypes = [net_p, _float_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_double, _float_p, _float_p]
    lib.skip_run.argtypes += [_int64_p, _float_p, _float_p]
    lib.skip_run.restype = ctypes.c_int64
    return lib


def _cpu_id() -> str:
    """What ``-march=native`` depends on: the CPU's feature flags (a cache shared by machines stays valid)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next((line for line in lines if line.startswith("flags")), platform.processor())
    except OSError:
        return platform.machine() + platform.processor()


def applies(module, state_cell: Tensor) -> bool:
    """Whether the native loop can run this module and state: float32 on the CPU, batch 1."""
    params = (*module.parameters(), state_cell)
    ok = all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params) and state_cell.shape[1] == 1
    return ok and library() is not None


class NativeNet:
    """A module's weights as the ``Net`` struct of native.c (kept alive with the tensors it points to)."""

    def __init__(self, module) -> None:
        layers = transposed(module)
        gate = getattr(module, "update_weight", None)  # a dense stack has no gate: Δũ is then unused
        self.tensors = [torch.zeros(module.hidden_size) if gate is None else gate.detach().contiguous()]
        arrays = {}
        for name in ("ih", "hh", "b_ih", "b_hh"):
            parts = [getattr(w, name) for w in layers]
            if parts[0] is None:
                arrays[name] = None
                continue
            parts = [p.detach().contiguous() for p in parts]
            self.tensors += parts
            arrays[name] = (_float_p * len(parts))(*(_pointer(p) for p in parts))
        self.arrays = arrays
        null = ctypes.POINTER(_float_p)()
        self.struct = _Net(
            CELLS.index(module.cell),
            module.num_layers,
            module.input_size,
            module.hidden_size,
            arrays["ih"],
            arrays["hh"],
            arrays["b_ih"] if arrays["b_ih"] is not None else null,
            arrays["b_hh"] if arrays["b_hh"] is not None else null,
            _pointer(self.tensors[0]),
            float(getattr(module, "update_bias", 0.0)),
        )
        self.scratch = torch.empty(2 * max(w.hh.shape[1] for w in layers))
        self.ref = ctypes.byref(self.struct)
        self.lib = library()
        self.scratch_p = _pointer(self.scratch)

    def step(self, x: Tensor, cell: Tensor) -> float:
        """One step of the stack for one sequence, in place. x: (I,) or (1, I); cell: (L, 1, K, D).

        Returns Δũ of the new state (eq. 4; meaningless for a dense stack).
        """
        x = x.contiguous()  # a name keeps a copy alive while C reads it
        cell_p = _pointer(cell)
        self.lib.stack_step(self.ref, _pointer(x), cell_p, self.scratch_p)
        return self.lib.update_increment(self.ref, cell_p)


def native_net(module) -> NativeNet:
    """The module's ``NativeNet``, cached until its parameters change."""
    return cached(module, "native", lambda: NativeNet(module))


def skip_run(module, x: Tensor, first: int, end: int, threshold: float, cell: Tensor) -> tuple:
    """The jump-ahead loop for one sequence. x: (T, I); cell: (L, 1, K, D), updated in place.

    Returns the steps (E,) int64 array, the new top-layer h of each update (E, D) and Δũ (E,) array.
    """
    net = native_net(module)
    x = x.contiguous()
    capacity = max(0, end - first)
    steps = np.empty(capacity, dtype=np.int64)
    hidden = torch.empty(capacity, module.hidden_size)
    deltas = np.empty(capacity, dtype=np.float32)
    count = net.lib.skip_run(
        net.ref,
        _pointer(x),
        first,
        end,
        threshold,
        _pointer(cell),
        net.scratch_p,
        steps.ctypes.data_as(_int64_p),
        _pointer(hidden),
        deltas.ctypes.data_as(_float_p),
    )
    return steps[:count], hidden[:count], deltas[:count].astype(np.float64)


def _pointer(t: Tensor):
    if not t.is_contiguous():
        raise ValueError("native loop needs contiguous tensors")
    return ctypes.cast(t.data_ptr(), _float_p)
