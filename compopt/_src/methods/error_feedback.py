"""The error-feedback family: EF-SGD / EF-SignSGD, EF21-SGD, DoubleSqueeze."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from compopt._src import checks
from compopt._src import comm
from compopt._src import counters
from compopt._src import reshard
from compopt._src import schemes
from compopt._src.compressors import base as cbase
from compopt._src.compressors import sign as csign
from compopt._src.methods import guard
from compopt._src.typing import CompressorArg
from compopt._src.typing import OptionalCompressorArg
from compopt._src.typing import SchemeArg
from compopt._src.typing import DTypeArg


@reshard.rules(error=reshard.MEAN)
class ErrorFeedbackState(NamedTuple):
  """State of :func:`error_feedback` (and of COMP-AMS's workers)."""
  key: jax.Array  # uint32[2], split every step
  error: optax.Updates  # e_i, this worker's residual, in error_dtype
  bits: counters.CommBits
  scheme_state: Any  # the exchange scheme's state (two_phase's server error)


def error_feedback(
    compressor: CompressorArg,
    *,
    axis_name: str | None = None,
    key: jax.Array | int = 0,
    error_dtype: DTypeArg = jnp.float32,
    scheme: SchemeArg = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Error feedback on the workers: sends C(p_i), keeps p_i − C(p_i).

  Its input is a step already scaled by the learning rate, in optax's sign
  convention, u_i = −γ g_i (place it after ``optax.scale_by_learning_rate``):

  .. math::

    p_i = \gamma g_i + e_i, \quad \Delta_i = \mathcal{C}(p_i), \quad
    e_i \leftarrow p_i - \Delta_i, \quad
    \text{output } -\frac{1}{n}\sum_i \Delta_i.

  p_i is sent in the update's dtype; what the cast rounds away stays in e_i
  (kept in ``error_dtype``), so nothing is lost even for bfloat16 updates.

  Args:
    compressor: C (any compopt compressor; the papers use contractive ones).
    axis_name: the worker axis (``None``: one worker).
    key: seed or PRNG key; split every step.
    error_dtype: dtype of e_i (float32 by default, also for bf16 params);
      ``None`` uses the params' dtype.
    scheme: how the workers exchange payloads: ``None`` or ``"allgather"``
      (default), ``"allreduce"``, ``"auto"``, or a :mod:`compopt.exchange`
      scheme such as ``two_phase(server_compressor)``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  References:
    Karimireddy, Rebjock, Stich, Jaggi. Error feedback fixes SignSGD and other
    gradient compression schemes, ICML 2019 (Alg. 2).
    https://arxiv.org/abs/1901.09847
  """
  return _error_feedback(compressor, axis_name=axis_name, key=key,
                         error_dtype=error_dtype, scheme=scheme, owner="error_feedback",
                         scaled_step=True)


def _error_feedback(compressor, *, axis_name, key, error_dtype, scheme, owner,
                    scaled_step):
  """Worker error feedback, reporting errors as ``owner``.

  ``scaled_step=True``: the input is the step u_i = −γ g_i and the output
  −mean_i Δ_i (:func:`error_feedback`); ``False``: the input is g_i itself
  and the output +mean_i Δ_i (COMP-AMS's workers, Li & Li 2022, Alg. 2
  lines 7–12). Both compute p_i = e_i + (γ) g_i exactly.
  """
  cbase.check_compressor(compressor, owner)
  checks.check_axis_name(axis_name, owner)
  checks.check_key(key, owner, seed=True)
  error_dtype = checks.resolve_dtype(error_dtype, "error_dtype", owner)
  scheme = schemes.resolve(scheme, owner)

  def init_fn(params):
    return ErrorFeedbackState(
        key=checks.prng_key(key, owner),
        error=optax.tree_utils.tree_zeros_like(params, error_dtype),
        bits=counters.zero_bits(), scheme_state=scheme.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    checks.check_floating_tree(updates, owner)
    checks.check_same_tree(updates, state.error, owner, "error")
    next_key, step_key = jax.random.split(state.key)
    # p_t = γ g_t + e_t   (Karimireddy et al. 2019, Alg. 2 line 5)
    if scaled_step:  # updates = −γ g_t
      p = jax.tree.map(lambda u, e: e - u.astype(e.dtype), updates, state.error)
    else:  # updates = g_t
      p = jax.tree.map(lambda u, e: e + u.astype(e.dtype), updates, state.error)
    p_wire = jax.tree.map(lambda q, u: q.astype(u.dtype), p, updates)
    # Δ_t = C(p_t), sent; the mean over workers comes back.
    out = comm.exchange(compressor, p_wire, step_key, axis_name, scheme=scheme,
                        state=state.scheme_state, owner=owner, return_own=True)
    # e_{t+1} = p_t − Δ_t   (line 8)
    error = jax.tree.map(lambda q, d: q - d.astype(q.dtype), p, out.own)
    # x_{t+1} = x_t − mean_i Δ_{t,i}   (line 7)
    if scaled_step:
      new_updates = jax.tree.map(lambda d, u: (-d).astype(u.dtype), out.mean, updates)
    else:
      new_updates = jax.tree.map(lambda d, u: d.astype(u.dtype), out.mean, updates)
    return new_updates, ErrorFeedbackState(
        key=next_key, error=error, bits=counters.add_bits(state.bits, out.sent),
        scheme_state=out.state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def ef_sgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    compressor: CompressorArg,
    axis_name: str | None = None,
    key: jax.Array | int = 0,
    error_dtype: DTypeArg = jnp.float32,
    scheme: SchemeArg = None,
    skip_nonfinite: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""EF-SGD / MEM-SGD: compressed SGD with error feedback.

  Horváth & Richtárik 2021, Alg. 2, and Karimireddy et al. 2019, Alg. 2, on n
  workers:

  .. math::

    p_i = \gamma_t g_i + e_i, \quad \Delta_i = \mathcal{C}(p_i), \quad
    e_i \leftarrow p_i - \Delta_i, \quad
    x \leftarrow x - \frac{1}{n}\sum_i \Delta_i.

  The step size is inside the compressed vector, so under a schedule this is
  not "compress g, then scale". Invariant (Karimireddy et al. 2019, Thm IV):
  x_t − mean_i e_{t,i} = x_0 − Σ_s γ_s mean_i g_{s,i}.

  Args:
    learning_rate: γ, a float or an optax schedule.
    compressor: C, e.g. ``compopt.compressors.top_k(ratio=0.01)``.
    axis_name: the worker axis (``None``: one worker).
    key: seed or PRNG key; split every step.
    error_dtype: dtype of the error buffer e_i (float32 by default).
    scheme: how the workers exchange payloads: ``None`` or ``"allgather"``
      (default), ``"allreduce"``, ``"auto"``, or a :mod:`compopt.exchange`
      scheme such as ``two_phase(server_compressor)``.
    skip_nonfinite: skip the step on every worker when any worker's input,
      or the update or state the step computed from it, holds inf/NaN,
      leaving the state as it was; after 100 skipped in a row, a non-finite
      step is applied, so that a stuck run shows (see
      :func:`compopt.skip_nonfinite`; one 4-byte all-reduce per step).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import compopt, jax.numpy as jnp
    >>> opt = compopt.ef_sgd(0.1, compressor=compopt.compressors.top_k(1))
    >>> state = opt.init(jnp.zeros(3))
    >>> opt.update(jnp.array([1., -3., 2.]), state)[0]
    Array([-0. ,  0.3, -0. ], dtype=float32)

  References:
    Karimireddy, Rebjock, Stich, Jaggi. Error feedback fixes SignSGD and other
    gradient compression schemes, ICML 2019. https://arxiv.org/abs/1901.09847

    Stich, Cordonnier, Jaggi. Sparsified SGD with memory, NeurIPS 2018.
    https://arxiv.org/abs/1809.07599
  """
  return _ef_sgd(learning_rate, compressor=compressor, axis_name=axis_name, key=key,
                 error_dtype=error_dtype, scheme=scheme, skip_nonfinite=skip_nonfinite,
                 owner="ef_sgd")


def _ef_sgd(learning_rate, *, compressor, axis_name, key, error_dtype, scheme,
            skip_nonfinite, owner):
  """:func:`ef_sgd`, reporting errors as ``owner`` (its aliases)."""
  checks.check_learning_rate(learning_rate, owner)
  return guard.chain(
      optax.scale_by_learning_rate(learning_rate),
      _error_feedback(compressor, axis_name=axis_name, key=key, error_dtype=error_dtype,
                      scheme=scheme, owner=owner, scaled_step=True),
      axis_name=axis_name, skip_nonfinite=skip_nonfinite, owner=owner)


def ef_signsgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    axis_name: str | None = None,
    key: jax.Array | int = 0,
    error_dtype: DTypeArg = jnp.float32,
    scheme: SchemeArg = None,
    zeros: str = "keep",
    skip_nonfinite: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""EF-SignSGD: :func:`ef_sgd` with the scaled sign.

  Karimireddy et al. 2019, Alg. 1.

  .. math::

    p_i = \gamma g_i + e_i, \quad \Delta_i = \frac{\|p_i\|_1}{d}\,\mathrm{sign}(p_i),
    \quad e_i \leftarrow p_i - \Delta_i, \quad x \leftarrow x - \frac1n\sum_i\Delta_i.

  Layer-wise (d = the size of each leaf), as in the paper's experiments: the
  signs of d coordinates and one 32-bit scale per leaf on the wire.

  ``zeros`` sets sign(0) (:func:`compopt.compressors.scaled_sign`). The
  default, ``"keep"``, sends sign(0) = 0 as in the formula: a coordinate whose
  gradient is 0 on every worker keeps p_i = e_i = 0 and its parameter does
  not move, for 1.6 bits per coordinate (ceil(d/5) bytes) instead of 1. With
  ``"plus"`` (ceil(d/8) bytes, 0 sent as +1) it receives Δ_i = +‖p_i‖₁/d,
  which the error feedback takes back later: as x − mean_i e_i does not move
  for it (Karimireddy et al. 2019, Thm IV), the parameter sits at its start
  plus mean_i e_i, off by up to a step, back and forth, instead of drifting.
  The scaled sign with zeros kept still contracts with
  δ(p) = φ(p)(2 − d_nz/d) ≥ φ(p) = ‖p‖₁²/(d‖p‖²) ≥ 1/d, the paper's
  constant (Lemma 8).

  Args:
    learning_rate: γ, a float or an optax schedule.
    axis_name: the worker axis (``None``: one worker).
    key: seed or PRNG key; split every step.
    error_dtype: dtype of the error buffer (float32 by default).
    scheme: how the workers exchange payloads: ``None`` or ``"allgather"``
      (default), ``"allreduce"``, ``"auto"``, or a :mod:`compopt.exchange`
      scheme such as ``two_phase(server_compressor)``.
    zeros: ``"keep"`` (default): sign(0) = 0, 1.6 bits per coordinate;
      ``"plus"``: zeros sent as +1, 1 bit.
    skip_nonfinite: skip the step on every worker when any worker's input,
      or the update or state the step computed from it, holds inf/NaN,
      leaving the state as it was; after 100 skipped in a row, a non-finite
      step is applied, so that a stuck run shows (see
      :func:`compopt.skip_nonfinite`; one 4-byte all-reduce per step).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import compopt, jax.numpy as jnp
    >>> opt = compopt.ef_signsgd(0.1)
    >>> state = opt.init(jnp.zeros(2))
    >>> opt.update(jnp.array([1., -3.]), state)[0]
    Array([-0.2,  0.2], dtype=float32)

  References:
    Karimireddy, Rebjock, Stich, Jaggi. Error feedback fixes SignSGD and other
    gradient compression schemes, ICML 2019. https://arxiv.org/abs/1901.09847
  """
  owner = "ef_signsgd"
  compressor = csign.scaled_sign(csign.check_zeros(zeros, owner))
  return _ef_sgd(learning_rate, compressor=compressor, axis_name=axis_name,
                 key=key, error_dtype=error_dtype, scheme=scheme,
                 skip_nonfinite=skip_nonfinite, owner=owner)


@reshard.rules(local=reshard.copy_of("shared"))
class EF21EstimatorState(NamedTuple):
  """State of :func:`ef21_estimator`."""
  key: jax.Array
  local: optax.Updates  # g_i, this worker's gradient estimate
  shared: optax.Updates  # g = mean_i g_i, identical on every worker
  bits: counters.CommBits
  scheme_state: Any  # the exchange scheme's state


def ef21_estimator(
    compressor: CompressorArg,
    *,
    axis_name: str | None = None,
    key: jax.Array | int = 0,
    state_dtype: DTypeArg = jnp.float32,
    scheme: SchemeArg = None,
) -> optax.GradientTransformationExtraArgs:
  r"""EF21's gradient estimator: outputs g = mean_i g_i, kept by compressed
  differences.

  .. math::

    c_i = \mathcal{C}(\nabla f_i(x) - g_i), \quad g_i \leftarrow g_i + c_i,
    \quad g \leftarrow g + \frac1n\sum_i c_i.

  With g_i = g = 0 at start, the first step sends C(∇f_i(x⁰)), the paper's
  initialisation g_i⁰ = C(∇f_i(x⁰)).

  Args:
    compressor: C (contractive in the paper).
    axis_name: the worker axis (``None``: one worker).
    key: seed or PRNG key; split every step.
    state_dtype: dtype of g_i and g (float32 by default).
    scheme: how the workers exchange payloads (see :func:`error_feedback`);
      g = mean_i g_i needs the exact mean, so ``two_phase`` without a server
      compressor only.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  References:
    Richtárik, Sokolov, Fatkhullin. EF21: a new, simpler, theoretically better,
    and practically faster error feedback, NeurIPS 2021.
    https://arxiv.org/abs/2106.05203
  """
  return _ef21_estimator(compressor, axis_name=axis_name, key=key,
                         state_dtype=state_dtype, scheme=scheme, owner="ef21_estimator")


def _ef21_estimator(compressor, *, axis_name, key, state_dtype, scheme, owner):
  """:func:`ef21_estimator`, reporting errors as ``owner``."""
  cbase.check_compressor(compressor, owner)
  checks.check_axis_name(axis_name, owner)
  checks.check_key(key, owner, seed=True)
  state_dtype = checks.resolve_dtype(state_dtype, "state_dtype", owner)
  scheme = schemes.resolve(scheme, owner, exact=True)

  def init_fn(params):
    return EF21EstimatorState(
        key=checks.prng_key(key, owner),
        local=optax.tree_utils.tree_zeros_like(params, state_dtype),
        shared=optax.tree_utils.tree_zeros_like(params, state_dtype),
        bits=counters.zero_bits(), scheme_state=scheme.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    checks.check_same_tree(updates, state.local, owner, "local")
    next_key, step_key = jax.random.split(state.key)
    # c_i = C(∇f_i(x^{t+1}) − g_i^t)
    diff = jax.tree.map(lambda g, gi: (g.astype(gi.dtype) - gi).astype(g.dtype),
                        updates, state.local)
    out = comm.exchange(compressor, diff, step_key, axis_name, scheme=scheme,
                        state=state.scheme_state, owner=owner, return_own=True)
    # g_i^{t+1} = g_i^t + c_i;  g^{t+1} = g^t + mean_i c_i
    local = jax.tree.map(lambda gi, ci: gi + ci.astype(gi.dtype), state.local, out.own)
    shared = jax.tree.map(lambda g, mc: g + mc.astype(g.dtype), state.shared, out.mean)
    estimate = jax.tree.map(lambda g, u: g.astype(u.dtype), shared, updates)
    return estimate, EF21EstimatorState(
        key=next_key, local=local, shared=shared,
        bits=counters.add_bits(state.bits, out.sent), scheme_state=out.state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def ef21(
    learning_rate: optax.ScalarOrSchedule,
    *,
    compressor: CompressorArg,
    axis_name: str | None = None,
    key: jax.Array | int = 0,
    state_dtype: DTypeArg = jnp.float32,
    scheme: SchemeArg = None,
    skip_nonfinite: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""EF21-SGD: x ← x − γ g with EF21's compressed gradient estimator.

  .. math::

    x^{t+1} = x^t - \gamma g^t, \quad
    c_i = \mathcal{C}(\nabla f_i(x^{t+1}) - g_i^t), \quad
    g_i^{t+1} = g_i^t + c_i, \quad g^{t+1} = g^t + \tfrac1n\textstyle\sum_i c_i.

  Here one optax step takes the gradient at x^t, refreshes g and then steps
  with the refreshed g (the same sequence, indices shifted by one).

  Args:
    learning_rate: γ, a float or an optax schedule.
    compressor: C, e.g. ``compopt.compressors.top_k(ratio=0.01)``.
    axis_name: the worker axis (``None``: one worker).
    key: seed or PRNG key; split every step.
    state_dtype: dtype of g_i and g (float32 by default).
    scheme: how the workers exchange payloads (see :func:`ef21_estimator`).
    skip_nonfinite: skip the step on every worker when any worker's input,
      or the update or state the step computed from it, holds inf/NaN,
      leaving the state as it was; after 100 skipped in a row, a non-finite
      step is applied, so that a stuck run shows (see
      :func:`compopt.skip_nonfinite`; one 4-byte all-reduce per step).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import compopt, jax.numpy as jnp
    >>> opt = compopt.ef21(0.1, compressor=compopt.compressors.top_k(1))
    >>> state = opt.init(jnp.zeros(3))
    >>> opt.update(jnp.array([1., -3., 2.]), state)[0]
    Array([-0. ,  0.3, -0. ], dtype=float32)

  References:
    Richtárik, Sokolov, Fatkhullin. EF21: a new, simpler, theoretically better,
    and practically faster error feedback, NeurIPS 2021.
    https://arxiv.org/abs/2106.05203
  """
  owner = "ef21"
  checks.check_learning_rate(learning_rate, owner)
  return guard.chain(
      _ef21_estimator(compressor, axis_name=axis_name, key=key, state_dtype=state_dtype,
                      scheme=scheme, owner=owner),
      optax.scale_by_learning_rate(learning_rate),
      axis_name=axis_name, skip_nonfinite=skip_nonfinite, owner=owner)


@reshard.rules(worker_error=reshard.MEAN)
class DoubleSqueezeEstimatorState(NamedTuple):
  """State of :func:`double_squeeze_estimator`."""
  key: jax.Array
  worker_error: optax.Updates  # δ_i, this worker's residual
  server_error: optax.Updates  # δ, the server's residual, replicated on all workers
  bits: counters.CommBits
  scheme_state: Any  # the exchange scheme's state


def double_squeeze_estimator(
    compressor: CompressorArg,
    *,
    server_compressor: OptionalCompressorArg = None,
    axis_name: str | None = None,
    key: jax.Array | int = 0,
    error_dtype: DTypeArg = jnp.float32,
    scheme: SchemeArg = None,
) -> optax.GradientTransformationExtraArgs:
  r"""DoubleSqueeze's estimator: error feedback on the workers and the server.

  .. math::

    v_i = \mathcal{C}(g_i + \delta_i),\ \delta_i \leftarrow g_i + \delta_i - v_i;
    \quad v = \tfrac1n\textstyle\sum_i v_i + \delta,\
    \text{output } \mathcal{C}_s(v),\ \delta \leftarrow v - \mathcal{C}_s(v).

  There is no separate server: every worker computes the server's step from
  the same aggregate with the same (shared) key, so δ and C_s(v) are
  identical everywhere. The bit counters record what the all-gather moves;
  the broadcast of C_s(v) that a parameter server would send is not counted.

  Args:
    compressor: the workers' C.
    server_compressor: the server's C_s (default: ``compressor``).
    axis_name: the worker axis (``None``: one worker).
    key: seed or PRNG key; split every step.
    error_dtype: dtype of δ_i and δ (float32 by default).
    scheme: how the workers exchange payloads (see :func:`error_feedback`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  References:
    Tang, Yu, Lian, Zhang, Liu. DoubleSqueeze: parallel stochastic gradient
    descent with double-pass error-compensated compression, ICML 2019.
    https://arxiv.org/abs/1905.05957
  """
  return _double_squeeze_estimator(
      compressor, server_compressor=server_compressor, axis_name=axis_name, key=key,
      error_dtype=error_dtype, scheme=scheme, owner="double_squeeze_estimator")


def _double_squeeze_estimator(compressor, *, server_compressor, axis_name, key,
                              error_dtype, scheme, owner):
  """:func:`double_squeeze_estimator`, reporting errors as ``owner``."""
  cbase.check_compressor(compressor, owner)
  server = cbase.check_compressor(
      compressor if server_compressor is None else server_compressor, owner,
      "server_compressor")
  checks.check_axis_name(axis_name, owner)
  checks.check_key(key, owner, seed=True)
  error_dtype = checks.resolve_dtype(error_dtype, "error_dtype", owner)
  scheme = schemes.resolve(scheme, owner)

  def init_fn(params):
    return DoubleSqueezeEstimatorState(
        key=checks.prng_key(key, owner),
        worker_error=optax.tree_utils.tree_zeros_like(params, error_dtype),
        server_error=optax.tree_utils.tree_zeros_like(params, error_dtype),
        bits=counters.zero_bits(), scheme_state=scheme.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    checks.check_same_tree(updates, state.worker_error, owner, "worker_error")
    next_key, step_key, server_key = jax.random.split(state.key, 3)
    # worker: g_i + δ_i, compressed and sent
    p = jax.tree.map(lambda g, e: g.astype(e.dtype) + e, updates, state.worker_error)
    p_wire = jax.tree.map(lambda q, g: q.astype(g.dtype), p, updates)
    out = comm.exchange(compressor, p_wire, step_key, axis_name, scheme=scheme,
                        state=state.scheme_state, owner=owner, return_own=True)
    worker_error = jax.tree.map(lambda q, v: q - v.astype(q.dtype), p, out.own)
    # server (replicated): v = mean_i v_i + δ;  C_s(v) with the shared key
    v = jax.tree.map(lambda m, e: m.astype(e.dtype) + e, out.mean, state.server_error)
    v_wire = jax.tree.map(lambda q, g: q.astype(g.dtype), v, updates)
    step = server(server_key if server.randomized else None, v_wire)
    server_error = jax.tree.map(lambda q, o: q - o.astype(q.dtype), v, step)
    step = jax.tree.map(lambda o, g: o.astype(g.dtype), step, updates)
    return step, DoubleSqueezeEstimatorState(
        key=next_key, worker_error=worker_error, server_error=server_error,
        bits=counters.add_bits(state.bits, out.sent), scheme_state=out.state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def double_squeeze(
    learning_rate: optax.ScalarOrSchedule,
    *,
    compressor: CompressorArg,
    server_compressor: OptionalCompressorArg = None,
    axis_name: str | None = None,
    key: jax.Array | int = 0,
    error_dtype: DTypeArg = jnp.float32,
    scheme: SchemeArg = None,
    skip_nonfinite: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""DoubleSqueeze: compressed both ways, error feedback on both sides.

  .. math::

    v_i = \mathcal{C}(g_i + \delta_i),\ \delta_i \leftarrow g_i + \delta_i - v_i;
    \quad v = \tfrac1n\textstyle\sum_i v_i + \delta,\
    \delta \leftarrow v - \mathcal{C}_s(v), \quad x \leftarrow x - \gamma\,\mathcal{C}_s(v).

  Args:
    learning_rate: γ, a float or an optax schedule.
    compressor: the workers' C.
    server_compressor: the server's C_s (default: ``compressor``).
    axis_name: the worker axis (``None``: one worker).
    key: seed or PRNG key; split every step.
    error_dtype: dtype of the error buffers (float32 by default).
    scheme: how the workers exchange payloads (see :func:`error_feedback`).
    skip_nonfinite: skip the step on every worker when any worker's input,
      or the update or state the step computed from it, holds inf/NaN,
      leaving the state as it was; after 100 skipped in a row, a non-finite
      step is applied, so that a stuck run shows (see
      :func:`compopt.skip_nonfinite`; one 4-byte all-reduce per step).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import compopt, jax.numpy as jnp
    >>> opt = compopt.double_squeeze(0.1, compressor=compopt.compressors.top_k(1))
    >>> state = opt.init(jnp.zeros(3))
    >>> opt.update(jnp.array([1., -3., 2.]), state)[0]
    Array([-0. ,  0.3, -0. ], dtype=float32)

  References:
    Tang, Yu, Lian, Zhang, Liu. DoubleSqueeze: parallel stochastic gradient
    descent with double-pass error-compensated compression, ICML 2019.
    https://arxiv.org/abs/1905.05957
  """
  return _double_squeeze(learning_rate, compressor=compressor,
                         server_compressor=server_compressor, axis_name=axis_name, key=key,
                         error_dtype=error_dtype, scheme=scheme,
                         skip_nonfinite=skip_nonfinite, owner="double_squeeze")


def _double_squeeze(learning_rate, *, compressor, server_compressor, axis_name, key,
                    error_dtype, scheme, skip_nonfinite, owner):
  """:func:`double_squeeze`, reporting errors as ``owner`` (NEOLITHIC)."""
  checks.check_learning_rate(learning_rate, owner)
  return guard.chain(
      _double_squeeze_estimator(compressor, server_compressor=server_compressor,
                                axis_name=axis_name, key=key, error_dtype=error_dtype,
                                scheme=scheme, owner=owner),
      optax.scale_by_learning_rate(learning_rate),
      axis_name=axis_name, skip_nonfinite=skip_nonfinite, owner=owner)
