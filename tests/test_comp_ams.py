"""COMP-AMS (Li & Li 2022, Alg. 2) against a NumPy transcription, optax.amsgrad
and the error-feedback telescoping identity."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import compopt
from compopt import compressors as C

from _problems import AXIS, run_workers


def np_top_k(v, k):
  out = np.zeros_like(v)
  idx = np.argsort(-np.abs(v), kind="stable")[:k]
  out[idx] = v[idx]
  return out


def np_comp_ams(g, x0, lr, b1, b2, eps, compress=lambda v: v):
  """Alg. 2 in float64. g: (steps, n, d). Returns iterates and final errors."""
  steps, n, d = g.shape
  x = x0.astype(np.float64)
  e = np.zeros((n, d))
  m, v, v_hat = np.zeros(d), np.zeros(d), np.zeros(d)
  xs = []
  for t in range(steps):
    sent = np.stack([compress(g[t, i] + e[i]) for i in range(n)])  # line 7
    e = e + g[t] - sent  # line 8
    g_bar = sent.mean(0)  # line 12
    m = b1 * m + (1 - b1) * g_bar  # line 13
    v = b2 * v + (1 - b2) * g_bar ** 2  # line 14
    v_hat = np.maximum(v_hat, v)  # line 15
    x = x - lr * m / np.sqrt(v_hat + eps)  # line 16: no bias correction, ε inside
    xs.append(x)
  return np.stack(xs), e


def _grads(steps, n, d, seed):
  rng = np.random.default_rng(seed)
  # scales that differ by coordinate, so that v̂'s max matters
  return (rng.standard_normal((steps, n, d)) * np.linspace(0.1, 3, d)
          + 0.5 * np.sin(np.arange(steps))[:, None, None]).astype(np.float32)


@pytest.mark.parametrize("eps", [1e-8, 1e-2])
def test_identity_single_worker_matches_alg2(eps):
  steps, d, lr, b1, b2 = 8, 6, 0.05, 0.9, 0.99
  g = _grads(steps, 1, d, seed=0)
  x0 = np.linspace(-1, 1, d).astype(np.float32)
  opt = compopt.comp_ams(lr, compressor=C.identity(), b1=b1, b2=b2, eps=eps)
  x, state = jnp.asarray(x0), opt.init(jnp.asarray(x0))
  want, _ = np_comp_ams(g, x0, lr, b1, b2, eps)
  for t in range(steps):
    u, state = opt.update(jnp.asarray(g[t, 0]), state, x)
    x = optax.apply_updates(x, u)
    np.testing.assert_allclose(np.asarray(x), want[t], rtol=1e-5, atol=1e-6)


def test_first_step_is_the_documented_fraction_of_sign():
  # paper form: (1 − β1)g/√((1 − β2)g²) = (1 − β1)/√(1 − β2)·sign(g) for ε → 0;
  # optax (bias-corrected): g/|g| = sign(g).
  g = jnp.array([2.0, -0.5, 4.0])
  paper = compopt.comp_ams(1.0, compressor=C.identity(), eps=1e-12)
  ours, _ = paper.update(g, paper.init(jnp.zeros(3)))
  np.testing.assert_allclose(np.asarray(ours), -0.1 / np.sqrt(0.001) * np.sign(g), rtol=1e-4)


@pytest.mark.parametrize("eps", [1e-8, 1e-2])
def test_optax_amsgrad_option_equals_optax(eps):
  steps, d, lr, b1, b2 = 8, 5, 0.03, 0.8, 0.95
  g = _grads(steps, 1, d, seed=1)
  x0 = np.ones(d, np.float32)
  ours = compopt.comp_ams(lr, compressor=C.identity(), b1=b1, b2=b2, eps=eps,
                          optax_amsgrad=True)
  ref = optax.amsgrad(lr, b1=b1, b2=b2, eps=eps)
  xa = xb = jnp.asarray(x0)
  sa, sb = ours.init(xa), ref.init(xb)
  for t in range(steps):
    ua, sa = ours.update(jnp.asarray(g[t, 0]), sa, xa)
    ub, sb = ref.update(jnp.asarray(g[t, 0]), sb, xb)
    xa, xb = optax.apply_updates(xa, ua), optax.apply_updates(xb, ub)
    np.testing.assert_allclose(np.asarray(xa), np.asarray(xb), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("eps", [1e-8, 1e-2])
def test_server_step_is_optax_amsgrad_without_bias_correction(eps):
  """The paper's server step m/√(v̂ + ε) is optax.scale_by_amsgrad with bias
  correction off, ε = 0 and ε_root = ε (optax >= 0.2.7), in float32."""
  if "bias_correction_mu" not in inspect.signature(optax.scale_by_amsgrad).parameters:
    pytest.skip("optax < 0.2.7 has no bias_correction_mu")
  b1, b2 = 0.8, 0.95
  g = _grads(10, 1, 6, seed=2)
  ours = compopt.scale_by_comp_ams(b1=b1, b2=b2, eps=eps)
  ref = optax.scale_by_amsgrad(b1=b1, b2=b2, eps=0.0, eps_root=eps,
                               bias_correction_mu=False, bias_correction_nu=False)
  sa, sb = ours.init(jnp.zeros(6)), ref.init(jnp.zeros(6))
  for t in range(10):
    ua, sa = ours.update(jnp.asarray(g[t, 0]), sa)
    ub, sb = ref.update(jnp.asarray(g[t, 0]), sb)
    np.testing.assert_allclose(np.asarray(ua), np.asarray(ub), rtol=2e-6, atol=1e-7)
  np.testing.assert_allclose(sa.nu_max, sb.nu_max, rtol=2e-6)


def _error_and_server(state):
  errors = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(
      x, compopt.ErrorFeedbackState)) if isinstance(s, compopt.ErrorFeedbackState)]
  servers = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(
      x, compopt.ScaleByCompAmsState)) if isinstance(s, compopt.ScaleByCompAmsState)]
  assert len(errors) == 1 and len(servers) == 1
  return np.asarray(errors[0].error, np.float64), servers[0]


def test_top_k_with_error_feedback_matches_numpy_and_telescopes():
  n, steps, d, k, lr, b1, b2, eps = 4, 7, 9, 2, 0.02, 0.9, 0.999, 1e-8
  g = _grads(steps, n, d, seed=2)
  x0 = np.zeros(d, np.float32)
  opt = compopt.comp_ams(lr, compressor=C.top_k(k), b1=b1, b2=b2, eps=eps, axis_name=AXIS)
  xs, states = run_workers(opt, x0, g)
  want, _ = np_comp_ams(g, x0, lr, b1, b2, eps, compress=lambda v: np_top_k(v, k))
  np.testing.assert_allclose(xs, want, rtol=1e-4, atol=1e-5)
  # Alg. 2 line 8 telescopes: Σ_t g̃_{t,i} + e_{T+1,i} = Σ_t g_{t,i}. The
  # averaged g̃ are read back from the server's m_t = β1 m_{t−1} + (1 − β1)ḡ_t.
  m_prev = np.zeros(d)
  sent = np.zeros(d)
  for t in range(steps):
    error, server = _error_and_server(states[t])
    m = np.asarray(server.mu, np.float64)[0]
    sent += (m - b1 * m_prev) / (1 - b1)  # ḡ_t
    m_prev = m
    np.testing.assert_allclose(sent + error.mean(0), g[:t + 1].astype(np.float64).sum((0, 1)) / n,
                               rtol=1e-4, atol=1e-4)
  # per worker: e_{T+1,i} = Σ_t (g_{t,i} − top_k(g_{t,i} + e_{t,i}))
  e = np.zeros((n, d))
  for t in range(steps):
    e = e + g[t] - np.stack([np_top_k(g[t, i] + e[i], k) for i in range(n)])
  np.testing.assert_allclose(_error_and_server(states[-1])[0], e, rtol=1e-5, atol=1e-5)


def test_without_error_feedback_sends_compressed_gradients():
  n, steps, d, k, lr = 3, 5, 8, 2, 0.05
  g = _grads(steps, n, d, seed=3)
  x0 = np.zeros(d, np.float32)
  opt = compopt.comp_ams(lr, compressor=C.top_k(k), error_feedback=False, axis_name=AXIS)
  xs, states = run_workers(opt, x0, g)
  x, m, v, vh = np.zeros(d), np.zeros(d), np.zeros(d), np.zeros(d)
  for t in range(steps):
    gb = np.mean([np_top_k(g[t, i], k) for i in range(n)], 0)
    m, v = 0.9 * m + 0.1 * gb, 0.999 * v + 0.001 * gb ** 2
    vh = np.maximum(vh, v)
    x = x - lr * m / np.sqrt(vh + 1e-8)
    np.testing.assert_allclose(xs[t], x, rtol=1e-4, atol=1e-5)
  assert compopt.comm_bits(states[-1]).payload == [
      steps * C.top_k(k).wire_bits((d,), jnp.float32)] * n


@pytest.mark.parametrize("b1", [1.0, 1.5, -0.1])
def test_bad_b1(b1):
  with pytest.raises(ValueError, match="`b1` must be in \\[0, 1\\)"):
    compopt.comp_ams(0.1, compressor=C.top_k(1), b1=b1)


def test_bad_b2_and_eps():
  with pytest.raises(ValueError, match="`b2` must be in \\[0, 1\\)"):
    compopt.comp_ams(0.1, compressor=C.top_k(1), b2=1.0)
  with pytest.raises(ValueError, match="`eps` must be > 0"):
    compopt.comp_ams(0.1, compressor=C.top_k(1), eps=0.0)


def test_bad_b1_with_optax_amsgrad():
  with pytest.raises(ValueError, match="`b1` must be in \\[0, 1\\)"):
    compopt.comp_ams(0.1, compressor=C.top_k(1), b1=1.0, optax_amsgrad=True)
