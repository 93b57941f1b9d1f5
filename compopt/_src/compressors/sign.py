"""Sign compressors: sign, scaled_sign, block_sign.

Wire: one bit per coordinate (packed 8 per byte) and one float32 scale per
block (float64 for float64 input). A bit encodes x_j < 0; zeros are sent as
"+". For the scaled forms this keeps the contraction exact: with s ∈ {±1}^d,
s_j = sign(x_j) wherever x_j ≠ 0, ‖(‖x‖₁/d)s − x‖² = ‖x‖² − ‖x‖₁²/d whatever
s is at the zeros.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from compopt._src import checks
from compopt._src import wire
from compopt._src.compressors import base
from compopt._src.compressors import fusion


def _signs(bits_packed, size, ct):
  return jnp.where(wire.unpack_bits(bits_packed, size), -1, 1).astype(ct)


@dataclasses.dataclass(frozen=True)
class Sign(base.Compressor):
  """sign(x) with values in {−1, +1} (zeros sent as +1). Biased, not contractive.

  A leaf that is all zeros compresses to zero and a NaN in the leaf makes the
  whole output NaN: the payload carries a scale that is 1, 0 or NaN.
  """
  name: str = "sign"
  randomized = False

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
    scale = jnp.where(finite, jnp.where(l1 == 0, 0, 1), jnp.nan).astype(ct)
    return {"signs": wire.pack_bits(x < 0), "scale": scale}

  def _decode(self, payload, size, dtype, key):
    ct = payload["scale"].dtype
    return _signs(payload["signs"], size, ct) * payload["scale"]

  def _wire_bits(self, size, dtype):
    return 8 * wire.packed_bytes(size) + wire.dtype_bits(base.compute_dtype(dtype))


@dataclasses.dataclass(frozen=True)
class BlockSign(base.Compressor):
  """(‖x_B‖₁/d_B) sign(x_B) on each block B of a leaf: class B(min_B 1/d_B).

  ``block_size=None`` makes the whole leaf one block (scaled_sign, the
  compressor of EF-SignSGD, class B(‖x‖₁²/(d‖x‖²)) ⊇ B(1/d)).
  """
  block_size: int | None = None
  name: str = "block_sign"
  randomized = False

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
    return {"signs": wire.pack_bits(x < 0), "scales": scales}

  def _decode(self, payload, size, dtype, key):
    block, _ = self._blocks(size)
    scales = payload["scales"]
    per_coord = jnp.broadcast_to(scales[:, None], (scales.shape[0], block)).reshape(-1)
    return _signs(payload["signs"], size, scales.dtype) * per_coord[:size]

  def _wire_bits(self, size, dtype):
    _, nblocks = self._blocks(size)
    return 8 * wire.packed_bytes(size) + nblocks * wire.dtype_bits(base.compute_dtype(dtype))

  def _delta(self, size):
    block, _ = self._blocks(size)
    return 1.0 / block


def sign() -> Sign:
  """signSGD's compressor: sign(x), one bit per coordinate.

  Biased and not contractive (no δ): ‖sign(x)‖ does not scale with ‖x‖. Zeros
  are sent as +1; an all-zero leaf compresses to zero.

  References:
    Bernstein, Wang, Azizzadenesheli, Anandkumar. signSGD: compressed
    optimisation for non-convex problems, ICML 2018.
    https://arxiv.org/abs/1802.04434
  """
  return Sign()


def scaled_sign() -> BlockSign:
  """(‖x‖₁/d)·sign(x) per leaf: class B(‖x‖₁²/(d‖x‖₂²)), at worst B(1/d).

  The compressor of EF-SignSGD (Karimireddy et al. 2019, Alg. 1). Wire: d bits
  and one scale.

  References:
    Karimireddy, Rebjock, Stich, Jaggi. Error feedback fixes SignSGD and other
    gradient compression schemes, ICML 2019. https://arxiv.org/abs/1901.09847
  """
  return BlockSign(block_size=None, name="scaled_sign")


def block_sign(block_size: int | None = None) -> BlockSign:
  """Block-Sign of COMP-AMS (Li & Li 2022, Def. 2): scaled sign on each block.

  Class B(min_i 1/d_i) over blocks of sizes d_i (Li & Li 2022, Remark 1).

  Args:
    block_size: coordinates per block within a leaf (the last block may be
      shorter); ``None`` (default) makes each leaf one block, i.e. layer-wise.

  References:
    Li, Li. On distributed adaptive optimization with gradient compression,
    ICLR 2022. https://arxiv.org/abs/2205.05632
  """
  if block_size is not None:
    block_size = checks.check_int(block_size, "block_size", "block_sign")
  return BlockSign(block_size=block_size)
