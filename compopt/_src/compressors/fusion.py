"""Workarounds for two slow fusions of XLA's CPU backend.

XLA fuses what it can, and two of its fusions are slow on a CPU: an
elementwise producer fused into each of several consumers is recomputed for
each (b bit planes reading b-bit codes: 5× the work for QSGD with s = 16),
and a reduction fused with a sibling elementwise pass over the same bfloat16
input runs in a scalar loop (14 ms instead of 1.4 ms on 11M values). The
compressors cut such fusions with :func:`isolated` and :func:`materialize`,
only for arrays large enough for it to pay.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

#: Arrays smaller than this are computed inline by :func:`isolated` and take
#: the compressors' plain code paths (the fast paths pay only for large ones).
ISOLATE_MIN = 1 << 16


def isolated(fn: Callable, *args):
  """``fn(*args)``, compiled as its own XLA computation.

  A conditional is a fusion boundary: ``fn`` runs inside one branch, its
  operands are materialized once. The predicate reads the first argument so
  that it cannot be folded at compile time; the other branch (zeros) is never
  taken. Under ``jax.vmap`` with a batched predicate the cond becomes a select
  of both branches: correct, and the zeros branch costs little.
  """
  if jnp.size(jax.tree.leaves(args)[0]) < ISOLATE_MIN:
    return fn(*args)  # small arrays: fusion costs nothing, a cond only compile time

  def probe(*a):
    return jnp.ravel(jax.tree.leaves(a)[0])[:1].astype(jnp.float32).sum()

  def zeros(*a):
    z = probe(*a) * 0  # 0 that varies over a shard_map axis like fn's output
    return jax.tree.map(lambda s: jnp.full(s.shape, z.astype(s.dtype)),
                        jax.eval_shape(fn, *a))

  first = probe(*args)
  keep = jnp.isnan(first) | jnp.logical_not(jnp.isnan(first))
  return jax.lax.cond(keep, fn, zeros, *args)


def materialize(x: jax.Array) -> jax.Array:
  """``x`` computed once into memory before its consumers read it (see
  :func:`isolated`)."""
  return isolated(lambda v: v, x)
