"""Float64 end to end: with ``jax_enable_x64`` a float64 update is reduced in
float64 (never rounded through float32) and its values cross the wire as 64
bits. Each run is checked against a float64 NumPy loop of the method to 1e-12.

x64 is enabled only inside these tests (``jax.enable_x64``); the rest of the
suite runs without it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compopt
from compopt import compressors as C

from _problems import AXIS, run_workers
from _reference import top_k

N, D, STEPS, GAMMA = 4, 12, 5, 0.1
RTOL = 1e-12


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def _grads(seed=0):
  return np.random.default_rng(seed).normal(size=(STEPS, N, D))


def _x0():
  return np.linspace(-1.0, 1.0, D)


def _close(got, want):
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * np.abs(want).max())


def _bits_per_step(state, steps=STEPS):
  bits = compopt.comm_bits(state)
  return [[b // steps for b in field] for field in bits]


def test_x64_is_on_here_only():
  assert jnp.zeros(1, jnp.float64).dtype == np.float64


def test_psgd_is_the_float64_mean():
  g = _grads(1)
  xs, states = run_workers(compopt.psgd(GAMMA, axis_name=AXIS), _x0(), g)
  assert xs.dtype == np.float64
  x = _x0()
  for t in range(STEPS):
    x = x - GAMMA * g[t].mean(0)
    _close(xs[t], x)
  # the summed payload is the dense float64 vector: 64 bits a value
  up, down, payload = _bits_per_step(states[-1])
  assert payload == [64 * D] * N
  assert up == down == [2 * (N - 1) * 64 * D // N] * N


@pytest.mark.parametrize("scheme", ["allgather",
                                    pytest.param("allreduce", marks=pytest.mark.slow)])
def test_dcsgd_top_k_is_the_float64_mean_of_the_top_k(scheme):
  g, k = _grads(2), 3
  xs, states = run_workers(compopt.dcsgd(GAMMA, compressor=C.top_k(k), axis_name=AXIS,
                                         scheme=scheme), _x0(), g)
  x = _x0()
  for t in range(STEPS):
    x = x - GAMMA * np.mean([top_k(g[t, i], k) for i in range(N)], 0)
    _close(xs[t], x)
  up, down, payload = _bits_per_step(states[-1])
  wire = k * (64 + 8)  # float64 values, uint8 positions
  assert C.tree_wire_bits(C.top_k(k), jnp.zeros(D, jnp.float64)) == wire
  assert payload == [wire] * N
  if scheme == "allgather":  # the ring all-gather forwards n − 1 payloads
    assert up == down == [(N - 1) * wire] * N
  else:  # the decoded vectors, all-reduced in float64
    assert up == down == [2 * (N - 1) * 64 * D // N] * N


def test_dcsgd_rand_k_scales_each_kept_value_in_float64():
  # Worker i's gradient lives on its own block of coordinates, so every
  # coordinate of the aggregate is 0 or (d/k)·g_ij/n of one worker j.
  k = 4
  g = np.zeros((STEPS, N, D))
  rng = np.random.default_rng(3)
  block = D // N
  for i in range(N):
    g[:, i, i * block:(i + 1) * block] = rng.normal(size=(STEPS, block))
  xs, states = run_workers(compopt.dcsgd(1.0, compressor=C.rand_k(k), axis_name=AXIS, key=2),
                           np.zeros(D), g)
  prev, kept = np.zeros(D), 0
  for t in range(STEPS):
    delta = prev - xs[t]
    full = D / k * g[t].sum(0) / N  # every coordinate as if kept
    nz = delta != 0
    _close(delta[nz], full[nz])
    kept += nz.sum()
    prev = xs[t]
  assert 0 < kept <= STEPS * N * k
  _, _, payload = _bits_per_step(states[-1])
  assert payload == [k * (64 + 8)] * N


@pytest.mark.slow
def test_dcsgd_shared_rand_k_sums_float64_payloads():
  k = 5
  g = _grads(4)
  xs, states = run_workers(compopt.dcsgd(1.0, compressor=C.rand_k(k, shared=True),
                                         axis_name=AXIS, key=3), np.zeros(D), g)
  prev = np.zeros(D)
  for t in range(STEPS):
    delta = prev - xs[t]
    support = np.flatnonzero(delta)
    assert len(support) == k
    _close(delta[support], D / k * g[t].mean(0)[support])
    prev = xs[t]
  up, _, payload = _bits_per_step(states[-1])
  assert payload == [64 * k] * N  # the values, summed as float64
  assert up == [2 * (N - 1) * 64 * k // N] * N


def test_ef_sgd_top_k_matches_numpy():
  # Stich & Karimireddy / Karimireddy et al.: p_i = γ g_i + e_i, Δ_i = top_k(p_i),
  # e_i ← p_i − Δ_i, x ← x − mean_i Δ_i.
  g, k = _grads(5), 2
  xs, _ = run_workers(compopt.ef_sgd(GAMMA, compressor=C.top_k(k), axis_name=AXIS,
                                     error_dtype=jnp.float64), _x0(), g)
  x, e = _x0(), np.zeros((N, D))
  for t in range(STEPS):
    p = GAMMA * g[t] + e
    delta = np.stack([top_k(p[i], k) for i in range(N)])
    e = p - delta
    x = x - delta.mean(0)
    _close(xs[t], x)


@pytest.mark.slow
def test_diana_top_k_shift_identity_q_matches_numpy_eq10():
  # eq. 10 with C_i = top_k(2) and Q = identity: c_i + m_i = g_i − h_i.
  g, alpha = _grads(6), 0.3
  xs, states = run_workers(compopt.diana(GAMMA, compressor=C.identity(),
                                         shift_compressor=C.top_k(2), alpha=alpha,
                                         axis_name=AXIS), _x0(), g)
  x, h_i, h = _x0(), np.zeros((N, D)), np.zeros(D)
  for t in range(STEPS):
    c = np.stack([top_k(g[t, i] - h_i[i], 2) for i in range(N)])
    m = g[t] - h_i - c
    est = h + (c + m).mean(0)
    h_i = h_i + alpha * (c + m)
    h = h + alpha * (c + m).mean(0)
    x = x - GAMMA * est
    _close(xs[t], x)
    st = states[t][0]
    assert st.shift.dtype == np.float64
    _close(np.asarray(st.shift), h_i)
    _close(np.asarray(st.mean_shift)[0], h)


def test_diana_rand_k_matches_numpy_eq11():
  # eq. 11 with Q_i = rand_k: m_i = (d/k)(g_i − h_i) on k coordinates S_i. The
  # S_i are read off the shifts (h_i⁺ − h_i = α m_i); the values are NumPy's.
  g, alpha, k = _grads(7), 0.2, 3
  xs, states = run_workers(compopt.diana(GAMMA, compressor=C.rand_k(k), alpha=alpha,
                                         axis_name=AXIS, key=8), _x0(), g)
  x, h_i, h = _x0(), np.zeros((N, D)), np.zeros(D)
  old_h_i = np.zeros((N, D))
  for t in range(STEPS):
    new_h_i = np.asarray(states[t][0].shift)
    m = np.zeros((N, D))
    for i in range(N):
      support = np.flatnonzero(new_h_i[i] != old_h_i[i])
      assert len(support) <= k
      m[i, support] = D / k * (g[t, i, support] - h_i[i, support])
    est = h + m.mean(0)
    h_i = h_i + alpha * m
    h = h + alpha * m.mean(0)
    x = x - GAMMA * est
    _close(xs[t], x)
    _close(new_h_i, h_i)
    old_h_i = new_h_i
  up, _, payload = _bits_per_step(states[-1])
  assert payload == [k * (64 + 8)] * N
  assert up == [(N - 1) * k * (64 + 8)] * N


@pytest.mark.parametrize("comp", [pytest.param(C.identity(), marks=pytest.mark.slow),
                                  C.top_k(3)], ids=["identity", "top_k"])
def test_partial_participation_weights_are_float64(comp):
  # §4.2: Δ = Σ_{i∈S} C(g_i)/(n p_i), with 1/(n p_i) in float64 (p_i = 0.3 is
  # not a float32 number). S is read off the per-step payload counters.
  probs = (0.3, 0.55, 0.7, 0.9)
  g = _grads(8)
  xs, states = run_workers(compopt.dcsgd(1.0, compressor=comp, axis_name=AXIS,
                                         sampling=probs, key=5), np.zeros(D), g)
  x, before = np.zeros(D), np.zeros(N)
  members = 0
  for t in range(STEPS):
    payload = np.asarray(compopt.comm_bits(states[t]).payload)
    sent = payload > before
    before = payload
    members += sent.sum()
    c = [g[t, i] if comp.name == "identity" else top_k(g[t, i], 3) for i in range(N)]
    x = x - sum(c[i] / (N * probs[i]) for i in range(N) if sent[i])
    _close(xs[t], x)
  assert 0 < members < STEPS * N
