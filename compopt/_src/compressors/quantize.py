"""Quantizers: natural, random_dithering (QSGD), natural_dithering, terngrad.

All are unbiased: each |x_j| (or |x_j|/‖x‖_p) is rounded at random to one of
the two nearest levels with the probabilities that keep its mean. Wire: one
sign bit per coordinate (packed) and a low-bit code per coordinate (packed in
bit planes where below 8 bits), plus one float32 norm per leaf for the
dithering quantizers.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from compopt._src import checks
from compopt._src import wire
from compopt._src.compressors import base
from compopt._src.compressors import fusion
from compopt._src.compressors import rng


def _apply_sign(magnitude, signs_packed, size):
  return jnp.where(wire.unpack_bits(signs_packed, size), -magnitude, magnitude)


@dataclasses.dataclass(frozen=True)
class Natural(base.Compressor):
  """Natural compression: |x_j| rounded at random to a neighbouring power of 2.

  With 2^e ≤ |x_j| < 2^(e+1), C(x)_j = sign(x_j)·2^(e+1) with probability
  |x_j|/2^e − 1 and sign(x_j)·2^e otherwise, so E C(x) = x; class U(1/8).
  Wire: 1 sign bit and an 8-bit exponent code (16-bit for float64): 9 bits per
  coordinate. Code 0 is zero; the code after the largest finite power is inf,
  which also carries inf/NaN input (the format has no NaN). Below the smallest
  normal number 2^e_min, |x_j| is rounded to 0 or 2^e_min (still unbiased).
  """
  name: str = "natural"

  @staticmethod
  def _code_dtype(dtype):
    return np.uint16 if base.compute_dtype(dtype) == np.float64 else np.uint8

  def _encode(self, key, x):
    ct = base.compute_dtype(x.dtype)
    if ct == np.float32:
      return self._encode_f32(key, x)
    fi = jnp.finfo(ct)
    emin = int(fi.minexp)  # smallest normal is 2**emin
    a = jnp.abs(x.astype(ct))
    mant, exp = jnp.frexp(a)  # a = mant * 2**exp, mant in [0.5, 1)
    normal = a >= fi.tiny
    # lower power 2**(exp-1) has code exp - emin; code 0 is zero.
    low = jnp.where(normal, exp - emin, 0)
    p_up = jnp.where(normal, 2 * mant - 1, a / fi.tiny)
    u = rng.uniform(key, a.size, ct)
    code = low + (u < p_up)
    top = int(fi.maxexp) - emin + 1  # decodes to 2**maxexp = inf
    code = jnp.where(jnp.isfinite(a), code, top)
    return {"signs": wire.pack_bits(x < 0), "codes": code.astype(self._code_dtype(x.dtype))}

  def _encode_f32(self, key, x):
    """One fused pass on the bits of |x| as float32 (also for bf16/f16 input).

    |x| = 2^(E−127)·(1 + m/2^23) for the exponent field E ≥ 1 and mantissa
    field m (E = 0: subnormal, |x| = 2^−126·m/2^23). Rounding up with
    probability m/2^23 = |x|/2^(E−127) − 1 is ``r < m`` for a uniform 23-bit
    integer r, and the code is E or E + 1: the float32 exponent field of the
    result (code 0 is zero, 255 is inf, which also carries inf/NaN input).
    """
    b = jax.lax.bitcast_convert_type(jnp.abs(x.astype(jnp.float32)), jnp.uint32)
    e, m = b >> 23, b & jnp.uint32(0x7FFFFF)
    r = rng.random_bits(key, x.size) >> 9
    code = jnp.where(e == 255, jnp.uint32(255), e + (r < m).astype(jnp.uint32))
    return {"signs": wire.pack_bits(x < 0), "codes": code.astype(jnp.uint8)}

  def _decode(self, payload, size, dtype, key):
    ct = base.compute_dtype(dtype)
    if ct == np.float32:
      # code << 23 is the float32 2^(code − 127) (0 for code 0, inf for 255).
      sign = wire.unpack_bits(payload["signs"], size).astype(jnp.uint32) << 31
      code = payload["codes"].astype(jnp.uint32) << 23
      return jax.lax.bitcast_convert_type(sign | code, jnp.float32)
    emin = int(jnp.finfo(ct).minexp)
    code = payload["codes"].astype(jnp.int32)
    mag = jnp.where(code == 0, 0, jnp.ldexp(jnp.ones((), ct), code - 1 + emin))
    return _apply_sign(mag, payload["signs"], size)

  def _wire_bits(self, size, dtype):
    return 8 * wire.packed_bytes(size) + size * wire.dtype_bits(self._code_dtype(dtype))

  def _omega(self, size):
    return 1.0 / 8.0


def _amax(v):
  """max_j |v_j| (NaN if v holds a NaN).

  The reductions read ``v`` itself: were |v| shared with the elementwise pass
  that follows, XLA would write it to memory for both (5× slower on a CPU).
  XLA's CPU max reduction can drop NaN under vmap (openxla/xla#21461), hence
  the explicit check.
  """
  # Each reduction in its own computation: fused side by side, XLA's CPU
  # backend runs the three in a scalar loop (19 ms instead of 3 on 11M).
  has_nan = fusion.isolated(lambda v: jnp.any(jnp.isnan(v)), v)
  top = fusion.isolated(lambda v: jnp.max(jnp.abs(v)), v)
  return jnp.where(has_nan, jnp.nan, top)


def _scaled_norm2(v):
  """‖v‖₂ as 2^e·‖v·2^−e‖₂ with 2^e the power of two at max_j |v_j|: no
  overflow or underflow, three passes. The scaling is exact, so where the
  plain sqrt(Σ v²) is finite and normal, both give the same bits."""
  amax = _amax(v)
  f, e = base.pow2_normalizer(amax)
  scaled = jnp.abs(v) * f
  out = jnp.ldexp(jnp.sqrt(jnp.sum(scaled * scaled)), e)
  return jnp.where(jnp.isfinite(amax), out, amax)


def _norm(x, p, ct=None):
  """‖x‖_p in ``ct`` (x's dtype by default) for p ∈ {2, inf}, without
  overflow for large entries.

  The 2-norm is one pass, sqrt(Σ x²), unless Σ x² overflowed, underflowed
  into the subnormals or met inf/NaN; then the scaled form is computed. On a
  CPU a cond skips the scaled form when it is not needed; the cond takes
  ``x`` itself, not its upcast copy, so nothing is written to memory on the
  fast path. On other backends both forms are computed and a select picks
  the same one (a cond would copy its predicate to the host there; see
  :func:`fusion.per_backend`).
  """
  ct = x.dtype if ct is None else ct
  if p != 2:
    return _amax(x).astype(ct)
  if x.size < fusion.ISOLATE_MIN:
    return _scaled_norm2(x.astype(ct))
  sumsq = jnp.sum(jnp.square(x.astype(ct)))
  tiny = jnp.finfo(ct).tiny
  plain = jnp.isfinite(sumsq) & ((sumsq >= tiny * 2.0**24) | (sumsq == 0))

  def cpu(x):
    return jax.lax.cond(plain, lambda x: jnp.sqrt(sumsq),
                        lambda x: _scaled_norm2(x.astype(ct)), x)

  def default(x):
    return jnp.where(plain, jnp.sqrt(sumsq), _scaled_norm2(x.astype(ct)))

  return fusion.per_backend(cpu, default, x)


#: The most levels a dithering quantizer takes: its rounding runs in float32,
#: whose 24-bit mantissa cannot tell more levels apart.
MAX_LEVELS = 2**24


@dataclasses.dataclass(frozen=True)
class Dithering(base.Compressor):
  """Random dithering (QSGD) with s uniform levels, or natural dithering.

  y_j = |x_j|/‖x‖_p is rounded at random to a neighbouring level, unbiasedly;
  C(x)_j = ‖x‖_p · sign(x_j) · level_j. Uniform levels are {0, 1/s, ..., 1}
  (QSGD); natural levels are {0, 2^(1−s), ..., 1/2, 1}. Either way s + 1 codes,
  sent in ⌈log2(s + 1)⌉ bits.
  """
  levels: int = 1
  norm: float = 2.0
  natural: bool = False
  name: str = "random_dithering"

  @property
  def decode_passes(self):
    # one pass per bit plane of the codes, and the sign's
    return float(wire.code_bits(self.levels) + 1)

  def _encode(self, key, x):
    ct = base.compute_dtype(x.dtype)
    s = self.levels
    xc = x.astype(ct)
    nrm = fusion.isolated(lambda v: _norm(v, self.norm, ct), x)
    a = jnp.abs(xc)
    # y = |x|/‖x‖, both scaled by the same power of two first: XLA computes
    # a/nrm as a·(1/nrm), and 1/nrm flushes to 0 for ‖x‖ ≥ 2^126 (float32).
    f, _ = base.pow2_normalizer(nrm)
    y = jnp.where(nrm > 0, (a * f) / jnp.where(nrm > 0, nrm * f, 1), 0)
    u = rng.uniform(key, a.size, ct)
    if self.natural and ct == np.float32:
      # y = 2^(E−127)(1 + m/2^23): level 2^(E−127) has code E − 127 + s and
      # the step up is taken with probability m/2^23 (as in natural()).
      b = jax.lax.bitcast_convert_type(y, jnp.uint32)
      e = (b >> 23).astype(jnp.int32)
      small = y < 2.0 ** (1 - s)
      low = jnp.where(small, 0, e - 127 + s)
      p_up = jnp.where(small, y * 2.0 ** (s - 1),
                       (b & jnp.uint32(0x7FFFFF)).astype(jnp.float32) * 2.0**-23)
    elif self.natural:
      mant, exp = jnp.frexp(y)  # y = mant * 2**exp
      small = y < 2.0 ** (1 - s)
      low = jnp.where(small, 0, exp - 1 + s)  # code c >= 1 is level 2**(c - s)
      p_up = jnp.where(small, y * 2.0 ** (s - 1), 2 * mant - 1)
    else:
      t = y * s
      low = jnp.floor(t)
      p_up = t - low
    code = jnp.minimum(low + (u < p_up), s)  # y <= 1 up to round-off
    code = code.astype(jnp.uint8 if s < 256 else jnp.uint32)
    if wire.code_bits(s) > 1:  # one bit plane reads each code once anyway
      code = fusion.materialize(code)
    return {"signs": wire.pack_bits(x < 0),
            "codes": wire.pack_codes(code, wire.code_bits(s)),
            "norm": nrm}

  def _decode(self, payload, size, dtype, key):
    nrm = payload["norm"]
    ct = nrm.dtype
    code = wire.unpack_codes(payload["codes"], size).astype(jnp.int32)
    if self.natural and ct == np.float32 and self.levels <= 126:
      # 2^(c − s) as the float32 with exponent field c − s + 127 (>= 1 here).
      pow2 = jax.lax.bitcast_convert_type(
          (code - self.levels + 127).astype(jnp.uint32) << 23, jnp.float32)
      level = jnp.where(code == 0, 0, pow2)
    elif self.natural:
      level = jnp.where(code == 0, 0, jnp.ldexp(jnp.ones((), ct), code - self.levels))
    else:
      level = code.astype(ct) / self.levels
    return _apply_sign(nrm * level, payload["signs"], size)

  def _wire_bits(self, size, dtype):
    planes = 1 + wire.code_bits(self.levels)
    return planes * 8 * wire.packed_bytes(size) + wire.dtype_bits(base.compute_dtype(dtype))

  def _omega(self, size):
    s, d = self.levels, size
    # r = min(p, 2) = 2 for p in {2, inf}, so d^(1/r) = sqrt(d).
    if self.natural:
      # Horváth et al. (2019a), Thm 7: ω = 1/8 + d^(1/r) 2^(1−s) min(1, d^(1/r) 2^(1−s)).
      t = math.sqrt(d) * 2.0 ** (1 - s)
      return 1.0 / 8.0 + t * min(1.0, t)
    # Alistarh et al. (2017), Lemma 3.1; Horváth et al. (2019a), Thm 6.
    return min(d / s**2, math.sqrt(d) / s)


def _check_norm(norm, owner):
  if isinstance(norm, str):
    table = {"2": 2.0, "l2": 2.0, "inf": math.inf, "linf": math.inf, "max": math.inf}
    if norm.lower() in table:
      return table[norm.lower()]
  elif isinstance(norm, (int, float)) and not isinstance(norm, bool) and norm in (2, math.inf):
    return float(norm)
  raise ValueError(f"{owner}: `norm` must be 2 or inf (also 'l2'/'inf'); got {norm!r}")


def natural() -> Natural:
  """Natural compression (Horváth et al., 2019a): unbiased, class U(1/8).

  Each coordinate is rounded at random to one of the two nearest powers of
  two, keeping its sign, so 9 bits per coordinate go on the wire.

  References:
    Horváth, Ho, Horváth, Sahu, Canini, Richtárik. Natural compression for
    distributed deep learning, 2019. https://arxiv.org/abs/1905.10988
  """
  return Natural()


def random_dithering(levels: int = 1, *, norm: float | str = 2) -> Dithering:
  """Random dithering / QSGD with s = ``levels`` uniform levels.

  C(x)_j = ‖x‖_p · sign(x_j) · ξ_j(s), ξ_j an unbiased random rounding of
  s|x_j|/‖x‖_p to an integer, divided by s. Class U(min(d/s², √d/s)) for p ∈ {2, ∞}.
  Wire: 1 + ⌈log2(s + 1)⌉ bits per coordinate and one float32 norm per leaf.

  Args:
    levels: s >= 1, the number of nonzero levels.
    norm: p, 2 (QSGD) or inf.

  References:
    Alistarh, Grubic, Li, Tomioka, Vojnovic. QSGD: communication-efficient SGD
    via gradient quantization and encoding, NeurIPS 2017.
    https://arxiv.org/abs/1610.02132
  """
  levels = checks.check_int(levels, "levels", "random_dithering", hi=MAX_LEVELS)
  return Dithering(levels=levels, norm=_check_norm(norm, "random_dithering"))


def qsgd(levels: int = 1, *, norm: float | str = 2) -> Dithering:
  """QSGD: the same compressor as :func:`random_dithering` (default 2-norm)."""
  levels = checks.check_int(levels, "levels", "qsgd", hi=MAX_LEVELS)
  return Dithering(levels=levels, norm=_check_norm(norm, "qsgd"), name="qsgd")


def natural_dithering(levels: int = 1, *, norm: float | str = 2) -> Dithering:
  """Natural dithering (Horváth et al., 2019a): levels 0, 2^(1−s), ..., 1/2, 1.

  y_j = ``|x_j|``/‖x‖_p is rounded at random, unbiasedly, to a neighbouring level.
  Class U(1/8 + √d 2^(1−s) min(1, √d 2^(1−s))) for p ∈ {2, ∞}
  (Horváth et al., 2019a, Thm 7). Wire: 1 + ⌈log2(s + 1)⌉ bits per coordinate
  and one float32 norm per leaf.

  Args:
    levels: s >= 1, the number of nonzero levels.
    norm: p, 2 or inf.

  References:
    Horváth, Ho, Horváth, Sahu, Canini, Richtárik. Natural compression for
    distributed deep learning, 2019. https://arxiv.org/abs/1905.10988
  """
  levels = checks.check_int(levels, "levels", "natural_dithering", hi=MAX_LEVELS)
  return Dithering(levels=levels, norm=_check_norm(norm, "natural_dithering"),
                   natural=True, name="natural_dithering")


def terngrad() -> Dithering:
  """TernGrad (Wen et al., 2017): ‖x‖_∞ · sign(x_j) · Bernoulli(``|x_j|``/‖x‖_∞).

  Random dithering with one level and the ∞-norm: unbiased, class
  U(min(d, √d)) = U(√d). Wire: 2 bits per coordinate and one float32 norm.

  References:
    Wen, Xu, Yan, Wu, Wang, Chen, Li. TernGrad: ternary gradients to reduce
    communication in distributed deep learning, NeurIPS 2017.
    https://arxiv.org/abs/1705.07878
  """
  return Dithering(levels=1, norm=math.inf, name="terngrad")
