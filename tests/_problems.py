"""Small distributed test problems with closed-form optima (NumPy, float64),
and a driver that runs a method on n workers simulated with jax.vmap."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import make_regression

AXIS = "workers"


@dataclasses.dataclass(frozen=True)
class Ridge:
  """f(x) = (1/n) Σ_i f_i(x), f_i(x) = (1/(2m))‖A_i x − b_i‖² + (λ/2)‖x‖².

  Worker i has its own rows, drawn by make_regression with its own seed (so
  its own true coefficients): ∇f_i(x*) ≠ 0. Data are stored in float32; x*,
  the ∇f_i(x*) and the constants L_i, μ are computed in float64 from exactly
  those float32 numbers.
  """
  A: np.ndarray  # (n, m, d) float32
  b: np.ndarray  # (n, m) float32
  lam: float

  @property
  def n(self):
    return self.A.shape[0]

  @property
  def m(self):
    return self.A.shape[1]

  @property
  def d(self):
    return self.A.shape[2]

  def hessians(self):
    A = self.A.astype(np.float64)
    return np.einsum("imd,ime->ide", A, A) / self.m + self.lam * np.eye(self.d)

  @property
  def x_star(self):
    A, b = self.A.astype(np.float64), self.b.astype(np.float64)
    rhs = np.einsum("imd,im->d", A, b) / (self.n * self.m)
    return np.linalg.solve(self.hessians().mean(0), rhs)

  def local_grads(self, x):
    """∇f_i(x) for every worker, (n, d) float64."""
    A, b = self.A.astype(np.float64), self.b.astype(np.float64)
    r = np.einsum("imd,d->im", A, x) - b
    return np.einsum("imd,im->id", A, r) / self.m + self.lam * x

  @property
  def L_max(self):
    return float(max(np.linalg.eigvalsh(h).max() for h in self.hessians()))

  @property
  def L(self):
    return float(np.linalg.eigvalsh(self.hessians().mean(0)).max())

  @property
  def mu(self):
    return float(np.linalg.eigvalsh(self.hessians().mean(0)).min())


def ridge(n=10, m=40, d=20, lam=0.5, seed=0) -> Ridge:
  A, b = [], []
  for i in range(n):
    Ai, bi = make_regression(n_samples=m, n_features=d, n_informative=d, noise=1.0,
                             random_state=seed * 1000 + i)
    A.append(Ai)
    b.append(bi / 100.0)  # ‖x*‖ of order 1
  return Ridge(np.asarray(A, np.float32), np.asarray(b, np.float32), lam)


def run_ridge(opt, prob: Ridge, steps: int, x0=None, extra=None):
  """Runs ``steps`` steps of ``opt`` with full local gradients on the n
  workers of ``prob`` (vmap). ``extra``: per-worker arrays (n, d) passed as
  extra keyword arguments of ``update``. Returns (xs, state): worker 0's
  iterates x^1..x^steps as float64 (steps, d) and the final stacked state."""
  x0 = jnp.zeros(prob.d, jnp.float32) if x0 is None else jnp.asarray(x0, jnp.float32)
  extra = {} if extra is None else {k: jnp.asarray(v, jnp.float32) for k, v in extra.items()}
  lam, m = prob.lam, prob.m

  def worker(Ai, bi, ex):
    def body(carry, _):
      x, s = carry
      g = Ai.T @ (Ai @ x - bi) / m + lam * x
      u, s = opt.update(g, s, x, **ex)
      x = x + u
      return (x, s), x

    (_, s), xs = jax.lax.scan(body, (x0, opt.init(x0)), None, length=steps)
    return xs, s

  xs, state = jax.jit(jax.vmap(worker, axis_name=AXIS))(
      jnp.asarray(prob.A), jnp.asarray(prob.b), extra)
  xs = np.asarray(xs)
  # every worker holds the same iterate
  np.testing.assert_array_equal(xs, np.broadcast_to(xs[:1], xs.shape))
  return xs[0].astype(np.float64), state


def relative_errors(xs, x_star, x0=None):
  """‖x^k − x*‖²/‖x⁰ − x*‖² for each row of xs."""
  x0 = np.zeros_like(x_star) if x0 is None else np.asarray(x0, np.float64)
  return ((xs - x_star) ** 2).sum(-1) / ((x0 - x_star) ** 2).sum()


def first_below(errors, level):
  """Iterations (1-based) to first reach errors < level, or None."""
  hit = np.flatnonzero(errors < level)
  return int(hit[0]) + 1 if hit.size else None


def run_workers(opt, x0, grads, *, params_arg=True):
  """Runs one step per row of ``grads`` (steps, n, ...) on n workers (vmap),
  the same gradients whatever the iterate. Returns worker 0's iterates
  (steps, ...) and the list of stacked states after each step."""
  n = grads.shape[1]

  def step(x, s, g):
    u, s = opt.update(g, s, x if params_arg else None)
    return x + u, s

  f = jax.jit(jax.vmap(step, axis_name=AXIS))
  x = jnp.broadcast_to(jnp.asarray(x0), (n,) + np.shape(x0))
  s = jax.vmap(lambda _: opt.init(jnp.asarray(x0)))(jnp.arange(n))
  xs, states = [], []
  for t in range(grads.shape[0]):
    x, s = f(x, s, jnp.asarray(grads[t]))
    xs.append(np.asarray(x[0]))
    states.append(s)
  return np.stack(xs), states
