"""Workarounds for two slow fusions of XLA's CPU backend.

XLA fuses what it can, and two of its fusions are slow on a CPU: an
elementwise producer fused into each of several consumers is recomputed for
each (b bit planes reading b-bit codes: 5× the work for QSGD with s = 16),
and a reduction fused with a sibling elementwise pass over the same bfloat16
input runs in a scalar loop (14 ms instead of 1.4 ms on 11M values). The
compressors cut such fusions with :func:`isolated` and :func:`materialize`,
only for arrays large enough for it to pay.

The cuts are conditionals, and they are made only in code compiled for a CPU
(see :func:`per_backend`): on a GPU or TPU a conditional copies its predicate
to the host and stops the fusions those backends want, so there the same
values are computed by the plain code. Other workarounds for XLA's CPU
backend (top_k's two-stage selection) are kept to CPUs the same way.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

#: Arrays smaller than this are computed inline by :func:`isolated` and take
#: the compressors' plain code paths (the fast paths pay only for large ones).
ISOLATE_MIN = 1 << 16


def per_backend(cpu: Callable, default: Callable, *args):
  """``cpu(*args)`` in code compiled for a CPU, ``default(*args)`` elsewhere.

  The two must compute the same values; ``cpu`` holds the workarounds for
  XLA's CPU backend. The choice is made by ``jax.lax.platform_dependent``
  when the computation is lowered, for the platform it is lowered for (not
  the default backend of the process that traces it), so code lowered here
  for a GPU or TPU gets ``default``. Lowered for one platform, the choice is a
  conditional on a constant, which XLA's simplification passes remove before
  fusion (the CPU code compiles to the same HLO as without the choice);
  lowered for several at once (``jax.export``), its index is the platform,
  made a constant when the code is compiled. Either way no predicate reaches
  the host. Both branches are traced.

  Args:
    cpu: the computation for a CPU.
    default: the same computation for every other backend.
    *args: the arguments of both.

  Returns:
    ``cpu(*args)`` or ``default(*args)``, by the platform compiled for.
  """
  return jax.lax.platform_dependent(*args, cpu=cpu, default=default)


def isolated(fn: Callable, *args):
  """``fn(*args)``, compiled as its own XLA computation on a CPU.

  A conditional is a fusion boundary: ``fn`` runs inside one branch, its
  operands are materialized once. The predicate reads the first argument so
  that it cannot be folded at compile time; the other branch (zeros) is never
  taken. Under ``jax.vmap`` with a batched predicate the cond becomes a select
  of both branches: correct, and the zeros branch costs little. On other
  backends (see :func:`per_backend`) this is ``fn(*args)``, fused as XLA likes.
  """
  if jnp.size(jax.tree.leaves(args)[0]) < ISOLATE_MIN:
    return fn(*args)  # small arrays: fusion costs nothing, a cond only compile time

  def probe(*a):
    return jnp.ravel(jax.tree.leaves(a)[0])[:1].astype(jnp.float32).sum()

  def zeros(*a):
    z = probe(*a) * 0  # 0 that varies over a shard_map axis like fn's output
    return jax.tree.map(lambda s: jnp.full(s.shape, z.astype(s.dtype)),
                        jax.eval_shape(fn, *a))

  def cut(*a):
    first = probe(*a)
    keep = jnp.isnan(first) | jnp.logical_not(jnp.isnan(first))
    return jax.lax.cond(keep, fn, zeros, *a)

  return per_backend(cut, fn, *args)


def materialize(x: jax.Array) -> jax.Array:
  """``x`` computed once into memory before its consumers read it, on a CPU
  (see :func:`isolated`); elsewhere ``x`` as it is."""
  return isolated(lambda v: v, x)
