"""Saving, restoring and resharding the full per-worker optimizer state.

A compopt state holds per-worker buffers (EF errors, DIANA shifts), so a
checkpoint must keep the whole stacked state, not worker 0's copy: dropping
the errors (as DeepSpeed does on load) loses the updates they still owe.
:func:`save` and :func:`restore` write and read any pytree of arrays (params
and stacked states, on host, on one device or sharded over a mesh) with
orbax; resuming from them gives bit-for-bit the run that never stopped::

    compopt.checkpoint.save(path, {"params": params_n, "opt": state_n})
    ...
    like = {"params": params_n, "opt": state_n}   # e.g. fresh init, stacked and sharded
    restored = compopt.checkpoint.restore(path, like)

To resume on a different number of workers, :func:`reshard_state` maps the
stacked state to n new workers where the algorithm allows it, by the rules
below (from ``compopt._src.reshard``).
"""

import os as _os

import jax as _jax

from compopt._src import reshard as _reshard
from compopt._src.reshard import RULES
from compopt._src.reshard import reshard_state


def _path(directory):
  path = _os.fspath(directory)
  if not _os.path.isabs(path):
    path = _os.path.abspath(path)
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
    if isinstance(x, _jax.ShapeDtypeStruct):
      return x
    sharding = getattr(x, "sharding", None)
    return _jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  target = _jax.tree.map(abstract, like)
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(_path(directory), target)


__doc__ += "\n" + _reshard.__doc__

__all__ = ("RULES", "reshard_state", "restore", "save")
