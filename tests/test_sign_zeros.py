"""The sign of an exact zero: the two wire forms of the sign compressors.

``zeros="plus"`` sends x_j = 0 as +1 in one bit; ``zeros="keep"`` sends
sign(0) = 0 in base-3 codes, five per byte. References are independent of the
library: NumPy loops of the papers' formulas (signSGD, scaled signSGD,
EF-SignSGD = Karimireddy et al. 2019 Alg. 1, COMP-AMS = Li & Li 2022 Alg. 2)
with sign(0) = 0 or +1, ``np.sign``, the payload bytes read back with NumPy,
and the closed form of the scaled sign's error.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import _compiled
import compopt
from benchmarks.perf import hlo
from compopt import compressors as C
from compopt._src import wire

AXIS = "workers"
F32 = np.finfo(np.float32)


def _plus_sign(v):
  """sign with sign(0) = +1 (the 1-bit form), per leaf: an all-zero leaf gives 0."""
  return np.where(v < 0, -1.0, 1.0) * (np.abs(v).sum() > 0)


def _sign(v, zeros):
  return np.sign(v) if zeros == "keep" else _plus_sign(v)


def _scaled_sign(v, zeros, block=None):
  """(‖v_B‖₁/d_B) sign(v_B) on consecutive blocks B of v."""
  block = v.size if block is None else block
  out = np.zeros_like(v)
  for s in range(0, v.size, block):
    vb = v[s:s + block]
    out[s:s + block] = np.abs(vb).sum() / vb.size * _sign(vb, zeros)
  return out


# ============================================================ the drift
N, D, STEPS, DEAD, LR = 2, 6, 20, 2, 0.1


def _grads():
  """g[t, i]: worker i's gradient at step t, exactly 0 at coordinate DEAD."""
  g = np.random.default_rng(0).standard_normal((STEPS, N, D)).astype(np.float32)
  g[:, :, DEAD] = 0.0
  return g


def _run(opt, grads):
  """The params after every step of ``opt`` on N simulated workers (vmap),
  and the last state."""

  def step(x, state, g):
    u, state = opt.update(g, state, x)
    return optax.apply_updates(x, u), state

  f = jax.jit(jax.vmap(step, axis_name=AXIS))
  x0 = jnp.zeros(D, jnp.float32)
  x = compopt.parallel.stack(x0, N)
  state = compopt.parallel.stack(opt.init(x0), N)
  xs = []
  for t in range(STEPS):
    x, state = f(x, state, jnp.asarray(grads[t]))
    xs.append(np.asarray(x[0], np.float64))
  return np.stack(xs), state


def _np_signsgd(g, zeros):
  """x ← x − γ sign(Σ_i sign(g_i)) (Bernstein et al. 2018, majority vote)."""
  x, xs = np.zeros(D), []
  for t in range(STEPS):
    x = x - LR * np.sign(sum(_sign(g[t, i], zeros) for i in range(N)))
    xs.append(x)
  return np.stack(xs)


def _np_scaled_signsgd(g, zeros):
  """x ← x − γ (1/n) Σ_i (‖g_i‖₁/d) sign(g_i) (Karimireddy et al. 2019, §6)."""
  x, xs = np.zeros(D), []
  for t in range(STEPS):
    x = x - LR * np.mean([_scaled_sign(g[t, i], zeros) for i in range(N)], 0)
    xs.append(x)
  return np.stack(xs)


def _np_ef_signsgd(g, zeros):
  """Karimireddy et al. 2019, Alg. 1 on n workers."""
  x, e, xs = np.zeros(D), np.zeros((N, D)), []
  for t in range(STEPS):
    p = LR * g[t] + e  # p = γg + e
    delta = np.stack([_scaled_sign(p[i], zeros) for i in range(N)])  # (‖p‖₁/d) sign(p)
    e = p - delta
    x = x - delta.mean(0)
    xs.append(x)
  return np.stack(xs)


B1, B2, EPS, BLOCK = 0.75, 0.9375, 1e-8, 3


def _np_comp_ams(g, zeros):
  """Li & Li 2022, Alg. 2: Block-Sign with error feedback, AMSGrad on the mean."""
  x, e = np.zeros(D), np.zeros((N, D))
  m, v, vhat, xs = np.zeros(D), np.zeros(D), np.zeros(D), []
  for t in range(STEPS):
    gt = np.stack([_scaled_sign(g[t, i] + e[i], zeros, BLOCK) for i in range(N)])
    e = e + g[t] - gt
    gbar = gt.mean(0)
    m = B1 * m + (1 - B1) * gbar
    v = B2 * v + (1 - B2) * gbar**2
    vhat = np.maximum(vhat, v)
    x = x - LR * m / np.sqrt(vhat + EPS)
    xs.append(x)
  return np.stack(xs)


def _np_signum(g, zeros, beta=0.9):
  """m_i ← βm_i + (1 − β)g_i, x ← x − γ sign(Σ_i sign(m_i))."""
  x, m, xs = np.zeros(D), np.zeros((N, D)), []
  for t in range(STEPS):
    m = beta * m + (1 - beta) * g[t]
    x = x - LR * np.sign(sum(_sign(m[i], zeros) for i in range(N)))
    xs.append(x)
  return np.stack(xs)


def _zeros_arg(zeros):
  """The methods' default is "keep": pass nothing for it, so that the
  default is what is tested."""
  return {} if zeros == "keep" else {"zeros": zeros}


DRIFT = {
    "signsgd": (lambda z: compopt.signsgd(LR, axis_name=AXIS, **_zeros_arg(z)), _np_signsgd),
    "signum": (lambda z: compopt.signum(LR, axis_name=AXIS, **_zeros_arg(z)), _np_signum),
    "scaled_signsgd": (lambda z: compopt.scaled_signsgd(LR, axis_name=AXIS, **_zeros_arg(z)),
                       _np_scaled_signsgd),
    "ef_signsgd": (lambda z: compopt.ef_signsgd(LR, axis_name=AXIS, **_zeros_arg(z)),
                   _np_ef_signsgd),
    "comp_ams_block_sign": (lambda z: compopt.comp_ams(
        LR, compressor=C.block_sign(BLOCK, zeros=z), b1=B1, b2=B2, eps=EPS,
        axis_name=AXIS), _np_comp_ams),
}
# Each case compiles a step: the default run has every method with zeros
# kept and signSGD's 1-bit drift; the other 1-bit forms run under -m slow.
FAST_DRIFT = {("signsgd", "plus"), ("signsgd", "keep"), ("scaled_signsgd", "keep"),
              ("ef_signsgd", "keep"), ("comp_ams_block_sign", "keep")}


def _drift_params():
  return [pytest.param(name, zeros, id=f"{name}-{zeros}",
                       marks=() if (name, zeros) in FAST_DRIFT else pytest.mark.slow)
          for name in DRIFT for zeros in ("keep", "plus")]


@pytest.mark.parametrize("name,zeros", _drift_params())
def test_a_coordinate_whose_gradient_is_always_zero(name, zeros):
  make, reference = DRIFT[name]
  g = _grads()
  got, state = _run(make(zeros), g)
  want = reference(g.astype(np.float64), zeros)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
  if zeros == "keep":
    np.testing.assert_array_equal(got[:, DEAD], 0.0)  # it stays put, exactly
  else:
    assert np.abs(want[:, DEAD]).max() > 0.05  # the 1-bit form moves it
  if name == "signsgd" and zeros == "plus":
    # −γ at every step: −2 after 20 steps at γ = 0.1
    np.testing.assert_allclose(got[:, DEAD], -LR * np.arange(1, STEPS + 1), rtol=1e-6)
  # each worker sent its codes and one float32 scale per step
  sign_bytes = math.ceil(D / 5) if zeros == "keep" else math.ceil(D / 8)
  scales = math.ceil(D / BLOCK) if name.startswith("comp_ams") else 1
  assert compopt.comm_bits(state).payload == [STEPS * (8 * sign_bytes + 32 * scales)] * N


# ============================================================ sign(x) exactly
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _tricky(dtype):
  """Zeros of both signs, the smallest subnormal and normal numbers, the
  largest finite ones, and ordinary values, exact in ``dtype``."""
  fi = jnp.finfo(dtype)
  tiny, small, big = float(fi.smallest_subnormal), float(fi.tiny), float(fi.max)
  v = np.array([0.0, -0.0, tiny, -tiny, small, -small, 3 * tiny, big, -big, 1.0, -1.0,
                0.5, -2.5, 1e-3, -7.0, 0.0, 0.0, -0.0, 4.0, 1e4, -1e4], np.float64)
  return np.asarray(jnp.asarray(v, dtype).astype(jnp.float32), np.float64)


def _cases():
  """{dtype name: [x]}: the tricky values shuffled and cut to sizes of every
  remainder mod 5 (float32; the codes do not depend on the dtype), all zeros
  and all negative zeros."""
  rng = np.random.default_rng(1)
  out = {}
  for name, dtype in DTYPES.items():
    x = _tricky(dtype)
    sizes = (1, 2, 3, 4, 5, 21) if name == "float32" else (3, 21)
    out[name] = [rng.permutation(x)[:d] for d in sizes] + [np.zeros(7), -np.zeros(7)]
  return out


def test_sign_keep_decodes_to_np_sign_exactly():
  c = C.sign(zeros="keep")
  cases = _cases()
  args = {n: [jnp.asarray(x, DTYPES[n]) for x in xs] for n, xs in cases.items()}
  got = jax.jit(lambda a: jax.tree.map(lambda x: c.decode(c.encode(None, x), x), a))(args)
  for n, xs in cases.items():
    for x, y in zip(xs, got[n]):
      assert y.dtype == DTYPES[n]
      np.testing.assert_array_equal(np.asarray(y.astype(jnp.float32), np.float64),
                                    np.sign(x), err_msg=f"{n} {x}")


def test_sign_keep_is_exact_on_a_large_leaf_and_under_vmap():
  # 70,000 > fusion.ISOLATE_MIN: the paths that cut XLA's CPU fusions
  rng = np.random.default_rng(2)
  x = rng.standard_normal(70_000) * 10.0 ** rng.integers(-40, 38, 70_000)
  x = np.asarray(x.astype(np.float32), np.float64)
  x[rng.random(x.size) < 0.3] = 0.0
  x[:4] = [-0.0, float(F32.smallest_subnormal), -float(F32.smallest_subnormal), -F32.max]
  c = C.sign(zeros="keep")
  rows = np.stack([x[:64], -x[64:128], np.zeros(64)])

  @jax.jit
  def run(v, r):
    return c(None, v), jax.vmap(lambda w: c(None, w))(r)

  y, yr = run(jnp.asarray(x, jnp.float32), jnp.asarray(rows, jnp.float32))
  np.testing.assert_array_equal(np.asarray(y, np.float64), np.sign(x))
  np.testing.assert_array_equal(np.asarray(yr, np.float64), np.sign(rows))


@pytest.mark.slow
def test_sign_keep_in_float64():
  with _compiled.x64():
    x = _tricky(jnp.float32)
    x[:3] = [5e-324, -5e-324, 1e300]
    c = C.sign(zeros="keep")
    y = jax.jit(lambda v: c(None, v))(jnp.asarray(x, jnp.float64))
    assert y.dtype == jnp.float64
    np.testing.assert_array_equal(np.asarray(y), np.sign(x))
    assert c.encode(None, jnp.asarray(x))["scale"].dtype == np.float64


def test_non_finite_input_and_all_zero_leaves():
  # an inf or NaN makes its block non-finite, zeros included (0 · inf and
  # 0 · NaN are NaN), so that the guard sees it; the other blocks are exact
  comps = {"sign": (C.sign("keep"), 8), "scaled_sign": (C.scaled_sign("keep"), 8),
           "block_sign": (C.block_sign(4, zeros="keep"), 4)}
  x = np.array([1.0, 0.0, -2.0, 0.0, 3.0, 0.0, -1.0, 0.5], np.float32)
  rows = np.stack([np.zeros(8, np.float32)] + [np.where(np.arange(8) == 2, bad, x)
                                               for bad in (np.nan, np.inf, -np.inf)])
  got = jax.jit(lambda r: {n: jax.vmap(lambda v: c(None, v))(r)
                           for n, (c, _) in comps.items()})(jnp.asarray(rows))
  for n, (_, end) in comps.items():
    y = np.asarray(got[n])
    np.testing.assert_array_equal(y[0], np.zeros(8))
    assert not np.isfinite(y[1:, :end]).any(), (n, y)
    if end < 8:
      for row in y[1:]:
        np.testing.assert_allclose(row[end:], _scaled_sign(x[end:].astype(np.float64), "keep"),
                                   rtol=1e-6)


# ============================================================ the wire
KEEP = {"sign": C.sign("keep"), "scaled_sign": C.scaled_sign("keep"),
        "block_sign": C.block_sign(5, zeros="keep")}
# (compressor, d): every remainder of d mod 5 and mod 8, one block and many
WIRE_CASES = [("sign", 2), ("sign", 5), ("sign", 13), ("scaled_sign", 21),
              ("block_sign", 1), ("block_sign", 4), ("block_sign", 6), ("block_sign", 1003)]


def _nscales(name, d):
  return math.ceil(d / 5) if name == "block_sign" else 1


def test_payload_is_base3_bytes_read_back_with_numpy():
  rng = np.random.default_rng(5)
  xs = []
  for _, d in WIRE_CASES:
    x = rng.standard_normal(d).astype(np.float32)
    x[rng.random(d) < 0.4] = 0.0
    x[::7] = -0.0
    xs.append(x)

  @jax.jit
  def run(xs):
    out = []
    for (name, _), x in zip(WIRE_CASES, xs):
      c = KEEP[name]
      payload = c.encode(None, x)
      buf, spec = wire.pack(payload)  # the bytes the exchange sends
      out.append((payload, buf, c.decode(wire.unpack(buf, spec), x)))
    return out

  for (name, d), x, (payload, buf, y) in zip(WIRE_CASES, xs, run([jnp.asarray(x) for x in xs])):
    c = KEEP[name]
    codes = np.asarray(payload["trits"])
    m = math.ceil(d / 5)
    assert codes.dtype == np.uint8 and codes.shape == (m,)
    assert codes.max() <= 242
    # byte b holds the codes of coordinates b, b + m, ..., b + 4m: digit i in base 3
    digits = np.stack([(codes.astype(np.int64) // 3**i) % 3 for i in range(5)]).reshape(-1)
    np.testing.assert_array_equal(digits[:d] - 1, np.sign(x))
    assert not digits[d:].any()  # the padding is 0
    scales = payload["scale" if name == "sign" else "scales"]
    assert scales.dtype == np.float32 and scales.size == _nscales(name, d)
    # the exact bits: the payload's bytes, and the exchange's buffer
    nbits = 8 * sum(a.nbytes for a in jax.tree.leaves(payload))
    assert c.wire_bits(d, np.float32) == nbits == 8 * m + 32 * _nscales(name, d)
    assert buf.dtype == np.uint8 and 8 * buf.size == nbits
    assert c.wire_bits(d, jnp.bfloat16) == nbits  # the scale stays float32
    want = np.sign(x) if name == "sign" else _scaled_sign(
        x.astype(np.float64), "keep", 5 if name == "block_sign" else None)
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=1e-6)


def test_bits_per_coordinate_on_a_million():
  M = 1_000_000
  for c in (C.sign("keep"), C.scaled_sign("keep")):
    assert c.wire_bits((M,), jnp.float32) == 8 * 200_000 + 32  # 1.6 bits + one scale
  assert C.block_sign(1024, zeros="keep").wire_bits(M, jnp.float32) == (
      8 * 200_000 + 32 * math.ceil(M / 1024))
  assert C.sign().wire_bits(M, jnp.float32) == M + 32  # the 1-bit form


def test_pack_trits_round_trips_every_byte():
  # all 243 five-trit words, in the planar layout: plane i = digit i of every word
  words = np.array([[(w // 3**i) % 3 for i in range(5)] for w in range(243)])
  trits = words.T.reshape(-1)
  sizes = (1, 7, 1214, 1215)
  packed, back = jax.jit(lambda t: (
      wire.pack_trits(t), [wire.unpack_trits(wire.pack_trits(t[:s]), s) for s in sizes]))(
          jnp.asarray(trits, jnp.uint8))
  assert packed.dtype == np.uint8
  np.testing.assert_array_equal(np.asarray(packed), np.arange(243))
  for size, got in zip(sizes, back):
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(got), trits[:size])


def test_decode_sum_adds_the_decoded_signs():
  c = C.block_sign(7, zeros="keep")
  rng = np.random.default_rng(3)
  xs = rng.standard_normal((3, 70_003)).astype(np.float32)  # above ISOLATE_MIN
  xs[rng.random(xs.shape) < 0.5] = 0.0
  w = jnp.asarray([0.5, 0.0, 2.0], jnp.float32)

  @jax.jit
  def run(v):
    return c.decode_sum(jax.vmap(lambda r: c.encode(None, r))(v), v[0], w)

  want = sum(float(w[j]) * _scaled_sign(xs[j].astype(np.float64), "keep", 7) for j in (0, 2))
  np.testing.assert_allclose(np.asarray(run(jnp.asarray(xs))), want, rtol=1e-5, atol=1e-6)


HLO_TREE = {"emb": jax.ShapeDtypeStruct((1000, 16), jnp.float32),
            "b": jax.ShapeDtypeStruct((7,), jnp.bfloat16)}


@pytest.mark.parametrize("name,zeros", [
    ("ef_signsgd", "keep"),
    pytest.param("signsgd", "keep", marks=pytest.mark.slow),
    pytest.param("signsgd", "plus", marks=pytest.mark.slow),
    pytest.param("ef_signsgd", "plus", marks=pytest.mark.slow)])
def test_collective_bytes_equal_wire_bits(name, zeros):
  opt, c = {
      "signsgd": (compopt.signsgd(0.1, axis_name=AXIS, zeros=zeros, skip_nonfinite=False),
                  C.sign(zeros)),
      "ef_signsgd": (compopt.ef_signsgd(0.1, axis_name=AXIS, zeros=zeros,
                                        skip_nonfinite=False), C.scaled_sign(zeros))}[name]
  per_kind = hlo.collective_bytes(_compiled.step_hlo(opt, HLO_TREE, 4, AXIS))
  assert per_kind == {"all-gather": C.tree_wire_bits(c, HLO_TREE) // 8}
  # 16,000 and 7 codes, and a float32 scale per leaf
  signs = 3200 + 2 if zeros == "keep" else 2000 + 1
  assert C.tree_wire_bits(c, HLO_TREE) == 8 * signs + 64


# ============================================================ the contraction
BLOCKS = [None, 1, 4, 7]


def _block(block):
  return C.scaled_sign("keep") if block is None else C.block_sign(block, zeros="keep")


def test_scaled_and_block_sign_keep_values_and_contraction():
  # C(x)_B = (‖x_B‖₁/d_B) sign(x_B) with sign(0) = 0 (Li & Li 2022, Def. 2), and
  # ‖C(x) − x‖² = Σ_B ‖x_B‖² − (‖x_B‖₁²/d_B)(2 − nnz_B/d_B) ≤ Σ_B ‖x_B‖² − ‖x_B‖₁²/d_B
  #             ≤ (1 − 1/d_B)‖x‖², the class of the 1-bit form (δ = 1/d_B)
  d = 21
  rng = np.random.default_rng(4)
  xs = rng.standard_normal((256, d)) * 10.0 ** rng.uniform(-3, 3, (256, 1))
  xs[rng.random(xs.shape) < rng.uniform(0, 1, (256, 1))] = 0.0
  # the tricky values, with ‖x‖₁ in float32's range and without subnormals
  # (which XLA's CPU sums as 0)
  tricky = _tricky(jnp.float32)
  tricky = np.where(np.abs(tricky) > 1e30, 3.0, tricky)
  xs[-2] = np.where(np.abs(tricky) < 1e-30, 0.0, tricky)
  # no zeros, one dominant coordinate: ‖C(x) − x‖²/‖x‖² → 1 − 1/d
  xs[-1] = 1e-4
  xs[-1, 0] = 1.0
  xs = xs.astype(np.float32).astype(np.float64)
  got = jax.jit(lambda v: [jax.vmap(lambda r: _block(b)(None, r))(v) for b in BLOCKS])(
      jnp.asarray(xs, jnp.float32))
  nx = (xs * xs).sum(1)
  for block, ys in zip(BLOCKS, got):
    c = _block(block)
    bs = d if block is None else block
    assert c.delta(d) == pytest.approx(1 / bs)
    ys = np.asarray(ys, np.float64)
    for x, y in zip(xs[-3:], ys[-3:]):
      np.testing.assert_allclose(y, _scaled_sign(x, "keep", block), rtol=1e-6)
    assert np.all(ys[xs == 0] == 0)
    err = ((ys - xs) ** 2).sum(1)
    closed, plus = np.zeros(len(xs)), np.zeros(len(xs))
    for s in range(0, d, bs):  # per block, all rows at once
      xb = xs[:, s:s + bs]
      l1, l2, nnz, db = np.abs(xb).sum(1), (xb**2).sum(1), np.count_nonzero(xb, 1), xb.shape[1]
      closed += l2 - l1**2 / db * (2 - nnz / db)
      plus += l2 - l1**2 / db
    assert np.all(np.abs(err - closed) <= 1e-5 * closed + 1e-7 * nx), block
    assert np.all(closed <= plus * (1 + 1e-12))
    assert np.all(err <= (1 - c.delta(d)) * nx * (1 + 1e-6))
    if block is None:  # the class constant cannot be larger
      ratio = ((ys[-1] - xs[-1]) ** 2).sum() / (xs[-1] ** 2).sum()
      assert 1 - 1 / d - 2e-3 < ratio <= 1 - 1 / d + 1e-6


# ============================================================ bad arguments
@pytest.mark.parametrize("make", [
    lambda z: C.sign(z), lambda z: C.scaled_sign(z), lambda z: C.block_sign(4, zeros=z),
    lambda z: compopt.signsgd(0.1, zeros=z), lambda z: compopt.signum(0.1, zeros=z),
    lambda z: compopt.scaled_signsgd(0.1, zeros=z), lambda z: compopt.ef_signsgd(0.1, zeros=z),
], ids=["sign", "scaled_sign", "block_sign", "signsgd", "signum", "scaled_signsgd",
        "ef_signsgd"])
@pytest.mark.parametrize("bad", ["zero", "KEEP", None, 0, True])
def test_zeros_must_be_keep_or_plus(make, bad):
  with pytest.raises(ValueError, match=r"`zeros` must be one of \('keep', 'plus'\).*got"):
    make(bad)
