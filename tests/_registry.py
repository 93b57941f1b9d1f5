"""One registry of compopt's methods, for the conformance suite
(test_conformance.py: one worker, and n workers under vmap) and the
parallel-modes suite (test_parallel.py: vmap, pmap and shard_map agree).

Each entry is a method and its arguments for n workers (a sampling may depend
on n), without the learning rate and the axis name, which each suite gives.
Every public method of compopt (a public function whose first parameter is
``learning_rate``) has at least one entry, so a new method cannot be left out
(``test_every_public_method_is_registered``).
"""

import inspect

import pytest

import compopt
from compopt import compressors as C

METHODS = {
    "psgd": (compopt.psgd, lambda n: dict(momentum=0.9)),
    "dcsgd": (compopt.dcsgd, lambda n: dict(compressor=C.rand_k(2), key=3)),
    "dcsgd_sampling": (compopt.dcsgd, lambda n: dict(compressor=C.top_k(2), sampling=0.5,
                                                     momentum=0.9)),
    "dcsgd_shared_rand_k_nice": (compopt.dcsgd, lambda n: dict(
        compressor=C.rand_k(2, shared=True), sampling=compopt.sampling.nice(min(3, n)))),
    "dcsgd_induced_per_worker_p": (compopt.dcsgd, lambda n: dict(
        compressor=C.induced(C.top_k(1), C.rand_k_wangni(1)), sampling=[0.5] * n,
        momentum=0.9)),
    "ef_sgd": (compopt.ef_sgd, lambda n: dict(compressor=C.top_k(2), key=1)),
    # The sign methods in both wire forms: sign(0) = 0 in base-3 codes (the
    # default) and zeros sent as +1 in one bit.
    "ef_signsgd": (compopt.ef_signsgd, lambda n: dict()),
    "ef_signsgd_plus": (compopt.ef_signsgd, lambda n: dict(zeros="plus")),
    "signsgd": (compopt.signsgd, lambda n: dict()),
    "signsgd_plus": (compopt.signsgd, lambda n: dict(zeros="plus")),
    "signum": (compopt.signum, lambda n: dict(momentum=0.9)),
    "signum_plus": (compopt.signum, lambda n: dict(momentum=0.9, zeros="plus")),
    "scaled_signsgd": (compopt.scaled_signsgd, lambda n: dict()),
    "scaled_signsgd_plus": (compopt.scaled_signsgd, lambda n: dict(zeros="plus")),
    "ef21": (compopt.ef21, lambda n: dict(compressor=C.natural(), key=2)),
    "double_squeeze": (compopt.double_squeeze, lambda n: dict(
        compressor=C.top_k(2), server_compressor=C.qsgd(4))),
    "diana": (compopt.diana, lambda n: dict(compressor=C.rand_k(2), key=4)),
    "diana_top_k_shift": (compopt.diana, lambda n: dict(compressor=C.natural(),
                                                        shift_compressor=C.top_k(1))),
    "rand_diana": (compopt.rand_diana, lambda n: dict(compressor=C.rand_k(2), p=0.5, key=5)),
    "dcgd_shift_fixed": (compopt.dcgd_shift, lambda n: dict(compressor=C.rand_k(2),
                                                            shift="fixed")),
    "gdci": (compopt.gdci, lambda n: dict(compressor=C.natural(), eta=0.5, key=6)),
    # β's exact in float32, so that inject_hyperparams (float32 arrays) and
    # Python floats give the same 1 − β.
    "comp_ams": (compopt.comp_ams, lambda n: dict(compressor=C.top_k(2), b1=0.75,
                                                  b2=0.9375)),
    "comp_ams_optax": (compopt.comp_ams, lambda n: dict(compressor=C.top_k(2), b1=0.75,
                                                        b2=0.9375, optax_amsgrad=True)),
    "comp_ams_block_sign_keep": (compopt.comp_ams, lambda n: dict(
        compressor=C.block_sign(3, zeros="keep"), b1=0.75, b2=0.9375)),
    # The compressors of other systems: a float16 cast (summed in float16 by
    # one all-reduce), Strom's threshold with error feedback, 1-bit SGD.
    "dcsgd_cast_float16": (compopt.dcsgd, lambda n: dict(
        compressor=C.cast("float16", scale=True), momentum=0.9)),
    "ef_sgd_threshold": (compopt.ef_sgd, lambda n: dict(
        compressor=C.threshold(0.01, max_count=3), key=7)),
    "onebit_sgd": (compopt.onebit_sgd, lambda n: dict(momentum=0.9)),
    # 1-bit Adam / 0/1 Adam past their dense stage within 2 steps; allgather, so
    # that the allreduce scheme gives the same numbers (two_phase compresses per
    # chunk).
    "onebit_adam": (compopt.onebit_adam, lambda n: dict(
        freeze_step=1, b1=0.75, b2=0.9375, scheme="allgather")),
    "zero_one_adam": (compopt.zero_one_adam, lambda n: dict(
        var_freeze_step=1, var_update_scaler=2, b1=0.75, b2=0.9375, scheme="allgather",
        zeros="plus")),
    # PowerSGD rank 2, one dense warm-up step; w (5, 3) is compressed.
    "powersgd": (compopt.powersgd, lambda n: dict(rank=2, min_compression_rate=0.5,
                                                  start_iter=1, key=7)),
    # DGC: a warm-up stage of density 0.67, then top_k 34% of the velocity.
    "dgc": (compopt.dgc, lambda n: dict(compressor=C.top_k(ratio=0.34), warmup=((0.67, 1),),
                                        clip_norm=10.0, key=7)),
    "neolithic": (compopt.neolithic, lambda n: dict(
        compressor=C.scaled(C.rand_k(1), 0.2), rounds=2, server_compressor=C.top_k(2))),
}
# dcgd_shift with shift="star" needs the extra argument optimal_shift= (tested
# in test_shifted.py). gdci compresses the iterates, so its update needs params.
NEEDS_PARAMS = {"gdci"}
NAMES = sorted(METHODS)
# One entry per family, for the default run of the costly checks (each compiles
# several programs per method); the other entries run under `pytest -m slow`.
FAST = ("psgd", "dcsgd_shared_rand_k_nice", "ef_sgd", "diana", "comp_ams", "double_squeeze")
# Arguments that optax.inject_hyperparams must keep static: compressors and
# samplings are callable or objects, and validated structural numbers would
# otherwise become arrays.
STATIC_ARGS = ("compressor", "sampling", "shift_compressor", "server_compressor", "rounds",
               "p", "eta", "warmup", "ratio", "rank", "start_iter", "min_compression_rate",
               "freeze_step", "var_freeze_step", "var_update_scaler")


def params() -> list:
  """Every entry as a pytest parameter, those outside :data:`FAST` marked slow."""
  return [pytest.param(name, marks=() if name in FAST else pytest.mark.slow, id=name)
          for name in NAMES]


def kwargs(name: str, n: int = 1) -> dict:
  """The arguments of entry ``name`` for n workers."""
  return METHODS[name][1](n)


def make(name: str, learning_rate=0.1, *, n: int = 1, **overrides):
  """The method of entry ``name`` for n workers (``overrides``: axis_name,
  scheme, ...)."""
  factory = METHODS[name][0]
  return factory(learning_rate, **{**kwargs(name, n), **overrides})


def public_methods() -> set:
  """Names of compopt's public methods: public functions whose first
  parameter is ``learning_rate``."""
  names = set()
  for name in compopt.__all__:
    obj = getattr(compopt, name)
    if inspect.isfunction(obj):
      params = list(inspect.signature(obj).parameters)
      if params and params[0] == "learning_rate":
        names.add(name)
  return names
