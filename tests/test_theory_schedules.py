"""The theory helpers that give schedules and constants: DCSGD's step sizes and
weighted average (Horváth & Richtárik 2021, Thms 2/4/6, Lemma 9), DCSGD with
shared compressor randomness, per-worker constants of the shifted methods
(Shulgin & Richtárik 2022, Thms 1–4), COMP-AMS's learning rate (Li & Li 2022,
Thm 1, Cors 1–2) and EF-SignSGD's step sizes and density (Karimireddy et al.
2019, Thms II/III, Lemma 8). Checked against hand-computed closed forms, NumPy,
the theorems' bounds and Monte-Carlo estimates."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import compopt
from compopt import compressors as C
from compopt import theory

AXIS = "workers"


# ------------------------------------------ DCSGD schedule and weights (Lemma 9)
def test_dcsgd_schedule_and_weights_follow_lemma_9():
  # ω = 1, n = 1: δ' = 2; L = 1, μ = 0.5: 2L/μ = 4, κ = 4L/μ = 8.
  # T = 10 > 4: t0 = 5; η = 1/(2δL) = 1/4 for k < 5, then 2/(δμ(κ + k − 5)).
  sched = theory.dcsgd_schedule(1.0, 1, 1.0, 0.5, 10)
  w = theory.dcsgd_weights(1.0, 1, 1.0, 0.5, 10)
  ks = np.arange(16)
  want_eta = np.where(ks < 5, 0.25, 2.0 / (2 * 0.5 * (8 + ks - 5)))
  want_w = np.where(ks < 5, 0.0, (8.0 + ks - 5) ** 2)
  np.testing.assert_allclose([float(sched(k)) for k in ks], want_eta, rtol=1e-6)
  np.testing.assert_allclose([float(w(k)) for k in ks], want_w, rtol=1e-6)
  # Never above Thm 4's largest step, continuous at t0, and jit-able.
  assert max(float(sched(k)) for k in ks) <= theory.dcsgd_step_size(1.0, 1, 1.0) * (1 + 1e-7)
  np.testing.assert_allclose(jax.jit(sched)(jnp.arange(16)), want_eta, rtol=1e-6)

  # T = 3 ≤ 2L/μ: constant steps 1/4 and w^k = (1 − μ/(2δL))^{−(k+1)} = (7/8)^{−(k+1)}.
  sched = theory.dcsgd_schedule(1.0, 1, 1.0, 0.5, 3)
  w = theory.dcsgd_weights(1.0, 1, 1.0, 0.5, 3)
  np.testing.assert_allclose([float(sched(k)) for k in range(4)], [0.25] * 4)
  np.testing.assert_allclose([float(w(k)) for k in range(4)],
                             [(7 / 8) ** -(k + 1) for k in range(4)], rtol=1e-6)

  # δ follows n, the sampling and shared randomness: ω = 3, n = 4.
  for kwargs, delta in [({}, 1.75), ({"shared": True}, 4.0),
                        ({"probabilities": 0.5}, ((3 + 1) / 0.5 - 1) / 4 + 1),
                        ({"tau": 2, "shared": True}, 4 * (2 / 3 * 4 / 2) / 4 + 4)]:
    assert float(theory.dcsgd_schedule(3.0, 4, 2.0, 0.5, 100, **kwargs)(0)) == pytest.approx(
        1 / (2 * delta * 2.0), rel=1e-6)
    assert float(theory.dcsgd_schedule(3.0, 4, 2.0, 0.5, 100, **kwargs)(60)) == pytest.approx(
        2 / (delta * 0.5 * (16 + 10)), rel=1e-6)


def test_dcsgd_bound_closed_form():
  # 64 δ L r⁰ exp(−μT/(4δL)) + 36(σ² + D)/(μT) with δ = ω/n + 1 = 2.
  got = theory.dcsgd_bound(4.0, 4, 2.0, 0.5, 100, 3.0, sigma2=0.5, D=1.5)
  assert got == pytest.approx(64 * 2 * 2 * 3 * math.exp(-0.5 * 100 / 16) + 36 * 2 / 50)
  assert theory.dcsgd_bound(4.0, 4, 2.0, 0.5, 100, 3.0, shared=True) == pytest.approx(
      64 * 5 * 2 * 3 * math.exp(-0.5 * 100 / 40))


# -------------------------------------------------------------- iterate_average
def test_iterate_average_is_the_weighted_mean_of_the_iterates():
  steps = 9
  weights = lambda k: jnp.where(k < 2, 0.0, (k % 3) + 0.5)  # 0, 0, 3.0/… (W = 0 at first)
  rng = np.random.default_rng(0)
  grads = rng.normal(size=(steps, 2, 3)).astype(np.float32)
  params = {"a": jnp.ones((2, 3), jnp.bfloat16), "b": jnp.zeros(3, jnp.float32)}
  opt = optax.chain(compopt.iterate_average(weights), optax.sgd(0.1))
  state = opt.init(params)
  xs_a, xs_b = [], []
  for t in range(steps):
    xs_a.append(np.asarray(params["a"], np.float64))
    xs_b.append(np.asarray(params["b"], np.float64))
    g = {"a": jnp.asarray(grads[t], jnp.bfloat16), "b": jnp.asarray(grads[t, 0])}
    u, state = opt.update(g, state, params)
    params = optax.apply_updates(params, u)
    avg = compopt.averaged_params(state)
    w = np.array([(k % 3) + 0.5 if k >= 2 else 0.0 for k in range(t + 1)])
    if w.sum() == 0:  # no weight yet: the latest iterate
      want_a, want_b = xs_a[-1], xs_b[-1]
    else:
      want_a = np.tensordot(w, np.stack(xs_a), 1) / w.sum()
      want_b = np.tensordot(w, np.stack(xs_b), 1) / w.sum()
    assert avg["a"].dtype == jnp.float32  # average_dtype, not the bf16 params
    np.testing.assert_allclose(np.asarray(avg["a"]), want_a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(avg["b"]), want_b, rtol=1e-5, atol=1e-6)
  assert params["a"].dtype == jnp.bfloat16  # updates pass through unchanged


def test_iterate_average_refuses_bad_use():
  with pytest.raises(TypeError, match="`weights`"):
    compopt.iterate_average(2.0)
  with pytest.raises(TypeError, match="`average_dtype`"):
    compopt.iterate_average(lambda k: 1.0, average_dtype=jnp.int32)
  tx = compopt.iterate_average(lambda k: 1.0)
  with pytest.raises(ValueError, match="`params`"):
    tx.update(jnp.zeros(2), tx.init(jnp.zeros(2)))
  with pytest.raises(ValueError, match="IterateAverageState"):
    compopt.averaged_params(optax.sgd(0.1).init(jnp.zeros(2)))


# ------------------------------------ DCSGD on a quadratic: the theorem's bound
def _quadratic(n, d, mu, L, seed=0):
  """f_i(x) = ½(x − b_i)ᵀH(x − b_i), H = diag(μ..L): each f_i L-smooth, f
  μ-strongly convex, x* = mean_i b_i, f_i* = 0 and exact gradients (σ² = 0)."""
  h = np.linspace(mu, L, d)
  b = np.random.default_rng(seed).normal(size=(n, d))
  x_star = b.mean(0)
  D = 2 * L / n * sum(0.5 * ((x_star - bi) ** 2 * h).sum() for bi in b)
  return h, b, x_star, D


def _run_dcsgd(h, b, compressor, omega, mu, L, T, seeds, shared=False):
  """x^{T+1} and x̄^T of DCSGD with the theorem's schedule and weights, for
  ``seeds`` seeds, on n workers simulated with vmap."""
  n, d = b.shape
  sched = theory.dcsgd_schedule(omega, n, L, mu, T, shared=shared)
  weights = theory.dcsgd_weights(omega, n, L, mu, T, shared=shared)
  H, B = jnp.asarray(h, jnp.float32), jnp.asarray(b, jnp.float32)

  def trajectory(key):
    opt = optax.chain(compopt.iterate_average(weights),
                      compopt.dcsgd(sched, compressor=compressor, axis_name=AXIS, key=key))

    def worker(bi):
      def step(carry, _):
        x, s = carry
        u, s = opt.update(H * (x - bi), s, x)  # ∇f_i(x^k); k = 0..T
        return (x + u, s), None
      x0 = jnp.zeros(d)
      (x, s), _ = jax.lax.scan(step, (x0, opt.init(x0)), None, length=T + 1)
      return x, compopt.averaged_params(s)

    return jax.vmap(worker, axis_name=AXIS)(B)

  keys = jax.random.split(jax.random.PRNGKey(1), seeds)
  x, x_bar = jax.jit(jax.vmap(trajectory))(keys)
  return np.asarray(x, np.float64)[:, 0], np.asarray(x_bar, np.float64)[:, 0]


def test_dcsgd_average_meets_the_theorem_bound_and_beats_the_last_iterate():
  n, d, k, mu, L, T, seeds = 4, 8, 2, 0.5, 2.0, 400, 256
  omega = d / k - 1  # rand_k: ω = 3, δ_n = 1.75
  h, b, x_star, D = _quadratic(n, d, mu, L)
  x_last, x_bar = _run_dcsgd(h, b, C.rand_k(k), omega, mu, L, T, seeds)
  f = lambda x: 0.5 * ((x - x_star) ** 2 * h).sum(-1)  # f(x) − f*
  gap_bar, gap_last = f(x_bar), f(x_last)
  dist = ((x_last - x_star) ** 2).sum(-1)
  bound = theory.dcsgd_bound(omega, n, L, mu, T, float((x_star**2).sum()), D=D)
  # Thm 4 (Lemma 9's form): E[f(x̄^T) − f*] + μ E‖x^{T+1} − x*‖² ≤ bound.
  lhs = gap_bar.mean() + mu * dist.mean()
  assert lhs <= bound, (lhs, bound)
  # The theorem bounds f(x̄^T) − f* by the bound, the last iterate only through
  # μ‖x^{T+1} − x*‖², i.e. f(x^{T+1}) − f* ≤ (L/(2μ))·bound: the average is
  # the better point, by more than 5 standard errors.
  diff = gap_last - gap_bar
  assert diff.mean() > 5 * diff.std() / math.sqrt(seeds), (gap_bar.mean(), gap_last.mean())


def test_dcsgd_with_shared_rand_k_meets_its_bound_and_has_no_noise_at_the_optimum():
  # Shared positions: mean_i C(∇f_i(x)) = C(∇f(x)), which vanishes at x*, so
  # the heterogeneity term D does not arise (see theory.dcsgd_delta_n).
  n, d, k, mu, L, T, seeds = 4, 8, 2, 0.5, 2.0, 400, 32
  omega = d / k - 1
  h, b, x_star, D = _quadratic(n, d, mu, L)
  x_last, x_bar = _run_dcsgd(h, b, C.rand_k(k, shared=True), omega, mu, L, T, seeds,
                             shared=True)
  f = lambda x: 0.5 * ((x - x_star) ** 2 * h).sum(-1)
  lhs = f(x_bar).mean() + mu * ((x_last - x_star) ** 2).sum(-1).mean()
  r0 = float((x_star**2).sum())
  assert lhs <= theory.dcsgd_bound(omega, n, L, mu, T, r0, D=D, shared=True)
  # Thm 2 on f itself (δ' = ω + 1, D = 0): 64·4·2·r⁰·exp(−400/32) ≈ 2e-3·r⁰.
  assert lhs <= theory.dcsgd_bound(omega, 1, L, mu, T, r0)
  assert f(x_bar).mean() < 1e-6


@pytest.mark.slow
def test_dcsgd_bound_holds_for_a_large_delta_where_averaging_does_not_help():
  # δ_n = 15/2 + 1 = 8.5: the decreasing steps 2/(δμ(κ + k − t0)) contract by
  # only 1 − 2/(δ(κ + k − t0)) (see theory.dcsgd_schedule); the bound still
  # holds, but the average lags the last iterate.
  n, d, k, mu, L, T, seeds = 2, 16, 1, 0.5, 2.0, 4000, 200
  omega = d / k - 1
  h, b, x_star, D = _quadratic(n, d, mu, L)
  x_last, x_bar = _run_dcsgd(h, b, C.rand_k(k), omega, mu, L, T, seeds)
  f = lambda x: 0.5 * ((x - x_star) ** 2 * h).sum(-1)
  lhs = f(x_bar).mean() + mu * ((x_last - x_star) ** 2).sum(-1).mean()
  assert lhs <= theory.dcsgd_bound(omega, n, L, mu, T, float((x_star**2).sum()), D=D)
  diff = f(x_bar) - f(x_last)
  assert diff.mean() > 3 * diff.std() / math.sqrt(seeds)


# --------------------------------------------- shared randomness: δ_n = ω + 1
def test_dcsgd_delta_n_with_shared_randomness_monte_carlo():
  n, d, k, keys = 4, 10, 2, 2000
  omega = d / k - 1  # 4
  rng = np.random.default_rng(3)
  same = np.tile(rng.normal(size=d), (n, 1))  # g_i all equal: the bound is tight
  different = rng.normal(size=(n, d))
  gs = jnp.asarray(np.stack([same, different]), jnp.float32)
  txs = [compopt.compressed_mean(C.rand_k(k, shared=s), axis_name=AXIS) for s in (False, True)]

  def one(key, g):
    out = []
    for tx in txs:
      s = compopt.parallel.stack(tx.init(jnp.zeros(d)), n)
      s = s._replace(key=jnp.broadcast_to(key, (n, 2)))  # the same key on every worker
      u, _ = jax.vmap(lambda gi, si: tx.update(gi, si), axis_name=AXIS)(g, s)
      out.append(u[0])
    return jnp.stack(out)  # [independent, shared] aggregates

  ks = jax.random.split(jax.random.PRNGKey(0), keys)
  us = np.asarray(jax.jit(jax.vmap(lambda key: jax.vmap(lambda g: one(key, g))(gs)))(ks),
                  np.float64)  # (keys, g set, compressor, d)
  second = (us**2).sum(-1)
  mean, stderr = second.mean(0), second.std(0) / math.sqrt(keys)

  for j, g in enumerate([same, different]):
    g = g.astype(np.float32).astype(np.float64)
    avg_sq = (g**2).sum(1).mean()  # (1/n) Σ_i ‖g_i‖²
    g_bar = g.mean(0)
    # independent: E‖mean_i C(g_i)‖² = ‖ḡ‖² + (ω/n²) Σ_i ‖g_i‖² ≤ (ω/n + 1)·avg_sq
    indep = (g_bar**2).sum() + omega * (g**2).sum() / n**2
    assert abs(mean[j, 0] - indep) < 4 * stderr[j, 0], (j, mean[j, 0], indep)
    assert indep <= theory.dcsgd_delta_n(omega, n) * avg_sq * (1 + 1e-12)
    # shared: mean_i C(g_i) = C(ḡ), E‖C(ḡ)‖² = (d/k)‖ḡ‖² ≤ (ω + 1)·avg_sq
    shared = d / k * (g_bar**2).sum()
    assert abs(mean[j, 1] - shared) < 4 * stderr[j, 1], (j, mean[j, 1], shared)
    assert shared <= theory.dcsgd_delta_n(omega, n, shared=True) * avg_sq * (1 + 1e-12)
  # Equal g_i: the shared constant is attained, and the independent one is broken.
  avg_sq = (same.astype(np.float32).astype(np.float64) ** 2).sum(1).mean()
  assert mean[0, 1] == pytest.approx(theory.dcsgd_delta_n(omega, n, shared=True) * avg_sq,
                                     abs=4 * stderr[0, 1])
  assert mean[0, 1] > theory.dcsgd_delta_n(omega, n) * avg_sq + 10 * stderr[0, 1]


def test_dcsgd_delta_s_and_step_size_with_shared_randomness():
  # δ_S = (ω + 1) max_i(v_i/p_i)/n + δ_n
  assert theory.dcsgd_delta_s(1.0, 4, probabilities=0.5, shared=True) == pytest.approx(
      2 * 1 / 4 + 2)
  assert theory.dcsgd_delta_s(1.0, 4, tau=2, shared=True) == pytest.approx(
      2 * (2 / 3 * 4 / 2) / 4 + 2)
  # Independent compressors: the same split gives the paper's formula.
  for kwargs in [{"probabilities": [0.3, 0.5, 0.9, 1.0]}, {"tau": 3}]:
    shared = theory.dcsgd_delta_s(2.0, 4, shared=True, **kwargs)
    indep = theory.dcsgd_delta_s(2.0, 4, **kwargs)
    assert shared - indep == pytest.approx(
        theory.dcsgd_delta_n(2.0, 4, shared=True) - theory.dcsgd_delta_n(2.0, 4))
  assert theory.dcsgd_delta_s(2.0, 4, tau=4, shared=True) == 3.0  # full participation
  assert theory.dcsgd_step_size(9.0, 3, 2.0, shared=True) == pytest.approx(1 / (2 * 10 * 2))
  assert theory.dcsgd_delta_n(9.0, 3, shared=False) == theory.dcsgd_delta_n(9.0, 3)


# ---------------------- per-worker constants (Shulgin & Richtárik 2022, Thms 1–4)
def test_per_worker_constants_closed_forms():
  w, Ls = [1.0, 9.0], [3.0, 1.0]
  # Thm 1: 1/(L + 2 max_i(L_i ω_i)/n) = 1/(1 + 2·9/2)
  assert theory.dcgd_fixed_step_size(w, 2, 1.0, Ls) == pytest.approx(1 / 10)
  assert theory.dcgd_fixed_step_size(w, 2, 1.0, 3.0) == pytest.approx(1 / (1 + 27))
  assert theory.dcgd_fixed_step_size(9.0, 2, 1.0, Ls) == pytest.approx(1 / (1 + 27))
  # Thm 2: max_i(L_i ω_i(1 − δ_i)) = max(3·1·0.5, 1·9·0.75)
  assert theory.dcgd_star_step_size(w, 2, 1.0, Ls, delta=[0.5, 0.25]) == pytest.approx(
      1 / (1 + 6.75 / 2))
  # Thm 3: α = 1/(1 + max_i ω_i(1 − δ_i)) = 1/(1 + max(1, 4.5))
  assert theory.diana_alpha(w, delta=[0.0, 0.5]) == pytest.approx(1 / 5.5)
  assert theory.diana_alpha(w) == pytest.approx(0.1)
  M = 4 * 9 / (2 * 0.1)  # 4 max(1, max_i ω_i)/(nα)
  assert theory.diana_M(w, 2) == pytest.approx(M)
  gamma = 1 / (2 / 2 * max(1 * 3, 9 * 1) + (1 + 0.1 * M) * 3)
  assert theory.diana_step_size(w, 2, Ls) == pytest.approx(gamma)
  assert theory.diana_rate(w, 2, gamma, 0.01) == pytest.approx(
      max(1 - gamma * 0.01, 1 - 0.1 + 2 * 9 / (2 * M)))
  # Thm 4: ω = max_i ω_i, p_m = min_i p_i, max_i(p_i L_i)
  p = [0.5, 0.1]
  assert theory.rand_diana_p(w) == pytest.approx(0.1)
  M = 4 * 9 / (2 * 0.1)
  assert theory.rand_diana_M(w, 2, p=p) == pytest.approx(M)
  assert theory.rand_diana_step_size(w, 2, [1.0, 3.0], p=p) == pytest.approx(
      1 / ((1 + 2 * 9 / 2) * 3 + M * max(0.5 * 1, 0.1 * 3)))
  assert theory.rand_diana_step_size(w, 2, 3.0, p=p) == pytest.approx(
      1 / ((1 + 2 * 9 / 2) * 3 + M * 0.5 * 3))
  assert theory.rand_diana_rate(w, 2, 1e-3, 1.0, p=p) == pytest.approx(
      max(1 - 1e-3, 1 - 0.1 + 2 * 9 / (2 * M)))


def test_per_worker_sequences_of_equal_values_give_the_scalar_results():
  n = 10
  same = lambda v: [v] * n
  assert theory.dcgd_fixed_step_size(same(9.0), n, 1.0, same(2.0)) == \
      theory.dcgd_fixed_step_size(9.0, n, 1.0, 2.0)
  assert theory.dcgd_star_step_size(same(9.0), n, 1.0, same(2.0), same(0.3)) == \
      theory.dcgd_star_step_size(9.0, n, 1.0, 2.0, 0.3)
  assert theory.diana_alpha(same(9.0), same(0.3)) == theory.diana_alpha(9.0, 0.3)
  assert theory.diana_M(same(9.0), n) == theory.diana_M(9.0, n)
  assert theory.diana_step_size(same(9.0), n, same(2.0)) == theory.diana_step_size(9.0, n, 2.0)
  assert theory.diana_rate(same(9.0), n, 0.01, 0.5) == theory.diana_rate(9.0, n, 0.01, 0.5)
  assert theory.rand_diana_p(same(9.0)) == theory.rand_diana_p(9.0)
  assert theory.rand_diana_M(same(9.0), n, same(0.2)) == theory.rand_diana_M(9.0, n, 0.2)
  assert theory.rand_diana_step_size(same(9.0), n, same(2.0), p=same(0.2)) == \
      theory.rand_diana_step_size(9.0, n, 2.0, p=0.2)
  assert theory.rand_diana_rate(same(9.0), n, 0.01, 0.5, p=same(0.2)) == \
      theory.rand_diana_rate(9.0, n, 0.01, 0.5, p=0.2)
  assert theory.gdci_eta(4.0, n, 1.0, [1.0, 3.0], 0.5) == theory.gdci_eta(4.0, n, 1.0, 3.0, 0.5)


# -------------------------------------------- COMP-AMS (Li & Li 2022, Thm 1)
def test_comp_ams_learning_rate_closed_forms():
  # q = 0, β1 = 1/2, G = 1, ε = 5, L = 2: C0 = √(4 + 5) = 3, C2 = 1,
  # η = 5/(3·3·√(2·2·max(4, 1))) = 5/36.
  assert theory.comp_ams_learning_rate(2.0, 1.0, q=0.0, b1=0.5, eps=5.0) == pytest.approx(5 / 36)
  # q² = 1/2: C0 = √(4·(3/2)³/(1/4) + 10) = 8, C2 = 1 + 4·(1/2)/(1/4) = 9,
  # η = 10/(3·8·√(2·2·9)) = 10/144.
  eta = theory.comp_ams_learning_rate(2.0, 1.0, q=math.sqrt(0.5), b1=0.5, eps=10.0)
  assert eta == pytest.approx(10 / 144)
  assert theory.comp_ams_learning_rate(2.0, 1.0, delta=0.5, b1=0.5, eps=10.0) == \
      pytest.approx(eta)  # q = √(1 − δ)
  # Corollaries 1–2: min with √(n/T).
  assert theory.comp_ams_learning_rate(2.0, 1.0, q=0.0, b1=0.5, eps=5.0, T=10_000,
                                       n=4) == pytest.approx(0.02)
  assert theory.comp_ams_learning_rate(2.0, 1.0, q=0.0, b1=0.5, eps=5.0, T=100,
                                       n=4) == pytest.approx(5 / 36)
  # top_k(k) on d coordinates: q² = 1 − k/d (Remark 1).
  d = theory.delta(C.top_k(10), (100,))
  assert theory.comp_ams_learning_rate(1.0, 1.0, delta=d) == pytest.approx(
      theory.comp_ams_learning_rate(1.0, 1.0, q=math.sqrt(0.9)))


# ---------------------------------- EF-SignSGD (Karimireddy et al. 2019, II/III)
def test_ef_signsgd_step_sizes_closed_forms():
  assert theory.ef_signsgd_step_size(99) == pytest.approx(0.1)  # Remark 4: 1/√(T + 1)
  # Thm II with δ = 1: γ = 2√(f0/(Lσ²(T + 1))) = 2√(1.5/16)
  assert theory.ef_signsgd_step_size(3, f0=1.5, L=1.0, sigma2=4.0) == pytest.approx(
      2 * math.sqrt(1.5 / 16))
  # Thm II with C = 4L²σ²(1 − δ)/δ² = 1 (δ = 4√5 − 8), A = 0.75, B = 2:
  # 2Cγ³ + Bγ² = A at γ = 1/2.
  delta = 4 * math.sqrt(5) - 8
  assert 16 * (1 - delta) / delta**2 == pytest.approx(1.0)
  gamma = theory.ef_signsgd_step_size(3, f0=1.5, L=1.0, sigma2=4.0, delta=delta)
  assert gamma == pytest.approx(0.5, rel=1e-12)
  # ... and it minimizes the theorem's bound on a fine grid.
  grid = np.linspace(0.05, 2.0, 4001)
  bounds = [theory.ef_signsgd_bound(g, 3, 1.5, 1.0, 4.0, delta) for g in grid]
  assert theory.ef_signsgd_bound(gamma, 3, 1.5, 1.0, 4.0, delta) <= min(bounds) + 1e-12
  assert theory.ef_signsgd_bound(0.5, 3, 1.5, 1.0, 4.0, delta) == pytest.approx(
      1.5 + 1.0 + 0.25)  # A/γ + Bγ + Cγ²
  # Thm III: γ = √(r0/(2(T + 1)σ²c)), c = 1/2 + 2√(1 − δ)/δ = 11/6 for δ = 3/4.
  assert theory.ef_signsgd_convex_step_size(2, 11.0, 1.0, 0.75) == pytest.approx(1.0)
  # There the bound is √r0·σ·√(1 + 4√(1 − δ)/δ)/√(T + 1) = √11·√(11/3)/√3 = 11/3.
  assert theory.ef_signsgd_convex_bound(1.0, 2, 11.0, 1.0, 0.75) == pytest.approx(11 / 3)
  grid = np.linspace(0.1, 5.0, 2001)
  assert min(theory.ef_signsgd_convex_bound(g, 2, 11.0, 1.0, 0.75) for g in grid) >= 11 / 3 - 1e-12
  # δ = 1 is SGD's rate, r0/(2γ(T + 1)) + γσ²/2.
  assert theory.ef_signsgd_convex_bound(0.5, 3, 2.0, 4.0, 1.0) == pytest.approx(0.5 + 1.0)


def test_sign_density_against_numpy_and_the_compressor():
  density = jax.jit(theory.sign_density, static_argnames="block_size")
  rng = np.random.default_rng(5)
  for v in [rng.normal(size=50), rng.standard_cauchy(size=50), np.eye(1, 40, 7)[0],
            np.ones(17)]:
    phi = float(density(jnp.asarray(v, jnp.float32)))
    want = np.abs(v).sum() ** 2 / (v.size * (v**2).sum())  # ‖v‖₁²/(d‖v‖₂²)
    assert phi == pytest.approx(want, rel=1e-5)
    assert 1 / v.size - 1e-7 <= phi <= 1 + 1e-7
  assert float(density(jnp.asarray(np.eye(1, 40, 7)[0]))) == pytest.approx(1 / 40)
  assert float(theory.sign_density(jnp.zeros(5))) == 1.0

  # Lemma 8 on compopt's compressors: ‖C(v) − v‖² = (1 − φ(v))‖v‖², leaf by
  # leaf (scaled_sign) and block by block (block_sign), and φ ≥ the worst case δ.
  tree = {"w": jnp.asarray(rng.normal(size=(6, 5)) * np.arange(1, 31).reshape(6, 5),
                           jnp.float32),
          "b": jnp.asarray(rng.standard_cauchy(size=7), jnp.float32)}
  leaves = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)]
  norm_sq = sum((x**2).sum() for x in leaves)
  for compressor, block in [(C.scaled_sign(), None), (C.block_sign(4), 4)]:
    phi = float(density(tree, block_size=block))
    out = jax.jit(compressor)(jax.random.PRNGKey(0), tree)
    err = sum(((np.asarray(a, np.float64).ravel() - x) ** 2).sum()
              for a, x in zip(jax.tree.leaves(out), leaves))
    assert err <= (1 - phi) * norm_sq * (1 + 1e-5) + 1e-6
    assert err == pytest.approx((1 - phi) * norm_sq, rel=1e-4)
    assert phi >= theory.delta(compressor, tree) - 1e-7
    # NumPy: Σ_B ‖v_B‖₁²/d_B / ‖v‖²
    num = 0.0
    for x in leaves:
      size = x.size if block is None else block
      for i in range(0, x.size, size):
        blk = x[i:i + size]
        num += np.abs(blk).sum() ** 2 / blk.size
    assert phi == pytest.approx(num / norm_sq, rel=1e-5)


# ------------------------------------------------------------------ bad inputs
_BAD = [
    (theory.dcsgd_delta_n, (1.0, 2), {"shared": 1}, TypeError, "shared"),
    (theory.dcsgd_schedule, (1.0, 2, 1.0, 2.0, 10), {}, ValueError, "mu"),
    (theory.dcsgd_schedule, (1.0, 2, 1.0, 0.0, 10), {}, ValueError, "mu"),
    (theory.dcsgd_schedule, (1.0, 2, 1.0, 0.5, 0), {}, ValueError, "T"),
    (theory.dcsgd_weights, (-1.0, 2, 1.0, 0.5, 10), {}, ValueError, "omega"),
    (theory.dcsgd_bound, (1.0, 2, 1.0, 0.5, 10, -1.0), {}, ValueError, "r0"),
    (theory.dcsgd_bound, (1.0, 2, 1.0, 0.5, 10, 1.0), {"D": -1.0}, ValueError, "D"),
    (theory.diana_alpha, ([1.0, -1.0],), {}, ValueError, "omega"),
    (theory.diana_alpha, ([],), {}, ValueError, "omega"),
    (theory.diana_alpha, ([1.0, "2"],), {}, TypeError, "omega"),
    (theory.diana_alpha, ([1.0, 2.0],), {"delta": [0.1, 0.2, 0.3]}, ValueError, "delta"),
    (theory.diana_M, ([1.0, 2.0], 3), {}, ValueError, "omega"),
    (theory.diana_step_size, (1.0, 2, [1.0, 0.0]), {}, ValueError, "L_max"),
    (theory.diana_step_size, (1.0, 2, [1.0, 1.0, 1.0]), {}, ValueError, "L_max"),
    (theory.rand_diana_M, (1.0, 2), {"p": [0.5, 0.0]}, ValueError, "p"),
    (theory.rand_diana_step_size, (1.0, 2, 1.0), {"p": [0.5]}, ValueError, "p"),
    (theory.dcgd_fixed_step_size, (1.0, 2, 2.0, [1.0, 1.5]), {}, ValueError, "L_max"),
    (theory.comp_ams_learning_rate, (1.0, 1.0), {}, ValueError, "q"),
    (theory.comp_ams_learning_rate, (1.0, 1.0), {"q": 0.5, "delta": 0.5}, ValueError, "q"),
    (theory.comp_ams_learning_rate, (1.0, 1.0), {"q": 1.0}, ValueError, "q"),
    (theory.comp_ams_learning_rate, (1.0, 1.0), {"delta": 0.0}, ValueError, "delta"),
    (theory.comp_ams_learning_rate, (0.0, 1.0), {"q": 0.5}, ValueError, "L"),
    (theory.comp_ams_learning_rate, (1.0, 1.0), {"q": 0.5, "b1": 1.0}, ValueError, "b1"),
    (theory.comp_ams_learning_rate, (1.0, 1.0), {"q": 0.5, "T": 0}, ValueError, "T"),
    (theory.ef_signsgd_step_size, (0,), {}, ValueError, "T"),
    (theory.ef_signsgd_step_size, (10,), {"f0": 1.0}, ValueError, "sigma2"),
    (theory.ef_signsgd_step_size, (10,), {"f0": 1.0, "L": 1.0, "sigma2": 0.0},
     ValueError, "sigma2"),
    (theory.ef_signsgd_step_size, (10,), {"f0": 1.0, "L": 1.0, "sigma2": 1.0, "delta": 0.0},
     ValueError, "delta"),
    (theory.ef_signsgd_convex_step_size, (10, 0.0, 1.0, 0.5), {}, ValueError, "r0"),
    (theory.ef_signsgd_bound, (0.0, 10, 1.0, 1.0, 1.0, 0.5), {}, ValueError, "gamma"),
    (theory.ef_signsgd_convex_bound, (1.0, 10, 1.0, 1.0, 1.5), {}, ValueError, "delta"),
    (theory.sign_density, ({},), {}, ValueError, "v"),
    (theory.sign_density, (jnp.ones(3),), {"block_size": 0}, ValueError, "block_size"),
    (theory.sign_density, (jnp.ones(3, jnp.int32),), {}, TypeError, "x"),
]


@pytest.mark.parametrize("fn,args,kwargs,error,name", _BAD,
                         ids=[f"{f.__name__}-{n}-{i}" for i, (f, _, _, _, n) in enumerate(_BAD)])
def test_bad_inputs_name_the_parameter(fn, args, kwargs, error, name):
  with pytest.raises(error, match=f"`{name}`"):
    fn(*args, **kwargs)


def test_public_exports():
  for name in ["dcsgd_schedule", "dcsgd_weights", "dcsgd_bound", "comp_ams_learning_rate",
               "ef_signsgd_step_size", "ef_signsgd_convex_step_size", "ef_signsgd_bound",
               "ef_signsgd_convex_bound", "sign_density"]:
    assert name in theory.__all__ and callable(getattr(theory, name))
  for name in ["iterate_average", "averaged_params", "IterateAverageState"]:
    assert name in compopt.__all__ and hasattr(compopt, name)
