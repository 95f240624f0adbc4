"""The optional native extension: ``src/adaptrnn/fast/native.c``, built by ``pip install``.

It is a plain C shared library (no Python or torch headers used) that
``adaptrnn/fast/native.py`` loads with ctypes. The build is optional: without a working C
compiler the install still succeeds, prints one warning, and the package runs its PyTorch
paths (same results, slower at batch 1). Built with OpenMP (``-fopenmp``) where the compiler
has it, so that the loops can split a step's products over torch's threads, serially where
not. Compiled with ``-march=native`` for the machine that
installs it; set ``ADAPTRNN_PORTABLE=1`` to leave that flag out (e.g. when building a wheel
for other machines). Everything else about the package is in pyproject.toml.
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NATIVE = "adaptrnn.fast._native"


class OptionalNative(build_ext):
    """Build the native loops if a C compiler works; warn once and go on if not."""

    def build_extension(self, ext: Extension) -> None:
        flags = [([], [])]  # (compile arguments, link arguments) to try in order
        if self.compiler.compiler_type == "unix":
            # GNU C (fused multiply-adds allowed; ISO mode forbids them). -fno-wrapv undoes the
            # -fwrapv of Python's CFLAGS, which kept GCC 12 from vectorising exp_f32's int
            # conversion: the batched element-wise cell took 196 us instead of 115 (LSTM, 256 x 110).
            base = ["-O3", "-fno-wrapv", "-fno-math-errno"]
            native = [] if os.environ.get("ADAPTRNN_PORTABLE") else ["-march=native"]
            tries = [base + native, base] if native else [base]  # a compiler without -march=native gets a 2nd try
            # OpenMP threads the per-step products; a compiler without it builds the serial loops
            flags = [(args + omp, omp) for args in tries for omp in (["-fopenmp"], [])]
        errors = []
        for args, link in flags:
            ext.extra_compile_args, ext.extra_link_args = args, link
            try:
                super().build_extension(ext)
                return
            except Exception as err:  # noqa: BLE001  any failure leaves the PyTorch paths, never a failed install
                errors.append(str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__)
        message = (
            "adaptrnn: the native inference loops (src/adaptrnn/fast/native.c) were NOT built "
            f"({'; '.join(errors)}). The package works without them (PyTorch paths, same results, "
            "slower); install a C compiler and reinstall to build them."
        )
        self.warn(message)


setup(
    ext_modules=[
        Extension(
            NATIVE,
            sources=["src/adaptrnn/fast/native.c"],
            depends=[
                f"src/adaptrnn/fast/{name}.h"
                for name in ("native_loops", "native_sa", "native_batch", "native_batch_neurons")
            ],
            libraries=["m"] if os.name == "posix" else [],
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalNative},
)
