"""cast: the leaf rounded to a lower-precision float (float16, bfloat16, float8).

What PyTorch DDP's ``fp16_compress_hook`` / ``bf16_compress_hook`` and
Horovod's ``Compression.fp16`` do, as a compopt compressor. Deterministic and
biased (round to nearest even). The float16 and bfloat16 forms sum: the
communication layer adds the workers' payloads by ONE all-reduce in the low
dtype (``low_precision_sum``), as the DDP hooks do; float8 payloads are too
coarse to be added in float8 and go through the method's scheme (all-gather
by default), each decoded and added in float32.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np

from compopt._src import checks
from compopt._src import wire
from compopt._src.compressors import base

# what typing.DTypeArg spells (compopt._src.typing sits above the compressors)
DTypeArg = Union[type, str, np.dtype]

#: The dtypes a leaf can be cast to, by name.
CAST_DTYPES = ("float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")
#: Those whose payloads the workers add in the low dtype (one all-reduce).
SUMMED_DTYPES = ("float16", "bfloat16")
#: The dtype of the per-leaf exponent of ``scale=True`` (signed: float32 and
#: float64 exponents span −1074..1024).
EXP_DTYPE = np.dtype(np.int16)
#: With ``scale``, the largest |x_j| of a leaf is put just below 2^T, T at
#: most this (float16's half range; bfloat16 has float32's range and needs
#: no more).
MAX_TARGET_EXPONENT = 15


def _times_pow2(v, s) -> jax.Array:
  """v·2^s, exactly: two multiplications by powers of two 2^⌊s/2⌋ and
  2^⌈s/2⌉, each a normal number for |s| <= 252 (every float32 leaf's s);
  a multiply is ~5x faster than ``jnp.ldexp`` on a CPU."""
  s = s.astype(jnp.int32)
  s1 = s // 2
  one = jnp.ones((), v.dtype)
  return (v * jnp.ldexp(one, s1)) * jnp.ldexp(one, s - s1)


def _dtype_name(dtype) -> str | None:
  try:
    return np.dtype(dtype).name
  except TypeError:
    return None


def check_cast_dtype(dtype, owner: str) -> np.dtype:
  name = _dtype_name(dtype)
  if name not in CAST_DTYPES or not hasattr(jnp, name):
    raise ValueError(f"{owner}: `dtype` must be one of {CAST_DTYPES}; got {dtype!r}")
  return np.dtype(getattr(jnp, name))


@dataclasses.dataclass(frozen=True)
class Cast(base.Compressor):
  """x rounded to ``dtype``; with ``scale``, x·2^s rounded, 2^s per leaf."""
  dtype: np.dtype = np.dtype(jnp.float16)
  scale: bool = False
  name: str = "cast"
  randomized = False

  @property
  def low_precision_sum(self) -> bool:
    """Whether the workers add their payloads in ``dtype`` by one all-reduce."""
    return self.dtype.name in SUMMED_DTYPES

  @property
  def unit_roundoff(self) -> float:
    """u = 2^−p for p significand bits: |round(v) − v| ≤ u·|v| in the normal range."""
    return float(2.0 ** -(jnp.finfo(self.dtype).nmant + 1))

  def target_exponent(self, headroom: int = 1) -> int:
    """T: with ``scale``, a leaf's largest |x_j| maps into [2^(T−1), 2^T),
    2^T = min(half the dtype's range, 2^15), divided by ``headroom`` (rounded
    up to a power of two) so that the sum of that many payloads cannot
    overflow."""
    top = min(int(jnp.finfo(self.dtype).maxexp) - 1, MAX_TARGET_EXPONENT)
    return top - max(0, math.ceil(math.log2(headroom)))

  def exponent(self, x) -> jax.Array:
    """e with max_j |x_j| in [2^(e−1), 2^e) (0 for a leaf of zeros, inf or NaN):
    the per-leaf exponent that ``scale`` sends (int16)."""
    amax = jnp.max(jnp.abs(x.astype(base.compute_dtype(x.dtype))), initial=0)
    _, e = jnp.frexp(amax)
    return jnp.where(jnp.isfinite(amax) & (amax > 0), e, 0).astype(EXP_DTYPE)

  def shift(self, e, headroom: int = 1) -> jax.Array:
    """s = T − e: x·2^s puts the largest |x_j| of the leaf into [2^(T−1), 2^T)."""
    return self.target_exponent(headroom) - e.astype(jnp.int32)

  def to_wire(self, x, s) -> jax.Array:
    """x·2^s (s: None for no scale) rounded to ``dtype``, computed in x's
    compute dtype (scaling by a power of two is exact)."""
    v = x.astype(base.compute_dtype(x.dtype))
    if s is not None:
      v = _times_pow2(v, s)
    return v.astype(self.dtype)

  def from_wire(self, values, s, dtype) -> jax.Array:
    """values·2^−s in the compute dtype of ``dtype``."""
    v = values.astype(base.compute_dtype(dtype))
    if s is not None:
      v = _times_pow2(v, -s.astype(jnp.int32))
    return v

  def _encode(self, key, x):
    del key
    if not self.scale:
      return {"values": self.to_wire(x, None)}
    e = self.exponent(x)
    return {"values": self.to_wire(x, self.shift(e)), "exponent": e}

  def _decode(self, payload, size, dtype, key):
    s = self.shift(payload["exponent"]) if self.scale else None
    return self.from_wire(payload["values"], s, dtype)

  def _wire_bits(self, size, dtype):
    return size * wire.dtype_bits(self.dtype) + (wire.dtype_bits(EXP_DTYPE) if self.scale else 0)

  def _delta(self, size):
    if not self.scale:
      return None  # no bound: beyond the dtype's range a coordinate becomes inf
    # With the largest |x_j| at 2^T·(≥ 1/2), a coordinate keeps a relative
    # error ≤ u while its scaled value is a normal number, i.e. while
    # |x_j|·2^s ≥ 2^minexp, which holds for |x_j| ≥ amax·2^(minexp + 1 − T)
    # (amax·2^s ≥ 2^(T−1)); below, it is rounded to a subnormal or flushed to
    # 0, an error ≤ |x_j| < amax·2^(minexp + 1 − T). So, with amax ≤ ‖x‖,
    # ‖C(x) − x‖² ≤ (u² + d·4^(minexp + 1 − T))‖x‖².
    fi = jnp.finfo(self.dtype)
    tiny = 4.0 ** (int(fi.minexp) + 1 - self.target_exponent())
    bound = self.unit_roundoff**2 + size * tiny
    return 1.0 - bound if bound < 1 else None


def cast(dtype: DTypeArg = "float16", *, scale: bool = False) -> Cast:
  r"""C(x) = x rounded to a lower-precision float ``dtype``.

  The compression of PyTorch DDP's ``fp16_compress_hook`` and
  ``bf16_compress_hook`` and of Horovod's ``Compression.fp16``: each
  coordinate is rounded to nearest (ties to even) in ``dtype`` and sent in
  it, 16 bits (8 for float8) instead of 32.

  With ``scale=True`` each leaf is first multiplied by a power of two 2^s,
  s = T − e, where :math:`\max_j |x_j| \in [2^{e-1}, 2^e)` and 2^T is half the range
  of ``dtype`` but at most 2^15 (2^15 for float16, bfloat16 and
  float8_e5m2, 2^8 for float8_e4m3fn): the largest coordinate lands just
  below 2^T, so nothing overflows (a float16 gradient beyond 65504 would be inf)
  and small coordinates stay out of the subnormals as far as the leaf's
  dynamic range allows. e travels with the payload (16 bits per leaf);
  scaling by a power of two is exact, so only the rounding to ``dtype`` is
  lost.

  Class: deterministic and biased. With ``scale=True``, contractive:
  ‖C(x) − x‖² ≤ (u² + d·4^(m + 1 − T))‖x‖², u = 2^−p the unit roundoff of
  ``dtype`` (2^−11 float16, 2^−8 bfloat16, 2^−4 / 2^−3 float8), m its
  smallest normal exponent: the rounding error of the normal coordinates and
  the coordinates more than 2^(T − m − 1) times smaller than the largest,
  which become subnormal or 0. ``delta`` returns 1 minus that bound.
  Without a scale there is no bound: a coordinate beyond the dtype's range
  becomes inf (compopt's methods then skip the step and count it, see
  ``skip_nonfinite``), and ``delta`` is ``None``.

  Exchange. float16 and bfloat16 payloads are added by the workers in the
  low dtype, by ONE all-reduce, whatever the method's ``scheme`` (except
  ``two_phase``, which sends chunks to owners): each worker contributes
  C(w_i x_i), w_i = 1/n (or 1/(n p_i) with partial participation) as the
  DDP hooks divide by the world size first; with ``scale=True`` the workers
  first agree on one exponent per leaf (an all-reduce max of the int16
  exponents, 16 bits per leaf) and leave a factor n of headroom, so the sum
  cannot overflow either. float8 payloads are decoded and added in float32
  by the method's scheme (all-gather by default).

  What crosses the wire on a CPU: XLA's CPU backend runs a float16
  all-reduce in float16, but widens a bfloat16 all-reduce to float32 (twice
  the bytes, the sum rounded once to bfloat16); under ``jax.vmap`` the
  bfloat16 sum runs in bfloat16. bfloat16 results may therefore differ
  between vmap and shard_map by the rounding of the sum (float16 ones
  agree). GPUs (NCCL) and TPUs reduce float16 and bfloat16 natively.

  Args:
    dtype: ``"float16"`` (default), ``"bfloat16"``, ``"float8_e4m3fn"`` or
      ``"float8_e5m2"`` (a name or the jnp dtype).
    scale: scale each leaf by a power of two first (see above).

  Example:
    >>> import compopt, jax, jax.numpy as jnp
    >>> c = compopt.compressors.cast("float16")
    >>> c(None, jnp.array([1/3, 70000.0]))
    Array([0.33325195,        inf], dtype=float32)
    >>> compopt.compressors.cast("float16", scale=True)(None, jnp.array([1/3, 70000.0]))
    Array([3.3325195e-01, 7.0016000e+04], dtype=float32)
    >>> c.wire_bits((1000,), jnp.float32)
    16000

  References:
    PyTorch, DDP communication hooks: ``fp16_compress_hook``,
    ``bf16_compress_hook``. https://pytorch.org/docs/stable/ddp_comm_hooks.html

    Micikevicius et al. Mixed precision training, ICLR 2018 (scaling into
    float16's range). https://arxiv.org/abs/1710.03740
  """
  dt = check_cast_dtype(dtype, "cast")
  return Cast(dtype=dt, scale=checks.check_bool(scale, "scale", "cast"))
