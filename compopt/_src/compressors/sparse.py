"""Sparsifiers: top_k, rand_k, rand_k_wangni, nu_rand_1.

Payload: the kept values (in x's dtype) and their positions in the flattened
leaf (uint8/uint16/int32, the narrowest type that addresses the leaf), except
for ``rand_k(shared=True)``, whose positions every receiver regenerates from
the shared key, so only the values are sent.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from compopt._src import checks
from compopt._src import wire
from compopt._src.compressors import base
from compopt._src.compressors import fusion


def _check_k_or_ratio(k, ratio, owner):
  if (k is None) == (ratio is None):
    raise ValueError(f"{owner}: give exactly one of `k` (an integer >= 1) or "
                     f"`ratio` (in (0, 1]); got k={k!r}, ratio={ratio!r}")
  if k is not None:
    return checks.check_int(k, "k", owner), None
  return None, checks.check_fraction(ratio, "ratio", owner)


def resolve_k(k: int | None, ratio: float | None, size: int, owner: str) -> int:
  """Number of kept coordinates for a leaf of ``size`` (k >= 1 after rounding)."""
  if k is not None:
    if k > size:
      raise ValueError(
          f"{owner}: `k`={k} exceeds the size {size} of a leaf it is applied to;"
          f" allowed 1 <= k <= size (use `ratio` for trees of mixed sizes)")
    return k
  return min(size, max(1, int(round(ratio * size))))


def uniform_subset(key, size: int, k: int) -> jax.Array:
  """k distinct indices of range(size), uniformly among all k-subsets.

  The positions of the k smallest of ``size`` i.i.d. random 32-bit integers.
  ``lax.top_k`` on float32 is ~40x faster here than the sort behind
  ``jax.random.choice(..., replace=False)``; the integers are converted to
  float32, which keeps every integer below 2**24 exact, so ties (broken
  towards lower indices) are rare among the smallest ones.
  """
  scores = jax.random.bits(key, (size,), jnp.uint32).astype(jnp.float32)
  return lax.top_k(-scores, k)[1]


def nonfinite_poison(x: jax.Array) -> jax.Array:
  """0, or NaN if x holds an inf or NaN: added to the values a sparsifier
  sends so that non-finite input is never hidden by not being sampled."""
  return jnp.where(jnp.all(jnp.isfinite(x)), 0, jnp.nan).astype(x.dtype)


def scatter(size: int, dtype, indices, values) -> jax.Array:
  """The dense vector of a sparse payload: ``values`` added at ``indices``
  (padding values are 0)."""
  return jnp.zeros((size,), dtype).at[indices.astype(jnp.int32)].add(
      values.astype(dtype), mode="drop")


def _sparse_wire_bits(k: int, size: int, dtype, with_indices: bool = True) -> int:
  bits = k * wire.dtype_bits(dtype)
  if with_indices:
    bits += k * wire.dtype_bits(wire.index_dtype(size))
  return bits


def _poisson_slots(mean: float, rows: int, miss: float = 1e-4) -> int:
  """A slot count m with rows·P(Poisson(mean) > m) <= miss, by the Chernoff
  bound P(X >= m) <= e^(−mean)(e·mean/m)^m for m > mean."""
  m = max(1, math.ceil(mean))
  budget = math.log(miss / max(rows, 1))
  while -mean + m * (1 + math.log(mean / m)) > budget:
    m += max(1, m // 64)
  return m


ROW = 16384  # entries per row of the first stage of top_k_indices
# Below this size one lax.top_k is as fast (7 ms either way for 1M on a CPU).
TWO_STAGE_MIN = 1 << 22


def top_k_indices(a: jax.Array, k: int) -> jax.Array:
  """The positions of the k largest entries of the 1-D float array ``a``:
  the same set as ``lax.top_k(a, k)[1]`` (up to ties), found faster.

  Two stages: a ``lax.top_k`` of m candidates in each row of 16,384 entries,
  then a ``lax.top_k`` of k among the candidates. m is sized so that, for
  entries in random order, a row holds more than m of the top k with
  probability below 1e-4 (a Chernoff bound on the Poisson tail); if some row
  is saturated anyway (its m-th candidate reaches the k-th value, so it may
  hide a winner), a ``lax.cond`` falls back to the plain ``lax.top_k``. The
  answer is exact either way. XLA's CPU top_k costs about (row length)·m per
  row, so for k = 1% of 11M this takes ~100 ms instead of ~190 ms (under
  ``jax.vmap`` the cond becomes a select and both run; inputs whose largest
  entries cluster in a few rows take the fallback).

  Only code compiled for a CPU takes the two stages (see
  :func:`fusion.per_backend`); on a GPU or TPU it is the plain ``lax.top_k``,
  with no cond to copy a predicate to the host. Ties among the candidates go
  to the lower row, then the lower position, as they do in ``lax.top_k``, so
  both ways return the same positions in the same order.
  """
  d = a.size
  row = ROW
  full = d // row
  m = _poisson_slots(k * row / d, full) + 1

  def plain(a):
    return lax.top_k(a, k)[1]

  if d < TWO_STAGE_MIN or full * m >= d // 4 or m >= row // 2:
    return plain(a)

  def two_stage(a):
    cand_v, cand_i = lax.top_k(a[:full * row].reshape(full, row), m)
    cand_i = cand_i + (jnp.arange(full, dtype=jnp.int32) * row)[:, None]
    # min over the row, not its last column: slicing top_k's output makes XLA
    # rewrite the top_k as a full sort.
    floor = jnp.min(cand_v, axis=1)
    cand_v, cand_i = cand_v.reshape(-1), cand_i.reshape(-1)
    if full * row < d:  # the tail, all of it a candidate
      cand_v = jnp.concatenate([cand_v, a[full * row:]])
      cand_i = jnp.concatenate([cand_i, jnp.arange(full * row, d, dtype=jnp.int32)])
    vals, pos = lax.top_k(cand_v, k)
    saturated = jnp.any(floor >= vals[-1])
    return lax.cond(saturated, plain, lambda a: cand_i[pos], a)

  return fusion.per_backend(two_stage, plain, a)


@dataclasses.dataclass(frozen=True)
class TopK(base.Compressor):
  """Keeps the k coordinates of largest magnitude: class B(k/d); or, with
  ``block_size``, the k_b largest of each block: class B(min_b k_b/d_b)."""
  k: int | None = None
  ratio: float | None = None
  block_size: int | None = None
  name: str = "top_k"
  randomized = False

  def _blocks(self, size):
    """(block, whole blocks, k per block, tail size, k in the tail)."""
    block = min(self.block_size, size)
    full, tail = size // block, size % block
    if self.ratio is not None:
      per = min(block, max(1, int(round(self.ratio * block))))
      tail_k = min(tail, max(1, int(round(self.ratio * tail)))) if tail else 0
    else:
      nblocks = full + (1 if tail else 0)
      k = resolve_k(self.k, None, size, self.name)
      per = min(block, -(-k // nblocks))
      tail_k = min(tail, per) if tail else 0
    return block, full, per, tail, tail_k

  def _kept(self, size):
    if self.block_size is None:
      return resolve_k(self.k, self.ratio, size, self.name)
    _, full, per, _, tail_k = self._blocks(size)
    return full * per + tail_k

  def _encode(self, key, x):
    del key
    # Selection on |x| in float32: lax.top_k on bfloat16 falls back to a sort.
    a = jnp.abs(x.astype(base.compute_dtype(x.dtype)))
    if self.block_size is None:
      idx = top_k_indices(a, resolve_k(self.k, self.ratio, x.size, self.name))
      return {"values": x[idx], "indices": idx.astype(wire.index_dtype(x.size))}
    block, full, per, tail, tail_k = self._blocks(x.size)
    local, starts = [], []
    if full:
      _, i = lax.top_k(a[:full * block].reshape(full, block), per)
      local.append(i.reshape(-1))
      starts.append(jnp.repeat(jnp.arange(full, dtype=jnp.int32) * block, per,
                               total_repeat_length=full * per))
    if tail_k:
      _, i = lax.top_k(a[full * block:], tail_k)
      local.append(i)
      starts.append(jnp.full((tail_k,), full * block, jnp.int32))
    local = jnp.concatenate(local) if len(local) > 1 else local[0]
    starts = jnp.concatenate(starts) if len(starts) > 1 else starts[0]
    return {"values": x[starts + local], "indices": local.astype(wire.index_dtype(block))}

  def _global_indices(self, payload, size):
    idx = payload["indices"].astype(jnp.int32)
    if self.block_size is not None:
      block, full, per, _, tail_k = self._blocks(size)
      starts = jnp.concatenate([
          jnp.repeat(jnp.arange(full, dtype=jnp.int32) * block, per,
                     total_repeat_length=full * per),
          jnp.full((tail_k,), full * block, jnp.int32)])
      idx = starts + idx
    return idx

  def _decode(self, payload, size, dtype, key):
    return scatter(size, dtype, self._global_indices(payload, size), payload["values"])

  def _sparse(self, payload, size, dtype, key):
    return self._global_indices(payload, size), payload["values"]

  def _wire_bits(self, size, dtype):
    kept = self._kept(size)
    index = wire.index_dtype(size if self.block_size is None else min(self.block_size, size))
    return kept * (wire.dtype_bits(dtype) + wire.dtype_bits(index))

  def _delta(self, size):
    if self.block_size is None:
      return resolve_k(self.k, self.ratio, size, self.name) / size
    block, full, per, tail, tail_k = self._blocks(size)
    shares = ([per / block] if full else []) + ([tail_k / tail] if tail else [])
    return min(shares)


@dataclasses.dataclass(frozen=True)
class RandK(base.Compressor):
  """Keeps k uniformly random coordinates scaled by d/k: class U(d/k − 1).

  With ``shared=True`` every worker keeps the same positions, so the workers'
  compression errors are not independent and DCSGD's δ_n = ω/n + 1 does not
  hold; ``compopt.theory.dcsgd_delta_n(omega, n, shared=True)`` gives the
  constant that does (see :func:`rand_k`).
  """
  k: int | None = None
  ratio: float | None = None
  shared: bool = False
  name: str = "rand_k"

  @property
  def decode_needs_key(self):
    return self.shared

  @property
  def linear_payload(self):
    # Shared positions: the payload is the values alone, and decoding
    # (scatter of (d/k)·values at the key's positions) is linear in them.
    return self.shared

  def _indices(self, key, size):
    return uniform_subset(key, size, resolve_k(self.k, self.ratio, size, self.name))

  def _encode(self, key, x):
    idx = self._indices(key, x.size)
    values = x[idx] + nonfinite_poison(x)
    if self.shared:
      return {"values": values}
    return {"values": values, "indices": idx.astype(wire.index_dtype(x.size))}

  def _sparse(self, payload, size, dtype, key):
    idx = self._indices(key, size) if self.shared else payload["indices"]
    k = payload["values"].shape[0]
    ct = base.compute_dtype(dtype)
    return idx.astype(jnp.int32), payload["values"].astype(ct) * (size / k)

  def _decode(self, payload, size, dtype, key):
    idx, values = self._sparse(payload, size, dtype, key)
    return scatter(size, base.compute_dtype(dtype), idx, values)

  def _wire_bits(self, size, dtype):
    k = resolve_k(self.k, self.ratio, size, self.name)
    return _sparse_wire_bits(k, size, dtype, with_indices=not self.shared)

  def _omega(self, size):
    return size / resolve_k(self.k, self.ratio, size, self.name) - 1.0


_MAX_WANGNI_STEPS = 100


def wangni_probabilities(a: jax.Array, k: int) -> jax.Array:
  """Inclusion probabilities p_j = min(1, λ|x_j|) with Σ_j p_j = min(k, nnz).

  ``a`` is |x| in float32/float64. λ is found by the fixed-point iteration of
  Wangni et al. (2018, Alg. 3): with C the set of clipped coordinates
  (λ|x_j| ≥ 1), λ ← (k − |C|)/Σ_{j∉C}|x_j|. The iterates increase to the exact
  root and C grows at every step that changes λ, so the loop ends after at
  most k + 1 steps (in practice a handful).

  The sums are written in arithmetic (the indicator of λ|x_j| ≥ 1 is
  ⌊min(λ|x_j|, 1)⌋ for a finite λ), which XLA's CPU backend reduces several
  times faster than sums of comparisons; a float sum of 0/1 is exact below
  2^24 entries (float32), beyond which the counts are integer sums.
  """
  kf = jnp.asarray(k, a.dtype)
  float_counts = a.shape[0] < 2 ** (jnp.finfo(a.dtype).nmant + 1)

  def clipped(lam):  # 1 where λ a_j >= 1, else 0 (λ finite and >= 0)
    return jnp.floor(jnp.minimum(lam * a, 1))

  def count(c):  # Σ c for c in {0, 1}, as an int32
    if float_counts:
      return jnp.sum(c).astype(jnp.int32)
    return jnp.sum(c > 0, dtype=jnp.int32)

  nnz = count(jnp.sign(a))

  def count_at(lam):
    finite = jnp.isfinite(lam)
    return jnp.where(finite, count(clipped(jnp.where(finite, lam, 0))), nnz)

  def lam_for(lam, m):  # m = |C| for C = {λ a_j >= 1}
    finite = jnp.isfinite(lam)
    c = clipped(jnp.where(finite, lam, 0))
    rest = jnp.where(finite, jnp.sum(a - a * c), 0)
    m = m.astype(a.dtype)
    return jnp.where(rest > 0, (kf - m) / jnp.where(rest > 0, rest, 1), jnp.inf)

  def cond(state):
    _, m, prev, it = state
    # The cap only guards against float round-off cycling; it is never reached
    # in exact arithmetic before the clipped set stops growing.
    return (m != prev) & (it < _MAX_WANGNI_STEPS)

  def body(state):
    lam, m, _, it = state
    lam = lam_for(lam, m)
    return lam, count_at(lam), m, it + 1

  rest = jnp.sum(a)
  lam0 = jnp.where(rest > 0, kf / jnp.where(rest > 0, rest, 1), jnp.inf)
  # Counters derived from `a`, so that under shard_map the loop carry varies
  # over the same mesh axes from the first iteration on.
  zero = jnp.zeros_like(a[0], jnp.int32)
  init = (lam0, count_at(lam0), zero - 1, zero)
  lam, _, _, _ = lax.while_loop(cond, body, init)
  return jnp.where(a > 0, jnp.minimum(1, lam * a), 0)


# Systematic sampling in fixed point. A probability is a whole number of
# units of 2^-31 (a slot of the sample, probability 1, is 2^31 units), so
# every sum the sampling reads is a sum of integers, exact in whatever order
# XLA adds: cumulative sums wrap modulo 2^32 in uint32, which loses nothing
# the sampling reads, and the totals that steer the rounding are summed
# exactly in 16-bit limbs. A float cumulative sum, by contrast, has spacing
# 2^-8 near 5·10^4, where a p_j of 5·10^-5 adds nothing and is never drawn.
_UNIT_BITS = 31
_U32 = jnp.uint32
_SLOT = np.uint32(1 << _UNIT_BITS)


def _pair(hi, lo):
  """The 64-bit unsigned integer hi·2^32 + lo, as two uint32 scalars."""
  return jnp.asarray(hi, _U32), jnp.asarray(lo, _U32)


def _add64(a, b):
  lo = a[1] + b[1]
  return a[0] + b[0] + (lo < a[1]).astype(_U32), lo


def _sub64(a, b):
  """a − b, for a >= b."""
  return a[0] - b[0] - (a[1] < b[1]).astype(_U32), a[1] - b[1]


def _less64(a, b):
  return (a[0] < b[0]) | ((a[0] == b[0]) & (a[1] < b[1]))


def _select64(c, a, b):
  return jnp.where(c, a[0], b[0]), jnp.where(c, a[1], b[1])


def _slots(count):
  """count·2^31 as a pair, for a non-negative int32 count."""
  count = count.astype(_U32)
  return _pair(count >> 1, (count & 1) << _UNIT_BITS)


def _to_float(a):
  """The pair's value in float32, within a relative 2^-23."""
  return a[0].astype(jnp.float32) * 2.0**32 + a[1].astype(jnp.float32)


def _small(a, cap):
  """The pair's value as an int32, or ``cap`` if it is larger."""
  big = (a[0] > 0) | (a[1] > np.uint32(cap))
  return jnp.where(big, cap, a[1].astype(jnp.int32))


_SUM_ROW = 1 << 15  # 2^15 limbs below 2^16 sum below 2^31


def exact_sum(n: jax.Array):
  """Σ_j n_j of a 1-D uint32 array, exactly, as a (hi, lo) pair of uint32.

  Each n_j is read as two 16-bit limbs (a bitcast, one pass); a row of 2^15
  limbs sums below 2^31, and the row sums (at most 2^16 rows for 2^31
  entries), split again, sum below 2^32.
  """
  d = n.shape[0]
  full = d // _SUM_ROW
  limbs = lax.bitcast_convert_type(n, jnp.uint16)  # (d, 2), in the byte order
  low_first = lax.bitcast_convert_type(np.uint32(1), jnp.uint16)[0] == 1
  sums = []
  if full:
    rows = limbs[:full * _SUM_ROW].reshape(full, _SUM_ROW, 2)
    sums.append(jnp.sum(rows, axis=1, dtype=_U32))
  if full * _SUM_ROW < d:
    sums.append(jnp.sum(limbs[full * _SUM_ROW:], axis=0, dtype=_U32)[None])
  sums = jnp.concatenate(sums) if len(sums) > 1 else sums[0]
  hi = jnp.where(low_first, sums[:, 1], sums[:, 0])  # per row, below 2^31
  lo = jnp.where(low_first, sums[:, 0], sums[:, 1])

  def add(total, v):  # total + Σ_r v_r·2^16, v_r = v1·2^16 + v0 < 2^31
    v1, v0 = jnp.sum(v >> 16, dtype=_U32), jnp.sum(v & 0xFFFF, dtype=_U32)
    total = _add64(total, _pair(v1, 0))
    return _add64(total, _pair(v0 >> 16, v0 << 16))

  lo1, lo0 = jnp.sum(lo >> 16, dtype=_U32), jnp.sum(lo & 0xFFFF, dtype=_U32)
  total = _add64(_pair(lo1 >> 16, lo1 << 16), _pair(0, lo0))
  return add(total, hi)


def _units(p, support):
  """⌊p_j·2^31⌋ units, at least one on the support; p_j = 1 gives a slot."""
  u = jnp.clip(jnp.floor(p * float(_SLOT)), 0, float(_SLOT))  # p·2^31 is exact
  return jnp.where(support, jnp.maximum(u, 1), 0).astype(_U32)


# A margin on the correction's rate, wider than the float32 rounding of the
# few operations that compute it, so that it never overshoots.
_MARGIN = 2.0**-20


def _rescale_rate(n, support, total, target, count):
  """The proportional correction that moves Σ_j n_j (``total``, exact)
  towards ``target`` without passing it: (up, rate, lower_full).

  A sum short of target grows in proportion to n_j, as p_j·target/Σ_j p_j
  would, each n_j capped at 2^31. A sum above target shrinks in proportion to
  n_j − 1, so that no n_j drops below one unit; the coordinates at 2^31
  (p_j = 1) give up units only if the others cannot give up enough.
  """
  n_full = jnp.sum(n == _SLOT, dtype=jnp.int32)
  up = _less64(total, target)
  gap = _select64(up, _sub64(target, total), _sub64(total, target))
  # Σ (n_j − 1) over the support, without and with the coordinates at 2^31.
  room_part = _sub64(_sub64(total, _slots(n_full)), _pair(0, count - n_full))
  room_all = _sub64(total, _pair(0, count))
  lower_full = _less64(room_part, gap)
  weight = _select64(up, total, _select64(lower_full, room_all, room_part))
  gap_f, weight_f = _to_float(gap), _to_float(weight)
  rate = gap_f / jnp.where(weight_f > 0, weight_f, 1)
  rate = jnp.where(up, rate * (1 - _MARGIN), rate * (1 + _MARGIN))
  return up, rate, lower_full


def _rescale(n, support, up, rate, lower_full):
  w = jnp.where(up, n, n - 1)
  w = jnp.where(support & (up | lower_full | (n != _SLOT)), w, 0)
  step = w.astype(jnp.float32) * rate
  # Up: ⌊w_j·rate⌋ <= w_j·gap/Σw, so the sum stays at or below target.
  # Down: ⌈w_j·rate⌉ >= w_j·gap/Σw, so it drops to target or below.
  step = jnp.where(up, jnp.floor(step), jnp.ceil(step))
  step = jnp.clip(step, 0, float(_SLOT)).astype(_U32)
  return jnp.where(up, n + jnp.minimum(step, _SLOT - n), n - jnp.minimum(step, w))


def _room(n, support, up):
  """Units n_j can take (up to 2^31) or give (down to 1; none at 2^31)."""
  give = jnp.where(n == _SLOT, 0, n - 1)
  return jnp.where(support, jnp.where(up, _SLOT - n, give), 0)


_FIND_ROW = 1024


def _row_counts(mask: jax.Array, row: int) -> jax.Array:
  """The number of True entries in each row of ``row`` entries (the last
  row may be shorter)."""
  d = mask.shape[0]
  full = d // row
  counts = []
  if full:
    counts.append(jnp.sum(mask[:full * row].reshape(full, row), axis=1, dtype=jnp.int32))
  if full * row < d:
    counts.append(jnp.sum(mask[full * row:], dtype=jnp.int32)[None])
  return jnp.concatenate(counts) if len(counts) > 1 else counts[0]


def _shares(takes, gap, level):
  """Even shares of ``gap`` units (an int32) among the True entries of
  ``takes``: q + 1 units to each of the first r of them (those below a bound
  J), q to the others, gap = q·takers + r. Returns (q, J, fits), fits: the
  shares are at most ``level``."""
  d = takes.shape[0]
  row = min(_FIND_ROW, d)
  upto = jnp.cumsum(_row_counts(takes, row))
  takers = jnp.maximum(upto[-1], 1)
  each, rest = gap // takers, gap % takers
  fits = (each + (rest > 0) <= level) & ((upto[-1] > 0) | (gap == 0))
  # J: the row holding the rest-th taker, then its place in the row.
  r = jnp.searchsorted(upto, rest, side="left")
  before = jnp.where(r > 0, upto[jnp.maximum(r - 1, 0)], 0)
  start = jnp.minimum(r * row, d - row)
  pos = start + jnp.arange(row, dtype=jnp.int32)
  window = lax.dynamic_slice(takes, (start,), (row,)) & (pos >= r * row)
  t = jnp.searchsorted(jnp.cumsum(window, dtype=jnp.int32), rest - before, side="left")
  return each, jnp.where(rest > 0, start + t + 1, 0).astype(jnp.int32), fits


def _give(n, room, up, level, each, bound):
  """n ± the shares of :func:`_shares` (cut to the room, if they do not fit)."""
  takes = room >= level
  extra = each + (jnp.arange(n.shape[0], dtype=jnp.int32) < bound)
  extra = jnp.minimum(jnp.where(takes, extra, 0).astype(_U32), room)
  return jnp.where(up, n + extra, n - extra)


_LEVELS = (1, 1 << 4, 1 << 8, 1 << 12, 1 << 16, 1 << 20, 1 << 24, 1 << 28)


def _nonzeros(a: jax.Array) -> jax.Array:
  """#{j : a_j > 0} for a >= 0, as an int32. Below 2^24 entries it is Σ
  sign(a_j) in float32 (exact there), which XLA's CPU backend reduces several
  times faster than a sum of comparisons."""
  if a.shape[0] < 1 << 24:
    return jnp.sum(jnp.sign(a.astype(jnp.float32))).astype(jnp.int32)
  return jnp.sum(a > 0, dtype=jnp.int32)


def quantized_probabilities(p: jax.Array, a: jax.Array, k: int) -> jax.Array:
  """Units n_j (probability n_j·2^-31) with Σ_j n_j = min(k, nnz(a))·2^31.

  n_j = ⌊p_j·2^31⌋, at least 1 on the support (so that every coordinate there
  is drawn with a positive probability, however small p_j is), and the few
  units by which these miss the target (from the floors and the float
  rounding of Σ_j p_j) spread evenly: q or q + 1 units added to (or taken
  from) every coordinate with room for them. Should too few have room, a
  correction proportional to n_j first brings the sum to within about one
  unit per coordinate below the target, then the rest is spread over the
  coordinates with room for 1, 16, 256, ... units, the first level that
  holds it. All of it is exact integer arithmetic; no n_j exceeds 2^31.

  ``p`` are the probabilities, ``a`` >= 0 marks the support: the coordinates
  with a_j > 0 (``p`` itself, or |x|, of which p may have flushed a tiny
  entry to 0).
  """
  support = a > 0
  n0 = _units(p, support)
  count = _nonzeros(a)
  target = _slots(jnp.minimum(count, k))
  total = exact_sum(n0)
  up = _less64(total, target)
  gap = _small(_select64(up, _sub64(target, total), _sub64(total, target)), 1 << 30)
  # Even shares of at most `level` units, on every coordinate with that much
  # room; the level leaves room for half of the support lacking it.
  level = (1 + 2 * (gap // jnp.maximum(count, 1) + 1)).astype(_U32)
  each, bound, fits = _shares(_room(n0, support, up) >= level, gap, level)
  fits &= gap < (1 << 30)

  def fast(_):
    return (up, jnp.float32(0), False, up, level, each, bound)

  def slow(_):  # the proportional correction first, then even shares up
    rescale = _rescale_rate(n0, support, total, target, count)
    n1 = _rescale(n0, support, *rescale)
    short = _small(_sub64(target, exact_sum(n1)), (1 << 31) - 1)
    room = _room(n1, support, True)
    levels = jnp.asarray(_LEVELS, jnp.int32)
    takers = jnp.stack([jnp.sum(room >= t, dtype=jnp.int32) for t in _LEVELS])
    lvl = levels[jnp.argmax(short // levels + (short % levels > 0) <= takers)]
    lvl = lvl.astype(_U32)
    each, bound, _ = _shares(room >= lvl, short, lvl)
    return (*rescale, jnp.bool_(True), lvl, each, bound)

  r_up, rate, lower_full, g_up, level, each, bound = lax.cond(fits, fast, slow, None)
  n = _rescale(n0, support, r_up, rate, lower_full)
  return _give(n, _room(n, support, g_up), g_up, level, each, bound)


_DRAW_ROW = 32


def _positions(drawn: jax.Array, k: int):
  """The indices of the True entries of ``drawn`` in increasing order, in k
  slots (d in the slots beyond their number).

  Counts per row of L entries, a cumulative sum over rows to find each
  draw's row, then its entry among the row's L: L = d/k (2 to 32), so that
  the k·L entries read are at most about d.
  """
  d = drawn.shape[0]
  slot = jnp.arange(1, k + 1, dtype=jnp.int32)
  row = min(d, max(2, min(_DRAW_ROW, d // k)))
  upto = jnp.cumsum(_row_counts(drawn, row))
  r = jnp.minimum(jnp.searchsorted(upto, slot, side="left"), upto.shape[0] - 1)
  before = jnp.where(r > 0, upto[jnp.maximum(r - 1, 0)], 0)
  pos = r[:, None] * row + jnp.arange(row, dtype=jnp.int32)
  window = drawn[jnp.minimum(pos, d - 1)] & (pos < d)
  # t: the entries of the row before its (slot − before)-th draw. A running
  # sum over the few columns (XLA's cumsum along a short axis is slower).
  need, seen, t = slot - before, jnp.zeros_like(slot), jnp.zeros_like(slot)
  for i in range(row):
    seen = seen + window[:, i]
    t = t + (seen < need)
  return jnp.where(slot <= upto[-1], r * row + t, d)


def systematic_sample(key, p: jax.Array, k: int, a: jax.Array | None = None):
  """Draws exactly min(k, nnz) coordinates, j with probability π_j: p_j
  rounded to a multiple of 2^-31 (:func:`quantized_probabilities`), for p_j
  <= 1 with Σ_j p_j = min(k, nnz) up to float rounding.

  Systematic sampling (Madow 1949) in fixed point: the probabilities are the
  units n_j of :func:`quantized_probabilities` (π_j = n_j·2^-31) laid end to
  end; one uniform integer w in [0, 2^31); the draws are the j whose stretch
  [N_{j−1}, N_j) of the cumulative sum N holds a point w + m·2^31. As n_j ≤
  2^31, j is drawn at most once, exactly when (N_j + w) mod 2^31 < n_j, which
  has probability n_j/2^31 = π_j over w; the draws number Σ_j n_j/2^31.
  N_j mod 2^32, all that test reads, is an exact wrapping uint32 cumulative
  sum.

  Args:
    key: the PRNG key.
    p: inclusion probabilities (float32 or float64), 0 where a_j = 0.
    k: the number of slots.
    a: magnitudes >= 0, nnz of them positive; each j with a_j > 0 gets
      π_j > 0, even if p_j underflowed to 0 (default: p itself).

  Returns:
    The drawn indices (in increasing order), a mask of the slots that drew
    something (Σ_j p_j < k leaves the last ones empty), and π_j of each draw,
    by which its value is divided: E C(x) = x exactly.
  """
  d = p.shape[0]
  n = quantized_probabilities(p, p if a is None else a, k)
  w = jax.random.bits(key, (), _U32) >> (32 - _UNIT_BITS)
  phase = (jnp.cumsum(n, dtype=_U32) + w) & (_SLOT - np.uint32(1))
  idx = _positions(phase < n, k)
  valid = idx < d
  idx = jnp.minimum(idx, d - 1).astype(jnp.int32)
  prob = n[idx].astype(p.dtype) / float(_SLOT)
  return idx, valid, prob


@dataclasses.dataclass(frozen=True)
class RandKWangni(base.Compressor):
  """Gradient sparsification of Wangni et al. (2018): unbiased, U(d/k − 1).

  Coordinate j is kept with probability p_j = min(1, λ|x_j|), Σ_j p_j = k, and
  sent as x_j / p_j. Wangni et al. draw the coordinates independently, so the
  number kept varies around k; here they are drawn by systematic sampling with
  the same p_j, so exactly k are kept (a fixed-size payload) while E C(x) = x
  and E‖C(x) − x‖² = Σ_j x_j²(1/p_j − 1) are unchanged. That variance is at
  most (d/k − 1)‖x‖² (Cauchy–Schwarz on the unclipped coordinates).

  The sampling is exact (:func:`systematic_sample`). Each p_j is rounded to a
  multiple π_j of 2^-31, at least 2^-31 wherever x_j ≠ 0, and the π_j sum to
  k exactly; every sum is then a sum of integers, so j is kept with
  probability π_j exactly, in any order XLA adds, and sent as x_j/π_j:
  E C(x) = x holds up to the float rounding of that quotient alone. π_j
  differs from p_j by the rounding (under two units of 2^-31) and by an even
  share of the float32 error of Σ_j p_j (in proportion to p_j, should the
  even share not fit). A float32 cumulative sum of the p_j, by contrast, has
  spacing 2^-8 near 5·10^4: there a p_j of 5·10^-5 adds nothing and x_j is
  never sent.
  """
  k: int | None = None
  ratio: float | None = None
  name: str = "rand_k_wangni"

  def _k(self, size):
    return resolve_k(self.k, self.ratio, size, self.name)

  @staticmethod
  def _value_dtype(dtype):
    # x_j/p_j reaches ‖x‖₁: float16's range (65504) cannot hold it for
    # ordinary gradients, so float16 leaves send float32 values.
    return np.dtype(np.float32) if np.dtype(dtype) == np.float16 else np.dtype(dtype)

  def _encode(self, key, x):
    k = self._k(x.size)
    ct = base.compute_dtype(x.dtype)
    a = jnp.abs(x.astype(ct))
    # p is scale-free: computed on |x|·2^−e (exact) so that Σ|x_j| cannot
    # overflow nor λ flush to zero at the ends of the dtype's range.
    f, _ = base.pow2_normalizer(jnp.max(a))
    p = wangni_probabilities(a * f, k)
    idx, valid, prob = systematic_sample(key, p, k, a)
    values = (jnp.where(valid, x[idx].astype(ct) / jnp.where(valid, prob, 1), 0)
              + nonfinite_poison(x).astype(ct))
    return {"values": values.astype(self._value_dtype(x.dtype)),
            "indices": jnp.where(valid, idx, 0).astype(wire.index_dtype(x.size))}

  def _decode(self, payload, size, dtype, key):
    return scatter(size, base.compute_dtype(dtype), payload["indices"], payload["values"])

  def _sparse(self, payload, size, dtype, key):
    return payload["indices"].astype(jnp.int32), payload["values"]

  def _wire_bits(self, size, dtype):
    k = self._k(size)
    return (k * wire.dtype_bits(self._value_dtype(dtype))
            + k * wire.dtype_bits(wire.index_dtype(size)))

  def _omega(self, size):
    return size / self._k(size) - 1.0


@dataclasses.dataclass(frozen=True)
class NuRand1(RandKWangni):
  """Non-uniform Rand-1: one j with probability ``|x_j|/‖x‖₁``, sent as x_j/p_j.

  C(x) = sign(x_j)‖x‖₁ e_j; E C(x) = x and E‖C(x)‖² = ‖x‖₁² ≤ d‖x‖², so C is in
  U(d − 1). It is rand_k_wangni with k = 1 (no coordinate is clipped), drawn
  the same exact way: p_j is rounded to a multiple π_j of 2^-31 and x_j/π_j
  sent, which is sign(x_j)‖x‖₁ up to that rounding (see :class:`RandKWangni`).
  """
  k: int | None = 1
  ratio: float | None = None
  name: str = "nu_rand_1"


def top_k(k: int | None = None, *, ratio: float | None = None,
          block_size: int | None = None) -> TopK:
  """Top-K sparsifier: keeps the k coordinates of largest ``|x_j|`` in each leaf.

  Class B(k/d) (contractive, biased): ‖C(x) − x‖² ≤ (1 − k/d)‖x‖².
  Wire: k values in x's dtype and k indices (uint8/uint16/int32).

  With ``block_size`` b (the fast mode), each leaf is cut into blocks of b
  coordinates and the k_b largest of each block are kept: k_b =
  max(1, round(ratio·b)) (with ``k``: ⌈k/#blocks⌉), exactly k_b·#blocks kept
  (the last, shorter block keeps its own share). Each block loses at most
  (1 − k_b/b) of its squared norm, so the class is B(min_b k_b/d_b), the
  same δ as the exact mode for the same ratio, though other coordinates may
  be picked. Its indices are local to the block (uint8 for b <= 256, uint16
  for b <= 65536), so the wire is smaller too; it runs about 4× faster than
  the exact mode on a CPU (a row-wise ``lax.top_k`` of small k).

  Args:
    k: coordinates kept per leaf, 1 <= k <= leaf size.
    ratio: alternatively, the kept fraction in (0, 1]: k = max(1, round(ratio·d))
      for each leaf of size d.
    block_size: None (exact) or the block length b >= 2 of the fast mode.

  References:
    Stich, Cordonnier, Jaggi. Sparsified SGD with memory, NeurIPS 2018.
    https://arxiv.org/abs/1809.07599
  """
  k, ratio = _check_k_or_ratio(k, ratio, "top_k")
  if block_size is not None:
    block_size = checks.check_int(block_size, "block_size", "top_k", lo=2)
  return TopK(k=k, ratio=ratio, block_size=block_size)


def rand_k(k: int | None = None, *, ratio: float | None = None,
           shared: bool = False) -> RandK:
  """Rand-K: k coordinates drawn uniformly without replacement, scaled by d/k.

  Class U(d/k − 1) (Shulgin & Richtárik 2022, eq. 2). Wire: k values and k
  indices, or the values only when ``shared=True``: the positions then come
  from the key, which every receiver must know (the communication layer passes
  a key common to all workers), and ``decode`` needs that key.

  Warning: with ``shared=True`` every worker draws the same positions, so the
  compression errors C(g_i) − g_i of the n workers are correlated, not
  independent. DCSGD's δ_n = ω/n + 1 (Horváth & Richtárik 2021, Thm 4)
  assumes independent compressors and no longer holds: one shared mask is
  linear, so (1/n) Σ_i C(g_i) = C(ḡ), whose second moment reaches
  (ω + 1)‖ḡ‖², as with a single worker. Size step sizes with
  ``compopt.theory.dcsgd_delta_n(omega, n, shared=True)`` (= ω + 1), not with
  the independent δ_n.

  Args:
    k: coordinates kept per leaf, 1 <= k <= leaf size.
    ratio: alternatively, the kept fraction in (0, 1].
    shared: whether the random positions are shared with the receiver.
  """
  k, ratio = _check_k_or_ratio(k, ratio, "rand_k")
  if not isinstance(shared, bool):
    raise TypeError(f"rand_k: `shared` must be a bool; got {shared!r}")
  return RandK(k=k, ratio=ratio, shared=shared)


def rand_k_wangni(k: int | None = None, *, ratio: float | None = None) -> RandKWangni:
  """Gradient sparsification (Wangni et al., 2018): unbiased, in U(d/k − 1).

  Keeps coordinate j with probability p_j = min(1, λ|x_j|) where Σ_j p_j = k
  (the communication budget) and sends x_j / p_j. Exactly k coordinates are
  sent (systematic sampling in integer arithmetic, exactly unbiased at every
  leaf size; see :class:`RandKWangni`).

  Args:
    k: expected (and here exact) number of kept coordinates per leaf.
    ratio: alternatively, the kept fraction in (0, 1].

  References:
    Wangni, Wang, Liu, Zhang. Gradient sparsification for
    communication-efficient distributed optimization, NeurIPS 2018.
    https://arxiv.org/abs/1710.09854
  """
  k, ratio = _check_k_or_ratio(k, ratio, "rand_k_wangni")
  return RandKWangni(k=k, ratio=ratio)


def nu_rand_1() -> NuRand1:
  """Non-uniform Rand-1 (Horváth & Richtárik 2021, §5.5): one coordinate j
  drawn with probability ``|x_j|/‖x‖₁`` and sent as sign(x_j)‖x‖₁. Class U(d − 1).
  Wire: one value and one index per leaf.
  """
  return NuRand1()
