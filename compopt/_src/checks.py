"""Argument checks shared by the whole library.

Every factory validates its arguments when it is called, so a bad value is
reported where the user wrote it, with the parameter's name and the allowed
range. All checking machinery lives here (as chex keeps its own in
``asserts_internal.py``); this module imports nothing from compopt, so every
layer can use it.

Each check takes ``name`` (the parameter) and ``owner`` (the public function
the user called) and raises ``TypeError`` for a value of the wrong kind and
``ValueError`` for one out of range.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

_NUMBER = (int, float, np.integer, np.floating)


def is_traced(value) -> bool:
  """Whether ``value`` is a tracer (e.g. a hyperparameter made an array by
  ``optax.inject_hyperparams``), which cannot be checked when it is built."""
  return isinstance(value, jax.core.Tracer)


# --------------------------------------------------------------------- numbers


def check_bool(value, name: str, owner: str) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{owner}: `{name}` must be True or False; got {value!r}")
  return bool(value)


def check_int(value, name: str, owner: str, *, lo: int = 1, hi: int | None = None) -> int:
  """An integer in [lo, hi] (no upper bound when ``hi`` is None)."""
  allowed = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{owner}: `{name}` must be an integer {allowed}; got {value!r}")
  if value < lo or (hi is not None and value > hi):
    raise ValueError(f"{owner}: `{name}` must be an integer {allowed}; got {value}")
  return int(value)


def check_workers(n, owner: str, what: str = "the number of workers") -> int:
  """A number of workers: an int >= 1."""
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"{owner}: `n` must be an int >= 1 ({what}); got {n!r}")
  return int(n)


def check_real(value, name: str, owner: str, *, lo: float | None = None,
               hi: float | None = None, lo_open: bool = False,
               hi_open: bool = False) -> float:
  """A finite real number in the interval given by ``lo``/``hi``, as a float."""
  left = "(" if lo_open or lo is None else "["
  right = ")" if hi_open or hi is None else "]"
  interval = (f"{left}{'-inf' if lo is None else f'{lo:g}'}, "
              f"{'inf' if hi is None else f'{hi:g}'}{right}")
  if isinstance(value, bool) or not isinstance(value, _NUMBER):
    raise TypeError(f"{owner}: `{name}` must be a real number in {interval}; got {value!r}")
  value = float(value)
  ok = math.isfinite(value)
  if ok and lo is not None:
    ok = value > lo if lo_open else value >= lo
  if ok and hi is not None:
    ok = value < hi if hi_open else value <= hi
  if not ok:
    raise ValueError(f"{owner}: `{name}` must be in {interval}; got {value}")
  return value


def _check_unit(value, name: str, owner: str, number: str, in_range: str) -> float:
  if isinstance(value, bool) or not isinstance(value, _NUMBER):
    raise TypeError(f"{owner}: `{name}` must {number} in (0, 1]; got {value!r}")
  value = float(value)
  if not 0.0 < value <= 1.0:
    raise ValueError(f"{owner}: `{name}` must {in_range} in (0, 1]; got {value}")
  return value


def check_fraction(value, name: str, owner: str) -> float:
  """A number in (0, 1], as a float."""
  return _check_unit(value, name, owner, "be a number", "be")


def check_probability(p, name: str, owner: str) -> float:
  """One probability in (0, 1] of an argument that may hold several."""
  return _check_unit(p, name, owner, "hold numbers", "hold probabilities")


def check_omega(value, owner: str, name: str = "omega") -> float:
  """ω of an unbiased compressor class U(ω): a finite real >= 0."""
  return check_real(value, name, owner, lo=0.0)


def check_delta(value, owner: str, name: str = "delta") -> float:
  """δ of a contractive compressor class B(δ): a real in (0, 1]."""
  return check_real(value, name, owner, lo=0.0, hi=1.0, lo_open=True)


def _as_float(value, name: str, owner: str, allowed: str) -> float:
  """``float(value)`` of a number (also a NumPy or JAX scalar), else a TypeError."""
  if isinstance(value, (bool, str, bytes)):
    raise TypeError(f"{owner}: `{name}` must be {allowed}; got {value!r}")
  try:
    return float(value)
  except (TypeError, ValueError):
    raise TypeError(f"{owner}: `{name}` must be {allowed}; got {value!r}") from None


def check_interval(value, name: str, owner: str, low: float, high: float, *,
                   low_open: bool = False, high_open: bool = False,
                   allow_none: bool = False):
  """A hyperparameter in the interval, returned unchanged; traced values
  (``optax.inject_hyperparams``) pass, as they cannot be checked here."""
  lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
  if high == float("inf"):
    range_ = f"{'>' if low_open else '>='} {low:g}"
  else:
    range_ = f"in {lo}{low:g}, {high:g}{hi}"
  range_ += " or None" if allow_none else ""
  allowed = "a number " + range_
  if value is None and allow_none:
    return None
  if is_traced(value):
    return value
  v = _as_float(value, name, owner, allowed)
  ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
  if not ok:
    raise ValueError(f"{owner}: `{name}` must be {range_}; got {value!r}")
  return value


def check_learning_rate(value, owner: str):
  """A finite number >= 0 or an optax schedule (a callable), unchanged."""
  if callable(value) or is_traced(value):
    return value
  allowed = "a finite number >= 0 or an optax schedule (a callable of the step)"
  v = _as_float(value, "learning_rate", owner, allowed)
  if not (np.isfinite(v) and v >= 0):
    raise ValueError(f"{owner}: `learning_rate` must be {allowed}; got {value!r}")
  return value


# ---------------------------------------------------------- names and dtypes


def check_axis_name(axis_name, owner: str):
  if axis_name is not None and not isinstance(axis_name, (str, tuple)):
    raise TypeError(f"{owner}: `axis_name` must be a str (or None); got {axis_name!r}")
  return axis_name


def resolve_dtype(value, name: str, owner: str):
  """A dtype argument (``jnp.float32``, ``"bfloat16"``, ``np.float32``...) as a
  NumPy floating dtype, or None.

  ``optax.inject_hyperparams`` takes callables for schedules, so it turns a
  scalar type such as ``jnp.float32`` into an array made by calling it; that
  array's dtype is the dtype that was meant, and is what is used.
  """
  if value is None:
    return None
  if getattr(value, "shape", None) == () and hasattr(value, "dtype"):
    value = value.dtype
  allowed = "a floating dtype (float16, bfloat16, float32 or float64) or None"
  try:
    dtype = np.dtype(value)
  except TypeError:
    raise TypeError(f"{owner}: `{name}` must be {allowed}; got {value!r}") from None
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"{owner}: `{name}` must be {allowed}; got {dtype}")
  return dtype


# ------------------------------------------------------------------ keys


def _typed_key(key) -> bool:
  dtype = getattr(key, "dtype", None)
  return (dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
          and getattr(key, "shape", None) == ())


def _raw_key(key) -> bool:
  dtype = getattr(key, "dtype", None)
  return (dtype is not None and not jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
          and np.dtype(dtype) == np.uint32 and tuple(getattr(key, "shape", ())) == (2,))


def _seed(key) -> bool:
  """An int seed, or a scalar number array (a seed made an array by
  ``optax.inject_hyperparams``)."""
  if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
    return True
  dtype = getattr(key, "dtype", None)
  return (dtype is not None and getattr(key, "shape", None) == ()
          and not jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
          and (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)))


def check_key(key, owner: str, *, seed: bool = False, required: bool = True):
  """A PRNG key argument, returned unchanged.

  Accepted: a scalar ``jax.random.key(...)`` or a uint32[2]
  ``jax.random.PRNGKey(...)``; with ``seed=True`` (a method's ``key=``, turned
  into a key by :func:`prng_key`) also an int seed, and traced values pass;
  with ``required=False`` (a deterministic compressor) also None.
  """
  if key is None and not seed:
    if not required:
      return None
    raise TypeError(
        f"{owner} is randomized: `key` must be a jax.random.key(...) or a "
        "jax.random.PRNGKey(...), got None")
  if seed and (is_traced(key) or _seed(key)):
    return key
  if _typed_key(key) or _raw_key(key):
    return key
  if seed:
    raise TypeError(
        f"{owner}: `key` must be an int seed, a scalar jax.random.key(...) or a "
        f"uint32[2] jax.random.PRNGKey(...); got {key!r}")
  raise TypeError(
      f"{owner}: `key` must be a scalar jax.random.key(...) or a uint32[2] "
      f"jax.random.PRNGKey(...); got {type(key).__name__} with shape "
      f"{getattr(key, 'shape', None)} and dtype {getattr(key, 'dtype', None)}")


def prng_key(key, owner: str) -> jax.Array:
  """A method's ``key=`` argument (checked by :func:`check_key` with
  ``seed=True``) as a raw uint32[2] key, the form every optax wrapper can
  carry and select."""
  check_key(key, owner, seed=True)
  if _typed_key(key):
    return jax.random.key_data(key).astype(jnp.uint32)
  if _raw_key(key):
    return jnp.asarray(key)
  if isinstance(key, (int, np.integer)):
    return jax.random.PRNGKey(int(key))
  return jax.random.PRNGKey(jnp.asarray(key).astype(jnp.int32))


# ------------------------------------------------------------------ arrays


def check_array(x, owner: str):
  """A floating-point array (float16/bfloat16/float32/float64), as an array."""
  if not (hasattr(x, "shape") and hasattr(x, "dtype")):
    x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(
        f"{owner}: `x` must have a floating-point dtype (float16, bfloat16, "
        f"float32 or float64); got {x.dtype}")
  return x


def check_floating_tree(tree, owner: str, name: str = "updates"):
  """Every leaf of ``tree`` has a floating-point dtype: the one rule of every
  method for gradients (an integer or bool gradient is refused, not cast)."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    dtype = getattr(leaf, "dtype", None)
    if dtype is None:
      dtype = jnp.asarray(leaf).dtype
    if not jnp.issubdtype(dtype, jnp.floating):
      where = jax.tree_util.keystr(path) or "(the root)"
      raise TypeError(
          f"{owner}: `{name}` must have floating-point leaves (float16, bfloat16, "
          f"float32 or float64); leaf {where} has dtype {dtype}. Differentiate "
          "with respect to floating parameters, or cast the gradients.")
  return tree


def check_same_tree(updates, buffer, owner: str, field: str):
  """A clear error when ``updates`` does not match a params-shaped buffer."""
  t_u, t_b = jax.tree.structure(updates), jax.tree.structure(buffer)
  if t_u != t_b:
    raise ValueError(
        f"{owner}: the updates do not match the state: `state.{field}` was "
        f"initialised for a tree with structure {t_b}, but the updates have "
        f"structure {t_u}. Call init with the same params tree you update.")
  for path_u, (u, b) in zip(jax.tree_util.tree_leaves_with_path(updates),
                            zip(jax.tree.leaves(updates), jax.tree.leaves(buffer))):
    if tuple(u.shape) != tuple(b.shape):
      raise ValueError(
          f"{owner}: the updates do not match the state: leaf "
          f"{jax.tree_util.keystr(path_u[0])} has shape {tuple(u.shape)} but "
          f"`state.{field}` holds shape {tuple(b.shape)} there (a state stacked "
          "per worker must be mapped over its leading axis first)")
