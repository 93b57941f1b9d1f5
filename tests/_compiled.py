"""Shared by the tests that read compiled programs or need float64: the
compiled HLO of one shard_map step, and a scoped jax x64 switch."""

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import pytest

import compopt


def step_hlo(opt, tree, n: int, axis: str) -> str:
  """Compiled HLO text of one shard_map step of ``opt`` on ``tree`` over n
  devices of mesh axis ``axis`` (shapes only, nothing runs)."""
  mesh = jax.make_mesh((n,), (axis,))
  sharding = NamedSharding(mesh, P(axis))

  def stacked(x):
    return jax.ShapeDtypeStruct((n,) + x.shape, x.dtype, sharding=sharding)

  state = jax.tree.map(stacked, jax.eval_shape(opt.init, tree))
  grads = jax.tree.map(stacked, tree)
  step = jax.jit(jax.shard_map(compopt.parallel.per_worker(lambda g, s: opt.update(g, s)),
                               mesh=mesh, in_specs=P(axis), out_specs=P(axis)))
  return step.lower(grads, state).compile().as_text()


def x64():
  """float64 on: ``jax.enable_x64`` (a context manager in jax 0.10), else the
  older ``jax.experimental.enable_x64``, else skip."""
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(True)
  try:
    from jax.experimental import enable_x64  # pylint: disable=import-outside-toplevel
  except ImportError:
    pytest.skip("this jax has no enable_x64 context manager")
  return enable_x64()
