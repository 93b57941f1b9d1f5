"""1-bit SGD (Seide et al. 2014): error feedback in gradient units with the
per-column 1-bit quantizer, then SGD with momentum on the aggregate."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from compopt._src import checks
from compopt._src.compressors import onebit as conebit
from compopt._src.methods import dcsgd as dcsgd_lib
from compopt._src.methods import error_feedback as error_feedback_lib
from compopt._src.methods import guard
from compopt._src.typing import DTypeArg
from compopt._src.typing import SchemeArg


def onebit_sgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    momentum: float | None = None,
    nesterov: bool = False,
    axis_name: str | None = None,
    key: jax.Array | int = 0,
    error_dtype: DTypeArg = jnp.float32,
    scheme: SchemeArg = None,
    skip_nonfinite: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""1-bit SGD (Seide et al. 2014): 1-bit gradients with error feedback.

  Each worker quantizes its gradient plus the residual it kept, sends one
  bit per coordinate and two reconstruction values per column
  (:func:`compopt.compressors.onebit`), and carries the quantization error
  over to the next step; the mean of the quantized gradients drives SGD
  (with momentum, as in the paper's data-parallel training):

  .. math::

    p_i = g_i + \Delta_i, \quad G_i = \mathcal{Q}(p_i), \quad
    \Delta_i \leftarrow p_i - G_i, \quad
    m \leftarrow \mu m + \frac{1}{n}\sum_i G_i, \quad x \leftarrow x - \gamma m.

  Unlike :func:`ef_sgd`, the residual Δ_i is in gradient units (the paper's
  form): the step size is applied after the exchange, so a schedule does not
  rescale what was kept. With ``momentum=None`` and a constant step size the
  two are the same method (Q(γp) = γQ(p)).

  Args:
    learning_rate: γ, a float or an optax schedule.
    momentum: μ in [0, 1), momentum on the aggregated gradient, or ``None``.
    nesterov: Nesterov momentum (with ``momentum``).
    axis_name: the worker axis (``None``: one worker).
    key: seed or PRNG key; split every step (the quantizer draws nothing,
      other schemes may).
    error_dtype: dtype of the residual Δ_i (float32 by default).
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
    >>> opt = compopt.onebit_sgd(0.1)
    >>> state = opt.init(jnp.zeros(3))
    >>> opt.update(jnp.array([1., -3., 2.]), state)[0]
    Array([-0.15,  0.3 , -0.15], dtype=float32)

  References:
    Seide, Fu, Droppo, Li, Yu. 1-bit stochastic gradient descent and its
    application to data-parallel distributed training of speech DNNs,
    Interspeech 2014.
  """
  owner = "onebit_sgd"
  checks.check_learning_rate(learning_rate, owner)
  return guard.chain(
      error_feedback_lib._error_feedback(  # pylint: disable=protected-access
          conebit.onebit(), axis_name=axis_name, key=key,
          error_dtype=error_dtype, scheme=scheme, owner=owner, scaled_step=False),
      dcsgd_lib._momentum(momentum, nesterov, owner),  # pylint: disable=protected-access
      optax.scale_by_learning_rate(learning_rate),
      axis_name=axis_name, skip_nonfinite=skip_nonfinite, owner=owner)
