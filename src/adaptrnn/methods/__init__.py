"""One file per method; each is the readable reference implementation."""

from .act import ACTRNN
from .dense import DenseRNN
from .sa import SARNN
from .skip import SkipRNN
from .vc import VCRNN

METHODS = {"dense": DenseRNN, "skip": SkipRNN, "act": ACTRNN, "vc": VCRNN, "sa": SARNN}

__all__ = ["ACTRNN", "METHODS", "DenseRNN", "SARNN", "SkipRNN", "VCRNN"]
