"""compopt: communication-compressed distributed optimizers for JAX and optax."""

from compopt import checkpoint
from compopt import compressors
from compopt import exchange
from compopt import parallel
from compopt import sampling
from compopt import theory
from compopt._version import __version__
from compopt._src.averaging import IterateAverageState
from compopt._src.averaging import averaged_params
from compopt._src.averaging import iterate_average
from compopt._src.counters import Bits
from compopt._src.counters import CommBits
from compopt._src.counters import bits_as_float
from compopt._src.counters import comm_bits
from compopt._src.counters import comm_bits_array
from compopt._src.data_parallel import DataParallel
from compopt._src.data_parallel import data_parallel
from compopt._src.hyperparams import inject_hyperparams
from compopt._src.methods.accumulate import AccumulateState
from compopt._src.methods.accumulate import accumulate
from compopt._src.methods.baselines import majority_vote
from compopt._src.methods.baselines import scaled_signsgd
from compopt._src.methods.baselines import signsgd
from compopt._src.methods.baselines import signum
from compopt._src.methods.dcsgd import CompressedMeanState
from compopt._src.methods.dcsgd import compressed_mean
from compopt._src.methods.dcsgd import dcsgd
from compopt._src.methods.dcsgd import psgd
from compopt._src.methods.dgc import DGCState
from compopt._src.methods.dgc import dgc
from compopt._src.methods.error_feedback import DoubleSqueezeEstimatorState
from compopt._src.methods.error_feedback import EF21EstimatorState
from compopt._src.methods.error_feedback import ErrorFeedbackState
from compopt._src.methods.error_feedback import double_squeeze
from compopt._src.methods.error_feedback import double_squeeze_estimator
from compopt._src.methods.error_feedback import ef21
from compopt._src.methods.error_feedback import ef21_estimator
from compopt._src.methods.error_feedback import ef_sgd
from compopt._src.methods.error_feedback import ef_signsgd
from compopt._src.methods.error_feedback import error_feedback
from compopt._src.methods.onebit_adam import OnebitAdamState
from compopt._src.methods.onebit_adam import onebit_adam
from compopt._src.methods.onebit_adam import zero_one_adam
from compopt._src.methods.onebit_sgd import onebit_sgd
from compopt._src.methods.comp_ams import ScaleByCompAmsState
from compopt._src.methods.comp_ams import comp_ams
from compopt._src.methods.comp_ams import scale_by_comp_ams
from compopt._src.methods.comp_ams import worker_error_feedback
from compopt._src.methods.guard import SkipNonfiniteState
from compopt._src.methods.guard import skip_nonfinite
from compopt._src.methods.guard import skipped_steps
from compopt._src.methods.neolithic import neolithic
from compopt._src.methods.powersgd import PowerSGDState
from compopt._src.methods.powersgd import powersgd
from compopt._src.methods.powersgd import powersgd_mean
from compopt._src.methods.powersgd import powersgd_wire_bits
from compopt._src.methods.shifted import GdciState
from compopt._src.methods.shifted import ShiftedCompressionState
from compopt._src.methods.shifted import dcgd_shift
from compopt._src.methods.shifted import diana
from compopt._src.methods.shifted import gdci
from compopt._src.methods.shifted import rand_diana
from compopt._src.methods.shifted import shifted_compression
from compopt._src.partition import partition_by_size
from compopt._src.reshard import reshard_state
from compopt.compressors import Compressor


__all__ = (
    "AccumulateState",
    "Bits",
    "CommBits",
    "CompressedMeanState",
    "DGCState",
    "Compressor",
    "DataParallel",
    "DoubleSqueezeEstimatorState",
    "EF21EstimatorState",
    "ErrorFeedbackState",
    "GdciState",
    "IterateAverageState",
    "OnebitAdamState",
    "PowerSGDState",
    "ScaleByCompAmsState",
    "ShiftedCompressionState",
    "SkipNonfiniteState",
    "accumulate",
    "averaged_params",
    "bits_as_float",
    "checkpoint",
    "comm_bits",
    "comm_bits_array",
    "comp_ams",
    "compressed_mean",
    "compressors",
    "data_parallel",
    "dcgd_shift",
    "dcsgd",
    "dgc",
    "diana",
    "double_squeeze",
    "double_squeeze_estimator",
    "ef21",
    "ef21_estimator",
    "ef_sgd",
    "ef_signsgd",
    "error_feedback",
    "exchange",
    "gdci",
    "inject_hyperparams",
    "iterate_average",
    "majority_vote",
    "neolithic",
    "onebit_adam",
    "onebit_sgd",
    "parallel",
    "partition_by_size",
    "powersgd",
    "powersgd_mean",
    "powersgd_wire_bits",
    "psgd",
    "rand_diana",
    "reshard_state",
    "sampling",
    "scale_by_comp_ams",
    "scaled_signsgd",
    "shifted_compression",
    "signsgd",
    "signum",
    "skip_nonfinite",
    "skipped_steps",
    "theory",
    "worker_error_feedback",
    "zero_one_adam",
)
