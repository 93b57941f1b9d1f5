"""Real MNIST and the 784-512-10 MLP shared by the two real-data reproductions
(Horváth & Richtárik 2021 §5.2–5.4 and Li & Li 2022 §5.1–5.2).

The data are the full MNIST (60k train / 10k test) from
``examples.input_pipeline.load_embedded_mnist`` (offline; never random data),
normalised with MNIST's mean and std. The training set is permuted once
(seed 0) and split into ``n`` equal contiguous shards, one per worker; each
worker draws its batch uniformly (with replacement) from its shard with the
per-(seed, step, worker) key that ``common.simulate`` hands to the gradient
function. The whole training set travels as ``simulate``'s ``aux`` argument
(an input of the compiled loop, not a baked-in constant).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

HIDDEN = 512
N_EVAL_TRAIN = 10_000   # fixed training subset on which "training loss" is measured
MEAN, STD = 0.1307, 0.3081  # MNIST statistics (as in examples.input_pipeline)


@functools.lru_cache(maxsize=1)
def load():
  """(x_train, y_train, x_test, y_test): uint8 (N, 784) / int32, train permuted once."""
  from examples.input_pipeline import load_embedded_mnist  # pylint: disable=import-outside-toplevel
  ds = load_embedded_mnist()

  perm = np.random.default_rng(0).permutation(len(ds.train_labels))
  flat = lambda x: x.reshape(len(x), -1)
  return (flat(ds.train_images)[perm], ds.train_labels[perm].astype(np.int32),
          flat(ds.test_images), ds.test_labels.astype(np.int32))


def normalise(x_uint8):
  """uint8 pixels -> float32 inputs with MNIST's mean and std."""
  return (x_uint8.astype(jnp.float32) / 255.0 - MEAN) / STD


def init(key, hidden: int = HIDDEN):
  """He-initialised 784-hidden-10 ReLU MLP as a dict pytree."""
  k1, k2 = jax.random.split(key)
  return {"w1": jax.random.normal(k1, (784, hidden)) * np.sqrt(2 / 784),
          "b1": jnp.zeros(hidden),
          "w2": jax.random.normal(k2, (hidden, 10)) * np.sqrt(1 / hidden),
          "b2": jnp.zeros(10)}


def logits(p, x):
  return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def loss(p, x, y):
  lp = jax.nn.log_softmax(logits(p, x))
  return -jnp.mean(jnp.take_along_axis(lp, y[:, None], 1))


def num_params(hidden: int = HIDDEN) -> int:
  return 784 * hidden + hidden + hidden * 10 + 10


def make_grad_fn(n: int, batch: int, n_train: int):
  """grad_fn(params, key, worker, step, aux) for ``common.simulate``: worker i
  samples ``batch`` images from its shard [i·m, (i+1)·m), m = n_train // n."""
  m = n_train // n

  def grad_fn(p, key, i, t, a):
    idx = i * m + jax.random.randint(key, (batch,), 0, m)
    return jax.grad(loss)(p, normalise(a["x"][idx]), a["y"][idx])
  return grad_fn


def aux_data(num_seeds: int):
  """The training set, repeated along simulate's per-seed axis."""
  xtr, ytr, _, _ = load()
  return {"x": jnp.broadcast_to(jnp.asarray(xtr), (num_seeds,) + xtr.shape),
          "y": jnp.broadcast_to(jnp.asarray(ytr), (num_seeds,) + ytr.shape)}


def make_eval_fn(n_train_eval: int = N_EVAL_TRAIN, n_test: int | None = None):
  """eval_fn for ``common.simulate``: training loss on a fixed training subset
  and test loss/accuracy, for every seed (params with a leading seed axis)."""
  xtr, ytr, xte, yte = load()
  sub = np.random.default_rng(1).choice(len(ytr), n_train_eval, replace=False)
  xs, ys = normalise(jnp.asarray(xtr[sub])), jnp.asarray(ytr[sub])
  n_test = n_test or len(yte)
  xt, yt = normalise(jnp.asarray(xte[:n_test])), jnp.asarray(yte[:n_test])

  @jax.jit
  def ev(p, xs, ys, xt, yt):
    def one(p):
      lt = logits(p, xt)
      lpt = jax.nn.log_softmax(lt)
      return {"train_loss": loss(p, xs, ys),
              "test_loss": -jnp.mean(jnp.take_along_axis(lpt, yt[:, None], 1)),
              "test_acc": jnp.mean(jnp.argmax(lt, -1) == yt)}
    return jax.vmap(one)(p)

  def eval_fn(params):
    out = ev(params, xs, ys, xt, yt)
    return {k: np.asarray(v) for k, v in out.items()}
  return eval_fn


def series(res, key: str):
  """(seeds, chunks + 1) array of an eval quantity from a simulate result."""
  return np.stack([e[key] for e in res["evals"]], 1)
