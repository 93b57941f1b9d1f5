"""Theory helpers: the constants and hyperparameters the papers' theorems give.

Every function returns a plain Python number computed from the statement of a
theorem, and names its source; the exceptions are the DCSGD schedule and
weights (functions of the step count, like optax schedules) and
:func:`sign_density` (a JAX scalar, measured on the user's own vectors).
Notation:

* unbiased U(ω): E C(x) = x, E‖C(x) − x‖² ≤ ω‖x‖²;
* contractive B(δ), δ ∈ (0, 1]: E‖C(x) − x‖² ≤ (1 − δ)‖x‖².

Horváth & Richtárik 2021 write U(δ') for E‖C(x)‖² ≤ δ'‖x‖², so
δ' = ω + 1, and C(δ') for a contractive compressor with
E‖C(x) − x‖² ≤ (1 − 1/δ')‖x‖², so δ' = 1/δ. The functions below take ω and δ
in the notation above and convert where the paper's statement needs it.

References:
  Horváth & Richtárik 2021: Horváth, Richtárik. A better alternative to
    error feedback for communication-efficient distributed learning,
    ICLR 2021. https://arxiv.org/abs/2006.11077
  Huang et al. 2022: Huang, Chen, Yin, Yuan. Lower bounds and nearly optimal
    algorithms in distributed learning with communication compression,
    NeurIPS 2022. https://arxiv.org/abs/2206.03665
  Karimireddy et al. 2019: Karimireddy, Rebjock, Stich, Jaggi. Error
    feedback fixes SignSGD and other gradient compression schemes, ICML 2019.
    https://arxiv.org/abs/1901.09847
  Li & Li 2022: Li, Li. On distributed adaptive optimization with gradient
    compression, ICLR 2022. https://arxiv.org/abs/2205.05632
  Shulgin & Richtárik 2022: Shulgin, Richtárik. Shifted compression
    framework: generalizations and improvements, UAI 2022.
    https://arxiv.org/abs/2206.10452
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from compopt._src import checks
from compopt._src.compressors import base
from compopt._src.compressors import tree as ctree


# --------------------------------------------------------------- validation
def _positive(value, name: str, owner: str) -> float:
  return checks.check_real(value, name, owner, lo=0.0, lo_open=True)


def _probabilities(probabilities, n: int, owner: str) -> list[float]:
  """p_i ∈ (0, 1], one per worker (a scalar is the same p for all n)."""
  def one(p):
    return checks.check_real(p, "probabilities", owner, lo=0.0, hi=1.0, lo_open=True)

  if isinstance(probabilities, (int, float, np.integer, np.floating)) and not isinstance(
      probabilities, bool):
    return [one(probabilities)] * n
  try:
    ps = [p for p in np.asarray(probabilities, dtype=object).reshape(-1)]
  except Exception as e:  # pragma: no cover - exotic inputs
    raise TypeError(f"{owner}: `probabilities` must be a number or a sequence "
                    f"of numbers; got {probabilities!r}") from e
  if len(ps) != n:
    raise ValueError(f"{owner}: `probabilities` must have one entry per worker "
                     f"(n = {n}); got {len(ps)} entries")
  return [one(p) for p in ps]


# -------------------------------------------------------- compressor classes
def _shape_tree(tree_or_shape, owner: str):
  """A ShapeDtypeStruct (or a tree of them) describing ``tree_or_shape``."""
  def bad_shape(shape):
    raise ValueError(f"{owner}: `tree_or_shape` must have dimensions >= 0; "
                     f"got shape {shape}")

  if isinstance(tree_or_shape, (int, np.integer)) and not isinstance(tree_or_shape, bool):
    if tree_or_shape < 0:
      bad_shape((tree_or_shape,))
    tree = jax.ShapeDtypeStruct((int(tree_or_shape),), np.float32)
  elif (isinstance(tree_or_shape, tuple)
        and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool)
                for s in tree_or_shape)):
    if any(s < 0 for s in tree_or_shape):
      bad_shape(tree_or_shape)
    tree = jax.ShapeDtypeStruct(tuple(int(s) for s in tree_or_shape), np.float32)
  else:
    def leaf(x):
      shape = x.shape if hasattr(x, "shape") else np.shape(x)
      return jax.ShapeDtypeStruct(tuple(shape), np.float32)
    tree = jax.tree.map(leaf, tree_or_shape)
  if not any(math.prod(l.shape) > 0 for l in jax.tree.leaves(tree)):
    raise ValueError(f"{owner}: `tree_or_shape` must hold at least one non-empty "
                     f"array; got {tree_or_shape!r}")
  return tree


def omega(compressor: base.Compressor, tree_or_shape: Any) -> float | None:
  """ω of a compressor on an array shape or on a whole pytree.

  The compressor acts leaf by leaf (layer-wise). For a tree with leaves x_l,

  ::

    E‖C(x) − x‖² = Σ_l E‖C(x_l) − x_l‖² ≤ Σ_l ω_l ‖x_l‖² ≤ (max_l ω_l) ‖x‖²,

  so the tree's constant is ω = max_l ω_l (and C is unbiased when every leaf
  is). For example rand_k on a leaf of d coordinates has ω = d/k − 1.

  Args:
    compressor: a compopt compressor.
    tree_or_shape: an int (a vector's length), a shape tuple, an array, a
      ``jax.ShapeDtypeStruct``, or a pytree of arrays or ``ShapeDtypeStruct`` leaves.
      Leaves of size 0 are ignored; at least one leaf must be non-empty.

  Returns:
    ω as a float, or None where the compressor is not unbiased (on some leaf)
    or the papers give no ω for it.

  Example:
    >>> from compopt import compressors, theory
    >>> theory.omega(compressors.rand_k(10), (100,))
    9.0

  References:
    Shulgin & Richtárik 2022, Definition 2 (class U(ω)), eq. 2 (Rand-K ∈
    U(d/K − 1)). https://arxiv.org/abs/2206.10452
  """
  owner = "omega"
  compressor = base.check_compressor(compressor, owner)
  return ctree.tree_omega(compressor, _shape_tree(tree_or_shape, owner))


def delta(compressor: base.Compressor, tree_or_shape: Any) -> float | None:
  """δ of a compressor on an array shape or on a whole pytree.

  Layer-wise on a tree with leaves x_l,

  ::

    E‖C(x) − x‖² = Σ_l E‖C(x_l) − x_l‖² ≤ Σ_l (1 − δ_l)‖x_l‖²
                 ≤ (1 − min_l δ_l) ‖x‖²,

  so the tree's constant is δ = min_l δ_l. For example top_k on a leaf of d
  coordinates has δ = k/d.

  Args:
    compressor: a compopt compressor.
    tree_or_shape: an int, a shape tuple, an array, a
      ``jax.ShapeDtypeStruct``, or a pytree of those (see :func:`omega`).

  Returns:
    δ ∈ (0, 1] as a float, or None where the compressor is not contractive
    as a class (on some leaf).

  Example:
    >>> from compopt import compressors, theory
    >>> theory.delta(compressors.top_k(10), (100,))
    0.1

  References:
    Shulgin & Richtárik 2022, Definition 1 (class B(δ); Top-K ∈ B(K/d)).
    https://arxiv.org/abs/2206.10452
  """
  owner = "delta"
  compressor = base.check_compressor(compressor, owner)
  return ctree.tree_delta(compressor, _shape_tree(tree_or_shape, owner))


def induced_omega(delta1: float, omega2: float) -> float:
  """ω of the induced compressor C(x) = C1(x) + C2(x − C1(x)).

  Horváth & Richtárik 2021, Thm 3, states for C1 ∈ C(δ1') (contractive with
  λ = 1) and C2 ∈ U(δ2') that C ∈ U(δ') with δ' = δ2'(1 − 1/δ1') + 1/δ1'. In
  our notation δ1' = 1/δ1 (since 1 − 1/δ1' = 1 − δ1) and δ2' = ω2 + 1, so

  ::

    ω = δ' − 1 = (ω2 + 1)(1 − δ1) + δ1 − 1 = ω2 (1 − δ1).

  Args:
    delta1: δ1 ∈ (0, 1], the contractive constant of C1 (B(δ1)).
    omega2: ω2 >= 0, the variance constant of the unbiased C2 (U(ω2)).

  Returns:
    ω2 (1 − δ1), the ω of the (unbiased) induced compressor.

  Example:
    >>> from compopt import theory
    >>> theory.induced_omega(0.1, 9.0)  # top_k(10) then rand_k(10), d = 100
    8.1

  References:
    Horváth & Richtárik 2021, Theorem 3. https://arxiv.org/abs/2006.11077
  """
  owner = "induced_omega"
  delta1 = checks.check_delta(delta1, owner, "delta1")
  omega2 = checks.check_omega(omega2, owner, "omega2")
  return omega2 * (1.0 - delta1)


# ------------------------------------------- DCSGD (Horváth & Richtárik 2021)
def _delta_n(omega, n, shared, owner) -> float:
  omega = checks.check_omega(omega, owner)
  n = checks.check_int(n, "n", owner)
  shared = checks.check_bool(shared, "shared", owner)
  if shared:
    return omega + 1.0
  return omega / n + 1.0


def dcsgd_delta_n(omega: float, n: int, *, shared: bool = False) -> float:
  """δ_n: DCSGD's second-moment constant with n workers.

  Horváth & Richtárik 2021, Thm 4, with C ∈ U(δ') (δ' = ω + 1) drawn
  independently on every worker:

  ::

    δ_n = (δ' − 1)/n + 1 = ω/n + 1.

  δ_n is the constant with E‖(1/n) Σ_i C(g_i)‖² ≤ δ_n (1/n) Σ_i ‖g_i‖² (proof
  of Thm 4, Appendix B.4). Note that δ_n ≥ 1 is in the U(δ') notation of
  Horváth & Richtárik 2021, not a contractive δ.

  Shared randomness (``shared=True``, e.g. ``rand_k(shared=True)``, whose
  random positions are the same on every worker) correlates the errors
  ε_i = C(g_i) − g_i, and the cross terms E⟨ε_i, ε_j⟩, which vanish for
  independent compressors, remain. With ḡ = (1/n) Σ_i g_i and E ε_i = 0,

  ::

    E‖(1/n) Σ_i C(g_i)‖² = ‖ḡ‖² + E‖(1/n) Σ_i ε_i‖²
      ≤ ‖ḡ‖² + (1/n) Σ_i E‖ε_i‖²          (convexity of ‖·‖²)
      ≤ (1/n) Σ_i ‖g_i‖² + ω (1/n) Σ_i ‖g_i‖²
      = (ω + 1) (1/n) Σ_i ‖g_i‖²,

  so δ_n = ω + 1 whatever n: sharing the randomness forfeits the 1/n. The
  bound is attained: rand_k with one mask for all workers is linear in its
  input, so (1/n) Σ_i C(g_i) = C(ḡ) and E‖C(ḡ)‖² = (ω + 1)‖ḡ‖², which is
  (ω + 1)(1/n) Σ_i ‖g_i‖² when all g_i are equal (independent draws give
  (ω/n + 1)‖ḡ‖² there).

  Sharing is not only a loss: for such a linear compressor DCSGD is
  single-node compressed SGD on f with the averaged gradient ḡ, so Thm 2
  applies to f itself with δ' = ω + 1, and the heterogeneity term
  D = (2L/n) Σ_i (f_i(x*) − f_i*) of Thm 4 does not arise (C(ḡ) vanishes
  at x* for exact gradients). Independent draws give the smaller δ_n but
  keep D: which is better depends on D.

  Args:
    omega: ω >= 0 of the compressor every worker uses.
    n: number of workers, >= 1.
    shared: whether the workers draw the compressor's randomness together
      (the same random choice on every worker) instead of independently.

  Returns:
    δ_n = ω/n + 1, or ω + 1 for shared randomness.

  Example:
    >>> from compopt import theory
    >>> theory.dcsgd_delta_n(9.0, 3)
    4.0
    >>> theory.dcsgd_delta_n(9.0, 3, shared=True)
    10.0

  References:
    Horváth & Richtárik 2021, Theorem 4 and its proof (Appendix B.4).
    https://arxiv.org/abs/2006.11077
  """
  return _delta_n(omega, n, shared, "dcsgd_delta_n")


def _delta_s(omega, n, probabilities, tau, shared, owner) -> float:
  omega = checks.check_omega(omega, owner)
  n = checks.check_int(n, "n", owner)
  shared = checks.check_bool(shared, "shared", owner)
  if (probabilities is None) == (tau is None):
    raise ValueError(f"{owner}: give exactly one of `probabilities` "
                     f"(independent participation) and `tau` (τ-nice sampling); "
                     f"got probabilities={probabilities!r}, tau={tau!r}")
  if tau is not None:
    tau = checks.check_int(tau, "tau", owner, lo=1, hi=n)
    # v_i / p_i with p_i = τ/n and v_i = (n − τ)/(n − 1).
    v_over_p = 0.0 if tau == n else (n - tau) / (n - 1) * n / tau
    worst = v_over_p + 1.0
  else:
    ps = _probabilities(probabilities, n, owner)
    worst = 1.0 / min(ps)  # v_i/p_i + 1 = (1 − p_i)/p_i + 1 = 1/p_i
    v_over_p = worst - 1.0
  if shared:
    # δ_S = (ω + 1) max_i(v_i/p_i)/n + δ_n, δ_n = ω + 1
    return (omega + 1.0) * v_over_p / n + omega + 1.0
  return ((omega + 1.0) * worst - 1.0) / n + 1.0


def dcsgd_delta_s(omega: float, n: int, *,
                  probabilities: float | Sequence[float] | None = None,
                  tau: int | None = None, shared: bool = False) -> float:
  """δ_S: DCSGD's constant under partial participation.

  Horváth & Richtárik 2021, §4.2 and Thm 6: a sampling S ⊆ [n] with
  p_i = P(i ∈ S) > 0 and aggregation Δ = Σ_{i∈S} C(g_i)/(n p_i). With a vector
  v satisfying
  P − pp^T ⪯ Diag(p_1 v_1, …, p_n v_n) (Lemma 5), and C ∈ U(δ'), δ' = ω + 1,

  ::

    δ_S = (δ' max_i (v_i/p_i + 1) − 1)/n + 1
        = ((ω + 1) max_i (v_i/p_i + 1) − 1)/n + 1.

  Two samplings are supported, with v worked out from P:

  * independent participation, worker i joins with probability p_i:
    P − pp^T = Diag(p_i(1 − p_i)), so v_i = 1 − p_i, v_i/p_i + 1 = 1/p_i and
    δ_S = ((ω + 1)/min_i p_i − 1)/n + 1;
  * τ-nice, a uniformly random subset of exactly τ workers: p_i = τ/n,
    P_ij = τ(τ − 1)/(n(n − 1)), and P − pp^T ⪯ (τ/n)(n − τ)/(n − 1) · I, so
    v_i = (n − τ)/(n − 1) (0 when τ = n).

  Full participation (p_i = 1 or τ = n) gives v = 0 and δ_S = δ_n (Thm 4).

  The proof of Thm 6 bounds the sampling's part by
  (1/n²) Σ_i (v_i/p_i) E‖C(g_i)‖² ≤ ((ω + 1)/n) max_i (v_i/p_i) (1/n) Σ_i ‖g_i‖²
  (Lemma 5 given the compressed vectors: it holds however the compressors'
  randomness is drawn, as long as S is drawn independently of it) and adds
  E‖(1/n) Σ_i C(g_i)‖² ≤ δ_n (1/n) Σ_i ‖g_i‖². So

  ::

    δ_S = (ω + 1) max_i (v_i/p_i)/n + δ_n,

  the formula above for independent compressors (δ_n = ω/n + 1), and with
  δ_n = ω + 1 for shared randomness (``shared=True``, see
  :func:`dcsgd_delta_n`).

  Args:
    omega: ω >= 0 of the compressor.
    n: number of workers, >= 1.
    probabilities: for independent participation, p_i ∈ (0, 1]: one number
      for all workers or a sequence of n numbers.
    tau: for τ-nice sampling, the number of workers per round, in [1, n].
      Give exactly one of ``probabilities`` and ``tau``.
    shared: whether the workers draw the compressor's randomness together
      (see :func:`dcsgd_delta_n`).

  Returns:
    δ_S (in the U(δ') notation of Horváth & Richtárik 2021, >= 1).

  Example:
    >>> from compopt import theory
    >>> theory.dcsgd_delta_s(1.0, 4, probabilities=0.5)  # ((2/0.5) − 1)/4 + 1
    1.75
    >>> theory.dcsgd_delta_s(1.0, 4, probabilities=0.5, shared=True)  # 2·1/4 + 2
    2.5

  References:
    Horváth & Richtárik 2021, §4.2, Lemma 5, Theorem 6.
    https://arxiv.org/abs/2006.11077
  """
  return _delta_s(omega, n, probabilities, tau, shared, "dcsgd_delta_s")


def _dcsgd_delta(omega, n, probabilities, tau, shared, owner) -> float:
  """δ_n (full participation) or δ_S (a sampling)."""
  if probabilities is None and tau is None:
    return _delta_n(omega, n, shared, owner)
  return _delta_s(omega, n, probabilities, tau, shared, owner)


def dcsgd_step_size(omega: float, n: int, L: float, *,
                    probabilities: float | Sequence[float] | None = None,
                    tau: int | None = None, shared: bool = False) -> float:
  """Largest DCSGD step size of Horváth & Richtárik 2021, Thms 4 and 6.

  ::

    γ ≤ 1/(2 δ_n L),  δ_n = ω/n + 1            (full participation, Thm 4)
    γ ≤ 1/(2 δ_S L)                           (a sampling S, Thm 6)

  with δ_n from :func:`dcsgd_delta_n` and δ_S from :func:`dcsgd_delta_s`
  (δ_n = ω + 1 when the workers share the compressor's randomness). L is the
  constant of the expected smoothness assumption (Assumption 3; the
  smoothness constant of each f_i for exact gradients).

  Args:
    omega: ω >= 0 of the compressor.
    n: number of workers, >= 1.
    L: smoothness constant, > 0.
    probabilities: independent participation probabilities (see
      :func:`dcsgd_delta_s`); None with ``tau`` None means full participation.
    tau: τ-nice sampling (see :func:`dcsgd_delta_s`).
    shared: whether the workers draw the compressor's randomness together
      (see :func:`dcsgd_delta_n`).

  Returns:
    γ = 1/(2 δ L) with δ = δ_n or δ_S.

  Example:
    >>> from compopt import theory
    >>> theory.dcsgd_step_size(9.0, 3, 2.0)  # δ_n = 4
    0.0625
    >>> theory.dcsgd_step_size(9.0, 3, 2.0, shared=True)  # δ_n = 10
    0.025

  References:
    Horváth & Richtárik 2021, Theorems 4 and 6.
    https://arxiv.org/abs/2006.11077
  """
  owner = "dcsgd_step_size"
  L = _positive(L, "L", owner)
  d = _dcsgd_delta(omega, n, probabilities, tau, shared, owner)
  return 1.0 / (2.0 * d * L)


class _Lemma9(NamedTuple):
  """Horváth & Richtárik 2021, Lemma 9 with a = μ, d = 2L, α = δ."""
  delta: float  # α: δ_n (Thm 4) or δ_S (Thm 6)
  L: float
  mu: float
  step: float  # 1/(αd) = 1/(2δL), the constant step
  short: bool  # T ≤ d/a = 2L/μ: constant steps, exponential weights
  t0: int  # ⌈T/2⌉, where the decreasing steps start (T > 2L/μ)
  kappa: float  # κ = 2d/a = 4L/μ


def _lemma9(omega, n, L, mu, T, probabilities, tau, shared, owner) -> _Lemma9:
  L = _positive(L, "L", owner)
  # Assumptions 1 and 3 together imply μ ≤ L.
  mu = checks.check_real(mu, "mu", owner, lo=0.0, hi=L, lo_open=True)
  T = checks.check_int(T, "T", owner)
  delta = _dcsgd_delta(omega, n, probabilities, tau, shared, owner)
  return _Lemma9(delta=delta, L=L, mu=mu, step=1.0 / (2.0 * delta * L),
                 short=T <= 2.0 * L / mu, t0=math.ceil(T / 2), kappa=4.0 * L / mu)


def dcsgd_schedule(omega: float, n: int, L: float, mu: float, T: int, *,
                   probabilities: float | Sequence[float] | None = None,
                   tau: int | None = None, shared: bool = False) -> optax.Schedule:
  """The step sizes η^k that DCSGD's rates are stated for, as an optax schedule.

  Horváth & Richtárik 2021 prove Thms 2, 4 and 6 through Lemma 9 (Appendix
  B.2) with a = μ, d = 2L, α = δ (δ_n of Thm 4, δ' = ω + 1 for n = 1 in
  Thm 2, δ_S of Thm 6), κ = 2d/a = 4L/μ and t0 = ⌈T/2⌉:

  ==================  =======================  ============================
  case                step η^k                 weight w^k
  ==================  =======================  ============================
  T ≤ 2L/μ            1/(2δL)                  (1 − μ/(2δL))^{−(k+1)}
  T > 2L/μ, k < t0    1/(2δL)                  0
  T > 2L/μ, k ≥ t0    2/(δμ(κ + k − t0))       (κ + k − t0)²
  ==================  =======================  ============================

  The steps never exceed the largest allowed, 1/(2δL)
  (:func:`dcsgd_step_size`); the decreasing ones start from it at k = t0.
  The weights are :func:`dcsgd_weights`, and the rate (:func:`dcsgd_bound`)

  ::

    E[f(x̄^T) − f*] + μ E‖x^{T+1} − x*‖²
      ≤ 64 δ L r⁰ exp(−μT/(4δL)) + 36(σ² + D)/(μT)

  holds for x̄^T drawn from x⁰, …, x^T with probabilities w^k/W^T,
  W^T = Σ_{k≤T} w^k. For a convex f the weighted average
  Σ_k w^k x^k / W^T (:func:`compopt.iterate_average`) meets the same bound
  (Jensen). Lemma 9 bounds μ r^{T+1}, the theorems write μ‖x^T − x*‖².

  Two remarks on the paper. Lemma 8 states the decreasing phase with weights
  κ + k, while Lemma 9 (on which the theorems rest, and which is followed
  here) uses (κ + k − t0)². And Lemma 8's telescoping takes
  1 − aη^k = (κ + k − 2)/(κ + k), true for α = 1 only: for δ > 1 the step
  2/(δμ(κ + k)) contracts by 1 − 2/(δ(κ + k)), so with a large δ the
  decreasing phase converges more slowly than 1/k. The constants 64 and 36
  leave room: on quadratics the bound held with δ up to 8.5, but with
  δ = 8.5 the average x̄^T was worse than the last iterate.

  Args:
    omega: ω >= 0 of the compressor.
    n: number of workers, >= 1.
    L: the expected smoothness constant of Assumption 3, > 0.
    mu: the quasi-convexity constant μ of f (Assumption 1), in (0, L].
    T: the last iteration of the run, >= 1: the rate is for x̄^T, the average
      of x⁰, …, x^T, so the run makes T + 1 updates.
    probabilities, tau: partial participation (see :func:`dcsgd_delta_s`).
    shared: whether the workers draw the compressor's randomness together
      (see :func:`dcsgd_delta_n`).

  Returns:
    An ``optax.Schedule``: count ↦ η^count (float32). Past T the decreasing
    formula continues.

  Example:
    >>> from compopt import theory
    >>> sched = theory.dcsgd_schedule(1.0, 1, 1.0, 0.5, 10)  # δ = 2, t0 = 5, κ = 8
    >>> [round(float(sched(k)), 4) for k in (0, 5, 7)]
    [0.25, 0.25, 0.2]

  References:
    Horváth & Richtárik 2021, Theorems 2, 4 and 6, Lemmas 7–9.
    https://arxiv.org/abs/2006.11077
  """
  c = _lemma9(omega, n, L, mu, T, probabilities, tau, shared, "dcsgd_schedule")

  def schedule(count):
    k = jnp.asarray(count, jnp.float32)
    if c.short:
      return jnp.full(k.shape, c.step, jnp.float32)
    # η^k = 2/(δμ(κ + k − t0)) for k ≥ t0, 1/(2δL) before.
    decreasing = 2.0 / (c.delta * c.mu * (c.kappa + jnp.maximum(k - c.t0, 0.0)))
    return jnp.where(k < c.t0, c.step, decreasing).astype(jnp.float32)

  return schedule


def dcsgd_weights(omega: float, n: int, L: float, mu: float, T: int, *,
                  probabilities: float | Sequence[float] | None = None,
                  tau: int | None = None,
                  shared: bool = False) -> Callable[[jax.Array], jax.Array]:
  """The weights w^k of the average x̄^T that DCSGD's rates are stated for.

  Horváth & Richtárik 2021, Lemma 9 with a = μ, d = 2L, α = δ,
  κ = 4L/μ and t0 = ⌈T/2⌉:

  ::

    w^k = (1 − μ/(2δL))^{−(k+1)}                    if T ≤ 2L/μ,
    w^k = 0 for k < t0,  (κ + k − t0)² for k ≥ t0    if T > 2L/μ,

  for the steps of :func:`dcsgd_schedule` built from the same arguments
  (see there for the rate and remarks). Give it to
  :func:`compopt.iterate_average` to keep x̄^T = Σ_k w^k x^k / Σ_k w^k.

  Args:
    omega, n, L, mu, T, probabilities, tau, shared: as in
      :func:`dcsgd_schedule`.

  Returns:
    A function count ↦ w^count (float32), like an optax schedule.

  Example:
    >>> from compopt import theory
    >>> w = theory.dcsgd_weights(1.0, 1, 1.0, 0.5, 10)  # δ = 2, t0 = 5, κ = 8
    >>> [float(w(k)) for k in (4, 5, 7)]
    [0.0, 64.0, 100.0]

  References:
    Horváth & Richtárik 2021, Theorems 2, 4 and 6, Lemma 9.
    https://arxiv.org/abs/2006.11077
  """
  c = _lemma9(omega, n, L, mu, T, probabilities, tau, shared, "dcsgd_weights")
  log_ratio = math.log1p(-c.mu * c.step)  # log(1 − aη), aη = μ/(2δL) ≤ 1/2

  def weights(count):
    k = jnp.asarray(count, jnp.float32)
    if c.short:
      # w^k = (1 − μ/(2δL))^{−(k+1)}
      return jnp.exp(-(k + 1.0) * log_ratio).astype(jnp.float32)
    # w^k = (κ + k − t0)² for k ≥ t0, 0 before.
    return jnp.where(k < c.t0, 0.0, jnp.square(c.kappa + k - c.t0)).astype(jnp.float32)

  return weights


def dcsgd_bound(omega: float, n: int, L: float, mu: float, T: int, r0: float, *,
                sigma2: float = 0.0, D: float = 0.0,
                probabilities: float | Sequence[float] | None = None,
                tau: int | None = None, shared: bool = False) -> float:
  """The right-hand side of DCSGD's rate (Horváth & Richtárik 2021, Thms 2, 4, 6).

  ::

    E[f(x̄^T) − f*] + μ E‖x^{T+1} − x*‖²
      ≤ 64 δ L r⁰ exp(−μT/(4δL)) + 36(σ² + D)/(μT),

  with δ = δ_n (Thm 4; δ' = ω + 1 for n = 1, Thm 2) or δ_S (Thm 6),
  r⁰ = ‖x⁰ − x*‖² and D = (2L/n) Σ_i (f_i(x*) − f_i*), for the steps of
  :func:`dcsgd_schedule` and x̄^T weighted by :func:`dcsgd_weights`.

  Args:
    omega: ω >= 0 of the compressor.
    n: number of workers, >= 1.
    L: the expected smoothness constant of Assumption 3, > 0.
    mu: the quasi-convexity constant μ, in (0, L].
    T: the last iteration, >= 1.
    r0: ‖x⁰ − x*‖² >= 0.
    sigma2: σ² >= 0 of Assumption 3 (0 for exact gradients).
    D: (2L/n) Σ_i (f_i(x*) − f_i*) >= 0 (0 when every f_i is minimal at x*).
    probabilities, tau: partial participation (see :func:`dcsgd_delta_s`).
    shared: whether the workers draw the compressor's randomness together
      (see :func:`dcsgd_delta_n`).

  Returns:
    64 δ L r⁰ exp(−μT/(4δL)) + 36(σ² + D)/(μT).

  Example:
    >>> from compopt import theory
    >>> round(theory.dcsgd_bound(0.0, 1, 1.0, 1.0, 4, 1.0, sigma2=1.0), 4)  # 64/e + 9
    32.5443

  References:
    Horváth & Richtárik 2021, Theorems 2, 4 and 6.
    https://arxiv.org/abs/2006.11077
  """
  owner = "dcsgd_bound"
  c = _lemma9(omega, n, L, mu, T, probabilities, tau, shared, owner)
  r0 = checks.check_real(r0, "r0", owner, lo=0.0)
  sigma2 = checks.check_real(sigma2, "sigma2", owner, lo=0.0)
  D = checks.check_real(D, "D", owner, lo=0.0)
  T = int(T)
  return (64.0 * c.delta * c.L * r0 * math.exp(-c.mu * T / (4.0 * c.delta * c.L))
          + 36.0 * (sigma2 + D) / (c.mu * T))


# ---------------------------- shifted compression (Shulgin & Richtárik 2022)
# Thms 1–4 let every worker have its own constants: Q_i ∈ U(ω_i), C_i ∈ B(δ_i),
# L_i-smooth f_i and Rand-DIANA probabilities p_i. The helpers below take each
# of them as one number (the same for every worker; for L_max, max_i L_i) or as
# a sequence with one entry per worker.
def _per_worker(value, name: str, owner: str, check) -> float | list[float]:
  """A number, or a non-empty sequence of numbers (one per worker), each
  passed through ``check(v)``."""
  if np.ndim(value) == 0:  # numbers, and anything else check() refuses
    return check(value)
  try:
    items = list(np.asarray(value, dtype=object).reshape(-1))
  except Exception as e:  # pragma: no cover - exotic inputs
    raise TypeError(f"{owner}: `{name}` must be a number or a sequence of "
                    f"numbers, one per worker; got {value!r}") from e
  if not items:
    raise ValueError(f"{owner}: `{name}` must be a number or a non-empty sequence "
                     f"of numbers, one per worker; got {value!r}")
  return [check(v) for v in items]


def _same_workers(owner: str, n: int | None = None, **values) -> None:
  """The per-worker sequences among ``values`` have one entry per worker."""
  sizes = {name: len(v) for name, v in values.items() if isinstance(v, list)}
  if n is not None:
    for name, size in sizes.items():
      if size != n:
        raise ValueError(f"{owner}: `{name}` must be a number or have one entry per "
                         f"worker (n = {n}); got {size} entries")
  elif len(set(sizes.values())) > 1:
    got = ", ".join(f"`{name}` has {size}" for name, size in sizes.items())
    raise ValueError(f"{owner}: the per-worker sequences must have the same "
                     f"length; {got}")


def _largest(value) -> float:
  return max(value) if isinstance(value, list) else value


def _smallest(value) -> float:
  return min(value) if isinstance(value, list) else value


def _max_over_workers(fn, *values) -> float:
  """max_i fn(v_i, …), a number standing for its value on every worker."""
  lists = [v for v in values if isinstance(v, list)]
  if not lists:
    return fn(*values)
  return max(fn(*(v[i] if isinstance(v, list) else v for v in values))
             for i in range(len(lists[0])))


def _omegas(omega, owner):
  return _per_worker(omega, "omega", owner, lambda v: checks.check_omega(v, owner))


def _deltas(delta, owner):
  return _per_worker(delta, "delta", owner,
                     lambda v: checks.check_real(v, "delta", owner, lo=0.0, hi=1.0))


def _smoothnesses(L_max, owner):
  return _per_worker(L_max, "L_max", owner, lambda v: _positive(v, "L_max", owner))


def _smoothness(L, L_max, owner):
  """L > 0 and the L_i (or max_i L_i) with max_i L_i >= L."""
  L = _positive(L, "L", owner)
  L_max = _smoothnesses(L_max, owner)
  if _largest(L_max) < L:
    # f = mean_i f_i is max_i L_i-smooth, so a valid L is at most max_i L_i.
    raise ValueError(f"{owner}: `L_max` must be >= L = {L} (f = mean_i f_i is "
                     f"max_i L_i-smooth); got {L_max}")
  return L, L_max


def dcgd_fixed_step_size(omega: float | Sequence[float], n: int, L: float,
                         L_max: float | Sequence[float]) -> float:
  """Largest step size of DCGD with fixed shifts (Shulgin & Richtárik 2022, Thm 1).

  ::

    γ ≤ 1 / (L + 2 max_i(L_i ω_i)/n).

  With one ω for all workers, max_i(L_i ω_i) = ω L_max. Per-worker constants
  (a sequence ω_i, a sequence L_i, or both) give max_i(L_i ω_i) exactly.

  Args:
    omega: ω >= 0 of the compressors Q_i, or the ω_i, one per worker.
    n: number of workers, >= 1.
    L: smoothness constant of f, > 0.
    L_max: max_i L_i, the largest smoothness constant of the f_i, >= L; or
      the L_i, one per worker.

  Returns:
    1 / (L + 2 max_i(ω_i L_i) / n).

  Example:
    >>> from compopt import theory
    >>> theory.dcgd_fixed_step_size(9.0, 10, 1.0, 1.0)  # 1/(1 + 1.8)
    0.35714285714285715
    >>> theory.dcgd_fixed_step_size([1.0, 9.0], 2, 1.0, [2.0, 1.0])  # 1/(1 + 9)
    0.1

  References:
    Shulgin & Richtárik 2022, Theorem 1. https://arxiv.org/abs/2206.10452
  """
  owner = "dcgd_fixed_step_size"
  omega = _omegas(omega, owner)
  n = checks.check_int(n, "n", owner)
  L, L_max = _smoothness(L, L_max, owner)
  _same_workers(owner, n, omega=omega, L_max=L_max)
  return 1.0 / (L + _max_over_workers(lambda w, l: 2.0 * w * l, omega, L_max) / n)


def dcgd_star_step_size(omega: float | Sequence[float], n: int, L: float,
                        L_max: float | Sequence[float],
                        delta: float | Sequence[float] = 0.0) -> float:
  """Largest step size of DCGD-STAR (Shulgin & Richtárik 2022, Thm 2, eq. 9).

  Shifts h_i = ∇f_i(x*) + C_i(∇f_i(x^k) − ∇f_i(x*)) (eq. 8) with C_i ∈ B(δ_i):

  ::

    γ ≤ 1 / (L + max_i(L_i ω_i (1 − δ_i))/n).

  δ = 0 stands for C_i ≡ 0 (the paper: "δ_i should be interpreted as zero").
  The paper's statement writes C_i ∈ U(δ_i); its Table 2 and eq. 4 make C_i a
  contractive B(δ) compressor, which is what δ here means. Each of ω, L_max
  and δ may be one number or a sequence with one entry per worker.

  Args:
    omega: ω >= 0 of the Q_i, or the ω_i, one per worker.
    n: number of workers, >= 1.
    L: smoothness constant of f, > 0.
    L_max: max_i L_i, >= L; or the L_i, one per worker.
    delta: δ ∈ [0, 1] of the C_i in the shift (0 for C_i ≡ 0), or the δ_i.

  Returns:
    1 / (L + max_i(ω_i (1 − δ_i) L_i) / n).

  Example:
    >>> from compopt import theory
    >>> theory.dcgd_star_step_size(9.0, 10, 1.0, 1.0)  # 1/(1 + 0.9)
    0.5263157894736842

  References:
    Shulgin & Richtárik 2022, Theorem 2. https://arxiv.org/abs/2206.10452
  """
  owner = "dcgd_star_step_size"
  omega = _omegas(omega, owner)
  n = checks.check_int(n, "n", owner)
  L, L_max = _smoothness(L, L_max, owner)
  delta = _deltas(delta, owner)
  _same_workers(owner, n, omega=omega, L_max=L_max, delta=delta)
  worst = _max_over_workers(lambda w, d, l: w * (1.0 - d) * l, omega, delta, L_max)
  return 1.0 / (L + worst / n)


def _diana_alpha(omega, delta, owner) -> float:
  # α ≤ 1/(1 + ω_i(1 − δ_i)) for all i
  return 1.0 / (1.0 + _max_over_workers(lambda w, d: w * (1.0 - d), omega, delta))


def diana_alpha(omega: float | Sequence[float],
                delta: float | Sequence[float] = 0.0) -> float:
  """Largest DIANA shift step α (Shulgin & Richtárik 2022, Thm 3).

  ::

    α ≤ 1 / (1 + ω_i (1 − δ_i))  for all i,  i.e.
    α = 1 / (1 + max_i ω_i (1 − δ_i)),

  for the shift update h_i ← h_i + α(c_i + m_i), c_i = C_i(g_i − h_i),
  m_i = Q_i(g_i − h_i − c_i) (eq. 10), Q_i ∈ U(ω_i), C_i ∈ B(δ_i). δ = 0
  stands for C_i ≡ 0, the original DIANA (eq. 11): α = 1/(1 + ω). The
  theorem's statement writes C_i ∈ U(δ_i); Table 2 and eq. 4 make C_i
  contractive, B(δ), as used here.

  Args:
    omega: ω >= 0 of the Q_i, or the ω_i, one per worker.
    delta: δ ∈ [0, 1] of the C_i (0 for C_i ≡ 0), or the δ_i, one per worker.

  Returns:
    α = 1 / (1 + max_i ω_i (1 − δ_i)).

  Example:
    >>> from compopt import theory
    >>> theory.diana_alpha(9.0)   # rand_k with q = k/d = 0.1: α = q
    0.1
    >>> theory.diana_alpha([1.0, 9.0])   # the most compressed worker decides
    0.1

  References:
    Shulgin & Richtárik 2022, Theorem 3, eqs. 10–11.
    https://arxiv.org/abs/2206.10452
  """
  owner = "diana_alpha"
  omega = _omegas(omega, owner)
  delta = _deltas(delta, owner)
  _same_workers(owner, omega=omega, delta=delta)
  return _diana_alpha(omega, delta, owner)


def _alpha_arg(alpha, omega, delta, owner):
  if alpha is None:
    return _diana_alpha(omega, delta, owner)
  return checks.check_real(alpha, "alpha", owner, lo=0.0, hi=1.0, lo_open=True)


def diana_M(omega: float | Sequence[float], n: int, alpha: float | None = None,
            delta: float | Sequence[float] = 0.0) -> float:
  """The Lyapunov weight M of DIANA, with a safety factor 2.

  Shulgin & Richtárik 2022, Thm 3.

  Thm 3 asks for M > 2/(nα), and its rate factor 1 − α + 2ω/(nM) is below 1
  only when M > 2ω/(nα). We return twice the larger bound,

  ::

    M = 4 max(1, ω) / (n α),

  which meets the stated condition and makes 1 − α + 2ω/(nM) ≤ 1 − α/2
  (the same factor 2 as Thm 4's choice M = 4ω/(n p) for Rand-DIANA). With
  per-worker ω_i, the rate's ω (written without an index in the theorem) is
  max_i ω_i.

  Why both bounds: the theorem's γ bound, (1 + αM)L_max, and its rate term
  2ω/(nM) are those of a Lyapunov function M γ² (1/n) Σ_i ‖h_i − h_i*‖²
  (as in Thm 4, which needs M > 2ω/(n p)); the statement's V weighs the
  shifts by ω_i and asks for M > 2/(nα) instead. Without the paper's proof
  we take the choice that satisfies both readings.

  Args:
    omega: ω >= 0 of the Q_i, or the ω_i, one per worker.
    n: number of workers, >= 1.
    alpha: the shift step α ∈ (0, 1]; defaults to :func:`diana_alpha`.
    delta: δ ∈ [0, 1] of the C_i, or the δ_i; used only for the default α.

  Returns:
    M = 4 max(1, max_i ω_i) / (n α).

  Example:
    >>> from compopt import theory
    >>> theory.diana_M(9.0, 10)   # α = 0.1: 4·9/(10·0.1)
    36.0

  References:
    Shulgin & Richtárik 2022, Theorem 3. https://arxiv.org/abs/2206.10452
  """
  owner = "diana_M"
  omega = _omegas(omega, owner)
  n = checks.check_int(n, "n", owner)
  delta = _deltas(delta, owner)
  _same_workers(owner, n, omega=omega, delta=delta)
  alpha = _alpha_arg(alpha, omega, delta, owner)
  return 4.0 * max(1.0, _largest(omega)) / (n * alpha)


def diana_step_size(omega: float | Sequence[float], n: int,
                    L_max: float | Sequence[float], *,
                    alpha: float | None = None, M: float | None = None,
                    delta: float | Sequence[float] = 0.0) -> float:
  """Largest DIANA step size γ (Shulgin & Richtárik 2022, Thm 3).

  ::

    γ ≤ 1 / ((2/n) max_i(ω_i L_i) + (1 + α M) L_max),

  with one ω for all workers max_i(ω_i L_i) = ω L_max; per-worker ω_i and
  L_i give max_i(ω_i L_i) exactly. The theorem's bound does not involve the
  smoothness constant L of f, only the L_i.

  Args:
    omega: ω >= 0 of the Q_i, or the ω_i, one per worker.
    n: number of workers, >= 1.
    L_max: max_i L_i, > 0; or the L_i, one per worker.
    alpha: the shift step α ∈ (0, 1]; defaults to :func:`diana_alpha`.
    M: the Lyapunov weight, > 0; defaults to :func:`diana_M`.
    delta: δ ∈ [0, 1] of the C_i, or the δ_i; used only for the default α.

  Returns:
    1 / ((2/n) max_i(ω_i L_i) + (1 + α M) max_i L_i).

  Example:
    >>> from compopt import theory
    >>> # ω = 9, n = 10: α = 0.1, M = 36, γ = 1/(1.8 + 4.6)
    >>> round(theory.diana_step_size(9.0, 10, 1.0), 6)
    0.15625

  References:
    Shulgin & Richtárik 2022, Theorem 3. https://arxiv.org/abs/2206.10452
  """
  owner = "diana_step_size"
  omega = _omegas(omega, owner)
  n = checks.check_int(n, "n", owner)
  L_max = _smoothnesses(L_max, owner)
  delta = _deltas(delta, owner)
  _same_workers(owner, n, omega=omega, L_max=L_max, delta=delta)
  alpha = _alpha_arg(alpha, omega, delta, owner)
  if M is None:
    M = 4.0 * max(1.0, _largest(omega)) / (n * alpha)  # diana_M
  else:
    M = _positive(M, "M", owner)
  worst = _max_over_workers(lambda w, l: 2.0 * w * l, omega, L_max)
  return 1.0 / (worst / n + (1.0 + alpha * M) * _largest(L_max))


def diana_rate(omega: float | Sequence[float], n: int, gamma: float, mu: float, *,
               alpha: float | None = None, M: float | None = None,
               delta: float | Sequence[float] = 0.0) -> float:
  """DIANA's per-iteration contraction factor (Shulgin & Richtárik 2022, Thm 3).

  ::

    E V^k ≤ ρ^k V^0,  ρ = max{1 − γμ, 1 − α + 2ω/(nM)},

  with ω = max_i ω_i for per-worker ω_i. A value >= 1 means the theorem
  guarantees nothing for these parameters.

  Args:
    omega: ω >= 0 of the Q_i, or the ω_i, one per worker.
    n: number of workers, >= 1.
    gamma: the step size γ > 0 (e.g. :func:`diana_step_size`).
    mu: strong convexity constant μ > 0 of f.
    alpha: the shift step α ∈ (0, 1]; defaults to :func:`diana_alpha`.
    M: the Lyapunov weight, > 0; defaults to :func:`diana_M`.
    delta: δ ∈ [0, 1] of the C_i, or the δ_i; used only for the default α.

  Returns:
    ρ = max(1 − γμ, 1 − α + 2 max_i ω_i/(nM)).

  Example:
    >>> from compopt import theory
    >>> theory.diana_rate(9.0, 10, 0.15625, 0.01)  # max(0.9984375, 0.95)
    0.9984375

  References:
    Shulgin & Richtárik 2022, Theorem 3. https://arxiv.org/abs/2206.10452
  """
  owner = "diana_rate"
  omega = _omegas(omega, owner)
  n = checks.check_int(n, "n", owner)
  gamma = _positive(gamma, "gamma", owner)
  mu = _positive(mu, "mu", owner)
  delta = _deltas(delta, owner)
  _same_workers(owner, n, omega=omega, delta=delta)
  alpha = _alpha_arg(alpha, omega, delta, owner)
  w = _largest(omega)
  M = 4.0 * max(1.0, w) / (n * alpha) if M is None else _positive(M, "M", owner)
  return max(1.0 - gamma * mu, 1.0 - alpha + 2.0 * w / (n * M))


def rand_diana_p(omega: float | Sequence[float]) -> float:
  """Rand-DIANA's refresh probability p = 1/(ω + 1).

  Shulgin & Richtárik 2022, §3.2.2.

  ::

    p = 1/(ω + 1).

  The choice the paper recommends after Thm 4 (and uses in its experiments,
  §4.1): with M = 4ω/(np) it gives the iteration complexity
  max{(L_max/μ)(1 + ω/n), ω + 1} of the original DIANA.

  Per-worker ω_i: Thm 4 is stated with one ω, which for Q_i ∈ U(ω_i) is
  ω = max_i ω_i (U(ω_i) ⊆ U(max_i ω_i)). Its bounds depend on the p_i only
  through p_m = min_i p_i (the rate) and max_i(p_i L_i) (the step), so raising
  a worker's p_i above p_m buys no guarantee and shrinks γ; the common
  p = 1/(max_i ω_i + 1) is returned. (Thm 4 allows different p_i: calling
  this with each worker's ω_i gives p_i = 1/(ω_i + 1).)

  Args:
    omega: ω >= 0 of the Q_i, or the ω_i, one per worker.

  Returns:
    p = 1/(max_i ω_i + 1) ∈ (0, 1].

  Example:
    >>> from compopt import theory
    >>> theory.rand_diana_p(9.0)
    0.1
    >>> theory.rand_diana_p([1.0, 9.0])
    0.1

  References:
    Shulgin & Richtárik 2022, Theorem 4 and the text after it.
    https://arxiv.org/abs/2206.10452
  """
  return 1.0 / (_largest(_omegas(omega, "rand_diana_p")) + 1.0)


def _p_arg(p, omega, owner):
  if p is None:
    return 1.0 / (_largest(omega) + 1.0)  # rand_diana_p
  return _per_worker(p, "p", owner,
                     lambda v: checks.check_real(v, "p", owner, lo=0.0, hi=1.0, lo_open=True))


def rand_diana_M(omega: float | Sequence[float], n: int,
                 p: float | Sequence[float] | None = None) -> float:
  """Rand-DIANA's Lyapunov weight M = 4ω/(n p_m).

  Shulgin & Richtárik 2022, Thm 4.

  ::

    M = 4ω/(n p_m),  p_m = min_i p_i,

  twice the theorem's lower bound M > 2ω/(n p_m) (the choice stated after
  Thm 4). It makes the rate term 1 − p_m + 2ω/(nM) = 1 − p_m/2. For ω = 0
  this is 0: no compression, no shift term to control. Per-worker ω_i enter
  as ω = max_i ω_i (see :func:`rand_diana_p`).

  Args:
    omega: ω >= 0 of the Q_i, or the ω_i, one per worker.
    n: number of workers, >= 1.
    p: the refresh probability ∈ (0, 1], or the p_i, one per worker (p_m is
      their minimum); defaults to :func:`rand_diana_p`.

  Returns:
    M = 4 max_i ω_i/(n min_i p_i).

  Example:
    >>> from compopt import theory
    >>> theory.rand_diana_M(9.0, 10)   # p = 0.1
    36.0

  References:
    Shulgin & Richtárik 2022, Theorem 4. https://arxiv.org/abs/2206.10452
  """
  owner = "rand_diana_M"
  omega = _omegas(omega, owner)
  n = checks.check_int(n, "n", owner)
  p = _p_arg(p, omega, owner)
  _same_workers(owner, n, omega=omega, p=p)
  return 4.0 * _largest(omega) / (n * _smallest(p))


def rand_diana_step_size(omega: float | Sequence[float], n: int,
                         L_max: float | Sequence[float], *,
                         p: float | Sequence[float] | None = None,
                         M: float | None = None) -> float:
  """Largest Rand-DIANA step size γ (Shulgin & Richtárik 2022, Thm 4).

  ::

    γ ≤ 1 / ((1 + 2ω/n) L_max + M max_i(p_i L_i)),

  with ω = max_i ω_i for per-worker ω_i. With one p and one L_max,
  max_i(p_i L_i) = p L_max; per-worker p_i and L_i give it exactly. With the
  defaults p = 1/(ω + 1), M = 4ω/(np): γ = 1/((1 + 6ω/n) L_max).

  Args:
    omega: ω >= 0 of the Q_i, or the ω_i, one per worker.
    n: number of workers, >= 1.
    L_max: max_i L_i, > 0; or the L_i, one per worker.
    p: refresh probability ∈ (0, 1], or the p_i, one per worker; defaults to
      :func:`rand_diana_p`.
    M: the Lyapunov weight, >= 0; defaults to :func:`rand_diana_M`.

  Returns:
    1 / ((1 + 2 max_i ω_i/n) max_i L_i + M max_i(p_i L_i)).

  Example:
    >>> from compopt import theory
    >>> theory.rand_diana_step_size(9.0, 10, 1.0)   # 1/(1 + 1.8 + 3.6)
    0.15625

  References:
    Shulgin & Richtárik 2022, Theorem 4. https://arxiv.org/abs/2206.10452
  """
  owner = "rand_diana_step_size"
  omega = _omegas(omega, owner)
  n = checks.check_int(n, "n", owner)
  L_max = _smoothnesses(L_max, owner)
  p = _p_arg(p, omega, owner)
  _same_workers(owner, n, omega=omega, L_max=L_max, p=p)
  w = _largest(omega)
  if M is None:
    M = 4.0 * w / (n * _smallest(p))  # rand_diana_M
  else:
    M = checks.check_real(M, "M", owner, lo=0.0)
  refresh = _max_over_workers(lambda q, l: M * q * l, p, L_max)
  return 1.0 / ((1.0 + 2.0 * w / n) * _largest(L_max) + refresh)


def rand_diana_rate(omega: float | Sequence[float], n: int, gamma: float, mu: float, *,
                    p: float | Sequence[float] | None = None,
                    M: float | None = None) -> float:
  """Rand-DIANA's per-iteration contraction factor.

  Shulgin & Richtárik 2022, Thm 4.

  ::

    E V^k ≤ ρ^k V^0,  ρ = max{1 − γμ, 1 − p_m + 2ω/(nM)},  p_m = min_i p_i,

  with ω = max_i ω_i for per-worker ω_i. (For ω = 0 the second term is
  1 − p_m.) A value >= 1 means the theorem guarantees nothing for these
  parameters.

  Args:
    omega: ω >= 0 of the Q_i, or the ω_i, one per worker.
    n: number of workers, >= 1.
    gamma: the step size γ > 0.
    mu: strong convexity constant μ > 0.
    p: refresh probability ∈ (0, 1], or the p_i, one per worker; defaults to
      :func:`rand_diana_p`.
    M: the Lyapunov weight, > 0 (>= 0 when ω = 0); defaults to
      :func:`rand_diana_M`.

  Returns:
    ρ = max(1 − γμ, 1 − p_m + 2 max_i ω_i/(nM)).

  Example:
    >>> from compopt import theory
    >>> round(theory.rand_diana_rate(9.0, 10, 0.15625, 1.0), 6)  # max(.84375, .95)
    0.95

  References:
    Shulgin & Richtárik 2022, Theorem 4. https://arxiv.org/abs/2206.10452
  """
  owner = "rand_diana_rate"
  omega = _omegas(omega, owner)
  n = checks.check_int(n, "n", owner)
  gamma = _positive(gamma, "gamma", owner)
  mu = _positive(mu, "mu", owner)
  p = _p_arg(p, omega, owner)
  _same_workers(owner, n, omega=omega, p=p)
  w, p_m = _largest(omega), _smallest(p)
  if M is None:
    M = 4.0 * w / (n * p_m)  # rand_diana_M
  else:
    M = checks.check_real(M, "M", owner, lo=0.0, lo_open=w > 0)
  shift_term = 0.0 if w == 0 else 2.0 * w / (n * M)
  return max(1.0 - gamma * mu, 1.0 - p_m + shift_term)


def gdci_eta(omega: float, n: int, L: float, L_max: float, mu: float) -> float:
  """Largest GDCI relaxation η (Shulgin & Richtárik 2022, Thm 5).

  For x ← (1 − η)x + η mean_i Q_i(x − γ∇f_i(x)) (eq. 13), Q_i ∈ U(ω):

  ::

    η ≤ [L/μ + (2ω/n)(L_max/μ − 1)]^{-1}.

  Args:
    omega: ω >= 0 of the Q_i.
    n: number of workers, >= 1.
    L: smoothness constant of f, > 0.
    L_max: max_i L_i, >= L (or the L_i, one per worker).
    mu: strong convexity constant of f, in (0, L].

  Returns:
    η = 1 / (L/μ + (2ω/n)(L_max/μ − 1)) ∈ (0, 1].

  Example:
    >>> from compopt import theory
    >>> theory.gdci_eta(1.0, 2, 2.0, 2.0, 1.0)   # 1/(2 + 1)
    0.3333333333333333

  References:
    Shulgin & Richtárik 2022, Theorem 5. https://arxiv.org/abs/2206.10452
  """
  owner = "gdci_eta"
  omega = checks.check_omega(omega, owner)
  n = checks.check_int(n, "n", owner)
  L, L_max = _smoothness(L, L_max, owner)
  L_max = _largest(L_max)
  mu = checks.check_real(mu, "mu", owner, lo=0.0, hi=L, lo_open=True)
  return 1.0 / (L / mu + 2.0 * omega / n * (L_max / mu - 1.0))


def gdci_step_size(omega: float, n: int, L: float, L_max: float,
                   eta: float) -> float:
  """Largest GDCI gradient step γ for a given η.

  Shulgin & Richtárik 2022, Thm 5.

  ::

    γ ≤ (1 + 2ηω/n) / (η (L + 2 L_max ω/n)).

  Args:
    omega: ω >= 0 of the Q_i.
    n: number of workers, >= 1.
    L: smoothness constant of f, > 0.
    L_max: max_i L_i, >= L (or the L_i, one per worker).
    eta: the relaxation η ∈ (0, 1] (e.g. :func:`gdci_eta`).

  Returns:
    (1 + 2ηω/n) / (η (L + 2 L_max ω/n)).

  Example:
    >>> from compopt import theory
    >>> theory.gdci_step_size(1.0, 2, 2.0, 2.0, 0.5)   # 1.5/(0.5·4)
    0.75

  References:
    Shulgin & Richtárik 2022, Theorem 5. https://arxiv.org/abs/2206.10452
  """
  owner = "gdci_step_size"
  omega = checks.check_omega(omega, owner)
  n = checks.check_int(n, "n", owner)
  L, L_max = _smoothness(L, L_max, owner)
  L_max = _largest(L_max)
  eta = checks.check_real(eta, "eta", owner, lo=0.0, hi=1.0, lo_open=True)
  return (1.0 + 2.0 * eta * omega / n) / (eta * (L + 2.0 * L_max * omega / n))


# ---------------------------------------------- NEOLITHIC (Huang et al. 2022)
def neolithic_rounds(delta: float, T: int, b2: float, sigma2: float,
                     Delta: float, L: float) -> int:
  """NEOLITHIC's number of compression rounds R (Huang et al. 2022, Thm 3).

  ::

    R = ⌈ max{ ln(δ T max{b², σ² δ} / (Δ L)), ln 8 } / δ ⌉.

  Where b² = σ² = 0 the first logarithm is −∞ and R = ⌈ln 8 / δ⌉. For an
  unbiased C ∈ U(ω), use δ = 1/(1 + ω) (the scaled compressor C/(1 + ω),
  Corollary 3).

  Args:
    delta: δ ∈ (0, 1] of the compressors C_i (and C_0).
    T: total gradient queries / communication rounds per worker, >= 1
      (T = K R for K iterations).
    b2: gradient dissimilarity b² >= 0 (Assumption 5).
    sigma2: gradient noise variance σ² >= 0 (Assumption 2).
    Delta: initial gap Δ >= f(x⁰) − f*, > 0.
    L: smoothness constant, > 0.

  Returns:
    R, an int >= 1.

  Example:
    >>> from compopt import theory
    >>> theory.neolithic_rounds(0.5, 1000, 1.0, 1.0, 1.0, 1.0)  # ⌈2 ln 500⌉
    13

  References:
    Huang et al. 2022, Theorem 3. https://arxiv.org/abs/2206.03665
  """
  owner = "neolithic_rounds"
  delta = checks.check_delta(delta, owner)
  T = checks.check_int(T, "T", owner)
  b2 = checks.check_real(b2, "b2", owner, lo=0.0)
  sigma2 = checks.check_real(sigma2, "sigma2", owner, lo=0.0)
  Delta = _positive(Delta, "Delta", owner)
  L = _positive(L, "L", owner)
  arg = delta * T * max(b2, sigma2 * delta) / (Delta * L)
  log_term = math.log(arg) if arg > 0 else -math.inf
  return max(1, math.ceil(max(log_term, math.log(8.0)) / delta))


def fcc_error_bound(delta: float, R: int) -> float:
  """FCC's error factor after R rounds (Huang et al. 2022, Lemma 2).

  ::

    E‖v^R − v*‖² ≤ (1 − δ)^R ‖v*‖²,

  so FCC(C, R) ∈ B(1 − (1 − δ)^R) for C ∈ B(δ).

  Args:
    delta: δ ∈ (0, 1] of the compressor C.
    R: number of rounds, >= 1.

  Returns:
    (1 − δ)^R.

  Example:
    >>> from compopt import theory
    >>> theory.fcc_error_bound(0.5, 3)
    0.125

  References:
    Huang et al. 2022, Lemma 2 (Alg. 1).
    https://arxiv.org/abs/2206.03665
  """
  owner = "fcc_error_bound"
  delta = checks.check_delta(delta, owner)
  R = checks.check_int(R, "R", owner)
  return (1.0 - delta) ** R


# Huang et al. 2022, Table 1: transient complexity (gradient queries, or
# communication rounds, before the σ/√(nT) term dominates), as (n, δ) -> count.
# Unbiased rows are the contractive ones with δ = 1/(1 + ω) (Lemma 1 /
# Corollary 3): n/δ² = n(1 + ω)². None: the table's "–" (no linear speed-up
# shown).
_TRANSIENT = {
    "lower_bound": lambda n, d: n / d**2,      # Thms 1–2, Cors 1–2
    "neolithic": lambda n, d: n / d**2,        # Thm 3, Cor 3
    "q_sgd": None,                             # "–" (footnote †)
    "mem_sgd": lambda n, d: n**3 / d**4,
    "double_squeeze": lambda n, d: n**3 / d**8,
    "cser": lambda n, d: n**3 / d**4,
    "ef21_sgd": None,                          # "–" (footnote *)
}

TRANSIENT_METHODS = tuple(_TRANSIENT)


def transient_complexity(method: str, n: int, delta: float | None = None,
                         omega: float | None = None) -> float | None:
  """Transient complexity of a method of Huang et al. 2022, Table 1.

  The number of gradient queries (or communication rounds) T before the
  linear-speedup term σ/√(nT) dominates the rate. Orders of magnitude only:
  constants, logarithms, σ, b², G², L and Δ are dropped, as in the table.

  ==================  =========================  ===========================
  ``method``          source                     transient complexity
  ==================  =========================  ===========================
  ``lower_bound``     Thms 1–2, Cors 1–2         n/δ² (contractive),
                                                 n(1 + ω)² (unbiased)
  ``neolithic``       Thm 3, Cor 3               n/δ², n(1 + ω)² (up to logs)
  ``q_sgd``           Q-SGD [32]                 None (not available)
  ``mem_sgd``         MEM-SGD [53]               n³/δ⁴
  ``double_squeeze``  Double Squeeze [57]        n³/δ⁸
  ``cser``            CSER [62]                  n³/δ⁴
  ``ef21_sgd``        EF21-SGD [25]              None (not available)
  ==================  =========================  ===========================

  Give δ (contractive compressors) or ω (unbiased ones). An ω is turned into
  δ = 1/(1 + ω), the constant of the scaled compressor C/(1 + ω)
  (Huang et al. 2022, §2.3 and Cor. 3), so n/δ² = n(1 + ω)² as in the table's
  unbiased rows.

  Note: Table 1's LB rows attribute the contractive rate 1/(δT) to
  "Theorem 1+Corollary 1" and the unbiased rate (1 + ω)/T to "Theorem
  2+Corollary 2"; in the text Thm 1 is the unbiased bound (eq. 3) and Thm 2
  the contractive one (eq. 4). The counts are the same either way.

  Args:
    method: one of ``TRANSIENT_METHODS``.
    n: number of workers, >= 1.
    delta: δ ∈ (0, 1] of a contractive compressor.
    omega: ω >= 0 of an unbiased compressor. Give exactly one of the two.

  Returns:
    The transient complexity as a float, or None where Table 1 has "–".

  Example:
    >>> from compopt import theory
    >>> theory.transient_complexity("neolithic", 8, delta=0.5)
    32.0
    >>> theory.transient_complexity("lower_bound", 8, omega=1.0)
    32.0

  References:
    Huang et al. 2022, Table 1, Theorems 1–3, Corollaries 1–3.
    https://arxiv.org/abs/2206.03665
  """
  owner = "transient_complexity"
  if method not in _TRANSIENT:
    raise ValueError(f"{owner}: `method` must be one of {TRANSIENT_METHODS}; "
                     f"got {method!r}")
  n = checks.check_int(n, "n", owner)
  if (delta is None) == (omega is None):
    raise ValueError(f"{owner}: give exactly one of `delta` (contractive) and "
                     f"`omega` (unbiased); got delta={delta!r}, omega={omega!r}")
  if delta is not None:
    d = checks.check_delta(delta, owner)
  else:
    d = 1.0 / (1.0 + checks.check_omega(omega, owner))
  fn = _TRANSIENT[method]
  return None if fn is None else float(fn(n, d))


# ---------------------------------------------------- COMP-AMS (Li & Li 2022)
def _q_arg(q, delta, owner) -> float:
  """q ∈ [0, 1) of Assumption 1, given as q or as δ = 1 − q²."""
  if (q is None) == (delta is None):
    raise ValueError(f"{owner}: give exactly one of `q` (‖C(x) − x‖ ≤ q‖x‖) and "
                     f"`delta` (δ = 1 − q²); got q={q!r}, delta={delta!r}")
  if q is not None:
    return checks.check_real(q, "q", owner, lo=0.0, hi=1.0, hi_open=True)
  return math.sqrt(1.0 - checks.check_delta(delta, owner))


def comp_ams_learning_rate(L: float, G: float, *, q: float | None = None,
                           delta: float | None = None, b1: float = 0.9,
                           eps: float = 1e-8, T: int | None = None,
                           n: int = 1) -> float:
  """COMP-AMS's learning rate η (Li & Li 2022, Thm 1, Corollaries 1–2).

  For a q-deviate compressor, ‖C(x) − x‖ ≤ q‖x‖ with q ∈ [0, 1)
  (Assumption 1), L-smooth f_i (Assumption 2) and stochastic gradients
  bounded by ‖g_{t,i}‖ ≤ G (Assumption 3), Thm 1 holds for constant steps

  ::

    η ≤ ε / (3 C_0 √(2L max{2L, C_2})),
    C_0 = √(4(1 + q²)³ G²/(1 − q²)² + ε),
    C_2 = β1²/(1 − β1)² + 4q²/(1 − q²)².

  Corollary 1 (n = 1) and Corollary 2 (n workers, linear speedup) take
  η = min{that bound, √n/√T}; give ``T`` for it.

  The statement of Thm 1 uses C_2 without defining it; C_2 is defined in the
  proof (Appendix A.2, after eq. 9). The proof writes
  C_0 = √(4(1 + q²)³G²/(1 − q²)²) + ε; we follow the statement (ε inside the
  root). ε is the ε of :func:`compopt.scale_by_comp_ams` (inside the root,
  m/√(v̂ + ε)). Top-k has q² = 1 − k/d and Block-Sign
  q² = 1 − min_i 1/d_i (Remark 1): q = √(1 − δ) for the δ of
  :func:`delta`, which ``delta=`` takes instead of q.

  Args:
    L: smoothness constant of the f_i, > 0.
    G: bound on the stochastic gradients' norm, >= 0.
    q: q ∈ [0, 1) of the compressor (Assumption 1).
    delta: alternatively δ ∈ (0, 1], with q = √(1 − δ). Give exactly one.
    b1: β1 ∈ [0, 1).
    eps: ε > 0.
    T: number of iterations, >= 1, for the corollaries' min with √n/√T
      (None: Thm 1's constant bound alone).
    n: number of workers, >= 1 (used with ``T``).

  Returns:
    η = ε/(3 C_0 √(2L max{2L, C_2})), or its min with √(n/T).

  Example:
    >>> from compopt import theory
    >>> # q = 0, β1 = 1/2, G = 1, ε = 5: C_0 = 3, C_2 = 1, η = 5/(3·3·4)
    >>> round(theory.comp_ams_learning_rate(2.0, 1.0, q=0.0, b1=0.5, eps=5.0), 6)
    0.138889

  References:
    Li, Li. On distributed adaptive optimization with gradient compression,
    ICLR 2022, Theorem 1, Corollaries 1 and 2.
    https://arxiv.org/abs/2205.05632
  """
  owner = "comp_ams_learning_rate"
  L = _positive(L, "L", owner)
  G = checks.check_real(G, "G", owner, lo=0.0)
  q = _q_arg(q, delta, owner)
  b1 = checks.check_real(b1, "b1", owner, lo=0.0, hi=1.0, hi_open=True)
  eps = _positive(eps, "eps", owner)
  n = checks.check_int(n, "n", owner)
  q2 = q * q
  C0 = math.sqrt(4.0 * (1.0 + q2) ** 3 * G * G / (1.0 - q2) ** 2 + eps)
  C2 = b1 * b1 / (1.0 - b1) ** 2 + 4.0 * q2 / (1.0 - q2) ** 2
  eta = eps / (3.0 * C0 * math.sqrt(2.0 * L * max(2.0 * L, C2)))
  if T is None:
    return eta
  T = checks.check_int(T, "T", owner)
  return min(eta, math.sqrt(n / T))


# ------------------------------------- EF-SignSGD (Karimireddy et al. 2019)
def sign_density(v: Any, block_size: int | None = None) -> jax.Array:
  """φ(v): the δ of scaled sign on v itself (Karimireddy et al. 2019, Lemma 8).

  Scaled sign C(v) = (‖v‖₁/d) sign(v) meets its contraction with equality:

  ::

    ‖C(v) − v‖² = ‖v‖² − ‖v‖₁²/d = (1 − φ(v)) ‖v‖²,
    φ(v) = ‖v‖₁² / (d ‖v‖₂²) ∈ [1/d, 1].

  The worst case, φ = 1/d (one non-zero coordinate), is the δ that
  :func:`delta` reports for ``scaled_sign``; dense vectors have a much larger
  φ (the paper measures min φ(g_t + e_t) > 0.13 on VGG19). The EF theorems
  need δ over the vectors actually compressed, p_t = γg_t + e_t for EF-SGD
  (Alg. 2), so measure φ on those.

  compopt's ``scaled_sign`` acts leaf by leaf and ``block_sign`` block by
  block; the error then adds up over the blocks B (d_B coordinates each) and

  ::

    ‖C(v) − v‖² = (1 − φ(v)) ‖v‖²,
    φ(v) = Σ_B ‖v_B‖₁²/d_B / Σ_B ‖v_B‖₂²,

  which is what is returned for a pytree (each leaf a block, or blocks of
  ``block_size`` coordinates within each leaf, the last one shorter, as
  ``block_sign(block_size)`` cuts them). For one array it is Lemma 8's φ(v).

  Args:
    v: an array or a pytree of arrays (for example the error-corrected
      gradients). Traceable: it can be computed inside a jitted step.
    block_size: as in ``compressors.block_sign``; None: one block per leaf.

  Returns:
    φ(v) as a float32 scalar array; 1 for v = 0 (C(0) = 0: any δ holds).

  Example:
    >>> import jax.numpy as jnp
    >>> from compopt import theory
    >>> round(float(theory.sign_density(jnp.array([3.0, -1.0, 0.0, 0.0]))), 6)  # 16/(4·10)
    0.4

  References:
    Karimireddy, Rebjock, Stich, Jaggi. Error feedback fixes SignSGD and other
    gradient compression schemes, ICML 2019, Lemma 8.
    https://arxiv.org/abs/1901.09847
  """
  owner = "sign_density"
  if block_size is not None:
    block_size = checks.check_int(block_size, "block_size", owner, lo=1)
  leaves = jax.tree.leaves(v)
  if not leaves:
    raise ValueError(f"{owner}: `v` must hold at least one array; got {v!r}")
  l1_sq_over_d = jnp.float32(0.0)  # Σ_B ‖v_B‖₁²/d_B
  l2_sq = jnp.float32(0.0)  # Σ_B ‖v_B‖₂²
  for leaf in leaves:
    x = jnp.ravel(checks.check_array(leaf, owner)).astype(jnp.float32)
    size = x.shape[0]
    if size == 0:
      continue
    block = size if block_size is None else min(block_size, size)
    full = size // block
    a = jnp.abs(x)
    rows = a[:full * block].reshape(full, block)
    l1_sq_over_d += jnp.sum(jnp.square(jnp.sum(rows, axis=1))) / block
    if full * block < size:
      tail = a[full * block:]
      l1_sq_over_d += jnp.square(jnp.sum(tail)) / tail.shape[0]
    l2_sq += jnp.sum(jnp.square(x))
  return jnp.where(l2_sq > 0, l1_sq_over_d / jnp.where(l2_sq > 0, l2_sq, 1.0),
                   1.0).astype(jnp.float32)


def _ef_args(T, sigma2, delta, owner):
  T = checks.check_int(T, "T", owner)
  sigma2 = _positive(sigma2, "sigma2", owner)
  delta = checks.check_delta(delta, owner)
  return T, sigma2, delta


def ef_signsgd_bound(gamma: float, T: int, f0: float, L: float, sigma2: float,
                     delta: float) -> float:
  """The right-hand side of EF-SGD's non-convex rate (Karimireddy et al. 2019, Thm II).

  For Alg. 2 (EF-SGD) with a δ-approximate compressor
  (‖C(x) − x‖² ≤ (1 − δ)‖x‖², Assumption A; scaled sign for EF-SignSGD, with
  δ = φ, :func:`sign_density`), L-smooth f and E‖g‖² ≤ σ² (Assumption C):

  ::

    min_{t≤T} E‖∇f(x_t)‖² ≤ 2f_0/(γ(T + 1)) + γLσ²/2 + 4γ²L²σ²(1 − δ)/δ²,

  f_0 = f(x_0) − f*, for any step size γ > 0.

  Args:
    gamma: step size γ > 0.
    T: last iteration, >= 1.
    f0: f(x_0) − f* > 0.
    L: smoothness constant, > 0.
    sigma2: σ² > 0, the bound on E‖g‖².
    delta: δ ∈ (0, 1] of the compressor.

  Returns:
    The bound, a float.

  Example:
    >>> from compopt import theory
    >>> theory.ef_signsgd_bound(0.5, 3, 1.5, 1.0, 4.0, 1.0)  # 1.5 + 1 + 0
    2.5

  References:
    Karimireddy, Rebjock, Stich, Jaggi. Error feedback fixes SignSGD and other
    gradient compression schemes, ICML 2019, Theorem II.
    https://arxiv.org/abs/1901.09847
  """
  owner = "ef_signsgd_bound"
  gamma = _positive(gamma, "gamma", owner)
  f0 = _positive(f0, "f0", owner)
  L = _positive(L, "L", owner)
  T, sigma2, delta = _ef_args(T, sigma2, delta, owner)
  return (2.0 * f0 / (gamma * (T + 1)) + gamma * L * sigma2 / 2.0
          + 4.0 * gamma ** 2 * L ** 2 * sigma2 * (1.0 - delta) / delta ** 2)


def ef_signsgd_step_size(T: int, *, f0: float | None = None, L: float | None = None,
                         sigma2: float | None = None, delta: float = 1.0) -> float:
  """EF-SignSGD's step size for Karimireddy et al. 2019, Thm II (non-convex).

  Without constants, Remark 4's choice

  ::

    γ = 1/√(T + 1),

  which gives min_t E‖∇f(x_t)‖² ≤ (4f_0 + Lσ²)/(2√(T + 1))
  + 4L²σ²(1 − δ)/(δ²(T + 1)). With f_0, L and σ², the γ that minimizes
  Thm II's bound (:func:`ef_signsgd_bound`),
  A/γ + Bγ + Cγ² with A = 2f_0/(T + 1), B = Lσ²/2, C = 4L²σ²(1 − δ)/δ²: the
  positive root of 2Cγ³ + Bγ² − A = 0, which for δ = 1 is
  γ = √(A/B) = 2√(f_0/(Lσ²(T + 1))).

  The theorem is for EF-SGD (Alg. 2, :func:`compopt.ef_sgd`) with any
  δ-approximate compressor; EF-SignSGD (Alg. 1, :func:`compopt.ef_signsgd`)
  is scaled sign, δ = min_t φ(p_t) (:func:`sign_density`), 1/d at worst.

  Args:
    T: last iteration, >= 1 (T + 1 steps).
    f0: f(x_0) − f* > 0 (give f0, L and sigma2 together, or none).
    L: smoothness constant, > 0.
    sigma2: σ² > 0, the bound on E‖g‖².
    delta: δ ∈ (0, 1] of the compressor (used with the constants).

  Returns:
    γ > 0.

  Example:
    >>> from compopt import theory
    >>> theory.ef_signsgd_step_size(99)   # 1/√100
    0.1
    >>> theory.ef_signsgd_step_size(3, f0=1.5, L=1.0, sigma2=4.0)  # √(0.75/2)
    0.6123724356957945

  References:
    Karimireddy, Rebjock, Stich, Jaggi. Error feedback fixes SignSGD and other
    gradient compression schemes, ICML 2019, Theorem II and Remark 4.
    https://arxiv.org/abs/1901.09847
  """
  owner = "ef_signsgd_step_size"
  T = checks.check_int(T, "T", owner)
  given = [x is not None for x in (f0, L, sigma2)]
  if not any(given):
    checks.check_delta(delta, owner)
    return 1.0 / math.sqrt(T + 1)
  if not all(given):
    raise ValueError(f"{owner}: give all of `f0`, `L` and `sigma2` (the step that "
                     f"minimizes Thm II's bound) or none (γ = 1/√(T + 1)); got "
                     f"f0={f0!r}, L={L!r}, sigma2={sigma2!r}")
  f0 = _positive(f0, "f0", owner)
  L = _positive(L, "L", owner)
  T, sigma2, delta = _ef_args(T, sigma2, delta, owner)
  A = 2.0 * f0 / (T + 1)
  B = L * sigma2 / 2.0
  C = 4.0 * L * L * sigma2 * (1.0 - delta) / delta ** 2
  hi = math.sqrt(A / B)  # the root with C = 0; 2Cγ³ only lowers it
  if C == 0.0:
    return hi
  lo = 0.0
  for _ in range(200):  # 2Cγ³ + Bγ² − A is increasing on γ > 0
    mid = 0.5 * (lo + hi)
    if (2.0 * C * mid + B) * mid * mid < A:
      lo = mid
    else:
      hi = mid
  return 0.5 * (lo + hi)


def ef_signsgd_convex_bound(gamma: float, T: int, r0: float, sigma2: float,
                            delta: float) -> float:
  """The right-hand side of EF-SGD's convex rate (Karimireddy et al. 2019, Thm III).

  For Alg. 2 with a δ-approximate compressor, a convex (possibly non-smooth)
  f, E‖g‖² ≤ σ² and x̄_T = (1/(T + 1)) Σ_{t≤T} x_t:

  ::

    E f(x̄_T) − f* ≤ r_0/(2γ(T + 1)) + γσ² (1/2 + 2√(1 − δ)/δ),

  r_0 = ‖x_0 − x*‖², for any γ > 0. (The statement writes
  x̄_t = (1/T) Σ_{t=0}^T x_t; the proof averages the T + 1 iterates.)

  Args:
    gamma: step size γ > 0.
    T: last iteration, >= 1.
    r0: ‖x_0 − x*‖² > 0.
    sigma2: σ² > 0.
    delta: δ ∈ (0, 1] of the compressor.

  Returns:
    The bound, a float.

  Example:
    >>> from compopt import theory
    >>> theory.ef_signsgd_convex_bound(1.0, 2, 11.0, 1.0, 0.75)  # 11/6 + 11/6
    3.6666666666666665

  References:
    Karimireddy, Rebjock, Stich, Jaggi. Error feedback fixes SignSGD and other
    gradient compression schemes, ICML 2019, Theorem III.
    https://arxiv.org/abs/1901.09847
  """
  owner = "ef_signsgd_convex_bound"
  gamma = _positive(gamma, "gamma", owner)
  r0 = _positive(r0, "r0", owner)
  T, sigma2, delta = _ef_args(T, sigma2, delta, owner)
  c = 0.5 + 2.0 * math.sqrt(1.0 - delta) / delta
  return r0 / (2.0 * gamma * (T + 1)) + gamma * sigma2 * c


def ef_signsgd_convex_step_size(T: int, r0: float, sigma2: float,
                                delta: float) -> float:
  """EF-SignSGD's step size for Karimireddy et al. 2019, Thm III (convex).

  The γ that minimizes Thm III's bound (:func:`ef_signsgd_convex_bound`),
  r_0/(2γ(T + 1)) + γσ²c with c = 1/2 + 2√(1 − δ)/δ:

  ::

    γ = √(r_0 / (2(T + 1)σ²c)),

  which makes the bound √(r_0) σ √(1 + 4√(1 − δ)/δ) / √(T + 1). Remark 6
  states this rate with a further factor 1/2 (and the SGD rate, δ = 1,
  likewise); minimizing the theorem's bound as stated does not give it.

  Args:
    T: last iteration, >= 1 (T + 1 steps).
    r0: ‖x_0 − x*‖² > 0.
    sigma2: σ² > 0, the bound on E‖g‖².
    delta: δ ∈ (0, 1] of the compressor (scaled sign: :func:`sign_density`).

  Returns:
    γ > 0.

  Example:
    >>> from compopt import theory
    >>> theory.ef_signsgd_convex_step_size(2, 11.0, 1.0, 0.75)  # c = 11/6
    1.0

  References:
    Karimireddy, Rebjock, Stich, Jaggi. Error feedback fixes SignSGD and other
    gradient compression schemes, ICML 2019, Theorem III and Remark 6.
    https://arxiv.org/abs/1901.09847
  """
  owner = "ef_signsgd_convex_step_size"
  r0 = _positive(r0, "r0", owner)
  T, sigma2, delta = _ef_args(T, sigma2, delta, owner)
  c = 0.5 + 2.0 * math.sqrt(1.0 - delta) / delta
  return math.sqrt(r0 / (2.0 * (T + 1) * sigma2 * c))
