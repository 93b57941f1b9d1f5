"""Pieces shared by the method modules: keys, argument checks, tree checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from compopt._src.compressors import base as cbase


def init_key(key, owner: str) -> jax.Array:
  """The ``key`` argument (an int, a jax.random.key or a uint32[2] PRNGKey)
  as a raw uint32[2] key, the form every optax wrapper can carry and select."""
  if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
    return jax.random.PRNGKey(int(key))
  dtype = getattr(key, "dtype", None)
  shape = getattr(key, "shape", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    if shape == ():
      return jax.random.key_data(key).astype(jnp.uint32)
  elif dtype is not None and shape == (2,) and np.dtype(dtype) == np.uint32:
    return jnp.asarray(key)
  elif dtype is not None and shape == () and (
      jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
    # An int seed turned into an array (e.g. by optax.inject_hyperparams).
    return jax.random.PRNGKey(jnp.asarray(key).astype(jnp.int32))
  raise TypeError(
      f"{owner}: `key` must be an int seed, a scalar jax.random.key(...) or a "
      f"uint32[2] jax.random.PRNGKey(...); got {key!r}")


def _traced(value) -> bool:
  return isinstance(value, jax.core.Tracer)


def check_key(key, owner: str):
  """Checks the ``key`` argument when the method is built (not first at init)."""
  if _traced(key):
    return key
  init_key(key, owner)
  return key


def check_bool(value, name: str, owner: str) -> bool:
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{owner}: `{name}` must be True or False; got {value!r}")
  return bool(value)


def check_interval(value, name: str, owner: str, low: float, high: float, *,
                   low_open: bool = False, high_open: bool = False,
                   allow_none: bool = False):
  """A number in the interval; traced values (inject_hyperparams) pass."""
  lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
  if high == float("inf"):
    range_ = f"{'>' if low_open else '>='} {low:g}"
  else:
    range_ = f"in {lo}{low:g}, {high:g}{hi}"
  range_ += " or None" if allow_none else ""
  allowed = "a number " + range_
  if value is None and allow_none:
    return None
  if _traced(value):
    return value
  if isinstance(value, (bool, str, bytes)):
    raise TypeError(f"{owner}: `{name}` must be {allowed}; got {value!r}")
  try:
    v = float(value)
  except (TypeError, ValueError):
    raise TypeError(f"{owner}: `{name}` must be {allowed}; got {value!r}") from None
  ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
  if not ok:
    raise ValueError(f"{owner}: `{name}` must be {range_}; got {value!r}")
  return value


def check_learning_rate(value, owner: str):
  """A finite number >= 0 or an optax schedule (a callable)."""
  if callable(value) or _traced(value):
    return value
  allowed = "a finite number >= 0 or an optax schedule (a callable of the step)"
  if isinstance(value, (bool, str, bytes)):
    raise TypeError(f"{owner}: `learning_rate` must be {allowed}; got {value!r}")
  try:
    v = float(value)
  except (TypeError, ValueError):
    raise TypeError(f"{owner}: `learning_rate` must be {allowed}; got {value!r}") from None
  if not (np.isfinite(v) and v >= 0):
    raise ValueError(f"{owner}: `learning_rate` must be {allowed}; got {value!r}")
  return value


def check_compressor(compressor, owner: str, name: str = "compressor"):
  if not isinstance(compressor, cbase.Compressor):
    raise TypeError(
        f"{owner}: `{name}` must be a compopt compressor (e.g. "
        f"compopt.compressors.top_k(ratio=0.01)); got {compressor!r}")
  return compressor


def check_axis_name(axis_name, owner: str):
  if axis_name is not None and not isinstance(axis_name, (str, tuple)):
    raise TypeError(f"{owner}: `axis_name` must be a str (or None); got {axis_name!r}")
  return axis_name


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


def resolve_dtype(value, name: str, owner: str):
  """A dtype argument (``jnp.float32``, ``"bfloat16"``, ``np.float32``...) as a
  NumPy dtype, or None.

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


def zeros_like_tree(params, dtype=None):
  """Zeros shaped like ``params`` (arrays or ShapeDtypeStructs), in ``dtype``
  or, if None, each leaf's own dtype: the initial value of a buffer."""
  return jax.tree.map(lambda p: jnp.zeros(p.shape, dtype or p.dtype), params)
