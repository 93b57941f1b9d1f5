"""compopt.accumulate against a NumPy transcription of NEOLITHIC (Huang et al.
2022, Alg. 2) on the means of each window's finite micro-batches, under vmap,
pmap and shard_map.

The tests parametrized with ``multisteps`` run the same checks on
``optax.MultiSteps``, the former recommendation, and are expected to fail
(strict xfail): a NaN micro-batch poisons its accumulator for good, the
exchange runs on every micro-step while the counters see one per window, and
a per-worker skip desynchronises the workers (under shard_map and pmap a
deadlock; ``test_skipping_multisteps_deadlocks_where_accumulate_runs``, slow,
shows it)."""

import os
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import compopt
from compopt import compressors as C
from compopt._src.methods import guard as guard_lib

AXIS = "data"
N, K, D = 4, 4, 6  # workers, micro-batches per window, coordinates
GAMMA, TOP, TOP0, ROUNDS = 0.1, 2, 3, 2  # NEOLITHIC: top_k(2) up, top_k(3) down, R = 2

# Per-worker calls of the inner update that actually ran, recorded at run time
# by a host callback next to the exchange: what each worker really sent.
CALLS = []


def _counting(inner):
  def update(updates, state, params=None, **extra):
    jax.debug.callback(lambda i: CALLS.append(int(i)), jax.lax.axis_index(AXIS))
    return inner.update(updates, state, params, **extra)
  return optax.GradientTransformationExtraArgs(inner.init, update)


def _neolithic():
  return _counting(compopt.neolithic(GAMMA, compressor=C.top_k(TOP), rounds=ROUNDS,
                                     server_compressor=C.top_k(TOP0), axis_name=AXIS))


WRAPPERS = {
    "accumulate": lambda: compopt.accumulate(_neolithic(), K, axis_name=AXIS),
    "multisteps": lambda: optax.MultiSteps(_neolithic(), every_k_schedule=K),
    "multisteps_skip": lambda: optax.MultiSteps(
        _neolithic(), every_k_schedule=K, should_skip_update_fn=optax.skip_not_finite),
}


def _wrappers(*names):
  """The wrappers as parameters; MultiSteps' runs are expected to fail and
  are left to the slow run (each compiles a step of its own)."""
  return [pytest.param(n, marks=(pytest.mark.slow, pytest.mark.xfail(
      strict=True, reason="optax.MultiSteps"))) if n.startswith("multisteps") else n
          for n in names]


_COMPILED = {}


def _compiled(name, mode):
  """(opt, step) of wrapper ``name`` in ``mode``, compiled once per module."""
  if (name, mode) not in _COMPILED:
    opt = WRAPPERS[name]()

    def step(params, state, grads):  # one worker
      updates, state = opt.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    with warnings.catch_warnings():
      warnings.simplefilter("ignore", DeprecationWarning)  # pmap, deprecated in jax 0.10
      f = {"vmap": lambda: jax.jit(jax.vmap(step, axis_name=AXIS)),
           "pmap": lambda: jax.pmap(step, axis_name=AXIS, devices=jax.devices()[:N]),
           "shard_map": lambda: compopt.parallel.shard_map(
               step, jax.make_mesh((N,), (AXIS,), devices=jax.devices()[:N]), AXIS)}[mode]()
    _COMPILED[name, mode] = opt, f
  return _COMPILED[name, mode]


def _run(name, mode, grads):
  """Runs wrapper ``name`` on the micro-batches ``grads`` (steps, N, D) from
  x = 0; returns the params after every micro-step and the final state."""
  opt, f = _compiled(name, mode)
  x0 = jnp.zeros(D)
  params, state = compopt.parallel.stack(x0, N), compopt.parallel.stack(opt.init(x0), N)
  out = []
  CALLS.clear()
  for g in grads:
    params, state = f(params, state, jnp.asarray(g))
    out.append(np.asarray(params))
  jax.effects_barrier()
  return np.stack(out), state


def _micro_batches(windows, seed=0):
  return np.random.default_rng(seed).standard_normal((windows * K, N, D)).astype(np.float32)


# ------------------------------------------------------------ NumPy reference


def np_top_k(v, k):
  out = np.zeros_like(v)
  idx = np.argsort(-np.abs(v), kind="stable")[:k]
  out[idx] = v[idx]
  return out


def np_fcc_top_k(v, k, rounds):
  """Huang et al. 2022, Alg. 1: c^r = top_k(v − v^r), v^{r+1} = v^r + c^r."""
  x = np.zeros_like(v)
  for _ in range(rounds):
    x = x + np_top_k(v - x, k)
  return x


def np_accumulated_neolithic(grads):
  """x after every micro-step: Alg. 2 applied once per window of K micro-steps
  to ĝ_i = the mean of worker i's finite micro-batches; a window in which some
  worker has none is skipped by all. Also the number of skipped windows."""
  x, e_i, e = np.zeros(D), np.zeros((N, D)), np.zeros(D)
  out, skipped = [], 0
  for t in range(len(grads)):
    if t % K == K - 1:
      window = grads[t - K + 1:t + 1].astype(np.float64)  # (K, N, D)
      finite = np.isfinite(window).all(-1)  # (K, N)
      if finite.any(0).all():
        g = np.stack([window[finite[:, i], i].mean(0) for i in range(N)])
        gt = g + e_i
        sent = np.stack([np_fcc_top_k(gt[i], TOP, ROUNDS) for i in range(N)])
        e_i = gt - sent
        gs = sent.mean(0) + e
        step = np_fcc_top_k(gs, TOP0, ROUNDS)
        e = gs - step
        x = x - GAMMA * step
      else:
        skipped += 1
    out.append(x.copy())
  return np.stack(out), skipped


def _per_exchange_bits():
  return C.fcc(C.top_k(TOP), ROUNDS).wire_bits((D,), jnp.float32)


def _assert_workers_agree(params):
  np.testing.assert_array_equal(params, np.broadcast_to(params[:, :1], params.shape))


# ------------------------------------------------- one NaN micro-batch (defect 1)


@pytest.mark.parametrize("name", _wrappers("multisteps", "accumulate"))
def test_a_nan_micro_batch_skips_only_itself_and_training_goes_on(name):
  grads = _micro_batches(windows=3)
  grads[1, 2, 0] = np.nan  # worker 2's second micro-batch of window 0
  params, state = _run(name, "vmap", grads)
  assert compopt.skipped_steps(state) == [0] * N  # MultiSteps: [3] * N, frozen
  ref, skipped = np_accumulated_neolithic(grads)
  assert skipped == 0
  np.testing.assert_allclose(params[:, 0], ref, rtol=1e-5, atol=1e-6)
  _assert_workers_agree(params)
  np.testing.assert_array_equal(state.skipped_micro, [0, 0, 1, 0])


def test_equals_numpy_alg2_on_the_means_of_finite_micro_batches():
  grads = _micro_batches(windows=4, seed=1)
  grads[1, 2, 0] = np.nan
  grads[4, 0, 3] = np.inf
  grads[8:12, 3, 1] = np.nan  # worker 3 has no finite micro-batch in window 2
  params, state = _run("accumulate", "vmap", grads)
  ref, skipped = np_accumulated_neolithic(grads)
  assert skipped == 1
  np.testing.assert_allclose(params[:, 0], ref, rtol=1e-5, atol=1e-6)
  _assert_workers_agree(params)
  # window 2 was skipped by every worker together, the others applied
  assert compopt.skipped_steps(state) == [1] * N
  np.testing.assert_array_equal(state.skipped_micro, [1, 0, 1, 4])
  np.testing.assert_array_equal(params[7], params[11])
  assert (params[11] != params[15]).any()
  assert compopt.comm_bits(state).payload == [3 * _per_exchange_bits()] * N


# ------------------------------------------------------------ bits (defect 2)


@pytest.mark.parametrize("name", _wrappers("multisteps", "accumulate"))
def test_bits_count_what_each_worker_sent(name):
  # R = 4, 8 micro-steps: two exchanges per worker, counted and sent.
  _, state = _run(name, "shard_map", _micro_batches(windows=2, seed=2))
  exchanges = np.bincount(CALLS, minlength=N)  # inner steps that ran, per worker
  sent = [int(c) * _per_exchange_bits() for c in exchanges]
  assert compopt.comm_bits(state).payload == sent  # MultiSteps: counts 2, sends 8
  assert sent == [2 * _per_exchange_bits()] * N


# ---------------------------------------- the three modes; lockstep (defect 3)


def test_vmap_pmap_shard_map_agree_with_a_nan_micro_batch():
  grads = _micro_batches(windows=2, seed=3)
  grads[5, 1, 4] = np.nan
  results = {}
  for mode in ("vmap", "pmap", "shard_map"):
    results[mode] = _run("accumulate", mode, grads)
    if mode != "vmap":  # vmap computes both branches; pmap and shard_map one
      np.testing.assert_array_equal(np.bincount(CALLS, minlength=N), [2] * N)
  ref, _ = np_accumulated_neolithic(grads)
  for mode, (params, state) in results.items():
    np.testing.assert_allclose(params[:, 0], ref, rtol=1e-5, atol=1e-6, err_msg=mode)
    np.testing.assert_allclose(params, results["vmap"][0], rtol=1e-6, atol=1e-7)
    assert compopt.comm_bits(state) == compopt.comm_bits(results["vmap"][1]), mode
    np.testing.assert_array_equal(state.skipped_micro, [0, 1, 0, 0])


@pytest.mark.parametrize("name", _wrappers("multisteps_skip", "accumulate"))
def test_a_nan_micro_batch_keeps_the_workers_in_lockstep(name):
  # A per-worker skip (MultiSteps' lax.cond on each worker's own predicate)
  # lets the skipping worker's window counter fall behind: under vmap its
  # windows end later than the others' and the workers' params part; under
  # shard_map and pmap it leaves the others waiting in a collective.
  grads = _micro_batches(windows=2, seed=4)
  grads[1, 2, 0] = np.nan
  params, state = _run(name, "vmap", grads)
  np.testing.assert_array_equal(state.mini_step, [0] * N)
  _assert_workers_agree(params)


def test_skipping_multisteps_around_a_communicating_step_is_refused():
  x0 = jnp.zeros(D)
  wrapped = optax.MultiSteps(WRAPPERS["accumulate"](), every_k_schedule=1,
                             should_skip_update_fn=optax.skip_not_finite)
  # (the inner method's guard, or accumulate's own check, refuses it)
  with pytest.raises(ValueError, match=r"optax.MultiSteps\(.*deadlocks"):
    wrapped.init(x0)
  # the check finds the wrapper from any init below it (as a method's would)
  seen = []
  probe = optax.GradientTransformation(
      lambda p: seen.append(guard_lib.skipping_multisteps()) or optax.EmptyState(),
      lambda u, s, p=None: (u, s))
  skipping = optax.MultiSteps(probe, 2, should_skip_update_fn=optax.skip_not_finite)
  skipping.init(x0)
  optax.MultiSteps(probe, 2).init(x0)
  probe.init(x0)
  assert seen == [skipping, None, None]


_CHILD = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, optax, compopt
    n, wrapper = 4, sys.argv[1]
    inner = compopt.neolithic(0.1, compressor=compopt.compressors.top_k(2), rounds=2,
                              axis_name="data")
    opt = (compopt.accumulate(inner, 2, axis_name="data") if wrapper == "accumulate" else
           optax.MultiSteps(inner, 2, should_skip_update_fn=optax.skip_not_finite))
    def step(p, s, g):
      u, s = opt.update(g, s, p)
      return optax.apply_updates(p, u), s
    f = compopt.parallel.shard_map(step, jax.make_mesh((n,), ("data",)), "data")
    p, s = compopt.parallel.stack(jnp.zeros(3), n), compopt.parallel.stack(opt.init(jnp.zeros(3)), n)
    for t in range(4):
      g = jnp.ones((n, 3)).at[1, 0].set(jnp.nan if t == 1 else 1.0)
      p, s = f(p, s, g)
    jax.block_until_ready(p)
    print("done", jax.device_get(p)[0])
    """)


@pytest.mark.slow  # MultiSteps' deadlock: XLA aborts after 40 s
def test_skipping_multisteps_deadlocks_where_accumulate_runs():
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  ok = subprocess.run([sys.executable, "-c", _CHILD, "accumulate"], env=env,
                      capture_output=True, text=True, timeout=120)
  assert ok.returncode == 0 and "done" in ok.stdout, ok.stderr[-2000:]
  stuck = subprocess.run([sys.executable, "-c", _CHILD, "multisteps"], env=env,
                         capture_output=True, text=True, timeout=180)
  assert stuck.returncode != 0 and "done" not in stuck.stdout
  assert "Termination timeout" in stuck.stderr, stuck.stderr[-2000:]


# -------------------------------------------------- guard, state, arguments


def test_guards_the_window_when_inner_has_no_guard():
  # A composition of the user's own, with a collective and no guard: a window
  # in which a worker has no finite micro-batch is skipped by every worker.
  pmean = optax.GradientTransformation(
      lambda p: optax.EmptyState(),
      lambda u, s, p=None: (jax.tree.map(lambda x: jax.lax.pmean(x, AXIS), u), s))
  opt = compopt.accumulate(optax.chain(pmean, optax.sgd(0.5)), 2, axis_name=AXIS)
  f = jax.jit(jax.vmap(lambda g, s: opt.update(g, s), axis_name=AXIS))
  state = compopt.parallel.stack(opt.init(jnp.zeros(2)), N)
  g = np.arange(6 * N * 2, dtype=np.float32).reshape(6, N, 2)
  g[2:4, 1] = np.nan  # window 1: worker 1 has nothing finite
  g[4, 3, 0] = np.inf  # window 2: worker 3 keeps its other micro-batch
  total = np.zeros((N, 2))
  for t in range(6):
    u, state = f(jnp.asarray(g[t]), state)
    total += np.asarray(u)
  ref = -0.5 * (g[0:2].mean(0).mean(0) + np.stack(
      [g[5, 3] if i == 3 else g[4:6, i].mean(0) for i in range(N)]).mean(0))
  np.testing.assert_allclose(total, np.broadcast_to(ref, (N, 2)), rtol=1e-6)
  assert compopt.skipped_steps(state) == [1] * N
  assert isinstance(state.guard, compopt.SkipNonfiniteState)
  # a compopt method guards itself: no second guard
  assert compopt.accumulate(compopt.psgd(0.1), 2).init(jnp.zeros(2)).guard is None


def test_one_worker_every_k_one_is_the_inner_method():
  inner = compopt.ef_sgd(0.1, compressor=C.top_k(1), key=3)
  opt = compopt.accumulate(inner, 1)
  s1, s2 = inner.init(jnp.zeros(3)), opt.init(jnp.zeros(3))
  f1, f2 = jax.jit(inner.update), jax.jit(opt.update)
  for t in range(3):
    g = jnp.asarray([t + 1.0, -2.0, 0.5 * t])
    u1, s1 = f1(g, s1)
    u2, s2 = f2(g, s2)
    np.testing.assert_array_equal(u1, u2)
  assert compopt.comm_bits(s1) == compopt.comm_bits(s2)


def test_reshard_at_a_window_boundary_only():
  grads = _micro_batches(windows=1, seed=5)
  grads[0, 3, 0] = np.nan
  _, state = _run("accumulate", "vmap", grads)  # a full window
  two = compopt.reshard_state(state, 2)
  np.testing.assert_array_equal(two.skipped_micro, [1, 0])  # worker 3's count to 0
  np.testing.assert_array_equal(two.mini_step, [0, 0])
  assert compopt.comm_bits(two).payload == [3 * _per_exchange_bits(), _per_exchange_bits()]
  _, state = _run("accumulate", "vmap", grads[:2])  # mid-window
  with pytest.raises(ValueError, match=r"AccumulateState\.acc in the middle of an "
                                       r"accumulation window.*window boundary"):
    compopt.reshard_state(state, 2)


def test_checkpoint_mid_window_resumes_bit_for_bit(tmp_path):
  grads = _micro_batches(windows=2, seed=6)
  opt, f = _compiled("accumulate", "vmap")
  x0 = jnp.zeros(D)
  p, s = compopt.parallel.stack(x0, N), compopt.parallel.stack(opt.init(x0), N)
  for g in grads[:5]:
    p, s = f(p, s, jnp.asarray(g))
  compopt.checkpoint.save(tmp_path / "ckpt", {"params": p, "opt": s})
  like = {"params": compopt.parallel.stack(x0, N),
          "opt": compopt.parallel.stack(opt.init(x0), N)}
  restored = compopt.checkpoint.restore(tmp_path / "ckpt", like)
  assert isinstance(restored["opt"], compopt.AccumulateState)
  pr, sr = restored["params"], restored["opt"]
  for g in grads[5:]:
    p, s = f(p, s, jnp.asarray(g))
    pr, sr = f(pr, sr, jnp.asarray(g))
  for a, b in zip(jax.tree.leaves((p, s)), jax.tree.leaves((pr, sr))):
    np.testing.assert_array_equal(a, b)


def test_bad_arguments_name_the_parameter():
  inner = compopt.psgd(0.1)
  with pytest.raises(ValueError, match=r"accumulate: `every_k` must be an integer >= 1; got 0"):
    compopt.accumulate(inner, 0)
  with pytest.raises(TypeError, match=r"accumulate: `every_k` must be an integer >= 1; got 2.0"):
    compopt.accumulate(inner, 2.0)
  with pytest.raises(TypeError, match="accumulate: `inner` must be an optax GradientTransformation"):
    compopt.accumulate(lambda g: g, 2)
  with pytest.raises(TypeError, match="accumulate: `inner` is an optax.MultiSteps"):
    compopt.accumulate(optax.MultiSteps(inner, 2), 2)
  with pytest.raises(TypeError, match="accumulate: `axis_name` must be a str"):
    compopt.accumulate(inner, 2, axis_name=3)
  opt = compopt.accumulate(inner, 2)
  with pytest.raises(ValueError, match="updates do not match the state"):
    opt.update({"w": jnp.zeros(2)}, opt.init(jnp.zeros(2)))
