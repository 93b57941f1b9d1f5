"""threshold: Strom's threshold sparsification, with a bounded count."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from compopt._src import checks
from compopt._src import wire
from compopt._src.compressors import base
from compopt._src.compressors import sparse


@dataclasses.dataclass(frozen=True)
class Threshold(base.Compressor):
  """The coordinates with |x_j| > τ, at most k of them, as ±τ or exactly."""
  tau: float = 1.0
  max_count: int | None = None
  ratio: float | None = None
  quantize: bool = True
  name: str = "threshold"

  def _k(self, size: int) -> int:
    if self.max_count is not None:
      return min(self.max_count, size)
    return min(size, max(1, int(round(self.ratio * size))))

  def _encode(self, key, x):
    size = x.size
    k = self._k(size)
    ct = base.compute_dtype(x.dtype)
    above = jnp.abs(x.astype(ct)) > self.tau
    # At most k are sent. Of the m above τ, numbered 0..m−1 in index order,
    # those numbered o, o+1, ..., o+k−1 (mod m), for o uniform in [0, m):
    # when m > k each of them is sent with probability k/m, and the others
    # wait in the error-feedback residual; none is starved.
    rank = jnp.cumsum(above.astype(jnp.int32))  # 1..m at the ones above τ
    m = rank[-1]
    o = jax.random.randint(key, (), 0, jnp.maximum(m, 1), jnp.int32)
    slot = (rank - 1 - o) % jnp.maximum(m, 1)  # its place in the window
    chosen = above & (slot < k)
    # one scatter of the positions into their slots (unused slots: 0)
    idx = jnp.zeros((k,), jnp.int32).at[jnp.where(chosen, slot, k)].set(
        jnp.arange(size, dtype=jnp.int32), mode="drop")
    count = jnp.minimum(m, k)
    valid = jnp.arange(k) < count
    poison = sparse.nonfinite_poison(x)  # an inf/NaN anywhere is never hidden
    payload = {"indices": idx.astype(wire.index_dtype(size)),
               "count": count.astype(self._count_dtype(size))}
    if self.quantize:
      payload["signs"] = wire.pack_bits(valid & (x[idx] < 0))
      payload["tau"] = (jnp.asarray(self.tau, ct) + poison.astype(ct))
    else:
      payload["values"] = jnp.where(valid, x[idx], 0) + poison
    return payload

  @staticmethod
  def _count_dtype(size: int) -> np.dtype:
    return wire.index_dtype(size + 1)  # 0..size

  def _sparse(self, payload, size, dtype, key):
    del key
    k = self._k(size)
    idx = payload["indices"].astype(jnp.int32)
    valid = jnp.arange(k) < payload["count"].astype(jnp.int32)
    ct = base.compute_dtype(dtype)
    if self.quantize:
      signs = jnp.where(wire.unpack_bits(payload["signs"], k), -1, 1).astype(ct)
      values = jnp.where(valid, signs * payload["tau"], 0 * payload["tau"])
    else:
      values = jnp.where(valid, payload["values"].astype(ct), 0)
      values = values + sparse.nonfinite_poison(payload["values"]).astype(ct)
    return idx, values

  def _decode(self, payload, size, dtype, key):
    idx, values = self._sparse(payload, size, dtype, key)
    return sparse.scatter(size, values.dtype, idx, values)

  def _wire_bits(self, size, dtype):
    k = self._k(size)
    bits = k * wire.dtype_bits(wire.index_dtype(size)) + wire.dtype_bits(self._count_dtype(size))
    if self.quantize:
      return bits + 8 * wire.packed_bytes(k) + wire.dtype_bits(base.compute_dtype(dtype))
    return bits + k * wire.dtype_bits(dtype)


def threshold(tau: float, max_count: int | None = None, *, ratio: float | None = None,
              quantize: bool = True) -> Threshold:
  r"""Threshold sparsification (Strom 2015): the coordinates above τ.

  Strom sends each coordinate of the gradient residual whose magnitude
  exceeds a fixed τ as ±τ (one sign bit and its index) and keeps the rest,
  including the part of a sent coordinate beyond τ, in the residual (error
  feedback: use it with ``compopt.ef_sgd``, whose compressed vector is
  γ·g + e, so τ is in the units of a step γ·g):

  .. math::

    \mathcal{C}(x)_j = \tau\,\operatorname{sign}(x_j)\,[|x_j| > \tau]
    \quad(\text{or } x_j\,[|x_j| > \tau] \text{ with } \texttt{quantize=False}).

  The number sent varies from step to step, and XLA's collectives need a
  static size: at most k = ``max_count`` (or round(``ratio``·d)) per leaf
  are sent. When m > k exceed τ, k of them are sent, each with probability
  k/m (k consecutive in index order, cyclically, from one drawn from the
  key), so none is starved; the others stay in the error-feedback residual.

  Wire, per leaf: k indices (uint8/uint16/int32 by the leaf's size), the
  count (the same index type, one wider for a leaf of 2^8 or 2^16
  coordinates), and k packed sign bits plus one float32 τ (which carries a
  NaN when the leaf held an inf or NaN), or with ``quantize=False`` k values
  in the leaf's dtype. Unused slots are zeros of the same size.

  Class: neither unbiased nor contractive as a class (a leaf below τ
  everywhere sends nothing): ``omega`` and ``delta`` are ``None``. A sent
  coordinate's error :math:`|x_j| - \tau` is less than :math:`|x_j|`, so
  ‖C(x) − x‖ ≤ ‖x‖.

  Args:
    tau: the threshold τ > 0.
    max_count: the most coordinates sent per leaf (k >= 1; a leaf smaller
      than k sends at most all of its coordinates).
    ratio: alternatively, k as a fraction of each leaf, in (0, 1].
    quantize: send ±τ (Strom's form, default) or the exact values.

  Example:
    >>> import compopt, jax, jax.numpy as jnp
    >>> c = compopt.compressors.threshold(0.5, max_count=4)
    >>> c(jax.random.key(0), jnp.array([0.1, -0.7, 2.0, 0.3, -0.5]))
    Array([ 0. , -0.5,  0.5,  0. ,  0. ], dtype=float32)

  References:
    Strom. Scalable distributed DNN training using commodity GPU cloud
    computing, Interspeech 2015.
  """
  owner = "threshold"
  tau = checks.check_real(tau, "tau", owner, lo=0.0, lo_open=True)
  if (max_count is None) == (ratio is None):
    raise ValueError(f"{owner}: give exactly one of `max_count` (an integer >= 1) or "
                     f"`ratio` (in (0, 1]); got max_count={max_count!r}, ratio={ratio!r}")
  if max_count is not None:
    max_count = checks.check_int(max_count, "max_count", owner)
  else:
    ratio = checks.check_fraction(ratio, "ratio", owner)
  quantize = checks.check_bool(quantize, "quantize", owner)
  return Threshold(tau=tau, max_count=max_count, ratio=ratio, quantize=quantize)
