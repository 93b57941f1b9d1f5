"""Flax NNX: compopt's readers take NNX optimizer state, and the NNX example
(a model split into graph and params, trained with compopt.data_parallel and
written back with nnx.update) trains."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import compopt
from compopt import compressors as C


class _Net(nnx.Module):
  def __init__(self, rngs):
    self.a = nnx.Linear(3, 4, rngs=rngs)
    self.b = nnx.Linear(4, 2, rngs=rngs)

  def __call__(self, x):
    return self.b(jax.nn.tanh(self.a(x)))


def test_readers_take_an_nnx_optimizer_state():
  model = _Net(nnx.Rngs(0))
  tx = compopt.dcsgd(0.1, compressor=C.top_k(2))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  loss = lambda m: jnp.sum(m(jnp.ones((2, 3))) ** 2)
  for _ in range(3):
    optimizer.update(model, nnx.grad(loss)(model))
  # the same counters through a plain optax state of the same method
  params = nnx.state(_Net(nnx.Rngs(0)), nnx.Param)
  plain = tx.init(params)
  for _ in range(3):
    _, plain = tx.update(jax.tree.map(jnp.ones_like, params), plain)
  expected = compopt.comm_bits(plain)  # one worker, no axis: nothing sent
  for state in (nnx.state(optimizer), optimizer.opt_state):
    assert compopt.comm_bits(state) == expected
    assert compopt.skipped_steps(state) == 0
  # counters with values in them (as a run over a worker axis leaves them),
  # read through the NNX variables that hold them
  from compopt._src import counters  # pylint: disable=import-outside-toplevel
  (bits,) = counters.find(optimizer.opt_state, compopt.CommBits)
  for word, variable in zip((5, 7, 11), bits):
    variable.set_value(jnp.array([1, word], jnp.uint32))
  assert compopt.comm_bits(nnx.state(optimizer)) == compopt.Bits(
      (1 << 32) + 5, (1 << 32) + 7, (1 << 32) + 11)
  # a NaN gradient is skipped and counted, read back from the NNX state
  bad = jax.tree.map(lambda g: g * jnp.nan, nnx.grad(loss)(model))
  optimizer.update(model, bad)
  assert compopt.skipped_steps(nnx.state(optimizer)) == 1


def test_the_nnx_example_trains():
  from examples import nnx_mnist  # pylint: disable=import-outside-toplevel
  result = nnx_mnist.train("digits", steps=40, batch_per_worker=8, ratio=0.05, log_every=40)
  assert result["workers"] == jax.device_count()
  assert result["loss"] < 2.0 and result["accuracy"] > 0.5  # from ln 10 = 2.3 and 0.1
  n_params = 64 * 64 + 64 + 64 * 10 + 10
  # top-5% values and indices, per worker and step: far below dense float32
  assert 0 < result["payload_bits"][0] / 40 < 32 * n_params / 5


def test_reshard_state_takes_a_stacked_nnx_state():
  """nnx.State keeps a NamedTuple state as a mapping of its field names; the
  resharding rules still apply (EF errors averaged, keys replicated)."""
  model = _Net(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, compopt.ef_sgd(0.1, compressor=C.top_k(2)), wrt=nnx.Param)
  stacked = jax.tree.map(lambda x: jnp.stack([x] * 4), nnx.state(optimizer))
  error = stacked["opt_state"][1]["error"]["b"]["bias"]
  error.set_value(jnp.arange(8.0).reshape(4, 2))
  resharded = compopt.reshard_state(stacked, 2)
  assert isinstance(resharded, nnx.State)
  np.testing.assert_array_equal(
      jax.tree.leaves(resharded["opt_state"][1]["error"]["b"]["bias"])[0], [[3, 4], [3, 4]])
  assert compopt.comm_bits(resharded).payload == [0, 0]
  key = jax.tree.leaves(stacked["opt_state"][1]["key"])[0]
  key_variable = stacked["opt_state"][1]["key"]
  key_variable.set_value(key.at[1].add(1))  # a replicated buffer that differs: refused
  with pytest.raises(ValueError, match=r"cannot reshard state\['opt_state'\]\[1\]\.key"):
    compopt.reshard_state(stacked, 2)
