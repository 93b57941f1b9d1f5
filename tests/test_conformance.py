"""The conformance suite every method passes, as optax's alias tests do: one
worker (jit without retracing, extra arguments, bfloat16, init on
ShapeDtypeStruct, MultiSteps, inject_hyperparams, schedules and chains) and n
workers (states stacked, the update under a vmap axis). The methods come from
the one registry in tests/_registry.py."""

import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import compopt
import _registry as registry

NAMES = registry.NAMES
NEEDS_PARAMS = registry.NEEDS_PARAMS


def _make(name, lr=0.1, **overrides):
  return registry.make(name, lr, **overrides)


def _params(dtype=jnp.float32):
  return {"w": jnp.linspace(-1, 1, 12, dtype=dtype).reshape(4, 3), "b": jnp.ones(3, dtype)}


def _grads(t, dtype=jnp.float32):
  key = jax.random.PRNGKey(t)
  return jax.tree.map(lambda p: jax.random.normal(key, p.shape, dtype), _params(dtype))


def _run(opt, steps=3, dtype=jnp.float32):
  params = _params(dtype)
  state = opt.init(params)
  for t in range(steps):
    updates, state = opt.update(_grads(t, dtype), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


@pytest.mark.parametrize("name", registry.params())  # one per family; all: -m slow
def test_jit_does_not_retrace(name):
  chex.clear_trace_counter()
  opt = _make(name)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params = _params()
  state = opt.init(params)
  for t in range(3):
    params, state = step(params, state, _grads(t))
  chex.assert_tree_all_finite(params)


@pytest.mark.parametrize("name", registry.params())
def test_extra_args_are_tolerated(name):
  opt = _make(name)
  params = _params()
  state = opt.init(params)
  a, _ = opt.update(_grads(0), state, params)
  b, _ = opt.update(_grads(0), state, params, loss=jnp.float32(1.0), step=3)
  chex.assert_trees_all_equal(a, b)
  if name in NEEDS_PARAMS:
    with pytest.raises(ValueError, match="params"):
      opt.update(_grads(0), state)
  else:
    opt.update(_grads(0), state)  # params are optional


@pytest.mark.parametrize("name", registry.params())  # one per family; all: -m slow
def test_bf16_is_kept(name):
  opt = _make(name)
  params = _params(jnp.bfloat16)
  state = opt.init(params)
  for t in range(2):
    updates, state = opt.update(_grads(t, jnp.bfloat16), state, params)
    chex.assert_trees_all_equal_dtypes(updates, params)
    params = optax.apply_updates(params, updates)
  chex.assert_trees_all_equal_dtypes(params, _params(jnp.bfloat16))


@pytest.mark.parametrize("name", NAMES)
def test_init_on_shape_dtype_struct(name):
  opt = _make(name)
  params = _params()
  sds = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
  abstract = jax.eval_shape(opt.init, sds)
  concrete = opt.init(params)
  chex.assert_trees_all_equal_shapes_and_dtypes(abstract, concrete)


@pytest.mark.parametrize("name", registry.params())
def test_inside_multi_steps(name):
  k = 2
  multi = optax.MultiSteps(_make(name), every_k_schedule=k)
  plain = _make(name)
  params_m = params_p = _params()
  state_m, state_p = multi.init(params_m), plain.init(params_p)
  for t in range(2):
    grads = [_grads(10 * t + j) for j in range(k)]
    for g in grads:
      updates, state_m = multi.update(g, state_m, params_m)
      params_m = optax.apply_updates(params_m, updates)
    mean = jax.tree.map(lambda *gs: sum(gs) / k, *grads)
    updates, state_p = plain.update(mean, state_p, params_p)
    params_p = optax.apply_updates(params_p, updates)
    chex.assert_trees_all_close(params_m, params_p, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", registry.params())  # one per family; all: -m slow
def test_inject_hyperparams_gives_equal_results(name):
  factory, kwargs = registry.METHODS[name][0], registry.kwargs(name)
  # Compressors, samplings and validated structural numbers stay static (see
  # registry.STATIC_ARGS). Dtype arguments need not: optax calls jnp.float32
  # as if it were a schedule, and the methods read the dtype off the result.
  static = tuple(a for a in registry.STATIC_ARGS if a in kwargs)
  injected = optax.inject_hyperparams(factory, static_args=static)(0.1, **kwargs)
  p1, s1 = _run(injected)
  p2, s2 = _run(factory(0.1, **kwargs))
  chex.assert_trees_all_close(p1, p2, rtol=1e-6, atol=1e-7)
  assert compopt.comm_bits(s1) == compopt.comm_bits(s2)
  np.testing.assert_allclose(s1.hyperparams["learning_rate"], 0.1)


@pytest.mark.parametrize("name", registry.params())  # one per family; all: -m slow
def test_schedule_and_optax_chain(name):
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.add_decayed_weights(1e-3),
                    _make(name, optax.cosine_decay_schedule(0.1, 10)))
  params, _ = _run(opt)
  chex.assert_tree_all_finite(params)


@pytest.mark.parametrize("name", registry.params())
def test_compopt_inject_hyperparams_needs_no_static_args(name):
  """compopt.inject_hyperparams finds the static arguments (compressors,
  samplings, dtypes, structural numbers) itself; the result equals the plain
  method and the learning rate is a hyperparameter of the state."""
  factory, kwargs = registry.METHODS[name][0], registry.kwargs(name)
  injected = compopt.inject_hyperparams(factory)(0.1, error_dtype=jnp.float32, **kwargs) if (
      "error_dtype" in inspect.signature(factory).parameters) else (
          compopt.inject_hyperparams(factory)(0.1, **kwargs))
  p1, s1 = _run(injected)
  p2, s2 = _run(factory(0.1, **kwargs))
  chex.assert_trees_all_close(p1, p2, rtol=1e-6, atol=1e-7)
  assert compopt.comm_bits(s1) == compopt.comm_bits(s2)
  np.testing.assert_allclose(s1.hyperparams["learning_rate"], 0.1)
  assert "compressor" not in s1.hyperparams and "error_dtype" not in s1.hyperparams


def test_inject_hyperparams_keeps_the_state_dtype():
  # optax calls jnp.float32 as if it were a schedule; the float32 error buffer
  # must survive that, also for bfloat16 params.
  opt = optax.inject_hyperparams(compopt.ef_sgd, static_args="compressor")(
      learning_rate=0.1, compressor=compopt.compressors.top_k(1), error_dtype=jnp.float32)
  state = opt.init({"w": jnp.ones(4, jnp.bfloat16)})
  errors = [s for s in jax.tree.leaves(state.inner_state) if s.shape == (4,)]
  assert errors and all(e.dtype == jnp.float32 for e in errors)


def test_every_public_method_is_registered():
  registered = {registry.METHODS[name][0].__name__ for name in NAMES}
  assert registry.public_methods() <= registered, registry.public_methods() - registered


# ------------------------------------------------------------- n workers

N_WORKERS = 4
AXIS = "workers"


def _worker_grads(t, n=N_WORKERS):
  keys = jax.random.split(jax.random.PRNGKey(100 + t), n)
  return jax.vmap(lambda k: jax.tree.map(lambda p: jax.random.normal(k, p.shape), _params()))(
      keys)


def _run_workers(opt, steps=3):
  """``steps`` updates of n stacked workers under jit(vmap(axis_name=AXIS));
  the step is traced once; returns the params and the state after each step."""
  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state, grads):
    def one(p, s, g):
      u, s = opt.update(g, s, p)
      return optax.apply_updates(p, u), s
    return jax.vmap(one, axis_name=AXIS)(params, state, grads)

  params = compopt.parallel.stack(_params(), N_WORKERS)
  state = compopt.parallel.stack(opt.init(_params()), N_WORKERS)
  states = [state]
  for t in range(steps):
    params, state = step(params, state, _worker_grads(t))
    states.append(state)
  return params, states


@pytest.mark.parametrize("name", NAMES)
def test_n_workers_state_is_stable_and_params_stay_replicated(name):
  params, states = _run_workers(_make(name, axis_name=AXIS, n=N_WORKERS))
  for state in states[1:]:  # structure, shapes and dtypes as init made them
    chex.assert_trees_all_equal_shapes_and_dtypes(state, states[0])
    assert jax.tree.structure(state) == jax.tree.structure(states[0])
  chex.assert_tree_all_finite(params)
  for leaf in jax.tree.leaves(params):  # every worker applied the same update
    np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[:1], leaf.shape))
  assert min(compopt.comm_bits(states[-1]).downlink) > 0


@pytest.mark.parametrize("name", registry.params())
def test_n_workers_allreduce_scheme_gives_the_allgather_numbers(name):
  default, _ = _run_workers(_make(name, axis_name=AXIS, n=N_WORKERS), steps=2)
  allreduce, _ = _run_workers(_make(name, axis_name=AXIS, n=N_WORKERS, scheme="allreduce"),
                              steps=2)
  chex.assert_trees_all_close(allreduce, default, rtol=1e-5, atol=1e-6)
