"""Compressing some leaves and sending others dense, without letting any of
them drift apart across workers.

DDP and DeepSpeed compress only large buckets: biases and norms are small and
cheap to send dense. With ``optax.multi_transform`` a user may route them to a
plain optax transform, which does not average over the worker axis: those
leaves then differ from worker to worker, silently. :func:`partition_by_size`
routes by size and checks that every part communicates; a compopt method
that finds itself under ``optax.masked``/``optax.multi_transform`` without it
warns at ``init`` (:func:`warn_if_masked`).
"""

from __future__ import annotations

import contextvars
import warnings

import jax
import numpy as np
import optax

from compopt._src import checks
from compopt._src import counters

_OWNER = "partition_by_size"
_CHECKED = contextvars.ContextVar("compopt_partition_checked", default=False)


def warn_if_masked(params, owner: str, axis_name) -> None:
  """Warns when ``params`` holds ``optax.MaskedNode`` leaves (the method runs
  under ``optax.masked`` or ``optax.multi_transform``) outside
  :func:`partition_by_size`: the other leaves go through another
  transformation, which must average over ``axis_name`` too, or they drift
  apart across workers."""
  if axis_name is None or _CHECKED.get():
    return
  leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, optax.MaskedNode))
  if any(isinstance(leaf, optax.MaskedNode) for leaf in leaves):
    warnings.warn(
        f"{owner}: some leaves are masked out (optax.masked or optax.multi_transform): "
        "the transformation that updates them must average over the worker axis "
        f"{axis_name!r} too (e.g. compopt.psgd), or those leaves drift apart across "
        "workers. compopt.partition_by_size(compressed, dense, min_size=...) routes "
        "leaves by size and checks that every part communicates.", UserWarning,
        stacklevel=3)


def _communicates(tx, params) -> bool:
  state = jax.eval_shape(tx.init, params)
  return bool(counters.find(state, counters.CommBits))


def partition_by_size(compressed: optax.GradientTransformation,
                      dense: optax.GradientTransformation, *,
                      min_size: int) -> optax.GradientTransformationExtraArgs:
  """Leaves of at least ``min_size`` elements through ``compressed``, the
  others through ``dense``; both must exchange over the worker axis.

  Small leaves (biases, norm scales) cost little to send dense, and their
  compression error weighs more: DDP's and DeepSpeed's compression hooks
  leave them uncompressed. Here each part is a compopt method with the same
  ``axis_name`` (``dense`` typically ``compopt.psgd``), so every leaf is
  averaged over the workers and none drifts; a part that does not
  communicate (a plain optax transformation) is refused at ``init``. Bits
  add up over both parts (:func:`compopt.comm_bits`).

  Build both parts with ``skip_nonfinite=False`` and wrap the result in
  ``compopt.skip_nonfinite(..., axis_name=...)`` to skip a non-finite step
  as one (each part's own guard would skip its leaves only).

  Example:
    >>> import compopt, jax.numpy as jnp
    >>> tx = compopt.partition_by_size(
    ...     compopt.ef_sgd(0.1, compressor=compopt.compressors.top_k(ratio=0.01)),
    ...     compopt.psgd(0.1), min_size=1024)
    >>> state = tx.init({"kernel": jnp.zeros((64, 64)), "bias": jnp.zeros(64)})

  Args:
    compressed: the method for the large leaves.
    dense: the method for the small ones, e.g. ``compopt.psgd(lr,
      axis_name=...)``.
    min_size: the smallest leaf (in elements) sent compressed, an int >= 1.

  Returns:
    An ``optax.multi_transform`` of the two, with labels ``"compressed"``
    and ``"dense"``.
  """
  min_size = checks.check_int(min_size, "min_size", _OWNER, lo=1)
  for name, tx in (("compressed", compressed), ("dense", dense)):
    if not isinstance(tx, optax.GradientTransformation):
      raise TypeError(f"{_OWNER}: `{name}` must be an optax GradientTransformation; "
                      f"got {type(tx).__name__}")

  def labels(params):
    return jax.tree.map(lambda p: "compressed" if np.size(p) >= min_size else "dense", params)

  inner = optax.multi_transform({"compressed": compressed, "dense": dense}, labels)

  def init_fn(params):
    token = _CHECKED.set(True)
    try:
      for name, tx in (("compressed", compressed), ("dense", dense)):
        if not _communicates(tx, params):
          raise ValueError(
              f"{_OWNER}: `{name}` does not exchange over a worker axis (its state has "
              "no compopt bit counter): its leaves would drift apart across workers. "
              "Use a compopt method with the same axis_name, e.g. compopt.psgd(lr, "
              "axis_name=...) for the dense part")
      return inner.init(params)
    finally:
      _CHECKED.reset(token)

  def update_fn(updates, state, params=None, **extra_args):
    token = _CHECKED.set(True)
    try:
      return inner.update(updates, state, params, **extra_args)
    finally:
      _CHECKED.reset(token)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
