"""Changing the number of workers of a stacked optimizer state.

A job restarted on a different number of devices must carry its optimizer
state over without losing what it learnt. Every buffer of a compopt state is
either replicated (identical on all workers: counts, keys, the mean shift h,
the server's moments and error, momentum on the aggregate) or per worker.
Replicated buffers are copied to every new worker (after checking that the
old workers did agree). Per-worker buffers follow the method's rule:

=====================  =============================  ==============================
state                  per-worker buffer              rule (what it keeps)
=====================  =============================  ==============================
ErrorFeedbackState     error e_i (EF-SGD, EF-SignSGD, e'_j = mean_i e_i: the virtual
                       COMP-AMS's workers)            iterate x − mean_i e_i of paper
                                                      004 Thm IV, so the pending
                                                      correction is applied in full
DoubleSqueezeState     worker_error δ_i (also         δ'_j = mean_i δ_i (same reason);
                       NEOLITHIC)                     the server's δ is replicated
EF21State              local g_i                      g'_j = g (shared): keeps
                                                      g = mean_j g'_j
ShiftedCompression-    shift h_i (DIANA, Rand-DIANA)  h'_j = h (mean_shift): keeps
State                                                 h = mean_j h'_j; the shifts
                                                      re-learn ∇f_j(x*) of the new
                                                      split (paper 002 Thm 3's
                                                      Lyapunov term restarts)
optax EmaState         ema m_i (Signum's worker       m'_j = mean_i m_i
                       momentum)
CommBits               bits sent / received           worker j keeps its counter; a
                                                      removed worker's counts go to
                                                      worker 0 (totals are kept)
=====================  =============================  ==============================

Stateless-per-worker methods (P-SGD, DCSGD, signSGD, scaled signSGD, GDCI)
only hold replicated buffers and reshard trivially. Anything else that
differs between workers has no rule (e.g. ``optax.MultiSteps`` in the middle
of an accumulation: each worker's partial gradient sum belongs to its own
data) and is an error, as is a "replicated" buffer on which the workers
disagree (a corrupted state). Partial participation with one probability per
worker (``sampling=[p_1, ..., p_n]``) is fixed at construction: build the
method again for the new n.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax

from compopt._src import comm
from compopt._src.methods import dcsgd as dcsgd_lib
from compopt._src.methods import error_feedback as ef_lib
from compopt._src.methods import shifted as shifted_lib

# state type -> {field: rule}; unlisted fields are replicated (or recursed into).
# rule "mean": the mean over the old workers, given to every new worker;
# ("copy", other): the replicated field ``other`` given to every new worker;
# "owned": two_phase's server errors: each owner holds the residual of its
# chunk of the flattened tree and zeros elsewhere, so the sum over the old
# workers is the whole residual; new worker j gets its new chunk of it.
RULES: dict[type, dict[str, Any]] = {
    dcsgd_lib.CompressedMeanState: {"server_error": "owned"},
    ef_lib.ErrorFeedbackState: {"error": "mean", "server_error": "owned"},
    ef_lib.DoubleSqueezeState: {"worker_error": "mean"},
    ef_lib.EF21State: {"local": ("copy", "shared")},
    shifted_lib.ShiftedCompressionState: {"shift": ("copy", "mean_shift")},
    optax.EmaState: {"ema": "mean"},
}

_OWNER = "reshard_state"


def _broadcast(x, n_new):
  return np.broadcast_to(x[None], (n_new,) + x.shape).copy()


def _mean(x, n_new):
  x = np.asarray(x)
  m = x.astype(np.float64).mean(0).astype(x.dtype)
  return _broadcast(m, n_new)


def _owned(tree, n_new):
  leaves, treedef = jax.tree.flatten(tree)
  if not leaves:
    return tree
  total = np.concatenate([np.asarray(x).astype(np.float64).sum(0).reshape(-1)
                          for x in leaves])
  chunk = max(1, -(-total.size // n_new))  # the chunks of compopt's two_phase
  owner = np.arange(total.size) // chunk
  out, offset = [], 0
  for x in leaves:
    x = np.asarray(x)
    size = int(np.prod(x.shape[1:]))
    part, own = total[offset:offset + size], owner[offset:offset + size]
    out.append(np.stack([np.where(own == j, part, 0).reshape(x.shape[1:])
                         for j in range(n_new)]).astype(x.dtype))
    offset += size
  return treedef.unflatten(out)


def _replicated(x, n_new, path):
  x = np.asarray(x)
  if x.shape[0] and not all(np.array_equal(x[0], x[i], equal_nan=True)
                            for i in range(1, x.shape[0])):
    raise ValueError(
        f"{_OWNER}: cannot reshard {path}: its value differs between workers and "
        "compopt has no rule to redistribute it (rules exist for EF errors, "
        "EF21's local estimates, DIANA shifts and Signum's momentum; see "
        "compopt.checkpoint). Replicated buffers (counts, keys, mean shifts, "
        "server moments) must agree on every worker.")
  return _broadcast(x[0], n_new)


def _bits(counter, n_new):
  def redistribute(pairs):
    values = comm._to_int(np.asarray(pairs))
    out = [0] * n_new
    for i, v in enumerate(values):
      out[i if i < n_new else 0] += v
    return np.stack([np.asarray(comm.const64(v % 2**64)) for v in out])
  return comm.CommBits(redistribute(counter.uplink), redistribute(counter.downlink))


def _walk(node, n_new, path):
  if node is None:
    return None
  if isinstance(node, comm.CommBits):
    return _bits(node, n_new)
  if hasattr(node, "shape") and hasattr(node, "dtype"):
    return _replicated(node, n_new, path)
  if isinstance(node, tuple) and hasattr(node, "_fields"):  # NamedTuple
    rules = RULES.get(type(node), {})
    out = {}
    for field in node._fields:
      value, rule = getattr(node, field), rules.get(field)
      where = f"{path}.{field}"
      if rule == "mean":
        out[field] = jax.tree.map(lambda x: _mean(x, n_new), value)
      elif rule == "owned":
        out[field] = _owned(value, n_new)
      elif isinstance(rule, tuple):
        out[field] = _walk(getattr(node, rule[1]), n_new, f"{path}.{rule[1]}")
        out[field] = jax.tree.map(lambda src, old: src.astype(np.asarray(old).dtype),
                                  out[field], value)
      else:
        out[field] = _walk(value, n_new, where)
    return type(node)(**out)
  if isinstance(node, (tuple, list)):
    return type(node)(_walk(v, n_new, f"{path}[{i}]") for i, v in enumerate(node))
  if isinstance(node, dict):
    return type(node)((k, _walk(v, n_new, f"{path}[{k!r}]")) for k, v in node.items())
  children, treedef = jax.tree.flatten(node, is_leaf=lambda x: x is not node)
  return treedef.unflatten([_walk(c, n_new, f"{path}/{i}") for i, c in enumerate(children)])


def reshard_state(state, n: int):
  """A stacked optimizer state for ``n`` workers instead of its current number.

  Args:
    state: a state stacked on a leading worker axis (as saved by a vmap,
      pmap or shard_map run; see :mod:`compopt.parallel`), on host or device.
    n: the new number of workers, an int >= 1.

  Returns:
    The state with a leading axis of size ``n`` (NumPy arrays; place it on a
    mesh with ``compopt.parallel.shard``). Per-worker buffers follow the rule
    of their method (the table in :mod:`compopt.checkpoint`); replicated ones
    are copied.

  Raises:
    ValueError: a buffer differs between workers and has no rule (or a
      replicated buffer is not replicated).

  Example:
    >>> import compopt, jax.numpy as jnp
    >>> opt = compopt.ef_sgd(0.1, compressor=compopt.compressors.top_k(1))
    >>> state8 = compopt.parallel.stack(opt.init(jnp.zeros(3)), 8)
    >>> state4 = compopt.reshard_state(state8, 4)
    >>> state4[1].error.shape
    (4, 3)
  """
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"{_OWNER}: `n` must be an int >= 1 (the new number of workers); "
                     f"got {n!r}")
  leaves = jax.tree.leaves(state)
  if not leaves:
    return state
  sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
  if None in sizes or len(sizes) != 1:
    raise ValueError(
        f"{_OWNER}: `state` must be stacked on a leading worker axis (every leaf "
        f"with the same leading size, see compopt.parallel.stack); got leading "
        f"sizes {sorted(sizes, key=str)}")
  state = jax.device_get(state)
  return _walk(state, int(n), "state")
