"""Running the step of one worker in the three execution modes: stacking
per-worker trees, placing them on a mesh, and ``shard_map`` over a mesh axis.
The public face is :mod:`compopt.parallel`."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from compopt._src import checks

_SCALARS = (bool, int, float, complex, np.generic)


def _leaves_or_error(tree, owner, *, scalars: bool = False):
  """The leaves of ``tree``; each must be an array (or, with ``scalars``, a
  Python or NumPy scalar, such as a ``TrainState``'s ``step``). A refused leaf
  is named by its path."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  for path, leaf in leaves:
    if hasattr(leaf, "shape") or (scalars and isinstance(leaf, _SCALARS)):
      continue
    allowed = "an array or a Python/NumPy scalar" if scalars else "an array"
    raise TypeError(f"{owner}: every leaf must be {allowed}; the leaf at "
                    f"{jax.tree_util.keystr(path) or '(root)'} is {type(leaf).__name__} "
                    f"{leaf!r}")
  return [leaf for _, leaf in leaves]


def _take(x, i):
  """x[i]; on an array sharded over a mesh with Explicit axes (what
  ``jax.make_mesh`` makes), the slice comes back replicated on that mesh, as
  JAX needs the output sharding spelled out there."""
  sharding = getattr(x, "sharding", None)
  if isinstance(sharding, NamedSharding) and any(
      t == jax.sharding.AxisType.Explicit for t in sharding.mesh.axis_types):
    return x.at[i].get(out_sharding=NamedSharding(sharding.mesh, P()))
  return x[i]


def stack(tree: Any, n: int) -> Any:
  """Replicates ``tree`` (params or a per-worker optimizer state) n times on a
  new leading worker axis: each leaf of shape s becomes ``(n, *s)``.

  Args:
    tree: a pytree of arrays (e.g. ``opt.init(params)``); Python and NumPy
      scalars (a ``TrainState``'s int ``step``) become arrays of shape (n,).
    n: the number of workers, an int >= 1.
  """
  n = checks.check_workers(n, "stack")
  _leaves_or_error(tree, "stack", scalars=True)
  return jax.tree.map(lambda x: jnp.broadcast_to(jnp.asarray(x), (n,) + jnp.shape(x)), tree)


def _worker_count(tree, owner):
  sizes = {int(jnp.shape(x)[0]) if jnp.ndim(x) else None for x in _leaves_or_error(tree, owner)}
  if None in sizes:
    raise ValueError(
        f"{owner}: a leaf has no leading worker axis (a scalar); stack per-worker "
        "trees with compopt.parallel.stack first")
  if len(sizes) > 1:
    raise ValueError(
        f"{owner}: the leaves disagree on the number of workers on the leading "
        f"axis: {sorted(sizes)}")
  return sizes.pop() if sizes else 0


def worker(tree: Any, i: int) -> Any:
  """Worker i's slice of a stacked tree (leading axis removed)."""
  n = _worker_count(tree, "worker")
  if not 0 <= i < n:
    raise IndexError(f"worker: index {i} out of range for {n} workers")
  return jax.tree.map(lambda x: _take(x, i), tree)


def unstack(tree: Any) -> list:
  """The list of per-worker trees of a stacked tree."""
  return [worker(tree, i) for i in range(_worker_count(tree, "unstack"))]


def shard(tree: Any, mesh: jax.sharding.Mesh, axis_name: str = "data"):
  """Places a stacked tree on ``mesh``, its leading (worker) axis split over
  the mesh axis ``axis_name`` (one worker per device on that axis).

  Args:
    tree: a pytree of arrays, each with a leading axis of size
      ``mesh.shape[axis_name]``.
    mesh: e.g. ``jax.make_mesh((n,), ("data",))``.
    axis_name: the mesh axis that holds the workers.
  """
  if axis_name not in mesh.shape:
    raise ValueError(
        f"shard: the mesh has no axis {axis_name!r}; its axes are "
        f"{tuple(mesh.axis_names)}")
  n = mesh.shape[axis_name]
  got = _worker_count(tree, "shard")
  if got != n:
    raise ValueError(
        f"shard: the leading (worker) axis has size {got} but the mesh axis "
        f"{axis_name!r} has {n} devices; stack the tree with "
        f"compopt.parallel.stack(tree, {n})")
  sharding = NamedSharding(mesh, P(axis_name))
  return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)


def per_worker(fn: Callable) -> Callable:
  """Adapts a one-worker function to ``jax.shard_map`` blocks.

  Inside ``shard_map`` each device sees its block of the stacked inputs, with
  a leading axis of size 1; this drops that axis from every argument, calls
  ``fn`` and puts it back on every output.
  """

  def wrapped(*args):
    def squeeze(x):
      if jnp.ndim(x) == 0 or jnp.shape(x)[0] != 1:
        raise ValueError(
            "per_worker: every argument must carry a leading worker axis with "
            f"one worker per device; got a block of shape {jnp.shape(x)}")
      return x[0]
    out = fn(*jax.tree.map(squeeze, args))
    return jax.tree.map(lambda x: jnp.asarray(x)[None], out)

  return wrapped


def shard_map(fn: Callable, mesh: jax.sharding.Mesh, axis_name: str = "data",
              *, jit: bool = True, check_vma: bool = True) -> Callable:
  """``fn`` (the step of one worker) run on every device of a mesh axis.

  All arguments and outputs are stacked trees with a leading worker axis of
  size ``mesh.shape[axis_name]`` (see :func:`stack`); arguments are placed on
  the mesh with :func:`shard` if they are not there already.

  Args:
    fn: the per-worker step; it may use collectives over ``axis_name``.
    mesh: the device mesh, e.g. ``jax.make_mesh((8,), ("data",))``.
    axis_name: the mesh axis of the workers.
    jit: wrap in ``jax.jit`` (default).
    check_vma: passed to ``jax.shard_map`` (its check that values which vary
      over the mesh axis are typed so); on by default.

  Returns:
    A function of stacked arguments returning stacked outputs.
  """
  if axis_name not in mesh.shape:
    raise ValueError(
        f"shard_map: the mesh has no axis {axis_name!r}; its axes are "
        f"{tuple(mesh.axis_names)}")
  mapped = jax.shard_map(per_worker(fn), mesh=mesh, in_specs=P(axis_name),
                         out_specs=P(axis_name), check_vma=check_vma)
  if jit:
    mapped = jax.jit(mapped)

  def run(*args: Any):
    return mapped(*shard(args, mesh, axis_name))

  return run
