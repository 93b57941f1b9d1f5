"""compopt: communication-compressed distributed optimizers for JAX and optax."""

from compopt import compressors
from compopt.compressors import Compressor

__version__ = "0.1.0"

__all__ = (
    "Compressor",
    "compressors",
)
