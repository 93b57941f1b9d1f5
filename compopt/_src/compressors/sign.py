"""Sign compressors: sign, scaled_sign, block_sign.

Each comes in two wire forms, chosen by ``zeros=``, that differ only at the
coordinates where x_j is exactly 0 (a dead ReLU unit, an embedding row not in
the batch, a masked weight):

* ``zeros="plus"`` (the compressors' default): one bit per coordinate
  (packed 8 per byte), the bit of x_j < 0, so a zero is sent as +1. For the
  scaled forms this keeps the papers' contraction exactly: with s ∈ {±1}^d,
  s_j = sign(x_j) wherever x_j ≠ 0, ‖(‖x‖₁/d)s − x‖² = ‖x‖² − ‖x‖₁²/d whatever
  s is at the zeros. But a coordinate whose input is 0 at every step receives
  +scale at every step: a method without error feedback moves it by the
  step size each step.
* ``zeros="keep"``: sign(0) = 0, as in the papers' formulas. One trit
  (sign(x_j) + 1 ∈ {0, 1, 2}) per coordinate, packed 5 per byte in base 3
  (3^5 = 243 <= 256): 1.6 bits per coordinate, 60% more than one bit. The
  scaled forms contract at least as much as with one bit (see
  :func:`scaled_sign`), and a coordinate whose input is 0 gets exactly 0.

Both send one float32 scale per block (float64 for float64 input). The
scaled forms take the scale of a block B of d_B coordinates from its ℓ1 norm,
‖x_B‖₁/d_B (``scale="l1"``, EF-SignSGD and COMP-AMS), or from its ℓ2 norm,
‖x_B‖₂/√d_B (``scale="l2"``, DeepSpeed's 1-bit Adam), which keeps the norm of
the block when no coordinate is zero.
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

#: The wire forms of a sign compressor, by what a coordinate that is exactly
#: zero becomes: "keep" (sign(0) = 0, 1.6 bits per coordinate) or "plus"
#: (sent as +1, 1 bit).
ZEROS = ("keep", "plus")


#: The scales of the scaled sign compressors, by the norm they come from:
#: "l1" (‖x_B‖₁/d_B) or "l2" (‖x_B‖₂/√d_B).
SCALES = ("l1", "l2")


def check_scale(scale, owner: str) -> str:
  """``scale`` if it is one of :data:`SCALES`, else a ValueError naming them."""
  if not isinstance(scale, str) or scale not in SCALES:
    raise ValueError(
        f"{owner}: `scale` must be one of {SCALES} ('l1': ‖x‖₁/d per block; 'l2': "
        f"‖x‖₂/√d per block); got {scale!r}")
  return scale


def check_zeros(zeros, owner: str) -> str:
  """``zeros`` if it is one of :data:`ZEROS`, else a ValueError naming them."""
  if not isinstance(zeros, str) or zeros not in ZEROS:
    raise ValueError(
        f"{owner}: `zeros` must be one of {ZEROS} ('keep': sign(0) = 0, 1.6 bits per "
        f"coordinate; 'plus': zeros sent as +1, 1 bit); got {zeros!r}")
  return zeros


def _signs(bits_packed, size, ct):
  return jnp.where(wire.unpack_bits(bits_packed, size), -1, 1).astype(ct)


def _trits(x):
  """sign(x_j) + 1 ∈ {0, 1, 2} (uint8), read from x's bits: −0.0 and +0.0
  give 1, and a subnormal x_j its sign (XLA's CPU compares subnormals as
  zero: there 1e-45 > 0 is false)."""
  nbits = np.dtype(x.dtype).itemsize * 8
  utype = np.dtype(f"uint{nbits}")
  b = jax.lax.bitcast_convert_type(x, utype)
  nonzero = (b & utype.type((1 << (nbits - 1)) - 1)) != 0  # |x_j| > 0 (or NaN)
  negative = (b >> (nbits - 1)) != 0  # x's sign bit
  return jnp.where(nonzero, jnp.where(negative, 0, 2), 1).astype(jnp.uint8)


def _ternary_signs(trits_packed, size, ct):
  """sign(x) ∈ {−1, 0, 1} in ``ct`` from :func:`wire.pack_trits`'s bytes."""
  # The five digit passes written once to memory on a CPU (for large
  # leaves), and cut to size after: fused with the sum of n decodes of
  # Compressor.decode_sum, or with a cut that is not a multiple of 5, XLA's
  # CPU backend computes the digits element by element, ~10x slower (one
  # leaf of 5.8M + 3: 96 ms instead of 2.6 ms; 4 payloads: 220 ms, not 20).
  t = fusion.materialize(wire.trit_planes(trits_packed))[:size]
  return t.astype(ct) - 1


@dataclasses.dataclass(frozen=True)
class Sign(base.Compressor):
  """sign(x). Biased, not contractive.

  ``zeros="plus"``: values in {−1, +1}, zeros sent as +1 (1 bit each);
  ``zeros="keep"``: values in {−1, 0, +1} (1.6 bits each).

  A leaf that is all zeros compresses to zero and a NaN in the leaf makes the
  whole output NaN: the payload carries a scale that is 1, 0 or NaN (1 or
  NaN with zeros kept, whose codes carry the zeros).
  """
  name: str = "sign"
  zeros: str = "plus"
  randomized = False

  @property
  def decode_passes(self):
    # the base-3 digits, written once, then read with the scale
    return 2.0 if self.zeros == "keep" else 1.0

  def _encode(self, key, x):
    del key
    ct = base.compute_dtype(x.dtype)
    # On a CPU, one reduction: ‖x‖₁ is finite for finite x unless it
    # overflowed, and only then is the input checked element by element. On
    # other backends, and for small leaves, the check is a second reduction
    # that XLA fuses with the first (an inf or NaN in x makes ‖x‖₁ inf or
    # NaN, so both ways give the same value).
    l1 = fusion.isolated(lambda v: jnp.sum(jnp.abs(v.astype(ct))), x)

    def all_finite(v):
      return jnp.all(jnp.isfinite(v))

    if x.size < fusion.ISOLATE_MIN:
      finite = all_finite(x)
    else:
      def checked_on_overflow(v):
        # (v[:0]: an empty, always-true check that varies with x like the
        # other branch, as shard_map's type check wants.)
        return jax.lax.cond(jnp.isfinite(l1), lambda v: all_finite(v[:0]), all_finite, v)

      finite = fusion.per_backend(checked_on_overflow, all_finite, x)
    if self.zeros == "keep":
      # the trits carry the zeros (an all-zero leaf is all zeros), the scale
      # only the NaN
      scale = jnp.where(finite, 1, jnp.nan).astype(ct)
      return {"trits": wire.pack_trits(_trits(x)), "scale": scale}
    scale = jnp.where(finite, jnp.where(l1 == 0, 0, 1), jnp.nan).astype(ct)
    return {"signs": wire.pack_bits(x < 0), "scale": scale}

  def _decode(self, payload, size, dtype, key):
    ct = payload["scale"].dtype
    if self.zeros == "keep":
      return _ternary_signs(payload["trits"], size, ct) * payload["scale"]
    return _signs(payload["signs"], size, ct) * payload["scale"]

  def _wire_bits(self, size, dtype):
    return _sign_bits(self.zeros, size) + wire.dtype_bits(base.compute_dtype(dtype))


def _sign_bits(zeros, size):
  """Bits of the signs of ``size`` coordinates in the wire form ``zeros``."""
  return 8 * (wire.trit_bytes(size) if zeros == "keep" else wire.packed_bytes(size))


@dataclasses.dataclass(frozen=True)
class BlockSign(base.Compressor):
  """a_B sign(x_B) on each block B of a leaf.

  ``scale="l1"``: a_B = ‖x_B‖₁/d_B, class B(min_B 1/d_B); ``block_size=None``
  makes the whole leaf one block (scaled_sign, the compressor of EF-SignSGD,
  class B(‖x‖₁²/(d‖x‖²)) ⊇ B(1/d)). ``scale="l2"``: a_B = ‖x_B‖₂/√d_B, not
  contractive for blocks of 4 or more coordinates (see :func:`scaled_sign`).
  ``zeros``: sign(0) = +1 ("plus", 1 bit per coordinate) or 0 ("keep", 1.6
  bits).
  """
  block_size: int | None = None
  name: str = "block_sign"
  zeros: str = "plus"
  scale: str = "l1"
  randomized = False

  @property
  def decode_passes(self):
    return 2.0 if self.zeros == "keep" else 1.0

  def _blocks(self, size):
    block = size if self.block_size is None else min(self.block_size, size)
    return block, math.ceil(size / block)

  def _encode(self, key, x):
    del key
    ct = base.compute_dtype(x.dtype)
    block, nblocks = self._blocks(x.size)
    full = x.size // block  # whole blocks, summed row by row; then the tail

    def per_block(v, reduce, scale=None):
      a = jnp.abs(v.astype(ct))
      out = []
      if full:
        rows = a[:full * block].reshape(full, block)
        out.append(reduce(rows if scale is None else rows * scale[:full, None], axis=1))
      if full < nblocks:
        tail = a[full * block:] if scale is None else a[full * block:] * scale[-1]
        out.append(reduce(tail)[None])
      return jnp.concatenate(out) if len(out) > 1 else out[0]

    counts = jnp.full((nblocks,), block, ct).at[-1].set(x.size - block * (nblocks - 1))
    if self.scale == "l2":
      return self._payload(x, self._l2_scales(x, per_block, counts))
    scales = fusion.isolated(lambda v: per_block(v, jnp.sum), x) / counts

    def rescaled(v):
      # ‖x_B‖₁ overflowed although the mean |x_j| of the block cannot: sum
      # |x_j|·2^−e with 2^e the power of two at the block's largest |x_j|
      # (exact scaling), take the mean, and scale back by 2^e.
      amax = per_block(v, jnp.max)
      f, e = base.pow2_normalizer(amax)
      mean = jnp.minimum(per_block(v, jnp.sum, f) / counts, amax * f)
      # Only an overflowed sum (inf) of a finite block is replaced: a NaN or
      # inf in the input keeps its NaN/inf sum (a CPU max may drop a NaN).
      return jnp.where(jnp.isinf(scales) & jnp.isfinite(amax), jnp.ldexp(mean, e), scales)

    def cpu(v):  # the rescaled pass only where a sum overflowed
      return jax.lax.cond(jnp.all(jnp.isfinite(scales)), lambda v: scales, rescaled, v)

    def default(v):
      return jnp.where(jnp.isfinite(scales), scales, rescaled(v))

    scales = fusion.per_backend(cpu, default, x)
    return self._payload(x, scales)

  def _payload(self, x, scales):
    if self.zeros == "keep":
      return {"trits": wire.pack_trits(_trits(x)), "scales": scales}
    return {"signs": wire.pack_bits(x < 0), "scales": scales}

  @staticmethod
  def _l2_scales(x, per_block, counts):
    """‖x_B‖₂/√d_B of every block, without overflow or underflow: the sum of
    squares of x·2^−e, e from the block's largest |x_j| (exact scaling by a
    power of two, so every square is at most 1 and none of the largest
    flushes to zero), its root mean, and 2^e back. An inf or NaN in a block
    makes its scale inf or NaN."""
    amax = fusion.isolated(lambda v: per_block(v, jnp.max), x)
    f, e = base.pow2_normalizer(amax)
    squares = per_block(x, lambda a, axis=None: jnp.sum(a * a, axis=axis), f)
    return jnp.ldexp(jnp.sqrt(squares / counts), e)

  def _decode(self, payload, size, dtype, key):
    block, _ = self._blocks(size)
    scales = payload["scales"]
    per_coord = jnp.broadcast_to(scales[:, None], (scales.shape[0], block)).reshape(-1)
    if self.zeros == "keep":
      return _ternary_signs(payload["trits"], size, scales.dtype) * per_coord[:size]
    return _signs(payload["signs"], size, scales.dtype) * per_coord[:size]

  def _wire_bits(self, size, dtype):
    _, nblocks = self._blocks(size)
    return _sign_bits(self.zeros, size) + nblocks * wire.dtype_bits(
        base.compute_dtype(dtype))

  def _delta(self, size):
    block, _ = self._blocks(size)
    if self.scale == "l2":
      # ‖C(x_B) − x_B‖² ≤ (2 − 2/√d_B)‖x_B‖², reached as x_B tends to one
      # nonzero coordinate among d_B nonzeros (see scaled_sign): a
      # contraction only for d_B ≤ 3, the largest block (the smaller last
      # block contracts more).
      return 2.0 / math.sqrt(block) - 1.0 if block <= 3 else None
    # Both forms: ‖C(x_B) − x_B‖² ≤ ‖x_B‖² − ‖x_B‖₁²/d_B ≤ (1 − 1/d_B)‖x_B‖²
    # (see scaled_sign for the form that keeps zeros).
    return 1.0 / block


def sign(zeros: str = "plus") -> Sign:
  """signSGD's compressor: sign(x), one bit (or one trit) per coordinate.

  Biased and not contractive (no δ): ‖sign(x)‖ does not scale with ‖x‖. An
  all-zero leaf compresses to zero.

  One bit cannot carry three values, so ``zeros`` chooses what an exact zero
  becomes. With ``"plus"`` it is sent as +1: a coordinate whose gradient is
  exactly 0 at every step (a dead unit, an embedding row not in the batch, a
  masked weight) is moved by −γ at every step of signSGD, −2 after 20 steps
  at γ = 0.1. With ``"keep"`` it stays 0, as sign(0) = 0 in the papers'
  formulas, for 1.6 bits per coordinate instead of 1 (five trits per byte).
  The default is the 1-bit form whose bits the papers count; the methods
  built on it (:func:`compopt.signsgd`, :func:`compopt.signum`) default to
  ``"keep"``, so that they do not move parameters whose gradient is zero.

  Args:
    zeros: ``"plus"`` (default): x_j = 0 is sent as +1; wire: ceil(d/8)
      bytes and one float32 scale (1, 0 for an all-zero leaf, NaN for a
      non-finite one). ``"keep"``: sign(0) = 0 (and sign(−0.0) = 0); wire:
      ceil(d/5) bytes of base-3 codes and the scale.

  Returns:
    A :class:`Sign` compressor.

  Example:
    >>> import jax.numpy as jnp
    >>> from compopt import compressors as C
    >>> x = jnp.array([0.5, 0., -3.])
    >>> C.sign()(None, x)
    Array([ 1.,  1., -1.], dtype=float32)
    >>> C.sign(zeros="keep")(None, x)
    Array([ 1.,  0., -1.], dtype=float32)
    >>> C.sign().wire_bits(1000, jnp.float32), C.sign(zeros="keep").wire_bits(1000, jnp.float32)
    (1032, 1632)

  References:
    Bernstein, Wang, Azizzadenesheli, Anandkumar. signSGD: compressed
    optimisation for non-convex problems, ICML 2018.
    https://arxiv.org/abs/1802.04434
  """
  return Sign(zeros=check_zeros(zeros, "sign"))


def scaled_sign(zeros: str = "plus", scale: str = "l1") -> BlockSign:
  """(‖x‖₁/d)·sign(x) per leaf: class B(‖x‖₁²/(d‖x‖₂²)), at worst B(1/d);
  with ``scale="l2"``, (‖x‖₂/√d)·sign(x), 1-bit Adam's compressor.

  The compressor of EF-SignSGD (Karimireddy et al. 2019, Alg. 1). With
  a = ‖x‖₁/d and d_nz the number of x_j ≠ 0:

  * ``zeros="plus"`` sends x_j = 0 as +a: ‖C(x) − x‖² = ‖x‖² − ‖x‖₁²/d, so
    δ(x) = φ(x) = ‖x‖₁²/(d‖x‖²) (Karimireddy et al. 2019, Lemma 8). Without
    error feedback (:func:`compopt.scaled_signsgd`) a coordinate whose
    gradient is always 0 moves by −γa every step; with it
    (:func:`compopt.ef_signsgd`) it moves by the worker's residual e_j, which
    does not grow but does not stay 0 either.
  * ``zeros="keep"`` sends sign(0) = 0:
    ``‖C(x) − x‖² = Σ_{x_j≠0} (a − |x_j|)² = ‖x‖² − (‖x‖₁²/d)(2 − d_nz/d)``, so δ(x) = φ(x)(2 − d_nz/d) ≥ φ(x): the
    zeros no longer receive ±a, which removes (d − d_nz)a² from the error.
    The class constant is the same, 1/d (φ ≥ 1/d as ‖x‖₁ ≥ ‖x‖₂; approached
    by a leaf without zeros whose mass is on one coordinate).

  The default is the paper's 1-bit form; the methods built on it
  (:func:`compopt.scaled_signsgd`, :func:`compopt.ef_signsgd`) default to
  ``"keep"``, so that they do not move parameters whose gradient is zero.

  ``scale="l2"`` takes a = ‖x‖₂/√d instead, as DeepSpeed's compressed
  all-reduce of 1-bit Adam does (Tang et al. 2021): with no zero in x (or
  with ``zeros="plus"``), ‖C(x)‖ = ‖x‖. It is not contractive as a class
  for d ≥ 4, so ``delta`` is None there. With ψ = ‖x‖₁/(√d‖x‖₂) ∈ [1/√d, 1]
  and ρ = d_nz/d (ρ = 1 with ``zeros="plus"``),
  ``‖C(x) − x‖² = (1 + ρ − 2ψ)‖x‖²``, whose supremum over x is
  (2 − 2/√d)‖x‖² (all d coordinates nonzero, the mass on one of them): more
  than ‖x‖² for d ≥ 5, equal to it for d = 4 (for any d, ψ > 1/2 gives a
  contraction for that x). For d ≤ 3, δ = 2/√d − 1 (1, 0.414, 0.155).
  1-bit Adam uses it with error feedback all the same; the ℓ1 scale is the
  contractive choice.

  Args:
    zeros: ``"plus"`` (default): one bit per coordinate, ceil(d/8) bytes.
      ``"keep"``: one base-3 code per coordinate, five per byte, ceil(d/5)
      bytes (1.6 bits per coordinate). Either way one float32 scale a
      (float64 for float64 leaves).
    scale: ``"l1"`` (default): a = ‖x‖₁/d; ``"l2"``: a = ‖x‖₂/√d, computed
      without overflow or underflow at any magnitude (the squares of x·2^−e,
      e from the largest ``|x_j|``). The wire is the same.

  Returns:
    A :class:`BlockSign` compressor with one block per leaf.

  Example:
    >>> import jax.numpy as jnp
    >>> from compopt import compressors as C
    >>> x = jnp.array([2., 0., -1.])
    >>> C.scaled_sign()(None, x)
    Array([ 1.,  1., -1.], dtype=float32)
    >>> C.scaled_sign(zeros="keep")(None, x)
    Array([ 1.,  0., -1.], dtype=float32)
    >>> C.scaled_sign(scale="l2")(None, jnp.array([3., -4., 0., 0.]))  # ‖x‖₂/√d = 5/2
    Array([ 2.5, -2.5,  2.5,  2.5], dtype=float32)
    >>> C.scaled_sign(scale="l2").delta(4) is None
    True

  References:
    Karimireddy, Rebjock, Stich, Jaggi. Error feedback fixes SignSGD and other
    gradient compression schemes, ICML 2019. https://arxiv.org/abs/1901.09847

    Tang, Gan, Awan, Rajbhandari, Li, Lian, Liu, Zhang, He. 1-bit Adam:
    communication efficient large-scale training with Adam's convergence
    speed, ICML 2021. https://arxiv.org/abs/2102.02888
  """
  return BlockSign(block_size=None, name="scaled_sign",
                   zeros=check_zeros(zeros, "scaled_sign"),
                   scale=check_scale(scale, "scaled_sign"))


def block_sign(block_size: int | None = None, zeros: str = "plus",
               scale: str = "l1") -> BlockSign:
  """Block-Sign of COMP-AMS (Li & Li 2022, Def. 2): scaled sign on each block.

  Class B(min_i 1/d_i) over blocks of sizes d_i (Li & Li 2022, Remark 1),
  with either choice of ``zeros``: on each block B, as for
  :func:`scaled_sign`, δ(x_B) = φ(x_B) with zeros sent as +1 and
  φ(x_B)(2 − d_nz,B/d_B) ≥ φ(x_B) with zeros kept.

  With ``zeros="plus"`` a coordinate whose gradient is always 0 gets
  +‖x_B‖₁/d_B whenever its block has a nonzero: under COMP-AMS's error
  feedback the parameter then moves away from where it was and back, by
  steps that AMSGrad normalises like every other coordinate's.
  ``zeros="keep"`` leaves it where it is (Li & Li's formula with
  sign(0) = 0), for 1.6 bits per coordinate instead of 1: pick it for
  embeddings and masked or sparse layers.

  Args:
    block_size: coordinates per block within a leaf (the last block may be
      shorter); ``None`` (default) makes each leaf one block, i.e. layer-wise.
    zeros: ``"plus"`` (default, the paper's 1 bit per coordinate): x_j = 0 is
      sent as +1, ceil(d/8) bytes; ``"keep"``: sign(0) = 0, ceil(d/5) bytes of
      base-3 codes. Either way one float32 scale per block.
    scale: ``"l1"`` (default, the paper's ‖x_B‖₁/d_B) or ``"l2"``
      (‖x_B‖₂/√d_B, as :func:`scaled_sign` with ``scale="l2"``: not
      contractive for blocks of 4 or more coordinates).

  Returns:
    A :class:`BlockSign` compressor.

  Example:
    >>> import jax.numpy as jnp
    >>> from compopt import compressors as C
    >>> x = jnp.array([4., 0., -2., 0., 3., -3.])
    >>> C.block_sign(3, zeros="keep")(None, x)
    Array([ 2.,  0., -2.,  0.,  2., -2.], dtype=float32)
    >>> C.block_sign(3, zeros="keep").wire_bits(x.shape, x.dtype)  # 2 bytes, 2 scales
    80

  References:
    Li, Li. On distributed adaptive optimization with gradient compression,
    ICLR 2022. https://arxiv.org/abs/2205.05632
  """
  if block_size is not None:
    block_size = checks.check_int(block_size, "block_size", "block_sign")
  return BlockSign(block_size=block_size, zeros=check_zeros(zeros, "block_sign"),
                   scale=check_scale(scale, "block_sign"))
