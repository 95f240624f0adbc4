"""adaptrnn: recurrent networks that learn to spend less computation."""

from .layer import RecurrentBase, RecurrentState, Stats, full_computation
from .methods.dense import DenseRNN

__all__ = ["DenseRNN", "RecurrentBase", "RecurrentState", "Stats", "full_computation"]
__version__ = "0.1.0"
