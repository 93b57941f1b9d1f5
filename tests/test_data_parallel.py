"""compopt.data_parallel: the jit-with-shardings route. Replicated params, a
sharded batch, the per-worker state as one global array; the same numbers as
the worker-stacked vmap mode, params equal bit for bit on every device, and
the compiled step moving the compressed payload, not the dense gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import _registry as registry
import compopt
from benchmarks.perf import hlo
from compopt import compressors as C

AXIS = "data"
N = 8


def _loss(params, batch):
  x, y = batch
  return jnp.mean((jnp.tanh(x @ params["w"]) @ params["v"] + params["b"] - y) ** 2)


def _problem(d_in=5, hidden=4, d_out=3, per_worker=4):
  params = {"w": jnp.full((d_in, hidden), 0.1), "v": jnp.full((hidden, d_out), -0.1),
            "b": jnp.zeros(d_out)}
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  batch = (jax.random.normal(k1, (N * per_worker, d_in)),
           jax.random.normal(k2, (N * per_worker, d_out)))
  return params, batch


def _stacked_reference(tx, params, batch, steps):
  """The worker-stacked vmap mode: each worker's step on its shard."""
  def step(p, s, b):
    g = jax.grad(_loss)(p, b)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  p = compopt.parallel.stack(params, N)
  s = compopt.parallel.stack(tx.init(params), N)
  b = jax.tree.map(lambda x: x.reshape(N, -1, *x.shape[1:]), batch)
  f = jax.jit(jax.vmap(step, axis_name=AXIS))
  for _ in range(steps):
    p, s = f(p, s, b)
  return p, s


def _replicas(x):
  return [np.asarray(shard.data) for shard in x.addressable_shards]


# Two families by default (a sparsifier with EF, a shared-randomness one with
# partial participation); every registry entry under -m slow.
DEFAULT = ("ef_sgd", "dcsgd_shared_rand_k_nice")


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=() if n in DEFAULT else pytest.mark.slow, id=n)
    for n in registry.NAMES])
def test_matches_the_stacked_mode_and_keeps_params_replicated(name):
  tx = registry.make(name, axis_name=AXIS, n=N)
  params, batch = _problem()
  mesh = jax.make_mesh((N,), (AXIS,))
  dp = compopt.data_parallel(_loss, tx, mesh, axis_name=AXIS)
  p, s = params, dp.init(params)
  payload_bits = 0.0
  for _ in range(3):
    p, s, metrics = dp.step(p, s, batch)
    payload_bits += float(metrics["payload_bits"])
  ref_p, ref_s = _stacked_reference(tx, params, batch, 3)
  for leaf, ref in zip(jax.tree.leaves(p), jax.tree.leaves(ref_p)):
    copies = _replicas(leaf)
    assert len(copies) == N
    for c in copies:  # one value, on every device, bit for bit
      np.testing.assert_array_equal(c, copies[0])
    np.testing.assert_allclose(copies[0], np.asarray(ref)[0], rtol=1e-6, atol=1e-7)
  for leaf, ref in zip(jax.tree.leaves(s), jax.tree.leaves(ref_s)):
    assert leaf.shape == ref.shape  # (N, ...) global arrays, one row per worker
    assert leaf.sharding.spec[0] == AXIS
    np.testing.assert_allclose(np.asarray(leaf), np.asarray(ref), rtol=1e-6, atol=1e-7)
  assert compopt.comm_bits(s) == compopt.comm_bits(ref_s)
  bits = compopt.comm_bits(s)
  np.testing.assert_allclose(payload_bits, np.mean(bits.payload), rtol=1e-6)
  assert np.isfinite(float(metrics["loss"]))


def test_the_compiled_step_moves_the_payload_not_the_dense_gradient():
  params = {"w": jnp.zeros((256, 512)), "b": jnp.zeros(512)}
  x = jnp.ones((N * 2, 256))
  loss = lambda p, b: jnp.mean((b @ p["w"] + p["b"]) ** 2)
  compressor = C.top_k(ratio=0.01)
  tx = compopt.ef_sgd(0.1, compressor=compressor, axis_name=AXIS)
  dp = compopt.data_parallel(loss, tx, jax.make_mesh((N,), (AXIS,)))
  state = dp.init(params)
  text = dp.lower(params, state, x).compile().as_text()
  per_kind = hlo.collective_bytes(text)
  payload = compopt.compressors.tree_wire_bits(compressor, params) // 8
  dense = sum(v.size * 4 for v in jax.tree.leaves(params))
  assert payload <= per_kind.get("all-gather", 0) <= payload + 64, per_kind
  # what else crosses: the guard's flag and the metrics' means, a few bytes
  assert per_kind.get("all-reduce", 0) <= 64, per_kind
  assert sum(per_kind.values()) < dense / 40  # top-1%: values and indices


@pytest.mark.parametrize("axis_type", ["explicit", "auto"])
def test_host_batches_on_either_mesh_kind_and_aux(axis_type):
  types = (jax.sharding.AxisType.Explicit if axis_type == "explicit" else
           jax.sharding.AxisType.Auto,)
  mesh = jax.make_mesh((N,), (AXIS,), axis_types=types)
  params, batch = _problem()
  batch = jax.tree.map(np.asarray, batch)  # host arrays, placed by the step

  def loss_aux(p, b):
    value = _loss(p, b)
    return value, {"per_worker_loss": value}

  tx = compopt.dcsgd(0.1, compressor=C.rand_k(2), axis_name=AXIS)
  dp = compopt.data_parallel(loss_aux, tx, mesh, has_aux=True)
  p, s, m = dp.step(params, dp.init(params), batch)
  assert m["aux"]["per_worker_loss"].shape == (N,)
  np.testing.assert_allclose(float(m["loss"]), float(jnp.mean(m["aux"]["per_worker_loss"])),
                             rtol=1e-6)
  # grad_fn instead of loss_fn gives the same step
  grad_fn = lambda p, b: jax.value_and_grad(_loss)(p, b)
  dp2 = compopt.data_parallel(None, tx, mesh, grad_fn=grad_fn)
  p2, _, _ = dp2.step(params, dp2.init(params), batch)
  jax.tree.map(np.testing.assert_array_equal, p, p2)


def test_bad_arguments_name_the_parameter():
  mesh = jax.make_mesh((N,), (AXIS,))
  tx = compopt.psgd(0.1, axis_name=AXIS)
  with pytest.raises(ValueError, match="exactly one of `loss_fn` and `grad_fn`"):
    compopt.data_parallel(None, tx, mesh)
  with pytest.raises(ValueError, match="the mesh has no axis 'batch'"):
    compopt.data_parallel(_loss, tx, mesh, axis_name="batch")
  with pytest.raises(TypeError, match="`mesh` must be a jax.sharding.Mesh"):
    compopt.data_parallel(_loss, tx, "data")
  params, batch = _problem()
  dp = compopt.data_parallel(_loss, tx, mesh)
  odd = jax.tree.map(lambda x: x[:N + 1], batch)
  with pytest.raises(ValueError, match="divisible by the 8 workers"):
    dp.step(params, dp.init(params), odd)


def test_the_readme_example_runs():
  import os  # pylint: disable=import-outside-toplevel
  import re  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(root, "README.md")) as f:
    text = f.read()
  section = text[text.index("## Data-parallel training with `jax.jit`"):]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  scope = {}
  exec(compile(code, "README.md", "exec"), scope)  # pylint: disable=exec-used
  assert float(scope["metrics"]["payload_bits"]) > 0
  assert float(scope["metrics"]["loss"]) < float(jnp.mean(scope["x"].sum(1) ** 2))


def test_a_vmap_with_spmd_axis_name_is_refused_naming_the_route():
  """jax.jit(jax.vmap(step, spmd_axis_name=...)) gives the right numbers but
  lets XLA's partitioner move dense gradients while the counters report the
  payloads: refused, pointing to data_parallel."""
  params, batch = _problem()
  tx = compopt.ef_sgd(0.1, compressor=C.top_k(2), axis_name=AXIS)

  def step(p, s, b):
    u, s = tx.update(jax.grad(_loss)(p, b), s, p)
    return optax.apply_updates(p, u), s

  p = compopt.parallel.stack(params, N)
  s = compopt.parallel.stack(tx.init(params), N)
  b = jax.tree.map(lambda x: x.reshape(N, -1, *x.shape[1:]), batch)
  mesh = jax.make_mesh((N,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
  with jax.set_mesh(mesh):
    with pytest.raises(ValueError, match="spmd_axis_name.*data_parallel"):
      jax.jit(jax.vmap(step, axis_name=AXIS, spmd_axis_name=AXIS))(p, s, b)
  jax.jit(jax.vmap(step, axis_name=AXIS))(p, s, b)  # plain simulation: fine


def test_comm_bits_array_reads_the_counters_inside_jit():
  tx = compopt.dcsgd(0.1, compressor=C.top_k(2))
  params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
  state = tx.init(params)
  for t in range(3):
    _, state = tx.update(jax.tree.map(lambda p: p * (t + 1.0), params), state)
  exact = compopt.comm_bits(state)
  pairs = jax.jit(compopt.comm_bits_array)(state)
  for field in ("uplink", "downlink", "payload"):
    hi, lo = (int(v) for v in getattr(pairs, field))
    assert (hi << 32) + lo == getattr(exact, field)
  assert float(jax.jit(compopt.bits_as_float)(pairs.payload)) == float(exact.payload)
  # past 2**32 the words combine, to float32's precision
  big = jnp.array([[3, 2**32 - 5], [0, 7]], jnp.uint32)
  np.testing.assert_allclose(compopt.bits_as_float(big), [3 * 2.0**32 + 2**32 - 5, 7.0],
                             rtol=2**-24)
  from compopt._src import counters  # pylint: disable=import-outside-toplevel
  diff = counters.sub64(jnp.array([1, 2], jnp.uint32), jnp.array([0, 5], jnp.uint32))
  assert (int(diff[0]) << 32) + int(diff[1]) == (1 << 32) + 2 - 5


def test_a_plain_optax_loop_changes_four_lines():
  """The DataParallel object stands for the jitted step and takes the state
  tx.init(params) makes: a plain optax loop keeps its init and its loop."""
  params, batch = _problem()
  tx = compopt.ef_sgd(0.1, compressor=C.top_k(2), axis_name=AXIS)
  step = compopt.data_parallel(_loss, tx, jax.make_mesh((N,), (AXIS,)))
  opt_state = tx.init(params)  # one worker's state, as for optax
  p1, s1 = params, opt_state
  for _ in range(2):
    p1, s1, metrics = step(p1, s1, batch)
  p2, s2 = params, step.init(params)
  for _ in range(2):
    p2, s2, _ = step.step(p2, s2, batch)
  jax.tree.map(np.testing.assert_array_equal, p1, p2)
  jax.tree.map(np.testing.assert_array_equal, s1, s2)
  with pytest.raises(ValueError, match="not a state of `tx`"):
    step(params, optax.sgd(0.1).init(params), batch)
  assert np.isfinite(float(metrics["loss"]))


def test_a_linen_train_state_steps_through_it():
  from flax.training import train_state  # pylint: disable=import-outside-toplevel
  params, batch = _problem()
  tx = compopt.ef_sgd(0.1, compressor=C.top_k(2), axis_name=AXIS)
  state = train_state.TrainState.create(apply_fn=None, params=params, tx=tx)
  train_step = compopt.data_parallel(_loss, tx, jax.make_mesh((N,), (AXIS,)))
  for _ in range(2):
    state, metrics = train_step(state, batch)
  assert int(state.step) == 2
  p, s = params, tx.init(params)
  for _ in range(2):
    p, s, _ = train_step(p, s, batch)
  jax.tree.map(np.testing.assert_array_equal, state.params, p)
  assert compopt.comm_bits(state.opt_state) == compopt.comm_bits(s)
  with pytest.raises(TypeError, match="TrainState-like"):
    train_step(params, batch)
