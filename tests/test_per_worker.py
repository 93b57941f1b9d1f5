"""Per-worker compressors Q_i, C_i and refresh probabilities p_i, and the
initial shifts h_i^0, of DCGD-SHIFT (Shulgin & Richtárik 2022, Alg. 1,
Thms 3-4), against NumPy loops of Alg. 1 written from the paper; the bits
counted against what the compiled collectives move."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import compopt
from compopt import compressors as C
from benchmarks.perf import hlo

AXIS = "w"
N, D = 4, 12
TOL = dict(rtol=1e-5, atol=1e-6)
# worker i's Q_i: identity (ω = 0) on two workers, rand_k with ω = d/k − 1 on two
KS = (None, 2, None, 5)
QS = [C.identity() if k is None else C.rand_k(k) for k in KS]
OMEGAS = [0.0 if k is None else D / k - 1 for k in KS]
# the bits of each worker's message: d float32 values, or k values and k uint8 positions
MESSAGE_BITS = [32 * D if k is None else k * (32 + 8) for k in KS]


def _grads(steps, seed=0):
  return np.random.default_rng(seed).normal(size=(steps, N, D)).astype(np.float32)


def _run(tx, g, *, mode="vmap", extra=None):
  """One step per row of g (steps, n, d); returns the estimates (steps, n, d)
  and the stacked states after each step."""
  extra = {} if extra is None else extra

  def step(s, gt, ex):
    return tx.update(gt, s, None, **ex)

  if mode == "vmap":
    f = jax.jit(jax.vmap(step, axis_name=AXIS))
  else:
    f = compopt.parallel.shard_map(step, jax.make_mesh((N,), (AXIS,)), AXIS)
  s = compopt.parallel.stack(tx.init(jnp.zeros(D)), N)
  outs, states = [], []
  for t in range(g.shape[0]):
    u, s = f(s, jnp.asarray(g[t]), extra)
    outs.append(np.asarray(u))
    states.append(s)
  return np.stack(outs), states


def _step_bits(states):
  """Per step and worker: (uplink, downlink, payload) bits."""
  totals = [np.array(compopt.comm_bits(s), dtype=np.int64) for s in states]
  return np.diff(np.stack([np.zeros_like(totals[0])] + totals), axis=0)


# ---------------------------------------------------------------- DIANA, Alg. 1


def test_diana_with_a_compressor_per_worker_matches_numpy_eq11():
  # eq. 11 with Q_i per worker: m_i = Q_i(g_i − h_i), g = h + mean_i m_i,
  # h_i ← h_i + α m_i, h ← h + α mean_i m_i. rand_k's positions S_i are read
  # off the shifts (h_i⁺ − h_i = α m_i); every value is NumPy's. α defaults to
  # min_i 1/(1 + ω_i) (Thm 3 for every worker).
  steps = 4
  g = _grads(steps, 1)
  est, states = _run(compopt.shifted_compression(QS, axis_name=AXIS, key=3), g)
  alpha = min(1 / (1 + w) for w in OMEGAS)
  assert alpha == pytest.approx(1 / 6)
  h_i, h = np.zeros((N, D)), np.zeros(D)
  before = np.zeros((N, D), np.float32)
  for t in range(steps):
    after = np.asarray(states[t].shift)
    m = np.zeros((N, D))
    for i, k in enumerate(KS):
      if k is None:
        m[i] = g[t, i] - h_i[i]
      else:
        support = np.flatnonzero(after[i] != before[i])
        assert len(support) == k, (t, i)
        m[i, support] = D / k * (g[t, i, support] - h_i[i, support])
    np.testing.assert_allclose(est[t], np.broadcast_to(h + m.mean(0), (N, D)), **TOL)
    h_i = h_i + alpha * m
    h = h + alpha * m.mean(0)
    np.testing.assert_allclose(after, h_i, **TOL)
    np.testing.assert_allclose(np.asarray(states[t].mean_shift), np.broadcast_to(h, (N, D)),
                               **TOL)
    before = after
  # allgather: each worker's bytes padded to the largest payload, B = 32·d
  bits = _step_bits(states)
  assert (bits[:, 2] == MESSAGE_BITS).all()  # payload: the unpadded B_i
  assert (bits[:, 0] == (N - 1) * max(MESSAGE_BITS)).all()
  assert (bits[:, 1] == bits[:, 0]).all()


def test_rand_k_positions_are_uniform_per_worker():
  # Statistics of the random Q_i: over many steps each coordinate is in S_i
  # with probability k_i/d, and E m_i = g_i − h_i (unbiased).
  steps, alpha = 300, 0.5
  g = np.broadcast_to(np.linspace(1, 2, D, dtype=np.float32), (N, D))
  tx = compopt.shifted_compression(QS, alpha=alpha, axis_name=AXIS, key=11)

  def worker(gi):
    def body(s, _):
      _, s1 = tx.update(gi, s)
      m = (s1.shift - s.shift) / alpha  # α m_i
      return s1._replace(shift=s.shift, mean_shift=s.mean_shift), m  # h fixed at 0
    return jax.lax.scan(body, tx.init(jnp.zeros(D)), None, length=steps)[1]

  m = np.asarray(jax.jit(jax.vmap(worker, axis_name=AXIS))(jnp.asarray(g)))
  for i, k in enumerate(KS):
    if k is None:
      np.testing.assert_allclose(m[i], np.broadcast_to(g[i], (steps, D)), rtol=1e-6)
      continue
    kept = (m[i] != 0).mean(0)
    q = k / D
    assert np.all(np.abs(kept - q) < 4 * np.sqrt(q * (1 - q) / steps)), (i, kept)
    assert np.all((m[i] != 0).sum(1) == k)
    # E m_ij = g_ij: Var = g_ij²(d/k − 1)
    se = np.abs(g[i]) * np.sqrt((D / k - 1) / steps)
    assert np.all(np.abs(m[i].mean(0) - g[i]) < 4 * se), i


@pytest.mark.slow
def test_a_list_of_one_compressor_is_that_compressor():
  g = _grads(2, 2)
  q = C.rand_k(3)
  a, sa = _run(compopt.shifted_compression([q] * N, axis_name=AXIS, key=5), g)
  b, sb = _run(compopt.shifted_compression(q, axis_name=AXIS, key=5), g)
  np.testing.assert_array_equal(a, b)
  assert compopt.comm_bits(sa[-1]) == compopt.comm_bits(sb[-1])


@pytest.mark.parametrize("scheme", [
    "allgather", pytest.param("allreduce", marks=pytest.mark.slow),
    pytest.param("two_phase", marks=pytest.mark.slow)])
def test_vmap_and_shard_map_agree(scheme):
  # two_phase compresses chunks of ⌈d/n⌉ = 3: rand_k(2) and rand_k(3)
  qs = [C.identity(), C.rand_k(2), C.natural(), C.rand_k(3)]
  tx = compopt.shifted_compression(qs, axis_name=AXIS, key=6, scheme=scheme,
                                   initial_shift="first_gradient")
  g = _grads(3, 3)
  a, sa = _run(tx, g)
  b, sb = _run(tx, g, mode="shard_map")
  np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(sa[-1].shift), np.asarray(sb[-1].shift), rtol=1e-6,
                             atol=1e-7)
  assert compopt.comm_bits(sa[-1]) == compopt.comm_bits(sb[-1])


def _hlo_bytes(tx, n=N):
  mesh = jax.make_mesh((n,), (AXIS,))
  sharding = NamedSharding(mesh, P(AXIS))

  def stacked(x):
    return jax.ShapeDtypeStruct((n,) + x.shape, x.dtype, sharding=sharding)

  tree = jax.ShapeDtypeStruct((D,), jnp.float32)
  state = jax.tree.map(stacked, jax.eval_shape(tx.init, tree))
  step = jax.jit(jax.shard_map(compopt.parallel.per_worker(lambda g, s: tx.update(g, s)),
                               mesh=mesh, in_specs=P(AXIS), out_specs=P(AXIS)))
  return hlo.collective_bytes(step.lower(stacked(tree), state).compile().as_text())


@pytest.mark.parametrize("scheme", ["allgather",
                                    pytest.param("allreduce", marks=pytest.mark.slow)])
def test_counted_bits_are_what_the_collectives_move(scheme):
  tx = compopt.shifted_compression(QS, axis_name=AXIS, key=1, scheme=scheme)
  per_kind = _hlo_bytes(tx)
  _, states = _run(tx, _grads(1, 4))
  up, down, payload = _step_bits(states)[0]
  if scheme == "allgather":  # one all-gather of the padded buffers
    assert per_kind == {"all-gather": max(MESSAGE_BITS) // 8}
    assert (up == 8 * (N - 1) * per_kind["all-gather"]).all()
  else:  # one all-reduce of the decoded float32 vectors
    assert per_kind == {"all-reduce": 4 * D}
    assert (up == 8 * 2 * (N - 1) * per_kind["all-reduce"] // N).all()
  assert (down == up).all() and list(payload) == MESSAGE_BITS


# ------------------------------------------------------- Rand-DIANA's p_i


def _refreshes(tx, steps, seed):
  """How often each worker refreshed its shift in ``steps`` steps: (payload −
  steps·B_i)/(32 d), each refresh sending one dense float32 vector."""
  g = np.random.default_rng(seed).normal(size=(N, steps, D)).astype(np.float32)

  def worker(gs):
    def body(s, gt):
      return tx.update(gt, s)[1], None
    return jax.lax.scan(body, tx.init(jnp.zeros(D)), gs)[0]

  state = jax.jit(jax.vmap(worker, axis_name=AXIS))(jnp.asarray(g))
  extra = np.asarray(compopt.comm_bits(state).payload) - steps * np.array(MESSAGE_BITS)
  assert np.all(extra % (32 * D) == 0)
  return extra // (32 * D)


@pytest.mark.parametrize("p", [None, pytest.param((0.2, 0.5, 0.8, 0.05),
                                                  marks=pytest.mark.slow)],
                         ids=["default", "given"])
def test_rand_diana_refreshes_each_worker_with_its_p_i(p):
  # Thm 4's choice per worker: p_i = 1/(ω_i + 1) (1 for identity, k/d for rand_k)
  steps = 400
  tx = compopt.shifted_compression(QS, shift="rand_diana", p=p, axis_name=AXIS, key=2)
  want = np.array([1 / (w + 1) for w in OMEGAS] if p is None else p)
  freq = _refreshes(tx, steps, seed=5) / steps
  se = np.sqrt(want * (1 - want) / steps)
  assert np.all(np.abs(freq - want) <= 4 * se + 1e-12), (freq, want)


# ------------------------------------------------------------ initial shifts


@pytest.mark.parametrize("start", ["first_gradient", "given"])
def test_diana_initial_shift_matches_numpy(start):
  # Alg. 1 lines 1-2: h_i^0 on the workers, h^0 = mean_i h_i^0 (one dense
  # all-reduce on the first step); then eq. 11 with Q = identity.
  steps, alpha = 3, 0.4
  g = _grads(steps, 6)
  h0 = np.random.default_rng(7).normal(size=(N, D)).astype(np.float32)
  tx = compopt.shifted_compression(C.identity(), alpha=alpha, axis_name=AXIS,
                                   initial_shift=start)
  extra = {"initial_shift": jnp.asarray(h0)} if start == "given" else None
  est, states = _run(tx, g, extra=extra)
  h_i = g[0].astype(np.float64) if start == "first_gradient" else h0.astype(np.float64)
  h = h_i.mean(0)
  for t in range(steps):
    m = g[t] - h_i
    np.testing.assert_allclose(est[t], np.broadcast_to(h + m.mean(0), (N, D)), **TOL)
    h_i = h_i + alpha * m
    h = h + alpha * m.mean(0)
    np.testing.assert_allclose(np.asarray(states[t].shift), h_i, **TOL)
  if start == "first_gradient":  # Q(0) = 0: the first step is the exact mean gradient
    np.testing.assert_allclose(est[0][0], g[0].mean(0), **TOL)
  # the first step adds one dense float32 ring all-reduce of h_i^0
  bits = _step_bits(states)
  dense, ring = 32 * D, 2 * (N - 1) * 32 * D // N
  msg = ring  # identity's linear payload is all-reduced too
  first, later = np.array([msg + ring, msg + ring, 32 * D + dense]), np.array([msg, msg, 32 * D])
  assert (bits[0] == first[:, None]).all()
  assert (bits[1:] == later[:, None]).all()


def test_rand_diana_first_gradient_starts_at_w0_equal_x0():
  # eq. 12 with w_i^0 = x^0: h_i^0 = ∇f_i(x^0); every later shift is some
  # earlier gradient of its worker, and h = mean_i h_i.
  steps = 4
  g = _grads(steps, 8)
  tx = compopt.shifted_compression(C.rand_k(3), shift="rand_diana", p=0.5, axis_name=AXIS,
                                   initial_shift="first_gradient", key=9)
  est, states = _run(tx, g)
  np.testing.assert_allclose(est[0][0], g[0].mean(0), **TOL)
  for t in range(steps):
    shift = np.asarray(states[t].shift)
    for i in range(N):
      assert any(np.allclose(shift[i], g[s, i], **TOL) for s in range(t + 1)), (t, i)
    np.testing.assert_allclose(np.asarray(states[t].mean_shift)[0], shift.mean(0), **TOL)


# ----------------------------------------------------------------- bad input


def _first_update(tx, n=N):
  s = compopt.parallel.stack(tx.init(jnp.zeros(D)), n)
  return jax.vmap(lambda g, s: tx.update(g, s), axis_name=AXIS)(jnp.ones((n, D)), s)


@pytest.mark.parametrize("make, error, match", [
    (lambda: compopt.diana(0.1, compressor=[C.rand_k(1), C.top_k(1)], axis_name=AXIS),
     ValueError, r"diana: `compressor\[1\]` must be unbiased"),
    (lambda: compopt.diana(0.1, compressor=[C.rand_k(1), 3], axis_name=AXIS),
     TypeError, r"`compressor\[1\]` must be a compopt compressor"),
    (lambda: compopt.diana(0.1, compressor=[], axis_name=AXIS), TypeError,
     r"`compressor` must be a compopt compressor or a non-empty list"),
    (lambda: compopt.rand_diana(0.1, compressor=C.rand_k(1), p=[0.5, 0.0, 1.0],
                                axis_name=AXIS),
     ValueError, r"rand_diana: `p\[1\]` must be in \(0, 1\]; got 0"),
    (lambda: compopt.diana(0.1, compressor=[C.rand_k(1)] * 2,
                           shift_compressor=[C.top_k(1)] * 3, axis_name=AXIS),
     ValueError, r"`compressor` with 2, `shift_compressor` with 3"),
    (lambda: compopt.diana(0.1, compressor=[C.rand_k(1)] * 2), ValueError,
     r"`compressor` lists 2 entries.*axis_name=None means one worker"),
    (lambda: compopt.diana(0.1, compressor=C.rand_k(1), initial_shift="mean"), ValueError,
     r"`initial_shift` must be one of \('zero', 'first_gradient', 'given'\)"),
    (lambda: compopt.dcgd_shift(0.1, compressor=C.rand_k(1), shift="fixed",
                                initial_shift="first_gradient"),
     ValueError, r"`initial_shift` starts the learnt shifts"),
], ids=["biased", "not_a_compressor", "empty", "p_range", "lengths", "one_worker",
        "initial_shift", "initial_shift_rule"])
def test_bad_arguments_are_refused_when_built(make, error, match):
  with pytest.raises(error, match=match):
    make()


@pytest.mark.parametrize("tx, match", [
    (compopt.diana(0.1, compressor=[C.rand_k(1)] * 3, axis_name=AXIS),
     r"diana: `compressor` lists 3 entries, one per worker, but the worker axis 'w' has 4"),
    (compopt.rand_diana(0.1, compressor=C.rand_k(1), p=[0.5] * 5, axis_name=AXIS),
     r"rand_diana: `p` lists 5 entries, one per worker, but the worker axis 'w' has 4"),
    (compopt.diana(0.1, compressor=C.rand_k(1), axis_name=AXIS, initial_shift="given"),
     r"initial_shift='given' needs the extra argument `initial_shift=`"),
], ids=["compressors", "p", "given_without_values"])
def test_lists_must_fit_the_axis_at_the_first_update(tx, match):
  with pytest.raises(ValueError, match=match):
    _first_update(tx)


# ------------------------------------------------------------------- DCSGD


def test_dcsgd_with_a_compressor_per_worker_and_partial_participation():
  # Horváth & Richtárik 2021, §4.2 with C_i per worker:
  # Δ = Σ_{i∈S} C_i(g_i)/(n p_i); S is read off the per-step payload counters.
  ks, probs, steps = (None, 2, None, 3), (0.5, 0.7, 0.9, 0.6), 4
  comps = [C.identity() if k is None else C.top_k(k) for k in ks]
  bits_i = [32 * D if k is None else k * (32 + 8) for k in ks]
  tx = compopt.compressed_mean(comps, axis_name=AXIS, sampling=probs, key=3)
  g = _grads(steps, 10)
  out, states = _run(tx, g)
  bits = _step_bits(states)
  members = 0
  for t in range(steps):
    sent = bits[t, 2] > 0
    members += sent.sum()
    assert list(bits[t, 2]) == [b if s else 0 for b, s in zip(bits_i, sent)]
    want = np.zeros(D)
    for i, k in enumerate(ks):
      if sent[i]:
        c = g[t, i].astype(np.float64)
        if k is not None:
          c = np.where(np.abs(c) >= np.sort(np.abs(c))[-k], c, 0)
        want += c / (N * probs[i])
    np.testing.assert_allclose(out[t], np.broadcast_to(want, (N, D)), **TOL)
  assert 0 < members < steps * N
  # non-members send zeros of the same padded size: the wire carries them all
  assert (bits[:, 0] == (N - 1) * max(bits_i)).all()
