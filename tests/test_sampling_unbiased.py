"""E C(x) = x for the sparsifiers that draw by importance, on long leaves.

rand_k_wangni keeps coordinate j with probability p_j = min(1, λ|x_j|),
Σ_j p_j = k (Wangni et al. 2018), and sends x_j/p_j; nu_rand_1 is the case
k = 1. Both draw exactly k coordinates by systematic sampling, which walks
the cumulative sum of the p_j. Done in float32, that sum has a spacing of
2^-8 near 5·10^4, where a p_j of 5·10^-5 adds nothing: such coordinates
were never sent, and others were sent with the probability of a rounded
interval instead of p_j. These tests compare the draws with p_j computed
in float64 NumPy from the definition (λ found by sorting, as in
``_reference.wangni_probabilities``, with the search vectorized for long
leaves), never with the library's own output:

* a block of tiny coordinates after a long run of large ones (the case that
  showed the bias): the mean of the block's sum over draws is the block's
  sum, within a few standard errors computed from the draws;
* a leaf of 10^6 coordinates over eight decades of magnitude: how often each
  group of coordinates (by decade of p_j and by quarter of the leaf) is
  sent, and the mean of its sum, against Σ p_j and Σ x_j;
* every coordinate with p_j > 0 is sent within enough draws.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compopt import compressors as C

Z = 5.0  # standard errors allowed


def wangni_probabilities(x, k):
  """p_j = min(1, λ|x_j|) with Σ_j p_j = min(k, nnz), in float64.

  With s the magnitudes in decreasing order and m clipped coordinates (the m
  largest), λ_m = (k − m)/Σ_{j >= m} s_j; the clipped set is the smallest m
  with λ_m s_m < 1 (the m largest then have λ s_j >= 1).
  """
  a = np.abs(np.asarray(x, np.float64).reshape(-1))
  if k >= np.count_nonzero(a):
    return (a > 0).astype(np.float64)
  s = np.sort(a)[::-1]
  tail = np.cumsum(s[::-1])[::-1]  # tail[m] = Σ_{j >= m} s_j
  m = np.arange(k)
  first = int(np.argmax((k - m) * s[:k] < tail[:k]))
  p = np.minimum(1.0, (k - first) / tail[first] * a)
  assert abs(p.sum() - k) < 1e-9 * k
  return p


def _run(c, x, n_draws, batch, reduce, seed=0):
  """reduce(ys) for ``n_draws`` draws ys = C(x), ``batch`` draws at a time
  (one jitted vmap over keys); the results concatenated along axis 0."""
  x = jnp.asarray(x)
  step = jax.jit(lambda keys, x: reduce(jax.vmap(lambda key: c(key, x))(keys)))
  out = []
  for i in range(n_draws // batch):
    keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), i), batch)
    out.append(np.asarray(step(keys, x), np.float64))
  return np.concatenate(out)


def _z(per_draw, expected):
  """(mean − expected)/SE per column, SE from the draws' own spread."""
  per_draw = np.asarray(per_draw, np.float64)
  mean = per_draw.mean(axis=0)
  se = per_draw.std(axis=0, ddof=1) / np.sqrt(per_draw.shape[0])
  return (mean - expected) / np.where(se > 0, se, np.nan), mean, se


# ----------------------------------------------- tiny coordinates after large
BIG, TINY, K_TINY = 99_000, 1_000, 50_000


def test_tiny_block_after_large_ones_is_unbiased():
  # p_j ≈ 0.505 for the ones and 5.05e-5 for the tiny block, whose mass 0.0505
  # sits where the cumulative sum is about 5·10^4: one draw in twenty sends one
  # of its coordinates, as 10^-4/p_j ≈ 1.98. The float32 cumulative sum gave a
  # mean of 0.0012.
  x = np.r_[np.ones(BIG), np.full(TINY, 1e-4)].astype(np.float32)
  p = wangni_probabilities(x, K_TINY)
  sums = _run(C.rand_k_wangni(k=K_TINY), x, n_draws=400, batch=50,
              reduce=lambda ys: jnp.sum(ys[:, BIG:], axis=1))
  z, mean, se = _z(sums, float(x[BIG:].astype(np.float64).sum()))
  assert np.isfinite(z) and abs(z) < 4, (mean, se)
  # Each draw sends 0 or 1 of the block (its mass is below one slot), at x_j/p_j.
  assert set(np.round(sums / (1e-4 / p[BIG]), 3)) <= {0.0, 1.0}


# ----------------------------------------------------- 10^6 coordinates, mixed
D_MIXED, K_MIXED, DECADES = 1_000_000, 200_000, 8


def _mixed_leaf():
  rng = np.random.default_rng(7)
  mag = 10.0 ** rng.uniform(-DECADES / 2, DECADES / 2, D_MIXED)
  return (mag * rng.choice([-1.0, 1.0], D_MIXED)).astype(np.float32)


def _groups(p):
  """Group of each coordinate with p_j in (0, 1): quarter of the leaf × decade
  of p_j, the lowest decades merged until each group holds Σ p_j >= 1 (so
  that most draws send some of it); −1 for p_j ∈ {0, 1}."""
  d = p.size
  quarter = np.arange(d) * 4 // d
  decade = np.floor(np.log10(np.where(p > 0, p, 1.0))).astype(int)
  inner = (p > 0) & (p < 1)
  lo = decade[inner].min()
  while any(p[inner & (quarter == q) & (decade <= lo)].sum() < 1 for q in range(4)):
    lo += 1
  decade = np.clip(decade, lo, -1) - lo
  g = np.where(inner, quarter * (decade.max() + 1) + decade, -1)
  return g, int(g.max()) + 1


def test_mixed_magnitudes_every_group_is_sent_at_its_rate():
  x = _mixed_leaf()
  p = wangni_probabilities(x, K_MIXED)
  g, n_groups = _groups(p)
  gid = jnp.asarray(np.where(g >= 0, g, n_groups), jnp.int32)  # p ∈ {0, 1} last
  sure = jnp.asarray(p == 1)

  def reduce(ys):
    sent = (ys != 0).astype(jnp.float32)
    per = lambda v: jax.vmap(lambda r: jax.ops.segment_sum(r, gid, n_groups + 1))(v)
    always = jnp.all(jnp.where(sure, ys != 0, True), axis=1).astype(jnp.float32)
    return jnp.concatenate([per(sent)[:, :n_groups], per(ys)[:, :n_groups],
                            jnp.sum(sent, axis=1, keepdims=True), always[:, None]], axis=1)

  out = _run(C.rand_k_wangni(k=K_MIXED), x, n_draws=40, batch=4, reduce=reduce)
  counts, sums = out[:, :n_groups], out[:, n_groups:2 * n_groups]
  inner = g >= 0
  members = np.bincount(g[inner], minlength=n_groups) > 0  # a decade may be empty
  expected_count = np.bincount(g[inner], p[inner], minlength=n_groups)
  expected_sum = np.bincount(g[inner], x[inner].astype(np.float64), minlength=n_groups)
  z_count, _, _ = _z(counts[:, members], expected_count[members])
  z_sum, _, _ = _z(sums[:, members], expected_sum[members])
  assert np.all(np.abs(z_count) < Z), np.round(z_count, 1)
  assert np.all(np.abs(z_sum) < Z), np.round(z_sum, 1)
  assert np.all(out[:, -2] == K_MIXED)  # exactly k sent
  assert np.all(out[:, -1] == 1)  # p_j = 1: sent in every draw


# ------------------------------------------------------- no coordinate missed
def _every_coordinate_is_sent(n_big, n_tiny, tiny, k, n_draws, batch):
  x = np.r_[np.ones(n_big), np.full(n_tiny, tiny)].astype(np.float32)
  p = wangni_probabilities(x, k)
  # A coordinate with p_j is missed by all draws with probability (1 − p_j)^n.
  assert n_tiny * (1 - p[-1]) ** n_draws < 1e-5
  seen = _run(C.rand_k_wangni(k=k), x, n_draws, batch,
              reduce=lambda ys: jnp.any(ys != 0, axis=0)[None])
  missed = np.flatnonzero(~seen.any(axis=0) & (p > 0))
  assert missed.size == 0, (missed.size, missed[:10], p[missed[:10]])


def test_every_coordinate_is_sent():
  _every_coordinate_is_sent(n_big=3_000, n_tiny=64, tiny=1e-2, k=1_500,
                            n_draws=3_500, batch=500)


@pytest.mark.slow
def test_every_coordinate_is_sent_below_float32_spacing():
  # The cumulative sum reaches ~4.1·10^3 before the tiny block, where float32's
  # spacing is 2^-11 ≈ 4.9·10^-4 and p_j ≈ 2·10^-4 rounds away.
  _every_coordinate_is_sent(n_big=8_192, n_tiny=64, tiny=4e-4, k=4_096,
                            n_draws=80_000, batch=2_000)
