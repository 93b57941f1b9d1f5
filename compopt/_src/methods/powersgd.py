"""PowerSGD (Vogels, Karimireddy & Jaggi 2019): rank-r gradient compression by
one step of subspace iteration, with error feedback and a warm-started Q."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from compopt._src import checks
from compopt._src import comm
from compopt._src import counters
from compopt._src import reshard
from compopt._src import schemes
from compopt._src.compressors import combine
from compopt._src.methods import dcsgd as dcsgd_lib
from compopt._src.methods import guard
from compopt._src.typing import SchemeArg

#: P and Q (and the leaves sent dense) cross the wire through the identity
#: compressor: a linear payload, so the communication layer all-reduces
#: exactly those values, summed in float32 (float64 for float64 leaves).
_IDENTITY = combine.identity()


@reshard.rules(error=reshard.MEAN)
class PowerSGDState(NamedTuple):
  """State of :func:`powersgd_mean` (and of :func:`powersgd`'s first entry).

  ``q`` and ``error`` are shaped like the params, with None for the leaves
  sent dense (no Q, no error kept), and ``error`` is all None with
  ``use_error_feedback=False``.
  """
  count: jax.Array  # int32, steps taken (warm-up steps included)
  key: jax.Array  # uint32[2], split every step, identical on all workers
  q: optax.Updates  # Q ∈ R^{m×r} per compressed leaf, identical on all workers
  error: optax.Updates  # e_w, this worker's residual, shaped like the leaf
  bits: counters.CommBits
  scheme_state: Any  # the exchange scheme's states: (warm-up, P, Q)


class _Leaf(NamedTuple):
  """How one leaf travels: as the matrix M ∈ R^{n×m} at rank r, or dense (r = 0)."""
  n: int  # rows of M: the output features, the leaf's last axis
  m: int  # columns of M: all the other axes
  r: int  # min(n, m, rank) if compressed, else 0


def _plan(shapes, rank: int, min_compression_rate: float) -> list[_Leaf]:
  """The DDP hook's rule (``_should_compress``), leaf by leaf: a leaf of
  shape (d_1, ..., d_k, n) with k >= 1 is the n×m matrix, m = d_1⋯d_k, and is
  compressed at rank r = min(n, m, rank) iff
  (n + m)·r·min_compression_rate < n·m; vectors and scalars go dense."""
  plan = []
  for shape in shapes:
    shape = tuple(shape)
    if len(shape) < 2:
      plan.append(_Leaf(0, 0, 0))
      continue
    n, m = int(shape[-1]), math.prod(shape[:-1])
    r = min(n, m, rank)
    if r > 0 and (n + m) * r * min_compression_rate < n * m:
      plan.append(_Leaf(n, m, r))
    else:
      plan.append(_Leaf(0, 0, 0))
  return plan


def _wide(dtype) -> np.dtype:
  return comm.wide_dtype(dtype)


def _entries(tree) -> list:
  """The entries of a params-shaped state buffer, None for leaves that have
  none, in the order of the params' leaves."""
  return jax.tree.leaves(tree, is_leaf=lambda x: x is None)


def _static_number(value, name, owner, kind):
  """A structural number given as a Python number or, through
  ``optax.inject_hyperparams``, as a concrete scalar array; a traced one
  cannot decide which leaves are compressed."""
  if checks.is_traced(value):
    raise TypeError(
        f"{owner}: `{name}` decides the shapes of what crosses the wire, so it must "
        f"be a Python {kind}, not a traced value; under optax.inject_hyperparams pass "
        f"static_args=('{name}', ...) (compopt.inject_hyperparams keeps ints static)")
  if getattr(value, "shape", None) == () and hasattr(value, "dtype") and not isinstance(
      value, (np.generic,)):
    value = value.item()
  return value


def _check_args(rank, start_iter, min_compression_rate, use_error_feedback, warm_start,
                orthogonalization_epsilon, owner):
  rank = checks.check_int(_static_number(rank, "rank", owner, "int"), "rank", owner, lo=1)
  start_iter = checks.check_int(_static_number(start_iter, "start_iter", owner, "int"),
                                "start_iter", owner, lo=0)
  rate = _static_number(min_compression_rate, "min_compression_rate", owner, "number")
  rate = checks.check_real(rate, "min_compression_rate", owner, lo=0.0)
  checks.check_bool(use_error_feedback, "use_error_feedback", owner)
  checks.check_bool(warm_start, "warm_start", owner)
  checks.check_interval(orthogonalization_epsilon, "orthogonalization_epsilon", owner,
                        0.0, float("inf"), high_open=True)
  return rank, start_iter, rate


def _orthogonalize(a: jax.Array, epsilon) -> jax.Array:
  """Gram-Schmidt on the columns of a (k×r), as the hook's
  ``_orthogonalize_gram_schmidt``: column i is divided by its norm plus ε,
  then projected out of the columns after it. A column of norm 0 (ε = 0)
  becomes 0, where the hook's division gives NaN; so does a column that the
  projections reduced to rounding noise (norm ≤ 32·k·eps of its norm before
  them: it depends on the previous columns to working precision), which the
  hook would normalise into a direction drawn by the rounding, different on
  every backend and every partitioning of the program."""
  k, r = a.shape
  tol = 32 * k * float(jnp.finfo(a.dtype).eps)
  before = jnp.linalg.norm(a, axis=0, keepdims=True)  # each column's norm before projections
  for i in range(r):
    col = a[:, i:i + 1]
    norm = jnp.linalg.norm(col, axis=0, keepdims=True)
    denom = norm + jnp.asarray(epsilon, a.dtype)
    keep = (denom > 0) & (norm > tol * before[:, i:i + 1])
    col = jnp.where(keep, col / jnp.where(keep, denom, 1), 0)
    a = a.at[:, i:i + 1].set(col)
    if i + 1 < r:
      rest = a[:, i + 1:]
      a = a.at[:, i + 1:].set(rest - jnp.sum(col * rest, axis=0, keepdims=True) * col)
  return a


def _vma(x) -> frozenset:
  """The mesh axes over which x varies inside ``jax.shard_map`` (empty
  elsewhere)."""
  aval = jax.typeof(x)
  vma = getattr(aval, "vma", None)  # jax < 0.10
  if vma is None:
    vma = getattr(getattr(aval, "manual_axis_type", None), "varying", None)
  return frozenset(vma or ())


def _varying(tree, axes: frozenset):
  """``tree`` typed as varying over ``axes`` (a no-op outside shard_map), so
  that both branches of a ``lax.cond`` return the same types: a psum's
  result is typed as the same on every worker, a buffer of the state as
  varying."""
  def cast(x):
    missing = tuple(sorted(axes - _vma(x)))
    return lax.pcast(x, missing, to="varying") if missing else x
  return jax.tree.map(cast, tree) if axes else tree


def _matmul(spec, x, y):
  # HIGHEST: full float32 products on accelerators too (no TF32/bfloat16 passes).
  return jnp.einsum(spec, x, y, precision=lax.Precision.HIGHEST)


def _draw_q(key, index, leaf: _Leaf, dtype):
  """A Q ∈ R^{m×r} of i.i.d. standard normals for leaf ``index``, from a key
  common to all workers (never folded with the worker index)."""
  return jax.random.normal(jax.random.fold_in(key, index), (leaf.m, leaf.r), dtype)


def powersgd_wire_bits(params: optax.Params, *, rank: int = 1,
                       min_compression_rate: float = 2) -> int:
  """Bits one worker contributes to the all-reduces of one PowerSGD step.

  The step all-reduces the P ∈ R^{n×r} of every compressed leaf together with
  the leaves sent dense (one all-reduce), then the Q ∈ R^{m×r} of every
  compressed leaf (a second one); each value travels as a float32 whatever
  the leaf's dtype (bfloat16 included), as a float64 for float64 leaves.
  This is what :func:`powersgd` adds to the ``payload`` field of its bit
  counter per step (:func:`compopt.comm_bits`), and the bytes its compiled
  step hands to the all-reduces; a ring all-reduce moves ⌊2(W − 1)/W·B⌋ bits
  each way for each of the two buffers of B bits (``uplink`` and
  ``downlink``). A warm-up step (before ``start_iter``) all-reduces every
  leaf dense instead: 32 bits per coordinate (64 for float64 leaves).

  Args:
    params: the params (or gradient) tree: arrays or ``jax.ShapeDtypeStruct``.
    rank: r, as given to :func:`powersgd`.
    min_compression_rate: as given to :func:`powersgd`.

  Returns:
    The bits, a Python int.

  Example:
    >>> import compopt, jax.numpy as jnp
    >>> params = {"w": jnp.zeros((256, 128)), "b": jnp.zeros(128)}
    >>> compopt.powersgd_wire_bits(params, rank=2)  # 32·((128 + 256)·2 + 128)
    28672
  """
  owner = "powersgd_wire_bits"
  rank = checks.check_int(rank, "rank", owner, lo=1)
  rate = checks.check_real(min_compression_rate, "min_compression_rate", owner, lo=0.0)
  leaves = jax.tree.leaves(params)
  total = 0
  for leaf, plan in zip(leaves, _plan([l.shape for l in leaves], rank, rate)):
    bits = _wide(leaf.dtype).itemsize * 8
    total += bits * ((plan.n + plan.m) * plan.r if plan.r else math.prod(leaf.shape))
  return total


def powersgd_mean(
    *,
    rank: int = 1,
    start_iter: int = 0,
    min_compression_rate: float = 2,
    use_error_feedback: bool = True,
    warm_start: bool = True,
    orthogonalization_epsilon: float = 0.0,
    axis_name: str | None = None,
    key: jax.Array | int = 0,
    scheme: SchemeArg = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Replaces each worker's gradient by PowerSGD's rank-r estimate of the mean.

  What PyTorch DDP's ``powerSGD_hook`` does to the gradients, as an optax
  transformation: on W workers, per matrix M_w = g_w + e_w ∈ R^{n×m},

  .. math::

    P = \sum_w M_w\,\mathrm{orth}(Q), \quad \hat P = \mathrm{orth}(P), \quad
    Q \leftarrow \frac1W \sum_w M_w^\top \hat P, \quad
    \text{output } \hat P Q^\top, \quad e_w \leftarrow M_w - \hat P Q^\top,

  and the mean of the other leaves. The output is in gradient units (chain an
  optimizer after it; :func:`powersgd` chains SGD). See :func:`powersgd` for
  which leaves are compressed and how, the warm-up and the differences from
  the hook.

  Args:
    rank: r >= 1, the rank of the approximation.
    start_iter: dense steps before compression starts, >= 0.
    min_compression_rate: a matrix is compressed only if its n·m values
      exceed this many times the (n + m)·r of P and Q; >= 0.
    use_error_feedback: keep e_w.
    warm_start: reuse the last Q; else draw it afresh every step.
    orthogonalization_epsilon: ε >= 0 added to each column norm in orth.
    axis_name: the worker axis (``None``: one worker).
    key: seed or PRNG key of the Qs, the same on every worker; split every
      step.
    scheme: how P and Q are all-reduced (see :func:`powersgd`).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`PowerSGDState`.

  Example:
    >>> import compopt, jax.numpy as jnp, optax
    >>> tx = optax.chain(compopt.powersgd_mean(rank=1), optax.sgd(0.1, momentum=0.9))
    >>> grads = {"w": jnp.outer(jnp.arange(1., 7.), jnp.arange(1., 5.)), "b": jnp.ones(4)}
    >>> updates, state = tx.update(grads, tx.init(grads))
    >>> bool(jnp.allclose(updates["w"], -0.1 * grads["w"], rtol=1e-5))  # rank 1: exact
    True

  References:
    Vogels, Karimireddy, Jaggi. PowerSGD: practical low-rank gradient
    compression for distributed optimization, NeurIPS 2019.
    https://arxiv.org/abs/1905.13727
  """
  return _powersgd_mean(rank=rank, start_iter=start_iter,
                        min_compression_rate=min_compression_rate,
                        use_error_feedback=use_error_feedback, warm_start=warm_start,
                        orthogonalization_epsilon=orthogonalization_epsilon,
                        axis_name=axis_name, key=key, scheme=scheme, owner="powersgd_mean")


def _powersgd_mean(*, rank, start_iter, min_compression_rate, use_error_feedback,
                   warm_start, orthogonalization_epsilon, axis_name, key, scheme, owner):
  """:func:`powersgd_mean`, reporting errors as ``owner``."""
  rank, start_iter, rate = _check_args(rank, start_iter, min_compression_rate,
                                       use_error_feedback, warm_start,
                                       orthogonalization_epsilon, owner)
  eps = orthogonalization_epsilon
  checks.check_axis_name(axis_name, owner)
  checks.check_key(key, owner, seed=True)
  # P and Q must be the exact means: every worker orthogonalises the same P.
  scheme = schemes.resolve(scheme, owner, exact=True)

  def plan_of(leaves):
    return _plan([l.shape for l in leaves], rank, rate)

  def wide_like(leaves):
    return [jax.ShapeDtypeStruct(l.shape, _wide(l.dtype)) for l in leaves]

  def scheme_states(leaves, plan):
    wide = wide_like(leaves)
    ps = [jax.ShapeDtypeStruct((p.n, p.r), w.dtype) for p, w in zip(plan, wide) if p.r]
    dense = [w for p, w in zip(plan, wide) if not p.r]
    qs = [jax.ShapeDtypeStruct((p.m, p.r), w.dtype) for p, w in zip(plan, wide) if p.r]
    return (scheme.init(wide), scheme.init(ps + dense), scheme.init(qs))

  def init_fn(params):
    leaves, treedef = jax.tree.flatten(params)
    plan = plan_of(leaves)
    q_key, state_key = jax.random.split(checks.prng_key(key, owner))
    # Q ~ N(0, 1)^{m×r}, from a key common to all workers (Alg. 1 line 1)
    q = [_draw_q(q_key, j, p, _wide(l.dtype)) if p.r else None
         for j, (p, l) in enumerate(zip(plan, leaves))]
    error = [jnp.zeros(l.shape, _wide(l.dtype)) if p.r and use_error_feedback else None
             for p, l in zip(plan, leaves)]
    return PowerSGDState(count=jnp.zeros([], jnp.int32), key=state_key,
                         q=treedef.unflatten(q), error=treedef.unflatten(error),
                         bits=counters.zero_bits(), scheme_state=scheme_states(leaves, plan))

  def check_state(updates, state, leaves, plan):
    t_u = jax.tree.structure(updates)
    t_q = jax.tree.structure(state.q, is_leaf=lambda x: x is None)
    if t_u != t_q:
      raise ValueError(
          f"{owner}: the updates do not match the state: `state.q` was initialised "
          f"for a tree with structure {t_q}, but the updates have structure {t_u}. "
          "Call init with the same params tree you update.")
    for path, l, p, q, e in zip(jax.tree_util.tree_leaves_with_path(updates), leaves, plan,
                                _entries(state.q), _entries(state.error)):
      want_q = (p.m, p.r) if p.r else None
      want_e = tuple(l.shape) if p.r and use_error_feedback else None
      got_q = None if q is None else tuple(q.shape)
      got_e = None if e is None else tuple(e.shape)
      if got_q != want_q or got_e != want_e:
        raise ValueError(
            f"{owner}: the updates do not match the state: leaf "
            f"{jax.tree_util.keystr(path[0])} has shape {tuple(l.shape)}, which needs "
            f"Q of shape {want_q} and an error of shape {want_e} (None: sent dense or "
            f"no error kept), but the state holds {got_q} and {got_e} (a state stacked "
            "per worker must be mapped over its leading axis first). Call init with the "
            "same params tree you update.")

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    checks.check_floating_tree(updates, owner)
    leaves, treedef = jax.tree.flatten(updates)
    plan = plan_of(leaves)
    check_state(updates, state, leaves, plan)
    n_workers, _ = comm.axis_info(axis_name, owner)
    next_key, step_key = jax.random.split(state.key)
    q_key, warm_key, p_key, qx_key = jax.random.split(step_key, 4)
    q_prev = _entries(state.q)
    e_prev = _entries(state.error)
    warm_state, p_state, q_state = state.scheme_state
    compressed = [j for j, p in enumerate(plan) if p.r]
    dense = [j for j, p in enumerate(plan) if not p.r]

    def dense_step():
      # Before start_iter: a plain all-reduce mean of the gradients; e_w and Q
      # are left as they are (the hook's vanilla allreduce).
      out = comm.exchange(_IDENTITY, leaves, warm_key, axis_name, scheme=scheme,
                          state=warm_state, owner=owner)
      mean = [m.astype(l.dtype) for m, l in zip(out.mean, leaves)]
      return mean, q_prev, e_prev, out.sent, (out.state, p_state, q_state)

    def powersgd_step():
      # M_w = g_w + e_w, as an n×m matrix: X = reshape(leaf, (m, n)) = M_wᵀ
      xs = {}
      for j in compressed:
        l, p = leaves[j], plan[j]
        x = l.astype(_wide(l.dtype))
        if use_error_feedback:
          x = x + e_prev[j]
        xs[j] = x.reshape(p.m, p.n)
      # Q: warm-started (the previous step's mean Q), or drawn afresh.
      qs = {}
      for j in compressed:
        fresh = _draw_q(q_key, j, plan[j], _wide(leaves[j].dtype))
        if warm_start:
          # A column that is exactly 0 (a matrix whose aggregate was 0, e.g. a
          # layer that got no gradient) would stay 0 for ever: draw it again.
          zero = jnp.all(q_prev[j] == 0, axis=0, keepdims=True)
          qs[j] = jnp.where(zero, fresh, q_prev[j])
        else:
          qs[j] = fresh
        qs[j] = _orthogonalize(qs[j], eps)
      # P_w = M_w Q   (Alg. 1 line 3)
      ps = [_matmul("mn,mr->nr", xs[j], qs[j]) for j in compressed]
      # P = Σ_w P_w, all-reduced with the dense leaves   (line 4)
      out_p = comm.exchange(_IDENTITY, ps + [leaves[j] for j in dense], p_key, axis_name,
                            scheme=scheme, state=p_state, owner=owner)
      p_sum = [m * n_workers for m in out_p.mean[:len(compressed)]]
      dense_mean = out_p.mean[len(compressed):]
      sent = out_p.sent
      # P̂ = ORTHOGONALIZE(P)   (line 5; the hook orthogonalises the sum)
      p_hat = [_orthogonalize(p, eps) for p in p_sum]
      new_q, new_e = list(q_prev), list(e_prev)
      out = [None] * len(leaves)
      if compressed:
        # Q_w = M_wᵀ P̂   (line 6)
        q_local = [_matmul("mn,nr->mr", xs[j], ph) for j, ph in zip(compressed, p_hat)]
        # Q = (1/W) Σ_w Q_w   (line 7)
        out_q = comm.exchange(_IDENTITY, q_local, qx_key, axis_name, scheme=scheme,
                              state=q_state, owner=owner)
        sent = counters.add_bits(sent, out_q.sent)
        for j, ph, qm in zip(compressed, p_hat, out_q.mean):
          l = leaves[j]
          # DECOMPRESS: P̂ Qᵀ (line 11), here as its transpose Q P̂ᵀ
          approx = _matmul("mr,nr->mn", qm, ph)
          if use_error_feedback:
            # e_w ← M_w − P̂ Qᵀ   (the hook's local error)
            new_e[j] = (xs[j] - approx).reshape(l.shape)
          new_q[j] = qm
          out[j] = approx.reshape(l.shape).astype(l.dtype)
        q_state_out = out_q.state
      else:
        q_state_out = q_state
      for j, m in zip(dense, dense_mean):
        out[j] = m.astype(leaves[j].dtype)
      return out, new_q, new_e, sent, (warm_state, out_p.state, q_state_out)

    if not leaves:
      return updates, state._replace(count=optax.safe_increment(state.count), key=next_key)
    if start_iter == 0 or not compressed:
      # (with nothing to compress a PowerSGD step is the dense step)
      result = powersgd_step()
    else:
      axes = frozenset().union(*(_vma(x) for x in jax.tree.leaves((updates, state))))
      result = lax.cond(state.count < start_iter,
                        lambda: _varying(dense_step(), axes),
                        lambda: _varying(powersgd_step(), axes))
    out, new_q, new_e, sent, scheme_state = result
    return treedef.unflatten(list(out)), PowerSGDState(
        count=optax.safe_increment(state.count), key=next_key,
        q=treedef.unflatten(list(new_q)), error=treedef.unflatten(list(new_e)),
        bits=counters.add_bits(state.bits, sent), scheme_state=scheme_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def powersgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    rank: int = 1,
    start_iter: int = 0,
    min_compression_rate: float = 2,
    use_error_feedback: bool = True,
    warm_start: bool = True,
    orthogonalization_epsilon: float = 0.0,
    momentum: float | None = None,
    nesterov: bool = False,
    axis_name: str | None = None,
    key: jax.Array | int = 0,
    scheme: SchemeArg = None,
    skip_nonfinite: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""PowerSGD: SGD on a rank-r estimate of the mean gradient, by one step of
  subspace iteration with a warm-started Q and error feedback.

  Vogels et al. 2019, Alg. 1 with the error feedback of their Alg. 2, as
  PyTorch DDP's ``powerSGD_hook`` runs it. On W workers, for each matrix
  M_w ∈ R^{n×m} of worker w (its gradient plus its error, reshaped as below)
  and the shared Q ∈ R^{m×r}:

  .. math::

    M_w = g_w + e_w, \quad P = \sum_{w=1}^W M_w \hat Q \ \ (\hat Q =
    \mathrm{orth}(Q)), \quad \hat P = \mathrm{orth}(P), \quad
    Q \leftarrow \frac1W \sum_{w=1}^W M_w^\top \hat P,

  .. math::

    \Delta' = \hat P Q^\top, \quad e_w \leftarrow M_w - \Delta', \quad
    x \leftarrow x - \gamma\,\Delta'

  (with ``momentum`` λ: m ← λm + Δ', x ← x − γm; with ``nesterov``,
  x ← x − γ(Δ' + λm), optax's form. The paper's Alg. 2 and code step by
  Δ' + m instead: chain an optax transformation after
  :func:`powersgd_mean` for that form). orth
  is Gram-Schmidt on the columns, each divided by its norm plus ε
  (``orthogonalization_epsilon``). P and Q cross the wire in two
  all-reduces; Q is then the same on every worker and warm-starts the next
  step (``warm_start=True``; otherwise Q is drawn afresh from N(0, 1) every
  step). The first Q is drawn from ``key``, the same on every worker.

  Which leaves are compressed, and how (the hook's rule): a leaf of shape
  (d_1, ..., d_k, n), k ≥ 1, is the matrix M ∈ R^{n×m}, m = d_1⋯d_k, whose
  rows are the last axis: M = reshape(leaf, (m, n))ᵀ. In JAX's layouts
  (flax's Dense kernel (in, out), Conv kernel (kh, kw, in, out)) the last
  axis holds the output features, so M is [output features, input features
  × kernel dims]: the matrix of the paper's code and the one PyTorch's
  ``view(shape[0], -1)`` makes of the same layer in PyTorch's layout
  ((out, in) or (out, in, kh, kw)), up to the order of its columns, which
  does not change the result. (PyTorch's rule applied to a JAX layout would
  make a 3×3 convolution a matrix of 3 rows, the kernel's height, instead of
  [output × input features].) It is compressed at rank r = min(n, m, ``rank``) iff
  (n + m)·r·``min_compression_rate`` < n·m; the others, and all vectors and
  scalars, are all-reduced dense in the same all-reduce as P (they keep no
  error: the mean is exact). Before step ``start_iter`` every leaf is
  all-reduced dense and no error is kept (the hook's
  ``start_powerSGD_iter``).

  Where the hook differs, with the same aggregate: it keeps an error
  M_w − mean_w M_w for the leaves it sends dense, which sums to zero over the
  workers (here they keep none, as in the paper's code); it orthogonalises by
  QR for r > 2 in float32, which spans the same column space, so P̂ Qᵀ is the
  same. Where the hook fails: a column of P that is 0 with ε = 0 is divided
  by zero (NaN), here it stays 0; a column of the warm-started Q that is
  exactly 0 (a matrix whose aggregate was 0, e.g. a layer that got no
  gradient yet) stays 0 for ever in the hook and the layer is never updated
  again, here it is drawn again. Rules that differ: vectors are never
  compressed here, whatever ``min_compression_rate`` (the hook compresses an
  L-vector as an L×1 matrix at rank 1 when the rate is below L/(L + 1));
  ``start_iter`` may be 0 or 1 (the hook needs 2, for DDP's bucket rebuild).

  Precision: M_w, P, Q and e_w are float32 (float64 for float64 leaves),
  also for bfloat16 and float16 leaves, whose updates keep their dtype. P,
  Q and the dense leaves are summed in float32 on the wire:
  :func:`powersgd_wire_bits` gives the bits per step.

  Args:
    learning_rate: γ, a float or an optax schedule.
    rank: r >= 1, the rank of the approximation (the hook's
      ``matrix_approximation_rank``).
    start_iter: dense steps before compression starts, >= 0 (the hook's
      ``start_powerSGD_iter``, 1000 by default there; it suggests 10% of
      the run).
    min_compression_rate: a matrix is compressed only if its n·m values
      exceed this many times the (n + m)·r of P and Q; >= 0.
    use_error_feedback: keep e_w (Alg. 2); recommended.
    warm_start: reuse the last Q (the paper's warm start); recommended.
    orthogonalization_epsilon: ε >= 0 added to each column norm in
      orth, against columns of zeros.
    momentum: λ in [0, 1), heavy-ball momentum on the aggregate
      (``optax.trace``; the paper trains with momentum), or ``None``.
    nesterov: Nesterov momentum (with ``momentum``).
    axis_name: the worker axis (``None``: one worker).
    key: seed or PRNG key of the Qs, the same on every worker; split every
      step.
    scheme: how P and Q are all-reduced: ``None``, ``"allgather"``,
      ``"allreduce"`` and ``"auto"`` all run ONE all-reduce of P (with the
      dense leaves) and one of Q (their payload is linear);
      ``compopt.exchange.two_phase()`` (no server compressor: P must be the
      exact sum) moves them by an all-to-all and an all-gather.
    skip_nonfinite: skip the step on every worker when any worker's input,
      or the update or state the step computed from it, holds inf/NaN,
      leaving the state as it was; after 100 skipped in a row, a non-finite
      step is applied, so that a stuck run shows (see
      :func:`compopt.skip_nonfinite`; one 4-byte all-reduce per step).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``state[0]`` is a
    :class:`PowerSGDState`.

  Example:
    >>> import compopt, jax.numpy as jnp
    >>> opt = compopt.powersgd(0.1, rank=1)
    >>> grads = {"w": jnp.outer(jnp.arange(1., 7.), jnp.arange(1., 5.)), "b": jnp.ones(4)}
    >>> updates, state = opt.update(grads, opt.init(grads))
    >>> bool(jnp.allclose(updates["w"], -0.1 * grads["w"], rtol=1e-5))  # rank 1: exact
    True
    >>> compopt.powersgd_wire_bits(grads, rank=1)  # 32·(4 + 6 + 4)
    448

  References:
    Vogels, Karimireddy, Jaggi. PowerSGD: practical low-rank gradient
    compression for distributed optimization, NeurIPS 2019.
    https://arxiv.org/abs/1905.13727
  """
  owner = "powersgd"
  checks.check_learning_rate(learning_rate, owner)
  return guard.chain(
      _powersgd_mean(rank=rank, start_iter=start_iter,
                     min_compression_rate=min_compression_rate,
                     use_error_feedback=use_error_feedback, warm_start=warm_start,
                     orthogonalization_epsilon=orthogonalization_epsilon,
                     axis_name=axis_name, key=key, scheme=scheme, owner=owner),
      dcsgd_lib._momentum(momentum, nesterov, owner),  # pylint: disable=protected-access
      optax.scale_by_learning_rate(learning_rate),
      axis_name=axis_name, skip_nonfinite=skip_nonfinite, owner=owner)
