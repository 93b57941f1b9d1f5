"""A Flax NNX model trained data-parallel with a compopt method.

The NNX route: split the model into its graph and its parameters, train the
parameters with :func:`compopt.data_parallel` (replicated params, the batch
split over the workers of a ``"data"`` mesh axis, the compressed exchange in
place of the dense all-reduce), and write them back into the live model with
``nnx.update``::

  python -m examples.nnx_mnist                        # MNIST, every device a worker
  python -m examples.nnx_mnist --dataset=digits --steps=50
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m examples.nnx_mnist

Compared with the same loop over ``nnx.Optimizer(model, optax.sgd(...))``
and ``nnx.value_and_grad``, five lines change: the split, the pure loss, the
``data_parallel`` call, its ``init`` and step, and ``nnx.update``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import compopt
from examples import input_pipeline


class MLP(nnx.Module):
  """784-512-10 (for MNIST) ReLU network."""

  def __init__(self, d_in: int, hidden: int, classes: int, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(d_in, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, classes, rngs=rngs)

  def __call__(self, x):
    return self.out(jax.nn.relu(self.hidden(x.reshape(x.shape[0], -1))))


def train(dataset: str = "mnist", steps: int = 200, batch_per_worker: int = 32,
          learning_rate: float = 0.1, ratio: float = 0.01, seed: int = 0,
          log_every: int = 50) -> dict:
  """Trains the MLP with EF-SGD and top-k; returns the final metrics."""
  data = (input_pipeline.load_digits() if dataset == "digits"
          else input_pipeline.load_embedded_mnist())
  x_train = data.train_images.astype(np.float32) / 255.0
  x_test = data.test_images.astype(np.float32) / 255.0
  d_in = int(np.prod(data.image_shape))
  model = MLP(d_in, 512 if dataset == "mnist" else 64, data.num_classes, rngs=nnx.Rngs(seed))

  n = jax.device_count()
  mesh = jax.make_mesh((n,), ("data",))
  tx = compopt.ef_sgd(learning_rate, compressor=compopt.compressors.top_k(ratio=ratio),
                      axis_name="data")

  graphdef, params, rest = nnx.split(model, nnx.Param, ...)   # the live model's parts

  def loss_fn(params, batch):                                   # one worker's loss
    x, y = batch
    logits = nnx.merge(graphdef, params, rest)(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  dp = compopt.data_parallel(loss_fn, tx, mesh)
  opt_state = dp.init(params)
  rng = np.random.default_rng(seed)
  metrics = {}
  for step in range(1, steps + 1):
    idx = rng.integers(0, len(x_train), n * batch_per_worker)  # a global batch
    params, opt_state, metrics = dp.step(params, opt_state, (x_train[idx], data.train_labels[idx]))
    if step % log_every == 0 or step == steps:
      print(f"step {step:4d}  loss {float(metrics['loss']):.4f}  "
            f"bits/worker/step {float(metrics['payload_bits']):,.0f}", flush=True)
  nnx.update(model, params)                                     # back into the live model
  accuracy = float(jnp.mean(jnp.argmax(model(x_test), -1) == data.test_labels))
  bits = compopt.comm_bits(opt_state)
  dense = 32 * sum(p.size for p in jax.tree.leaves(params))
  print(f"{n} workers, test accuracy {accuracy:.3f}; worker 0 sent "
        f"{bits.payload[0] / steps:,.0f} bits/step ({dense / (bits.payload[0] / steps):.0f}x "
        f"fewer than dense float32)")
  return {"loss": float(metrics["loss"]), "accuracy": accuracy,
          "payload_bits": bits.payload, "workers": n}


def main(argv=None):
  p = argparse.ArgumentParser(prog="python -m examples.nnx_mnist", description=__doc__.split(
      "\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--dataset", choices=("mnist", "digits"), default="mnist",
                 help="embedded MNIST or scikit-learn's 8x8 digits")
  p.add_argument("--steps", type=int, default=200, help="training steps")
  p.add_argument("--batch_per_worker", type=int, default=32, help="examples per worker and step")
  p.add_argument("--learning_rate", type=float, default=0.1, help="EF-SGD's step size")
  p.add_argument("--ratio", type=float, default=0.01, help="top-k's fraction of coordinates")
  p.add_argument("--seed", type=int, default=0, help="model and batch seed")
  args = p.parse_args(argv)
  train(args.dataset, args.steps, args.batch_per_worker, args.learning_rate, args.ratio,
        args.seed)


if __name__ == "__main__":
  main()
