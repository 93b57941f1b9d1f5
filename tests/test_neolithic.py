"""FCC (Huang et al. 2022, Alg. 1, Lemma 2) and NEOLITHIC (Alg. 2) against NumPy
loops, closed forms and the lemma's bound."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import compopt
from compopt import compressors as C

from _problems import AXIS, Ridge, relative_errors, ridge, run_ridge, run_workers


def np_top_k(v, k):
  out = np.zeros_like(v)
  idx = np.argsort(-np.abs(v), kind="stable")[:k]
  out[idx] = v[idx]
  return out


def np_fcc_top_k(v, k, rounds):
  """Alg. 1: v⁰ = 0, c^r = top_k(v* − v^r), v^{r+1} = v^r + c^r."""
  x = np.zeros_like(v)
  for _ in range(rounds):
    x = x + np_top_k(v - x, k)
  return x


# ---------------------------------------------------------------------- FCC


@pytest.mark.parametrize("rounds", [1, 2, 3, 5, 8])
def test_fcc_top_k_matches_alg1_and_lemma2(rounds):
  d, k = 40, 3
  delta = k / d  # top_k ∈ B(k/d)
  rng = np.random.default_rng(rounds)
  for _ in range(5):
    v = rng.standard_normal(d).astype(np.float32)
    f = C.fcc(C.top_k(k), rounds)
    payload = f.encode(None, jnp.asarray(v))
    got = np.asarray(f.decode(payload, jnp.asarray(v)))
    np.testing.assert_array_equal(got, np_fcc_top_k(v, k, rounds))
    np.testing.assert_array_equal(got, np.asarray(f(None, jnp.asarray(v))))
    err = ((got.astype(np.float64) - v) ** 2).sum()
    assert err <= (1 - delta) ** rounds * (v.astype(np.float64) ** 2).sum() * (1 + 1e-6)
    assert f.wire_bits((d,), jnp.float32) == rounds * C.top_k(k).wire_bits((d,), jnp.float32)
  assert f.delta((d,)) == pytest.approx(1 - (1 - delta) ** rounds)


@pytest.mark.parametrize("rounds", [1, 3, 6])
def test_fcc_scaled_unbiased_in_expectation(rounds):
  # scaled(rand_k, 1/(1 + ω)) ∈ B(1/(1 + ω)) = B(k/d); it keeps k random
  # coordinates unscaled, so the residual after R independent rounds keeps
  # coordinate j with probability (1 − k/d)^R: E‖v^R − v*‖² = (1 − δ)^R ‖v*‖²,
  # Lemma 2's bound with equality.
  d, k, keys = 24, 2, 4000
  omega = d / k - 1
  c = C.scaled(C.rand_k(k), 1 / (1 + omega))
  f = C.fcc(c, rounds)
  v = jnp.asarray(np.random.default_rng(0).standard_normal(d), jnp.float32)
  out = jax.jit(jax.vmap(lambda key: f.decode(f.encode(key, v), v)))(
      jax.random.split(jax.random.PRNGKey(rounds), keys))
  err = np.asarray(((out - v) ** 2).sum(-1), np.float64)
  norm2 = float(np.sum(np.asarray(v, np.float64) ** 2))
  bound = (1 - k / d) ** rounds * norm2
  stderr = err.std() / np.sqrt(keys)
  assert err.mean() <= bound + 4 * stderr, (err.mean(), bound)
  assert abs(err.mean() - bound) < 4 * stderr, (err.mean(), bound)
  assert f.wire_bits((d,), jnp.float32) == rounds * C.rand_k(k).wire_bits((d,), jnp.float32)


def test_fcc_bad_rounds():
  with pytest.raises(ValueError, match="`rounds` must be an integer >= 1"):
    C.fcc(C.top_k(1), 0)
  with pytest.raises(TypeError, match="`rounds` must be an integer"):
    C.fcc(C.top_k(1), 2.0)


# ----------------------------------------------------------------- NEOLITHIC


def test_neolithic_identity_is_psgd_on_accumulated_gradients():
  # With C_i = C_0 = identity, FCC is exact (v^1 = v*, later rounds send 0) and
  # both errors stay 0: x ← x − γ mean_i (1/R) Σ_r g_{i,r}, one step per R.
  n, R, outer, d, gamma = 4, 3, 4, 6, 0.1
  g = np.random.default_rng(0).standard_normal((outer * R, n, d)).astype(np.float32)
  x0 = np.linspace(-1, 1, d).astype(np.float32)
  neo = optax.MultiSteps(
      compopt.neolithic(gamma, compressor=C.identity(), rounds=R,
                        server_compressor=C.identity(), axis_name=AXIS), every_k_schedule=R)
  psgd = optax.MultiSteps(compopt.psgd(gamma, axis_name=AXIS), every_k_schedule=R)
  a, _ = run_workers(neo, x0, g)
  b, _ = run_workers(psgd, x0, g)
  np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  x = x0.astype(np.float64)
  for t in range(outer * R):
    if t % R == R - 1:
      x = x - gamma * g[t - R + 1:t + 1].mean((0, 1))
    np.testing.assert_allclose(a[t], x, rtol=1e-5, atol=1e-6)


def test_neolithic_top_k_matches_numpy_alg2():
  # Alg. 2, bidirectional, with FCC(top_k, R) both ways, transcribed in NumPy.
  n, R, steps, d, k, k0, gamma = 3, 2, 5, 10, 2, 3, 0.1
  g = np.random.default_rng(1).standard_normal((steps, n, d)).astype(np.float32)
  x0 = np.zeros(d, np.float32)
  got, states = run_workers(compopt.neolithic(gamma, compressor=C.top_k(k), rounds=R,
                                              server_compressor=C.top_k(k0), axis_name=AXIS),
                            x0, g)
  x, e_i, e = np.zeros(d), np.zeros((n, d)), np.zeros(d)
  for t in range(steps):
    gt = g[t] + e_i  # g̃_i = ĝ_i + δ_i
    sent = np.stack([np_fcc_top_k(gt[i], k, R) for i in range(n)])
    e_i = gt - sent
    gs = sent.mean(0) + e  # server: g̃ = mean_i FCC(g̃_i) + δ
    out = np_fcc_top_k(gs, k0, R)
    e = gs - out
    x = x - gamma * out
    np.testing.assert_allclose(got[t], x, rtol=1e-5, atol=1e-6)
  bits = compopt.comm_bits(states[-1])
  per_round = C.top_k(k).wire_bits((d,), jnp.float32)
  assert bits.payload == [steps * R * per_round] * n
  assert bits.uplink == [steps * R * (n - 1) * per_round] * n  # ring all-gather


def _neolithic_problem():
  return ridge(n=8, m=40, d=30, lam=0.1, seed=2)


def test_bidirectional_neolithic_beats_dcsgd_without_ef():
  # In the style of Huang et al. 2022, §5: least squares, d = 30, n = 8
  # heterogeneous workers, top_k both ways, R = 4. NEOLITHIC reaches a
  # neighbourhood that shrinks with γ; DCSGD with top_k and no error feedback
  # stalls far away.
  p = _neolithic_problem()
  gamma, steps = 0.2 / p.L, 300
  neo = compopt.neolithic(gamma, compressor=C.top_k(3), rounds=4,
                          server_compressor=C.top_k(3), axis_name=AXIS)
  dc = compopt.dcsgd(gamma, compressor=C.top_k(3), axis_name=AXIS)
  e_neo = relative_errors(run_ridge(neo, p, steps)[0], p.x_star)
  e_dc = relative_errors(run_ridge(dc, p, steps)[0], p.x_star)
  tail = slice(steps - 100, steps)
  assert e_neo[tail].max() < 1e-3, e_neo[tail].max()
  assert e_dc[tail].min() > 30 * e_neo[tail].max(), (e_dc[tail].min(), e_neo[tail].max())


def test_bidirectional_neolithic_converges_exactly_without_heterogeneity():
  # identical local data (∇f_i(x*) = 0): error feedback with full gradients
  # converges linearly to x*.
  p = _neolithic_problem()
  hom = Ridge(np.repeat(p.A[:1], p.n, 0), np.repeat(p.b[:1], p.n, 0), p.lam)
  neo = compopt.neolithic(0.5 / hom.L, compressor=C.top_k(3), rounds=4,
                          server_compressor=C.top_k(3), axis_name=AXIS)
  e = relative_errors(run_ridge(neo, hom, 600)[0], hom.x_star)
  assert e[-1] < 1e-10, e[-1]


def test_neolithic_bad_input():
  with pytest.raises(ValueError, match="`rounds` must be an integer >= 1"):
    compopt.neolithic(0.1, compressor=C.top_k(1), rounds=0)
  with pytest.raises(TypeError, match="`rounds` must be an integer"):
    compopt.neolithic(0.1, compressor=C.top_k(1), rounds=None)
  with pytest.raises(TypeError, match="server_compressor"):
    compopt.neolithic(0.1, compressor=C.top_k(1), rounds=2, server_compressor="top_k")
