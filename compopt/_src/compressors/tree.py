"""Constants of a layer-wise compressor on a whole pytree.

A compressor acts on each leaf on its own, so its constants on a tree follow
from the leaves': the bits add up, ω is the largest leaf ω and δ the smallest
leaf δ.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax

from compopt._src.compressors import base


def _constant(compressor: base.Compressor, tree, fn: Callable, combine) -> float | None:
  shapes = [l.shape for l in jax.tree.leaves(tree) if math.prod(l.shape) > 0]
  values = [fn(compressor, s) for s in shapes]
  if not values or any(v is None for v in values):
    return None
  return combine(values)


def tree_omega(compressor: base.Compressor, tree: Any) -> float | None:
  """ω of the layer-wise compressor on a whole tree: the largest leaf ω.

  E‖C(x) − x‖² = Σ_l E‖C(x_l) − x_l‖² ≤ max_l ω_l · ‖x‖².
  """
  return _constant(compressor, tree, lambda c, s: c.omega(s), max)


def tree_delta(compressor: base.Compressor, tree: Any) -> float | None:
  """δ of the layer-wise compressor on a whole tree: the smallest leaf δ."""
  return _constant(compressor, tree, lambda c, s: c.delta(s), min)


def tree_wire_bits(compressor: base.Compressor, tree: Any) -> int:
  """Exact bits sent for a whole tree (arrays or ``jax.ShapeDtypeStruct`` leaves)."""
  return sum(compressor.wire_bits(l.shape, l.dtype) for l in jax.tree.leaves(tree))
