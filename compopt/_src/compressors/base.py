"""The compressor interface shared by every compressor.

A compressor C acts on one array (a leaf of the gradient pytree) at a time,
as all five papers and every practical system do. Each compressor is a small
immutable object with:

* ``encode(key, x)``: the payload, a dict of arrays that is exactly what a
  worker sends (values and indices, packed sign bits, low-bit codes, scales);
* ``decode(payload, like, key=None)``: the dense C(x) rebuilt from the payload;
* ``__call__(key, x)``: the dense C(x), equal to ``decode(encode(key, x), x)``;
* ``wire_bits(shape, dtype)``: the exact number of bits of that payload;
* ``omega(shape)`` / ``delta(shape)``: the constant of its class, U(ω) for
  unbiased compressors, B(δ) for contractive ones (``None`` where the papers
  give none).

All three of ``encode``, ``decode`` and ``__call__`` also accept a pytree: each
leaf is compressed on its own with the key ``jax.random.fold_in(key, i)`` for
leaf number ``i``.
"""

from __future__ import annotations

import abc
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Payload = dict[str, Any]
Shape = Sequence[int] | int


def compute_dtype(dtype) -> np.dtype:
  """Reductions and random rounding run in float32 (float64 for float64)."""
  return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def dtype_bits(dtype) -> int:
  return np.dtype(dtype).itemsize * 8


def _size(shape: Shape) -> int:
  if isinstance(shape, (int, np.integer)):
    return int(shape)
  return math.prod(int(s) for s in shape)


def _is_leaf(x) -> bool:
  return hasattr(x, "shape") and hasattr(x, "dtype")


def as_arrays(x):
  """Turns Python/NumPy scalars and arrays (alone or as tree leaves) into arrays."""
  return jax.tree.map(lambda l: l if _is_leaf(l) else jnp.asarray(l), x)


def check_key(key, owner: str, required: bool):
  """Validates ``key``: a typed ``jax.random.key`` or a raw uint32[2] key."""
  if key is None:
    if required:
      raise TypeError(
          f"{owner} is randomized: `key` must be a jax.random.key(...) or a "
          "jax.random.PRNGKey(...), got None")
    return None
  dtype = getattr(key, "dtype", None)
  shape = getattr(key, "shape", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    if shape == ():
      return key
  elif dtype is not None and np.dtype(dtype) == np.uint32 and tuple(shape) == (2,):
    return key
  raise TypeError(
      f"{owner}: `key` must be a scalar jax.random.key(...) or a uint32[2] "
      f"jax.random.PRNGKey(...); got {type(key).__name__} with shape {shape} "
      f"and dtype {dtype}")


def check_x(x, owner: str):
  """Validates ``x``: a floating-point array (float16/bfloat16/float32/float64)."""
  if not _is_leaf(x):
    x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(
        f"{owner}: `x` must have a floating-point dtype (float16, bfloat16, "
        f"float32 or float64); got {x.dtype}")
  return x


def _mix32(h):
  """A bijective 32-bit integer mixer (Wellons' "lowbias32" constants)."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x7FEB352D)
  h = h ^ (h >> 15)
  h = h * jnp.uint32(0x846CA68B)
  return h ^ (h >> 16)


def random_bits(key, size: int) -> jax.Array:
  """``size`` pseudo-random uint32 words from ``key``, one per coordinate.

  A counter-based generator: word j is a keyed hash of j, two rounds of a
  32-bit mixer around the two words ``jax.random.bits(key, (2,))``. It is an
  elementwise computation that XLA fuses into the compressor's own pass, about
  7× faster on a CPU than ``jax.random.bits`` (threefry) for 11M words; for a
  fixed key, distinct coordinates get distinct words (the map is a
  bijection), and over random keys each word is uniform. Its statistical
  quality is ample for randomized rounding; it is not meant for cryptography.
  """
  seed = jax.random.bits(key, (2,), jnp.uint32)
  j = jax.lax.iota(jnp.uint32, size)
  return _mix32(_mix32(j ^ seed[0]) + seed[1])


def uniform(key, size: int, dtype=jnp.float32) -> jax.Array:
  """``size`` uniform numbers in [0, 1) from :func:`random_bits` (24 random
  bits each for float32; 53 for float64, from two words)."""
  if np.dtype(dtype) == np.float64:
    hi = random_bits(key, size).astype(jnp.float64)
    lo = random_bits(jax.random.fold_in(key, 1), size) >> 11
    return (hi * 2.0**21 + lo.astype(jnp.float64)) * 2.0**-53
  return (random_bits(key, size) >> 8).astype(jnp.float32) * np.float32(2.0**-24)


#: Arrays smaller than this are computed inline by :func:`isolated` and take
#: the compressors' plain code paths (the fast paths pay only for large ones).
ISOLATE_MIN = 1 << 16


def isolated(fn: Callable, *args):
  """``fn(*args)``, compiled as its own XLA computation.

  XLA fuses what it can, and two of its fusions are slow on a CPU: an
  elementwise producer fused into each of several consumers is recomputed
  for each (b bit planes reading b-bit codes: 5× the work for QSGD with
  s = 16), and a reduction fused with a sibling elementwise pass over the
  same bfloat16 input runs in a scalar loop (14 ms instead of 1.4 ms on 11M
  values). A conditional is a fusion boundary: ``fn`` runs inside one branch,
  its operands are materialized once. The predicate reads the first argument
  so that it cannot be folded at compile time; the other branch (zeros) is
  never taken. Under ``jax.vmap`` with a batched predicate the cond becomes a
  select of both branches: correct, and the zeros branch costs little.
  """
  if jnp.size(jax.tree.leaves(args)[0]) < ISOLATE_MIN:
    return fn(*args)  # small arrays: fusion costs nothing, a cond only compile time

  def probe(*a):
    return jnp.ravel(jax.tree.leaves(a)[0])[:1].astype(jnp.float32).sum()

  def zeros(*a):
    z = probe(*a) * 0  # 0 that varies over a shard_map axis like fn's output
    return jax.tree.map(lambda s: jnp.full(s.shape, z.astype(s.dtype)),
                        jax.eval_shape(fn, *a))

  first = probe(*args)
  keep = jnp.isnan(first) | jnp.logical_not(jnp.isnan(first))
  return jax.lax.cond(keep, fn, zeros, *args)


def materialize(x: jax.Array) -> jax.Array:
  """``x`` computed once into memory before its consumers read it (see
  :func:`isolated`)."""
  return isolated(lambda v: v, x)


def leaf_keys(key, n: int) -> list:
  if key is None:
    return [None] * n
  return [jax.random.fold_in(key, i) for i in range(n)]


def check_positive_int(value, name: str, owner: str, minimum: int = 1) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{owner}: `{name}` must be an integer >= {minimum}; got {value!r}")
  if value < minimum:
    raise ValueError(f"{owner}: `{name}` must be an integer >= {minimum}; got {value}")
  return int(value)


def check_fraction(value, name: str, owner: str) -> float:
  """A float in (0, 1]."""
  if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
    raise TypeError(f"{owner}: `{name}` must be a number in (0, 1]; got {value!r}")
  value = float(value)
  if not 0.0 < value <= 1.0:
    raise ValueError(f"{owner}: `{name}` must be in (0, 1]; got {value}")
  return value


class Compressor(abc.ABC):
  """Base class of all compressors. Subclasses are frozen dataclasses.

  Subclasses implement the leaf-level methods on a flat 1-D array of size
  ``size >= 1``: ``_encode``, ``_decode``, ``_wire_bits`` and, where the papers
  give one, ``_omega`` / ``_delta``.
  """

  name: str
  #: Whether the compressor draws random numbers (and so needs a key).
  randomized: bool = True
  #: Whether decoding needs the encoder's key (shared randomness, e.g. the
  #: rand_k mask that every worker can regenerate).
  decode_needs_key: bool = False

  # ----------------------------------------------------------------- leaf API
  @abc.abstractmethod
  def _encode(self, key, x: jax.Array) -> Payload:
    """Payload of the flat array ``x`` (1-D, size >= 1)."""

  @abc.abstractmethod
  def _decode(self, payload: Payload, size: int, dtype, key) -> jax.Array:
    """Flat dense C(x) of length ``size``; cast to ``dtype`` by the caller."""

  @abc.abstractmethod
  def _wire_bits(self, size: int, dtype: np.dtype) -> int:
    """Exact bits of the payload of a leaf with ``size`` coordinates."""

  def _omega(self, size: int) -> float | None:
    return None

  def _delta(self, size: int) -> float | None:
    return None

  def _expected_wire_bits(self, size: int, dtype: np.dtype) -> float:
    return float(self._wire_bits(size, dtype))

  # --------------------------------------------------------------- public API
  @property
  def unbiased(self) -> bool:
    """Whether E C(x) = x for every x (the class U(ω))."""
    # Any size at least as large as a fixed k works; ω exists for all or none.
    return self._omega(2**31) is not None

  def encode(self, key, x):
    """The payload a worker sends for ``x`` (an array or a pytree of arrays)."""
    key = check_key(key, self.name, self.randomized)
    x = as_arrays(x)
    if _is_leaf(x):
      return self._encode_leaf(key, x)
    leaves, treedef = jax.tree.flatten(x)
    keys = leaf_keys(key, len(leaves))
    return treedef.unflatten(
        [self._encode_leaf(k, leaf) for k, leaf in zip(keys, leaves)])

  def decode(self, payload, like, *, key=None):
    """Dense C(x) from ``payload``.

    Args:
      payload: what :meth:`encode` returned.
      like: ``x`` itself, or anything with its ``shape`` and ``dtype`` (e.g. a
        ``jax.ShapeDtypeStruct``), or a pytree of those matching ``payload``.
      key: the key given to :meth:`encode`; needed only by compressors whose
        randomness is shared with the receiver (``decode_needs_key``).
    """
    if self.decode_needs_key:
      key = check_key(key, f"{self.name}.decode", True)
    if _is_leaf(like):
      return self._decode_leaf(payload, like, key)
    treedef = jax.tree.structure(like)
    payloads = treedef.flatten_up_to(payload)
    likes = treedef.flatten_up_to(like)
    keys = leaf_keys(key, len(likes))
    return treedef.unflatten(
        [self._decode_leaf(p, l, k) for p, l, k in zip(payloads, likes, keys)])

  def __call__(self, key, x):
    """The dense compressed value C(x), same shape and dtype as ``x``."""
    x = as_arrays(x)
    return self.decode(self.encode(key, x), x, key=key)

  def wire_bits(self, shape: Shape, dtype) -> int:
    """Exact number of bits a worker sends for one leaf of ``shape``/``dtype``."""
    size = _size(shape)
    if size == 0:
      return 0
    return int(self._wire_bits(size, np.dtype(dtype)))

  def expected_wire_bits(self, shape: Shape, dtype) -> float:
    """Expected bits sent; differs from ``wire_bits`` only where the payload is
    sent with some probability (``bernoulli``)."""
    size = _size(shape)
    if size == 0:
      return 0.0
    return float(self._expected_wire_bits(size, np.dtype(dtype)))

  def omega(self, shape: Shape) -> float | None:
    """ω with E‖C(x) − x‖² ≤ ω‖x‖² and E C(x) = x, or None if not unbiased."""
    return self._omega(max(_size(shape), 1))

  def delta(self, shape: Shape) -> float | None:
    """δ with ‖C(x) − x‖² ≤ (1 − δ)‖x‖² in expectation, or None if the
    compressor is not contractive (as a class, for every x)."""
    return self._delta(max(_size(shape), 1))

  # ---------------------------------------------------------------- internals
  def _encode_leaf(self, key, x) -> Payload:
    x = check_x(x, self.name)
    if x.size == 0:
      return {}
    return self._encode(key, x.reshape(-1))

  def _decode_leaf(self, payload, like, key):
    shape, dtype = tuple(like.shape), np.dtype(like.dtype)
    size = _size(shape)
    if size == 0:
      return jnp.zeros(shape, dtype)
    return self._decode(payload, size, dtype, key).astype(dtype).reshape(shape)


def scatter(size: int, dtype, indices, values) -> jax.Array:
  """Dense vector with ``values`` added at ``indices`` (padding values are 0)."""
  return jnp.zeros((size,), dtype).at[indices.astype(jnp.int32)].add(
      values.astype(dtype), mode="drop")


def _tree_constant(compressor: Compressor, tree, fn: Callable, combine) -> float | None:
  shapes = [l.shape for l in jax.tree.leaves(tree) if _size(l.shape) > 0]
  values = [fn(compressor, s) for s in shapes]
  if not values:
    return None
  if any(v is None for v in values):
    return None
  return combine(values)


def tree_omega(compressor: Compressor, tree) -> float | None:
  """ω of the layer-wise compressor on a whole tree: the largest leaf ω.

  E‖C(x) − x‖² = Σ_l E‖C(x_l) − x_l‖² ≤ max_l ω_l · ‖x‖².
  """
  return _tree_constant(compressor, tree, lambda c, s: c.omega(s), max)


def tree_delta(compressor: Compressor, tree) -> float | None:
  """δ of the layer-wise compressor on a whole tree: the smallest leaf δ."""
  return _tree_constant(compressor, tree, lambda c, s: c.delta(s), min)


def tree_wire_bits(compressor: Compressor, tree) -> int:
  """Exact bits sent for a whole tree (arrays or ``jax.ShapeDtypeStruct``s)."""
  return sum(compressor.wire_bits(l.shape, l.dtype) for l in jax.tree.leaves(tree))
