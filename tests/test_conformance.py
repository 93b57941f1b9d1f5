"""The conformance suite of STYLE.md, run on every method (one worker)."""


import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import compopt
from compopt import compressors as C

# name -> (factory, kwargs); learning_rate is given separately.
METHODS = {
    "psgd": (compopt.psgd, dict(momentum=0.9)),
    "dcsgd": (compopt.dcsgd, dict(compressor=C.rand_k(2), key=3)),
    "dcsgd_sampling": (compopt.dcsgd, dict(compressor=C.top_k(2), sampling=0.5, momentum=0.9)),
    "ef_sgd": (compopt.ef_sgd, dict(compressor=C.top_k(2), key=1)),
    "ef_signsgd": (compopt.ef_signsgd, dict()),
    "signsgd": (compopt.signsgd, dict()),
    "signum": (compopt.signum, dict(momentum=0.9)),
    "scaled_signsgd": (compopt.scaled_signsgd, dict()),
    "ef21": (compopt.ef21, dict(compressor=C.natural(), key=2)),
    "double_squeeze": (compopt.double_squeeze, dict(compressor=C.top_k(2))),
    "diana": (compopt.diana, dict(compressor=C.rand_k(2), key=4)),
    "diana_top_k_shift": (compopt.diana, dict(compressor=C.natural(),
                                              shift_compressor=C.top_k(1))),
    "rand_diana": (compopt.rand_diana, dict(compressor=C.rand_k(2), p=0.5, key=5)),
    "dcgd_fixed": (compopt.dcgd_shift, dict(compressor=C.rand_k(2), shift="fixed")),
    "gdci": (compopt.gdci, dict(compressor=C.natural(), eta=0.5, key=6)),
    # β's exact in float32, so that inject_hyperparams (float32 arrays) and
    # Python floats give the same 1 − β.
    "comp_ams": (compopt.comp_ams, dict(compressor=C.top_k(2), b1=0.75, b2=0.9375)),
    "comp_ams_optax": (compopt.comp_ams, dict(compressor=C.top_k(2), b1=0.75, b2=0.9375,
                                              optax_amsgrad=True)),
    "neolithic": (compopt.neolithic, dict(compressor=C.top_k(1), rounds=2,
                                          server_compressor=C.top_k(2))),
}
# dcgd_shift with shift="star" needs the extra argument optimal_shift= (tested
# in test_shifted.py). gdci compresses the iterates, so its update needs params.
NEEDS_PARAMS = {"gdci"}
NAMES = sorted(METHODS)


def _make(name, lr=0.1):
  factory, kwargs = METHODS[name]
  return factory(lr, **kwargs)


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


@pytest.mark.parametrize("name", NAMES)
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


@pytest.mark.parametrize("name", NAMES)
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


@pytest.mark.parametrize("name", NAMES)
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


@pytest.mark.parametrize("name", NAMES)
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


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_gives_equal_results(name):
  factory, kwargs = METHODS[name]
  # Compressors and samplings are callable or objects: keep them static.
  # Structural arguments (validated Python numbers) too: optax would turn them
  # into arrays. Dtype arguments need not be static: optax calls jnp.float32
  # as if it were a schedule, and the methods read the dtype off the result.
  static = tuple(a for a in ("compressor", "sampling", "shift_compressor",
                             "server_compressor", "rounds", "p", "eta")
                 if a in kwargs)
  injected = optax.inject_hyperparams(factory, static_args=static)(0.1, **kwargs)
  p1, s1 = _run(injected)
  p2, s2 = _run(factory(0.1, **kwargs))
  chex.assert_trees_all_close(p1, p2, rtol=1e-6, atol=1e-7)
  assert compopt.comm_bits(s1) == compopt.comm_bits(s2)
  np.testing.assert_allclose(s1.hyperparams["learning_rate"], 0.1)


@pytest.mark.parametrize("name", NAMES)
def test_schedule_and_optax_chain(name):
  factory, kwargs = METHODS[name]
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.add_decayed_weights(1e-3),
                    factory(optax.cosine_decay_schedule(0.1, 10), **kwargs))
  params, _ = _run(opt)
  chex.assert_tree_all_finite(params)


def test_inject_hyperparams_keeps_the_state_dtype():
  # optax calls jnp.float32 as if it were a schedule; the float32 error buffer
  # must survive that, also for bfloat16 params.
  opt = optax.inject_hyperparams(compopt.ef_sgd, static_args="compressor")(
      learning_rate=0.1, compressor=C.top_k(1), error_dtype=jnp.float32)
  state = opt.init({"w": jnp.ones(4, jnp.bfloat16)})
  errors = [s for s in jax.tree.leaves(state.inner_state) if s.shape == (4,)]
  assert errors and all(e.dtype == jnp.float32 for e in errors)
