"""Tests of compopt.theory against closed forms worked out from the papers.

Expected values are written out by hand from the statements (in the papers'
own notation where it differs from ours), not by calling the code under test.
Simulations are small NumPy loops.
"""

import itertools
import math

import jax
import numpy as np
import pytest

from compopt import compressors
from compopt import theory


# ------------------------------------------------------- compressor classes
@pytest.mark.parametrize("d,k", [(100, 10), (7, 3), (1, 1)])
def test_top_k_delta_and_rand_k_omega(d, k):
  assert theory.delta(compressors.top_k(k), (d,)) == pytest.approx(k / d)
  assert theory.delta(compressors.top_k(k), d) == pytest.approx(k / d)
  assert theory.omega(compressors.rand_k(k), (d,)) == pytest.approx(d / k - 1)
  # top_k is not unbiased, rand_k not contractive as a class.
  assert theory.omega(compressors.top_k(k), (d,)) is None
  assert theory.delta(compressors.rand_k(k), (d,)) is None


def test_shape_of_an_array_and_a_multidimensional_shape():
  c = compressors.rand_k(4)
  assert theory.omega(c, (4, 5)) == pytest.approx(20 / 4 - 1)
  assert theory.omega(c, np.zeros((4, 5), np.float32)) == pytest.approx(4.0)
  assert theory.omega(c, jax.ShapeDtypeStruct((4, 5), np.float32)) == pytest.approx(4.0)


@pytest.mark.parametrize("d,k1,k2", [(100, 5, 10), (64, 16, 4), (10, 10, 1)])
def test_induced_omega(d, k1, k2):
  expected = (d / k2 - 1) * (1 - k1 / d)
  # Horváth & Richtárik 2021, Thm 3, in their notation: C1 ∈ C(δ1') with
  # δ1' = d/k1 (top_k, E‖C1(x) − x‖² ≤ (1 − k1/d)‖x‖²), C2 ∈ U(δ2') with
  # δ2' = d/k2 (rand_k, E‖C2(x)‖² ≤ (d/k2)‖x‖²); δ' = δ2'(1 − 1/δ1') + 1/δ1',
  # ω = δ' − 1.
  d1p, d2p = d / k1, d / k2
  assert d2p * (1 - 1 / d1p) + 1 / d1p - 1 == pytest.approx(expected)
  assert theory.induced_omega(k1 / d, d / k2 - 1) == pytest.approx(expected)
  c = compressors.induced(compressors.top_k(k1), compressors.rand_k(k2))
  assert theory.omega(c, (d,)) == pytest.approx(expected)


def test_tree_level_constants():
  tree = {
      "a": jax.ShapeDtypeStruct((10,), np.float32),
      "b": jax.ShapeDtypeStruct((4, 5), np.float32),
      "c": {"w": jax.ShapeDtypeStruct((100,), np.float32),
            "empty": jax.ShapeDtypeStruct((0, 3), np.float32)},
  }
  # ω = max over leaves of d_l/2 − 1 = max(4, 9, 49); δ = min of 2/d_l.
  assert theory.omega(compressors.rand_k(2), tree) == pytest.approx(49.0)
  assert theory.delta(compressors.top_k(2), tree) == pytest.approx(2 / 100)
  # Same sizes, arrays instead of ShapeDtypeStructs, in a list.
  arrays = [np.ones(10), np.ones((4, 5)), np.ones(100)]
  assert theory.omega(compressors.rand_k(2), arrays) == pytest.approx(49.0)
  # induced per leaf: (d/2 − 1)(1 − 1/d), largest on the biggest leaf.
  c = compressors.induced(compressors.top_k(1), compressors.rand_k(2))
  assert theory.omega(c, tree) == pytest.approx(49 * (1 - 1 / 100))
  assert theory.delta(compressors.identity(), tree) == 1.0
  assert theory.omega(compressors.identity(), tree) == 0.0


# -------------------------------------------------------------------- DCSGD
@pytest.mark.parametrize("d,k,n,L", [(100, 10, 4, 2.0), (10, 1, 1, 0.5)])
def test_dcsgd_delta_n_and_step_size(d, k, n, L):
  # Horváth & Richtárik 2021 write rand_k ∈ U(δ') with δ' = E‖C(x)‖²/‖x‖² = d/k.
  dp = d / k
  delta_n = (dp - 1) / n + 1
  omega = d / k - 1
  assert theory.dcsgd_delta_n(omega, n) == pytest.approx(delta_n)
  assert theory.dcsgd_step_size(omega, n, L) == pytest.approx(1 / (2 * delta_n * L))


def _sampling_variance(zeta, subsets):
  """E‖Σ_{i∈S} ζ_i/(n p_i) − ζ̄‖² and p, exactly, for a list of (S, prob)."""
  n = zeta.shape[0]
  p = np.zeros(n)
  for s, prob in subsets:
    p[list(s)] += prob
  mean = zeta.mean(0)
  var = sum(prob * np.sum((sum((zeta[i] / (n * p[i]) for i in s),
                               np.zeros_like(mean)) - mean) ** 2)
            for s, prob in subsets)
  return var, p


def test_dcsgd_delta_s_independent_sampling():
  n, omega = 3, 2.0
  ps = np.array([0.5, 0.8, 1.0])
  subsets = []
  for mask in itertools.product([0, 1], repeat=n):
    prob = np.prod([p if m else 1 - p for p, m in zip(ps, mask)])
    subsets.append(([i for i in range(n) if mask[i]], prob))
  zeta = np.random.default_rng(0).normal(size=(n, 5))
  var, p = _sampling_variance(zeta, subsets)
  np.testing.assert_allclose(p, ps)
  v = 1 - ps  # the v of Lemma 5 for independent participation
  bound = np.sum(v / ps * np.sum(zeta**2, 1)) / n**2
  assert var == pytest.approx(bound)  # tight for independent sampling
  # Thm 6: δ_S = (δ' max_i(v_i/p_i + 1) − 1)/n + 1, δ' = ω + 1.
  expected = ((omega + 1) * np.max(v / ps + 1) - 1) / n + 1
  assert theory.dcsgd_delta_s(omega, n, probabilities=ps) == pytest.approx(expected)
  assert theory.dcsgd_delta_s(omega, n, probabilities=list(ps)) == pytest.approx(
      ((omega + 1) / 0.5 - 1) / n + 1)
  assert theory.dcsgd_step_size(omega, n, 3.0, probabilities=ps) == pytest.approx(
      1 / (2 * expected * 3.0))
  # Everyone always participates: back to Thm 4.
  assert theory.dcsgd_delta_s(omega, n, probabilities=1.0) == pytest.approx(
      theory.dcsgd_delta_n(omega, n))


@pytest.mark.parametrize("n,tau", [(4, 2), (5, 1), (3, 3), (1, 1)])
def test_dcsgd_delta_s_tau_nice(n, tau):
  omega = 3.0
  subsets = [(list(s), 1 / math.comb(n, tau))
             for s in itertools.combinations(range(n), tau)]
  zeta = np.random.default_rng(1).normal(size=(n, 4))
  var, p = _sampling_variance(zeta, subsets)
  np.testing.assert_allclose(p, tau / n)
  v = 0.0 if tau == n else (n - tau) / (n - 1)
  bound = np.sum(v / p * np.sum(zeta**2, 1)) / n**2
  assert var <= bound + 1e-12
  expected = ((omega + 1) * (v * n / tau + 1) - 1) / n + 1
  got = theory.dcsgd_delta_s(omega, n, tau=tau)
  assert got == pytest.approx(expected)
  if tau == n:
    assert got == pytest.approx(omega / n + 1)


def test_dcsgd_converges_at_the_theory_step_size():
  # Tiny quadratics with a common minimiser (interpolation: σ² = 0, D = 0),
  # f_i(x) = ½(x − x*)ᵀH_i(x − x*), H_i with eigenvalues in [μ, L]; rand_k.
  rng = np.random.default_rng(0)
  n, d, k, mu, L = 4, 10, 2, 0.5, 2.0
  hs = []
  for _ in range(n):
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    hs.append(q @ np.diag(np.linspace(mu, L, d)) @ q.T)
  hs = np.stack(hs)
  x_star = rng.normal(size=d)
  omega = theory.omega(compressors.rand_k(k), (d,))
  gamma = theory.dcsgd_step_size(omega, n, L)
  delta_n = omega / n + 1
  seeds, steps = 8, 300
  x = np.zeros((seeds, d))
  r0 = np.sum(x_star**2)
  errs = []
  for _ in range(steps):
    g = np.einsum("nij,sj->sni", hs, x - x_star)  # (seeds, n, d)
    # rand_k: k uniformly random coordinates, scaled by d/k.
    keep = np.argsort(rng.random(g.shape), axis=-1)[..., :k]
    mask = np.zeros(g.shape)
    np.put_along_axis(mask, keep, 1.0, axis=-1)
    x = x - gamma * np.mean(g * mask * (d / k), axis=1)
    errs.append(np.mean(np.sum((x - x_star) ** 2, -1)))
  errs = np.array(errs)
  # Decreasing in expectation (mean over seeds), checked every 50 steps.
  assert np.all(np.diff(errs[::50]) < 0)
  # Thm 4: μ E‖x^T − x*‖² ≤ 64 δ_n L r⁰ exp(−μT/(4 δ_n L)).
  assert mu * errs[-1] <= 64 * delta_n * L * r0 * np.exp(-mu * steps / (4 * delta_n * L))
  assert errs[-1] < 1e-6 * r0


# ---------------------------------- DIANA family (Shulgin & Richtárik 2022)
@pytest.mark.parametrize("d,k", [(80, 8), (80, 40), (10, 10)])
def test_diana_alpha_rand_k(d, k):
  q = k / d
  omega = d / k - 1
  # α = 1/(1 + ω) = 1/(d/k) = q for rand_k.
  assert theory.diana_alpha(omega) == pytest.approx(q)
  # With a top_k(k1) shift compressor C_i ∈ B(k1/d): 1/(1 + ω(1 − k1/d)).
  k1 = max(1, d // 10)
  assert theory.diana_alpha(omega, delta=k1 / d) == pytest.approx(
      1 / (1 + (d / k - 1) * (1 - k1 / d)))


def test_diana_M_step_size_and_rate():
  omega, n, L_max, mu = 9.0, 10, 2.0, 0.1
  alpha = 0.1
  M = 4 * 9 / (10 * 0.1)  # 4 max(1, ω)/(nα)
  assert M > 2 / (n * alpha) and M > 2 * omega / (n * alpha)
  assert theory.diana_M(omega, n) == pytest.approx(M)
  gamma = 1 / ((2 / n) * omega * L_max + (1 + alpha * M) * L_max)
  assert theory.diana_step_size(omega, n, L_max) == pytest.approx(gamma)
  rate = max(1 - gamma * mu, 1 - alpha + 2 * omega / (n * M))
  assert theory.diana_rate(omega, n, gamma, mu) == pytest.approx(rate)
  # The second term is at most 1 − α/2 with the default M, for any ω.
  # (γμ tiny, so ρ is the shift term whenever that term is below 1 − γμ.)
  for w in [0.0, 0.3, 1.0, 50.0]:
    a = 1 / (1 + w)
    assert 1 - a + 2 * w / (3 * theory.diana_M(w, 3)) <= 1 - a / 2 + 1e-12
    assert theory.diana_rate(w, 3, 1e-9, 1.0) == pytest.approx(1 - 1e-9)
  # Explicit α and M are used as given.
  assert theory.diana_step_size(omega, n, L_max, alpha=0.05, M=100.0) == pytest.approx(
      1 / ((2 / n) * omega * L_max + (1 + 5.0) * L_max))


def test_rand_diana_defaults():
  d, k, n, L_max, mu = 80, 8, 10, 1.0, 0.01
  omega = d / k - 1
  p = k / d  # 1/(ω + 1)
  assert theory.rand_diana_p(omega) == pytest.approx(p)
  M = 4 * omega / (n * p)
  assert theory.rand_diana_M(omega, n) == pytest.approx(M)
  gamma = 1 / ((1 + 2 * omega / n) * L_max + M * p * L_max)
  assert gamma == pytest.approx(1 / ((1 + 6 * omega / n) * L_max))
  assert theory.rand_diana_step_size(omega, n, L_max) == pytest.approx(gamma)
  assert theory.rand_diana_rate(omega, n, gamma, mu) == pytest.approx(
      max(1 - gamma * mu, 1 - p / 2))
  # No compression: no shift term, M = 0.
  assert theory.rand_diana_M(0.0, n) == 0.0
  assert theory.rand_diana_rate(0.0, n, 0.5, 1.0, p=1.0) == pytest.approx(0.5)


def test_dcgd_fixed_star_and_gdci_step_sizes():
  omega, n, L, L_max, mu = 4.0, 8, 1.5, 3.0, 0.5
  assert theory.dcgd_fixed_step_size(omega, n, L, L_max) == pytest.approx(
      1 / (L + 2 * L_max * omega / n))
  assert theory.dcgd_star_step_size(omega, n, L, L_max) == pytest.approx(
      1 / (L + L_max * omega / n))
  assert theory.dcgd_star_step_size(omega, n, L, L_max, delta=0.25) == pytest.approx(
      1 / (L + L_max * omega * 0.75 / n))
  eta = 1 / (L / mu + (2 * omega / n) * (L_max / mu - 1))
  assert theory.gdci_eta(omega, n, L, L_max, mu) == pytest.approx(eta)
  assert theory.gdci_step_size(omega, n, L, L_max, eta) == pytest.approx(
      (1 + 2 * eta * omega / n) / (eta * (L + 2 * L_max * omega / n)))


def test_diana_reaches_the_exact_optimum_at_the_theory_parameters():
  # Heterogeneous quadratics f_i(x) = ½xᵀH_ix − b_iᵀx, so ∇f_i(x*) ≠ 0;
  # DIANA (eq. 11) with rand_k, α, γ, M from theory; Thm 3 in expectation.
  rng = np.random.default_rng(1)
  n, d, k, mu, L = 4, 10, 2, 1.0, 2.0
  hs = []
  for _ in range(n):
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    hs.append(q @ np.diag(np.linspace(mu, L, d)) @ q.T)
  hs, bs = np.stack(hs), rng.normal(size=(n, d))
  x_star = np.linalg.solve(hs.sum(0), bs.sum(0))
  h_star = np.einsum("nij,j->ni", hs, x_star) - bs
  assert np.min(np.linalg.norm(h_star, axis=1)) > 0.1
  omega = d / k - 1
  alpha = theory.diana_alpha(omega)
  M = theory.diana_M(omega, n)
  gamma = theory.diana_step_size(omega, n, L)
  rho = theory.diana_rate(omega, n, gamma, mu)
  assert rho < 1
  seeds, steps = 8, 400
  x = np.zeros((seeds, d))
  h = np.zeros((seeds, n, d))
  v0 = np.sum(x_star**2) + M * gamma**2 * omega * np.mean(np.sum(h_star**2, 1))
  for _ in range(steps):
    g = np.einsum("nij,sj->sni", hs, x) - bs
    keep = np.argsort(rng.random(g.shape), axis=-1)[..., :k]
    mask = np.zeros(g.shape)
    np.put_along_axis(mask, keep, 1.0, axis=-1)
    m = (g - h) * mask * (d / k)           # m_i = Q(∇f_i − h_i)
    x = x - gamma * np.mean(h + m, axis=1)  # g = h + mean_i m_i
    h = h + alpha * m                      # h_i ← h_i + α m_i
  err = np.mean(np.sum((x - x_star) ** 2, -1))
  assert err <= rho**steps * v0
  assert err < 1e-10 * np.sum(x_star**2)


# ------------------------------------------ NEOLITHIC (Huang et al. 2022)
@pytest.mark.parametrize(
    "delta,T,b2,sigma2,Delta,L,expected",
    [
        # max(b², σ²δ) = b² = 2: ln(0.1·10⁴·2) = ln 2000 = 7.6009; /0.1 → 77.
        (0.1, 10_000, 2.0, 5.0, 1.0, 1.0, 77),
        # max(b², σ²δ) = σ²δ = 2: ln(0.5·100·2/1) = ln 100 = 4.6052; /0.5 → 10.
        (0.5, 100, 0.0, 4.0, 1.0, 1.0, 10),
        # ln(0.5·1·1/10) < 0 < ln 8 = 2.0794: ⌈2.0794/0.5⌉ = 5.
        (0.5, 1, 1.0, 0.0, 10.0, 1.0, 5),
        # b² = σ² = 0: the ln 8 branch, ⌈2.0794/0.25⌉ = 9.
        (0.25, 10**6, 0.0, 0.0, 1.0, 1.0, 9),
        # δ = 1: ⌈ln 8⌉ = 3 when the data term is small.
        (1.0, 8, 1.0, 1.0, 1.0, 1.0, 3),
        # δ = 1, ln(1·1000·1/(2·0.5)) = ln 1000 = 6.9078 → 7.
        (1.0, 1000, 1.0, 1.0, 2.0, 0.5, 7),
    ])
def test_neolithic_rounds(delta, T, b2, sigma2, Delta, L, expected):
  assert theory.neolithic_rounds(delta, T, b2, sigma2, Delta, L) == expected


def test_fcc_top_k_error_bound_numpy():
  # Huang et al. 2022, Alg. 1 with top_k (deterministic):
  # ‖v^R − v*‖² ≤ (1 − k/d)^R ‖v*‖².
  rng = np.random.default_rng(2)
  d, k = 50, 5
  for trial in range(20):
    v_star = rng.normal(size=d) * rng.exponential(size=d)
    v = np.zeros(d)
    for r in range(1, 9):
      res = v_star - v
      c = np.zeros(d)
      idx = np.argsort(-np.abs(res))[:k]
      c[idx] = res[idx]
      v = v + c
      bound = theory.fcc_error_bound(k / d, r)
      assert bound == pytest.approx((1 - k / d) ** r)
      assert np.sum((v - v_star) ** 2) <= bound * np.sum(v_star**2) * (1 + 1e-12)
  # The compressor form agrees: FCC(top_k, R) ∈ B(1 − (1 − δ)^R).
  c = compressors.fcc(compressors.top_k(k), 4)
  assert theory.delta(c, (d,)) == pytest.approx(1 - theory.fcc_error_bound(k / d, 4))


@pytest.mark.parametrize(
    "method,n,kwargs,expected",
    [
        ("lower_bound", 8, {"delta": 0.5}, 8 / 0.25),
        ("lower_bound", 8, {"omega": 3.0}, 8 * 16),
        ("neolithic", 16, {"delta": 0.1}, 16 / 0.01),
        ("neolithic", 16, {"omega": 9.0}, 16 * 100),
        ("mem_sgd", 4, {"delta": 0.5}, 4**3 / 0.5**4),
        ("cser", 4, {"delta": 0.5}, 4**3 / 0.5**4),
        ("double_squeeze", 2, {"delta": 0.5}, 2**3 / 0.5**8),
        ("q_sgd", 4, {"omega": 1.0}, None),
        ("ef21_sgd", 4, {"delta": 0.5}, None),
    ])
def test_transient_complexity(method, n, kwargs, expected):
  got = theory.transient_complexity(method, n, **kwargs)
  if expected is None:
    assert got is None
  else:
    assert got == pytest.approx(expected)


# -------------------------------------------------------------- bad inputs
_BAD = [
    (theory.dcsgd_delta_n, (1.0, 0), {}, "n"),
    (theory.dcsgd_delta_n, (-1.0, 2), {}, "omega"),
    (theory.dcsgd_delta_n, (math.inf, 2), {}, "omega"),
    (theory.dcsgd_step_size, (1.0, 2, 0.0), {}, "L"),
    (theory.dcsgd_step_size, (1.0, 2, -1.0), {}, "L"),
    (theory.dcsgd_delta_s, (1.0, 4), {}, "probabilities"),
    (theory.dcsgd_delta_s, (1.0, 4), {"probabilities": 0.5, "tau": 2}, "probabilities"),
    (theory.dcsgd_delta_s, (1.0, 4), {"probabilities": 0.0}, "probabilities"),
    (theory.dcsgd_delta_s, (1.0, 4), {"probabilities": 1.5}, "probabilities"),
    (theory.dcsgd_delta_s, (1.0, 4), {"probabilities": [0.5, 0.5]}, "probabilities"),
    (theory.dcsgd_delta_s, (1.0, 4), {"tau": 5}, "tau"),
    (theory.dcsgd_delta_s, (1.0, 4), {"tau": 0}, "tau"),
    (theory.induced_omega, (0.0, 1.0), {}, "delta1"),
    (theory.induced_omega, (1.5, 1.0), {}, "delta1"),
    (theory.induced_omega, (0.5, -1.0), {}, "omega2"),
    (theory.diana_alpha, (-0.1,), {}, "omega"),
    (theory.diana_alpha, (1.0,), {"delta": 1.5}, "delta"),
    (theory.diana_M, (1.0, 0), {}, "n"),
    (theory.diana_M, (1.0, 2), {"alpha": 0.0}, "alpha"),
    (theory.diana_M, (1.0, 2), {"alpha": 1.5}, "alpha"),
    (theory.diana_step_size, (1.0, 2, 0.0), {}, "L_max"),
    (theory.diana_step_size, (1.0, 2, 1.0), {"M": -1.0}, "M"),
    (theory.diana_rate, (1.0, 2, 0.0, 1.0), {}, "gamma"),
    (theory.diana_rate, (1.0, 2, 0.1, 0.0), {}, "mu"),
    (theory.rand_diana_p, (-1.0,), {}, "omega"),
    (theory.rand_diana_M, (1.0, 2), {"p": 0.0}, "p"),
    (theory.rand_diana_M, (1.0, 2), {"p": 2.0}, "p"),
    (theory.rand_diana_step_size, (1.0, 2, 0.0), {}, "L_max"),
    (theory.dcgd_fixed_step_size, (1.0, 2, 0.0, 1.0), {}, "L"),
    (theory.dcgd_fixed_step_size, (1.0, 2, 2.0, 1.0), {}, "L_max"),
    (theory.dcgd_star_step_size, (1.0, 2, 1.0, 1.0), {"delta": -0.1}, "delta"),
    (theory.gdci_eta, (1.0, 2, 2.0, 2.0, 3.0), {}, "mu"),
    (theory.gdci_step_size, (1.0, 2, 2.0, 2.0, 0.0), {}, "eta"),
    (theory.neolithic_rounds, (0.0, 10, 1.0, 1.0, 1.0, 1.0), {}, "delta"),
    (theory.neolithic_rounds, (1.5, 10, 1.0, 1.0, 1.0, 1.0), {}, "delta"),
    (theory.neolithic_rounds, (math.nan, 10, 1.0, 1.0, 1.0, 1.0), {}, "delta"),
    (theory.neolithic_rounds, (0.5, 0, 1.0, 1.0, 1.0, 1.0), {}, "T"),
    (theory.neolithic_rounds, (0.5, 10, -1.0, 1.0, 1.0, 1.0), {}, "b2"),
    (theory.neolithic_rounds, (0.5, 10, 1.0, -1.0, 1.0, 1.0), {}, "sigma2"),
    (theory.neolithic_rounds, (0.5, 10, 1.0, 1.0, 0.0, 1.0), {}, "Delta"),
    (theory.neolithic_rounds, (0.5, 10, 1.0, 1.0, 1.0, 0.0), {}, "L"),
    (theory.fcc_error_bound, (0.5, 0), {}, "R"),
    (theory.fcc_error_bound, (0.0, 3), {}, "delta"),
    (theory.transient_complexity, ("sgd", 2), {"delta": 0.5}, "method"),
    (theory.transient_complexity, ("neolithic", 0), {"delta": 0.5}, "n"),
    (theory.transient_complexity, ("neolithic", 2), {}, "delta"),
    (theory.transient_complexity, ("neolithic", 2), {"delta": 0.5, "omega": 1.0}, "delta"),
    (theory.transient_complexity, ("neolithic", 2), {"omega": -1.0}, "omega"),
    (theory.omega, (compressors.rand_k(1), (-1,)), {}, "tree_or_shape"),
    (theory.omega, (compressors.rand_k(1), {}), {}, "tree_or_shape"),
    (theory.delta, (compressors.top_k(1), (0,)), {}, "tree_or_shape"),
]


@pytest.mark.parametrize("fn,args,kwargs,name", _BAD,
                         ids=[f"{f.__name__}-{n}-{i}" for i, (f, _, _, n) in enumerate(_BAD)])
def test_bad_inputs_raise_value_error(fn, args, kwargs, name):
  with pytest.raises(ValueError, match=f"`{name}`"):
    fn(*args, **kwargs)


def test_error_message_names_value_and_range():
  with pytest.raises(ValueError, match=r"neolithic_rounds: `delta` must be in \(0, 1\]; got 1.5"):
    theory.neolithic_rounds(1.5, 10, 1.0, 1.0, 1.0, 1.0)
  with pytest.raises(ValueError, match=r"`n` must be an integer >= 1; got 0"):
    theory.dcsgd_delta_n(1.0, 0)


def test_wrong_types_raise_type_error():
  with pytest.raises(TypeError, match="`compressor`"):
    theory.omega("rand_k", (10,))
  with pytest.raises(TypeError, match="`n`"):
    theory.dcsgd_delta_n(1.0, 2.5)
  with pytest.raises(TypeError, match="`n`"):
    theory.dcsgd_delta_n(1.0, True)
  with pytest.raises(TypeError, match="`omega`"):
    theory.diana_alpha("1")


def test_public_module_exports():
  for name in theory.__all__:
    assert hasattr(theory, name)
  assert set(theory.TRANSIENT_METHODS) == {
      "lower_bound", "neolithic", "q_sgd", "mem_sgd", "double_squeeze", "cser",
      "ef21_sgd"}
