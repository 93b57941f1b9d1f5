"""Test accuracy against steps, for the sockets benchmark.

The iterates of a method do not depend on how fast the link is, only on its
numbers: so the accuracy curve of each (method, numerics) is computed once,
with the P workers simulated in one process (``jax.vmap`` over the worker
axis: the same batches, keys and payloads as P processes, bit for bit for the
payload all-gathers, up to the order of a float32 sum for all-reduces), and
the benchmark puts it on the wall-clock axis of each cap with the step time
measured over sockets under that cap.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import compopt
from benchmarks.sockets import runs


def curve(method: str, scheme: str, *, data: runs.Data, sizes, workers: int, batch: int,
          max_steps: int, eval_every: int, target: float | None = None, seed: int = 0,
          chunk: int = 0) -> dict:
  """Test accuracy of worker 0's params every ``eval_every`` steps, up to
  ``max_steps`` or until it reaches ``target``.

  Returns ``{"steps": [...], "accuracy": [...], "seconds": s}``; step 0 is the
  initial accuracy.
  """
  n = workers
  params0 = runs.init_mlp(seed, sizes)
  tx = runs.make_tx(method, scheme)
  dense = runs.METHODS[method].make is None

  def step(p, s, x, y):
    g = jax.grad(runs.loss_fn)(p, x, y)
    if dense:
      g = lax.pmean(g, runs.AXIS)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  def many(p, s, xs, ys):
    def body(carry, xy):
      return step(*carry, *xy), None
    return lax.scan(body, (p, s), (xs, ys))[0]

  run = jax.jit(jax.vmap(many, axis_name=runs.AXIS), donate_argnums=(0, 1))
  accuracy = jax.jit(lambda p: jnp.mean(
      (jnp.argmax(runs.logits(p, data.test_x), -1) == data.test_y).astype(jnp.float32)))
  params = compopt.parallel.stack(params0, n)
  state = compopt.parallel.stack(tx.init(params0), n)
  steps, accs = [0], [float(accuracy(params0))]
  t0 = time.time()
  t = 0
  chunk = chunk or eval_every
  while t < max_steps:
    k = min(chunk, max_steps - t)
    idx = np.stack([np.stack([runs.batch_indices(len(data.train_y), n, i, t + j, batch, seed)
                              for j in range(k)]) for i in range(n)])  # (n, k, B)
    params, state = run(params, state, data.train_x[idx], data.train_y[idx])
    t += k
    if t % eval_every == 0 or t == max_steps:
      acc = float(accuracy(jax.tree.map(lambda a: a[0], params)))
      steps.append(t)
      accs.append(acc)
      if not np.isfinite(acc) or (target is not None and acc >= target):
        break
  return {"steps": steps, "accuracy": accs, "seconds": time.time() - t0}


def steps_to(curve_: dict, target: float) -> int | None:
  """The first evaluated step whose accuracy reaches ``target`` (None: never)."""
  for s, a in zip(curve_["steps"], curve_["accuracy"]):
    if a >= target:
      return s
  return None
