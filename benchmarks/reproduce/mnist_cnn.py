"""The MNIST CNN of Li & Li 2022 (§5.1 and its Appendix B, Fig. 4 left) for the
linear-speedup reproduction (§5.2), on the data of ``mnist_mlp``.

The paper's text fixes the layers: two convolutions, then two fully
connected layers, ReLU activations, dropout 0.5 after the max-pooled
convolutional block. Its Fig. 4, which gives the widths, is not in our copy;
we take those of the standard MNIST CNN that this description matches (and
that ``examples.models.CNN`` has too): 3×3 convolutions with 32 and 64
filters, 2×2 max-pool, FC 128, FC 10, i.e.

  28×28×1 → conv 3×3, 32, ReLU → conv 3×3, 64, ReLU → max-pool 2×2
  → dropout 0.5 → FC 9216 → 128, ReLU → FC 128 → 10,

1,199,882 parameters. The convolutions are unpadded (26×26 and 24×24
outputs, as in the PyTorch MNIST example); ``examples.models.CNN`` pads them
("SAME", a 12544-wide FC), which costs a third more here. The paper does not
say which.

The model is pure JAX (a dict of arrays, like ``mnist_mlp``), not Flax: each
3×3 convolution is a matrix product over its 3×3 patches (the patches are 9
shifted slices, so their gradient is 9 padded additions). Under the
simulation's ``jax.vmap`` over workers every worker holds its own copy of the
kernels, and XLA's CPU convolution then computes the gradient of a batched
kernel about 2-4× slower than these batched matrix products do (measured on
2 CPU cores, 8 workers × 100 images). The function is the same.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.reproduce import mnist_mlp

DROPOUT = 0.5
N_EVAL_TRAIN = 500     # fixed training subset on which "training loss" is measured


def _he(key, shape, fan_in):
  return jax.random.normal(key, shape) * np.sqrt(2 / fan_in)


def init(key):
  """He-initialised CNN as a dict pytree; convolution kernels are stored as
  (3·3·c_in, c_out) matrices, rows in (row, column, channel) order."""
  k1, k2, k3, k4 = jax.random.split(key, 4)
  return {"conv1": {"w": _he(k1, (9, 32), 9), "b": jnp.zeros(32)},
          "conv2": {"w": _he(k2, (9 * 32, 64), 9 * 32), "b": jnp.zeros(64)},
          "fc1": {"w": _he(k3, (12 * 12 * 64, 128), 12 * 12 * 64), "b": jnp.zeros(128)},
          "fc2": {"w": _he(k4, (128, 10), 128) / np.sqrt(2), "b": jnp.zeros(10)}}


def num_params() -> int:
  return sum(l.size for l in jax.tree.leaves(jax.eval_shape(init, jax.random.key(0))))


def _conv3x3(x, w, b, patches: bool):
  """Unpadded 3×3 convolution, stride 1: (B, H, W, C) → (B, H−2, W−2, C_out).

  ``patches=True``: a matrix product over the 3×3 patches (fast gradients
  under the worker vmap); ``False``: ``lax.conv`` (the same values, a faster
  forward pass for evaluation). w's rows in (row, column, channel) order are
  the HWIO kernel flattened.
  """
  if not patches:
    k = w.reshape(3, 3, x.shape[-1], w.shape[-1])
    return jax.lax.conv_general_dilated(x, k, (1, 1), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC")) + b
  h, wd = x.shape[1] - 2, x.shape[2] - 2
  cols = jnp.concatenate([x[:, i:i + h, j:j + wd, :] for i in range(3) for j in range(3)], -1)
  return cols @ w + b


def logits(p, x, key=None, patches: bool = True):
  """x: (B, 784) normalised pixels. With a key, dropout is on (training)."""
  x = x.reshape(-1, 28, 28, 1)
  x = jax.nn.relu(_conv3x3(x, p["conv1"]["w"], p["conv1"]["b"], patches))
  x = jax.nn.relu(_conv3x3(x, p["conv2"]["w"], p["conv2"]["b"], patches))
  b = x.shape[0]
  x = x.reshape(b, 12, 2, 12, 2, 64).max(axis=(2, 4)).reshape(b, -1)   # max-pool 2×2
  if key is not None:
    keep = jax.random.bernoulli(key, 1 - DROPOUT, x.shape)
    x = jnp.where(keep, x / (1 - DROPOUT), 0)
  x = jax.nn.relu(x @ p["fc1"]["w"] + p["fc1"]["b"])
  return x @ p["fc2"]["w"] + p["fc2"]["b"]


def loss(p, x, y, key=None, patches: bool = True):
  lp = jax.nn.log_softmax(logits(p, x, key, patches))
  return -jnp.mean(jnp.take_along_axis(lp, y[:, None], 1))


def make_grad_fn(n: int, batch: int, n_train: int):
  """grad_fn(params, key, worker, step, aux) for ``common.simulate``: worker i
  samples ``batch`` images from its shard of ``mnist_mlp.load()``'s training
  set (as ``mnist_mlp.make_grad_fn``) and draws its own dropout masks."""
  m = n_train // n

  def grad_fn(p, key, i, t, a):
    del t
    k_batch, k_drop = jax.random.split(key)
    idx = i * m + jax.random.randint(k_batch, (batch,), 0, m)
    return jax.grad(loss)(p, mnist_mlp.normalise(a["x"][idx]), a["y"][idx], k_drop)
  return grad_fn


def make_eval_fn(n_train_eval: int = N_EVAL_TRAIN):
  """eval_fn for ``common.simulate``: the training loss (dropout off) on a
  fixed random subset of the training set, for every seed. The seeds run one
  after another (``lax.map``): under ``vmap`` their kernels would form a
  batched kernel, which XLA's CPU convolution computes several times slower."""
  xtr, ytr, _, _ = mnist_mlp.load()
  sub = np.random.default_rng(1).choice(len(ytr), n_train_eval, replace=False)
  xs, ys = mnist_mlp.normalise(jnp.asarray(xtr[sub])), jnp.asarray(ytr[sub])

  @jax.jit
  def ev(params):
    return {"train_loss": jax.lax.map(lambda p: loss(p, xs, ys, patches=False), params)}

  def eval_fn(params):
    return {k: np.asarray(v) for k, v in ev(params).items()}
  return eval_fn
