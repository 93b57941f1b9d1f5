"""The same per-worker step gives the same numbers under jax.vmap (simulated
workers), jax.pmap and jax.jit + jax.shard_map over jax.make_mesh."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import _registry as registry
import compopt
from compopt import compressors as C

AXIS = "data"
N = 8


def _loss(params, batch):
  x, y = batch
  return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


def _problem():
  params = {"w": jnp.zeros((5, 3)), "b": jnp.zeros(3)}
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  batch = (jax.random.normal(k1, (N, 4, 5)), jax.random.normal(k2, (N, 4, 3)))
  return params, batch


@pytest.mark.parametrize("name", registry.params())
def test_vmap_pmap_shard_map_agree(name):
  opt = registry.make(name, axis_name=AXIS, n=N)
  params, batch = _problem()

  def step(params, state, batch):  # one worker
    grads = jax.grad(_loss)(params, batch)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params_n = compopt.parallel.stack(params, N)
  state_n = compopt.parallel.stack(opt.init(params), N)
  mesh = jax.make_mesh((N,), (AXIS,))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # pmap is deprecated in jax 0.10
    modes = {
        "vmap": jax.jit(jax.vmap(step, axis_name=AXIS)),
        "pmap": jax.pmap(step, axis_name=AXIS),
        "shard_map": compopt.parallel.shard_map(step, mesh, AXIS),
    }
    results = {}
    for mode, f in modes.items():
      p, s = params_n, state_n
      for _ in range(2):
        p, s = f(p, s, batch)
      results[mode] = (p, s)
  ref_p, ref_s = results["vmap"]
  # all workers agree on the params
  for leaf in jax.tree.leaves(ref_p):
    np.testing.assert_allclose(leaf, jnp.broadcast_to(leaf[:1], leaf.shape), rtol=1e-6,
                               atol=1e-7)
  assert any(np.abs(leaf).max() > 0 for leaf in jax.tree.leaves(ref_p))
  for mode in ("pmap", "shard_map"):
    p, s = results[mode]
    for a, b in zip(jax.tree.leaves(ref_p), jax.tree.leaves(p)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=mode)
    assert compopt.comm_bits(s) == compopt.comm_bits(ref_s), mode
  assert sum(compopt.comm_bits(ref_s).uplink) > 0
  # the state keeps its shapes, dtypes and sharding over the mesh across steps
  placed = compopt.parallel.shard(state_n, mesh, AXIS)
  for before, after in zip(jax.tree.leaves(placed), jax.tree.leaves(results["shard_map"][1])):
    assert (before.shape, before.dtype) == (after.shape, after.dtype)
    assert before.sharding.is_equivalent_to(after.sharding, before.ndim)


def test_stack_worker_unstack():
  tree = {"a": jnp.arange(3.0), "s": jnp.float32(2)}
  stacked = compopt.parallel.stack(tree, 4)
  assert stacked["a"].shape == (4, 3) and stacked["s"].shape == (4,)
  np.testing.assert_array_equal(compopt.parallel.worker(stacked, 2)["a"], tree["a"])
  assert len(compopt.parallel.unstack(stacked)) == 4
  with pytest.raises(ValueError, match="`n` must be an int >= 1"):
    compopt.parallel.stack(tree, 0)


def test_stack_takes_a_train_state_and_names_a_refused_leaf():
  from flax.training import train_state  # pylint: disable=import-outside-toplevel
  state = train_state.TrainState.create(apply_fn=None, params={"w": jnp.ones((2, 3))},
                                        tx=optax.sgd(0.1))
  assert isinstance(state.step, int)  # a Python int, as flax makes it
  stacked = compopt.parallel.stack(state, 4)
  np.testing.assert_array_equal(stacked.step, np.zeros(4))
  assert stacked.params["w"].shape == (4, 2, 3)
  assert compopt.parallel.stack({"x": np.float32(1.5), "f": 2.0}, 2)["f"].shape == (2,)
  with pytest.raises(TypeError, match=r"the leaf at \['a'\]\[1\] is str 'x'"):
    compopt.parallel.stack({"a": [jnp.ones(2), "x"]}, 2)


def test_worker_and_unstack_read_arrays_on_an_explicit_mesh():
  mesh = jax.make_mesh((N,), (AXIS,))  # Explicit axes
  stacked = {"a": jnp.arange(N * 3.0).reshape(N, 3), "s": jnp.arange(N)}
  sharded = compopt.parallel.shard(stacked, mesh, AXIS)
  np.testing.assert_array_equal(compopt.parallel.worker(sharded, 5)["a"], [15.0, 16.0, 17.0])
  parts = compopt.parallel.unstack(sharded)
  assert len(parts) == N
  assert [int(p["s"]) for p in parts] == list(range(N))


def test_shard_errors_name_the_problem():
  mesh = jax.make_mesh((N,), (AXIS,))
  with pytest.raises(ValueError, match=r"leading \(worker\) axis has size 4 but the mesh axis"):
    compopt.parallel.shard({"a": jnp.zeros((4, 2))}, mesh, AXIS)
  with pytest.raises(ValueError, match="the mesh has no axis 'batch'"):
    compopt.parallel.shard({"a": jnp.zeros((N, 2))}, mesh, "batch")
  with pytest.raises(ValueError, match="disagree on the number of workers"):
    compopt.parallel.shard({"a": jnp.zeros((N, 2)), "b": jnp.zeros((3,))}, mesh, AXIS)
  with pytest.raises(ValueError, match="no leading worker axis"):
    compopt.parallel.shard({"a": jnp.zeros((N, 2)), "b": jnp.float32(0)}, mesh, AXIS)
  with pytest.raises(ValueError, match="the mesh has no axis 'batch'"):
    compopt.parallel.shard_map(lambda x: x, mesh, "batch")


def test_shard_map_state_of_another_tree_is_a_clear_error():
  opt = compopt.ef_sgd(0.1, compressor=C.top_k(1), axis_name=AXIS)
  mesh = jax.make_mesh((N,), (AXIS,))
  state = compopt.parallel.stack(opt.init({"w": jnp.zeros(3)}), N)
  f = compopt.parallel.shard_map(lambda g, s: opt.update(g, s), mesh, AXIS)
  with pytest.raises(ValueError, match="updates do not match the state"):
    f({"w": jnp.zeros((N, 4))}, state)
