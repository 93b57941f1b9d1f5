"""Shifted compression (Shulgin & Richtárik 2022): DCGD-SHIFT with fixed,
optimal (star), DIANA and Rand-DIANA shifts, and GDCI (compressed iterates)."""

from __future__ import annotations

from typing import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from compopt._src import checks
from compopt._src import comm
from compopt._src import counters
from compopt._src import reshard
from compopt._src import sampling as sampling_lib
from compopt._src import schemes
from compopt._src import theory
from compopt._src.compressors import base as cbase
from compopt._src.compressors import combine
from compopt._src.compressors import per_worker as cper_worker
from compopt._src.compressors import tree as ctree
from compopt._src.methods import guard
from compopt._src.typing import CompressorArg
from compopt._src.typing import OptionalCompressorArg
from compopt._src.typing import SchemeArg
from compopt._src.typing import DTypeArg

SHIFT_RULES = ("fixed", "star", "diana", "rand_diana")
INITIAL_SHIFTS = ("zero", "first_gradient", "given")


def _like(updates):
  return jax.tree.map(lambda u: jax.ShapeDtypeStruct(u.shape, u.dtype), updates)


def _unbiased_omega(compressor, updates, owner, name="compressor") -> float:
  if any(l.size for l in jax.tree.leaves(updates)):
    omega = ctree.tree_omega(compressor, _like(updates))
  else:  # nothing to compress: only whether C is unbiased matters
    omega = 0.0 if compressor.unbiased else None
  if omega is None:
    raise ValueError(
        f"{owner}: `{name}` must be unbiased (class U(ω)) for shifted compression"
        f" (Shulgin & Richtárik 2022, Alg. 1); {compressor.name} has no ω. Put a"
        " biased compressor in `shift_compressor` instead")
  return omega


def _check_fraction_or_none(value, name, owner):
  if value is None:
    return None
  return checks.check_fraction(value, name, owner)


@reshard.rules(shift=reshard.copy_of("mean_shift"))
class ShiftedCompressionState(NamedTuple):
  """State of :func:`shifted_compression`."""
  key: jax.Array  # uint32[2], split every step, identical on all workers
  shift: optax.Updates  # h_i, this worker's shift (DIANA, Rand-DIANA)
  mean_shift: optax.Updates  # h = mean_i h_i, identical on every worker
  bits: counters.CommBits
  scheme_state: Any  # the exchange scheme's state
  # whether h_i^0 and h^0 were set (bool, all workers agree); None when h_i^0 = 0
  started: jax.Array | None = None


def shifted_compression(
    compressor: CompressorArg,
    *,
    shift: str = "diana",
    shift_compressor: OptionalCompressorArg = None,
    alpha: float | None = None,
    p: float | Sequence[float] | None = None,
    initial_shift: str = "zero",
    axis_name: str | None = None,
    key: jax.Array | int = 0,
    shift_dtype: DTypeArg = None,
    scheme: SchemeArg = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The shifted gradient estimator of DCGD-SHIFT.

  Shulgin & Richtárik 2022, Alg. 1.

  Each worker sends m_i = Q_i(g_i − h_i); every worker gets the same estimator

  .. math::

    g = h + \frac1n \sum_i m_i, \qquad h = \frac1n\sum_i h_i,

  and the shifts follow one of the rules of the paper:

  * ``"fixed"`` (DCGD-FIXED, eq. 6): h_i given by the caller as the extra
    argument ``shift=`` of ``update`` (zeros if absent: plain DCGD), with their
    mean ``mean_shift=`` (compopt sends no dense shift).
  * ``"star"`` (DCGD-STAR, eq. 8): h_i = ∇f_i(x*) + C_i(g_i − ∇f_i(x*)) from the
    optimal local gradients, passed as ``optimal_shift=`` (mean
    ``mean_optimal_shift=``, zero by default since Σ_i ∇f_i(x*) = 0). The
    C_i part must reach the server, so worker i sends
    C_i(g_i − h*_i) + Q_i(g_i − h_i): the induced compressor of
    ``shift_compressor`` and ``compressor`` applied to g_i − h*_i.
  * ``"diana"`` (eq. 10, eq. 11 without C_i): with c_i = C_i(g_i − h_i) and
    m_i = Q_i(g_i − h_i − c_i), worker i sends c_i + m_i (the induced
    compressor, Shulgin & Richtárik 2022, footnote 1; just m_i = Q_i(g_i − h_i)
    when C_i ≡ 0), the estimator is g = h + mean_i(c_i + m_i), and
    h_i ← h_i + α(c_i + m_i), h ← h + α mean_i(c_i + m_i): no traffic beyond
    the messages.
  * ``"rand_diana"`` (eq. 12): h_i = ∇f_i(w_i), where with probability p_i the
    reference point w_i moves to the current x, i.e. h_i ← g_i (the gradient
    just computed). The refreshing workers send g_i − h_i uncompressed (counted
    in the bits) so that h stays the mean on every worker. The refreshing set
    is drawn from the shared key; each worker joins it independently.

  Per-worker compressors (Alg. 1's Q_1, ..., Q_n; Thms 2-4 allow each its own
  ω_i, δ_i and p_i, so that a worker on a slow link can compress more):
  ``compressor``, ``shift_compressor`` and ``p`` also take a list with one
  entry per worker of the axis (checked at the first update). Every worker
  runs the same program and picks its own entry by its axis index. On the
  wire: the collectives need one buffer size on every worker, so with
  ``"allgather"`` (and ``two_phase``) each worker's payload is zero-padded to
  the largest one, B = max_i B_i, and the up- and downlink count the padded
  (n − 1)·B bits a ring all-gather moves; the saving of the more compressed
  workers shows in ``payload`` (worker i's own B_i bits, what its own link to
  a server would carry), not on an all-gather. ``"allreduce"`` (each worker
  decodes its own message, the dense vectors are all-reduced) pads nothing
  and is the cheaper route when the payloads differ much; ``"auto"`` weighs
  the two with the padded size.

  Initial shifts (Alg. 1, line 1: h_i^0 on the workers, h^0 = mean_i h_i^0 on
  the server), for the "diana" and "rand_diana" rules:

  * ``"zero"`` (default): h_i^0 = 0, nothing to send;
  * ``"first_gradient"``: h_i^0 = ∇f_i(x^0), the gradient of the first
    update (for Rand-DIANA the reference points start at w_i^0 = x^0, so that
    h_i = ∇f_i(w_i) holds from the start, eq. 12). The first message is then
    Q_i(0) = 0 and the first step uses the exact mean gradient;
  * ``"given"``: h_i^0 from the extra argument ``initial_shift=`` of
    ``update`` (this worker's tree, shaped like the updates), read on the
    first update only (pass it to every update).

  Both non-zero starts need h^0 = mean_i h_i^0 once: one dense all-reduce of
  the shifts (in their dtype) on the first update, counted in the bits like
  any all-reduce (the HLO holds it in a conditional that runs once).

  Args:
    compressor: Q_i, an unbiased compressor (class U(ω)), or a list of them,
      one per worker.
    shift: the shift rule, one of "fixed", "star", "diana", "rand_diana".
    shift_compressor: C_i, an optional (biased, contractive) compressor for
      the "star" and "diana" rules, or a list of them, one per worker.
    alpha: DIANA's shift step in (0, 1], default
      min_i 1/(1 + ω_i(1 − δ_i)) (Thm 3's bound for every i), from ω_i of Q_i
      and δ_i of C_i on the update tree.
    p: Rand-DIANA's refresh probability p_i in (0, 1] (one for every worker,
      or a list of n), default p_i = 1/(ω_i + 1) (Thm 4's choice, per
      worker; Thm 4's rate then depends on min_i p_i = 1/(max_i ω_i + 1)).
    initial_shift: h_i^0: "zero", "first_gradient" or "given" (above).
    axis_name: the worker axis (``None``: one worker).
    key: seed or PRNG key; split every step.
    shift_dtype: dtype of h_i and h; ``None`` (default): the wider of
      float32 and each leaf's dtype (float32 for float16, bfloat16 and
      float32 leaves, float64 for float64 ones).
    scheme: how the workers exchange the messages m_i: ``None`` or
      ``"allgather"`` (default), ``"allreduce"``, ``"auto"`` or
      ``compopt.exchange.two_phase()``; h = mean_i h_i needs the exact mean,
      so no server compressor.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its output is g (chain it
    with ``optax.scale_by_learning_rate``).

  Example:
    >>> import compopt, jax, jax.numpy as jnp
    >>> C = compopt.compressors
    >>> tx = compopt.shifted_compression([C.identity(), C.rand_k(1)], axis_name="w")
    >>> g = jnp.array([[1., 2.], [3., 4.]])  # two workers
    >>> state = jax.vmap(lambda _: tx.init(jnp.zeros(2)))(jnp.arange(2))
    >>> out, state = jax.vmap(tx.update, axis_name="w")(g, state)
    >>> out.shape
    (2, 2)

  References:
    Shulgin, Richtárik. Shifted compression framework: generalizations and
    improvements, UAI 2022. https://arxiv.org/abs/2206.10452
  """
  return _shifted_compression(compressor, shift=shift, shift_compressor=shift_compressor,
                              alpha=alpha, p=p, initial_shift=initial_shift,
                              axis_name=axis_name, key=key, shift_dtype=shift_dtype,
                              scheme=scheme, owner="shifted_compression")


def _listed(value) -> bool:
  return isinstance(value, (list, tuple))


def _check_lists(lists: dict, axis_name, owner):
  """Lists given for several arguments have one length; without a worker
  axis (one worker) that length is 1."""
  lengths = {name: len(v) for name, v in lists.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError(
        f"{owner}: the per-worker lists must have one entry per worker each; got "
        + ", ".join(f"`{k}` with {v}" for k, v in lengths.items()))
  if axis_name is None and any(v != 1 for v in lengths.values()):
    name, length = next(iter(lengths.items()))
    raise ValueError(
        f"{owner}: `{name}` lists {length} entries, one per worker, but axis_name=None "
        "means one worker; pass the worker axis as axis_name")


def _shifted_compression(compressor, *, shift, shift_compressor, alpha, p, initial_shift,
                         axis_name, key, shift_dtype, scheme, owner):
  """:func:`shifted_compression`, reporting errors as ``owner`` (its aliases)."""
  checks.check_axis_name(axis_name, owner)
  checks.check_key(key, owner, seed=True)
  if shift not in SHIFT_RULES:
    raise ValueError(f"{owner}: `shift` must be one of {SHIFT_RULES}; got {shift!r}")
  # Q_i and C_i: one for all workers, or one per worker (a list).
  if _listed(compressor):
    qs = cper_worker.per_worker(compressor, owner, "compressor").compressors
    for i, q in enumerate(qs):
      if not q.unbiased:
        raise ValueError(
            f"{owner}: `compressor[{i}]` must be unbiased (class U(ω)) for shifted "
            f"compression (Shulgin & Richtárik 2022, Alg. 1); {q.name} has no ω. Put a "
            "biased compressor in `shift_compressor` instead")
  else:
    qs = (cbase.check_compressor(compressor, owner),)
  if shift_compressor is None:
    cs = (None,)
  elif _listed(shift_compressor):
    cs = cper_worker.per_worker(shift_compressor, owner, "shift_compressor").compressors
  else:
    cs = (cbase.check_compressor(shift_compressor, owner, "shift_compressor"),)
  if shift_compressor is not None and shift not in ("star", "diana"):
    raise ValueError(
        f"{owner}: `shift_compressor` is used by the 'star' and 'diana' rules "
        f"only; got shift={shift!r}")
  alpha = _check_fraction_or_none(alpha, "alpha", owner)
  if _listed(p):
    if not p:
      raise ValueError(f"{owner}: `p` must be a number in (0, 1] or a non-empty list "
                       "of them, one per worker; got []")
    p = tuple(checks.check_fraction(q, f"p[{i}]", owner) for i, q in enumerate(p))
  else:
    p = _check_fraction_or_none(p, "p", owner)
  shift_dtype = checks.resolve_dtype(shift_dtype, "shift_dtype", owner)
  scheme = schemes.resolve(scheme, owner, exact=True)
  if alpha is not None and shift != "diana":
    raise ValueError(f"{owner}: `alpha` is DIANA's step; got shift={shift!r}")
  if p is not None and shift != "rand_diana":
    raise ValueError(f"{owner}: `p` is Rand-DIANA's probability; got shift={shift!r}")
  if initial_shift not in INITIAL_SHIFTS:
    raise ValueError(
        f"{owner}: `initial_shift` must be one of {INITIAL_SHIFTS}; got {initial_shift!r}")
  if initial_shift != "zero" and shift not in ("diana", "rand_diana"):
    raise ValueError(
        f"{owner}: `initial_shift` starts the learnt shifts of the 'diana' and "
        f"'rand_diana' rules; shift={shift!r} takes h_i from update's extra arguments")
  lists = {name: v for name, v in (("compressor", compressor),
                                   ("shift_compressor", shift_compressor), ("p", p))
           if _listed(v)}
  _check_lists(lists, axis_name, owner)
  width = max([len(v) for v in lists.values()], default=1)
  qs = qs * width if len(qs) == 1 else qs
  cs = cs * width if len(cs) == 1 else cs
  # What worker i sends for g_i − h_i: Q_i, or C_i + Q_i(· − C_i) (footnote 1).
  messages = tuple(q if c is None else combine.induced(c, q) for q, c in zip(qs, cs))
  if _listed(compressor) or _listed(shift_compressor):  # one per worker
    message = cper_worker.PerWorker(messages, name="compressor" if _listed(compressor)
                                else "shift_compressor")
  else:
    message = messages[0]
  learns = initial_shift != "zero"

  def dtype_of(leaf):
    """The dtype of the shifts of ``leaf``: shift_dtype, or float32 (float64
    for a float64 leaf)."""
    return shift_dtype if shift_dtype is not None else comm.wide_dtype(leaf.dtype)

  def zeros(tree):
    return jax.tree.map(lambda l: jnp.zeros(l.shape, dtype_of(l)), tree)

  def init_fn(params):
    return ShiftedCompressionState(
        key=checks.prng_key(key, owner), shift=zeros(params), mean_shift=zeros(params),
        bits=counters.zero_bits(), scheme_state=scheme.init(params),
        started=jnp.zeros((), jnp.bool_) if learns else None)

  def extra_tree(extra_args, name, updates, default_zero):
    value = extra_args.get(name)
    if value is None:
      if not default_zero:
        rule = (f"initial_shift={initial_shift!r}" if name == "initial_shift"
                else f"shift={shift!r}")
        raise ValueError(
            f"{owner}: {rule} needs the extra argument `{name}=` of update (a tree "
            "shaped like the updates)")
      return zeros(updates)
    checks.check_same_tree(value, updates, owner, name)
    return jax.tree.map(lambda v, u: jnp.asarray(v, dtype_of(u)), value, updates)

  def per_worker_constants(updates):
    """ω_i of Q_i and δ_i of C_i (0 without C_i) on the update tree, one per
    worker (one in all without lists)."""
    known = {}  # id(compressor) -> its constant (a list repeats one object)
    omegas, deltas = [], []
    for i, (q, c) in enumerate(zip(qs, cs)):
      name = f"compressor[{i}]" if _listed(compressor) else "compressor"
      if id(q) not in known:
        known[id(q)] = _unbiased_omega(q, updates, owner, name)
      if c is not None and id(c) not in known:
        known[id(c)] = ctree.tree_delta(c, _like(updates)) or 0.0
      omegas.append(known[id(q)])
      deltas.append(0.0 if c is None else known[id(c)])
    return omegas, deltas

  def update_fn(updates, state, params=None, **extra_args):
    del params
    checks.check_same_tree(updates, state.shift, owner, "shift")
    n, _ = comm.axis_info(axis_name, owner)
    for name, value in lists.items():
      if len(value) != n:
        raise ValueError(
            f"{owner}: `{name}` lists {len(value)} entries, one per worker, but the "
            f"worker axis {axis_name!r} has {n} workers")
    omegas, deltas = per_worker_constants(updates)
    next_key, step_key, refresh_key = jax.random.split(state.key, 3)
    g32 = jax.tree.map(lambda g: g.astype(dtype_of(g)), updates)
    shift_i, mean_shift = state.shift, state.mean_shift
    sent = counters.zero_bits()
    if shift == "fixed":
      shift_i = extra_tree(extra_args, "shift", updates, default_zero=True)
      mean_shift = extra_tree(extra_args, "mean_shift", updates,
                              default_zero="shift" not in extra_args)
    elif shift == "star":
      shift_i = extra_tree(extra_args, "optimal_shift", updates, default_zero=False)
      mean_shift = extra_tree(extra_args, "mean_optimal_shift", updates, default_zero=True)
    elif learns:
      # Alg. 1 line 1-2: h_i^0 on the first update, h^0 = mean_i h_i^0.
      first = jnp.logical_not(state.started)  # the same on every worker
      h0 = (g32 if initial_shift == "first_gradient"
            else extra_tree(extra_args, "initial_shift", updates, default_zero=False))
      shift_i = jax.tree.map(lambda a, b: jnp.where(first, a, b), h0, shift_i)

      def dense_mean():  # one dense all-reduce, on the first update only
        out = comm.exchange(combine.identity(), h0, step_key, axis_name,
                            scheme=schemes.AllGather(), state=None, owner=owner)
        return jax.tree.map(lambda m, h: m.astype(h.dtype), out.mean, mean_shift), out.sent

      # Both branches return values that are the same on every worker (no
      # per-worker state passes through the cond); the choice is made after.
      h0_mean, sent = lax.cond(first, dense_mean,
                               lambda: (zeros(mean_shift), counters.zero_bits()))
      mean_shift = jax.tree.map(lambda a, b: jnp.where(first, a, b), h0_mean, mean_shift)
    # m_i: the message for g_i − h_i (Alg. 1 line 7), sent in the update dtype.
    diff = jax.tree.map(lambda g, h, u: (g - h).astype(u.dtype), g32, shift_i, updates)
    out = comm.exchange(message, diff, step_key, axis_name, scheme=scheme,
                        state=state.scheme_state, owner=owner, return_own=True)
    mean_m, own_m = out.mean, out.own
    sent = counters.add_bits(sent, out.sent)
    # g = h + m   (Alg. 1 lines 11-12)
    estimate = jax.tree.map(lambda h, m: h + m.astype(h.dtype), mean_shift, mean_m)
    new_shift, new_mean = state.shift, state.mean_shift
    if shift == "diana":
      # α ≤ 1/(1 + ω_i(1 − δ_i)) for every i (Thm 3): the smallest bound
      a = alpha if alpha is not None else min(
          theory.diana_alpha(o, d) for o, d in zip(omegas, deltas))
      # h_i ← h_i + α(c_i + m_i);  h ← h + α mean_i(c_i + m_i)   (eq. 10)
      new_shift = jax.tree.map(lambda h, m: h + a * m.astype(h.dtype), shift_i, own_m)
      new_mean = jax.tree.map(lambda h, m: h + a * m.astype(h.dtype), mean_shift, mean_m)
    elif shift == "rand_diana":
      if p is None:  # p_i = 1/(ω_i + 1) (Thm 4's choice, per worker)
        probs = [theory.rand_diana_p(o) for o in omegas]
      else:
        probs = list(p) if _listed(p) else [p]
      probs = probs * n if len(probs) == 1 else probs
      refresh = jax.tree.map(lambda g, h: g - h, g32, shift_i)  # ∇f_i(x^k) − h_i
      mean_r, own_r, sent_r, _ = comm.member_mean(
          refresh, refresh_key, axis_name, sampling_lib.independent(probs), owner=owner)
      # w_i ← x^k with probability p_i:  h_i ← ∇f_i(x^k);  h ← h + mean_i (new − old)
      # where, not h + (g − h): the refreshed shift is g_i exactly.
      new_shift = jax.tree.map(lambda h, g, r: jnp.where(r != 0, g, h), shift_i, g32, own_r)
      new_mean = jax.tree.map(lambda h, r: h + r.astype(h.dtype), mean_shift, mean_r)
      sent = counters.add_bits(sent, sent_r)
    g = jax.tree.map(lambda e, u: e.astype(u.dtype), estimate, updates)
    return g, ShiftedCompressionState(
        key=next_key, shift=new_shift, mean_shift=new_mean,
        bits=counters.add_bits(state.bits, sent), scheme_state=out.state,
        started=jnp.ones((), jnp.bool_) if learns else None)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def dcgd_shift(
    learning_rate: optax.ScalarOrSchedule,
    *,
    compressor: CompressorArg,
    shift: str = "diana",
    shift_compressor: OptionalCompressorArg = None,
    alpha: float | None = None,
    p: float | Sequence[float] | None = None,
    initial_shift: str = "zero",
    axis_name: str | None = None,
    key: jax.Array | int = 0,
    shift_dtype: DTypeArg = None,
    scheme: SchemeArg = None,
    skip_nonfinite: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""DCGD-SHIFT: x ← x − γ(h + mean_i Q(g_i − h_i)).

  Shulgin & Richtárik 2022, Alg. 1.

  .. math::

    m_i^k = \mathcal{Q}(\nabla f_i(x^k) - h_i^k), \quad
    g^k = h^k + \frac1n\sum_i m_i^k, \quad x^{k+1} = x^k - \gamma g^k,

  with the shift rule ``shift`` ("fixed", "star", "diana", "rand_diana"; see
  :func:`shifted_compression`). The theory's step sizes are in
  :mod:`compopt.theory` (``dcgd_fixed_step_size``, ``dcgd_star_step_size``,
  ``diana_step_size``, ``rand_diana_step_size``).

  Args:
    learning_rate: γ, a float or an optax schedule.
    compressor: Q_i, unbiased, or a list of them, one per worker (see
      :func:`shifted_compression` for what crosses the wire).
    shift: the shift rule.
    shift_compressor: C_i for "star" and "diana" (optional, contractive), or
      a list of them, one per worker.
    alpha: DIANA's α (default min_i 1/(1 + ω_i(1 − δ_i))).
    p: Rand-DIANA's p_i, one number or a list of n (default 1/(ω_i + 1)).
    initial_shift: h_i^0 for "diana" and "rand_diana": "zero" (default),
      "first_gradient" or "given" (see :func:`shifted_compression`).
    axis_name: the worker axis (``None``: one worker).
    key: seed or PRNG key; split every step.
    shift_dtype: dtype of the shifts; ``None`` (default): float32, float64
      for float64 leaves.
    scheme: how the workers exchange the messages (see
      :func:`shifted_compression`).
    skip_nonfinite: skip the step on every worker when any worker's input,
      or the update or state the step computed from it, holds inf/NaN,
      leaving the state as it was; after 100 skipped in a row, a non-finite
      step is applied, so that a stuck run shows (see
      :func:`compopt.skip_nonfinite`; one 4-byte all-reduce per step).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import compopt, jax.numpy as jnp
    >>> opt = compopt.dcgd_shift(0.1, compressor=compopt.compressors.rand_k(1),
    ...                          shift="diana")
    >>> state = opt.init(jnp.zeros(4))
    >>> updates, state = opt.update(jnp.ones(4), state)
    >>> updates.shape
    (4,)

  References:
    Shulgin, Richtárik. Shifted compression framework: generalizations and
    improvements, UAI 2022. https://arxiv.org/abs/2206.10452
  """
  return _dcgd_shift(learning_rate, compressor=compressor, shift=shift,
                     shift_compressor=shift_compressor, alpha=alpha, p=p,
                     initial_shift=initial_shift, axis_name=axis_name, key=key,
                     shift_dtype=shift_dtype, scheme=scheme, skip_nonfinite=skip_nonfinite,
                     owner="dcgd_shift")


def _dcgd_shift(learning_rate, *, compressor, shift, shift_compressor, alpha, p,
                initial_shift, axis_name, key, shift_dtype, scheme, skip_nonfinite, owner):
  """:func:`dcgd_shift`, reporting errors as ``owner`` (its aliases)."""
  checks.check_learning_rate(learning_rate, owner)
  return guard.chain(
      _shifted_compression(compressor, shift=shift, shift_compressor=shift_compressor,
                           alpha=alpha, p=p, initial_shift=initial_shift,
                           axis_name=axis_name, key=key, shift_dtype=shift_dtype,
                           scheme=scheme, owner=owner),
      optax.scale_by_learning_rate(learning_rate),
      axis_name=axis_name, skip_nonfinite=skip_nonfinite, owner=owner)


def diana(
    learning_rate: optax.ScalarOrSchedule,
    *,
    compressor: CompressorArg,
    shift_compressor: OptionalCompressorArg = None,
    alpha: float | None = None,
    initial_shift: str = "zero",
    axis_name: str | None = None,
    key: jax.Array | int = 0,
    shift_dtype: DTypeArg = None,
    scheme: SchemeArg = None,
    skip_nonfinite: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""DIANA (Mishchenko et al., 2019), generalized (Shulgin & Richtárik 2022, eq. 10).

  .. math::

    c_i = \mathcal{C}_i(g_i - h_i),\ m_i = \mathcal{Q}(g_i - h_i - c_i),\quad
    g = h + \tfrac1n\textstyle\sum_i (c_i + m_i),\quad x \leftarrow x - \gamma g,

    h_i \leftarrow h_i + \alpha (c_i + m_i), \quad
    h \leftarrow h + \alpha\,\tfrac1n\textstyle\sum_i (c_i + m_i).

  Without ``shift_compressor`` (C_i ≡ 0) this is the original DIANA (eq. 11).
  α defaults to 1/(1 + ω(1 − δ)) (Thm 3); with per-worker Q_i and C_i (lists)
  to min_i 1/(1 + ω_i(1 − δ_i)), Thm 3's bound for every worker. The shifts learn ∇f_i(x*), so DIANA
  converges linearly to the exact optimum where DCGD stalls at a
  neighbourhood of size ∝ Σ_i ‖∇f_i(x*)‖² (Thm 1).

  Args:
    learning_rate: γ, a float or an optax schedule (Thm 3 bounds it:
      ``compopt.theory.diana_step_size``).
    compressor: Q_i, unbiased (U(ω_i)): one for all workers, or a list with
      one per worker (see :func:`shifted_compression` for what crosses the
      wire).
    shift_compressor: C_i, optional contractive (B(δ_i)) compressor, or a
      list with one per worker.
    alpha: the shift step α.
    initial_shift: h_i^0: "zero" (default), "first_gradient" (∇f_i(x^0),
      one dense all-reduce for h^0 on the first update) or "given" (the extra
      argument ``initial_shift=`` of update); see :func:`shifted_compression`.
    axis_name: the worker axis (``None``: one worker).
    key: seed or PRNG key; split every step.
    shift_dtype: dtype of the shifts; ``None`` (default): float32, float64
      for float64 leaves.
    scheme: how the workers exchange the messages (see
      :func:`shifted_compression`).
    skip_nonfinite: skip the step on every worker when any worker's input,
      or the update or state the step computed from it, holds inf/NaN,
      leaving the state as it was; after 100 skipped in a row, a non-finite
      step is applied, so that a stuck run shows (see
      :func:`compopt.skip_nonfinite`; one 4-byte all-reduce per step).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import compopt, jax.numpy as jnp
    >>> opt = compopt.diana(0.1, compressor=compopt.compressors.rand_k(2))
    >>> state = opt.init(jnp.zeros(4))
    >>> updates, state = opt.update(jnp.ones(4), state)

  References:
    Mishchenko, Gorbunov, Takáč, Richtárik. Distributed learning with
    compressed gradient differences, 2019. https://arxiv.org/abs/1901.09269

    Shulgin, Richtárik. Shifted compression framework: generalizations and
    improvements, UAI 2022 (Thm 3). https://arxiv.org/abs/2206.10452
  """
  return _dcgd_shift(learning_rate, compressor=compressor, shift="diana",
                     shift_compressor=shift_compressor, alpha=alpha, p=None,
                     initial_shift=initial_shift, axis_name=axis_name, key=key, shift_dtype=shift_dtype, scheme=scheme,
                     skip_nonfinite=skip_nonfinite, owner="diana")


def rand_diana(
    learning_rate: optax.ScalarOrSchedule,
    *,
    compressor: CompressorArg,
    p: float | Sequence[float] | None = None,
    initial_shift: str = "zero",
    axis_name: str | None = None,
    key: jax.Array | int = 0,
    shift_dtype: DTypeArg = None,
    scheme: SchemeArg = None,
    skip_nonfinite: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""Rand-DIANA (Shulgin & Richtárik 2022, eq. 12 and Thm 4).

  .. math::

    g = h + \tfrac1n\textstyle\sum_i \mathcal{Q}_i(g_i - h_i),\quad
    x \leftarrow x - \gamma g,\quad
    h_i \leftarrow \begin{cases} \nabla f_i(x) & \text{w.p. } p_i\\ h_i &
    \text{w.p. } 1 - p_i\end{cases}

  The refreshing workers send their new shift uncompressed (on average p_i
  dense vectors per worker and step, counted in the bits). p_i defaults to
  1/(ω_i + 1) (Thm 4's choice, which matches DIANA's complexity).

  Args:
    learning_rate: γ, a float or an optax schedule
      (``compopt.theory.rand_diana_step_size``).
    compressor: Q_i, unbiased (U(ω_i)): one for all workers, or a list with
      one per worker (see :func:`shifted_compression` for what crosses the
      wire).
    p: refresh probability p_i in (0, 1], one for all workers or a list with
      one per worker; default 1/(ω_i + 1).
    initial_shift: h_i^0: "zero" (default), "first_gradient" (∇f_i(x^0),
      i.e. the reference points start at w_i^0 = x^0 as eq. 12 reads; one
      dense all-reduce for h^0 on the first update) or "given" (the extra
      argument ``initial_shift=`` of update); see :func:`shifted_compression`.
    axis_name: the worker axis (``None``: one worker).
    key: seed or PRNG key; split every step.
    shift_dtype: dtype of the shifts; ``None`` (default): float32, float64
      for float64 leaves.
    scheme: how the workers exchange the messages (see
      :func:`shifted_compression`).
    skip_nonfinite: skip the step on every worker when any worker's input,
      or the update or state the step computed from it, holds inf/NaN,
      leaving the state as it was; after 100 skipped in a row, a non-finite
      step is applied, so that a stuck run shows (see
      :func:`compopt.skip_nonfinite`; one 4-byte all-reduce per step).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import compopt, jax.numpy as jnp
    >>> opt = compopt.rand_diana(0.1, compressor=compopt.compressors.rand_k(2))
    >>> state = opt.init(jnp.zeros(4))
    >>> updates, state = opt.update(jnp.ones(4), state)

  References:
    Shulgin, Richtárik. Shifted compression framework: generalizations and
    improvements, UAI 2022 (eq. 12, Thm 4). https://arxiv.org/abs/2206.10452
  """
  return _dcgd_shift(learning_rate, compressor=compressor, shift="rand_diana",
                     shift_compressor=None, alpha=None, p=p, initial_shift=initial_shift,
                     axis_name=axis_name, key=key,
                     shift_dtype=shift_dtype, scheme=scheme, skip_nonfinite=skip_nonfinite,
                     owner="rand_diana")


class GdciState(NamedTuple):
  """State of :func:`gdci`."""
  count: jax.Array  # int32, the step count k, read by a schedule γ_k
  key: jax.Array
  bits: counters.CommBits
  scheme_state: Any  # the exchange scheme's state


def gdci(
    learning_rate: optax.ScalarOrSchedule,
    *,
    compressor: CompressorArg,
    eta: float,
    axis_name: str | None = None,
    key: jax.Array | int = 0,
    scheme: SchemeArg = None,
    skip_nonfinite: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""Gradient descent with compressed iterates (GDCI).

  Shulgin & Richtárik 2022, §3.3, eq. 13.

  .. math::

    x^{k+1} = (1 - \eta) x^k + \eta\,\frac1n \sum_i \mathcal{Q}(x^k - \gamma \nabla f_i(x^k)).

  Workers compress their local iterates x − γ∇f_i(x), not gradients. As an
  optax update this is η(mean_i Q(x − γ g_i) − x), so ``update`` needs
  ``params``. Thm 5 gives η and γ (``compopt.theory.gdci_eta``,
  ``compopt.theory.gdci_step_size``).

  Args:
    learning_rate: γ, a float or an optax schedule.
    compressor: Q, unbiased (U(ω)).
    eta: η in (0, 1].
    axis_name: the worker axis (``None``: one worker).
    key: seed or PRNG key; split every step.
    scheme: how the workers exchange the compressed iterates: ``None`` or
      ``"allgather"`` (default), ``"allreduce"``, ``"auto"``, or a
      :mod:`compopt.exchange` scheme such as ``two_phase()``.
    skip_nonfinite: skip the step on every worker when any worker's input,
      or the update or state the step computed from it, holds inf/NaN,
      leaving the state as it was; after 100 skipped in a row, a non-finite
      step is applied, so that a stuck run shows (see
      :func:`compopt.skip_nonfinite`; one 4-byte all-reduce per step).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import compopt, jax.numpy as jnp
    >>> opt = compopt.gdci(0.1, compressor=compopt.compressors.natural(), eta=0.5)
    >>> params = jnp.ones(3)
    >>> state = opt.init(params)
    >>> updates, state = opt.update(2 * params, state, params)

  References:
    Khaled, Richtárik. Gradient descent with compressed iterates, 2019.
    https://arxiv.org/abs/1909.04716

    Shulgin, Richtárik. Shifted compression framework: generalizations and
    improvements, UAI 2022 (eq. 13, Thm 5). https://arxiv.org/abs/2206.10452
  """
  owner = "gdci"
  cbase.check_compressor(compressor, owner)
  checks.check_axis_name(axis_name, owner)
  eta = checks.check_fraction(eta, "eta", owner)
  checks.check_learning_rate(learning_rate, owner)
  checks.check_key(key, owner, seed=True)
  scheme = schemes.resolve(scheme, owner)
  schedule = learning_rate if callable(learning_rate) else None

  def init_fn(params):
    return GdciState(count=jnp.zeros([], jnp.int32), key=checks.prng_key(key, owner),
                     bits=counters.zero_bits(), scheme_state=scheme.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(f"{owner}: compresses the iterates, so update needs `params`")
    checks.check_same_tree(updates, params, owner, "params")
    _unbiased_omega(compressor, updates, owner)
    next_key, step_key = jax.random.split(state.key)
    gamma = schedule(state.count) if schedule is not None else learning_rate
    # z_i = x − γ ∇f_i(x), compressed and averaged
    z = jax.tree.map(lambda x, g: (x.astype(jnp.float32) - gamma * g.astype(jnp.float32)
                                   ).astype(g.dtype), params, updates)
    out = comm.exchange(compressor, z, step_key, axis_name, scheme=scheme,
                        state=state.scheme_state, owner=owner)
    # x⁺ − x = η(mean_i Q(z_i) − x)
    step = jax.tree.map(lambda m, x, g: (eta * (m - x.astype(jnp.float32))).astype(g.dtype),
                        out.mean, params, updates)
    return step, GdciState(count=optax.safe_increment(state.count), key=next_key,
                           bits=counters.add_bits(state.bits, out.sent),
                           scheme_state=out.state)

  return guard.chain(optax.GradientTransformationExtraArgs(init_fn, update_fn),
                      axis_name=axis_name, skip_nonfinite=skip_nonfinite, owner=owner)
