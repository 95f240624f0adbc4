"""adaptrnn: recurrent networks that learn to spend less computation."""

from . import fast  # noqa: F401  registers the fast inference paths (adaptrnn.dispatch)
from .layer import RecurrentBase, RecurrentState, Stats, full_computation
from .methods import ACTRNN, METHODS, SARNN, VCRNN, DenseRNN, SkipRNN

__all__ = [
    "ACTRNN",
    "METHODS",
    "SARNN",
    "VCRNN",
    "DenseRNN",
    "RecurrentBase",
    "RecurrentState",
    "SkipRNN",
    "Stats",
    "full_computation",
]
__version__ = "0.1.0"
