"""compopt: communication-compressed distributed optimizers for JAX and optax."""

from compopt import compressors
from compopt import parallel
from compopt import sampling
from compopt._src.comm import Bits
from compopt._src.comm import CommBits
from compopt._src.comm import comm_bits
from compopt._src.methods.baselines import majority_vote
from compopt._src.methods.baselines import scaled_signsgd
from compopt._src.methods.baselines import signsgd
from compopt._src.methods.baselines import signum
from compopt._src.methods.dcsgd import CompressedMeanState
from compopt._src.methods.dcsgd import compressed_mean
from compopt._src.methods.dcsgd import dcsgd
from compopt._src.methods.dcsgd import psgd
from compopt._src.methods.error_feedback import DoubleSqueezeState
from compopt._src.methods.error_feedback import EF21State
from compopt._src.methods.error_feedback import ErrorFeedbackState
from compopt._src.methods.error_feedback import double_squeeze
from compopt._src.methods.error_feedback import double_squeeze_estimator
from compopt._src.methods.error_feedback import ef21
from compopt._src.methods.error_feedback import ef21_estimator
from compopt._src.methods.error_feedback import ef_sgd
from compopt._src.methods.error_feedback import ef_signsgd
from compopt._src.methods.error_feedback import error_feedback
from compopt.compressors import Compressor

__version__ = "0.1.0"

__all__ = (
    "Bits",
    "CommBits",
    "CompressedMeanState",
    "Compressor",
    "DoubleSqueezeState",
    "EF21State",
    "ErrorFeedbackState",
    "comm_bits",
    "compressed_mean",
    "compressors",
    "dcsgd",
    "double_squeeze",
    "double_squeeze_estimator",
    "ef21",
    "ef21_estimator",
    "ef_sgd",
    "ef_signsgd",
    "error_feedback",
    "majority_vote",
    "parallel",
    "psgd",
    "sampling",
    "scaled_signsgd",
    "signsgd",
    "signum",
)
