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
  give none);
* capabilities the communication layer reads: ``randomized``,
  ``decode_needs_key``, ``linear_payload`` and ``low_precision_sum``.

All three of ``encode``, ``decode`` and ``__call__`` also accept a pytree: each
leaf is compressed on its own with the key ``jax.random.fold_in(key, i)`` for
leaf number ``i``.
"""

from __future__ import annotations

import abc
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from compopt._src import checks

Payload = dict[str, Any]
Shape = Sequence[int] | int


def compute_dtype(dtype) -> np.dtype:
  """Reductions and random rounding run in float32 (float64 for float64)."""
  return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def pow2_normalizer(amax: jax.Array):
  """(f, e): a power of two f = 2^−e with amax·f in [0.5, 1), for scaling a
  leaf whose largest magnitude is ``amax`` (a scalar or an array, float32 or
  float64) into a range where sums, squares and reciprocals neither
  overflow nor flush to zero; 2^e undoes it (:func:`jnp.ldexp`).

  Scaling by a power of two is exact, so a computation on x·f is the same,
  bit for bit, at every magnitude of x. e is clipped so that f is a normal
  number (an XLA CPU flushes subnormals to 0); amax = 0, inf or NaN gives f = 1.
  """
  fi = jnp.finfo(amax.dtype)
  _, e = jnp.frexp(amax)
  e = jnp.where(jnp.isfinite(amax) & (amax > 0), e, 0)
  e = jnp.clip(e, 1 - int(fi.maxexp), -int(fi.minexp))  # 2^−e normal
  return jnp.ldexp(jnp.ones_like(amax), -e), e


#: The largest leaf a compressor takes: positions and counts are int32.
MAX_LEAF_SIZE = 2**31 - 1


#: Up to this many payloads, :meth:`Compressor.decode_sum` decodes them one
#: by one into a running sum; beyond, one vmapped decode and a reduction.
UNROLL_MAX = 64


def _size(shape: Shape) -> int:
  if isinstance(shape, (int, np.integer)):
    return int(shape)
  return math.prod(int(s) for s in shape)


def _is_leaf(x) -> bool:
  return hasattr(x, "shape") and hasattr(x, "dtype")


def as_arrays(x):
  """Turns Python/NumPy scalars and arrays (alone or as tree leaves) into arrays."""
  return jax.tree.map(lambda l: l if _is_leaf(l) else jnp.asarray(l), x)


def leaf_keys(key, n: int) -> list:
  """The key of each of n leaves, ``fold_in(key, i)`` (Nones without a key)."""
  if key is None:
    return [None] * n
  return [jax.random.fold_in(key, i) for i in range(n)]


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
  #: Whether payloads encoded by all workers with ONE shared key can be
  #: combined before decoding: every payload leaf is a floating array and
  #: decode(Σ_i w_i p_i) = Σ_i w_i decode(p_i) (identity; rand_k with shared
  #: positions). The communication layer then all-reduces the payloads and
  #: decodes once, whatever the exchange scheme (see ``compopt.exchange``).
  linear_payload: bool = False
  #: Whether the payload is the leaf rounded to a low-precision float that
  #: the workers add in that dtype (``cast`` to float16/bfloat16): the
  #: communication layer all-reduces the rounded values of w_i·x_i once,
  #: whatever the exchange scheme but ``two_phase``.
  low_precision_sum: bool = False
  #: The cost of one decode in dense passes over the output, for the cost
  #: model of ``compopt.exchange.auto`` (multi-pass decodes, e.g. QSGD's bit
  #: planes, make decoding n payloads dearer than one dense all-reduce).
  decode_passes: float = 1.0

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

  def _sparse(self, payload: Payload, size: int, dtype, key):
    """(indices, values) with C(x) = Σ values at indices (int32 global indices,
    values in the compute dtype) if the payload is a sparse vector; None
    otherwise. Lets :meth:`decode_sum` add n payloads with one scatter."""
    del payload, size, dtype, key
    return None

  def _delta(self, size: int) -> float | None:
    return None

  # --------------------------------------------------------------- public API
  @property
  def unbiased(self) -> bool:
    """Whether E C(x) = x for every x (the class U(ω))."""
    # Any size at least as large as a fixed k works; ω exists for all or none.
    return self._omega(2**31) is not None

  def encode(self, key, x):
    """The payload a worker sends for ``x`` (an array or a pytree of arrays)."""
    key = checks.check_key(key, self.name, required=self.randomized)
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
      key = checks.check_key(key, f"{self.name}.decode")
    if _is_leaf(like):
      return self._decode_leaf(payload, like, key)
    treedef = jax.tree.structure(like)
    payloads = treedef.flatten_up_to(payload)
    likes = treedef.flatten_up_to(like)
    keys = leaf_keys(key, len(likes))
    return treedef.unflatten(
        [self._decode_leaf(p, l, k) for p, l, k in zip(payloads, likes, keys)])

  def decode_sum(self, payloads, like, weights, *, key=None):
    """Σ_j w_j C_j in float32 (float64 for a float64 x), from n payloads
    stacked on a leading axis.

    The aggregation step of an all-gather: payload j (``jax.tree.map(lambda
    a: a[j], payloads)``) decoded in the wider of float32 and x's dtype
    (:meth:`decode_wide`: never rounded to x's dtype, whose range a decoded
    value may leave), times ``weights[j]``, and summed over j; a payload whose weight is <= 0 is skipped (a non-member's
    zeros may decode to NaN). Sparse payloads (top_k, rand_k, rand_k_wangni)
    are added into one vector by one scatter, O(d + n·k); the others are
    decoded one by one into a running sum (one fused pass per payload; for
    more than :data:`UNROLL_MAX` payloads, one vmapped decode and a sum).

    Args:
      payloads: n payloads of :meth:`encode`, stacked on a leading axis.
      like: as for :meth:`decode`, without the leading axis.
      weights: float[n] (float32 or float64; cast to the sum's dtype).
      key: as for :meth:`decode` (one key for all n payloads).
    """
    if self.decode_needs_key:
      key = checks.check_key(key, f"{self.name}.decode_sum")
    if _is_leaf(like):
      return self._decode_sum_leaf(payloads, like, weights, key)
    treedef = jax.tree.structure(like)
    stacked = treedef.flatten_up_to(payloads)
    likes = treedef.flatten_up_to(like)
    keys = leaf_keys(key, len(likes))
    return treedef.unflatten([self._decode_sum_leaf(p, l, weights, k)
                              for p, l, k in zip(stacked, likes, keys)])

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

  def omega(self, shape: Shape) -> float | None:
    """ω with E‖C(x) − x‖² ≤ ω‖x‖² and E C(x) = x, or None if not unbiased."""
    return self._omega(max(_size(shape), 1))

  def delta(self, shape: Shape) -> float | None:
    """δ with ‖C(x) − x‖² ≤ (1 − δ)‖x‖² in expectation, or None if the
    compressor is not contractive (as a class, for every x)."""
    return self._delta(max(_size(shape), 1))

  # ---------------------------------------------------------------- internals
  def _encode_leaf(self, key, x) -> Payload:
    x = checks.check_array(x, self.name)
    if x.size == 0:
      return {}
    if x.size > MAX_LEAF_SIZE:
      raise ValueError(
          f"{self.name}: a leaf of shape {tuple(x.shape)} has {x.size} coordinates; at "
          f"most 2**31 - 1 = {MAX_LEAF_SIZE} per leaf are supported (positions and "
          "counts are int32). Split the leaf into smaller arrays.")
    return self._encode_shaped(key, x)

  def _encode_shaped(self, key, x) -> Payload:
    """Payload of a leaf of any shape (size >= 1): ``_encode`` of the flat
    leaf, unless the payload depends on the shape (``onebit``'s columns)."""
    return self._encode(key, x.reshape(-1))

  def _decode_sum_leaf(self, payloads, like, weights, key):
    shape, dtype = tuple(like.shape), np.dtype(like.dtype)
    size = _size(shape)
    n = int(weights.shape[0])
    wide = compute_dtype(dtype)  # float32, or float64 for a float64 leaf
    if size == 0:
      return jnp.zeros(shape, wide)
    weights = weights.astype(wide)
    row = lambda j: jax.tree.map(lambda a: a[j], payloads)  # noqa: E731
    first = self._sparse(row(0), size, dtype, key)
    if first is not None:
      parts = [first] + [self._sparse(row(j), size, dtype, key) for j in range(1, n)]
      idx = jnp.concatenate([i for i, _ in parts])
      values = jnp.concatenate([
          jnp.where(weights[j] > 0, v.astype(wide) * weights[j], 0)
          for j, (_, v) in enumerate(parts)])
      total = jnp.zeros((size,), wide).at[idx].add(values, mode="drop")
      return total.reshape(shape)
    if n > UNROLL_MAX:
      decoded = jax.vmap(lambda p: self._decode_wide(p, like, key))(payloads)
      w = weights.reshape((n,) + (1,) * len(shape))
      return jnp.sum(jnp.where(w > 0, decoded * w, 0), axis=0)
    total = None
    for j in range(n):
      # one fused pass per payload: its decode, the weight and the add. (A
      # decode of all n and a sum over the leading axis is two passes over n
      # vectors, and on XLA's CPU backend a reduction over the major axis
      # runs in a slow loop: 150x slower for 4 sign payloads of 5.8M.)
      d = self._decode_wide(row(j), like, key)
      term = jnp.where(weights[j] > 0, d * weights[j], 0)
      total = term if total is None else total + term
    return total

  def _decode_leaf(self, payload, like, key):
    shape, dtype = tuple(like.shape), np.dtype(like.dtype)
    size = _size(shape)
    if size == 0:
      return jnp.zeros(shape, dtype)
    return self._decode(payload, size, dtype, key).astype(dtype).reshape(shape)

  def _decode_wide(self, payload, like, key):
    """C(x) in float32 (float64 for a float64 x), never rounded to x's dtype
    on the way: a decoded value may leave that dtype's range (rand_k's
    (d/k)·x_j, a natural power 2^16 of a float16 leaf) and still be exact in
    the float32 aggregate; a float64 value keeps its 53 bits."""
    shape, dtype = tuple(like.shape), np.dtype(like.dtype)
    size = _size(shape)
    wide = compute_dtype(dtype)
    if size == 0:
      return jnp.zeros(shape, wide)
    return self._decode(payload, size, dtype, key).astype(wide).reshape(shape)

  def decode_wide(self, payload, like, *, key=None):
    """Dense C(x) in the wider of float32 and x's dtype, as :meth:`decode`
    but without rounding to x's dtype: what the communication layer adds into
    its aggregate (float32, float64 for float64 leaves)."""
    if self.decode_needs_key:
      key = checks.check_key(key, f"{self.name}.decode_wide")
    if _is_leaf(like):
      return self._decode_wide(payload, like, key)
    treedef = jax.tree.structure(like)
    payloads = treedef.flatten_up_to(payload)
    likes = treedef.flatten_up_to(like)
    keys = leaf_keys(key, len(likes))
    return treedef.unflatten(
        [self._decode_wide(p, l, k) for p, l, k in zip(payloads, likes, keys)])


def check_compressor(compressor, owner: str, name: str = "compressor") -> Compressor:
  """``compressor`` if it is a compopt compressor, else a TypeError."""
  if not isinstance(compressor, Compressor):
    raise TypeError(
        f"{owner}: `{name}` must be a compopt compressor (e.g. "
        f"compopt.compressors.top_k(ratio=0.01)); got {compressor!r}")
  return compressor
