"""COMP-AMS (Li & Li 2022, Alg. 2): error feedback on the workers, AMSGrad on
the (replicated) server."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from compopt._src import checks
from compopt._src.methods import dcsgd as dcsgd_lib
from compopt._src.methods import error_feedback as ef_lib
from compopt._src.methods import guard
from compopt._src.typing import CompressorArg
from compopt._src.typing import SchemeArg
from compopt._src.typing import DTypeArg


class ScaleByCompAmsState(NamedTuple):
  """State of :func:`scale_by_comp_ams`."""
  mu: optax.Updates  # m_t
  nu: optax.Updates  # v_t
  nu_max: optax.Updates  # v̂_t


def _check_hyperparams(b1, b2, eps, owner):
  # Traced values (under optax.inject_hyperparams) cannot be checked here.
  checks.check_interval(b1, "b1", owner, 0.0, 1.0, high_open=True)
  checks.check_interval(b2, "b2", owner, 0.0, 1.0, high_open=True)
  checks.check_interval(eps, "eps", owner, 0.0, float("inf"), low_open=True,
                        high_open=True)


def scale_by_comp_ams(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    mu_dtype: DTypeArg = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The server step of COMP-AMS (Li & Li 2022, Alg. 2 lines 13–16).

  .. math::

    m_t = \beta_1 m_{t-1} + (1 - \beta_1)\bar g_t,\quad
    v_t = \beta_2 v_{t-1} + (1 - \beta_2)\bar g_t^2,\quad
    \hat v_t = \max(\hat v_{t-1}, v_t),\quad
    \text{output } \frac{m_t}{\sqrt{\hat v_t + \epsilon}}.

  Unlike ``optax.scale_by_amsgrad``'s defaults there is no bias correction
  and ε sits inside the square root (optax: m̂/(√v̂ + ε) with m̂ = m/(1 − β1^t),
  v̂ the max of bias-corrected v). Early steps therefore move MORE than
  optax's. From m_0 = v_0 = v̂_0 = 0 the first step is

  .. math::

    \frac{m_1}{\sqrt{\hat v_1 + \epsilon}}
      = \frac{(1 - \beta_1) g}{\sqrt{(1 - \beta_2) g^2 + \epsilon}}
      \approx \frac{1 - \beta_1}{\sqrt{1 - \beta_2}}\,\mathrm{sign}(g)
      \approx 3.16\,\mathrm{sign}(g)

  for the defaults (where (1 − β2)g² ≫ ε, i.e. ``|g|`` ≫ √(ε/(1 − β2)) ≈ 3.2e-3),
  while optax's is m̂_1/(√v̂_1 + ε) = g/(``|g|`` + ε) ≈ sign(g). For a constant
  gradient the ratio of the two at step t is (1 − β1^t)/√(1 − β2^t): 3.16 at
  t = 1, largest (≈ 6.6) at t = 12, 3.2 at t = 100, 1.26 at t = 1000, and 1
  in the limit. So a learning rate tuned for ``optax.amsgrad`` moves up to
  6.6× farther here early in training; for ``|g|`` of order √(ε/(1 − β2)) or
  smaller, ε shrinks this step instead. In float32 it equals
  ``optax.scale_by_amsgrad(b1, b2, eps=0, eps_root=eps,
  bias_correction_mu=False, bias_correction_nu=False)`` (optax ≥ 0.2.7); this
  form keeps the moments v_t and v̂_t in float32 for bfloat16 updates too.

  Args:
    b1: β1 in [0, 1).
    b2: β2 in [0, 1).
    eps: ε > 0, inside the square root.
    mu_dtype: optional dtype of m (default: the updates' dtype promoted to
      float32).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import compopt, jax.numpy as jnp
    >>> tx = compopt.scale_by_comp_ams()
    >>> u, _ = tx.update(jnp.array([2.0, -0.5]), tx.init(jnp.zeros(2)))
    >>> [round(float(v), 3) for v in u]   # ±(1 − β1)/√(1 − β2)
    [3.162, -3.162]

  References:
    Li, Li. On distributed adaptive optimization with gradient compression,
    ICLR 2022. https://arxiv.org/abs/2205.05632
  """
  owner = "scale_by_comp_ams"
  _check_hyperparams(b1, b2, eps, owner)
  mu_dtype = checks.resolve_dtype(mu_dtype, "mu_dtype", owner)

  def init_fn(params):
    def zeros(dtype=None):
      return jax.tree.map(
          lambda p: jnp.zeros(p.shape, dtype or jnp.promote_types(p.dtype, jnp.float32)),
          params)
    return ScaleByCompAmsState(mu=zeros(mu_dtype), nu=zeros(), nu_max=zeros())

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    checks.check_same_tree(updates, state.mu, owner, "mu")
    g = jax.tree.map(lambda u: u.astype(jnp.float32), updates)
    mu = jax.tree.map(lambda m, x: (b1 * m + (1 - b1) * x).astype(m.dtype), state.mu, g)
    nu = jax.tree.map(lambda v, x: (b2 * v + (1 - b2) * x * x).astype(v.dtype), state.nu, g)
    nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu)
    out = jax.tree.map(lambda m, v, u: (m / jnp.sqrt(v + eps)).astype(u.dtype),
                       mu, nu_max, updates)
    return out, ScaleByCompAmsState(mu=mu, nu=nu, nu_max=nu_max)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def worker_error_feedback(
    compressor: CompressorArg,
    *,
    axis_name: str | None = None,
    key: jax.Array | int = 0,
    error_dtype: DTypeArg = jnp.float32,
    scheme: SchemeArg = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Error feedback without a step size: outputs mean_i C(g_i + e_i).

  .. math::

    \tilde g_i = \mathcal{C}(g_i + e_i),\quad e_i \leftarrow e_i + g_i - \tilde g_i,
    \quad\text{output } \bar g = \tfrac1n\textstyle\sum_i \tilde g_i

  (Li & Li 2022, Alg. 2 lines 7–12). It is :func:`compopt.error_feedback`
  on g instead of −γg (``scheme`` as there); its state is an
  :class:`compopt.ErrorFeedbackState`.

  Args:
    compressor: C, e.g. ``top_k(ratio=0.01)`` or ``block_sign()``.
    axis_name: the worker axis (``None``: one worker).
    key: seed or PRNG key; split every step.
    error_dtype: dtype of e_i (float32 by default).
    scheme: how the workers exchange payloads (see :func:`compopt.error_feedback`).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  References:
    Li, Li. On distributed adaptive optimization with gradient compression,
    ICLR 2022. https://arxiv.org/abs/2205.05632
  """
  return ef_lib._error_feedback(compressor, axis_name=axis_name, key=key,
                                error_dtype=error_dtype, scheme=scheme,
                                owner="worker_error_feedback", scaled_step=False)


def comp_ams(
    learning_rate: optax.ScalarOrSchedule,
    *,
    compressor: CompressorArg,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    error_feedback: bool = True,
    optax_amsgrad: bool = False,
    axis_name: str | None = None,
    key: jax.Array | int = 0,
    error_dtype: DTypeArg = jnp.float32,
    scheme: SchemeArg = None,
    skip_nonfinite: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""COMP-AMS (Li & Li 2022, Alg. 2): compressed gradients with error feedback,
  averaged and fed to AMSGrad on the server.

  .. math::

    \tilde g_{t,i} = \mathcal{C}(g_{t,i} + e_{t,i}),\quad
    e_{t+1,i} = e_{t,i} + g_{t,i} - \tilde g_{t,i},\quad
    \bar g_t = \tfrac1n\textstyle\sum_i \tilde g_{t,i},

    m_t = \beta_1 m_{t-1} + (1-\beta_1)\bar g_t,\
    v_t = \beta_2 v_{t-1} + (1-\beta_2)\bar g_t^2,\
    \hat v_t = \max(\hat v_{t-1}, v_t),\
    \theta_{t+1} = \theta_t - \eta_t \frac{m_t}{\sqrt{\hat v_t + \epsilon}}.

  The server's moments are replicated on every worker (each computes the same
  step from the same ḡ); only the compressed g̃_i cross the wire.

  Args:
    learning_rate: η, a float or an optax schedule (the paper's linear-speedup
      runs use 1e-4·√n).
    compressor: C, e.g. ``top_k(ratio=0.01)`` or ``block_sign()``.
    b1, b2, eps: AMSGrad's β1, β2, ε (paper defaults 0.9, 0.999).
    error_feedback: ``False`` sends C(g_i) without memory (the paper's
      "without EF" comparisons).
    optax_amsgrad: use ``optax.scale_by_amsgrad`` (bias correction, ε outside
      the root) instead of the paper's server step, whose early steps are
      longer (3.16× on the first step for the defaults, see
      :func:`scale_by_comp_ams`). It computes in the
      updates' dtype: with float16 updates ε = 1e-8 rounds to 0 and a zero
      coordinate gives 0/0 = NaN, so every step is skipped (and past the
      guard's bound applied); the paper's step keeps its moments in float32.
    axis_name: the worker axis (``None``: one worker).
    key: seed or PRNG key; split every step.
    error_dtype: dtype of e_i (float32 by default).
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
    >>> opt = compopt.comp_ams(1e-3, compressor=compopt.compressors.top_k(1))
    >>> state = opt.init(jnp.zeros(3))
    >>> updates, state = opt.update(jnp.array([1., -3., 2.]), state)

  References:
    Li, Li. On distributed adaptive optimization with gradient compression,
    ICLR 2022. https://arxiv.org/abs/2205.05632
  """
  owner = "comp_ams"
  _check_hyperparams(b1, b2, eps, owner)
  checks.check_learning_rate(learning_rate, owner)
  checks.check_bool(error_feedback, "error_feedback", owner)
  checks.check_bool(optax_amsgrad, "optax_amsgrad", owner)
  if error_feedback:
    workers = ef_lib._error_feedback(compressor, axis_name=axis_name, key=key,
                                     error_dtype=error_dtype, scheme=scheme, owner=owner,
                                     scaled_step=False)
  else:
    workers = dcsgd_lib._compressed_mean(compressor, axis_name=axis_name, sampling=None,
                                         key=key, scheme=scheme, owner=owner)
  server = (optax.scale_by_amsgrad(b1=b1, b2=b2, eps=eps) if optax_amsgrad
            else scale_by_comp_ams(b1=b1, b2=b2, eps=eps))
  return guard.chain(workers, server, optax.scale_by_learning_rate(learning_rate),
                     axis_name=axis_name, skip_nonfinite=skip_nonfinite, owner=owner)
