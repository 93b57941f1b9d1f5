"""DCSGD (Horváth & Richtárik 2021, Alg. 1) and its building block
``compressed_mean``."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax

from compopt._src import checks
from compopt._src import comm
from compopt._src import counters
from compopt._src import sampling as sampling_lib
from compopt._src import schemes
from compopt._src.compressors import base as cbase
from compopt._src.compressors import combine
from compopt._src.compressors import per_worker as cper_worker
from compopt._src.methods import guard
from compopt._src.typing import CompressorArg
from compopt._src.typing import SamplingArg
from compopt._src.typing import SchemeArg


class CompressedMeanState(NamedTuple):
  """State of :func:`compressed_mean`."""
  key: jax.Array  # uint32[2], split every step, identical on all workers
  bits: counters.CommBits  # bits this worker sent / received
  scheme_state: Any  # the exchange scheme's state (two_phase's server error)


def compressed_mean(
    compressor: CompressorArg,
    *,
    axis_name: str | None = None,
    sampling: SamplingArg = None,
    key: jax.Array | int = 0,
    scheme: SchemeArg = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Replaces each worker's update by the mean of the compressed updates.

  .. math::

    \Delta = \frac{1}{n} \sum_{i=1}^n \mathcal{C}(u_i), \qquad\text{or with a
    sampling } S:\quad \Delta = \sum_{i \in S} \frac{\mathcal{C}(u_i)}{n p_i}.

  The payload of C(u_i), not a dense copy, is what crosses the wire (see
  ``compopt.exchange``). Every worker gets the same Δ. With a list of
  compressors, worker i uses its own C_i; the all-gather then pads every
  worker's payload to the largest one (see :func:`compopt.shifted_compression`
  for what crosses the wire and what the bits count). Per-worker randomness
  comes from ``fold_in(step_key, axis_index)``; the sampled set S from the
  step key itself, so all workers agree on it.

  Args:
    compressor: a compopt compressor, or a list with one per worker.
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
  return _compressed_mean(compressor, axis_name=axis_name, sampling=sampling, key=key,
                          scheme=scheme, owner="compressed_mean")


def _compressed_mean(compressor, *, axis_name, sampling, key, scheme, owner):
  """:func:`compressed_mean`, reporting errors as ``owner``."""
  checks.check_axis_name(axis_name, owner)
  if isinstance(compressor, (list, tuple)):  # C_i, one per worker
    compressor = cper_worker.per_worker(compressor, owner)
    if axis_name is None and len(compressor.compressors) != 1:
      raise ValueError(
          f"{owner}: `compressor` lists {len(compressor.compressors)} entries, one per "
          "worker, but axis_name=None means one worker; pass the worker axis as axis_name")
  else:
    cbase.check_compressor(compressor, owner)
  checks.check_key(key, owner, seed=True)
  sampling = sampling_lib.resolve(sampling, owner)
  scheme = schemes.resolve(scheme, owner)

  def init_fn(params):
    return CompressedMeanState(key=checks.prng_key(key, owner), bits=counters.zero_bits(),
                               scheme_state=scheme.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    next_key, step_key = jax.random.split(state.key)
    # Δ = Σ_{i∈S} C(g_i)/(n p_i)   (Alg. 1 line 10; §4.2)
    out = comm.exchange(compressor, updates, step_key, axis_name, scheme=scheme,
                        state=state.scheme_state, sampling=sampling, owner=owner)
    mean = jax.tree.map(lambda m, u: m.astype(u.dtype), out.mean, updates)
    return mean, CompressedMeanState(key=next_key, bits=counters.add_bits(state.bits, out.sent),
                                     scheme_state=out.state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _momentum(momentum, nesterov, owner):
  checks.check_interval(momentum, "momentum", owner, 0.0, 1.0, high_open=True,
                        allow_none=True)
  checks.check_bool(nesterov, "nesterov", owner)
  if momentum is None:
    return optax.identity()
  return optax.trace(decay=momentum, nesterov=nesterov)


def dcsgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    compressor: CompressorArg,
    axis_name: str | None = None,
    sampling: SamplingArg = None,
    momentum: float | None = None,
    nesterov: bool = False,
    key: jax.Array | int = 0,
    scheme: SchemeArg = None,
    skip_nonfinite: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""Distributed compressed SGD (DCSGD), Horváth & Richtárik 2021, Alg. 1.

  .. math::

    \Delta^k = \frac{1}{n}\sum_{i=1}^n \mathcal{C}(g_i^k), \qquad
    x^{k+1} = x^k - \eta^k \Delta^k.

  With a sampling S (§4.2), only i ∈ S send and
  :math:`\Delta^k = \sum_{i\in S} \mathcal{C}(g_i^k)/(n p_i)`. With
  ``momentum`` β (the paper's §5.4 uses 0.9), the shared aggregate is
  accumulated as m ← βm + Δ and x ← x − ηm (``optax.trace``). For unbiased
  compressors C ∈ U(ω) DCSGD converges without error feedback
  (Horváth & Richtárik 2021, Thm 4); biased ones such as top_k can diverge
  (Horváth & Richtárik 2021, §5.5): use :func:`ef_sgd` or an induced
  compressor (``compopt.compressors.induced``).

  Args:
    learning_rate: η, a float or an optax schedule.
    compressor: C, any compopt compressor, or a list with one C_i per worker
      (see :func:`compressed_mean`).
    axis_name: the worker axis (``None``: one worker).
    sampling: partial participation (see :func:`compressed_mean`).
    momentum: optional heavy-ball momentum on the aggregate.
    nesterov: Nesterov momentum.
    key: seed or PRNG key; split every step.
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
  return _dcsgd(learning_rate, compressor=compressor, axis_name=axis_name,
                sampling=sampling, momentum=momentum, nesterov=nesterov, key=key,
                scheme=scheme, skip_nonfinite=skip_nonfinite, owner="dcsgd")


def _dcsgd(learning_rate, *, compressor, axis_name, sampling, momentum, nesterov, key,
           scheme, skip_nonfinite, owner):
  """:func:`dcsgd`, reporting errors as ``owner`` (its aliases)."""
  checks.check_learning_rate(learning_rate, owner)
  return guard.chain(
      _compressed_mean(compressor, axis_name=axis_name, sampling=sampling, key=key,
                       scheme=scheme, owner=owner),
      _momentum(momentum, nesterov, owner),
      optax.scale_by_learning_rate(learning_rate),
      axis_name=axis_name, skip_nonfinite=skip_nonfinite, owner=owner)


def psgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    axis_name: str | None = None,
    momentum: float | None = None,
    nesterov: bool = False,
    scheme: SchemeArg = None,
    skip_nonfinite: bool = True,
) -> optax.GradientTransformationExtraArgs:
  r"""Parallel SGD (P-SGD): the uncompressed mean of the workers' gradients.

  .. math::

    x^{k+1} = x^k - \eta^k \frac{1}{n}\sum_{i=1}^n g_i^k.

  The baseline every paper compares with: a dense all-reduce (pmean) per
  step, counted as a ring all-reduce, 2(n − 1)/n × the dense bits each way.
  It is :func:`dcsgd` with the identity compressor.

  Args:
    learning_rate: η, a float or an optax schedule.
    axis_name: the worker axis (``None``: one worker).
    momentum: optional heavy-ball momentum.
    nesterov: Nesterov momentum.
    scheme: how the workers exchange: the dense all-reduce by default (also
      for ``"allgather"``, ``"allreduce"`` and ``"auto"``, which move more);
      ``compopt.exchange.two_phase(server_compressor)`` compresses the
      aggregate on its way back.
    skip_nonfinite: skip the step on every worker when any worker's input,
      or the update or state the step computed from it, holds inf/NaN,
      leaving the state as it was; after 100 skipped in a row, a non-finite
      step is applied, so that a stuck run shows (see
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
  return _dcsgd(learning_rate, compressor=combine.identity(), axis_name=axis_name,
                sampling=None, momentum=momentum, nesterov=nesterov, key=0, scheme=scheme,
                skip_nonfinite=skip_nonfinite, owner="psgd")
