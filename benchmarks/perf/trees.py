"""Parameter-shaped pytrees for the performance benchmarks.

* :func:`resnet18_shapes` / :func:`resnet18_tree`: the trainable parameters of
  the CIFAR ResNet-18 of ``examples.models`` (3x3 stem, no max-pool, 10
  classes): 62 leaves, 11,173,962 coordinates. The shapes come from
  ``jax.eval_shape`` of the flax ``init``, so no parameter is ever
  initialised for real; BatchNorm running statistics (``batch_stats``) are
  not parameters and are left out.
* :func:`flat_tree`: one vector ``{"w": ...}`` of a given size, for quick runs.

Values are ``N(0, 1)·1e-2``, about the scale of a gradient; the compressors'
costs do not depend on the values much, only top_k's selection a little.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

RESNET18_INPUT_SHAPE = (1, 32, 32, 3)  # NHWC, CIFAR
RESNET18_NUM_CLASSES = 10


def _plain(tree: Any) -> Any:
  """Nested (Frozen)Dicts as plain dicts, leaves untouched."""
  if hasattr(tree, "items"):
    return {k: _plain(v) for k, v in tree.items()}
  return tree


def resnet18_shapes(dtype: Any = jnp.float32) -> dict:
  """The ``jax.ShapeDtypeStruct`` tree of ResNet-18's (CIFAR) parameters.

  Args:
    dtype: the dtype of every leaf (flax initialises float32 parameters).

  Returns:
    A nested dict, as flax names it (``Conv_0``, ``BasicBlock_0``, ...,
    ``Dense_0``), of ``jax.ShapeDtypeStruct``.
  """
  from examples import models  # pylint: disable=import-outside-toplevel

  model = models.ResNet18(num_classes=RESNET18_NUM_CLASSES)
  variables = jax.eval_shape(
      lambda key: model.init(key, jnp.zeros(RESNET18_INPUT_SHAPE, jnp.float32), train=False),
      jax.random.key(0))
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.dtype(dtype)),
                      _plain(variables["params"]))


def _normal_like(shapes: Any, seed: int) -> Any:
  leaves, treedef = jax.tree.flatten(shapes)
  keys = jax.random.split(jax.random.key(seed), len(leaves))

  @jax.jit
  def fill(keys):
    return [(1e-2 * jax.random.normal(k, s.shape, jnp.float32)).astype(s.dtype)
            for k, s in zip(keys, leaves)]

  return treedef.unflatten(fill(keys))


def resnet18_tree(dtype: Any = jnp.float32, seed: int = 0) -> dict:
  """A dict pytree of arrays shaped like ResNet-18's (CIFAR) parameters.

  Args:
    dtype: the dtype of every leaf.
    seed: seed of ``jax.random.normal``.

  Returns:
    The tree of :func:`resnet18_shapes` filled with ``N(0, 1)·1e-2``.
  """
  return _normal_like(resnet18_shapes(dtype), seed)


def flat_tree(d: int, dtype: Any = jnp.float32, seed: int = 0) -> dict:
  """``{"w": v}`` with ``v`` a vector of ``d`` values ``N(0, 1)·1e-2``.

  Args:
    d: number of coordinates.
    dtype: dtype of ``v``.
    seed: seed of ``jax.random.normal``.
  """
  return _normal_like({"w": jax.ShapeDtypeStruct((int(d),), jnp.dtype(dtype))}, seed)
