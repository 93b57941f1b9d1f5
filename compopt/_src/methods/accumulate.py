"""Gradient accumulation that communicates once per window.

Accumulating micro-batch gradients and stepping once every k of them gives a
k times larger batch at the memory of one (Goyal et al. 2017); NEOLITHIC's
ĝ_i is exactly such a mean of R stochastic gradients (Huang et al. 2022,
Alg. 2). Around a compressed method three things matter that
``optax.MultiSteps`` does not provide:

* the exchange (encode, collectives, decode) happens once per window, not on
  every micro-step: the inner step runs in a ``lax.cond`` on the window
  counter, which every worker holds with the same value, so all workers take
  the same branch (PyTorch DDP's ``no_sync()``, Li et al. 2020);
* the bit counters (:class:`compopt.CommBits`) then count exactly what was
  sent;
* a micro-batch whose gradient holds inf or NaN on one worker is left out of
  that worker's sum (a local check, no collective), so the window is kept;
  ``optax.MultiSteps``' float accumulator keeps the NaN for good (0 · NaN is
  NaN) and every later window is skipped.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from compopt._src import checks
from compopt._src import comm
from compopt._src import counters
from compopt._src import reshard
from compopt._src.methods import guard as guard_lib

_OWNER = "accumulate"


def _same_on_every_worker(field: str):
  """Reshard rule of a buffer that only agrees between workers at a window
  boundary: copied when it does, an error in the middle of a window."""
  def rule(x, n_new):
    x = np.asarray(x)
    if x.shape[0] and not all(np.array_equal(x[0], x[i], equal_nan=True)
                              for i in range(1, x.shape[0])):
      raise ValueError(
          f"reshard_state: cannot reshard AccumulateState.{field} in the middle of an "
          "accumulation window: each worker's partial sum belongs to its own "
          "micro-batches. Reshard at a window boundary (state.mini_step == 0, i.e. "
          "after a multiple of every_k micro-steps).")
    return np.broadcast_to(x[:1], (n_new,) + x.shape[1:]).copy()
  return rule


def _per_worker_count(x, n_new):
  """Worker j keeps its count; a removed worker's count goes to worker 0."""
  x = np.asarray(x)
  out = np.zeros((n_new,) + x.shape[1:], x.dtype)
  for i, value in enumerate(x):
    out[i if i < n_new else 0] += value
  return out


@reshard.rules(acc=_same_on_every_worker("acc"),
               finite_count=_same_on_every_worker("finite_count"),
               skipped_micro=_per_worker_count)
class AccumulateState(NamedTuple):
  """State of :func:`accumulate`."""
  mini_step: jax.Array  # int32, micro-steps taken in this window (same on all workers)
  acc: optax.Updates  # this worker's sum of its finite micro-batch gradients (>= float32)
  finite_count: jax.Array  # int32, this worker's finite micro-batches in `acc`
  skipped_micro: jax.Array  # int32, this worker's non-finite micro-batches left out so far
  inner_state: Any  # the wrapped transformation's state
  guard: Any  # SkipNonfiniteState when `inner` has no guard of its own, else None


def _acc_dtype(dtype):
  dtype = jnp.dtype(dtype)
  if jnp.issubdtype(dtype, jnp.inexact):
    return jnp.promote_types(dtype, jnp.float32)
  return dtype


def accumulate(
    inner: optax.GradientTransformation,
    every_k: int,
    *,
    axis_name: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Gradient accumulation over ``every_k`` micro-batches, with one inner
  step (and one exchange) per window.

  Each worker sums its micro-batch gradients; on the last micro-step of a
  window it calls ``inner`` once with the mean

  .. math::

    \hat g_i = \frac{1}{|F_i|}\sum_{j \in F_i} g_{i,j},

  where F_i are the micro-batches of the window whose gradient is finite on
  worker i. The other micro-steps return zero updates. So ``inner``'s
  compressed exchange, its bit counters (:func:`compopt.comm_bits`) and its
  step count advance once per window. This is NEOLITHIC's ĝ_i (Huang et al.
  2022, Alg. 2: R stochastic gradients per step) and the gradient
  accumulation of PyTorch DDP's ``no_sync()`` (Li et al. 2020).

  Faults. A micro-batch with inf or NaN on a worker is left out of that
  worker's sum (its own check, no collective) and counted in
  ``state.skipped_micro``; the window is kept. A worker with no finite
  micro-batch in a window hands ``inner`` a NaN mean, which ``inner``'s guard
  skips on every worker together (compopt methods have one unless built with
  ``skip_nonfinite=False``); if ``inner``'s state holds no
  :class:`compopt.SkipNonfiniteState`, ``accumulate`` guards the window
  itself as :func:`compopt.skip_nonfinite` does, agreeing over
  ``axis_name``.

  Branching. The window counter ``state.mini_step`` starts at 0 on every
  worker and advances with every call, so it is the same on all workers and
  the ``lax.cond`` on it is taken by all alike: under ``jax.pmap`` and
  ``shard_map`` the inner step and its collectives run once per window.
  Under ``jax.vmap`` (simulated workers, stacked state) the predicate is
  batched and the cond becomes a select: both branches are computed on every
  micro-step (the inner step's work, not its state, which is selected), as
  with ``optax.MultiSteps``. On GPU and TPU a ``lax.cond`` copies its
  predicate to the host and is a fusion barrier; that costs once per
  micro-step here, little next to a forward and backward pass.

  Do not wrap a communicating transformation in
  ``optax.MultiSteps(..., should_skip_update_fn=...)``: that skip is a
  ``lax.cond`` on each worker's own predicate, so workers leave collectives
  their peers wait in (XLA aborts after 40 s on CPU). ``accumulate`` raises
  a ValueError when it finds itself inside such a wrapper; JAX offers no
  public way to detect a collective inside an arbitrary ``lax.cond``.

  Resharding (:func:`compopt.reshard_state`) works at a window boundary
  (``mini_step == 0``); in the middle of a window each worker's partial sum
  is its own and resharding raises. Checkpoints save and restore the state
  anywhere in a window.

  Args:
    inner: the transformation stepped once per window (a compopt method, or a
      chain containing one).
    every_k: micro-batches per window, an int >= 1.
    axis_name: the worker axis; used only to guard a window when ``inner``
      has no guard of its own (``None``: one worker, or ``inner`` guards).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is an
    :class:`AccumulateState`.

  Example:
    >>> import compopt, jax.numpy as jnp
    >>> opt = compopt.accumulate(compopt.psgd(0.5), every_k=3)
    >>> state = opt.init(jnp.zeros(2))
    >>> u, state = opt.update(jnp.array([4., 2.]), state)       # zero update
    >>> u, state = opt.update(jnp.array([jnp.nan, 0.]), state)  # left out
    >>> u, state = opt.update(jnp.array([2., 0.]), state)       # the window's step
    >>> u, int(state.skipped_micro), compopt.skipped_steps(state)
    (Array([-1.5, -0.5], dtype=float32), 1, 0)

  References:
    Huang, Chen, Yin, Yuan. Lower bounds and nearly optimal algorithms in
    distributed learning with communication compression, NeurIPS 2022
    (Alg. 2). https://arxiv.org/abs/2206.03665

    Li, Zhao, Varma, Salpekar, Noordhuis, Li, Paszke, Smith, Vaughan,
    Damania, Chintala. PyTorch Distributed: experiences on accelerating data
    parallel training, VLDB 2020 (gradient accumulation with ``no_sync``).
    https://arxiv.org/abs/2006.15704

    Goyal, Dollár, Girshick, Noordhuis, Wesolowski, Kyrola, Tulloch, Jia,
    He. Accurate, large minibatch SGD: training ImageNet in 1 hour, 2017.
    https://arxiv.org/abs/1706.02677
  """
  if isinstance(inner, optax.MultiSteps):
    raise TypeError(
        f"{_OWNER}: `inner` is an optax.MultiSteps; accumulate replaces it: pass the "
        "transformation MultiSteps wraps")
  if not isinstance(inner, optax.GradientTransformation):
    raise TypeError(f"{_OWNER}: `inner` must be an optax GradientTransformation; "
                    f"got {inner!r}")
  every_k = checks.check_int(every_k, "every_k", _OWNER)
  checks.check_axis_name(axis_name, _OWNER)
  inner = optax.with_extra_args_support(inner)
  guarded = guard_lib.skip_nonfinite(inner, axis_name=axis_name)

  def init_fn(params):
    guard_lib.check_not_under_skipping_multisteps(_OWNER)
    inner_state = inner.init(params)
    has_guard = bool(counters.find(inner_state, guard_lib.SkipNonfiniteState))
    return AccumulateState(
        mini_step=jnp.zeros([], jnp.int32),
        acc=jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), _acc_dtype(jnp.result_type(p))),
                         params),
        finite_count=jnp.zeros([], jnp.int32),
        skipped_micro=jnp.zeros([], jnp.int32),
        inner_state=inner_state,
        guard=None if has_guard else guard_lib.SkipNonfiniteState(
            skipped=jnp.zeros([], jnp.int32), consecutive=jnp.zeros([], jnp.int32),
            inner_state=None))

  def inner_step(mean, inner_state, guard, params, extra_args):
    if guard is None:
      updates, inner_state = inner.update(mean, inner_state, params, **extra_args)
      return updates, inner_state, None
    updates, guarded_state = guarded.update(
        mean, guard._replace(inner_state=inner_state), params, **extra_args)
    return updates, guarded_state.inner_state, guarded_state._replace(inner_state=None)

  def update_fn(updates, state, params=None, **extra_args):
    guard_lib.check_not_under_skipping_multisteps(_OWNER)
    checks.check_same_tree(updates, state.acc, _OWNER, "acc")
    finite = jnp.logical_not(comm.has_nonfinite(updates))
    # The NaN never reaches the sum: a select, not a product with 0.
    acc = jax.tree.map(lambda a, g: a + jnp.where(finite, g.astype(a.dtype), 0),
                       state.acc, updates)
    count = state.finite_count + finite.astype(jnp.int32)
    skipped = state.skipped_micro + jnp.logical_not(finite).astype(jnp.int32)

    def window_mean(acc, count):
      # No finite micro-batch: a NaN mean, which the guard skips on every worker.
      return jax.tree.map(
          lambda a, g: jnp.where(count > 0, a / jnp.maximum(count, 1).astype(a.dtype),
                                 jnp.nan).astype(g.dtype), acc, updates)

    def apply(operands):
      last, acc, count, inner_state, guard = operands
      new_updates, new_inner, new_guard = inner_step(
          window_mean(acc, count), inner_state, guard, params, extra_args)
      # Selects on `last` (true here) give both branches the same types, also
      # the same varying axes under shard_map.
      out = jax.tree.map(lambda u, g: jnp.where(last, u.astype(g.dtype), jnp.zeros_like(g)),
                         new_updates, updates)
      keep = lambda new, old: jnp.where(last, new, old).astype(old.dtype)
      return (out, jax.tree.map(keep, new_inner, inner_state),
              jax.tree.map(keep, new_guard, guard))

    def wait(operands):
      last, _, _, inner_state, guard = operands
      out = jax.tree.map(lambda g: jnp.where(last, jnp.zeros_like(g), jnp.zeros_like(g)),
                         updates)
      same = lambda old: jnp.where(last, old, old)
      return out, jax.tree.map(same, inner_state), jax.tree.map(same, guard)

    if every_k == 1:  # every micro-step ends a window: no branch
      last = jnp.ones([], jnp.bool_)
      new_updates, inner_state, guard = apply(
          (last, acc, count, state.inner_state, state.guard))
    else:
      last = state.mini_step == every_k - 1
      new_updates, inner_state, guard = jax.lax.cond(
          last, apply, wait, (last, acc, count, state.inner_state, state.guard))
    reset = lambda x: jnp.where(last, jnp.zeros_like(x), x)
    return new_updates, AccumulateState(
        mini_step=jnp.where(last, 0, state.mini_step + 1).astype(jnp.int32),
        acc=jax.tree.map(reset, acc),
        finite_count=reset(count),
        skipped_micro=skipped,
        inner_state=inner_state,
        guard=guard)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
