"""onebit: Seide et al.'s 1-bit quantization with per-column reconstruction."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from compopt._src import wire
from compopt._src.compressors import base


def _columns(shape) -> int:
  """Columns of a leaf: its last axis for 2-D and larger leaves, else one."""
  shape = tuple(int(s) for s in shape)
  return shape[-1] if len(shape) >= 2 and shape[-1] > 0 else 1


@dataclasses.dataclass(frozen=True)
class OneBit(base.Compressor):
  """1 bit per coordinate (x_j < 0) and, per column, the mean of its
  non-negative and of its negative coordinates."""
  name: str = "onebit"
  randomized = False

  # The payload depends on the leaf's shape (one pair of values per column):
  # encode sees the shaped leaf, decode reads the columns from the payload.
  def _encode_shaped(self, key, x):
    del key
    return self._encode_columns(x.reshape(-1, _columns(x.shape)))

  def _encode(self, key, x):  # a flat leaf: one column
    del key
    return self._encode_columns(x.reshape(-1, 1))

  def _encode_columns(self, x2):
    ct = base.compute_dtype(x2.dtype)
    # Columns as rows (cols, r): the reductions run along the minor axis (on
    # XLA's CPU backend a reduction over the major axis is a slow loop).
    v = x2.T.astype(ct)
    neg = v < 0  # a zero (or NaN) joins the non-negative group
    # Sums of x·2^−e, e from the column's largest |x_j|: exact scaling by a
    # power of two, so the means neither overflow nor lose their low bits at
    # any magnitude of x; 2^e undoes it.
    f, e = base.pow2_normalizer(jnp.max(jnp.abs(v), axis=1))
    vs = v * f[:, None]
    n_neg = jnp.sum(neg, axis=1).astype(ct)
    n_pos = v.shape[1] - n_neg
    s_neg = jnp.sum(jnp.where(neg, vs, 0), axis=1)
    s_pos = jnp.sum(jnp.where(neg, 0, vs), axis=1)
    mean_pos = jnp.ldexp(jnp.where(n_pos > 0, s_pos / jnp.maximum(n_pos, 1), 0), e)
    mean_neg = jnp.ldexp(jnp.where(n_neg > 0, s_neg / jnp.maximum(n_neg, 1), 0), e)
    return {"signs": wire.pack_bits(neg.T.reshape(-1)), "pos": mean_pos.astype(ct),
            "neg": mean_neg.astype(ct)}

  def _decode(self, payload, size, dtype, key):
    del key
    cols = payload["pos"].shape[-1]
    neg = wire.unpack_bits(payload["signs"], size).reshape(-1, cols)
    return jnp.where(neg, payload["neg"], payload["pos"]).reshape(-1)

  def _wire_bits(self, size, dtype):  # a flat leaf: one column
    return self.wire_bits((size,), dtype)

  def wire_bits(self, shape, dtype) -> int:
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    size = base._size(shape)  # pylint: disable=protected-access
    if size == 0:
      return 0
    ct = base.compute_dtype(dtype)
    return 8 * wire.packed_bytes(size) + 2 * _columns(shape) * wire.dtype_bits(ct)

  def delta(self, shape) -> float:
    # Per column of r rows, the two means are the least-squares values for
    # the split by sign, so the error is at most scaled_sign's on that
    # column: ‖C(x) − x‖² ≤ ‖x‖² − ‖x‖₁²/r ≤ (1 − 1/r)‖x‖².
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    return _columns(shape) / max(1, base._size(shape))  # pylint: disable=protected-access

  def _delta(self, size):
    return 1.0 / size  # one column (what delta() gives a 1-D leaf)


def onebit() -> OneBit:
  r"""1-bit quantization with per-column reconstruction (Seide et al. 2014).

  Each column c of a leaf (the last axis of a 2-D or larger leaf — for a
  Flax ``Dense`` kernel of shape (in, out), one column per output unit; a
  1-D leaf or a scalar is one column) is split by sign, and each part is
  sent as its mean:

  .. math::

    \mathcal{C}(x)_{jc} = \begin{cases}
      \mu^+_c = \operatorname{mean}\{x_{ic} : x_{ic} \ge 0\} & x_{jc} \ge 0 \\
      \mu^-_c = \operatorname{mean}\{x_{ic} : x_{ic} < 0\} & x_{jc} < 0,
    \end{cases}

  the reconstruction values that minimize the squared error given the
  signs. Wire: one bit per coordinate (packed) and two float32 values per
  column (float64 for float64 leaves). A zero joins the non-negative group.

  Class: contractive, B(1/r) for columns of r rows: the two means do at
  least as well as scaled_sign's one magnitude ‖x_c‖₁/r, so
  ‖C(x) − x‖² ≤ Σ_c (‖x_c‖² − ‖x_c‖₁²/r) ≤ (1 − 1/r)‖x‖². Seide et al. use it
  with error feedback: ``compopt.onebit_sgd``, or ``compopt.ef_sgd`` with
  this compressor.

  Example:
    >>> import compopt, jax.numpy as jnp
    >>> c = compopt.compressors.onebit()
    >>> c(None, jnp.array([[1., -2.], [3., -4.], [-5., 0.]]))
    Array([[ 2., -3.],
           [ 2., -3.],
           [-5.,  0.]], dtype=float32)
    >>> c.wire_bits((3, 2), jnp.float32)
    136

  References:
    Seide, Fu, Droppo, Li, Yu. 1-bit stochastic gradient descent and its
    application to data-parallel distributed training of speech DNNs,
    Interspeech 2014.
  """
  return OneBit()
