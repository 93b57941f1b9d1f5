"""Changing the number of workers of a stacked optimizer state.

A job restarted on a different number of devices must carry its optimizer
state over without losing what it learnt. Every buffer of a compopt state is
either replicated (identical on all workers: counts, keys, the mean shift h,
the server's moments and error, momentum on the aggregate) or per worker.
Replicated buffers are copied to every new worker (after checking that the
old workers did agree). Per-worker buffers follow the rule that their state
type declares where it is defined (:func:`rules`, in the spirit of
big_vision's registered sharding strategies); this module keeps rules only
for foreign types (optax's). A rule is one of

* :data:`MEAN`: the mean over the old workers, given to every new worker;
* ``copy_of(field)``: the replicated ``field`` of the same state, given to
  every new worker;
* a function ``(stacked value, n) -> stacked value`` for anything else
  (``two_phase``'s server error, whose layout the scheme defines).

Bit counters (:class:`compopt.CommBits`) keep their totals: worker j keeps
its counter, a removed worker's counts go to worker 0. Anything else that
differs between workers has no rule (e.g. ``optax.MultiSteps`` or
``compopt.accumulate`` in the middle of an accumulation window: each worker's
partial gradient sum belongs to its own data) and is an error, as is a "replicated" buffer on which the workers
disagree (a corrupted state).
"""

from __future__ import annotations

import collections.abc

from typing import Any, Callable

import jax
import numpy as np
import optax

from compopt._src import checks
from compopt._src import counters

#: The rule "the mean over the old workers, given to every new worker".
MEAN = "mean"

# state type -> {field: rule}, filled by rules() where each state is defined.
_RULES: dict[type, dict[str, Any]] = {}


def copy_of(field: str) -> tuple[str, str]:
  """The rule "the replicated ``field`` of the same state, given to every new
  worker" (e.g. EF21's local estimates restart from the shared one)."""
  return ("copy", field)


def rules(**field_rules) -> Callable[[type], type]:
  """Class decorator: declares how ``reshard_state`` redistributes the
  per-worker fields of a NamedTuple state; unlisted fields are replicated (or
  recursed into)."""
  def register(cls: type) -> type:
    unknown = set(field_rules) - set(cls._fields)
    if unknown:
      raise ValueError(f"rules: {cls.__name__} has no field {sorted(unknown)}")
    _RULES[cls] = dict(field_rules)
    return cls
  return register


rules(ema=MEAN)(optax.EmaState)  # Signum's worker momentum m_i

_OWNER = "reshard_state"


def _broadcast(x, n_new):
  return np.broadcast_to(x[None], (n_new,) + x.shape).copy()


def _mean(x, n_new):
  x = np.asarray(x)
  m = x.astype(np.float64).mean(0).astype(x.dtype)
  return _broadcast(m, n_new)


def _replicated(x, n_new, path):
  x = np.asarray(x)
  if x.shape[0] and not all(np.array_equal(x[0], x[i], equal_nan=True)
                            for i in range(1, x.shape[0])):
    raise ValueError(
        f"{_OWNER}: cannot reshard {path}: its value differs between workers and "
        "compopt has no rule to redistribute it (rules exist for EF errors, "
        "EF21's local estimates, DIANA shifts and Signum's momentum; see "
        "help(compopt.reshard_state)). Replicated buffers (counts, keys, mean "
        "shifts, server moments) must agree on every worker.")
  return _broadcast(x[0], n_new)


def _bits(counter, n_new):
  def redistribute(pairs):
    values = counters.to_int(np.asarray(pairs))
    out = [0] * n_new
    for i, v in enumerate(values):
      out[i if i < n_new else 0] += v
    return np.stack([np.asarray(counters.const64(v % 2**64)) for v in out])
  return counters.CommBits(*(redistribute(field) for field in counter))


def _state_type_of(mapping):
  """The registered NamedTuple state (or :class:`CommBits`) that ``mapping``
  stores by its field names, as a Flax ``nnx.State`` does (leaving out fields
  that are None): of the states whose fields hold the keys, the one with the
  fewest fields, when exactly one has that few (ErrorFeedbackState's fields
  are a subset of PowerSGDState's)."""
  keys = set(mapping.keys())
  if len(keys) < 2 or not all(isinstance(k, str) for k in keys):
    return None
  candidates = [cls for cls in list(_RULES) + [counters.CommBits]
                if keys <= set(cls._fields) and set(_RULES.get(cls, {})) <= keys
                and len(keys) >= min(2, len(cls._fields))]
  if not candidates:
    return None
  # the closest: fewest fields beyond the keys (nnx leaves out None fields)
  fewest = min(len(cls._fields) for cls in candidates)
  closest = [cls for cls in candidates if len(cls._fields) == fewest]
  return closest[0] if len(closest) == 1 else None


def _rebuild(mapping, values: dict):
  """A mapping of ``mapping``'s type holding ``values``."""
  try:
    return type(mapping)(values)
  except TypeError:
    return dict(values)


def _walk(node, n_new, path):
  if node is None:
    return None
  if isinstance(node, counters.CommBits):
    return _bits(node, n_new)
  if hasattr(node, "shape") and hasattr(node, "dtype"):
    return _replicated(node, n_new, path)
  if isinstance(node, tuple) and hasattr(node, "_fields"):  # NamedTuple
    node_rules = _RULES.get(type(node), {})
    out = {}
    for field in node._fields:
      value, rule = getattr(node, field), node_rules.get(field)
      where = f"{path}.{field}"
      if rule == MEAN:
        out[field] = jax.tree.map(lambda x: _mean(x, n_new), value)
      elif callable(rule):
        out[field] = jax.tree.map(lambda x: rule(x, n_new), value)
      elif isinstance(rule, tuple):
        out[field] = _walk(getattr(node, rule[1]), n_new, f"{path}.{rule[1]}")
        out[field] = jax.tree.map(lambda src, old: src.astype(np.asarray(old).dtype),
                                  out[field], value)
      else:
        out[field] = _walk(value, n_new, where)
    return type(node)(**out)
  if isinstance(node, (tuple, list)):
    return type(node)(_walk(v, n_new, f"{path}[{i}]") for i, v in enumerate(node))
  if isinstance(node, collections.abc.Mapping):
    cls = _state_type_of(node)
    if cls is not None:  # a NamedTuple state stored as a mapping (Flax nnx.State)
      fields = {f: (counters.unwrap(node[f]) if f in node else None) for f in cls._fields}
      walked = _walk(cls(**fields), n_new, path)
      return _rebuild(node, {k: getattr(walked, k) for k in node.keys()})
    return _rebuild(node, {k: _walk(v, n_new, f"{path}[{k!r}]") for k, v in node.items()})
  children, treedef = jax.tree.flatten(node, is_leaf=lambda x: x is not node)
  return treedef.unflatten([_walk(c, n_new, f"{path}/{i}") for i, c in enumerate(children)])


def reshard_state(state: Any, n: int):
  """A stacked optimizer state for ``n`` workers instead of its current number.

  Args:
    state: a state stacked on a leading worker axis (as saved by a vmap,
      pmap or shard_map run; see :mod:`compopt.parallel`), on host or device.
    n: the new number of workers, an int >= 1.

  Returns:
    The state with a leading axis of size ``n`` (NumPy arrays; place it on a
    mesh with ``compopt.parallel.shard``). Replicated buffers are copied;
    per-worker buffers follow the rule their state declares:

    ========================  ===========================  =========================
    state                     per-worker buffer            rule (what it keeps)
    ========================  ===========================  =========================
    ErrorFeedbackState        error e_i (EF-SGD,           e'_j = mean_i e_i: the
                              EF-SignSGD, COMP-AMS's       virtual iterate
                              workers)                     x − mean_i e_i of
                                                           Karimireddy et al. 2019
                                                           (Thm IV), so the pending
                                                           correction is applied in
                                                           full
    DoubleSqueezeEstimator-   worker_error δ_i (also       δ'_j = mean_i δ_i (same
    State                     NEOLITHIC)                   reason); the server's δ
                                                           is replicated
    EF21EstimatorState        local g_i                    g'_j = g (shared): keeps
                                                           g = mean_j g'_j
    ShiftedCompressionState   shift h_i (DIANA,            h'_j = h (mean_shift):
                              Rand-DIANA)                  keeps h = mean_j h'_j;
                                                           the shifts re-learn
                                                           ∇f_j(x*) of the new split
    DGCState                  momentum u_i and unsent      u'_j = mean_i u_i,
                              velocity v_i (DGC)           v'_j = mean_i v_i: keeps
                                                           the correction still owed
    OnebitAdamState           worker error (1-bit Adam,    mean over the old workers
                              0/1 Adam)                    (keeps the pending
                                                           correction); moments and
                                                           the server error copied
    PowerSGDState             error e_i (PowerSGD)         e'_j = mean_i e_i (as
                                                           EF-SGD); the warm-started
                                                           Q is replicated
    TwoPhaseState             two_phase's server error,    the old owners' chunks
                              the owner's chunk            summed, cut into the new
                                                           owners' chunks
    optax EmaState            ema m_i (Signum's worker     m'_j = mean_i m_i
                              momentum)
    CommBits                  bits sent / received         worker j keeps its
                                                           counter; a removed
                                                           worker's counts go to
                                                           worker 0
    ========================  ===========================  =========================

    Stateless-per-worker methods (P-SGD, DCSGD, signSGD, scaled signSGD,
    GDCI) hold only replicated buffers and reshard trivially. Partial
    participation with one probability per worker (``sampling=[p_1, ...,
    p_n]``) is fixed at construction: build the method again for the new n.

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
  n = checks.check_workers(n, _OWNER, "the new number of workers")
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
