"""DCSGD (paper 000, Alg. 1) and its building block ``compressed_mean``."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax._src import numerics

from compopt._src import comm
from compopt._src import exchange as exchange_lib
from compopt._src import faults
from compopt._src import sampling as sampling_lib
from compopt._src.compressors import combine
from compopt._src.methods import _common


class CompressedMeanState(NamedTuple):
  """State of :func:`compressed_mean`."""
  count: jax.Array  # int32, number of exchanges
  key: jax.Array  # uint32[2], split every step, identical on all workers
  bits: comm.CommBits  # bits this worker sent / received
  server_error: Any = ()  # e_s of two_phase with a server compressor, else ()


def compressed_mean(
    compressor,
    *,
    axis_name: str | None = None,
    sampling: Any = None,
    key: jax.Array | int = 0,
    scheme: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Replaces each worker's update by the mean of the compressed updates.

  .. math::

    \Delta = \frac{1}{n} \sum_{i=1}^n \mathcal{C}(u_i), \qquad\text{or with a
    sampling } S:\quad \Delta = \sum_{i \in S} \frac{\mathcal{C}(u_i)}{n p_i}.

  The payload of C(u_i), not a dense copy, is what crosses the wire (see
  ``compopt._src.comm``). Every worker gets the same Δ. Per-worker randomness
  comes from ``fold_in(step_key, axis_index)``; the sampled set S from the
  step key itself, so all workers agree on it.

  Args:
    compressor: a compopt compressor.
    axis_name: the worker axis (``None``: one worker, no collective).
    sampling: partial participation: ``None`` (all workers), a
      ``compopt.sampling`` object, or probabilities p_i (a number or a
      sequence of n numbers in (0, 1]) for independent participation.
    key: seed or PRNG key; split every step.
    scheme: how the workers exchange payloads: ``None`` or ``"allgather"``
      (default), ``"allreduce"``, ``"auto"``, or a :mod:`compopt.exchange`
      scheme such as ``two_phase(server_compressor)``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import compopt, jax, jax.numpy as jnp, optax
    >>> tx = optax.chain(compopt.compressed_mean(compopt.compressors.top_k(1)),
    ...                  optax.scale_by_learning_rate(0.1))
    >>> state = tx.init(jnp.zeros(3))
    >>> tx.update(jnp.array([1., -3., 2.]), state)[0]
    Array([-0. ,  0.3, -0. ], dtype=float32)

  References:
    Horváth, Richtárik. A better alternative to error feedback for
    communication-efficient distributed learning, ICLR 2021 (Alg. 1, §4.2).
    https://arxiv.org/abs/2006.11077
  """
  owner = "compressed_mean"
  _common.check_compressor(compressor, owner)
  _common.check_axis_name(axis_name, owner)
  _common.check_key(key, owner)
  sampling = sampling_lib.resolve(sampling, owner)
  scheme = exchange_lib.resolve(scheme, owner)

  def init_fn(params):
    return CompressedMeanState(
        count=jnp.zeros([], jnp.int32), key=_common.init_key(key, owner),
        bits=comm.zero_bits(), server_error=comm.init_server_error(scheme, params))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    next_key, step_key = jax.random.split(state.key)
    # Δ = Σ_{i∈S} C(g_i)/(n p_i)   (Alg. 1 line 10; §4.2)
    out = comm.exchange(compressor, updates, step_key, axis_name, sampling=sampling,
                        scheme=scheme, server_error=state.server_error, owner=owner)
    return out.mean, CompressedMeanState(
        count=numerics.safe_increment(state.count), key=next_key,
        bits=comm.add_bits(state.bits, out.sent), server_error=out.server_error)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _momentum(momentum, nesterov, owner):
  _common.check_interval(momentum, "momentum", owner, 0.0, 1.0, high_open=True,
                         allow_none=True)
  _common.check_bool(nesterov, "nesterov", owner)
  if momentum is None:
    return optax.identity()
  return optax.trace(decay=momentum, nesterov=nesterov)


def dcsgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    compressor,
    axis_name: str | None = None,
    sampling: Any = None,
    momentum: float | None = None,
    nesterov: bool = False,
    key: jax.Array | int = 0,
    scheme: Any = None,
    skip_nonfinite: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""Distributed compressed SGD (DCSGD), paper 000 Alg. 1.

  .. math::

    \Delta^k = \frac{1}{n}\sum_{i=1}^n \mathcal{C}(g_i^k), \qquad
    x^{k+1} = x^k - \eta^k \Delta^k.

  With a sampling S (§4.2), only i ∈ S send and
  :math:`\Delta^k = \sum_{i\in S} \mathcal{C}(g_i^k)/(n p_i)`. With
  ``momentum`` β (the paper's §5.4 uses 0.9), the shared aggregate is
  accumulated as m ← βm + Δ and x ← x − ηm (``optax.trace``). For unbiased
  compressors C ∈ U(ω) DCSGD converges without error feedback (000 Thm 4);
  biased ones such as top_k can diverge (000 §5.5): use :func:`ef_sgd` or an
  induced compressor (``compopt.compressors.induced``).

  Args:
    learning_rate: η, a float or an optax schedule.
    compressor: C, any compopt compressor.
    axis_name: the worker axis (``None``: one worker).
    sampling: partial participation (see :func:`compressed_mean`).
    momentum: optional heavy-ball momentum on the aggregate.
    nesterov: Nesterov momentum.
    key: seed or PRNG key; split every step.
    scheme: how the workers exchange payloads: ``None`` or ``"allgather"``
      (default), ``"allreduce"``, ``"auto"``, or a :mod:`compopt.exchange`
      scheme such as ``two_phase(server_compressor)``.
    skip_nonfinite: skip the step on every worker when any worker's input
      holds inf/NaN, leaving the state as it was (see
      :func:`compopt.skip_nonfinite`; one 4-byte all-reduce per step).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import compopt, jax.numpy as jnp
    >>> opt = compopt.dcsgd(0.1, compressor=compopt.compressors.nu_rand_1())
    >>> params = jnp.array([1., 2.])
    >>> state = opt.init(params)
    >>> updates, state = opt.update(2 * params, state)
    >>> updates.shape
    (2,)

  References:
    Horváth, Richtárik. A better alternative to error feedback for
    communication-efficient distributed learning, ICLR 2021.
    https://arxiv.org/abs/2006.11077
  """
  _common.check_learning_rate(learning_rate, "dcsgd")
  return faults.chain(
      compressed_mean(compressor, axis_name=axis_name, sampling=sampling, key=key,
                      scheme=scheme),
      _momentum(momentum, nesterov, "dcsgd"),
      optax.scale_by_learning_rate(learning_rate),
      axis_name=axis_name, skip_nonfinite=skip_nonfinite, owner="dcsgd")


def psgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    axis_name: str | None = None,
    momentum: float | None = None,
    nesterov: bool = False,
    skip_nonfinite: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""Parallel SGD (P-SGD): the uncompressed mean of the workers' gradients.

  .. math::

    x^{k+1} = x^k - \eta^k \frac{1}{n}\sum_{i=1}^n g_i^k.

  The baseline every paper compares with: a dense all-reduce (pmean) per
  step, counted as a ring all-reduce, 2(n − 1)/n × the dense bits each way.

  Args:
    learning_rate: η, a float or an optax schedule.
    axis_name: the worker axis (``None``: one worker).
    momentum: optional heavy-ball momentum.
    nesterov: Nesterov momentum.
    skip_nonfinite: skip the step on every worker when any worker's input
      holds inf/NaN, leaving the state as it was (see
      :func:`compopt.skip_nonfinite`; one 4-byte all-reduce per step).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Example:
    >>> import compopt, jax.numpy as jnp
    >>> opt = compopt.psgd(0.1)
    >>> state = opt.init(jnp.zeros(2))
    >>> opt.update(jnp.array([1., -1.]), state)[0]
    Array([-0.1,  0.1], dtype=float32)

  References:
    Zinkevich, Weimer, Li, Smola. Parallelized stochastic gradient descent,
    NeurIPS 2010.
  """
  _common.check_learning_rate(learning_rate, "psgd")
  return faults.chain(
      compressed_mean(combine.identity(), axis_name=axis_name),
      _momentum(momentum, nesterov, "psgd"),
      optax.scale_by_learning_rate(learning_rate),
      axis_name=axis_name, skip_nonfinite=skip_nonfinite, owner="psgd")
