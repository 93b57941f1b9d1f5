"""Deep Gradient Compression (Lin, Han, Mao, Wang, Dally 2018)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

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
from compopt._src.compressors import base as cbase
from compopt._src.compressors import combine
from compopt._src.compressors import sparse
from compopt._src.methods import guard
from compopt._src.typing import SchemeArg

#: The final density of :func:`dgc` when neither ``ratio`` nor ``compressor``
#: is given: the paper's 99.9% sparsity.
DEFAULT_RATIO = 0.001

_WARMUP_FORM = ("a sequence of (density, steps) pairs, e.g. "
                "[(0.25, 1000), (0.0625, 1000)]; a density is a number in (0, 1] or a "
                "compopt compressor, steps an integer >= 1")


@reshard.rules(u=reshard.MEAN, v=reshard.MEAN)
class DGCState(NamedTuple):
  """State of :func:`dgc`."""
  count: jax.Array  # int32, steps taken: selects the warm-up stage (same on all workers)
  key: jax.Array  # uint32[2], split every step
  u: optax.Updates  # u_k, this worker's momentum (float32; float64 for float64 leaves)
  v: optax.Updates  # v_k, this worker's velocity not sent yet (same dtype)
  bits: counters.CommBits
  scheme_state: Any  # the exchange scheme's state (two_phase's server error)


def _stage_compressor(density, final, owner, where):
  """A warm-up stage's compressor: a density r becomes top_k(ratio=r) (the
  block mode of ``final`` when it is a block top_k), 1 the identity."""
  if isinstance(density, cbase.Compressor):
    return density
  if isinstance(density, bool) or not isinstance(density, (int, float, np.integer,
                                                           np.floating)):
    raise TypeError(f"{owner}: `warmup` must be {_WARMUP_FORM}; {where} has density "
                    f"{density!r}")
  r = float(density)
  if not (math.isfinite(r) and 0.0 < r <= 1.0):
    raise ValueError(f"{owner}: `warmup` densities must be in (0, 1]; {where} has "
                     f"density {density!r}")
  if r == 1.0:
    return combine.identity()
  block = final.block_size if isinstance(final, sparse.TopK) else None
  return sparse.top_k(ratio=r, block_size=block)


def _check_warmup(warmup, final, owner):
  """[(C_s, T_s), ...], the warm-up stages, from the user's pairs."""
  if warmup is None:
    return []
  if isinstance(warmup, (str, bytes)) or not isinstance(warmup, Sequence):
    raise TypeError(f"{owner}: `warmup` must be {_WARMUP_FORM}; got {warmup!r}")
  stages = []
  for s, pair in enumerate(warmup):
    where = f"entry {s}"
    if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
      raise TypeError(f"{owner}: `warmup` must be {_WARMUP_FORM}; {where} is {pair!r}")
    density, steps = pair
    compressor = _stage_compressor(density, final, owner, where)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
      raise TypeError(f"{owner}: `warmup` must be {_WARMUP_FORM}; {where} has steps "
                      f"{steps!r}")
    if steps < 1:
      raise ValueError(f"{owner}: `warmup` steps must be integers >= 1; {where} has "
                       f"steps {steps}")
    stages.append((compressor, int(steps)))
  total = sum(steps for _, steps in stages)
  if total > np.iinfo(np.int32).max:
    raise ValueError(f"{owner}: the `warmup` stages last {total} steps in all; at most "
                     f"2**31 - 1 are supported (the step count is int32)")
  return stages


def _sends_everything(compressor, leaves) -> bool:
  """Whether C(x) = x on every leaf (class B(1): the identity, top_k keeping
  all coordinates): nothing is delayed, so there is no stale momentum."""
  return all(compressor.delta(l.shape) == 1.0 for l in leaves if l.size)


def _clip_by_norm(g, max_norm):
  """g·min(1, max_norm/‖g‖), with ‖g‖ the L2 norm of the whole tree (one
  worker's own gradient: no collective)."""
  leaves = jax.tree.leaves(g)
  if not leaves:
    return g
  acc = jnp.result_type(*[l.dtype for l in leaves])
  norm = jnp.sqrt(sum(jnp.sum(jnp.square(l.astype(acc))) for l in leaves))
  max_norm = jnp.asarray(max_norm, acc)
  scale = jnp.where(norm > max_norm, max_norm / jnp.where(norm > 0, norm, 1), 1)
  return jax.tree.map(lambda l: l * scale.astype(l.dtype), g)


def _varying(tree, axis_name):
  """``tree`` typed as varying over the worker axis.

  Under ``shard_map``'s type check a psum's result is invariant and an
  all-gather's varying, so the branches of the warm-up switch (a dense stage
  all-reduces, a sparse one all-gathers) would differ in type. Adding a
  zero made from ``axis_index`` types every leaf as varying in every mode of
  running (XLA folds the addition away).
  """
  if axis_name is None:
    return tree
  zero = lax.axis_index(axis_name) * 0
  return jax.tree.map(
      lambda x: (x | (zero != 0)) if x.dtype == jnp.bool_ else x + zero.astype(x.dtype),
      tree)


def _dgc_core(*, momentum, nesterov, stages, final, momentum_masking, clip_norm,
              axis_name, key, scheme, owner):
  """The workers' part of :func:`dgc`; its output is the mean of the sent
  C_t(v_k) (before the learning rate)."""
  compressors = [c for c, _ in stages] + [final]
  # Stage s runs while count < boundaries[s]; the last stage forever after.
  boundaries = np.cumsum([steps for _, steps in stages]).astype(np.int32)

  def init_fn(params):
    wide = lambda p: jnp.zeros(jnp.shape(p), comm.wide_dtype(p.dtype))
    return DGCState(
        count=jnp.zeros([], jnp.int32), key=checks.prng_key(key, owner),
        u=jax.tree.map(wide, params), v=jax.tree.map(wide, params),
        bits=counters.zero_bits(), scheme_state=scheme.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    checks.check_floating_tree(updates, owner)
    checks.check_same_tree(updates, state.v, owner, "v")
    n, _ = comm.axis_info(axis_name, owner)
    next_key, step_key = jax.random.split(state.key)
    m = momentum
    # ∇_{k,t}: this worker's gradient, in the state's (wide) dtype
    g = jax.tree.map(lambda x, v: x.astype(v.dtype), updates, state.v)
    if clip_norm is not None:
      # Local gradient clipping (§3.2 and the appendix), before the
      # accumulation. The paper's node gradient is G_k = ∇_k/N (Alg. 1 adds
      # ∇f/(Nb) over the node's batch, and the all-reduce sums), clipped to
      # thr_{G_k} = N^{-1/2}·thr_G; here the exchange averages, so that
      # bound is ‖∇_k‖ ≤ N·N^{-1/2}·thr_G = √N·thr_G.
      g = _clip_by_norm(g, clip_norm * math.sqrt(n))
    if nesterov:
      # u_{k,t} = m(u_{k,t−1} + ∇_{k,t}),  v_{k,t} = v_{k,t−1} + u_{k,t} + ∇_{k,t}
      u = jax.tree.map(lambda u, x: m * (u + x), state.u, g)
      v = jax.tree.map(lambda v, u, x: v + u + x, state.v, u, g)
    else:
      # momentum correction (§3.2): u_{k,t} = m·u_{k,t−1} + ∇_{k,t},
      # v_{k,t} = v_{k,t−1} + u_{k,t}
      u = jax.tree.map(lambda u, x: m * u + x, state.u, g)
      v = jax.tree.map(lambda v, u: v + u, state.v, u)
    # v_k is sent in the update's dtype; what the cast rounds away stays in v_k.
    v_wire = jax.tree.map(lambda q, x: q.astype(x.dtype), v, updates)
    leaves = jax.tree.leaves(v_wire)

    def branch(compressor):
      # Momentum factor masking (§3.3) stops the stale momentum of delayed
      # coordinates; a stage that sends every coordinate delays none, and
      # masking would only erase the momentum (the authors' code runs plain
      # momentum SGD on the tensors it does not compress).
      masking = momentum_masking and not _sends_everything(compressor, leaves)

      def run(v_wire, scheme_state):
        # sparse(v_{k,t}) = C_t(v_{k,t}), sent; the mean over workers comes back
        out = comm.exchange(compressor, v_wire, step_key, axis_name, scheme=scheme,
                            state=scheme_state, owner=owner, return_own=True)
        # Mask: the coordinates this worker sent, C_t(v_{k,t}) ≠ 0 (for top_k
        # the k largest |v_{k,t}|; read off the decoded payload, so that it
        # holds for any compressor)
        sent = jax.tree.map(lambda o: (o != 0) if masking else jnp.zeros(o.shape, bool),
                            out.own)
        return _varying((out.mean, out.own, sent, out.sent, out.state), axis_name)
      return run

    if len(compressors) == 1:
      mean, own, sent, bits, scheme_state = branch(final)(v_wire, state.scheme_state)
    else:
      # Warm-up: the density of stage s = #{boundaries ≤ count}. The payloads
      # of the stages differ in size, so each stage's exchange is its own
      # branch. Every worker takes the same branch, so the collectives inside
      # match up: count starts at 0 everywhere and moves by one per step on
      # every worker together (the non-finite guard skips a step on all
      # workers or none, and a skipped step keeps the old count), so it is
      # the same number on every worker. (A branch taken by some workers only
      # would leave the others waiting in its collective.) Under jax.vmap the
      # count is batched, so every stage's exchange is computed and one kept.
      stage = jnp.sum(state.count >= jnp.asarray(boundaries), dtype=jnp.int32)
      mean, own, sent, bits, scheme_state = lax.switch(
          stage, [branch(c) for c in compressors], v_wire, state.scheme_state)
    # v_{k,t} ← v_{k,t} − C_t(v_{k,t}) (= v_{k,t} ⊙ ¬Mask for top_k): what was
    # not sent, and what rounding to the wire dtype lost, waits for later
    v = jax.tree.map(lambda q, o: q - o.astype(q.dtype), v, own)
    # u_{k,t} ← u_{k,t} ⊙ ¬Mask
    u = jax.tree.map(lambda u, s: jnp.where(s, jnp.zeros_like(u), u), u, sent)
    out = jax.tree.map(lambda a, x: a.astype(x.dtype), mean, updates)
    return out, DGCState(count=optax.safe_increment(state.count), key=next_key, u=u, v=v,
                         bits=counters.add_bits(state.bits, bits),
                         scheme_state=scheme_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def dgc(
    learning_rate: optax.ScalarOrSchedule,
    *,
    momentum: float = 0.9,
    ratio: float | None = None,
    compressor: cbase.Compressor | None = None,
    warmup: Sequence[tuple[Any, int]] | None = None,
    clip_norm: float | None = None,
    nesterov: bool = False,
    momentum_masking: bool = True,
    axis_name: str | None = None,
    key: jax.Array | int = 0,
    scheme: SchemeArg = None,
    skip_nonfinite: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""Deep Gradient Compression (DGC): top-k of the momentum-corrected velocity.

  Lin et al. 2018 (§3, Alg. 1; the Nesterov form: the appendix), on N
  workers; worker k with gradient ∇_{k,t} at step t:

  .. math::

    u_{k,t} &= m\,u_{k,t-1} + \nabla_{k,t}, \qquad
    v_{k,t} = v_{k,t-1} + u_{k,t} \qquad\text{(momentum correction)}\\
    w_{t+1} &= w_t - \eta_t\,\frac{1}{N}\sum_{k=1}^N \mathrm{sparse}_t(v_{k,t})\\
    \mathrm{Mask} &= \{j : \mathrm{sparse}_t(v_{k,t})_j \ne 0\}, \quad
    v_{k,t} \leftarrow v_{k,t} \odot \neg\mathrm{Mask}, \quad
    u_{k,t} \leftarrow u_{k,t} \odot \neg\mathrm{Mask}
    \quad\text{(momentum factor masking)}

  with sparse_t the top-k of each leaf at the density of step t. With
  ``nesterov=True`` the accumulation is the paper's Nesterov form,
  u_{k,t} = m(u_{k,t−1} + ∇_{k,t}) and v_{k,t} = v_{k,t−1} + u_{k,t} + ∇_{k,t}.
  The paper sums G_k = ∇_k/N over the nodes; here each worker passes its
  own gradient ∇_k and the exchange averages (the same step, so u_k and v_k
  are N times the paper's U^k, V^k).

  * Sparsification: exact top-k per leaf (:func:`compopt.compressors.top_k`
    with ``ratio``), not the paper's threshold estimated from a 0.1%–1%
    sample, which sends about k values; the exact one sends exactly k, so
    the wire is a static size. For large leaves pass
    ``compressor=compopt.compressors.top_k(ratio=..., block_size=...)``, the
    fast block mode. Any compopt compressor works as ``compressor``; v_k
    then keeps v_k − C(v_k) (error feedback, which is v_k ⊙ ¬Mask for a
    sparsifier) and Mask is where C(v_k) ≠ 0 (with a dense quantizer every
    coordinate: pass ``momentum_masking=False`` for those).
  * Warm-up (§3.3): ``warmup=[(ρ_1, T_1), (ρ_2, T_2), ...]`` sends density
    ρ_1 for the first T_1 steps, then ρ_2 for T_2 steps, ..., then the
    final ``ratio``. The paper's schedule, 25%, 6.25%, 1.5625%, 0.4% over
    the first four epochs, then 0.1%, is
    ``warmup=[(0.001 ** ((e + 1) / 5), steps_per_epoch) for e in range(4)]``
    with ``ratio=0.001`` (0.251, 0.063, 0.0158, 0.0040). A density may also
    be a compressor; 1 means dense (no compression). A stage that sends
    every coordinate (density 1, the identity) delays none, so it runs
    without the masking, which would only reset u_k every step: it is
    momentum SGD on the mean gradient, as in the authors' code. The stage
    is chosen by ``lax.switch`` on the step count, which is the same on
    every worker; the bit counters count what that stage's exchange sent.
  * Local gradient clipping (§3.2 and the appendix): with ``clip_norm`` =
    thr, the threshold on the norm of the global gradient, each worker
    rescales its gradient before the accumulation so that
    ‖G_k‖ ≤ N^{−1/2}·thr, for the paper's G_k = ∇_k/N (Alg. 1 sums the
    nodes' G_k): ‖∇_k‖ ≤ √N·thr, with ‖·‖ the L2 norm of the whole tree.
    No collective: each worker clips its own gradient.
  * Skipped steps (``skip_nonfinite``) do not advance the warm-up.

  u_k and v_k are kept in float32 (float64 for float64 leaves) also for
  bfloat16 params; v_k is sent in the gradient's dtype and the rounding
  stays in v_k. For :func:`compopt.reshard_state`, u_k and v_k are per
  worker and every new worker gets their means over the old workers. That
  keeps mean_k v_k, the correction still owed (w − η mean_k v_k moves as if
  everything had been sent, as with error feedback), and mean_k u_k, the
  momentum of the mean gradient (whose recursion is exact without masking).

  Args:
    learning_rate: η, a float or an optax schedule.
    momentum: m in [0, 1) (0: the paper's Alg. 1, plain accumulation).
    ratio: the final density in (0, 1]: top_k(ratio=ratio) on every leaf,
      k = max(1, round(ratio·d)) for a leaf of d coordinates; 1 is dense
      (default 0.001 when ``compressor`` is not given).
    compressor: instead of ``ratio``, the final compressor, e.g.
      ``compopt.compressors.top_k(ratio=0.001, block_size=1024)``; warm-up
      densities then use its block mode too.
    warmup: the sparsity warm-up, a sequence of (density, steps) pairs run
      in order before the final density (``None`` or ``()``: none).
    clip_norm: the global gradient-norm threshold thr > 0 for local
      gradient clipping, or ``None`` (off).
    nesterov: the paper's Nesterov momentum correction.
    momentum_masking: momentum factor masking (the paper's default, on).
    axis_name: the worker axis (``None``: one worker).
    key: seed or PRNG key; split every step (top_k draws nothing; a
      randomized ``compressor`` or scheme may).
    scheme: how the workers exchange payloads: ``None`` or ``"allgather"``
      (default), ``"allreduce"``, ``"auto"``, or a :mod:`compopt.exchange`
      scheme such as ``two_phase(server_compressor)``.
    skip_nonfinite: skip the step on every worker when any worker's input,
      or the update or state the step computed from it, holds inf/NaN,
      leaving the state as it was; after 100 skipped in a row, a non-finite
      step is applied, so that a stuck run shows (see
      :func:`compopt.skip_nonfinite`; one 4-byte all-reduce per step).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its first state is a
    :class:`DGCState`.

  Example:
    >>> import compopt, jax.numpy as jnp
    >>> opt = compopt.dgc(0.1, ratio=0.5, warmup=[(1.0, 1)])  # dense first step
    >>> state = opt.init(jnp.zeros(4))
    >>> g = jnp.array([1., -3., 2., 0.5])
    >>> u, state = opt.update(g, state)
    >>> u
    Array([-0.1 ,  0.3 , -0.2 , -0.05], dtype=float32)
    >>> opt.update(g, state)[0]  # v = 1.9 g: its 2 largest entries
    Array([-0.  ,  0.57, -0.38, -0.  ], dtype=float32)

  References:
    Lin, Han, Mao, Wang, Dally. Deep gradient compression: reducing the
    communication bandwidth for distributed training, ICLR 2018.
    https://arxiv.org/abs/1712.01887
  """
  owner = "dgc"
  checks.check_learning_rate(learning_rate, owner)
  checks.check_interval(momentum, "momentum", owner, 0.0, 1.0, high_open=True)
  if compressor is not None and ratio is not None:
    raise ValueError(f"{owner}: give `ratio` (the final density of top_k) or "
                     f"`compressor`, not both; got ratio={ratio!r}, "
                     f"compressor={compressor!r}")
  if compressor is None:
    r = DEFAULT_RATIO if ratio is None else checks.check_fraction(ratio, "ratio", owner)
    final = combine.identity() if r == 1.0 else sparse.top_k(ratio=r)
  else:
    final = cbase.check_compressor(compressor, owner)
  stages = _check_warmup(warmup, final, owner)
  checks.check_interval(clip_norm, "clip_norm", owner, 0.0, float("inf"), low_open=True,
                        allow_none=True)
  checks.check_bool(nesterov, "nesterov", owner)
  checks.check_bool(momentum_masking, "momentum_masking", owner)
  checks.check_axis_name(axis_name, owner)
  checks.check_key(key, owner, seed=True)
  scheme = schemes.resolve(scheme, owner)
  return guard.chain(
      _dgc_core(momentum=momentum, nesterov=bool(nesterov), stages=stages, final=final,
                momentum_masking=bool(momentum_masking), clip_norm=clip_norm,
                axis_name=axis_name, key=key, scheme=scheme, owner=owner),
      optax.scale_by_learning_rate(learning_rate),
      axis_name=axis_name, skip_nonfinite=skip_nonfinite, owner=owner)
