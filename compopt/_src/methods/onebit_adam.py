"""1-bit Adam (Tang et al. 2021, Alg. 1) and 0/1 Adam's variance schedule (Lu et
al. 2022): Adam whose variance is frozen, or refreshed on a sparse schedule,
so that the momentum can cross the wire as error-compensated 1-bit signs."""

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
from compopt._src import schemes
from compopt._src.compressors import base as cbase
from compopt._src.compressors import combine as ccombine
from compopt._src.compressors import sign as csign
from compopt._src.methods import guard
from compopt._src.typing import SchemeArg

#: The exchange of the dense steps (warm-up, variance refresh): the gradients
#: themselves, ONE all-reduce (identity has a linear payload), whatever the
#: scheme of the compressed steps.
_DENSE = schemes.AllGather()


@reshard.rules(worker_error=reshard.MEAN)
class OnebitAdamState(NamedTuple):
  """State of :func:`onebit_adam` and :func:`zero_one_adam`.

  Every field but ``worker_error``, ``bits`` and ``scheme_state`` is the
  same on every worker: the moments are updated from the exchanged
  aggregate, which all workers receive alike.
  """
  count: jax.Array  # int32, t: steps taken
  key: jax.Array  # uint32[2], split every step
  mu: optax.Updates  # m, replicated
  nu: optax.Updates  # v, replicated; frozen outside the dense steps
  worker_error: optax.Updates  # δ_i, this worker's residual of C(m_i + δ_i)
  # δ̄, the server's residual, replicated, when every worker computes the
  # server's step (allgather/allreduce/auto); None under two_phase, whose
  # owners keep it in scheme_state.
  server_error: optax.Updates | None
  var_interval: jax.Array  # int32, 0/1 Adam's interval of T_v (1 for 1-bit Adam)
  var_counter: jax.Array  # int32, variance updates at that interval so far
  bits: counters.CommBits
  scheme_state: Any  # two_phase's server error (each owner's chunk)


def _check_hyperparams(b1, b2, eps, weight_decay, owner):
  # Traced values (under optax.inject_hyperparams) cannot be checked here.
  checks.check_interval(b1, "b1", owner, 0.0, 1.0, high_open=True)
  checks.check_interval(b2, "b2", owner, 0.0, 1.0, high_open=True)
  checks.check_interval(eps, "eps", owner, 0.0, float("inf"), low_open=True,
                        high_open=True)
  checks.check_interval(weight_decay, "weight_decay", owner, 0.0, float("inf"),
                        high_open=True)


def _is_zero(value) -> bool:
  """Whether ``value`` is a Python or NumPy number equal to 0 (a hyperparameter
  array made by ``inject_hyperparams`` is not: it may change)."""
  return (isinstance(value, (int, float, np.integer, np.floating))
          and not isinstance(value, bool) and float(value) == 0.0)


def _compressors(compressor, server_compressor, zeros, scheme, owner):
  """(C, scheme, C_s of the replicated server step or None), resolved."""
  zeros = csign.check_zeros(zeros, owner)
  if compressor is None:
    compressor = csign.scaled_sign(zeros=zeros, scale="l2")
  else:
    compressor = cbase.check_compressor(compressor, owner)
    if zeros != "keep":
      raise ValueError(
          f"{owner}: `zeros` sets the default compressor's sign(0); with a "
          f"`compressor` given, choose its form there (e.g. "
          f"compopt.compressors.scaled_sign(zeros={zeros!r}, scale='l2')); got "
          f"zeros={zeros!r} and compressor={compressor!r}")
  server = (compressor if server_compressor is None else
            cbase.check_compressor(server_compressor, owner, "server_compressor"))
  if scheme is None:  # DeepSpeed's compressed all-reduce
    return compressor, schemes.two_phase(server), None
  scheme = schemes.resolve(scheme, owner)
  if isinstance(scheme, schemes.TwoPhase):
    if server_compressor is not None:
      raise ValueError(
          f"{owner}: under two_phase the chunks' owners compress the average, with the "
          "scheme's server compressor: pass it there, "
          "compopt.exchange.two_phase(server_compressor), and leave "
          f"`server_compressor` unset; got server_compressor={server_compressor!r} and "
          f"scheme={scheme!r}")
    return compressor, scheme, None
  # allgather, allreduce, auto: every worker receives the exact mean and runs
  # the server's step itself, with the same key.
  return compressor, scheme, server


def _freeze_schedule(freeze_step):
  """1-bit Adam: step t (1-based) is dense while t ≤ T_w."""
  def schedule(t, interval, counter):
    return t <= freeze_step, interval, counter
  return schedule


def _variance_schedule(var_freeze_step, var_update_scaler):
  """0/1 Adam's T_v as DeepSpeed's ZeroOneAdam builds it: with interval I
  (starting at 1), step t (1-based) is in T_v when I divides t and
  t ≤ ``var_freeze_step``; after κ = ``var_update_scaler`` such steps I
  doubles."""
  def schedule(t, interval, counter):
    dense = (t % interval == 0) & (t <= var_freeze_step)
    counter = counter + dense.astype(jnp.int32)
    full = counter == var_update_scaler
    # I divides some t ≤ var_freeze_step < 2^31 when it doubles; capped at
    # 2^31 − 1 (no multiple of it is ≤ var_freeze_step after) to stay in int32.
    doubled = jnp.where(interval >= 2**30, np.iinfo(np.int32).max, 2 * interval)
    return (dense, jnp.where(full, doubled, interval).astype(jnp.int32),
            jnp.where(full, 0, counter).astype(jnp.int32))
  return schedule


def _scale_by_onebit_adam(*, b1, b2, eps, weight_decay, schedule, compressor, scheme,
                          server, axis_name, key, owner):
  """The step direction m/(√v + ε) (+ λx) of 1-bit Adam and 0/1 Adam.

  ``schedule(t, interval, counter)`` says whether step t is dense (all-reduced
  gradient, Adam on it) and advances 0/1 Adam's interval.
  """
  checks.check_axis_name(axis_name, owner)
  checks.check_key(key, owner, seed=True)
  identity = ccombine.identity()

  def init_fn(params):
    def zeros(p):
      return jnp.zeros(jnp.shape(p), jnp.promote_types(jnp.result_type(p), jnp.float32))
    buffers = lambda: jax.tree.map(zeros, params)  # noqa: E731
    return OnebitAdamState(
        count=jnp.zeros([], jnp.int32), key=checks.prng_key(key, owner),
        mu=buffers(), nu=buffers(), worker_error=buffers(),
        server_error=None if server is None else buffers(),
        var_interval=jnp.ones([], jnp.int32), var_counter=jnp.zeros([], jnp.int32),
        bits=counters.zero_bits(), scheme_state=scheme.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    checks.check_same_tree(updates, state.mu, owner, "mu")
    if not _is_zero(weight_decay) and params is None:
      raise ValueError(f"{owner}: weight_decay needs the params: call "
                       "update(grads, state, params)")
    next_key, step_key, server_key = jax.random.split(state.key, 3)
    t = optax.safe_increment(state.count)  # this step's index, from 1
    dense, interval, counter = schedule(t, state.var_interval, state.var_counter)
    g = jax.tree.map(lambda u, m: u.astype(m.dtype), updates, state.mu)

    def dense_step(_):
      # Adam on ḡ = mean_i g_i, all-reduced at full precision (1-bit Adam's
      # warm-up, Alg. 1 line 2; 0/1 Adam's steps t ∈ T_v).
      out = comm.exchange(identity, updates, step_key, axis_name, scheme=_DENSE,
                          state=None, owner=owner)
      gbar = jax.tree.map(lambda a, m: a.astype(m.dtype), out.mean, state.mu)
      # m_t = β1 m_{t−1} + (1 − β1) ḡ_t,  v_t = β2 v_{t−1} + (1 − β2) ḡ_t²
      mu = jax.tree.map(lambda m, x: b1 * m + (1 - b1) * x, state.mu, gbar)
      nu = jax.tree.map(lambda v, x: b2 * v + (1 - b2) * x * x, state.nu, gbar)
      return (mu, nu, state.worker_error, state.server_error, state.scheme_state,
              out.sent)

    def compressed_step(_):
      # m_t^(i) = β1 m_{t−1} + (1 − β1) g_t^(i)        (Alg. 1 line 6)
      local = jax.tree.map(lambda m, x: b1 * m + (1 - b1) * x, state.mu, g)
      # m̂_t^(i) = C[m_t^(i) + δ_{t−1}^(i)],  δ_t^(i) = m_t^(i) + δ_{t−1}^(i) − m̂_t^(i)
      p = jax.tree.map(jnp.add, local, state.worker_error)
      out = comm.exchange(compressor, p, step_key, axis_name, scheme=scheme,
                          state=state.scheme_state, owner=owner, return_own=True)
      worker_error = jax.tree.map(lambda q, o: q - o.astype(q.dtype), p, out.own)
      mean = jax.tree.map(lambda a, m: a.astype(m.dtype), out.mean, state.mu)
      server_error = state.server_error
      if server is not None:
        # m̄_t = C[mean_i m̂_t^(i) + δ̄_{t−1}],  δ̄_t = mean_i m̂_t^(i) + δ̄_{t−1} − m̄_t
        # (line 10), the same on every worker: same aggregate, same key. Under
        # two_phase the owners of the chunks did this in the exchange.
        s = jax.tree.map(jnp.add, mean, state.server_error)
        mean = server(server_key if server.randomized else None, s)
        server_error = jax.tree.map(jnp.subtract, s, mean)
      # m_t = m̄_t (line 13); v is not updated.
      return mean, state.nu, worker_error, server_error, out.state, out.sent

    # `dense` depends only on the step count (and 0/1 Adam's interval), which
    # every worker holds alike: they start equal and advance alike, and a
    # skipped step (the guard) is skipped on all. So every worker takes the
    # same branch and runs the same collectives: under shard_map and pmap no
    # worker waits in a collective another one skipped. (Under jax.vmap the
    # predicate is batched and both branches run, then one is selected.)
    # Only the branch taken moves bytes, and it counts them.
    mu, nu, worker_error, server_error, scheme_state, sent = jax.lax.cond(
        dense, dense_step, compressed_step, None)

    # x_{t+1} = x_t − γ (m_t/(√v_t + ε) + λ x_t), as DeepSpeed's OnebitAdam
    # (no bias correction; λ decoupled from the moments).
    def direction(m, v, u, p):
      d = m / (jnp.sqrt(v) + eps)
      if p is not None:
        d = d + weight_decay * p.astype(d.dtype)
      return d.astype(u.dtype)

    decay = None if _is_zero(weight_decay) else params
    if decay is None:
      out = jax.tree.map(lambda m, v, u: direction(m, v, u, None), mu, nu, updates)
    else:
      out = jax.tree.map(direction, mu, nu, updates, decay)
    return out, OnebitAdamState(
        count=t, key=next_key, mu=mu, nu=nu, worker_error=worker_error,
        server_error=server_error, var_interval=interval, var_counter=counter,
        bits=counters.add_bits(state.bits, sent), scheme_state=scheme_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def onebit_adam(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    freeze_step: int = 100_000,
    compressor: cbase.Compressor | None = None,
    server_compressor: cbase.Compressor | None = None,
    zeros: str = "keep",
    axis_name: str | None = None,
    key: jax.Array | int = 0,
    scheme: SchemeArg = None,
    skip_nonfinite: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""1-bit Adam (Tang et al. 2021, Alg. 1): Adam for a warm-up, then the
  variance frozen and the momentum sent as error-compensated 1-bit signs.

  Warm-up, steps t ≤ T_w (``freeze_step``): Adam on the all-reduced
  full-precision gradient ḡ_t = (1/n) Σ_i g_t^(i),

  .. math::

    m_t = \beta_1 m_{t-1} + (1-\beta_1)\bar g_t,\quad
    v_t = \beta_2 v_{t-1} + (1-\beta_2)\bar g_t^2.

  Compression stage, t > T_w: v = v_{T_w} stays frozen and on worker i

  .. math::

    m_t^{(i)} = \beta_1 m_{t-1} + (1-\beta_1) g_t^{(i)},\quad
    \hat m_t^{(i)} = \mathcal{C}[m_t^{(i)} + \delta_{t-1}^{(i)}],\quad
    \delta_t^{(i)} = m_t^{(i)} + \delta_{t-1}^{(i)} - \hat m_t^{(i)},

    \bar m_t = \mathcal{C}\Big[\tfrac1n\textstyle\sum_i \hat m_t^{(i)}
      + \bar\delta_{t-1}\Big],\quad
    \bar\delta_t = \tfrac1n\textstyle\sum_i \hat m_t^{(i)} + \bar\delta_{t-1}
      - \bar m_t,\quad m_t = \bar m_t.

  Every step, x_{t+1} = x_t − γ_t (m_t/(√v_t + ε) + λ x_t).

  As DeepSpeed's ``OnebitAdam``: no bias correction (its
  ``bias_correction`` flag is unused), ε outside the root, weight decay λ
  added to the step (decoupled, scaled by γ), C the sign with the ℓ2 scale
  ‖x‖₂/√d (:func:`compopt.compressors.scaled_sign` with ``scale="l2"``),
  the worker and server errors zero when the compression stage starts. By
  default the exchange is DeepSpeed's compressed all-reduce
  (``compopt.exchange.two_phase(C)``): the momentum, flattened into one
  vector, is cut into n chunks, each compressed with its own scale and sent
  to the chunk's owner by an all-to-all; the owner averages its chunk,
  compresses it again with its own error δ̄ (the scheme's state) and an
  all-gather returns every chunk. (DeepSpeed scales the worker's signs by
  one ‖·‖₂ of the whole vector; here each chunk has its own.) A warm-up step
  moves the dense gradient in one all-reduce. The first step is an Adam step
  (DeepSpeed's first call only sets its buffers up).

  Zeros. The paper's C sends sign(0) as +1 (``zeros="plus"``, 1 bit per
  coordinate, as DeepSpeed): a coordinate whose momentum is always 0 (an
  embedding row never looked up, a masked weight) then receives ±‖·‖₂/√d
  back, which its v ≈ 0 turns into steps of ~γ‖·‖₂/(√d ε); DeepSpeed needs a
  user mask (``exp_avg_mask``) against it. The default ``zeros="keep"``
  sends sign(0) = 0 (1.6 bits per coordinate, five base-3 codes per byte),
  so such coordinates stay where they are; for any momentum without exact
  zeros both forms give the same numbers.

  The bit counters (:func:`compopt.comm_bits`) count what each step moved:
  the dense all-reduce during warm-up, the two phases of the compressed
  exchange after.

  Args:
    learning_rate: γ, a float or an optax schedule.
    b1: β1 in [0, 1).
    b2: β2 in [0, 1).
    eps: ε > 0, added to √v.
    weight_decay: λ >= 0 (DeepSpeed's ``weight_decay``); > 0 needs the
      params in ``update``.
    freeze_step: T_w >= 1, the warm-up steps of Adam before v is frozen
      (DeepSpeed's default, 100000; the paper warms up for 15–25% of
      training).
    compressor: C (default: ``scaled_sign(zeros=zeros, scale="l2")``).
    server_compressor: the server's C (default: ``compressor``) under
      ``allgather``, ``allreduce`` or ``auto``; under ``two_phase`` pass it to
      the scheme instead.
    zeros: the default compressor's sign(0): ``"keep"`` (default, 0) or
      ``"plus"`` (+1, DeepSpeed's 1-bit wire).
    axis_name: the worker axis (``None``: one worker; no exchange and no
      server step under ``two_phase``).
    key: seed or PRNG key; split every step (the sign draws nothing; a
      randomized ``compressor`` does).
    scheme: the exchange of the compression stage: ``None`` (default,
      ``compopt.exchange.two_phase(C)``), ``two_phase`` with another server
      compressor or none (the averaged chunks all-gathered dense), or
      ``"allgather"``, ``"allreduce"``, ``"auto"``: the workers' compressed
      momenta are averaged exactly and every worker computes the server's
      step m̄_t = C_s[·] with its error δ̄ itself (state
      ``server_error``), Alg. 1 with the server replicated.
    skip_nonfinite: skip the step on every worker when any worker's input,
      or the update or state the step computed from it, holds inf/NaN,
      leaving the state as it was; after 100 skipped in a row, a non-finite
      step is applied, so that a stuck run shows (see
      :func:`compopt.skip_nonfinite`; one 4-byte all-reduce per step).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose first state is an
    :class:`OnebitAdamState`.

  Example:
    >>> import compopt, jax.numpy as jnp
    >>> opt = compopt.onebit_adam(0.1, freeze_step=1)
    >>> state = opt.init(jnp.zeros(4))
    >>> u, state = opt.update(jnp.array([2., -1., 0., 1.]), state)  # warm-up: Adam
    >>> round(float(u[0]), 4)   # −γ(1 − β1)/√(1 − β2): no bias correction
    -0.3162
    >>> u, state = opt.update(jnp.array([2., -1., 0., 4.]), state)  # compressed
    >>> [round(float(m), 4) for m in state[0].mu]   # ±‖m_t + δ‖₂/√d, sign(0) = 0
    [0.3243, -0.3243, 0.0, 0.3243]

  References:
    Tang, Gan, Awan, Rajbhandari, Li, Lian, Liu, Zhang, He. 1-bit Adam:
    communication efficient large-scale training with Adam's convergence
    speed, ICML 2021. https://arxiv.org/abs/2102.02888
  """
  owner = "onebit_adam"
  checks.check_learning_rate(learning_rate, owner)
  _check_hyperparams(b1, b2, eps, weight_decay, owner)
  freeze_step = checks.check_int(freeze_step, "freeze_step", owner, lo=1,
                                 hi=np.iinfo(np.int32).max - 1)
  compressor, scheme, server = _compressors(compressor, server_compressor, zeros,
                                            scheme, owner)
  core = _scale_by_onebit_adam(
      b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
      schedule=_freeze_schedule(freeze_step), compressor=compressor,
      scheme=scheme, server=server, axis_name=axis_name, key=key, owner=owner)
  return guard.chain(core, optax.scale_by_learning_rate(learning_rate),
                     axis_name=axis_name, skip_nonfinite=skip_nonfinite, owner=owner)


def zero_one_adam(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    var_freeze_step: int = 100_000,
    var_update_scaler: int = 16,
    compressor: cbase.Compressor | None = None,
    server_compressor: cbase.Compressor | None = None,
    zeros: str = "keep",
    axis_name: str | None = None,
    key: jax.Array | int = 0,
    scheme: SchemeArg = None,
    skip_nonfinite: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""0/1 Adam's adaptive variance freezing (Lu et al. 2022) on 1-bit Adam:
  v is refreshed on a sparse schedule T_v, and every other step sends the
  momentum as error-compensated 1-bit signs.

  On steps t ∈ T_v the gradient is all-reduced at full precision and both
  moments take an Adam step on ḡ_t = (1/n) Σ_i g_t^(i); on the others v
  stays as it is and the momentum crosses the wire compressed, as in
  :func:`onebit_adam`'s compression stage:

  .. math::

    t \in \mathcal{T}_v:\ m_t = \beta_1 m_{t-1} + (1-\beta_1)\bar g_t,\
      v_t = \beta_2 v_{t-1} + (1-\beta_2)\bar g_t^2;

    t \notin \mathcal{T}_v:\ m_t = \mathcal{C}\Big[\tfrac1n\textstyle\sum_i
      \mathcal{C}[\beta_1 m_{t-1} + (1-\beta_1) g_t^{(i)} + \delta^{(i)}]
      + \bar\delta\Big],\ v_t = v_{t-1}

  (with the worker errors δ^(i) and the server error δ̄ updated as there), and
  x_{t+1} = x_t − γ_t (m_t/(√v_t + ε) + λ x_t).

  T_v is DeepSpeed's ``ZeroOneAdam`` schedule: an interval I, starting at 1;
  step t (counted from 1) is in T_v when I divides t and t ≤
  ``var_freeze_step``; after κ = ``var_update_scaler`` variance updates at
  one interval, I doubles. For κ = 16: steps 1–16, then every 2nd step up to
  48, every 4th up to 112, ... The errors δ^(i), δ̄ are kept across the
  dense steps.

  Left out: 0/1 Adam's 1-bit sync skipping (local steps between
  synchronisations, T_u): here every step synchronises (T_u = all steps),
  the momentum rather than its γ-weighted sum u is compressed (the same for
  a constant γ), and the steps outside T_v send the momentum where
  DeepSpeed's code sends the gradient before ``var_freeze_step``.

  Args:
    learning_rate: γ, a float or an optax schedule.
    b1: β1 in [0, 1).
    b2: β2 in [0, 1).
    eps: ε > 0, added to √v.
    weight_decay: λ >= 0; > 0 needs the params in ``update``.
    var_freeze_step: the last step that may update v, an int >= 1
      (max T_v; DeepSpeed's default 100000, usually the end of the learning
      rate warm-up).
    var_update_scaler: κ, variance updates per interval before it doubles,
      an int >= 1 (DeepSpeed's default 16).
    compressor: C (default: ``scaled_sign(zeros=zeros, scale="l2")``).
    server_compressor: the server's C, as in :func:`onebit_adam`.
    zeros: the default compressor's sign(0): ``"keep"`` (default) or
      ``"plus"`` (see :func:`onebit_adam`).
    axis_name: the worker axis (``None``: one worker).
    key: seed or PRNG key; split every step.
    scheme: the exchange of the compressed steps, as in :func:`onebit_adam`
      (default: ``compopt.exchange.two_phase(C)``).
    skip_nonfinite: skip the step on every worker when any worker's input,
      or the update or state the step computed from it, holds inf/NaN,
      leaving the state as it was; after 100 skipped in a row, a non-finite
      step is applied, so that a stuck run shows (see
      :func:`compopt.skip_nonfinite`; one 4-byte all-reduce per step).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose first state is an
    :class:`OnebitAdamState`.

  Example:
    >>> import compopt, jax.numpy as jnp
    >>> opt = compopt.zero_one_adam(0.1, var_update_scaler=1)
    >>> state = opt.init(jnp.zeros(2))
    >>> dense = []   # the steps t ∈ T_v, where v moves
    >>> for t in range(1, 11):
    ...   nu = state[0].nu
    ...   u, state = opt.update(jnp.array([1., -1.]), state)
    ...   if bool((state[0].nu != nu).any()): dense.append(t)
    >>> dense, int(state[0].var_interval)
    ([1, 2, 4, 8], 16)

  References:
    Lu, Li, Zhang, De Sa, He. Maximizing communication efficiency for
    large-scale training via 0/1 Adam, ICLR 2023.
    https://arxiv.org/abs/2202.06009

    Tang, Gan, Awan, Rajbhandari, Li, Lian, Liu, Zhang, He. 1-bit Adam:
    communication efficient large-scale training with Adam's convergence
    speed, ICML 2021. https://arxiv.org/abs/2102.02888
  """
  owner = "zero_one_adam"
  checks.check_learning_rate(learning_rate, owner)
  _check_hyperparams(b1, b2, eps, weight_decay, owner)
  var_freeze_step = checks.check_int(var_freeze_step, "var_freeze_step", owner, lo=1,
                                     hi=np.iinfo(np.int32).max - 1)
  var_update_scaler = checks.check_int(var_update_scaler, "var_update_scaler", owner,
                                       lo=1, hi=np.iinfo(np.int32).max)
  compressor, scheme, server = _compressors(compressor, server_compressor, zeros,
                                            scheme, owner)
  core = _scale_by_onebit_adam(
      b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
      schedule=_variance_schedule(var_freeze_step, var_update_scaler),
      compressor=compressor, scheme=scheme, server=server,
      axis_name=axis_name, key=key, owner=owner)
  return guard.chain(core, optax.scale_by_learning_rate(learning_rate),
                     axis_name=axis_name, skip_nonfinite=skip_nonfinite, owner=owner)
