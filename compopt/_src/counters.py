"""Exact 64-bit counters of the bits each worker sends and receives.

JAX runs without 64-bit integer types by default, so a counter is a pair of
uint32 words ``[hi, lo]`` that methods keep in their state (:class:`CommBits`)
and add to with the carry. :func:`to_int` reads a counter out as Python ints
and :func:`comm_bits` finds and adds up every counter of an optax state.
"""

from __future__ import annotations

import collections.abc
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

_MASK32 = (1 << 32) - 1


class CommBits(NamedTuple):
  """Exact 64-bit counters of the bits one worker moved.

  Each field is a uint32[2] array ``[hi, lo]`` (JAX runs without 64-bit types
  by default), read out as Python ints by :func:`comm_bits`.

  * ``uplink``: the bits this worker put on the wire, as the collective's
    algorithm sends them (a ring all-gather forwards the others' payloads:
    (n − 1)·P per worker; a ring all-reduce 2(n − 1)/n of the buffer);
  * ``downlink``: the bits it received (the same for these algorithms);
  * ``payload``: the bits of the worker's own compressed messages C(x_i),
    however they travel: what the papers count as a worker's uplink.
  """
  uplink: jax.Array
  downlink: jax.Array
  payload: jax.Array


class Bits(NamedTuple):
  """Bits one worker sent on the wire (uplink), received (downlink) and
  originated as compressed messages (payload), as Python ints (lists of ints,
  one per worker, for states stacked on a worker axis)."""
  uplink: Any
  downlink: Any
  payload: Any


def const64(value: int) -> jax.Array:
  """A Python int in [0, 2**64) as a uint32[2] ``[hi, lo]`` pair."""
  value = int(value)
  if not 0 <= value < 2**64:
    raise OverflowError(f"bit count {value} does not fit in 64 bits")
  return jnp.array([value >> 32, value & _MASK32], jnp.uint32)


def zero_bits() -> CommBits:
  return CommBits(const64(0), const64(0), const64(0))


def add64(a: jax.Array, b: jax.Array) -> jax.Array:
  """(a + b) mod 2**64 on ``[hi, lo]`` uint32 pairs, with the carry."""
  lo = a[1] + b[1]
  carry = (lo < a[1]).astype(jnp.uint32)
  return jnp.stack([a[0] + b[0] + carry, lo])


def mul64(count: jax.Array, value: int) -> jax.Array:
  """count · value as a ``[hi, lo]`` pair, exactly, for a traced integer
  0 <= count < 2**16 and a static Python int value < 2**64."""
  c = jnp.asarray(count).astype(jnp.uint32)
  total = jnp.zeros((2,), jnp.uint32)
  for limb in range(4):  # value = Σ_l v_l 2^(16 l), v_l < 2^16, c·v_l < 2^32
    v = (int(value) >> (16 * limb)) & 0xFFFF
    if v == 0:
      continue
    p = c * jnp.uint32(v)
    shift = 16 * limb
    if shift == 0:
      part = jnp.stack([jnp.uint32(0), p])
    elif shift == 16:
      part = jnp.stack([p >> 16, p << 16])
    elif shift == 32:
      part = jnp.stack([p, jnp.uint32(0)])
    else:
      part = jnp.stack([p << 16, jnp.uint32(0)])
    total = add64(total, part)
  return total


def add_bits(bits: CommBits, sent: CommBits) -> CommBits:
  return CommBits(*(add64(a, b) for a, b in zip(bits, sent)))


def _local_rows(x) -> np.ndarray:
  """The part of ``x`` this process holds: the whole array when it is fully
  addressable, else the rows (leading axis) of its addressable shards, in
  global order (a state stacked on a worker axis spread over processes)."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  rows = {}
  for shard in x.addressable_shards:
    index = shard.index[0] if x.ndim else slice(None)
    start = index.start or 0
    for offset, row in enumerate(np.asarray(shard.data)):
      rows[start + offset] = row
  if any(idx != slice(None) for shard in x.addressable_shards for idx in shard.index[1:]):
    raise ValueError("comm_bits: a counter split along an axis other than the worker "
                     f"axis (the first) cannot be read; got sharding {x.sharding}")
  return np.stack([rows[i] for i in sorted(rows)])


def to_int(pair) -> Any:
  """A ``[hi, lo]`` counter as a Python int; counters stacked on leading axes
  (one per worker) as a flat list of ints. For a stacked counter that spans
  several processes, only this process's workers are read."""
  pair = _local_rows(pair).astype(np.uint64)
  values = (pair[..., 0] << np.uint64(32)) | pair[..., 1]
  if values.ndim == 0:
    return int(values)
  return [int(v) for v in values.reshape(-1)]


def unwrap(value):
  """The array inside a Flax NNX ``Variable`` (``OptArray``, ``OptVariable``),
  or ``value`` itself."""
  get = getattr(value, "get_value", None)
  if callable(get) and not hasattr(value, "shape"):
    return get()
  return value


def _find_in_mappings(node, cls: type, out: list) -> None:
  """The ``cls`` nodes of a tree of mappings, such as a Flax ``nnx.State``,
  which stores a NamedTuple state as a mapping from its field names (fields
  that are None are left out)."""
  if isinstance(node, cls):
    out.append(node)
    return
  if isinstance(node, collections.abc.Mapping):
    keys = set(node.keys())
    if keys and keys <= set(cls._fields) and len(keys) >= min(2, len(cls._fields)):
      out.append(cls(**{f: unwrap(node[f]) if f in node else None for f in cls._fields}))
      return
    children = node.values()
  elif isinstance(node, (tuple, list)):
    children = node
  else:
    return
  for child in children:
    _find_in_mappings(child, cls, out)


def find(state, cls: type) -> list:
  """Every node of type ``cls`` (a NamedTuple state) anywhere in ``state``,
  inside ``optax.chain``, ``optax.MultiSteps``, ``optax.inject_hyperparams``
  and the like, and in a Flax ``nnx.State`` (``nnx.state(optimizer)``), where
  it is a mapping of its field names."""
  found = optax.tree_utils.tree_get_all_with_path(
      state, cls.__name__, filtering=lambda _, value: isinstance(value, cls))
  if found:
    return [value for _, value in found]
  out: list = []
  _find_in_mappings(state, cls, out)
  return out


def _add64_last(a: jax.Array, b: jax.Array) -> jax.Array:
  """:func:`add64` on counters whose last axis is ``[hi, lo]`` (stacked ones too)."""
  lo = a[..., 1] + b[..., 1]
  carry = (lo < a[..., 1]).astype(jnp.uint32)
  return jnp.stack([a[..., 0] + b[..., 0] + carry, lo], axis=-1)


def sub64(a: jax.Array, b: jax.Array) -> jax.Array:
  """(a − b) mod 2**64 on counters whose last axis is ``[hi, lo]``: the bits
  moved between two readings of :func:`comm_bits_array`."""
  lo = a[..., 1] - b[..., 1]
  borrow = (a[..., 1] < b[..., 1]).astype(jnp.uint32)
  return jnp.stack([a[..., 0] - b[..., 0] - borrow, lo], axis=-1)


def comm_bits_array(state: Any) -> CommBits:
  """:func:`comm_bits` for use inside ``jax.jit``: the sum of every
  :class:`CommBits` counter in ``state`` as exact uint32 ``[hi, lo]`` pairs
  (leading worker axes kept), without leaving the device.

  Use :func:`bits_as_float` for a step metric, or :func:`to_int` on the
  result outside the jitted function for exact Python ints.

  Example:
    >>> import compopt, jax, jax.numpy as jnp
    >>> opt = compopt.dcsgd(0.1, compressor=compopt.compressors.top_k(1))
    >>> state = opt.init({"w": jnp.zeros(4)})
    >>> jax.jit(compopt.comm_bits_array)(state).payload.tolist()
    [0, 0]
  """
  counters = find(state, CommBits)
  if not counters:
    raise ValueError(
        "comm_bits_array: found no CommBits counter in `state`; pass the state of a "
        "compopt method (or an optax state that contains one)")
  total = counters[0]
  for c in counters[1:]:
    total = CommBits(*(_add64_last(a, b) for a, b in zip(total, c)))
  return total


def bits_as_float(pair: jax.Array) -> jax.Array:
  """A ``[hi, lo]`` counter (last axis) as float32: hi·2³² + lo, exact up to
  2²⁴ bits and to float32's 24-bit precision beyond; for metrics and logs."""
  pair = jnp.asarray(pair)
  return pair[..., 0].astype(jnp.float32) * jnp.float32(2.0**32) + pair[..., 1].astype(
      jnp.float32)


def comm_bits(state: Any) -> Bits:
  """Total bits sent, received and originated, read from anywhere in an optax
  state.

  Finds every :class:`CommBits` counter in ``state`` (also inside
  ``optax.chain``, ``optax.MultiSteps``, ``optax.inject_hyperparams``) and
  adds them up exactly, as Python ints. ``uplink`` and ``downlink`` are what
  the collectives' algorithms move per worker (a ring all-gather of P-bit
  payloads sends and receives (n − 1)·P per worker), so they match what a
  network interface counts; ``payload`` is the size of the worker's own
  compressed messages, the papers' per-worker count.

  No collective is run: on several processes (``jax.distributed``) each
  process reads the workers whose shards it holds, so the lists hold this
  process's workers only, in worker order. Add them up across processes if a
  global total is wanted (e.g. with
  ``jax.experimental.multihost_utils.process_allgather``).

  Args:
    state: an optimizer state of one worker, or states stacked on a leading
      worker axis (as used with ``jax.vmap``, ``jax.pmap`` or ``shard_map``).

  Returns:
    ``Bits(uplink, downlink, payload)``: ints for one worker; lists of ints
    (one per worker) for stacked states.

  Example:
    >>> import compopt, jax.numpy as jnp
    >>> opt = compopt.dcsgd(0.1, compressor=compopt.compressors.top_k(1))
    >>> state = opt.init({"w": jnp.zeros(4)})
    >>> compopt.comm_bits(state)
    Bits(uplink=0, downlink=0, payload=0)
  """
  counters = find(state, CommBits)
  if not counters:
    raise ValueError(
        "comm_bits: found no CommBits counter in `state`; pass the state of a "
        "compopt method (or an optax state that contains one)")
  fields = [[to_int(getattr(c, f)) for c in counters] for f in CommBits._fields]
  if isinstance(fields[0][0], list):
    return Bits(*([sum(v) for v in zip(*values)] for values in fields))
  return Bits(*(sum(values) for values in fields))
