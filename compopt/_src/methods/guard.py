"""Skipping steps with non-finite inputs, agreed by every worker.

One worker's NaN must not poison the others (through the mean) nor stall them
(a worker that skips a step its peers take leaves them waiting in a
collective). :func:`skip_nonfinite` therefore

1. runs the inner step on every worker (all its collectives run everywhere,
   so no worker waits for another);
2. checks its own input, and the update and state the step computed, for
   inf/NaN: compression or the exchange can overflow where the input did not
   (a float16 leaf, a decoded value beyond the dtype's range), and a NaN
   learning rate poisons only the update and the buffers it scales, as the
   PyTorch GradScaler checks the gradients after their all-reduce;
3. agrees with the other workers through ONE 4-byte all-reduce
   (:func:`compopt._src.comm.any_worker`), so the decision is identical on
   every worker, and where it says skip keeps the inner state (error
   buffers, shifts, moments, keys, counts, bit counters) exactly as it was
   and returns a zero update. The choice is a select on the shared
   predicate, which XLA fuses into the step's own passes;
4. counts the skipped steps and, once ``max_consecutive_skips`` steps in a
   row were skipped, applies the next non-finite step as computed (the rule
   of ``optax.apply_if_finite``): a worker whose gradients are always NaN,
   or a schedule that returns NaN, would otherwise stall the run in silence;
   now the NaN reaches the parameters and every loss shows it.

So a skipped step leaves no trace except the counter of skipped steps: the
steps that follow are bit for bit those of a run in which it never happened.
The flag's all-reduce is control traffic and is not added to the payload bit
counters (:class:`compopt.CommBits`). This module sits with the methods, as
optax keeps its own guard (``apply_if_finite``) with its transforms.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from compopt._src import checks
from compopt._src import comm
from compopt._src import counters
from compopt._src import partition


class SkipNonfiniteState(NamedTuple):
  """State of :func:`skip_nonfinite` (and the last entry of a guarded chain)."""
  skipped: jax.Array  # int32, steps skipped so far (all workers agree)
  consecutive: jax.Array  # int32, skipped steps since the last applied one
  inner_state: Any  # the wrapped transformation's state (None in a chain)


#: The default bound of :func:`skip_nonfinite` and of every method's guard:
#: after this many consecutive skipped steps the next non-finite step is
#: applied. Dynamic loss scaling skips a handful in a row; a stuck run skips
#: every step.
MAX_CONSECUTIVE_SKIPS = 100


def _new_guard(inner_state):
  return SkipNonfiniteState(skipped=jnp.zeros([], jnp.int32),
                            consecutive=jnp.zeros([], jnp.int32), inner_state=inner_state)


def _check_bound(max_consecutive_skips, owner):
  if max_consecutive_skips is None:
    return None
  return checks.check_int(max_consecutive_skips, "max_consecutive_skips", owner, lo=1)


def _guarded_step(inner_update, updates, inner_state, guard, axis_name, owner,
                  params, extra_args, max_consecutive_skips):
  """One step of ``inner_update``, taken by all workers or skipped by all."""
  # Every worker computes the step (its collectives run everywhere, as they
  # must), then keeps the old state where the shared predicate says skip. A
  # select fuses into the step's own passes; a lax.cond made XLA copy every
  # buffer of the state through the branch (1.6x the step time on a CPU).
  out_updates, out_state = inner_update(updates, inner_state, params, **extra_args)
  # The input, and what the step made of it: an overflow inside compression
  # or a NaN learning rate is caught before it is applied.
  local = (comm.has_nonfinite(updates) | comm.has_nonfinite(out_updates)
           | comm.has_nonfinite(out_state))
  bad = comm.any_worker(local, axis_name, owner=owner)
  skip = bad
  if max_consecutive_skips is not None:
    # Past the bound the step is applied as computed (optax.apply_if_finite's
    # rule): the failure reaches the parameters, where every loss and metric
    # shows it. The count is the same on every worker, so all give up
    # together. (No host callback: it would stall GPUs every step and keep
    # the step from being exported.)
    skip = bad & (guard.consecutive < max_consecutive_skips)
  new_updates = jax.tree.map(lambda u: jnp.where(skip, jnp.zeros_like(u), u), out_updates)
  new_state = jax.tree.map(lambda new, old: jnp.where(skip, old, new), out_state, inner_state)
  skipped = guard.skipped + skip.astype(jnp.int32)
  consecutive = jnp.where(bad, optax.safe_increment(guard.consecutive), 0).astype(jnp.int32)
  return new_updates, new_state, guard._replace(skipped=skipped, consecutive=consecutive)


def _default_skip(fn) -> bool:
  return getattr(fn, "__qualname__", "").startswith("MultiSteps.__init__.<locals>")


def skipping_multisteps():
  """The ``optax.MultiSteps`` with a ``should_skip_update_fn`` whose ``init`` or
  ``update`` is running further up the Python call stack, or None.

  Such a wrapper calls its inner update in a ``lax.cond`` on a predicate each
  worker computes from its own gradient. Inner collectives then run on some
  workers only: under ``shard_map`` and ``pmap`` the others wait in them
  until XLA aborts (40 s on CPU); under ``vmap`` the skipping worker's
  window counter falls behind the others'. JAX exposes no public way to ask
  whether a trace is inside a ``lax.cond`` branch, so this looks for the one
  composition known to do it, by walking the call stack (at ``init`` and at
  trace time only, never in the compiled step).
  """
  frame = sys._getframe(1)  # pylint: disable=protected-access
  while frame is not None:
    if frame.f_code.co_name in ("init", "update"):
      owner = frame.f_locals.get("self")
      if isinstance(owner, optax.MultiSteps):
        fn = getattr(owner, "_should_skip_update_fn", None)
        if fn is not None and not _default_skip(fn):
          return owner
    frame = frame.f_back
  return None


def _is_apply_if_finite(code) -> bool:
  # co_qualname is Python 3.11+; before, the closure's free variable tells.
  qualname = getattr(code, "co_qualname", None)
  if qualname is not None:
    return qualname in ("apply_if_finite.<locals>.update", "apply_if_finite.<locals>.init")
  return code.co_name in ("update", "init") and "max_consecutive_errors" in code.co_freevars


def under_apply_if_finite() -> bool:
  """Whether an ``optax.apply_if_finite`` ``init`` or ``update`` is running
  further up the Python call stack (at ``init`` and trace time only).

  Its ``lax.cond`` skips on a predicate each worker computes from its own
  gradient: under ``shard_map``/``pmap`` the workers that skip leave the
  collectives the others wait in (XLA aborts after 40 s on a CPU); under
  ``vmap`` the skipping worker keeps its parameters while the others move,
  so the replicas drift apart.
  """
  frame = sys._getframe(1)  # pylint: disable=protected-access
  while frame is not None:
    if frame.f_globals.get("__name__", "").startswith("optax") and _is_apply_if_finite(
        frame.f_code):
      return True
    frame = frame.f_back
  return False


def _spmd_vmap_axes(axis_name) -> frozenset:
  """The ``spmd_axis_name`` mesh axes of the ``jax.vmap`` calls being traced,
  when ``axis_name`` is bound by one of them (JAX's axis environment has no
  public reader; an unknown JAX answers nothing)."""
  try:
    from jax._src import core as jax_core  # pylint: disable=import-outside-toplevel
    env = jax_core.get_axis_env()
    names, spmd = env.axis_names(), env.spmd_axis_names
  except Exception:  # pylint: disable=broad-except
    return frozenset()
  if axis_name not in names or not spmd or axis_name in getattr(
      env, "explicit_mesh_axis_names", frozenset()):
    return frozenset()
  return frozenset(spmd)


def check_not_spmd_vmap(axis_name, owner: str) -> None:
  """Refuses a worker axis made by ``jax.vmap(..., spmd_axis_name=...)``.

  Under such a vmap the method's collectives are batched ops that XLA's
  partitioner turns into whatever communication it picks: the numbers are
  right, but the compiled program moves dense float32 buffers while the bit
  counters report the compressed payloads."""
  spmd = _spmd_vmap_axes(axis_name)
  if spmd:
    raise ValueError(
        f"{owner}: the worker axis {axis_name!r} is a jax.vmap with "
        f"spmd_axis_name={sorted(spmd)}: XLA's partitioner then decides what "
        "crosses the wire (dense float32 gradients in practice) while the bit "
        "counters count compressed payloads. Use "
        "compopt.data_parallel(loss_fn, tx, mesh) for a jitted step over a "
        "mesh (or compopt.parallel.shard_map), where the method's own collectives "
        "move the payloads; plain jax.vmap(axis_name=...) simulates workers.")


def warn_if_unnamed_axis(axis_name, owner: str) -> None:
  """Warns when a method built without ``axis_name`` is traced inside a named
  axis (a ``jax.vmap``/``pmap``/``shard_map`` with ``axis_name``): if that
  axis holds the workers, each worker steps alone and the replicas drift
  apart. (A vmap over, say, an ensemble of models is fine: silence the
  warning with ``warnings.filterwarnings``.)"""
  if axis_name is not None:
    return
  try:
    from jax._src import core as jax_core  # pylint: disable=import-outside-toplevel
    names = tuple(jax_core.get_axis_env().axis_names())
  except Exception:  # pylint: disable=broad-except
    return
  if names:
    warnings.warn(
        f"{owner}: built with axis_name=None but traced inside the named axis "
        f"{names[-1]!r}: if that axis holds the workers, pass axis_name={names[-1]!r} "
        "(each worker would otherwise step alone and the replicas drift apart).",
        UserWarning, stacklevel=4)


def check_not_under_skipping_multisteps(owner: str) -> None:
  """Raises ValueError when a wrapper that skips per worker (a skipping
  ``optax.MultiSteps``, ``optax.apply_if_finite``) runs this transformation."""
  if under_apply_if_finite():
    raise ValueError(
        f"{owner}: optax.apply_if_finite around a transformation that communicates "
        "skips on a predicate each worker computes alone: under shard_map or pmap "
        "the workers that skip leave the collectives the others wait in (the run "
        "aborts after a timeout), under vmap the replicas drift apart. compopt's "
        "methods skip non-finite steps on every worker together already "
        "(skip_nonfinite=True, the default; max_consecutive_skips= plays "
        "max_consecutive_errors' part); wrap other transformations with "
        "compopt.skip_nonfinite(inner, axis_name=...).")
  if skipping_multisteps() is not None:
    raise ValueError(
        f"{owner}: optax.MultiSteps(..., should_skip_update_fn=...) around a "
        "transformation that communicates deadlocks: it skips on a predicate each "
        "worker computes alone, so some workers leave the collectives the others "
        "wait in. Use compopt.accumulate(inner, every_k, axis_name=...) instead: "
        "it skips non-finite micro-batches per worker without branching around "
        "a collective.")


def skip_nonfinite(
    inner: optax.GradientTransformation,
    *,
    axis_name: str | None = None,
    max_consecutive_skips: int | None = MAX_CONSECUTIVE_SKIPS,
) -> optax.GradientTransformationExtraArgs:
  r"""Wraps ``inner`` so that a step with inf/NaN on ANY worker is skipped on
  ALL workers: in its input, or in the update or state the step computed.

  Like ``optax.apply_if_finite``, but collective-aware: the workers agree on
  the decision with one 4-byte all-reduce over ``axis_name``, every worker
  runs the inner step (so its collectives run everywhere; ``apply_if_finite``
  alone deadlocks or diverges when one worker skips a step whose collectives
  the others run) and all keep the old state when any worker saw inf/NaN.
  The check covers what the step made, not only its input (as the PyTorch
  GradScaler checks gradients after their all-reduce): a compressed value
  that overflowed a float16 leaf, an exchange that overflowed, a NaN
  learning rate or schedule. On a skipped step the update is zero and
  ``inner``'s state is returned exactly as it was; ``state.skipped`` counts
  such steps and ``state.consecutive`` the non-finite steps since the last
  finite one.

  A run that skips every step is stuck, not unlucky. After
  ``max_consecutive_skips`` skipped steps in a row, the next non-finite step
  is applied as computed, on every worker together (the rule of
  ``optax.apply_if_finite(max_consecutive_errors=...)``): its inf/NaN
  reaches the parameters and the loss, where the failure shows, and
  ``state.consecutive`` tells how long it has lasted. Nothing leaves the
  compiled step (no host callback: the step stays exportable and a GPU never
  waits for the host).

  Every compopt method applies this guard already (``skip_nonfinite=True``,
  with the default bound); use this wrapper for your own compositions, or
  for another bound around a method built with ``skip_nonfinite=False``.

  Args:
    inner: the transformation to guard (it may use collectives over
      ``axis_name``).
    axis_name: the worker axis (``None``: one worker, no collective).
    max_consecutive_skips: an int >= 1, the consecutive skipped steps after
      which a non-finite step is applied (default 100), or ``None`` to skip
      forever.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`SkipNonfiniteState` nesting ``inner``'s state.

  Example:
    >>> import compopt, jax.numpy as jnp, optax
    >>> tx = compopt.skip_nonfinite(optax.sgd(0.1))
    >>> state = tx.init(jnp.zeros(2))
    >>> u, state = tx.update(jnp.array([1., jnp.nan]), state)
    >>> u, int(state.skipped)
    (Array([0., 0.], dtype=float32), 1)
  """
  owner = "skip_nonfinite"
  if not isinstance(inner, optax.GradientTransformation):
    raise TypeError(f"{owner}: `inner` must be an optax GradientTransformation; "
                    f"got {inner!r}")
  checks.check_axis_name(axis_name, owner)
  bound = _check_bound(max_consecutive_skips, owner)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    if axis_name is not None:
      check_not_under_skipping_multisteps(owner)
    return _new_guard(inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    if axis_name is not None:
      check_not_under_skipping_multisteps(owner)
      check_not_spmd_vmap(axis_name, owner)
    new_updates, inner_state, guard = _guarded_step(
        inner.update, updates, state.inner_state, state, axis_name, owner, params,
        extra_args, bound)
    return new_updates, guard._replace(inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def chain(*transforms, axis_name: str | None, skip_nonfinite: bool, owner: str):
  """``optax.chain(*transforms)``, guarded as one step by :func:`skip_nonfinite`
  (with its default bound, :data:`MAX_CONSECUTIVE_SKIPS`).

  The state is ``optax.chain``'s tuple of states with a
  :class:`SkipNonfiniteState` (``inner_state=None``) appended, so
  ``state[i]`` is still the i-th transformation's state. With
  ``skip_nonfinite=False`` this is ``optax.chain``'s state and step. Either
  way the updates must have floating-point leaves (one rule for every
  method: integer and bool gradients are refused, not cast).
  """
  checks.check_bool(skip_nonfinite, "skip_nonfinite", owner)
  inner = optax.chain(*transforms)
  if not skip_nonfinite:
    def plain_init(params):
      if axis_name is not None:
        check_not_under_skipping_multisteps(owner)
        partition.warn_if_masked(params, owner, axis_name)
      return inner.init(params)

    def plain_update(updates, state, params=None, **extra_args):
      warn_if_unnamed_axis(axis_name, owner)
      if axis_name is not None:
        check_not_under_skipping_multisteps(owner)
        check_not_spmd_vmap(axis_name, owner)
      checks.check_floating_tree(updates, owner)
      return inner.update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(plain_init, plain_update)

  def init_fn(params):
    if axis_name is not None:
      check_not_under_skipping_multisteps(owner)
      partition.warn_if_masked(params, owner, axis_name)
    return tuple(inner.init(params)) + (_new_guard(None),)

  def update_fn(updates, state, params=None, **extra_args):
    warn_if_unnamed_axis(axis_name, owner)
    if axis_name is not None:
      check_not_under_skipping_multisteps(owner)
      check_not_spmd_vmap(axis_name, owner)
    checks.check_floating_tree(updates, owner)
    *inner_state, guard = state
    new_updates, new_inner, guard = _guarded_step(
        inner.update, updates, tuple(inner_state), guard, axis_name, owner, params,
        extra_args, MAX_CONSECUTIVE_SKIPS)
    return new_updates, tuple(new_inner) + (guard,)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def skipped_steps(state: Any) -> Any:
  """The number of steps skipped for non-finite input, read from anywhere in
  an optax state: an int, or a list of ints (one per worker) for a stacked
  state. Raises ValueError if ``state`` has no guard."""
  guards = counters.find(state, SkipNonfiniteState)
  if not guards:
    raise ValueError(
        "skipped_steps: found no SkipNonfiniteState in `state`; build the method "
        "with skip_nonfinite=True (the default) or wrap it in compopt.skip_nonfinite")
  total = sum(np.asarray(g.skipped).astype(np.int64) for g in guards)
  if total.ndim == 0:
    return int(total)
  return [int(v) for v in total.reshape(-1)]
