"""NEOLITHIC (Huang et al. 2022, Alg. 2): error feedback on workers and server with
R rounds of compressed communication (FCC) each way."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from compopt._src import checks
from compopt._src.compressors import base as cbase
from compopt._src.compressors import combine
from compopt._src.methods import error_feedback as ef_lib
from compopt._src.typing import CompressorArg
from compopt._src.typing import OptionalCompressorArg
from compopt._src.typing import SchemeArg
from compopt._src.typing import DTypeArg


def neolithic(
    learning_rate: optax.ScalarOrSchedule,
    *,
    compressor: CompressorArg,
    rounds: int,
    server_compressor: OptionalCompressorArg = None,
    axis_name: str | None = None,
    key: jax.Array | int = 0,
    error_dtype: DTypeArg = jnp.float32,
    scheme: SchemeArg = None,
    skip_nonfinite: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""NEOLITHIC (Huang et al. 2022, Alg. 2), uni- or bidirectional.

  .. math::

    \tilde g_i = \hat g_i + \delta_i,\quad
    \delta_i \leftarrow \tilde g_i - \mathrm{FCC}(\tilde g_i, \mathcal{C}_i, R),

    \tilde g = \delta + \tfrac1n\textstyle\sum_i\sum_r c_i^{r},\quad
    \delta \leftarrow \tilde g - \mathrm{FCC}(\tilde g, \mathcal{C}_0, R),\quad
    x \leftarrow x - \gamma \textstyle\sum_r c^{r},

  where FCC (Alg. 1, :func:`compopt.compressors.fcc`) sends R compressed
  rounds of the residual. Workers send their R payloads; the server's side
  (error δ and FCC with C_0) is computed identically on every worker from the
  same aggregate and the shared key. ``server_compressor=None`` means
  C_0 = identity (unidirectional; δ stays 0).

  ĝ_i is the mean of R stochastic gradients (Alg. 2's gradient
  accumulation): wrap the method in
  ``compopt.accumulate(..., every_k=R, axis_name=...)`` so that each
  NEOLITHIC step sees the average of R minibatch gradients and the iteration
  count is K = T/R, as the paper compares at equal gradient queries. R is
  given by Thm 3 (``compopt.theory.neolithic_rounds``). ``accumulate``
  exchanges once per window (``compopt.comm_bits`` counts what was sent) and
  leaves a worker's non-finite minibatch out of its mean; ``optax.MultiSteps``
  runs the exchange on every minibatch, keeps a NaN in its accumulator for
  good, and with ``should_skip_update_fn`` deadlocks the workers.

  Args:
    learning_rate: γ, a float or an optax schedule.
    compressor: C_i, the workers' compressor (contractive in Thm 3; a scaled
      unbiased one, ``compressors.scaled(q, 1/(1 + ω))``, works too).
    rounds: R >= 1 rounds of FCC per step (each way).
    server_compressor: C_0 for the server-to-worker direction, or None.
    axis_name: the worker axis (``None``: one worker).
    key: seed or PRNG key; split every step.
    error_dtype: dtype of δ_i and δ (float32 by default).
    scheme: how the workers exchange their R payloads: ``None`` or
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
    >>> import compopt, optax, jax.numpy as jnp
    >>> c = compopt.compressors.top_k(1)
    >>> opt = compopt.accumulate(compopt.neolithic(0.1, compressor=c, rounds=2),
    ...                          every_k=2)
    >>> state = opt.init(jnp.zeros(2))
    >>> updates, state = opt.update(jnp.array([1., -3.]), state)  # zero
    >>> updates, state = opt.update(jnp.array([1., -1.]), state)
    >>> updates  # -0.1 · FCC(top_1, 2 rounds) of the mean [1, -2]
    Array([-0.1,  0.2], dtype=float32)

  References:
    Huang, Chen, Yin, Yuan. Lower bounds and nearly optimal algorithms in
    distributed learning with communication compression, NeurIPS 2022.
    https://arxiv.org/abs/2206.03665
  """
  owner = "neolithic"
  cbase.check_compressor(compressor, owner)
  rounds = checks.check_int(rounds, "rounds", owner)
  workers = combine.fcc(compressor, rounds)
  if server_compressor is None:
    server = combine.identity()
  else:
    cbase.check_compressor(server_compressor, owner, "server_compressor")
    server = combine.fcc(server_compressor, rounds)
  return ef_lib._double_squeeze(
      learning_rate, compressor=workers, server_compressor=server, axis_name=axis_name,
      key=key, error_dtype=error_dtype, scheme=scheme, skip_nonfinite=skip_nonfinite,
      owner=owner)
