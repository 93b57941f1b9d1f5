"""The compressors users know from other systems: low-precision casts (PyTorch
DDP's fp16/bf16 hooks), Seide et al.'s 1-bit quantization (1-bit SGD) and
Strom's threshold sparsification.

Numbers are checked against the NumPy references of ``_reference.py``
(written from the papers' and the hooks' definitions), the class bounds
against their closed forms, and what crosses the wire against the compiled
program's collectives.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

import compopt
from compopt import compressors as C

import _compiled
import _reference as ref
from benchmarks.perf import hlo

AXIS = "data"
NP_DTYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16,
             "float8_e4m3fn": ml_dtypes.float8_e4m3fn, "float8_e5m2": ml_dtypes.float8_e5m2}


def _wide_range(seed, d=257):
  """Normal draws spread over 2^±12 in magnitude, with zeros and a sign mix."""
  r = np.random.default_rng(seed)
  x = r.standard_normal(d) * 2.0 ** r.integers(-12, 12, d)
  x[::17] = 0.0
  return x.astype(np.float32)


# ====================================================================== cast
@pytest.mark.parametrize("dtype", sorted(NP_DTYPES))
@pytest.mark.parametrize("scale", [False, True])
def test_cast_matches_the_reference(dtype, scale):
  c = C.cast(dtype, scale=scale)
  for seed, mult in [(0, 1.0), (1, 1e-3), (2, 50.0)]:
    x = _wide_range(seed) * np.float32(mult)
    want = ref.cast(x, NP_DTYPES[dtype], scale)
    got = np.asarray(c(None, jnp.asarray(x)), np.float64)
    np.testing.assert_array_equal(got, want.astype(np.float32))
    assert c.wire_bits(x.shape, np.float32) == x.size * np.dtype(NP_DTYPES[dtype]).itemsize * 8 + (
        16 if scale else 0)


def test_cast_scale_keeps_a_float16_overflow_finite_and_exact_to_the_roundoff():
  x = jnp.asarray([1e6, -3e5, 2.0, 0.0], jnp.float32)
  plain = np.asarray(C.cast("float16")(None, x))
  assert np.isinf(plain[:2]).all()
  scaled = np.asarray(C.cast("float16", scale=True)(None, x), np.float64)
  assert np.isfinite(scaled).all()
  np.testing.assert_allclose(scaled, np.asarray(x, np.float64), rtol=2.0**-11)


@pytest.mark.parametrize("dtype", sorted(NP_DTYPES))
def test_scaled_cast_contracts_with_its_stated_delta(dtype):
  c = C.cast(dtype, scale=True)
  u = 2.0 ** -(np.finfo(NP_DTYPES[dtype]).nmant + 1)
  for seed in range(5):
    x = _wide_range(seed, d=1000)
    x[0] = 1e-30  # far below the others: flushed
    err = np.sum((np.asarray(c(None, jnp.asarray(x)), np.float64) - x) ** 2)
    delta = c.delta(x.shape)
    assert 1 - delta >= u**2  # the bound is at least the rounding of the normal range
    assert err <= (1 - delta) * np.sum(np.asarray(x, np.float64) ** 2)
  assert C.cast(dtype).delta(10) is None  # no scale: no bound (overflow)


def test_cast_errors_name_the_parameter():
  with pytest.raises(ValueError, match="`dtype` must be one of"):
    C.cast("int8")
  with pytest.raises(ValueError, match="`dtype`"):
    C.cast(jnp.float32)
  with pytest.raises(TypeError, match="`scale`"):
    C.cast("float16", scale=1)


def _tree():
  return {"w": jnp.zeros((64, 33)), "b": jnp.zeros(33)}


def _worker_grads(n, seed, scale=1.0):
  k = jax.random.key(seed)
  return jax.tree.map(lambda l: scale * jax.random.normal(jax.random.fold_in(k, l.size),
                                                         (n,) + l.shape), _tree())


@pytest.mark.parametrize("scale", [False, True])
def test_float16_cast_is_one_float16_all_reduce_of_its_wire_bits(scale):
  n = 8
  tree = jax.tree.map(lambda l: jax.ShapeDtypeStruct(l.shape, l.dtype), _tree())
  c = C.cast("float16", scale=scale)
  opt = compopt.dcsgd(0.1, compressor=c, axis_name=AXIS, skip_nonfinite=False)
  text = _compiled.step_hlo(opt, tree, n, AXIS)
  per_kind = hlo.collective_bytes(text)
  assert set(per_kind) == {"all-reduce"}
  assert 8 * per_kind["all-reduce"] == C.tree_wire_bits(c, tree)
  reduces = [l for l in text.splitlines() if " all-reduce(" in l or " all-reduce-start(" in l]
  assert any("f16[" in l for l in reduces)
  assert not any("f32[" in l for l in reduces)  # never a float32 copy
  assert len(reduces) == (2 if scale else 1)  # the exponents' max, then the values


def test_bfloat16_cast_is_a_bfloat16_all_reduce_in_the_program_jax_emits():
  """StableHLO (what a GPU/TPU compiles) reduces bfloat16; XLA's CPU backend
  widens it to float32 when it compiles (documented in ``cast``)."""
  n = 8
  tree = _tree()
  opt = compopt.compressed_mean(C.cast("bfloat16"), axis_name=AXIS)
  mesh = jax.make_mesh((n,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
  step = jax.jit(compopt.parallel.shard_map(lambda g, s: opt.update(g, s), mesh, AXIS))
  g = _worker_grads(n, 0)
  text = step.lower(g, compopt.parallel.stack(opt.init(tree), n)).as_text()
  lines = text.splitlines()
  # the operand types close each all_reduce's region: `}) : (tensor<...>) -> ...`
  types = []
  for j, line in enumerate(lines):
    if "stablehlo.all_reduce" in line:
      types.append(next(l for l in lines[j:] if l.strip().startswith("}) :")))
  assert types and all("bf16" in t and "f32" not in t for t in types), types


@pytest.mark.parametrize("dtype,scale", [("float16", False), ("float16", True),
                                         ("bfloat16", False), ("float8_e4m3fn", True)])
def test_cast_mean_over_workers_matches_the_reference(dtype, scale):
  """The aggregate is the workers' rounded values added in the low dtype:
  within n roundings of the exact sum of the reference's rounded values
  (float8 is decoded and added in float32, so exact)."""
  n = 8
  c = C.cast(dtype, scale=scale)
  opt = compopt.compressed_mean(c, axis_name=AXIS)
  g = _worker_grads(n, 1, scale=300.0)
  state = compopt.parallel.stack(opt.init(_tree()), n)
  out, state = jax.vmap(lambda gg, s: opt.update(gg, s), axis_name=AXIS)(g, state)
  low = c.low_precision_sum
  for name in ("w", "b"):
    xs = np.asarray(g[name], np.float64)
    got = np.asarray(out[name][0], np.float64)
    np.testing.assert_array_equal(np.asarray(out[name]), np.broadcast_to(out[name][0], xs.shape))
    if low:  # each worker rounds x_i/n with the common exponent and n of headroom
      amax = np.max(np.abs(xs / n))
      e = int(np.frexp(amax)[1])
      t = min(int(np.log2(float(np.finfo(NP_DTYPES[dtype]).max))), 15) - 3
      s = t - e if scale else 0
      parts = [np.ldexp(np.ldexp(x / n, s).astype(np.float32).astype(NP_DTYPES[dtype])
                        .astype(np.float64), -s) for x in xs]
      exact = np.sum(parts, axis=0)
      u = 2.0 ** -(np.finfo(NP_DTYPES[dtype]).nmant + 1)
      bound = (n - 1) * u * np.sum(np.abs(parts), axis=0) + 1e-30
      assert np.all(np.abs(got - exact) <= bound)
    else:
      want = np.mean([ref.cast(x, NP_DTYPES[dtype], scale) for x in xs], axis=0)
      np.testing.assert_allclose(got, want, rtol=1e-6)
  bits = C.tree_wire_bits(c, _tree())
  assert compopt.comm_bits(state).payload == [bits] * n


def test_float16_cast_overflow_is_skipped_without_a_scale_and_sent_with_one():
  n = 4
  g = _worker_grads(n, 2, scale=40_000.0)  # |g| up to ~1.6e5 > 65504
  for scale, skipped in [(False, 1), (True, 0)]:
    opt = compopt.dcsgd(1.0, compressor=C.cast("float16", scale=scale), axis_name=AXIS)
    state = compopt.parallel.stack(opt.init(_tree()), n)
    out, state = jax.vmap(lambda gg, s: opt.update(gg, s), axis_name=AXIS)(g, state)
    assert int(compopt.skipped_steps(state)[0]) == skipped
    if not skipped:
      gw = np.asarray(g["w"], np.float64)
      # n roundings of float16 at the scale of the largest |g|/n
      tol = n * 2.0**-11 * np.abs(gw).max()
      np.testing.assert_allclose(np.asarray(out["w"][0]), -gw.mean(0), rtol=0, atol=tol)


def test_bfloat16_cast_vmap_and_shard_map_differ_at_most_by_the_sums_rounding():
  n = 8
  opt = compopt.compressed_mean(C.cast("bfloat16"), axis_name=AXIS)
  g = _worker_grads(n, 3)
  state = compopt.parallel.stack(opt.init(_tree()), n)
  a, _ = jax.vmap(lambda gg, s: opt.update(gg, s), axis_name=AXIS)(g, state)
  mesh = jax.make_mesh((n,), (AXIS,))
  b, _ = compopt.parallel.shard_map(lambda gg, s: opt.update(gg, s), mesh, AXIS)(g, state)
  for name in ("w", "b"):
    x, y = np.asarray(a[name], np.float64), np.asarray(b[name], np.float64)
    scale = np.mean(np.abs(np.asarray(g[name], np.float64)), axis=0)
    assert np.all(np.abs(x - y) <= n * 2.0**-8 * scale + 1e-12)


# ===================================================================== onebit
@pytest.mark.parametrize("shape", [(21,), (7, 3), (2, 3, 4), ()])
def test_onebit_matches_the_reference_per_column(shape):
  r = np.random.default_rng(4)
  x = r.standard_normal(shape).astype(np.float32)
  if x.size > 3:
    x.reshape(-1)[::4] = 0.0
  got = np.asarray(C.onebit()(None, jnp.asarray(x)), np.float64)
  np.testing.assert_allclose(got, ref.onebit(x), rtol=1e-6, atol=1e-7)
  cols = shape[-1] if len(shape) >= 2 else 1
  size = int(np.prod(shape))
  assert C.onebit().wire_bits(shape, np.float32) == 8 * -(-size // 8) + 64 * cols


def test_onebit_contracts_with_one_over_the_column_length():
  c = C.onebit()
  compress = jax.jit(lambda v: c(None, v))
  r = np.random.default_rng(5)
  for shape in [(50,), (40, 6), (3, 5, 7)]:
    assert c.delta(shape) == pytest.approx((shape[-1] if len(shape) >= 2 else 1) / np.prod(shape))
    for _ in range(20):
      x = r.standard_normal(shape) * r.exponential(size=shape) ** 3
      err = np.sum((np.asarray(compress(jnp.asarray(x, jnp.float32)), np.float64) - x) ** 2)
      assert err <= (1 - c.delta(shape)) * np.sum(x**2) * (1 + 1e-5)
  # the two means are at least as good as scaled_sign's one magnitude
  x = r.standard_normal(64)
  e1 = np.sum((np.asarray(c(None, jnp.asarray(x, jnp.float32))) - x) ** 2)
  e2 = np.sum((np.asarray(C.scaled_sign()(None, jnp.asarray(x, jnp.float32))) - x) ** 2)
  assert e1 <= e2 + 1e-5


def test_onebit_sgd_matches_seides_loop():
  """n = 4 workers, momentum 0.9, 6 steps: NumPy loop of 1-bit SGD with error
  feedback in gradient units (Seide et al. 2014) vs the vmapped method."""
  n, steps, lr, mu = 4, 6, 0.05, 0.9
  r = np.random.default_rng(6)
  shapes = {"w": (8, 3), "b": (5,)}
  grads = [{k: r.standard_normal((n,) + s).astype(np.float32) for k, s in shapes.items()}
           for _ in range(steps)]
  # reference
  x = {k: np.zeros(s) for k, s in shapes.items()}
  e = {k: np.zeros((n,) + s) for k, s in shapes.items()}
  m = {k: np.zeros(s) for k, s in shapes.items()}
  ref_x = []
  for g in grads:
    for k in shapes:
      p = g[k].astype(np.float64) + e[k]
      q = np.stack([ref.onebit(p[i]) for i in range(n)])
      e[k] = p - q
      m[k] = mu * m[k] + q.mean(0)
      x[k] = x[k] - lr * m[k]
    ref_x.append({k: v.copy() for k, v in x.items()})
  # compopt
  opt = compopt.onebit_sgd(lr, momentum=mu, axis_name=AXIS)
  params = compopt.parallel.stack({k: jnp.zeros(s) for k, s in shapes.items()}, n)
  state = compopt.parallel.stack(opt.init({k: jnp.zeros(s) for k, s in shapes.items()}), n)

  step = jax.jit(jax.vmap(lambda g, s, p: (lambda u, s2: (optax.apply_updates(p, u), s2))(
      *opt.update(g, s, p)), axis_name=AXIS))
  for t, g in enumerate(grads):
    params, state = step({k: jnp.asarray(v) for k, v in g.items()}, state, params)
    for k in shapes:
      np.testing.assert_allclose(np.asarray(params[k][0], np.float64), ref_x[t][k],
                                 rtol=1e-5, atol=1e-6)
  bits = sum(C.onebit().wire_bits(s, np.float32) for s in shapes.values())
  assert compopt.comm_bits(state).payload == [steps * bits] * n


# ================================================================== threshold
def test_threshold_sends_every_coordinate_above_tau_when_they_fit():
  x = _wide_range(7, d=300) * 1e-3
  for quantize in (True, False):
    c = C.threshold(0.5, max_count=300, quantize=quantize)
    want = ref.threshold_all(x, 0.5, quantize)
    assert 0 < np.count_nonzero(want) < 300
    for seed in range(3):
      got = np.asarray(c(jax.random.key(seed), jnp.asarray(x)), np.float64)
      np.testing.assert_array_equal(got, want.astype(np.float32))


def test_threshold_with_more_than_k_above_sends_k_each_with_probability_k_over_m():
  d, k = 40, 3
  x = np.zeros(d, np.float32)
  pos = np.array([0, 1, 2, 17, 30, 39])  # uneven gaps
  x[pos] = np.array([1.0, -2.0, 3.0, -0.9, 0.8, 5.0])
  c = C.threshold(0.5, max_count=k, quantize=False)
  keys = jax.random.split(jax.random.key(8), 6000)
  out = np.asarray(jax.jit(jax.vmap(lambda kk: c(kk, jnp.asarray(x))))(keys))
  sent = out != 0
  assert (sent.sum(1) == k).all()
  assert not sent[:, np.setdiff1d(np.arange(d), pos)].any()
  np.testing.assert_array_equal(out[sent], np.broadcast_to(x, out.shape)[sent])
  p = k / len(pos)
  se = np.sqrt(p * (1 - p) / len(keys))
  assert np.all(np.abs(sent[:, pos].mean(0) - p) < 5 * se)


def test_threshold_wire_bits_and_errors():
  c = C.threshold(0.5, max_count=10)
  # 10 uint16 indices, a uint16 count, 10 packed sign bits (2 bytes), τ in float32
  assert c.wire_bits((1000,), np.float32) == 10 * 16 + 16 + 16 + 32
  assert C.threshold(0.5, ratio=0.01, quantize=False).wire_bits((1000,), np.float32) == (
      10 * 16 + 16 + 10 * 32)
  assert c.delta(100) is None and c.omega(100) is None
  with pytest.raises(ValueError, match="`tau`"):
    C.threshold(0.0, max_count=3)
  with pytest.raises(ValueError, match="exactly one of `max_count`"):
    C.threshold(0.5)
  with pytest.raises(ValueError, match="exactly one of `max_count`"):
    C.threshold(0.5, 3, ratio=0.1)
  with pytest.raises(ValueError, match="`max_count`"):
    C.threshold(0.5, 0)


def test_strom_threshold_with_error_feedback_matches_the_reference_loop():
  """ef_sgd with threshold(τ): Strom's residual loop, each worker sending ±τ
  where |γg + e| > τ (the bound never binds here)."""
  n, steps, lr, tau = 4, 8, 0.1, 0.05
  r = np.random.default_rng(9)
  grads = [r.standard_normal((n, 30)).astype(np.float32) for _ in range(steps)]
  x, e = np.zeros(30), np.zeros((n, 30))
  ref_x = []
  for g in grads:
    p = lr * g.astype(np.float64) + e
    q = np.stack([ref.threshold_all(pi, tau, True) for pi in p])
    e = p - q
    x = x - q.mean(0)
    ref_x.append(x.copy())
  opt = compopt.ef_sgd(lr, compressor=C.threshold(tau, max_count=30), axis_name=AXIS)
  params = compopt.parallel.stack(jnp.zeros(30), n)
  state = compopt.parallel.stack(opt.init(jnp.zeros(30)), n)
  step = jax.jit(jax.vmap(lambda g, s, p: (lambda u, s2: (p + u, s2))(*opt.update(g, s, p)),
                          axis_name=AXIS))
  for t, g in enumerate(grads):
    params, state = step(jnp.asarray(g), state, params)
    np.testing.assert_allclose(np.asarray(params[0], np.float64), ref_x[t], rtol=1e-5,
                               atol=1e-6)
