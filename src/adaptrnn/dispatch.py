"""Which implementation a module's call runs: its readable reference loop or a fast path.

Dependencies run one way. Each method in ``adaptrnn.methods`` writes only its reference loop
(``_forward``) and knows nothing of ``adaptrnn.fast``; the fast inference paths import the
methods and register themselves here (``adaptrnn.fast`` does so when the package is imported).
``RecurrentBase.forward`` asks :func:`run`, which takes a registered path where it applies and
the module's ``_forward`` otherwise. This module imports nothing else from the package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

IMPLS = ("auto", "reference", "fast")

# (module, x (T, B, I) time-major, state, valid (T, B) bool or None) -> (out, state, stats),
# exactly what the module's ``_forward`` returns.
Forward = Callable[[Any, Tensor, Any, Tensor | None], tuple]


@dataclass
class FastPath:
    """A registered fast inference path: ``forward`` and the method's own condition ``applies``
    (e.g. VCRNN's hard mode), checked on top of eval mode / no autograd / no full computation."""

    owner: type
    forward: Forward
    applies: Callable[[Any], bool]


PATHS: dict[type, FastPath] = {}


def register(cls: type, forward: Forward, applies: Callable[[Any], bool] = lambda module: True) -> None:
    """Make ``forward`` the fast inference path of ``cls`` (and of subclasses that keep its loop)."""
    PATHS[cls] = FastPath(cls, forward, applies)


def fast_path(module: nn.Module) -> FastPath | None:
    """The path registered for the module's class or its nearest registered base, if the module
    still runs that base's loop (a subclass that overrides ``_forward`` changes the method)."""
    for cls in type(module).__mro__:
        path = PATHS.get(cls)
        if path is not None:
            return path if type(module)._forward is cls._forward else None
    return None


def use_fast(module: nn.Module, applicable: bool = True) -> bool:
    """Whether a call takes the fast inference path.

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


def run(module: nn.Module, x: Tensor, state: Any, valid: Tensor | None) -> tuple:
    """The module's fast path where one is registered and applies, else its reference ``_forward``."""
    path = fast_path(module)
    if path is not None and use_fast(module, applicable=path.applies(module)):
        return path.forward(module, x, state, valid)
    return module._forward(x, state, valid)
