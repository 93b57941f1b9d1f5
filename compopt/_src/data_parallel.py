"""The data-parallel step for ``jax.jit`` users: replicated params, a sharded
batch, and the per-worker optimizer state as one global array.

Most data-parallel JAX code is a jitted step whose batch is sharded over a
``'data'`` mesh axis while the params are replicated; the compiler inserts a
dense all-reduce of the gradients. :func:`data_parallel` keeps that shape and
replaces the all-reduce with a compopt method: inside, a ``jax.shard_map``
over the mesh axis runs one worker per device (its gradient, its compressed
message, its error buffer or shift), and the method's collectives move the
compressed payloads. Outside, nothing is stacked by hand:

* params stay ordinary replicated arrays, in and out;
* the optimizer state is a pytree of global arrays with a leading worker
  axis sharded over the mesh axis (worker i's error buffer lives on device
  i), made by ``init``;
* the batch is one global array whose leading axis is split over the
  workers.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import optax

from compopt._src import counters

_OWNER = "data_parallel"


class DataParallel(NamedTuple):
  """What :func:`data_parallel` builds.

  Attributes:
    init: ``init(params) -> opt_state``: the method's state of every worker,
      global arrays with a leading worker axis sharded over the mesh axis.
      (``step`` also takes ``tx.init(params)``, one worker's state, and
      replicates it onto the workers on the first call.)
    step: ``step(params, opt_state, batch) -> (params, opt_state, metrics)``,
      jitted. ``metrics`` holds ``loss`` (the mean over workers of each
      worker's loss on its shard of the batch), ``payload_bits`` and
      ``uplink_bits`` (float32: the bits one worker sent this step, averaged
      over workers; exact totals come from :func:`compopt.comm_bits` on the
      state), ``skipped_steps`` (the steps skipped so far for non-finite
      values, as :func:`compopt.skipped_steps` counts them) and, with ``has_aux``,
      ``aux``: each worker's auxiliary output on a leading worker axis.
    lower: ``lower(params, opt_state, batch)``: the step's
      ``jax.stages.Lowered`` (``.compile().as_text()`` shows the collectives
      the step runs; ``.cost_analysis()``).
    mesh: the mesh.
    axis_name: the mesh axis of the workers.
    num_workers: the size of that axis.
  """
  init: Callable[[Any], Any]
  step: Callable[..., tuple]
  lower: Callable[..., Any]
  mesh: jax.sharding.Mesh
  axis_name: str
  num_workers: int

  def __call__(self, *args) -> tuple:
    """The object stands for the jitted step of a plain optax loop:
    ``step(params, opt_state, batch) -> (params, opt_state, metrics)``; or,
    for a Flax ``TrainState`` (anything with ``params``, ``opt_state``,
    ``step`` and ``replace``), ``step(state, batch) -> (state, metrics)``
    with ``state.step`` advanced by one."""
    if len(args) == 2:
      state, batch = args
      if not all(hasattr(state, a) for a in ("params", "opt_state", "step", "replace")):
        raise TypeError(
            "data_parallel: step(state, batch) needs a Flax TrainState-like state "
            "(params, opt_state, step, replace); otherwise call step(params, "
            f"opt_state, batch); got {type(state).__name__}")
      params, opt_state, metrics = self.step(state.params, state.opt_state, batch)
      return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics
    if len(args) != 3:
      raise TypeError("data_parallel: call step(params, opt_state, batch) or "
                      f"step(train_state, batch); got {len(args)} arguments")
    return self.step(*args)


def _skipped(state) -> jax.Array:
  from compopt._src.methods import guard  # pylint: disable=import-outside-toplevel
  guards = counters.find(state, guard.SkipNonfiniteState)
  if not guards:
    return jnp.zeros((), jnp.int32)
  return sum(g.skipped for g in guards)


def data_parallel(
    loss_fn: Callable | None,
    tx: optax.GradientTransformation,
    mesh: jax.sharding.Mesh,
    *,
    axis_name: str = "data",
    has_aux: bool = False,
    grad_fn: Callable | None = None,
    donate: bool = False,
) -> DataParallel:
  """A jitted data-parallel training step with a compopt method.

  One call turns a loss function and a method built with the same
  ``axis_name`` into ``init`` and ``step`` for replicated params and a batch
  sharded over ``mesh``'s axis ``axis_name`` (one worker per device on that
  axis)::

      mesh = jax.make_mesh((jax.device_count(),), ("data",))
      tx = compopt.ef_sgd(0.1, compressor=compopt.compressors.top_k(ratio=0.01),
                          axis_name="data")
      step = compopt.data_parallel(loss_fn, tx, mesh)
      opt_state = tx.init(params)           # or step.init(params), already placed
      for batch in batches:                 # global batches, split over workers
        params, opt_state, metrics = step(params, opt_state, batch)

  Each worker computes the gradient of ``loss_fn`` on its shard of the batch,
  the method compresses and exchanges (its collectives are the only
  communication of the step, besides a 4-byte mean of the loss and of the
  bit counts for ``metrics``), and every worker applies the same update to
  its copy of the params, so the params stay replicated: the methods decode
  the gathered payloads in the same order on every worker, so the copies are
  equal bit for bit (tested for every method). The step is a
  ``jax.shard_map`` with ``check_vma=False``, as JAX cannot type a value
  built from gathered payloads as replicated.

  Args:
    loss_fn: ``loss_fn(params, batch) -> loss`` (or ``(loss, aux)`` with
      ``has_aux``), for one worker's shard of the batch.
    tx: the optimizer: a compopt method (or an optax chain containing one)
      built with ``axis_name=axis_name``.
    mesh: the device mesh, e.g. ``jax.make_mesh((n,), ("data",))``
      (Explicit or Auto axes).
    axis_name: the mesh axis of the workers.
    has_aux: ``loss_fn`` returns ``(loss, aux)``.
    grad_fn: instead of ``loss_fn``: ``grad_fn(params, batch) -> (loss,
      grads)`` (or ``(loss, grads, aux)`` with ``has_aux``), e.g. for a
      model with mutable batch statistics.
    donate: donate the params and state buffers to the step (their old
      arrays are deleted), as memory-tight training loops do.

  Returns:
    A :class:`DataParallel` with ``init`` and ``step``.
  """
  if (loss_fn is None) == (grad_fn is None):
    raise ValueError(f"{_OWNER}: give exactly one of `loss_fn` and `grad_fn`")
  for name, fn in (("loss_fn", loss_fn), ("grad_fn", grad_fn)):
    if fn is not None and not callable(fn):
      raise TypeError(f"{_OWNER}: `{name}` must be callable; got {fn!r}")
  if not isinstance(tx, optax.GradientTransformation):
    raise TypeError(f"{_OWNER}: `tx` must be an optax GradientTransformation (a compopt "
                    f"method); got {type(tx).__name__}")
  if not isinstance(mesh, jax.sharding.Mesh):
    raise TypeError(f"{_OWNER}: `mesh` must be a jax.sharding.Mesh, e.g. "
                    f"jax.make_mesh((n,), ('data',)); got {type(mesh).__name__}")
  if axis_name not in mesh.shape:
    raise ValueError(f"{_OWNER}: the mesh has no axis {axis_name!r}; its axes are "
                     f"{tuple(mesh.axis_names)}")
  n = int(mesh.shape[axis_name])
  tx = optax.with_extra_args_support(tx)

  def gradients(params, batch):
    if grad_fn is not None:
      out = grad_fn(params, batch)
      if has_aux:
        loss, grads, aux = out
      else:
        (loss, grads), aux = out, None
      return loss, grads, aux
    if has_aux:
      (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
    else:
      (loss, grads), aux = jax.value_and_grad(loss_fn)(params, batch), None
    return loss, grads, aux

  def worker_step(params, state, batch):
    state = jax.tree.map(lambda x: x[0], state)  # this worker's block, (1, ...) -> (...)
    loss, grads, aux = gradients(params, batch)
    before = counters.comm_bits_array(state)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    moved = counters.CommBits(*(counters.sub64(a, b) for a, b in
                                zip(counters.comm_bits_array(state), before)))
    metrics = {
        "loss": jax.lax.pmean(jnp.asarray(loss, jnp.float32), axis_name),
        "payload_bits": jax.lax.pmean(counters.bits_as_float(moved.payload), axis_name),
        "uplink_bits": jax.lax.pmean(counters.bits_as_float(moved.uplink), axis_name),
        "skipped_steps": _skipped(state).astype(jnp.float32),
    }
    expand = lambda x: jnp.asarray(x)[None]
    if has_aux:
      metrics["aux"] = jax.tree.map(expand, aux)
    return params, jax.tree.map(expand, state), metrics

  metric_specs = {"loss": P(), "payload_bits": P(), "uplink_bits": P(), "skipped_steps": P()}
  if has_aux:
    metric_specs["aux"] = P(axis_name)
  mapped_step = jax.shard_map(worker_step, mesh=mesh, in_specs=(P(), P(axis_name), P(axis_name)),
                              out_specs=(P(), P(axis_name), metric_specs), check_vma=False)
  step = jax.jit(mapped_step, donate_argnums=(0, 1) if donate else ())

  def worker_init(params):
    return jax.tree.map(lambda x: jnp.asarray(x)[None], tx.init(params))

  mapped_init = jax.jit(jax.shard_map(worker_init, mesh=mesh, in_specs=P(),
                                      out_specs=P(axis_name), check_vma=False))

  replicated = NamedSharding(mesh, P())
  split = NamedSharding(mesh, P(axis_name))

  def place(tree, sharding):
    # A no-op for arrays already placed so (the params and state a step
    # returns); host arrays and single-device arrays are copied onto the mesh.
    return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)

  def init(params):
    return mapped_init(place(params, replicated))

  def placed(params, opt_state, batch):
    for leaf in jax.tree.leaves(batch):
      if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] % n:
        raise ValueError(
            f"{_OWNER}: every leaf of `batch` needs a leading axis divisible by the "
            f"{n} workers of mesh axis {axis_name!r} (each worker takes an equal "
            f"shard); got shape {jnp.shape(leaf)}")
    return place(params, replicated), place(per_worker(params, opt_state), split), place(
        batch, split)

  def per_worker(params, opt_state):
    """``opt_state`` as a state of every worker: a state of ONE worker (from
    ``tx.init(params)``, as a plain optax loop makes it) is replicated onto
    the worker axis; a state that has it already is returned as it is."""
    one = jax.eval_shape(tx.init, params)
    got = [jnp.shape(x) for x in jax.tree.leaves(opt_state)]
    single = [tuple(x.shape) for x in jax.tree.leaves(one)]
    if jax.tree.structure(opt_state) != jax.tree.structure(one):
      raise ValueError(
          f"{_OWNER}: `opt_state` is not a state of `tx` (its tree differs from "
          "tx.init(params)'s); make it with init(params) or tx.init(params)")
    if got == [(n,) + shape for shape in single]:
      return opt_state
    if got == single:
      return jax.tree.map(lambda x: jnp.broadcast_to(x, (n,) + jnp.shape(x)), opt_state)
    raise ValueError(
        f"{_OWNER}: `opt_state` has neither the shapes of one worker's state "
        f"(tx.init(params)) nor those with a leading axis of the {n} workers")

  return DataParallel(init=init, step=lambda *args: step(*placed(*args)),
                      lower=lambda *args: step.lower(*placed(*args)), mesh=mesh,
                      axis_name=axis_name, num_workers=n)
