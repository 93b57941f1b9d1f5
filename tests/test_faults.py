"""A NaN or inf on one worker: every worker skips the step together, nothing
deadlocks, and the state is exactly as if the step never happened."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import _compiled
import compopt
from benchmarks.perf import hlo
from compopt import compressors as C

AXIS = "data"
N = 8

# Every public method (the shard_map runs below take the first few).
METHODS = {
    "ef_sgd": lambda: compopt.ef_sgd(0.1, compressor=C.top_k(2), axis_name=AXIS, key=1),
    "diana": lambda: compopt.diana(0.1, compressor=C.rand_k(2), axis_name=AXIS, key=2),
    "comp_ams": lambda: compopt.comp_ams(optax.linear_schedule(0.1, 0.01, 5),
                                         compressor=C.top_k(2), axis_name=AXIS),
    "rand_diana": lambda: compopt.rand_diana(0.1, compressor=C.rand_k(2), p=0.5,
                                             axis_name=AXIS, key=3),
    "psgd": lambda: compopt.psgd(0.1, axis_name=AXIS, momentum=0.9),
    "dcsgd": lambda: compopt.dcsgd(0.1, compressor=C.natural(), axis_name=AXIS,
                                   sampling=0.5, momentum=0.9),
    "ef_signsgd": lambda: compopt.ef_signsgd(0.1, axis_name=AXIS),
    "signsgd": lambda: compopt.signsgd(0.1, axis_name=AXIS),
    "signum": lambda: compopt.signum(0.1, axis_name=AXIS),
    "scaled_signsgd": lambda: compopt.scaled_signsgd(0.1, axis_name=AXIS),
    "ef21": lambda: compopt.ef21(0.1, compressor=C.top_k(2), axis_name=AXIS),
    "double_squeeze": lambda: compopt.double_squeeze(0.1, compressor=C.top_k(2),
                                                     axis_name=AXIS),
    "dcgd_fixed": lambda: compopt.dcgd_shift(0.1, compressor=C.rand_k(2), shift="fixed",
                                             axis_name=AXIS),
    "gdci": lambda: compopt.gdci(0.1, compressor=C.natural(), eta=0.5, axis_name=AXIS),
    "neolithic": lambda: compopt.neolithic(0.1, compressor=C.top_k(1), rounds=2,
                                           server_compressor=C.top_k(2), axis_name=AXIS),
}


def _params():
  return {"w": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3), "b": jnp.ones(3)}


def _grads(t):
  """Stacked gradients of step t, one per worker."""
  k1, k2 = jax.random.split(jax.random.PRNGKey(t))
  return {"w": jax.random.normal(k1, (N, 4, 3)), "b": jax.random.normal(k2, (N, 3))}


def _poison(g, worker, value):
  return {"w": g["w"].at[worker, 1, 2].set(value), "b": g["b"]}


def _step(opt):
  def step(params, state, grads):  # one worker
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return step


def _strip_guard(state):
  """The state without the guard (the last entry of a guarded chain)."""
  assert isinstance(state[-1], compopt.SkipNonfiniteState)
  return state[:-1]


def _assert_bitwise_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", ["ef_sgd", "diana", "comp_ams"])
def test_nan_on_one_worker_under_shard_map_is_skipped_by_all(name):
  opt = METHODS[name]()
  mesh = jax.make_mesh((N,), (AXIS,))
  f = compopt.parallel.shard_map(_step(opt), mesh, AXIS)
  params = compopt.parallel.stack(_params(), N)
  state = compopt.parallel.stack(opt.init(_params()), N)
  bad_step = 2

  p, s = params, state
  for t in range(5):
    g = _grads(t)
    if t == bad_step:
      g = _poison(g, worker=3, value=jnp.nan)
    p, s = f(p, s, g)
  assert compopt.skipped_steps(s) == [1] * N

  # the same run, in which step 2 never happened
  p_ref, s_ref = params, state
  for t in range(5):
    if t != bad_step:
      p_ref, s_ref = f(p_ref, s_ref, _grads(t))
  assert compopt.skipped_steps(s_ref) == [0] * N
  _assert_bitwise_equal(p, p_ref)
  _assert_bitwise_equal(_strip_guard(s), _strip_guard(s_ref))
  assert compopt.comm_bits(s) == compopt.comm_bits(s_ref)
  assert np.all(np.isfinite(np.asarray(p["w"])))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_leaves_its_state_untouched_on_inf(name):
  opt = METHODS[name]()
  f = jax.jit(jax.vmap(_step(opt), axis_name=AXIS))
  params = compopt.parallel.stack(_params(), N)
  state = compopt.parallel.stack(opt.init(_params()), N)
  params, state = f(params, state, _grads(0))  # a normal step first
  g = _poison(_grads(1), worker=N - 1, value=-jnp.inf)
  new_params, new_state = f(params, state, g)
  _assert_bitwise_equal(new_params, params)
  _assert_bitwise_equal(_strip_guard(new_state), _strip_guard(state))
  guard = new_state[-1]
  np.testing.assert_array_equal(guard.skipped, np.ones(N))
  np.testing.assert_array_equal(guard.consecutive, np.ones(N))
  _, after = f(new_params, new_state, _grads(2))  # finite again: applied
  np.testing.assert_array_equal(after[-1].skipped, np.ones(N))
  np.testing.assert_array_equal(after[-1].consecutive, np.zeros(N))


def test_off_is_plain_optax_chain_and_propagates_nan():
  opt = compopt.ef_sgd(0.1, compressor=C.top_k(1), skip_nonfinite=False)
  state = opt.init(jnp.zeros(3))
  assert not any(isinstance(s, compopt.SkipNonfiniteState) for s in state)
  u, _ = opt.update(jnp.array([jnp.nan, 1.0, 2.0]), state)
  assert np.isnan(np.asarray(u)).any()
  with pytest.raises(TypeError, match="`skip_nonfinite` must be True or False; got 1"):
    compopt.ef_sgd(0.1, compressor=C.top_k(1), skip_nonfinite=1)


def test_wrapper_on_any_transformation_single_worker():
  tx = compopt.skip_nonfinite(optax.adam(0.1))
  params = jnp.ones(3)
  state = tx.init(params)
  u, state = tx.update(jnp.array([1.0, jnp.inf, 0.0]), state, params)
  np.testing.assert_array_equal(u, np.zeros(3))
  assert compopt.skipped_steps(state) == 1
  np.testing.assert_array_equal(state.inner_state[0].count, 0)  # adam's count kept
  u, state = tx.update(jnp.array([1.0, 1.0, 0.0]), state, params)
  assert np.abs(np.asarray(u)).max() > 0 and int(state.consecutive) == 0
  with pytest.raises(TypeError, match="`inner` must be an optax GradientTransformation"):
    compopt.skip_nonfinite(lambda g: g)
  with pytest.raises(ValueError, match="no SkipNonfiniteState"):
    compopt.skipped_steps(optax.sgd(0.1).init(params))


def test_wrapper_under_shard_map_with_a_collective_inside():
  # a user's own transformation that all-reduces: the guard still agrees first
  inner = optax.GradientTransformation(
      lambda p: optax.EmptyState(),
      lambda u, s, p=None: (jax.tree.map(lambda x: jax.lax.pmean(x, AXIS), u), s))
  tx = compopt.skip_nonfinite(inner, axis_name=AXIS)
  mesh = jax.make_mesh((N,), (AXIS,))
  f = compopt.parallel.shard_map(lambda g, s: tx.update(g, s), mesh, AXIS)
  state = compopt.parallel.stack(tx.init(jnp.zeros(2)), N)
  g = jnp.ones((N, 2)).at[5, 0].set(jnp.nan)
  u, state = f(g, state)
  np.testing.assert_array_equal(u, np.zeros((N, 2)))
  u, state = f(jnp.ones((N, 2)), state)
  np.testing.assert_array_equal(u, np.ones((N, 2)))
  assert compopt.skipped_steps(state) == [1] * N


def test_the_guard_costs_one_four_byte_all_reduce():
  tree = {"a": jax.ShapeDtypeStruct((100,), jnp.float32)}
  off = hlo.collective_bytes(_compiled.step_hlo(
      compopt.ef_sgd(0.1, compressor=C.top_k(5), axis_name=AXIS, skip_nonfinite=False), tree, N, AXIS))
  on = hlo.collective_bytes(_compiled.step_hlo(
      compopt.ef_sgd(0.1, compressor=C.top_k(5), axis_name=AXIS), tree, N, AXIS))
  assert on["all-gather"] == off["all-gather"]
  assert on.get("all-reduce", 0) - off.get("all-reduce", 0) == 4
