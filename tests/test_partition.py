"""Small leaves dense, large ones compressed: compopt.partition_by_size keeps
every leaf averaged over the workers; a compopt method under a plain
optax.multi_transform warns that the other leaves may drift."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import compopt
from compopt import compressors as C

AXIS = "data"
N = 4


def _params():
  return {"kernel": jnp.zeros((8, 16)), "bias": jnp.zeros(16)}


def _grads(t):
  k = jax.random.fold_in(jax.random.PRNGKey(7), t)
  return jax.tree.map(lambda p: jax.random.normal(jax.random.fold_in(k, p.size), (N,) + p.shape),
                      _params())


def _run(tx, steps=3):
  params = compopt.parallel.stack(_params(), N)
  state = compopt.parallel.stack(tx.init(_params()), N)

  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  f = jax.jit(jax.vmap(step, axis_name=AXIS))
  for t in range(steps):
    params, state = f(params, state, _grads(t))
  return params, state


def test_small_leaves_dense_large_compressed_and_all_replicated():
  ef = compopt.ef_sgd(0.1, compressor=C.top_k(ratio=0.1), axis_name=AXIS)
  tx = compopt.partition_by_size(ef, compopt.psgd(0.1, axis_name=AXIS), min_size=100)
  params, state = _run(tx)
  for leaf in jax.tree.leaves(params):
    for i in range(1, N):  # one value on every worker
      np.testing.assert_array_equal(leaf[i], leaf[0])
  # the bias (16 < 100) went dense: minus γ times the mean gradient, summed
  expected_bias = -0.1 * sum(np.mean(np.asarray(_grads(t)["bias"]), 0) for t in range(3))
  np.testing.assert_allclose(params["bias"][0], expected_bias, rtol=1e-5, atol=1e-6)
  # the kernel (128 >= 100) went through EF-SGD alone: the same as EF-SGD on
  # a tree holding only the kernel
  ref = compopt.ef_sgd(0.1, compressor=C.top_k(ratio=0.1), axis_name=AXIS)
  p = compopt.parallel.stack({"kernel": _params()["kernel"]}, N)
  s = compopt.parallel.stack(ref.init({"kernel": _params()["kernel"]}), N)
  for t in range(3):
    u, s = jax.vmap(ref.update, axis_name=AXIS)({"kernel": _grads(t)["kernel"]}, s)
    p = optax.apply_updates(p, u)
  np.testing.assert_allclose(params["kernel"], p["kernel"], rtol=1e-6, atol=1e-7)
  # bits: the kernel's top-k payloads plus the bias's dense all-reduce
  bits = compopt.comm_bits(state)
  assert bits.payload[0] == compopt.comm_bits(s).payload[0] + 3 * 16 * 32


def test_a_part_that_does_not_communicate_is_refused():
  ef = compopt.ef_sgd(0.1, compressor=C.top_k(ratio=0.1), axis_name=AXIS)
  tx = compopt.partition_by_size(ef, optax.sgd(0.1), min_size=100)
  with pytest.raises(ValueError, match="`dense` does not exchange over a worker axis"):
    tx.init(_params())
  with pytest.raises(ValueError, match="`min_size` must be"):
    compopt.partition_by_size(ef, compopt.psgd(0.1), min_size=0)


def test_plain_multi_transform_warns_and_the_dense_part_drifts():
  ef = compopt.ef_sgd(0.1, compressor=C.top_k(ratio=0.1), axis_name=AXIS)
  labels = {"kernel": "compressed", "bias": "dense"}
  tx = optax.multi_transform({"compressed": ef, "dense": optax.sgd(0.1)}, labels)
  with pytest.warns(UserWarning, match="drift apart across workers"):
    tx.init(_params())
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    params, _ = _run(tx)
  # what the warning is about: the bias differs from worker to worker
  assert not np.allclose(params["bias"][0], params["bias"][1])
  with warnings.catch_warnings():  # partition_by_size does not warn
    warnings.simplefilter("error")
    compopt.partition_by_size(ef, compopt.psgd(0.1, axis_name=AXIS), min_size=100).init(
        _params())


def test_a_method_without_axis_name_under_a_named_axis_warns():
  tx = compopt.ef_sgd(0.1, compressor=C.top_k(2))  # axis_name forgotten
  state = compopt.parallel.stack(tx.init(_params()), N)
  with pytest.warns(UserWarning, match="pass axis_name='data'"):
    jax.vmap(tx.update, axis_name=AXIS)(_grads(0), state)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    jax.vmap(tx.update)(_grads(0), state)  # no named axis: an ensemble, say
    tx.update(jax.tree.map(lambda g: g[0], _grads(0)), tx.init(_params()))
