"""Partial participation: samplings S over the n workers.

Horváth & Richtárik 2021, §4.2.

A sampling draws the set S of workers that communicate in a round. Every
worker draws it from the same (shared) key, so all agree on S without
communicating. Each sampling reports p_i = P(i ∈ S), which the aggregate
Σ_{i∈S} Δ_i/(n p_i) needs to stay unbiased.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from compopt._src import checks


class Sampling:
  """Base class: ``draw(key, n, owner, dtype)`` -> (mask bool[n], p[n]).

  p_i = P(i ∈ S) comes back in ``dtype`` (float32, or float64 for the
  weights 1/(n p_i) of a float64 aggregate); the mask does not depend on it.
  """

  def draw(self, key, n: int, owner: str, dtype=np.float32):
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Independent(Sampling):
  """Each worker i joins S on its own with probability p_i."""
  p: float | tuple[float, ...] = 1.0

  def probabilities(self, n: int, owner: str, dtype=np.float32) -> np.ndarray:
    if isinstance(self.p, tuple):
      if len(self.p) != n:
        raise ValueError(
            f"{owner}: `sampling` has {len(self.p)} probabilities but the worker "
            f"axis has {n} workers")
      return np.asarray(self.p, dtype)
    return np.full((n,), self.p, dtype)

  def draw(self, key, n, owner, dtype=np.float32):
    # The draw compares float32 uniforms with float32 p_i whatever ``dtype``,
    # so a float64 run picks the same S as a float32 one.
    p32 = jnp.asarray(self.probabilities(n, owner))
    p = p32 if np.dtype(dtype) == np.float32 else jnp.asarray(
        self.probabilities(n, owner, dtype), dtype)
    return jax.random.uniform(key, (n,)) < p32, p


@dataclasses.dataclass(frozen=True)
class Nice(Sampling):
  """τ-nice sampling: S is a uniformly random subset of size τ; p_i = τ/n."""
  tau: int = 1

  def draw(self, key, n, owner, dtype=np.float32):
    if self.tau > n:
      raise ValueError(
          f"{owner}: `sampling` is {self.tau}-nice but the worker axis has only "
          f"{n} workers; need 1 <= tau <= n")
    chosen = jax.random.permutation(key, n)[:self.tau]
    mask = jnp.zeros((n,), bool).at[chosen].set(True)
    return mask, jnp.full((n,), self.tau / n, dtype)


def independent(p: float | Sequence[float]) -> Independent:
  """Independent (Bernoulli) participation: worker i joins S with probability p_i.

  Args:
    p: one probability for every worker, or a sequence of n probabilities,
      each in (0, 1].
  """
  if isinstance(p, (list, tuple, np.ndarray)):
    return Independent(tuple(checks.check_probability(q, "p", "sampling.independent") for q in p))
  return Independent(checks.check_probability(p, "p", "sampling.independent"))


def nice(tau: int) -> Nice:
  """τ-nice sampling: a uniformly random subset of exactly τ workers (p_i = τ/n)."""
  return Nice(checks.check_int(tau, "tau", "sampling.nice"))


def resolve(sampling, owner: str) -> Sampling | None:
  """The ``sampling=`` argument of a method: None, a Sampling, or p (a number
  or a sequence of numbers in (0, 1]) meaning independent participation."""
  if sampling is None or isinstance(sampling, Sampling):
    return sampling
  if isinstance(sampling, (list, tuple, np.ndarray)):
    return Independent(tuple(checks.check_probability(q, "sampling", owner) for q in sampling))
  return Independent(checks.check_probability(sampling, "sampling", owner))
