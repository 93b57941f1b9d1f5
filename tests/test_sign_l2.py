"""The ℓ2-scaled sign (scaled_sign / block_sign with ``scale="l2"``), the
compressor of DeepSpeed's 1-bit Adam: values against NumPy, the wire, extreme
magnitudes, non-finite input and its (missing) contraction constant."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compopt import compressors as C
from compopt._src import wire

import _compiled


def np_l2_sign(x, zeros, block=None):
  """a_B·sign(x_B) per block B, a_B = ‖x_B‖₂/√d_B, in float64."""
  x = np.asarray(x, np.float64).reshape(-1)
  block = x.size if block is None else block
  out = np.empty_like(x)
  for start in range(0, x.size, block):
    b = x[start:start + block]
    a = math.sqrt(float(np.sum(b * b)) / b.size)
    out[start:start + block] = a * (np.where(b < 0, -1.0, 1.0) if zeros == "plus"
                                    else np.sign(b))
  return out


RNG = np.random.default_rng(0)
X = (RNG.standard_normal(23) * np.linspace(0.1, 5, 23)).astype(np.float32)
X[[3, 11]] = 0.0  # exact zeros, which the two forms send differently


@pytest.mark.parametrize("zeros", ["plus", "keep"])
@pytest.mark.parametrize("block", [None, 1, 3, 5, 8, 23, 100])
def test_values_match_numpy(zeros, block):
  c = (C.scaled_sign(zeros=zeros, scale="l2") if block is None
       else C.block_sign(block, zeros=zeros, scale="l2"))
  got = np.asarray(c(None, jnp.asarray(X)))
  want = np_l2_sign(X, zeros, None if block is None else min(block, X.size))
  np.testing.assert_allclose(got, want, rtol=2e-7, atol=0)
  # zeros: +a_B with "plus" (0 in a block of its own, whose a_B is 0), 0 with "keep"
  if zeros == "plus" and block != 1:
    assert (got[[3, 11]] > 0).all()
  else:
    assert (got[[3, 11]] == 0).all()


def test_a_leaf_of_any_shape_is_one_block_by_default():
  x = jnp.asarray(X[:20].reshape(4, 5))
  got = C.scaled_sign(scale="l2")(None, x)
  assert got.shape == (4, 5)
  np.testing.assert_allclose(np.asarray(got).reshape(-1), np_l2_sign(X[:20], "plus"),
                             rtol=2e-7)
  tree = {"a": x, "b": jnp.asarray(X[20:])}  # a pytree: each leaf its own scale
  out = C.scaled_sign(scale="l2")(None, tree)
  np.testing.assert_allclose(out["b"], np_l2_sign(X[20:], "plus"), rtol=2e-7)


def test_the_norm_is_kept_where_no_coordinate_is_zero():
  x = jnp.asarray(RNG.standard_normal(1000), jnp.float32)
  for zeros in ("plus", "keep"):
    y = C.scaled_sign(zeros=zeros, scale="l2")(None, x)
    np.testing.assert_allclose(jnp.linalg.norm(y), jnp.linalg.norm(x), rtol=1e-5)
  # with zeros sent as +a the norm is kept whatever x is
  y = C.scaled_sign(zeros="plus", scale="l2")(None, jnp.asarray(X))
  np.testing.assert_allclose(jnp.linalg.norm(y), np.linalg.norm(X), rtol=1e-6)


@pytest.mark.parametrize("zeros", ["plus", "keep"])
@pytest.mark.parametrize("size, block", [(1, None), (7, None), (23, 5), (1000, 64)])
def test_wire_is_the_l1_forms_wire_and_the_payload_is_that_size(zeros, size, block):
  l2 = C.block_sign(block, zeros=zeros, scale="l2")
  l1 = C.block_sign(block, zeros=zeros)
  x = jnp.asarray(RNG.standard_normal(size), jnp.float32)
  nblocks = math.ceil(size / (size if block is None else block))
  signs = math.ceil(size / 5) if zeros == "keep" else math.ceil(size / 8)
  assert l2.wire_bits(size, jnp.float32) == 8 * signs + 32 * nblocks
  assert l2.wire_bits(size, jnp.float32) == l1.wire_bits(size, jnp.float32)
  assert 8 * wire.nbytes(jax.tree.leaves(l2.encode(None, x))) == l2.wire_bits(size, jnp.float32)
  assert l2.wire_bits(size, jnp.float64) == 8 * signs + 64 * nblocks


@pytest.mark.parametrize("power", [-100, -60, 0, 60, 100])
def test_any_magnitude_without_overflow_or_underflow(power):
  """Scaling x by 2^k scales C(x) by 2^k exactly: sums of squares of x·2^−e,
  never of x itself (whose squares leave float32's range beyond 2^±64)."""
  c = C.block_sign(5, scale="l2")
  x = jnp.asarray(X)
  base = c(None, x)
  got = c(None, x * jnp.float32(2.0 ** power))
  np.testing.assert_array_equal(got, base * jnp.float32(2.0 ** power))
  assert np.all(np.isfinite(np.asarray(got))) and np.count_nonzero(np.asarray(got)) == X.size
  # decimal magnitudes too, against float64
  for scale in (1e-30, 1e30):
    np.testing.assert_allclose(c(None, x * scale), np_l2_sign(X * scale, "plus", 5),
                               rtol=1e-6)


def test_a_non_finite_block_gives_a_non_finite_scale_and_leaves_the_others():
  x = np.asarray(X[:15]).copy()
  x[7] = np.nan
  y = np.asarray(C.block_sign(5, scale="l2")(None, jnp.asarray(x)))
  assert np.isnan(y[5:10]).all()
  np.testing.assert_allclose(y[:5], np_l2_sign(x[:5], "plus"), rtol=2e-7)
  np.testing.assert_allclose(y[10:], np_l2_sign(x[10:], "plus"), rtol=2e-7)
  x[7] = np.inf
  y = np.asarray(C.block_sign(5, scale="l2")(None, jnp.asarray(x)))
  assert not np.isfinite(y[5:10]).any()
  assert np.isfinite(y[:5]).all() and np.isfinite(y[10:]).all()


def test_all_zero_leaf_compresses_to_zero():
  for zeros in ("plus", "keep"):
    y = C.scaled_sign(zeros=zeros, scale="l2")(None, jnp.zeros(9))
    np.testing.assert_array_equal(y, 0)


def test_large_leaf_takes_the_same_values():
  """Leaves of 2^16 coordinates and more take the CPU's isolated reductions."""
  x = RNG.standard_normal(70_001).astype(np.float32)
  for c, block in [(C.scaled_sign(scale="l2"), None), (C.block_sign(4096, scale="l2"), 4096)]:
    got = jax.jit(lambda v, c=c: c(None, v))(jnp.asarray(x))
    np.testing.assert_allclose(got, np_l2_sign(x, "plus", block), rtol=1e-5)


def test_float64_and_bfloat16_leaves():
  with _compiled.x64():
    x = jnp.asarray(X.astype(np.float64) * (1 + 1e-12))
    payload = C.scaled_sign(scale="l2").encode(None, x)
    assert payload["scales"].dtype == jnp.float64
    np.testing.assert_allclose(C.scaled_sign(scale="l2")(None, x),
                               np_l2_sign(np.asarray(x), "plus"), rtol=1e-14)
  xb = jnp.asarray(X, jnp.bfloat16)
  y = C.scaled_sign(scale="l2")(None, xb)
  assert y.dtype == jnp.bfloat16
  assert C.scaled_sign(scale="l2").encode(None, xb)["scales"].dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(y, np.float32),
                             np_l2_sign(np.asarray(xb, np.float32), "plus"), rtol=1e-2)


# ------------------------------------------------------------ the class


def test_delta_exists_only_for_blocks_of_at_most_three():
  c = C.scaled_sign(scale="l2")
  assert c.delta(1) == pytest.approx(1.0)
  assert c.delta(2) == pytest.approx(math.sqrt(2) - 1)
  assert c.delta(3) == pytest.approx(2 / math.sqrt(3) - 1)
  assert c.delta(4) is None and c.delta(1000) is None
  assert C.block_sign(3, scale="l2").delta(1000) == pytest.approx(2 / math.sqrt(3) - 1)
  assert C.block_sign(2, scale="l2").delta(7) == pytest.approx(math.sqrt(2) - 1)
  assert C.block_sign(4, scale="l2").delta(1000) is None
  assert C.block_sign(8, zeros="keep", scale="l2").delta(5) is None  # one block of 5
  assert C.tree_delta(C.scaled_sign(scale="l2"), {"a": jnp.zeros(3), "b": jnp.zeros(2)}) == (
      pytest.approx(2 / math.sqrt(3) - 1))
  assert C.tree_delta(C.scaled_sign(scale="l2"), {"a": jnp.zeros(4)}) is None
  assert not c.unbiased


@pytest.mark.parametrize("zeros", ["plus", "keep"])
@pytest.mark.parametrize("d", [2, 3])
def test_delta_holds_and_is_approached(zeros, d):
  c = C.scaled_sign(zeros=zeros, scale="l2")
  delta = c.delta(d)
  rng = np.random.default_rng(d)
  xs = np.concatenate([rng.standard_normal((2000, d)),
                       # near the worst case: every coordinate nonzero, the mass on one
                       np.concatenate([np.ones((50, 1)),
                                       np.geomspace(1e-1, 1e-6, 50)[:, None] * np.ones((1, d - 1))],
                                      axis=1)]).astype(np.float32)
  y = np.asarray(jax.vmap(lambda v: c(None, v))(jnp.asarray(xs)), np.float64)
  err = np.sum((y - xs) ** 2, 1)
  norm = np.sum(xs.astype(np.float64) ** 2, 1)
  assert np.all(err <= (1 - delta) * norm * (1 + 1e-5))
  assert np.max(err / norm) > (1 - delta) - 1e-4  # tight


@pytest.mark.parametrize("zeros", ["plus", "keep"])
@pytest.mark.parametrize("d", [5, 16, 1000])
def test_no_contraction_from_four_coordinates(zeros, d):
  """x = (1, ε, ..., ε): ‖C(x) − x‖² → (2 − 2/√d)‖x‖² > ‖x‖² for d ≥ 5."""
  x = np.full(d, 1e-7, np.float32)
  x[0] = 1.0
  y = np.asarray(C.scaled_sign(zeros=zeros, scale="l2")(None, jnp.asarray(x)), np.float64)
  ratio = np.sum((y - x) ** 2) / np.sum(x.astype(np.float64) ** 2)
  assert ratio == pytest.approx(2 - 2 / math.sqrt(d), rel=1e-3)
  assert ratio > 1


# ------------------------------------------------------------ arguments


def test_the_l1_default_is_unchanged():
  assert C.scaled_sign().scale == "l1" and C.block_sign(4).scale == "l1"
  x = jnp.asarray(X)
  np.testing.assert_array_equal(C.scaled_sign()(None, x), C.scaled_sign(scale="l1")(None, x))
  np.testing.assert_allclose(C.scaled_sign()(None, x),
                             np.mean(np.abs(X)) * np.where(X < 0, -1, 1), rtol=1e-6)
  assert C.scaled_sign(scale="l2") != C.scaled_sign()


@pytest.mark.parametrize("factory", [lambda s: C.scaled_sign(scale=s),
                                     lambda s: C.block_sign(4, scale=s)])
@pytest.mark.parametrize("bad", ["l3", "L2", None, 2])
def test_bad_scale_is_named(factory, bad):
  with pytest.raises(ValueError, match=r"`scale` must be one of \('l1', 'l2'\)"):
    factory(bad)
