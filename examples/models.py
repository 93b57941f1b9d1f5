"""Flax linen models of the papers' experiments.

* ``MLP``: 2 fully connected layers, 512 hidden units
  (Horváth & Richtárik 2021, MNIST).
* ``CNN``: 2 conv + 2 FC layers with ReLU, dropout 0.5 after the max-pooled
  conv block (the MNIST CNN of Li & Li 2022).
* ``ResNet18`` (CIFAR variant: 3x3 stem, no max-pool) and ``ResNet20``
  (He et al.'s 3-stage CIFAR ResNet, 16/32/64 channels), for 32x32x3.
* ``VGG11`` with BatchNorm, for 32x32x3.

Every model takes ``train`` and, for BatchNorm, an optional ``axis_name``:
with ``axis_name`` set, batch statistics are averaged over the workers
(synchronised BatchNorm, like ``flax.linen.BatchNorm(axis_name=...)``);
with ``None`` each worker normalises with its own batch and keeps its own
running statistics.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
  num_classes: int = 10
  hidden: int = 512
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(x))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


class CNN(nn.Module):
  num_classes: int = 10
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(nn.Conv(32, (3, 3), dtype=self.dtype)(x))
    x = nn.relu(nn.Conv(64, (3, 3), dtype=self.dtype)(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.Dropout(0.5, deterministic=not train)(x)
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(128, dtype=self.dtype)(x))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


def _norm(train, axis_name, dtype):
  return functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                           epsilon=1e-5, axis_name=axis_name if train else None, dtype=dtype)


class BasicBlock(nn.Module):
  filters: int
  strides: int = 1
  norm: Any = nn.BatchNorm
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    y = conv(self.filters, (3, 3), (self.strides, self.strides))(x)
    y = nn.relu(self.norm()(y))
    y = conv(self.filters, (3, 3))(y)
    y = self.norm(scale_init=nn.initializers.zeros)(y)
    if x.shape != y.shape:
      x = conv(self.filters, (1, 1), (self.strides, self.strides))(x)
      x = self.norm()(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet with basic blocks for 32x32 inputs (CIFAR)."""
  stage_sizes: Sequence[int]
  widths: Sequence[int]
  num_classes: int = 10
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = _norm(train, self.axis_name, self.dtype)
    x = nn.Conv(self.widths[0], (3, 3), use_bias=False, dtype=self.dtype)(x)
    x = nn.relu(norm()(x))
    for i, (blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for j in range(blocks):
        strides = 2 if i > 0 and j == 0 else 1
        x = BasicBlock(width, strides, norm, self.dtype)(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), widths=(64, 128, 256, 512))
ResNet20 = functools.partial(ResNet, stage_sizes=(3, 3, 3), widths=(16, 32, 64))


class VGG(nn.Module):
  """VGG with BatchNorm for 32x32 inputs; 'M' is a 2x2 max-pool."""
  layers: Sequence[Any]
  num_classes: int = 10
  axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = _norm(train, self.axis_name, self.dtype)
    for layer in self.layers:
      if layer == "M":
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      else:
        x = nn.Conv(layer, (3, 3), use_bias=False, dtype=self.dtype)(x)
        x = nn.relu(norm()(x))
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


VGG11 = functools.partial(VGG, layers=(64, "M", 128, "M", 256, 256, "M", 512, 512, "M",
                                       512, 512, "M"))

MODELS = {"mlp": MLP, "cnn": CNN, "resnet18": ResNet18, "resnet20": ResNet20, "vgg11": VGG11}


def create_model(name: str, num_classes: int, axis_name: str | None = None, **kwargs):
  """The model ``name`` (one of MODELS); ``axis_name`` syncs BatchNorm."""
  if name not in MODELS:
    raise ValueError(f"unknown config.model {name!r}; choose one of {sorted(MODELS)}")
  if name in ("resnet18", "resnet20", "vgg11"):
    kwargs["axis_name"] = axis_name
  return MODELS[name](num_classes=num_classes, **kwargs)
