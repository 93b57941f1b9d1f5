"""The fast code paths of the compressors against NumPy references.

Exact top_k's two-stage selection (and its fallback), top_k's block mode,
the counter-based random bits, the float32 bit tricks of natural compression
and natural dithering, the one-pass 2-norm and the materialize barrier.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compopt import compressors as C
from compopt._src.compressors import fusion
from compopt._src.compressors import quantize
from compopt._src.compressors import rng
from compopt._src.compressors import sparse


def _np_top_k(x, k):
  keep = np.argsort(-np.abs(x), kind="stable")[:k]
  out = np.zeros_like(x)
  out[keep] = x[keep]
  return out


@pytest.fixture
def large_paths(monkeypatch):
  """The code paths of large arrays (conds, one-pass norm) on small ones."""
  monkeypatch.setattr(fusion, "ISOLATE_MIN", 0)


@pytest.fixture
def two_stage(monkeypatch):
  """The two-stage path of exact top_k from 65,536 entries on (4M by default)."""
  monkeypatch.setattr(sparse, "TWO_STAGE_MIN", 1 << 16)
  monkeypatch.setattr(sparse, "ROW", 4096)


@pytest.mark.parametrize("d, ratio", [(70_000, 0.01), (200_003, 0.05), (1 << 17, 0.001)])
def test_exact_top_k_two_stage_equals_numpy(two_stage, d, ratio):
  x = np.random.default_rng(d).standard_normal(d).astype(np.float32)
  k = max(1, round(ratio * d))
  got = np.asarray(jax.jit(C.top_k(ratio=ratio).__call__)(None, jnp.asarray(x)))
  np.testing.assert_array_equal(got, _np_top_k(x, k))


def test_exact_top_k_falls_back_when_the_largest_entries_cluster(two_stage):
  d = 100_000
  x = np.sort(np.random.default_rng(0).standard_normal(d).astype(np.float32))  # ends hold them
  a = jnp.abs(jnp.asarray(x))
  idx = np.asarray(jax.jit(lambda a: sparse.top_k_indices(a, 1000))(a))
  np.testing.assert_array_equal(np.sort(idx), np.sort(np.argsort(-np.abs(x), kind="stable")[:1000]))


def test_poisson_slots_bound_the_tail():
  for mean, rows in [(5.0, 20_000), (80.0, 600), (0.3, 1000)]:
    m = sparse._poisson_slots(mean, rows)
    tail = 1 - sum(math.exp(-mean) * mean**j / math.factorial(j) for j in range(m + 1))
    assert rows * tail <= 1e-4
    assert m >= mean


@pytest.mark.parametrize("d, block, ratio", [(10_000, 256, 0.02), (4_099, 1024, 0.01),
                                             (300, 64, 0.1), (50, 256, 0.1)])
def test_block_top_k_keeps_each_blocks_largest(d, block, ratio):
  x = np.random.default_rng(1).standard_normal(d).astype(np.float32)
  c = C.top_k(ratio=ratio, block_size=block)
  got = np.asarray(jax.jit(c.__call__)(None, jnp.asarray(x)))
  want, shares = np.zeros_like(x), []
  for s in range(0, d, min(block, d)):
    blk = x[s:s + block]
    kb = min(len(blk), max(1, round(ratio * len(blk))))
    want[s:s + block] = _np_top_k(blk, kb)
    shares.append(kb / len(blk))
  np.testing.assert_array_equal(got, want)
  assert c.delta(d) == pytest.approx(min(shares))
  err = np.sum((got - x) ** 2)
  assert err <= (1 - c.delta(d)) * np.sum(x**2) + 1e-6
  payload = c.encode(None, jnp.asarray(x))
  assert c.wire_bits(d, jnp.float32) == sum(v.size * v.dtype.itemsize * 8
                                             for v in payload.values())
  assert payload["indices"].dtype == (np.uint8 if min(block, d) <= 256 else np.uint16)


def test_block_top_k_with_k_and_bad_block_size():
  c = C.top_k(k=10, block_size=100)
  x = jnp.asarray(np.random.default_rng(2).standard_normal(1000), jnp.float32)
  assert int(jnp.sum(c(None, x) != 0)) == 10  # ⌈10 / 10 blocks⌉ = 1 per block
  with pytest.raises(ValueError, match="block_size"):
    C.top_k(ratio=0.1, block_size=1)
  with pytest.raises(TypeError, match="block_size"):
    C.top_k(ratio=0.1, block_size=2.5)


def test_random_bits_are_a_keyed_bijection_and_uniform():
  bits = np.asarray(rng.random_bits(jax.random.key(0), 1 << 16))
  assert np.unique(bits).size == bits.size  # distinct per coordinate
  other = np.asarray(rng.random_bits(jax.random.key(1), 1 << 16))
  assert np.mean(bits == other) < 1e-3
  # chi-square of the top 4 bits and the low 4 bits over 16 cells
  for cells in (bits >> 28, bits & 15):
    counts = np.bincount(cells, minlength=16)
    chi2 = np.sum((counts - bits.size / 16) ** 2 / (bits.size / 16))
    assert chi2 < 45  # 15 dof: P(chi2 > 45) < 1e-4
  u = np.asarray(rng.uniform(jax.random.key(3), 100_000))
  assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.005
  with jax.enable_x64(True):
    u64 = np.asarray(rng.uniform(jax.random.key(3), 100_000, np.float64))
  assert u64.dtype == np.float64 and u64.min() >= 0 and u64.max() < 1
  assert abs(u64.mean() - 0.5) < 0.005
  assert np.unique(u64).size == u64.size  # 53 random bits, no float32 grid


def test_random_bits_are_uniform_over_keys_for_each_coordinate():
  """What unbiasedness needs: for a fixed coordinate, uniform over keys."""
  keys = jax.random.split(jax.random.key(0), 4000)
  words = np.asarray(jax.vmap(lambda k: rng.random_bits(k, 8))(keys))
  for j in range(8):
    counts = np.bincount(words[:, j] >> 29, minlength=8)
    chi2 = np.sum((counts - 500) ** 2 / 500)
    assert chi2 < 35  # 7 dof


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_natural_bit_path_rounds_to_neighbouring_powers(dtype):
  x = jnp.asarray([0.0, 1.0, -1.5, 3.0, 2.0**-126 / 4, -7e-3, 1e4], dtype)
  a = np.abs(np.asarray(x, np.float64))
  lo = np.where(a > 0, 2.0 ** np.floor(np.log2(np.maximum(a, 2.0**-126))), 0)
  lo = np.where(a < 2.0**-126, 0, lo)
  hi = np.where(a < 2.0**-126, 2.0**-126, 2 * lo)
  hi = np.where(a == lo, lo, hi)
  draws = np.stack([np.asarray(C.natural()(jax.random.key(s), x), np.float64)
                    for s in range(400)])
  mag = np.abs(draws)
  assert np.all((np.isclose(mag, lo) | np.isclose(mag, hi)) | (a == 0))
  assert np.all(np.sign(draws) * np.sign(np.asarray(x, np.float64)) >= 0)
  mean = draws.mean(0)
  sd = (hi - lo) / 2 / math.sqrt(400) + 1e-45
  assert np.all(np.abs(mean - np.asarray(x, np.float64)) <= 5 * sd + 1e-12 * a)


def test_sign_scale_when_the_l1_norm_overflows(large_paths):
  """‖x‖₁ = inf for finite x: the fallback check finds x finite (scale 1);
  an inf in x makes the scale NaN."""
  big = jnp.asarray([3e38, -3e38, 3e38, 1.0], jnp.float32)
  np.testing.assert_array_equal(C.sign()(None, big), [1.0, -1.0, 1.0, 1.0])
  assert np.all(np.isnan(C.sign()(None, big.at[3].set(jnp.inf))))
  assert np.all(C.sign()(None, jnp.zeros(4)) == 0)


def test_natural_non_finite_and_overflow_codes():
  x = jnp.asarray([jnp.inf, -jnp.inf, jnp.nan, 3e38], jnp.float32)
  y = np.asarray(C.natural()(jax.random.key(0), x))
  assert y[0] == np.inf and y[1] == -np.inf and np.isinf(y[2])
  assert y[3] in (2.0**127, np.inf)  # 3e38 rounds to 2^127 or up to 2^128 = inf


@pytest.mark.parametrize("levels", [3, 126, 130])
def test_natural_dithering_decodes_its_levels(levels, large_paths):
  x = jnp.asarray(np.random.default_rng(0).standard_normal(512), jnp.float32)
  c = C.natural_dithering(levels)
  y = np.asarray(c(jax.random.key(1), x), np.float64)
  nrm = float(np.linalg.norm(np.asarray(x, np.float64)))
  lv = np.abs(y) / nrm
  allowed = np.concatenate([[0.0], 2.0 ** np.arange(1 - levels, 1)])
  assert np.all(np.min(np.abs(lv[:, None] - allowed[None]) / np.maximum(allowed, 1e-300),
                       axis=1) < 1e-5)


@pytest.mark.parametrize("scale", [1.0, 1e30, 1e-30, 1e-42])
def test_norm_fast_path_and_scaled_fallback(scale, large_paths):
  x = np.random.default_rng(0).standard_normal(1000) * scale
  v = jnp.asarray(x, jnp.float32)
  want = np.linalg.norm(np.asarray(v, np.float64))
  got = float(jax.jit(lambda v: quantize._norm(v, 2))(v))
  assert got == pytest.approx(want, rel=1e-5)
  assert float(quantize._norm(v, math.inf)) == pytest.approx(np.max(np.abs(np.asarray(v))))
  assert math.isnan(float(quantize._norm(v.at[3].set(jnp.nan), 2)))
  assert float(quantize._norm(v.at[3].set(jnp.inf), 2)) == math.inf


def test_isolated_and_materialize_are_the_identity_under_jit_and_vmap(large_paths):
  x = jnp.arange(12, dtype=jnp.uint8)
  assert np.array_equal(jax.jit(fusion.materialize)(x), x)
  xs = jnp.stack([x, x + 1])
  assert np.array_equal(jax.vmap(fusion.materialize)(xs), xs)
  v = jnp.asarray([jnp.nan, 1.0, -2.0])
  fn = lambda v: (jnp.sum(jnp.abs(v[1:])), v * 2)
  got = jax.jit(lambda v: fusion.isolated(fn, v))(v)
  assert float(got[0]) == 3.0 and np.array_equal(got[1], v * 2, equal_nan=True)
  vs = jnp.stack([v, -v])
  got = jax.vmap(lambda v: fusion.isolated(fn, v))(vs)
  np.testing.assert_array_equal(got[0], [3.0, 3.0])
