"""Methods against independent references: closed forms, paper invariants and
NumPy loops over workers (the simulated axis is jax.vmap)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import compopt
from compopt import compressors as C

AXIS = "workers"


def run_workers(opt, x0, grads_fn, steps, n):
  """Runs ``steps`` steps of ``opt`` on n simulated workers (vmap); grads_fn(t,
  x, i) gives worker i's gradient at x. Returns per-step params and states."""

  def step(x, state, g):
    u, state = opt.update(g, state, x)
    return optax.apply_updates(x, u), state

  f = jax.jit(jax.vmap(step, axis_name=AXIS))
  x = compopt.parallel.stack(x0, n)
  state = compopt.parallel.stack(opt.init(x0), n)
  xs, states = [], []
  for t in range(steps):
    g = jax.tree.map(lambda *ls: jnp.stack(ls),
                     *[grads_fn(t, compopt.parallel.worker(x, i), i) for i in range(n)])
    x, state = f(x, state, g)
    xs.append(x)
    states.append(state)
  return xs, states


def np_top_k(v, k):
  out = np.zeros_like(v)
  idx = np.argsort(-np.abs(v), kind="stable")[:k]
  out[idx] = v[idx]
  return out


def np_scaled_sign(v):
  s = np.where(v < 0, -1.0, 1.0)
  return np.abs(v).sum() / v.size * s


# --------------------------------- Horváth & Richtárik 2021, §5.5 (Top-1 example)

_A = np.array([[-3, 2, 2], [2, -3, 2], [2, 2, -3]], np.float64)  # a, b, c
# f = (1/3) Σ_i f_i, ∇²f_i = 2 a_i a_iᵀ + ½ I: L = λ_max((2/3) Σ a_i a_iᵀ + ½ I).
_L = float(np.linalg.eigvalsh((2 / 3) * _A.T @ _A + 0.5 * np.eye(3)).max())


def _grad_i(x, a):
  # ∇f_i(x) = 2⟨a_i, x⟩ a_i + ½ x
  return 2 * jnp.dot(a, x) * a + 0.5 * x


def _distances(make_opt, steps, seeds=(0,)):
  """‖x_k‖/‖x_0‖ for k = 1..steps on the 3-worker example (x* = 0), one row
  per seed; ``make_opt(key)`` builds the method with that key."""
  a = jnp.asarray(_A, jnp.float32)

  def trajectory(key):
    opt = make_opt(key)

    def step(carry, _):
      x, s = carry
      u, s = opt.update(_grad_i(x, a[jax.lax.axis_index(AXIS)]), s, x)
      x = x + u
      return (x, s), jnp.linalg.norm(x)

    def one_worker(_):
      x0 = jnp.ones(3)
      return jax.lax.scan(step, (x0, opt.init(x0)), None, length=steps)[1]

    return jax.vmap(one_worker, axis_name=AXIS)(jnp.arange(3))[0] / np.sqrt(3)

  keys = jnp.stack([jax.random.PRNGKey(s) for s in seeds])
  return np.asarray(jax.jit(jax.vmap(trajectory))(keys))


def test_top1_dcsgd_grows_by_closed_form():
  gamma = 1 / _L
  d = _distances(lambda k: compopt.dcsgd(gamma, compressor=C.top_k(1), axis_name=AXIS), 8)[0]
  # Horváth & Richtárik 2021, §5.5: x^k = (1 + 11γ/6)^k x^0
  expected = (1 + 11 * gamma / 6) ** np.arange(1, 9)
  np.testing.assert_allclose(d, expected, rtol=1e-5)


def test_top1_ef_converges_and_nu_rand_1_is_faster():
  gamma = 1 / _L
  steps = 400
  ef = _distances(lambda k: compopt.ef_sgd(gamma, compressor=C.top_k(1), axis_name=AXIS),
                  steps)[0]
  assert ef[-1] < 1e-10  # Top-1 + EF converges
  ef_hit = int(np.argmax(ef < 1e-6))
  assert ef[ef_hit] < 1e-6
  # NU Rand-1 (DCSGD, no EF) is random: the typical run (median hitting time
  # over 64 keys) gets to 1e-6 first. Its mean-square distance does not: the
  # slowest runs dominate it (see the report).
  nu = _distances(lambda k: compopt.dcsgd(gamma, compressor=C.nu_rand_1(), axis_name=AXIS,
                                          key=k), steps, seeds=range(64))
  assert (nu < 1e-6).any(axis=1).all()
  hits = np.argmax(nu < 1e-6, axis=1)
  assert np.median(hits) < ef_hit, (np.median(hits), ef_hit)


# ------------------------------- Karimireddy et al. 2019, Thm IV (EF invariant)


@pytest.mark.parametrize("compressor", [
    C.top_k(2), C.scaled_sign(), C.rand_k(3), C.natural(), C.rand_k(2, shared=True)],
    ids=lambda c: c.name)
def test_ef_invariant_with_schedule(compressor):
  n, steps = 4, 6
  sched = optax.exponential_decay(0.3, transition_steps=1, decay_rate=0.7)
  opt = compopt.ef_sgd(sched, compressor=compressor, axis_name=AXIS, key=3)
  x0 = {"w": jnp.arange(12.0).reshape(4, 3) / 10, "b": jnp.ones(5)}
  rng = np.random.default_rng(0)
  gs = [[jax.tree.map(lambda l: jnp.asarray(rng.normal(size=l.shape), jnp.float32), x0)
         for _ in range(n)] for _ in range(steps)]
  xs, states = run_workers(opt, x0, lambda t, x, i: gs[t][i], steps, n)
  for t in range(steps):
    error = states[t][1].error
    # x_t − mean_i e_{t,i} = x_0 − Σ_s γ_s mean_i g_{s,i}
    for name in x0:
      lhs = np.asarray(xs[t][name][0]) - np.asarray(error[name]).mean(0)
      rhs = np.asarray(x0[name], np.float64) - sum(
          float(sched(s)) * np.mean([np.asarray(gs[s][i][name]) for i in range(n)], 0)
          for s in range(t + 1))
      np.testing.assert_allclose(lhs, rhs, rtol=1e-5, atol=1e-5)
    # all workers hold the same params
    np.testing.assert_array_equal(np.asarray(xs[t]["w"]), np.asarray(xs[t]["w"][:1]).repeat(n, 0))


# ------------------------------------------------------------ NumPy references


def _random_grads(n, steps, d, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(steps, n, d)).astype(np.float32)


def _run_flat(opt, n, g, x0):
  xs, states = run_workers(opt, jnp.asarray(x0), lambda t, x, i: jnp.asarray(g[t, i]),
                           g.shape[0], n)
  return np.stack([np.asarray(x[0]) for x in xs]), states


def test_psgd_with_momentum_matches_numpy():
  n, steps, d = 4, 5, 7
  g = _random_grads(n, steps, d)
  x0 = np.linspace(-1, 1, d).astype(np.float32)
  got, _ = _run_flat(compopt.psgd(0.1, axis_name=AXIS, momentum=0.9), n, g, x0)
  x, m = x0.astype(np.float64), np.zeros(d)
  for t in range(steps):
    m = 0.9 * m + g[t].mean(0)
    x = x - 0.1 * m
    np.testing.assert_allclose(got[t], x, rtol=1e-5, atol=1e-6)


def test_dcsgd_identity_equals_psgd():
  n, steps, d = 4, 4, 6
  g = _random_grads(n, steps, d, seed=1)
  x0 = np.ones(d, np.float32)
  a, _ = _run_flat(compopt.dcsgd(0.05, compressor=C.identity(), axis_name=AXIS), n, g, x0)
  b, _ = _run_flat(compopt.psgd(0.05, axis_name=AXIS), n, g, x0)
  np.testing.assert_array_equal(a, b)


def test_dcsgd_top_k_with_momentum_matches_numpy():
  n, steps, d = 3, 5, 8
  g = _random_grads(n, steps, d, seed=2)
  x0 = np.zeros(d, np.float32)
  got, _ = _run_flat(compopt.dcsgd(0.1, compressor=C.top_k(2), axis_name=AXIS, momentum=0.9),
                     n, g, x0)
  x, m = np.zeros(d), np.zeros(d)
  for t in range(steps):
    delta = np.mean([np_top_k(g[t, i], 2) for i in range(n)], 0)  # Δ = mean_i C(g_i)
    m = 0.9 * m + delta
    x = x - 0.1 * m
    np.testing.assert_allclose(got[t], x, rtol=1e-5, atol=1e-6)


def test_ef_signsgd_matches_numpy_alg1():
  n, steps, d = 3, 5, 9
  g = _random_grads(n, steps, d, seed=3)
  x0 = np.zeros(d, np.float32)
  got, _ = _run_flat(compopt.ef_signsgd(0.2, axis_name=AXIS), n, g, x0)
  x, e = np.zeros(d), np.zeros((n, d))
  for t in range(steps):
    p = 0.2 * g[t] + e  # p = γg + e
    delta = np.stack([np_scaled_sign(p[i]) for i in range(n)])  # (‖p‖₁/d) sign(p)
    e = p - delta
    x = x - delta.mean(0)
    np.testing.assert_allclose(got[t], x, rtol=1e-5, atol=1e-6)


def test_signsgd_and_signum_majority_vote_match_numpy():
  n, steps, d = 5, 4, 6
  g = _random_grads(n, steps, d, seed=4)
  x0 = np.zeros(d, np.float32)
  got, _ = _run_flat(compopt.signsgd(0.1, axis_name=AXIS), n, g, x0)
  x = np.zeros(d)
  for t in range(steps):
    x = x - 0.1 * np.sign(np.sign(g[t]).sum(0))
    np.testing.assert_allclose(got[t], x, rtol=1e-6)
  got, _ = _run_flat(compopt.signum(0.1, momentum=0.8, axis_name=AXIS), n, g, x0)
  x, m = np.zeros(d), np.zeros((n, d))
  for t in range(steps):
    m = 0.8 * m + 0.2 * g[t]
    x = x - 0.1 * np.sign(np.sign(m).sum(0))
    np.testing.assert_allclose(got[t], x, rtol=1e-6)


def test_ef21_matches_numpy():
  n, steps, d = 3, 5, 8
  g = _random_grads(n, steps, d, seed=5)
  x0 = np.zeros(d, np.float32)
  got, states = _run_flat(compopt.ef21(0.1, compressor=C.top_k(3), axis_name=AXIS), n, g, x0)
  x, gi, gs = np.zeros(d), np.zeros((n, d)), np.zeros(d)
  for t in range(steps):
    c = np.stack([np_top_k(g[t, i] - gi[i], 3) for i in range(n)])  # c_i = C(∇f_i − g_i)
    gi = gi + c
    gs = gs + c.mean(0)
    x = x - 0.1 * gs
    np.testing.assert_allclose(got[t], x, rtol=1e-5, atol=1e-6)
    est = states[t][0]
    np.testing.assert_allclose(np.asarray(est.shared[0]), np.asarray(est.local).mean(0),
                               rtol=1e-5, atol=1e-6)  # g = mean_i g_i


def test_double_squeeze_matches_numpy():
  n, steps, d = 3, 5, 8
  g = _random_grads(n, steps, d, seed=6)
  x0 = np.zeros(d, np.float32)
  got, _ = _run_flat(compopt.double_squeeze(0.1, compressor=C.top_k(2),
                                            server_compressor=C.top_k(3), axis_name=AXIS),
                     n, g, x0)
  x, ew, es = np.zeros(d), np.zeros((n, d)), np.zeros(d)
  for t in range(steps):
    p = g[t] + ew
    v_i = np.stack([np_top_k(p[i], 2) for i in range(n)])
    ew = p - v_i
    v = v_i.mean(0) + es
    out = np_top_k(v, 3)
    es = v - out
    x = x - 0.1 * out
    np.testing.assert_allclose(got[t], x, rtol=1e-5, atol=1e-6)


def test_ef_bf16_keeps_error_in_float32():
  opt = compopt.ef_sgd(0.1, compressor=C.top_k(1))
  params = jnp.ones(4, jnp.bfloat16)
  state = opt.init(params)
  assert state[1].error.dtype == jnp.float32
  u, state = opt.update(jnp.array([1.0, 2.0, 3.0, 4.0], jnp.bfloat16), state)
  assert u.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(state[1].error), [0.1, 0.2, 0.3, 0.0], rtol=1e-2)


# ----------------------------------------------- partial participation (§4.2)


@pytest.mark.parametrize("sampling", [
    compopt.sampling.independent([0.3, 0.5, 0.9, 1.0]), compopt.sampling.nice(2)],
    ids=["independent", "nice"])
def test_partial_participation_is_unbiased(sampling):
  n, d, keys = 4, 3, 4000
  g = jnp.asarray(np.random.default_rng(7).normal(size=(n, d)), jnp.float32)
  opt = compopt.dcsgd(1.0, compressor=C.identity(), axis_name=AXIS, sampling=sampling)

  def one(key):
    state = compopt.parallel.stack(opt.init(jnp.zeros(d)), n)
    state = (state[0]._replace(key=jnp.broadcast_to(key, (n, 2))),) + state[1:]
    u, _ = jax.vmap(lambda gi, s: opt.update(gi, s), axis_name=AXIS)(g, state)
    return u

  us = jax.jit(jax.vmap(one))(jax.random.split(jax.random.PRNGKey(0), keys))
  us = np.asarray(us)
  # every worker gets the same aggregate
  np.testing.assert_array_equal(us, us[:, :1].repeat(n, 1))
  mean = -us[:, 0].mean(0)
  stderr = us[:, 0].std(0) / np.sqrt(keys)
  target = np.asarray(g).mean(0)  # E Σ_{i∈S} g_i/(n p_i) = mean_i g_i
  assert np.all(np.abs(mean - target) < 4 * stderr + 1e-6), (mean, target, stderr)
