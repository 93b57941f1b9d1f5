"""``optax.inject_hyperparams`` for compopt's methods, with the static
arguments found for the user.

``optax.inject_hyperparams(factory, static_args=...)`` turns every numeric
argument into an array of the state and calls every callable one as a
schedule of the step count. compopt's compressors, samplings and schemes are
callable objects, dtypes such as ``jnp.float32`` are callable too, and some
numbers are structural (a count of rounds, a refresh probability validated
when the method is built): passed without ``static_args`` they fail inside
optax (``Compressor.__call__() missing 1 required positional argument``).
:func:`inject_hyperparams` keeps all of those static and injects the rest:
the learning rate, momenta, β's and any schedule given as a plain function.
"""

from __future__ import annotations

import inspect
from typing import Callable, Iterable

import numpy as np
import optax

from compopt._src import schemes
from compopt._src import sampling as sampling_lib
from compopt._src.compressors import base as cbase
from compopt._src.typing import DTypeArg

#: Numbers that shape the method or are validated when it is built: always
#: static.
STRUCTURAL = frozenset({
    "rounds", "p", "eta", "key", "every_k", "max_consecutive_skips", "k", "levels",
    "block_size", "shift", "scheme", "sampling", "ratio", "warmup", "min_compression_rate",
})


def _is_dtype(value) -> bool:
  if isinstance(value, (str, np.dtype)) or isinstance(value, type):
    return True
  try:
    np.dtype(value)
  except TypeError:
    return False
  return not isinstance(value, (int, float, complex, np.number, np.ndarray))


def _injectable(name: str, value) -> bool:
  """Whether ``value`` (the argument ``name``) may become a hyperparameter
  array or a schedule."""
  if name in STRUCTURAL or value is None or isinstance(value, (bool, str, int, np.integer)):
    return False
  if isinstance(value, (cbase.Compressor, sampling_lib.Sampling, schemes.Scheme)):
    return False
  if _is_dtype(value):
    return False
  if isinstance(value, (float, np.floating)):
    return True
  if callable(value):  # a schedule: a plain function of the step count
    return True
  if hasattr(value, "dtype") and np.issubdtype(np.dtype(value.dtype), np.floating):
    return True
  return False


def inject_hyperparams(factory: Callable, *, static_args: str | Iterable[str] = (),
                       hyperparam_dtype: DTypeArg = None) -> Callable:
  """``optax.inject_hyperparams(factory)`` with compopt's static arguments
  kept static.

  Compressors, samplings, schemes, dtypes, bools, ints, strings and the
  structural numbers (:data:`STRUCTURAL`: ``rounds``, ``p``, ``eta`` ...)
  stay Python values; floats, float arrays and schedules (plain functions
  of the step count) become hyperparameters in ``state.hyperparams``, which
  a training loop may read or set under jit::

      opt = compopt.inject_hyperparams(compopt.ef_sgd)(
          learning_rate=0.1, compressor=compopt.compressors.top_k(ratio=0.01),
          axis_name="data", error_dtype=jnp.bfloat16)
      state = opt.init(params)
      state.hyperparams["learning_rate"] = 0.05   # e.g. from a plateau rule

  Args:
    factory: a compopt method (or any optax factory).
    static_args: names to keep static in addition to those found.
    hyperparam_dtype: passed to ``optax.inject_hyperparams``.

  Returns:
    A function taking ``factory``'s arguments and returning the
    transformation.
  """
  if not callable(factory):
    raise TypeError(f"inject_hyperparams: `factory` must be callable; got {factory!r}")
  extra = (static_args,) if isinstance(static_args, str) else tuple(static_args)
  signature = inspect.signature(factory)

  def build(*args, **kwargs):
    try:
      bound = signature.bind(*args, **kwargs)
    except TypeError as e:
      raise TypeError(f"inject_hyperparams({factory.__name__}): {e}") from e
    bound.apply_defaults()  # optax injects numeric and callable defaults too
    static = set(extra) | {name for name, value in bound.arguments.items()
                           if not _injectable(name, value)}
    return optax.inject_hyperparams(factory, static_args=tuple(sorted(static)),
                                    hyperparam_dtype=hyperparam_dtype)(*args, **kwargs)

  return build
