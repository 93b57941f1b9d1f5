"""A weighted average of the iterates, x̄^T = Σ_k w^k x^k / Σ_k w^k, kept in an
optax state (the averages that the DCSGD rates of Horváth & Richtárik 2021 are
stated for)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from compopt._src import checks
from compopt._src import counters
from compopt._src.typing import DTypeArg


class IterateAverageState(NamedTuple):
  """State of :func:`iterate_average`."""
  count: jax.Array  # k, int32: the iterates x⁰, …, x^{k−1} are averaged
  weight_sum: jax.Array  # W = Σ_{j<k} w^j, float32
  average: optax.Params  # x̄ = Σ_{j<k} w^j x^j / W (the latest x^j while W = 0)


def iterate_average(
    weights: Callable[[jax.Array], jax.Array],
    average_dtype: DTypeArg = jnp.float32,
) -> optax.GradientTransformationExtraArgs:
  r"""Keeps the weighted average of the parameters it sees; updates pass through.

  .. math::

    W^k = \sum_{j \le k} w^j, \qquad
    \bar x^k = \frac{1}{W^k}\sum_{j \le k} w^j x^j
             = \bar x^{k-1} + \frac{w^k}{W^k}\,(x^k - \bar x^{k-1}),

  where x^k is the ``params`` given to the k-th ``update`` (k = 0, 1, …: the
  parameters the k-th update starts from) and w^k = ``weights(k)`` >= 0.
  While W^k = 0 (zero weights so far) x̄^k is the latest x^k. Read x̄ with
  :func:`averaged_params`; after the update of step T it is x̄^T, the average
  of x⁰, …, x^T.

  For the DCSGD rates of Horváth & Richtárik 2021 (Thms 2, 4 and 6) use the
  weights of :func:`compopt.theory.dcsgd_weights` with the steps of
  :func:`compopt.theory.dcsgd_schedule`. The theorems draw x̄^T at random
  among the x^k with probabilities w^k/W^T; for a convex f the average kept
  here meets the same bound (Jensen: f(x̄^T) ≤ Σ_k w^k f(x^k)/W^T).

  Put it anywhere in an ``optax.chain`` (each member receives ``params``). A
  step that a guard skips (``compopt.skip_nonfinite``) outside of this
  transform still counts: the iterate it leaves unchanged is averaged again.

  Args:
    weights: a function of the step count (an int32 array) returning w^k >= 0,
      like an optax schedule.
    average_dtype: dtype of x̄ (float32 by default; None: the parameters'
      dtype).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update`` needs
    ``params``.

  Example:
    >>> import compopt, optax, jax.numpy as jnp
    >>> opt = optax.chain(compopt.iterate_average(lambda k: k + 1.0), optax.sgd(0.5))
    >>> x = jnp.array([4.0])
    >>> state = opt.init(x)
    >>> for _ in range(3):   # x = 4, 2, 1 averaged with weights 1, 2, 3
    ...   u, state = opt.update(x, state, x)
    ...   x = optax.apply_updates(x, u)
    >>> round(float(compopt.averaged_params(state)[0]), 4)  # (4 + 4 + 3)/6
    1.8333

  References:
    Horváth, Richtárik. A better alternative to error feedback for
    communication-efficient distributed learning, ICLR 2021, Theorems 2, 4,
    6 and Lemma 9. https://arxiv.org/abs/2006.11077
  """
  owner = "iterate_average"
  if not callable(weights):
    raise TypeError(f"{owner}: `weights` must be a function of the step count "
                    f"(like an optax schedule); got {weights!r}")
  average_dtype = checks.resolve_dtype(average_dtype, "average_dtype", owner)

  def init_fn(params):
    average = jax.tree.map(
        lambda p: jnp.zeros(p.shape, average_dtype or p.dtype), params)
    return IterateAverageState(count=jnp.zeros([], jnp.int32),
                               weight_sum=jnp.zeros([], jnp.float32), average=average)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(f"{owner}: `params` must be given to update (the iterate "
                       f"x^k to average); got None")
    checks.check_same_tree(params, state.average, owner, "average")
    w = jnp.asarray(weights(state.count), jnp.float32)
    total = state.weight_sum + w  # W^k = W^{k−1} + w^k
    # w^k/W^k, and 1 while W^k = 0 (x̄ follows the iterate until weights start)
    ratio = jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0), 1.0)
    def mix(a, x):  # x̄^k = x̄^{k−1} + (w^k/W^k)(x^k − x̄^{k−1}), in float32
      a32 = a.astype(jnp.float32)
      return (a32 + ratio * (x.astype(jnp.float32) - a32)).astype(a.dtype)

    average = jax.tree.map(mix, state.average, params)
    return updates, IterateAverageState(count=optax.safe_increment(state.count),
                                        weight_sum=total, average=average)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def averaged_params(state: Any) -> optax.Params:
  """x̄, read from the :class:`IterateAverageState` anywhere in an optax state.

  Finds it inside ``optax.chain``, ``optax.MultiSteps``,
  ``optax.inject_hyperparams`` and compopt's wrappers.

  Args:
    state: an optax state that holds exactly one :class:`IterateAverageState`.

  Returns:
    The averaged parameters x̄ (a tree shaped like the parameters).

  Raises:
    ValueError: if ``state`` holds no :class:`IterateAverageState`, or more
      than one.
  """
  found = counters.find(state, IterateAverageState)
  if len(found) != 1:
    raise ValueError(
        f"averaged_params: `state` must hold exactly one IterateAverageState "
        f"(build the optimizer with compopt.iterate_average); found {len(found)}")
  return found[0].average
