"""What the sockets benchmark runs: the model, the data, the methods and
their exchange schemes (shared by the worker processes and the accuracy runs).

The model is a plain MLP on MNIST with softmax cross-entropy, written in
``jax.numpy`` so that the compute part of a step is the same for every
method. Each worker reads its own iid shard of the training set (worker i:
the examples i, i + P, i + 2P, ...); the batch of step t is a pure function
of (seed, worker, t), so a run over P processes and a run of P simulated
workers in one process see the same batches.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import compopt
from compopt import compressors as C
from compopt import exchange as X

AXIS = "data"

#: MLP widths: ``full`` 784-2048-2048-10 (5.8M parameters, 23 MB of float32
#: gradient: the all-reduce dominates a step on a 1 Gbit/s link);
#: ``quick`` 784-256-10 (0.2M) for the test.
SIZES = {"full": (784, 2048, 2048, 10), "quick": (784, 256, 10)}


def init_mlp(seed: int, sizes) -> dict:
  """He-normal weights, zero biases."""
  keys = jax.random.split(jax.random.PRNGKey(seed), len(sizes) - 1)
  params = {}
  for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:])):
    params[f"w{i}"] = jax.random.normal(k, (a, b), jnp.float32) * np.sqrt(2.0 / a)
    params[f"b{i}"] = jnp.zeros((b,), jnp.float32)
  return params


def logits(params, x):
  layers = len(params) // 2
  h = x
  for i in range(layers):
    h = h @ params[f"w{i}"] + params[f"b{i}"]
    if i < layers - 1:
      h = jax.nn.relu(h)
  return h


def loss_fn(params, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits(params, x), y).mean()


def num_params(sizes) -> int:
  return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


# ------------------------------------------------------------------------ data


@dataclasses.dataclass(frozen=True)
class Data:
  train_x: np.ndarray  # float32 (N, 784), normalized
  train_y: np.ndarray  # int32 (N,)
  test_x: np.ndarray
  test_y: np.ndarray


def load_data(test_size: int) -> Data:
  """MNIST (the examples' embedded copy), flattened and normalized; the first
  ``test_size`` test images."""
  from examples import input_pipeline  # pylint: disable=import-outside-toplevel
  ds = input_pipeline.load_embedded_mnist()

  def prep(images):
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    return (x - np.float32(ds.mean[0])) / np.float32(ds.std[0])

  return Data(prep(ds.train_images), ds.train_labels.astype(np.int32),
              prep(ds.test_images[:test_size]), ds.test_labels[:test_size].astype(np.int32))


def batch_indices(num_train: int, workers: int, worker: int, step: int, batch: int,
                  seed: int = 0) -> np.ndarray:
  """Indices of worker ``worker``'s batch at ``step``: its shard is
  worker, worker + P, ...; the batch a pure function of (seed, worker, step)."""
  shard = np.arange(worker, num_train, workers)
  rng = np.random.default_rng([seed, worker, step])
  return shard[rng.integers(0, len(shard), batch)]


# --------------------------------------------------------------------- methods


@dataclasses.dataclass(frozen=True)
class Method:
  label: str
  make: Callable  # (scheme) -> optax.GradientTransformation over AXIS; None: dense
  compressor: C.Compressor | None
  schemes: tuple  # the fixed schemes to time, besides "auto"


def _dense_baseline():
  return optax.sgd(0.1, momentum=0.9)


#: The methods compared, each with the schemes it is timed under. ``dense``
#: is what a user has without compopt: ``lax.pmean`` of the gradients, then
#: ``optax.sgd(0.1, momentum=0.9)``. Step sizes: 0.1 with heavy ball 0.9 where
#: the method has momentum (P-SGD, DCSGD), 0.3 without (of 0.1, 0.3, 0.5, 1.0
#: tried on EF-SignSGD over 100 steps, 0.3 came closest to the baseline; 1.0
#: diverged), 1e-3 for COMP-AMS (Adam-like).
METHODS = {
    "dense": Method("lax.pmean + optax.sgd", None, None, ()),
    "psgd": Method("compopt.psgd", lambda s: compopt.psgd(
        0.1, momentum=0.9, axis_name=AXIS), C.identity(), ()),
    "dcsgd_natural": Method("dcsgd natural", lambda s: compopt.dcsgd(
        0.1, compressor=C.natural(), momentum=0.9, axis_name=AXIS, scheme=s),
        C.natural(), ("allgather", "allreduce", "two_phase")),
    "dcsgd_induced": Method("dcsgd induced(top-1%, Wangni-1%)", lambda s: compopt.dcsgd(
        0.1, compressor=C.induced(C.top_k(ratio=0.01), C.rand_k_wangni(ratio=0.01)),
        momentum=0.9, axis_name=AXIS, scheme=s),
        C.induced(C.top_k(ratio=0.01), C.rand_k_wangni(ratio=0.01)),
        ("allgather", "allreduce")),
    "ef_topk": Method("ef_sgd top-1%", lambda s: compopt.ef_sgd(
        0.3, compressor=C.top_k(ratio=0.01), axis_name=AXIS, scheme=s),
        C.top_k(ratio=0.01), ("allgather", "allreduce", "two_phase")),
    "ef_blocktopk": Method("ef_sgd block top-1%", lambda s: compopt.ef_sgd(
        0.3, compressor=C.top_k(ratio=0.01, block_size=256), axis_name=AXIS, scheme=s),
        C.top_k(ratio=0.01, block_size=256), ("allgather", "allreduce", "two_phase")),
    "ef_signsgd": Method("ef_signsgd", lambda s: compopt.ef_signsgd(
        0.3, axis_name=AXIS, scheme=s, zeros="plus"),  # the 1-bit wire of C.scaled_sign()
        C.scaled_sign(), ("allgather", "allreduce", "two_phase", "two_phase_sign")),
    "comp_ams": Method("comp_ams block_sign", lambda s: compopt.comp_ams(
        1e-3, compressor=C.block_sign(4096), axis_name=AXIS, scheme=s),
        C.block_sign(4096), ("allgather", "allreduce", "two_phase")),
    "diana": Method("diana natural", lambda s: compopt.diana(
        0.3, compressor=C.natural(), axis_name=AXIS, scheme=s),
        C.natural(), ("allgather", "allreduce", "two_phase")),
    "neolithic": Method("neolithic top-5%, R=2", lambda s: compopt.neolithic(
        0.3, compressor=C.top_k(ratio=0.05), rounds=2, axis_name=AXIS, scheme=s),
        C.top_k(ratio=0.05), ("allgather", "allreduce")),
}

#: ``--quick``: the baseline and EF-SignSGD under two fixed schemes and auto.
QUICK_METHODS = ("dense", "ef_signsgd")
QUICK_SCHEMES = ("allgather", "two_phase_sign")


def make_scheme(name: str, network: X.Network | None = None):
  if name == "auto":
    return X.auto(network)
  if name == "two_phase_sign":  # bidirectional: the owners re-compress, with EF
    return X.two_phase(C.scaled_sign())
  return {"allgather": X.allgather, "allreduce": X.allreduce,
          "two_phase": X.two_phase}[name]()


def variants(methods, schemes=None) -> list[tuple[str, str]]:
  """(method, scheme) pairs to time: every fixed scheme (of ``schemes`` if
  given) and auto; the dense baselines once (scheme "")."""
  out = []
  for m in methods:
    method = METHODS[m]
    if method.make is None or not method.schemes:
      out.append((m, ""))
    else:
      fixed = tuple(s for s in method.schemes if schemes is None or s in schemes)
      out += [(m, s) for s in fixed + ("auto",)]
  return out


def numerics(method: str, scheme: str) -> str:
  """Which variants give the same iterates: allgather, allreduce and auto
  (and the dense baselines' single variant) move the same mean; two_phase
  compresses chunk-wise, and with a server compressor a second time."""
  return f"{method}/{scheme}" if scheme.startswith("two_phase") else method


def make_tx(method: str, scheme: str, network: X.Network | None = None):
  m = METHODS[method]
  if m.make is None:
    return _dense_baseline()
  return m.make(make_scheme(scheme, network) if scheme else None)
