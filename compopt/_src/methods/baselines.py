"""Sign-based baselines: signSGD with majority vote, Signum, scaled signSGD."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from compopt._src import checks
from compopt._src.compressors import sign as csign
from compopt._src.methods import dcsgd as dcsgd_lib
from compopt._src.methods import guard
from compopt._src.typing import SchemeArg


def majority_vote() -> optax.GradientTransformationExtraArgs:
  r"""sign(u): the server's vote on an aggregate of signs.

  Applied to mean_i sign(g_i) it gives sign(Σ_i sign(g_i)), signSGD's
  majority vote (a tie gives 0). Stateless; keeps the update's dtype.
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    return jax.tree.map(jnp.sign, updates), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def signsgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    axis_name: str | None = None,
    scheme: SchemeArg = None,
    zeros: str = "keep",
    skip_nonfinite: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""signSGD with majority vote.

  .. math::

    x \leftarrow x - \gamma\,\mathrm{sign}\Big(\sum_{i=1}^n \mathrm{sign}(g_i)\Big).

  Biased; it can fail to converge (Karimireddy et al. 2019, §3); see
  :func:`ef_signsgd`. Each worker sends sign(g_i) and a float32 scale (1; 0
  for an all-zero leaf of the 1-bit form; NaN for a non-finite g_i); a tie
  in the vote gives 0.

  ``zeros`` sets sign(0), what a worker sends for a coordinate whose
  gradient is exactly 0. The default, ``"keep"``, sends sign(0) = 0 as in the
  formula above, so that a parameter whose gradient is 0 on every worker (an
  embedding row not in the batch, a dead unit, a masked weight) does not
  move; the price is 1.6 bits per coordinate (a base-3 code, five per byte)
  instead of 1. ``"plus"`` sends one bit, with 0 sent as +1: such a
  parameter then moves by −γ at every step (−2 after 20 steps at γ = 0.1).

  Args:
    learning_rate: γ, a float or an optax schedule.
    axis_name: the worker axis (``None``: one worker).
    scheme: how the workers exchange the signs: ``None`` or ``"allgather"``
      (default), ``"allreduce"``, ``"auto"``, or a :mod:`compopt.exchange`
      scheme such as ``two_phase()``.
    zeros: ``"keep"`` (default): sign(0) = 0, ceil(d/5) bytes per leaf of d
      coordinates; ``"plus"``: zeros sent as +1, ceil(d/8) bytes
      (:func:`compopt.compressors.sign`).
    skip_nonfinite: skip the step on every worker when any worker's input,
      or the update or state the step computed from it, holds inf/NaN,
      leaving the state as it was; after 100 skipped in a row, a non-finite
      step is applied, so that a stuck run shows (see
      :func:`compopt.skip_nonfinite`; one 4-byte all-reduce per step).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import compopt, jax.numpy as jnp
    >>> opt = compopt.signsgd(0.1)
    >>> state = opt.init(jnp.zeros(3))
    >>> opt.update(jnp.array([0.5, -3., 0.]), state)[0]
    Array([-0.1,  0.1, -0. ], dtype=float32)
    >>> opt = compopt.signsgd(0.1, zeros="plus")
    >>> opt.update(jnp.array([0.5, -3., 0.]), opt.init(jnp.zeros(3)))[0]
    Array([-0.1,  0.1, -0.1], dtype=float32)

  References:
    Bernstein, Wang, Azizzadenesheli, Anandkumar. signSGD: compressed
    optimisation for non-convex problems, ICML 2018.
    https://arxiv.org/abs/1802.04434
  """
  owner = "signsgd"
  checks.check_learning_rate(learning_rate, owner)
  compressor = csign.sign(csign.check_zeros(zeros, owner))
  return guard.chain(
      dcsgd_lib._compressed_mean(compressor, axis_name=axis_name, sampling=None, key=0,
                                 scheme=scheme, owner=owner),
      majority_vote(),
      optax.scale_by_learning_rate(learning_rate),
      axis_name=axis_name, skip_nonfinite=skip_nonfinite, owner=owner)


def signum(
    learning_rate: optax.ScalarOrSchedule,
    *,
    momentum: float = 0.9,
    axis_name: str | None = None,
    scheme: SchemeArg = None,
    zeros: str = "keep",
    skip_nonfinite: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""Signum: signSGD on each worker's momentum, with majority vote.

  .. math::

    m_i \leftarrow \beta m_i + (1-\beta) g_i, \quad
    x \leftarrow x - \gamma\,\mathrm{sign}\Big(\sum_i \mathrm{sign}(m_i)\Big).

  ``zeros`` sets sign(0), as for :func:`signsgd`: by default (``"keep"``,
  1.6 bits per coordinate) a parameter whose gradient has always been 0
  (so m_i = 0) does not move; ``"plus"`` (1 bit) moves it by −γ every step.

  Args:
    learning_rate: γ, a float or an optax schedule.
    momentum: β.
    axis_name: the worker axis (``None``: one worker).
    scheme: how the workers exchange the signs: ``None`` or ``"allgather"``
      (default), ``"allreduce"``, ``"auto"``, or a :mod:`compopt.exchange`
      scheme such as ``two_phase()``.
    zeros: ``"keep"`` (default): sign(0) = 0, 1.6 bits per coordinate;
      ``"plus"``: zeros sent as +1, 1 bit (:func:`compopt.compressors.sign`).
    skip_nonfinite: skip the step on every worker when any worker's input,
      or the update or state the step computed from it, holds inf/NaN,
      leaving the state as it was; after 100 skipped in a row, a non-finite
      step is applied, so that a stuck run shows (see
      :func:`compopt.skip_nonfinite`; one 4-byte all-reduce per step).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import compopt, jax.numpy as jnp
    >>> opt = compopt.signum(0.1)
    >>> state = opt.init(jnp.zeros(2))
    >>> opt.update(jnp.array([0.5, -3.]), state)[0]
    Array([-0.1,  0.1], dtype=float32)

  References:
    Bernstein, Wang, Azizzadenesheli, Anandkumar. signSGD: compressed
    optimisation for non-convex problems, ICML 2018.
    https://arxiv.org/abs/1802.04434
  """
  owner = "signum"
  checks.check_learning_rate(learning_rate, owner)
  checks.check_interval(momentum, "momentum", owner, 0.0, 1.0, high_open=True)
  compressor = csign.sign(csign.check_zeros(zeros, owner))
  return guard.chain(
      optax.ema(momentum, debias=False),  # m_i on the worker
      dcsgd_lib._compressed_mean(compressor, axis_name=axis_name, sampling=None, key=0,
                                 scheme=scheme, owner=owner),
      majority_vote(),
      optax.scale_by_learning_rate(learning_rate),
      axis_name=axis_name, skip_nonfinite=skip_nonfinite, owner=owner)


def scaled_signsgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    axis_name: str | None = None,
    momentum: float | None = None,
    scheme: SchemeArg = None,
    zeros: str = "keep",
    skip_nonfinite: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""Scaled signSGD: DCSGD with the layer-wise scaled sign.

  Karimireddy et al. 2019, §6.

  .. math::

    x \leftarrow x - \gamma\,\frac1n\sum_i \frac{\|g_i\|_1}{d}\,\mathrm{sign}(g_i).

  ``zeros`` sets sign(0) (:func:`compopt.compressors.scaled_sign`). The
  default, ``"keep"``, sends sign(0) = 0 as in the formula: a parameter whose
  gradient is 0 on every worker does not move, for 1.6 bits per coordinate
  instead of 1. With ``"plus"`` (1 bit, 0 sent as +1) it moves by
  −γ·mean_i ‖g_i‖₁/d at every step in which the rest of its leaf has a
  gradient.

  Args:
    learning_rate: γ, a float or an optax schedule.
    axis_name: the worker axis (``None``: one worker).
    momentum: optional momentum on the aggregate.
    scheme: how the workers exchange the signs: ``None`` or ``"allgather"``
      (default), ``"allreduce"``, ``"auto"``, or a :mod:`compopt.exchange`
      scheme such as ``two_phase()``.
    zeros: ``"keep"`` (default): sign(0) = 0, ceil(d/5) bytes per leaf of d
      coordinates; ``"plus"``: zeros sent as +1, ceil(d/8) bytes. Either way
      one float32 scale per leaf.
    skip_nonfinite: skip the step on every worker when any worker's input,
      or the update or state the step computed from it, holds inf/NaN,
      leaving the state as it was; after 100 skipped in a row, a non-finite
      step is applied, so that a stuck run shows (see
      :func:`compopt.skip_nonfinite`; one 4-byte all-reduce per step).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import compopt, jax.numpy as jnp
    >>> opt = compopt.scaled_signsgd(0.1)
    >>> state = opt.init(jnp.zeros(2))
    >>> opt.update(jnp.array([1., -3.]), state)[0]
    Array([-0.2,  0.2], dtype=float32)

  References:
    Karimireddy, Rebjock, Stich, Jaggi. Error feedback fixes SignSGD and other
    gradient compression schemes, ICML 2019. https://arxiv.org/abs/1901.09847
  """
  owner = "scaled_signsgd"
  compressor = csign.scaled_sign(csign.check_zeros(zeros, owner))
  return dcsgd_lib._dcsgd(learning_rate, compressor=compressor,
                          axis_name=axis_name, sampling=None, momentum=momentum,
                          nesterov=False, key=0, scheme=scheme,
                          skip_nonfinite=skip_nonfinite, owner=owner)
