"""Saving and restoring any pytree of arrays with orbax; the public face is
:mod:`compopt.checkpoint`."""

from __future__ import annotations

import os

import jax


def _path(directory):
  path = os.fspath(directory)
  if not os.path.isabs(path):
    path = os.path.abspath(path)
  return path


def save(directory, tree, *, force: bool = False) -> None:
  """Writes ``tree`` (params, stacked optimizer states, any pytree of arrays)
  to ``directory`` with orbax, and waits until it is on disk.

  Args:
    directory: a path that does not exist yet (or ``force=True``).
    tree: the pytree to save; sharded arrays are written from all hosts.
    force: overwrite an existing checkpoint.
  """
  import orbax.checkpoint as ocp
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(_path(directory), tree, force=force)
    ckptr.wait_until_finished()


def restore(directory, like):
  """Reads a checkpoint written by :func:`save`.

  Args:
    directory: the checkpoint's path.
    like: a tree with the structure, shapes, dtypes and (optional) shardings
      to restore into: concrete arrays (e.g. a freshly initialised, stacked
      and sharded state) or ``jax.ShapeDtypeStruct``s. NamedTuple states come
      back as NamedTuples.

  Returns:
    The restored tree, placed like ``like``.
  """
  import orbax.checkpoint as ocp

  def abstract(x):
    if isinstance(x, jax.ShapeDtypeStruct):
      return x
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  target = jax.tree.map(abstract, like)
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(_path(directory), target)
