"""The native inference loops (``native.c``): built by ``pip install``, optional.

At batch 1 a Python step costs ~25-35 tensor operations of a few microseconds each, several
times the arithmetic of the step itself, so work left out from Python saves far less than it
should. ``native.c`` runs each method's whole sequence loop in C: Skip RNN's jumps (eq. 6),
VCRNN's upper-left d_t blocks, SA-RNN's active neurons' rows and ACT's ponder steps, plus
one stack step for streaming and for inputs produced on demand. At batch > 1 the same loops
run with their products in the BLAS that torch links (``blas_gemm``; native_batch.h), where
torch's library exports one.

``pip install`` builds it as an optional extension (``setup.py``); where it was not built (no C
compiler at install) one warning says so at first use and everything runs through PyTorch,
with the same results. ``ADAPTRNN_NATIVE=0`` turns it off without a warning.

Threads: built with OpenMP (setup.py detects it), a loop splits each step's products over
``torch.get_num_threads()`` threads, read at every call (``torch.set_num_threads(1)`` gives
the serial loop), when a step has enough multiply-adds to pay for a fork/join (PARALLEL_MIN
in native.c) and the net's timing says threads are faster (the Tuner in native.c: a loaded
machine keeps the loops serial). The split is by whole output columns (Skip, ACT), whole gate blocks (VCRNN) or
whole chunks of 16 active neurons (SA-RNN, products and element-wise cell), so every sum runs
in the same order: results do not depend on it.

Used for float32 and float64 CPU modules at batch 1; float64 equals the reference to float64
rounding, float32 to float32 rounding (sums run in another order; exp is a polynomial with
relative error ~2e-7).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
import warnings

import numpy as np
import torch
from torch import Tensor, nn

from .. import cells
from ..cells import CELLS
from . import weights  # used at call time: weights uses this module too

EXTENSION = "adaptrnn.fast._native"
SUFFIX = {torch.float32: "_f32", torch.float64: "_f64"}
_ptr, _i64, _int, _dbl = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
_pp = ctypes.POINTER(ctypes.c_void_p)
SIGNATURES = {  # name: (argument types, return type); every REAL array is a void pointer
    "stack_step": ([_ptr] * 4, None),
    "update_increment": ([_ptr, _ptr], _dbl),
    "skip_run": ([_ptr, _ptr, _i64, _i64, _dbl, _ptr, _ptr, _ptr, _ptr, _ptr], _i64),
    "vc_run": ([_ptr, _int, _ptr, _i64, _ptr, _ptr, _dbl, _dbl, _ptr, _ptr, _ptr, _ptr], _int),
    "sa_run": ([_ptr, _int, _ptr, _i64, _ptr, _ptr, _dbl, _dbl, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr], _int),
    "act_run": ([_ptr, _ptr, _i64, _ptr, _i64, _dbl, _ptr, _ptr, _ptr, _ptr], _int),
    "pointwise_rows": ([_int, _ptr, _i64, _ptr, _i64, _i64, _int, _ptr, _ptr], None),
    "gemm_probe": ([_ptr], _int),
    "skip_rounds": ([_ptr, _ptr, _ptr, _i64, _i64, _ptr, _ptr, _dbl, _ptr, _ptr, _ptr, _ptr, _ptr], _i64),
    "batch_step": ([_ptr, _ptr, _ptr, _i64, _ptr, _ptr], _int),
    "act_batch_run": ([_ptr, _ptr, _ptr, _i64, _i64, _ptr, _ptr, _i64, _dbl, _ptr, _ptr, _ptr, _ptr], _int),
    "sa_batch_run": ([_ptr, _ptr, _int, _ptr, _i64, _i64, *[_ptr] * 4, _dbl, *[_ptr] * 5], _int),
    "vc_batch_run": ([_ptr, _ptr, _int, _ptr, _i64, _i64, _ptr, _ptr, _ptr, _dbl, _dbl, _ptr, _ptr, _ptr, _ptr], _int),
}


class _Net(ctypes.Structure):
    """``Net`` of native.c."""

    _fields_ = [
        ("cell", ctypes.c_int32),
        ("layers", ctypes.c_int32),
        ("input_size", ctypes.c_int32),
        ("hidden", ctypes.c_int32),
        ("w_ih_t", _pp),
        ("w_hh_t", _pp),
        ("b_ih", _pp),
        ("b_hh", _pp),
        ("gate_w", _ptr),
        ("gate_b", _dbl),
        ("threads", ctypes.c_int32),
        ("tuner", _ptr),
    ]


@functools.cache
def library() -> ctypes.CDLL | None:
    """The library built at install, or None (not built, or ``ADAPTRNN_NATIVE=0``), warning once."""
    if os.environ.get("ADAPTRNN_NATIVE", "1") == "0":
        return None
    reason = "it was not built when the package was installed (no C compiler?)"
    try:
        spec = importlib.util.find_spec(EXTENSION)
        lib = ctypes.CDLL(spec.origin) if spec is not None and spec.origin else None
        for name, (args, result) in SIGNATURES.items():
            for suffix in SUFFIX.values() if lib is not None else ():
                function = getattr(lib, name + suffix)
                function.argtypes, function.restype = args, result
        if lib is not None:
            for name in ("native_openmp", "native_tuner_size", "native_sa_pad"):
                getattr(lib, name).argtypes, getattr(lib, name).restype = [], _int
    except OSError as err:
        lib, reason = None, f"it could not be loaded ({err})"
    except AttributeError as err:  # an extension built from an older native.c (editable install, not rebuilt)
        lib, reason = None, f"it is out of date ({err}); reinstall the package"
    if lib is None:
        warnings.warn(
            f"adaptrnn: the native inference loops are unavailable: {reason}. Inference runs in "
            "PyTorch (same results, slower); reinstall with a C compiler to build them.",
            stacklevel=3,
        )
        return None
    return lib


def threads() -> int:
    """The threads the native loops use now: torch's thread count if built with OpenMP, else 1."""
    lib = library()
    return torch.get_num_threads() if lib is not None and lib.native_openmp() else 1


def applies(module, state_cell: Tensor) -> bool:
    """Whether the native loops can run this module and state: float32 or float64 on the CPU, batch 1."""
    dtype = state_cell.dtype
    params = (*module.parameters(), state_cell)
    ok = dtype in SUFFIX and all(p.device.type == "cpu" and p.dtype == dtype for p in params)
    return ok and state_cell.shape[1] == 1 and library() is not None


class NativeNet:
    """A module's weights as the ``Net`` struct of native.c (kept alive with the tensors it points to).

    ``gate`` names the module's (D,) gate weight read by the C gate (Skip RNN's ``update_weight``,
    ACT's ``halting_weight``) and its bias parameter; None for none.
    """

    def __init__(self, module, gate: tuple[str, str] | None = None) -> None:
        layers = weights.transposed(module)
        self.dtype = layers[0].ih.dtype
        self.lib = library()
        self.tensors: list[Tensor] = []
        arrays = {}
        columns = {
            "w_ih_t": [w.ih for w in layers],
            "w_hh_t": [w.hh for w in layers],
            "b_ih": [w.b_ih for w in layers],
            "b_hh": [w.b_hh for w in layers],
        }
        for name, parts in columns.items():
            if parts[0] is None:
                arrays[name] = _pp()  # NULL: no bias
                continue
            parts = [p.detach().contiguous() for p in parts]
            self.tensors += parts
            arrays[name] = (ctypes.c_void_p * len(parts))(*(p.data_ptr() for p in parts))
        self.arrays = arrays
        if gate is None:  # no gate: a zero one, so that update_increment stays safe to call
            gate_w, gate_b = torch.zeros(module.hidden_size, dtype=self.dtype), 0.0
        else:
            gate_w, gate_b = getattr(module, gate[0]).detach().contiguous(), float(getattr(module, gate[1]))
        self.tensors.append(gate_w)
        # native.c's Tuner (zeroed: set up at first use): whether threads pay, timed over calls
        self.tuner = ctypes.create_string_buffer(self.lib.native_tuner_size())
        self.struct = _Net(
            CELLS.index(module.cell),
            module.num_layers,
            module.input_size,
            module.hidden_size,
            *(ctypes.cast(arrays[n], _pp) for n in columns),
            gate_w.data_ptr(),
            gate_b,
            0,
            ctypes.addressof(self.tuner),
        )
        self.scratch_size = 2 * max(w.hh.shape[1] for w in layers)  # floats of the C step's work space
        self.sa_packed: list[tuple[Tensor, Tensor]] | None = None  # SA-RNN's rows, built at first use

    def scratch(self) -> Tensor:
        """A fresh work space per call: C releases the GIL, so threads must not share one."""
        return torch.empty(self.scratch_size, dtype=self.dtype)

    def call(self, name: str, *args):
        """The C function ``name`` for this net's precision; tensors are passed as pointers.

        The loop gets torch's current thread count in a copy of the struct (so a thread that
        changes it, or two threads calling at once, never see each other's count).
        """
        function = getattr(self.lib, name + SUFFIX[self.dtype])
        struct = _Net.from_buffer_copy(self.struct)
        struct.threads = torch.get_num_threads()
        pointers = [_pointer(a, self.dtype) if isinstance(a, Tensor) else a for a in args]  # `args` keeps them alive
        return function(ctypes.byref(struct), *pointers)

    def step(self, x: Tensor, cell: Tensor) -> float:
        """One step of the stack for one sequence, in place. x: (I,) or (1, I); cell: (L, 1, K, D).

        Returns Δũ of the new state (eq. 4; meaningless without a gate).
        """
        x = x.contiguous()  # a name keeps a copy alive while C reads it
        self.call("stack_step", x, cell, self.scratch())
        return self.call("update_increment", cell)


def native_net(module, gate: tuple[str, str] | None = None) -> NativeNet:
    """The module's ``NativeNet``, cached until its parameters change."""
    return weights.cached(module, f"native_{gate}", lambda: NativeNet(module, gate))


def stack_net(module) -> NativeNet:
    """The ``NativeNet`` for single stack steps: Skip RNN's with its gate (Δũ), a dense stack's without."""
    return native_net(module, ("update_weight", "update_bias") if hasattr(module, "update_weight") else None)


def skip_run(module, x: Tensor, first: int, end: int, threshold: float, cell: Tensor) -> tuple:
    """Skip RNN's jump-ahead loop for one sequence. x: (T, I); cell: (L, 1, K, D), updated in place.

    Returns the steps (E,) int64 array, the new top-layer h of each update (E, D) and Δũ (E,) array.
    """
    net = stack_net(module)
    x = x.contiguous()
    capacity = max(0, end - first)
    steps = np.empty(capacity, dtype=np.int64)
    hidden = torch.empty(capacity, module.hidden_size, dtype=net.dtype)
    deltas = torch.empty(capacity, dtype=net.dtype)
    count = net.call("skip_run", x, first, end, threshold, cell, net.scratch(), steps.ctypes.data, hidden, deltas)
    return steps[:count], hidden[:count], deltas[:count].double().numpy()


def vc_layer(module, layer: int, x: Tensor, steps: int, x_score: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """VCRNN's hard-mode loop over one layer for one sequence (see ``vc_run`` in native_loops.h).

    x: (T, C); x_score: (T,) the scheduler's input term; s: (K, D) contiguous, updated in place.
    Runs the first ``steps`` steps; returns out (T, D), m (T) and d (T) int64, zero after ``steps``.
    """
    net = native_net(module)
    seq_len, size = x.shape[0], module.hidden_size
    out = x.new_zeros(seq_len, size)
    ms, ds = x.new_zeros(seq_len), torch.zeros(seq_len, dtype=torch.int64)
    u = getattr(module, f"scheduler_h_l{layer}").detach().contiguous()
    bias = float(getattr(module, f"scheduler_bias_l{layer}"))
    scale = float(module.options["scale"])
    x, x_score = x.contiguous(), x_score.contiguous()
    check(net.call("vc_run", layer, x, steps, x_score, u, bias, scale, s, out, ms, ds.numpy().ctypes.data))
    return out, ms, ds


def sa_packed(module) -> list[tuple[Tensor, Tensor]]:
    """Every layer's cell weights packed for ``sa_run`` (native_sa.h); kept with the module's
    ``NativeNet`` (so rebuilt with it when a parameter changes).

    Per layer (rows, bias): rows (D, G*(cp + dp)), neuron i's G rows of W_ih each zero-padded
    to cp = C rounded up to native.c's SA_PAD, then its G rows of W_hh padded to dp, so that an
    active neuron's weights are one contiguous block; bias (D, 8): b_ih of its gates at 0..G-1,
    b_hh at 4..4+G-1, zeros elsewhere (all zero without biases).
    """

    def build() -> list[tuple[Tensor, Tensor]]:
        pad, gates, size = library().native_sa_pad(), cells.GATES[module.cell], module.hidden_size
        packed = []
        for layer in range(module.num_layers):
            w_ih, w_hh, b_ih, b_hh = (None if w is None else w.detach() for w in module.layer_weights(layer))
            blocks = []
            for w in (w_ih, w_hh):
                columns = w.shape[1]
                rows = w.view(gates, size, columns).transpose(0, 1)  # (D, G, C): neuron-major
                blocks.append(nn.functional.pad(rows, (0, -columns % pad)).reshape(size, -1))
            bias = w_ih.new_zeros(size, 8)
            for offset, b in ((0, b_ih), (4, b_hh)):
                if b is not None:
                    bias[:, offset : offset + gates] = b.view(gates, size).t()
            packed.append((torch.cat(blocks, 1).contiguous(), bias))
        return packed

    net = native_net(module)
    if net.sa_packed is None:
        net.sa_packed = build()
    return net.sa_packed


def sa_layer(module, layer: int, x: Tensor, steps: int, gate_x: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """SA-RNN's loop over one layer for one sequence (see ``sa_run`` in native_sa.h).

    x: (T, C); gate_x: (T, D) = W_i x_t + b; s: (K, D) contiguous, updated in place. Runs the
    first ``steps`` steps; returns out (T, D), the mask u (T, D) and Σ_i ũ (T), zero after ``steps``.
    """
    net = native_net(module)
    rows, bias = (net.sa_packed or sa_packed(module))[layer]
    seq_len, size = x.shape[0], module.hidden_size
    out, mask, likelihood = x.new_empty(seq_len, size), x.new_empty(seq_len, size), x.new_empty(seq_len)
    if steps < seq_len:  # C writes the first `steps` rows
        out[steps:], mask[steps:], likelihood[steps:] = 0, 0, 0
    diag = getattr(module, f"update_weight_hh_l{layer}").detach().contiguous()
    slope, threshold = float(module.slope), float(module.options["threshold"])
    x, gate_x = x.contiguous(), gate_x.contiguous()
    args = (layer, x, steps, gate_x, diag, slope, threshold, rows, bias, s, out, mask, likelihood)
    check(net.call("sa_run", *args))
    return out, mask, likelihood


def act_loop(module, gx0: Tensor, steps: int, cell: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """ACT's ponder loop for one sequence (see ``act_run`` in native_loops.h).

    gx0: (T, G*D) layer 0's input projection; cell: (L, K, D) contiguous, updated in place.
    Runs the first ``steps`` steps; returns out (T, D), N(t) (T) and R(t) (T), zero after ``steps``.
    """
    net = native_net(module, ("halting_weight", "halting_bias"))
    seq_len = gx0.shape[0]
    out, ponders, remainders = gx0.new_zeros(seq_len, module.hidden_size), *gx0.new_zeros(2, seq_len)
    flag = module.flag_weight.detach().contiguous()
    max_steps, threshold = int(module.options["max_steps"]), 1.0 - float(module.options["epsilon"])
    check(net.call("act_run", gx0.contiguous(), steps, flag, max_steps, threshold, cell, out, ponders, remainders))
    return out, ponders, remainders


def check(status: int) -> None:
    """Raise if a C loop could not allocate its work space (status -1)."""
    if status != 0:
        raise MemoryError("the native loop could not allocate its buffers")


def _pointer(t: Tensor, dtype: torch.dtype) -> int:
    if not t.is_contiguous() or t.dtype != dtype:
        raise ValueError(f"native loop needs contiguous {dtype} tensors, got {t.dtype}")
    return t.data_ptr()


def pointwise(cell: str, gx: Tensor, gh: Tensor | None, s: Tensor) -> Tensor:
    """``cells.pointwise`` in one native call where it can (CPU, float32 / float64, rows contiguous).

    gx, gh: (n, G*D); gh None (RNN and LSTM only): gx is the summed pre-activation
    ``gx + gh``. s: (n, K, D) -> (n, K, D). Falls back to ``cells.pointwise`` otherwise.
    """
    if gh is None and cell == "gru":
        raise ValueError("the GRU's candidate needs its hidden projection apart: gh is required")
    dtype, lib = s.dtype, library()
    usable = (
        lib is not None
        and dtype in SUFFIX
        and s.device.type == "cpu"
        and gx.dtype == dtype
        and gx.stride(-1) == 1
        and (gh is None or (gh.dtype == dtype and gh.stride(-1) == 1))
    )
    if not usable:
        return cells.pointwise(cell, gx, torch.zeros_like(gx) if gh is None else gh, s)
    s = s.contiguous()
    out = torch.empty_like(s)
    function = getattr(lib, "pointwise_rows" + SUFFIX[dtype])
    n, d = s.shape[0], s.shape[2]
    rows = (gx.data_ptr(), gx.stride(0), None if gh is None else gh.data_ptr(), 0 if gh is None else gh.stride(0))
    function(CELLS.index(cell), *rows, n, d, s.data_ptr(), out.data_ptr())
    return out
