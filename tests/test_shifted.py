"""Shifted compression (Shulgin & Richtárik 2022): DCGD-FIXED/STAR, DIANA,
Rand-DIANA, GDCI against closed-form optima, NumPy transcriptions and the
paper's theorems."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compopt
from compopt import compressors as C
from compopt import theory

from _problems import AXIS, first_below, relative_errors, ridge, run_ridge, run_workers

TARGET = 1e-10
STEPS = 400


@functools.lru_cache(maxsize=None)
def _ridge():
  return ridge(n=10, m=40, d=20, lam=0.5, seed=0)


def _q():
  return C.rand_k(2)  # ω = d/k − 1 = 9 on d = 20


@functools.lru_cache(maxsize=None)
def _ridge_run(name):
  """One run of each method on the ridge problem (cached: several tests read it)."""
  p = _ridge()
  q = _q()
  omega = theory.omega(q, (p.d,))
  if name == "diana":
    gamma = theory.diana_step_size(omega, p.n, p.L_max)
    rate = theory.diana_rate(omega, p.n, gamma, p.mu)
    opt = compopt.diana(gamma, compressor=q, axis_name=AXIS, key=1)
  elif name == "rand_diana":
    gamma = theory.rand_diana_step_size(omega, p.n, p.L_max)
    rate = theory.rand_diana_rate(omega, p.n, gamma, p.mu)
    opt = compopt.rand_diana(gamma, compressor=q, axis_name=AXIS, key=1)
  elif name == "dcsgd":  # the same Q and the same (DIANA) step as DIANA
    gamma = theory.diana_step_size(omega, p.n, p.L_max)
    rate = None
    opt = compopt.dcsgd(gamma, compressor=q, axis_name=AXIS, key=1)
  elif name == "star":
    gamma = theory.dcgd_star_step_size(omega, p.n, p.L, p.L_max)
    rate = None
    opt = compopt.dcgd_shift(gamma, compressor=q, shift="star", axis_name=AXIS, key=1)
  else:
    raise KeyError(name)
  extra = {"optimal_shift": p.local_grads(p.x_star)} if name == "star" else None
  xs, state = run_ridge(opt, p, STEPS, extra=extra)
  return relative_errors(xs, p.x_star), state, gamma, rate


def test_ridge_is_heterogeneous_and_well_conditioned():
  p = _ridge()
  g_star = p.local_grads(p.x_star)
  np.testing.assert_allclose(g_star.mean(0), 0, atol=1e-12)  # x* is the optimum of f
  assert np.linalg.norm(g_star, axis=1).min() > 0.1 * np.linalg.norm(p.x_star)  # ∇f_i(x*) ≠ 0
  assert p.L / p.mu < 5


@pytest.mark.parametrize("name", ["diana", "rand_diana"])
def test_diana_family_reaches_exact_optimum_where_dcsgd_stalls(name):
  # Shulgin & Richtárik 2022, Thm 3 (DIANA) and Thm 4 (Rand-DIANA): linear
  # convergence to x*; Thm 1 (DCGD, h_i = 0): only to a neighbourhood
  # ∝ Σ_i ‖∇f_i(x*)‖².
  errors, _, gamma, rate = _ridge_run(name)
  assert 0 < rate < 1
  hit = first_below(errors, TARGET)
  assert hit is not None, errors[-1]
  # linear: the last quarter stays at the target level (float32 floor)
  assert errors[-STEPS // 4:].max() < TARGET
  # the theorem's bound on the Lyapunov function (V⁰ ≥ ‖x⁰ − x*‖²) is an
  # upper bound on the iterations: ρ^k < 1e-10 at the latest
  assert hit <= np.ceil(np.log(TARGET) / np.log(rate)), (hit, rate)
  dcsgd_errors, *_ = _ridge_run("dcsgd")
  assert dcsgd_errors[STEPS // 2:].min() > 1e-4, dcsgd_errors[STEPS // 2:].min()


def test_dcgd_star_with_optimal_shifts_converges_linearly():
  # Shulgin & Richtárik 2022, Thm 2: with h_i = ∇f_i(x*), DCGD-STAR converges
  # linearly to x*
  errors, *_ = _ridge_run("star")
  assert errors[-1] < TARGET
  # linear: geometric decrease between iterations 20 and 120
  assert errors[120] < 1e-3 * errors[20]


def test_diana_bits_are_exactly_the_compressor_payload():
  p = _ridge()
  _, state, *_ = _ridge_run("diana")
  per_step = _q().wire_bits((p.d,), jnp.float32)
  bits = compopt.comm_bits(state)
  assert bits.payload == [STEPS * per_step] * p.n
  # a ring all-gather: n − 1 payloads out (forwarded) and in per step
  assert bits.uplink == [STEPS * per_step * (p.n - 1)] * p.n
  assert bits.downlink == [STEPS * per_step * (p.n - 1)] * p.n


def test_rand_diana_refresh_bits_average_p_dense_vectors():
  p = _ridge()
  _, state, *_ = _ridge_run("rand_diana")
  q = _q()
  prob = theory.rand_diana_p(theory.omega(q, (p.d,)))
  payload = STEPS * q.wire_bits((p.d,), jnp.float32)
  dense = 32 * p.d  # a float32 shift refresh
  bits = compopt.comm_bits(state)
  extra = np.asarray(bits.payload) - payload
  assert np.all(extra % dense == 0)
  refreshes = extra // dense  # per worker, Binomial(STEPS, p)
  draws = STEPS * p.n
  freq = refreshes.sum() / draws
  stderr = np.sqrt(prob * (1 - prob) / draws)
  assert abs(freq - prob) < 4 * stderr, (freq, prob)
  # on the wire: a ring all-gather of the payloads, and every step a ring
  # all-reduce of the zero-padded refreshes (2(n − 1)/n of the dense vector)
  wire = (p.n - 1) * payload + STEPS * (2 * (p.n - 1) * dense // p.n)
  assert bits.uplink == bits.downlink == [wire] * p.n


def test_dcgd_fixed_with_zero_shifts_is_dcsgd():
  n, steps, d = 4, 6, 9
  g = np.random.default_rng(0).normal(size=(steps, n, d)).astype(np.float32)
  x0 = np.linspace(-1, 1, d).astype(np.float32)
  for q in (C.rand_k(3), C.natural(), C.identity()):
    a, sa = run_workers(compopt.dcgd_shift(0.1, compressor=q, shift="fixed", axis_name=AXIS,
                                           key=5), x0, g)
    b, sb = run_workers(compopt.dcsgd(0.1, compressor=q, axis_name=AXIS, key=5), x0, g)
    np.testing.assert_array_equal(a, b, err_msg=q.name)
    assert compopt.comm_bits(sa[-1]) == compopt.comm_bits(sb[-1])


def test_diana_identity_matches_numpy_eq11():
  # eq. 11 with Q = identity and a given α: m_i = g_i − h_i, g = h + mean_i m_i,
  # h_i ← h_i + α m_i, h ← h + α mean_i m_i, x ← x − γ g.
  n, steps, d, gamma, alpha = 3, 6, 7, 0.1, 0.3
  g = np.random.default_rng(1).normal(size=(steps, n, d)).astype(np.float32)
  x0 = np.ones(d, np.float32)
  xs, states = run_workers(compopt.diana(gamma, compressor=C.identity(), alpha=alpha,
                                         axis_name=AXIS), x0, g)
  x, h_i, h = x0.astype(np.float64), np.zeros((n, d)), np.zeros(d)
  for t in range(steps):
    m = g[t] - h_i
    est = h + m.mean(0)
    h_i = h_i + alpha * m
    h = h + alpha * m.mean(0)
    x = x - gamma * est
    np.testing.assert_allclose(xs[t], x, rtol=1e-5, atol=1e-6)
    st = states[t][0]
    np.testing.assert_allclose(np.asarray(st.shift), h_i, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(st.mean_shift), np.broadcast_to(h, (n, d)),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shift_compressor", [None, C.top_k(2)], ids=["eq11", "eq10_top2"])
def test_diana_shift_invariants_with_rand_k(shift_compressor):
  # For any Q (and C_i): h = mean_i h_i on every worker, and since
  # g = h + mean_i(c_i + m_i) and h ← h + α mean_i(c_i + m_i),
  # h⁺ = (1 − α) h + α g with g = (x − x⁺)/γ read off the iterates.
  n, steps, d, gamma, alpha = 5, 8, 10, 0.05, 0.25
  g = np.random.default_rng(2).normal(size=(steps, n, d)).astype(np.float32)
  x0 = np.zeros(d, np.float32)
  xs, states = run_workers(compopt.diana(gamma, compressor=C.rand_k(3), alpha=alpha,
                                         shift_compressor=shift_compressor,
                                         axis_name=AXIS, key=4), x0, g)
  h_prev = np.zeros(d)
  x_prev = x0.astype(np.float64)
  for t in range(steps):
    st = states[t][0]
    h = np.asarray(st.mean_shift)
    np.testing.assert_array_equal(h, np.broadcast_to(h[:1], h.shape))  # replicated
    np.testing.assert_allclose(h[0], np.asarray(st.shift).mean(0), rtol=1e-5, atol=1e-5)
    est = (x_prev - xs[t]) / gamma
    np.testing.assert_allclose(h[0], (1 - alpha) * h_prev + alpha * est, rtol=1e-4, atol=1e-4)
    h_prev, x_prev = h[0], xs[t]


def test_rand_diana_shifts_are_old_or_current_gradients():
  # eq. 12: each h_i^{k+1} is either h_i^k or ∇f_i(x^k) = g_i^k, and h = mean_i h_i
  n, steps, d = 6, 10, 5
  g = np.random.default_rng(3).normal(size=(steps, n, d)).astype(np.float32)
  xs, states = run_workers(compopt.rand_diana(0.1, compressor=C.rand_k(1), p=0.5,
                                              axis_name=AXIS, key=7), np.zeros(d, np.float32), g)
  h_prev = np.zeros((n, d))
  kept = refreshed = 0
  for t in range(steps):
    st = states[t][0]
    h_i = np.asarray(st.shift)
    for i in range(n):
      if np.array_equal(h_i[i], h_prev[i]):
        kept += 1
      else:
        # h_i + (g_i − h_i): g_i up to one rounding
        np.testing.assert_allclose(h_i[i], g[t, i], rtol=1e-6, atol=1e-6)
        refreshed += 1
    np.testing.assert_allclose(np.asarray(st.mean_shift)[0], h_i.mean(0), rtol=1e-5, atol=1e-6)
    h_prev = h_i
  assert kept > 0 and refreshed > 0


def test_gdci_identity_matches_numpy():
  # eq. 13 with Q = identity: x ← (1 − η)x + η mean_i(x − γ∇f_i(x))
  p = ridge(n=3, m=10, d=4, lam=0.5, seed=1)
  gamma, eta, steps = 0.2, 0.6, 8
  xs, _ = run_ridge(compopt.gdci(gamma, compressor=C.identity(), eta=eta, axis_name=AXIS),
                    p, steps, x0=np.ones(p.d))
  x = np.ones(p.d)
  for t in range(steps):
    x = (1 - eta) * x + eta * (x - gamma * p.local_grads(x).mean(0))
    np.testing.assert_allclose(xs[t], x, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- bad input


def _update(opt, params=jnp.zeros(4), **extra):
  return opt.update(jnp.ones(4), opt.init(params), params, **extra)


def test_bad_shift_rule():
  with pytest.raises(ValueError, match="`shift` must be one of"):
    compopt.dcgd_shift(0.1, compressor=C.rand_k(1), shift="adaptive")


@pytest.mark.parametrize("alpha", [0.0, -0.5, 1.5])
def test_bad_alpha(alpha):
  with pytest.raises(ValueError, match="`alpha` must be in \\(0, 1\\]"):
    compopt.diana(0.1, compressor=C.rand_k(1), alpha=alpha)


@pytest.mark.parametrize("p", [0.0, 1.01])
def test_bad_p(p):
  with pytest.raises(ValueError, match="`p` must be in \\(0, 1\\]"):
    compopt.rand_diana(0.1, compressor=C.rand_k(1), p=p)


def test_alpha_and_p_belong_to_their_rules():
  with pytest.raises(ValueError, match="`alpha`"):
    compopt.dcgd_shift(0.1, compressor=C.rand_k(1), shift="rand_diana", alpha=0.5)
  with pytest.raises(ValueError, match="`p`"):
    compopt.dcgd_shift(0.1, compressor=C.rand_k(1), shift="diana", p=0.5)


@pytest.mark.parametrize("q", [C.top_k(1), C.scaled_sign()], ids=lambda c: c.name)
def test_biased_q_for_diana(q):
  with pytest.raises(ValueError, match="`compressor` must be unbiased"):
    _update(compopt.diana(0.1, compressor=q))


def test_star_without_optimal_shift():
  opt = compopt.dcgd_shift(0.1, compressor=C.rand_k(1), shift="star")
  with pytest.raises(ValueError, match="`optimal_shift=`"):
    _update(opt)


def test_gdci_needs_params_and_eta():
  opt = compopt.gdci(0.1, compressor=C.rand_k(1), eta=0.5)
  with pytest.raises(ValueError, match="needs `params`"):
    opt.update(jnp.ones(4), opt.init(jnp.zeros(4)))
  with pytest.raises(ValueError, match="`eta` must be in \\(0, 1\\]"):
    compopt.gdci(0.1, compressor=C.rand_k(1), eta=0.0)
  with pytest.raises(ValueError, match="`compressor` must be unbiased"):
    _update(compopt.gdci(0.1, compressor=C.top_k(1), eta=0.5))
