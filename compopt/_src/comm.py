"""The communication layer: every exchange between workers goes through here.

Workers are the slots of a named axis (``jax.vmap(..., axis_name=...)``,
``jax.pmap`` or ``jax.shard_map``); ``axis_name=None`` means one worker and no
collective. Methods never call a collective themselves: they call
:func:`compressed_mean`, which

* encodes each worker's tree with the compressor (per-worker randomness:
  ``fold_in(key, lax.axis_index(axis_name))``; compressors whose randomness is
  shared with the receiver, ``decode_needs_key``, use the unfolded key);
* picks the collective that fits the compressor:

  - ``identity``: a dense all-reduce (psum, then divide by n);
  - ``rand_k(shared=True)``: an all-reduce of the values-only payloads (every
    worker kept the same positions), decoded once;
  - everything else, by the method's exchange scheme (:func:`exchange`,
    ``compopt.exchange``): by default the whole payload tree of the step is
    bit-cast to bytes and packed into ONE uint8 buffer, all-gathered once,
    split, bit-cast back, and every worker's payload is decoded (vmap over
    the gathered axis) and averaged. The bytes on the wire are exactly the
    payload's bytes. ``allreduce`` decodes locally and all-reduces the dense
    float32 vector; ``two_phase`` all-to-alls chunk payloads to their owners,
    who average (and may re-compress with their own error feedback) and
    all-gather the chunks;

* applies partial participation (paper 000 §4.2): the sampled set S is drawn
  from a key common to all workers, non-members send zeros, and the aggregate
  is Σ_{i∈S} Δ_i/(n p_i);
* returns the bits each worker sent and received, which methods add to a
  :class:`CommBits` counter in their state (:func:`comm_bits` reads them out).

Bit-accounting convention (per worker, per exchange):

* all-gather: uplink = the worker's buffer bits if it is in S, else 0;
  downlink = the buffer bits of the other members of S.
* all-to-all (two_phase): the n − 1 chunk payloads sent to others up, the
  n − 1 received down (members of S only, with sampling).
* all-reduce (identity, shared rand_k, allreduce): a ring all-reduce over the n workers
  of the axis moves ⌊2(n − 1)·D/n⌋ bits each way for a D-bit buffer. Every
  worker of the axis takes part in the ring (non-members of S contribute
  zeros), so this is counted for every worker.
* ``axis_name=None``: nothing is sent.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from compopt._src import exchange as exchange_lib
from compopt._src import sampling as sampling_lib
from compopt._src.compressors import base as cbase
from compopt._src.compressors import combine as ccombine
from compopt._src.compressors import sparse as csparse

# --------------------------------------------------------------------- counters

_MASK32 = (1 << 32) - 1


class CommBits(NamedTuple):
  """Exact 64-bit counters of the bits one worker sent and received.

  Each field is a uint32[2] array ``[hi, lo]`` (JAX runs without 64-bit types
  by default), read out as Python ints by :func:`comm_bits`.
  """
  uplink: jax.Array
  downlink: jax.Array


def zero_bits() -> CommBits:
  return CommBits(jnp.zeros((2,), jnp.uint32), jnp.zeros((2,), jnp.uint32))


def const64(value: int) -> jax.Array:
  """A Python int in [0, 2**64) as a uint32[2] ``[hi, lo]`` pair."""
  value = int(value)
  if not 0 <= value < 2**64:
    raise OverflowError(f"bit count {value} does not fit in 64 bits")
  return jnp.array([value >> 32, value & _MASK32], jnp.uint32)


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
  return CommBits(add64(bits.uplink, sent.uplink), add64(bits.downlink, sent.downlink))


def _to_int(pair) -> Any:
  pair = np.asarray(pair).astype(np.uint64)
  values = (pair[..., 0] << np.uint64(32)) | pair[..., 1]
  if values.ndim == 0:
    return int(values)
  return [int(v) for v in values.reshape(-1)]


class Bits(NamedTuple):
  """Bits sent (uplink) and received (downlink) by one worker, as Python ints
  (lists of ints, one per worker, for states stacked on a worker axis)."""
  uplink: Any
  downlink: Any


def comm_bits(state) -> Bits:
  """Total bits sent and received, read from anywhere in an optax state.

  Finds every :class:`CommBits` counter in ``state`` (also inside
  ``optax.chain``, ``optax.MultiSteps``, ``optax.inject_hyperparams``) and
  adds them up exactly, as Python ints.

  Args:
    state: an optimizer state of one worker, or states stacked on a leading
      worker axis (as used with ``jax.vmap``, ``jax.pmap`` or ``shard_map``).

  Returns:
    ``Bits(uplink, downlink)``: ints for one worker; lists of ints (one per
    worker) for stacked states.

  Example:
    >>> import compopt, jax.numpy as jnp
    >>> opt = compopt.dcsgd(0.1, compressor=compopt.compressors.top_k(1))
    >>> state = opt.init({"w": jnp.zeros(4)})
    >>> compopt.comm_bits(state)
    Bits(uplink=0, downlink=0)
  """
  counters = [leaf for leaf in jax.tree.leaves(
      state, is_leaf=lambda x: isinstance(x, CommBits)) if isinstance(leaf, CommBits)]
  if not counters:
    raise ValueError(
        "comm_bits: found no CommBits counter in `state`; pass the state of a "
        "compopt method (or an optax state that contains one)")
  up = [_to_int(c.uplink) for c in counters]
  down = [_to_int(c.downlink) for c in counters]
  if isinstance(up[0], list):
    return Bits([sum(v) for v in zip(*up)], [sum(v) for v in zip(*down)])
  return Bits(sum(up), sum(down))


# ------------------------------------------------------------------------ axis


def axis_info(axis_name, owner: str):
  """(n, i): the number of workers (static) and this worker's index."""
  if axis_name is None:
    return 1, jnp.zeros((), jnp.int32)
  try:
    n = lax.axis_size(axis_name)
    i = lax.axis_index(axis_name)
  except NameError as e:
    raise NameError(
        f"{owner}: axis_name={axis_name!r} is not bound. Call the update inside "
        f"jax.vmap(..., axis_name={axis_name!r}), jax.pmap(..., "
        f"axis_name={axis_name!r}) or jax.shard_map over a mesh with an axis "
        f"{axis_name!r} (see compopt.parallel), or pass axis_name=None for a "
        "single worker") from e
  if n >= 2**16:
    raise ValueError(f"{owner}: at most 65535 workers are supported; got {n}")
  return int(n), i


def worker_key(key, axis_name):
  """Per-worker stream: fold_in(key, axis_index)."""
  if axis_name is None:
    return key
  return jax.random.fold_in(key, lax.axis_index(axis_name))


# ---------------------------------------------------------------- byte packing


def _to_bytes(x: jax.Array) -> jax.Array:
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  # itemsize 1: same shape; wider types gain a trailing axis of itemsize bytes
  return lax.bitcast_convert_type(x, jnp.uint8).reshape(-1)


def _from_bytes(buf: jax.Array, shape, dtype) -> jax.Array:
  """Inverse of :func:`_to_bytes` on the last axis of ``buf`` (leading axes kept)."""
  dtype = np.dtype(dtype)
  lead = buf.shape[:-1]
  if dtype == np.bool_:
    return buf.reshape(lead + tuple(shape)) != 0
  if dtype.itemsize == 1:
    return lax.bitcast_convert_type(buf, dtype).reshape(lead + tuple(shape))
  b = buf.reshape(lead + tuple(shape) + (dtype.itemsize,))
  return lax.bitcast_convert_type(b, dtype)


def pack(tree) -> tuple[jax.Array, Any]:
  """All arrays of ``tree`` as one uint8 buffer, and what :func:`unpack` needs."""
  leaves, treedef = jax.tree.flatten(tree)
  specs = [(tuple(l.shape), np.dtype(l.dtype)) for l in leaves]
  if not leaves:
    return jnp.zeros((0,), jnp.uint8), (treedef, specs)
  return jnp.concatenate([_to_bytes(l) for l in leaves]), (treedef, specs)


def unpack(buf: jax.Array, spec) -> Any:
  """Inverse of :func:`pack`; ``buf`` may have leading axes (e.g. gathered)."""
  treedef, specs = spec
  out, offset = [], 0
  for shape, dtype in specs:
    nbytes = math.prod(shape) * dtype.itemsize
    out.append(_from_bytes(buf[..., offset:offset + nbytes], shape, dtype))
    offset += nbytes
  return treedef.unflatten(out)


def _psum_packed(arrays: list, axis_name) -> list:
  """psum of a list of arrays as ONE (variadic) all-reduce.

  No concatenation into a flat buffer: that cost two copies of the whole
  tree per step (2.5x the dense step on a CPU), while XLA takes the list as
  one all-reduce op with several operands.
  """
  return list(lax.psum(tuple(arrays), axis_name))


def pmean_packed(tree, axis_name):
  """Mean over the axis of a tree of (small) arrays, in one all-reduce per
  dtype. For predicates and scalars a method must agree on."""
  if axis_name is None:
    return tree
  leaves, treedef = jax.tree.flatten(tree)
  n = lax.axis_size(axis_name)
  summed = _psum_packed([jnp.asarray(l) for l in leaves], axis_name)
  return treedef.unflatten([s / n for s in summed])


def has_nonfinite(tree) -> jax.Array:
  """Whether any floating leaf of ``tree`` holds an inf or a NaN (a bool scalar,
  this worker's own view; no collective)."""
  flags = [jnp.logical_not(jnp.all(jnp.isfinite(l))) for l in jax.tree.leaves(tree)
           if jnp.issubdtype(jnp.asarray(l).dtype, jnp.inexact) and jnp.size(l)]
  if not flags:
    return jnp.zeros((), jnp.bool_)
  return jnp.any(jnp.stack(flags))


def any_worker(flag, axis_name, *, owner: str = "any_worker") -> jax.Array:
  """Whether ``flag`` is true on any worker of the axis: ONE all-reduce of a
  single int32 (4 bytes), the same answer on every worker.

  For decisions all workers must take together (e.g. skipping a step): reduce
  the predicate first with this, then branch on the result. Not counted in
  :class:`CommBits`, which count payloads.
  """
  flag = jnp.asarray(flag).astype(jnp.int32)
  if axis_name is None:
    return flag > 0
  axis_info(axis_name, owner)  # a clear error when the axis is not bound
  return lax.psum(flag, axis_name) > 0


def _ring_bits(n: int, dense_bits: int) -> int:
  return (2 * (n - 1) * dense_bits) // n


# -------------------------------------------------------------- the exchange


def _is_identity(c) -> bool:
  return isinstance(c, ccombine.Identity)


def _is_shared_rand_k(c) -> bool:
  return isinstance(c, csparse.RandK) and c.shared


class Exchanged(NamedTuple):
  """What :func:`exchange` returns."""
  mean: Any  # Σ_{i∈S} C(x_i)/(n p_i), shaped and typed like the input tree
  own: Any  # this worker's own dense C(x_i) (None unless asked for)
  sent: CommBits  # bits this worker sent / received in this exchange
  server_error: Any  # the owners' residual e_s (two_phase with error feedback)


def init_server_error(scheme, params):
  """The ``server_error`` a method keeps for ``scheme``: float32 zeros shaped
  like ``params`` for ``two_phase`` with a server compressor and error
  feedback (each worker only uses the chunk it owns), else ``()``."""
  if not exchange_lib.needs_server_state(scheme):
    return ()
  return jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)


def exchange(compressor: cbase.Compressor, tree, key, axis_name, *,
             sampling: sampling_lib.Sampling | None = None,
             scheme: exchange_lib.Scheme | None = None, server_error=(),
             owner: str = "compressed_mean", return_own: bool = False) -> Exchanged:
  """Σ_{i∈S} C(x_i)/(n p_i) over the workers of ``axis_name`` (mean_i C(x_i)
  without sampling) by the exchange ``scheme``, and the bits this worker sent
  and received.

  Args:
    compressor: a compopt compressor.
    tree: this worker's pytree x_i (floating arrays).
    key: the step key, identical on every worker (uint32[2]).
    axis_name: the worker axis, or None for one worker.
    sampling: optional partial participation (``compopt.sampling``).
    scheme: a ``compopt.exchange`` scheme (None: all-gather).
    server_error: the method's ``server_error`` (see :func:`init_server_error`).
    owner: the name used in error messages.
    return_own: also return this worker's own dense C(x_i) (error feedback
      needs it), decoded from the payload it sent.
  """
  scheme = exchange_lib.resolve(scheme, owner)
  leaves = jax.tree.leaves(tree)
  special = _is_identity(compressor) or _is_shared_rand_k(compressor)
  if axis_name is not None and not special:
    n = axis_info(axis_name, owner)[0]
    if isinstance(scheme, exchange_lib.Auto):
      payload_bytes = cbase.tree_wire_bits(compressor, tree) / 8
      dense_bytes = 4 * sum(l.size for l in leaves)
      scheme = scheme.choose(payload_bytes, dense_bytes, n)
    if isinstance(scheme, exchange_lib.AllReduce):
      return _allreduce_decoded(compressor, tree, key, axis_name, sampling, owner, return_own)
    if isinstance(scheme, exchange_lib.TwoPhase):
      return _two_phase(compressor, tree, key, axis_name, sampling, scheme,
                        server_error, owner, return_own)
  out = compressed_mean(compressor, tree, key, axis_name, sampling=sampling,
                        owner=owner, return_own=return_own)
  if return_own:
    return Exchanged(out[0], out[1], out[2], server_error)
  return Exchanged(out[0], None, out[1], server_error)


def _weights(sampling, key, n, i, owner):
  """(member, weights, m_members): S from the shared key; weights w_j =
  1/(n p_j) for members, 0 otherwise (1/n without sampling)."""
  if sampling is None:
    return None, jnp.full((n,), 1.0 / n, jnp.float32), None
  mask, probs = sampling.draw(key, n, owner)
  weights = jnp.where(mask, 1.0 / (n * probs), 0.0).astype(jnp.float32)
  return mask[i], weights, jnp.sum(mask.astype(jnp.int32))


def _weighted_sum(decoded, weights):
  """Σ_j w_j d_j over the leading axis; where, not a product: a non-member's
  zero payload may decode to NaN."""
  d = decoded.astype(jnp.float32)
  w = weights.reshape((weights.shape[0],) + (1,) * (d.ndim - 1))
  return jnp.sum(jnp.where(w > 0, d * w, 0), axis=0)


def _allreduce_decoded(compressor, tree, key, axis_name, sampling, owner, return_own):
  """Decode the own payload, then ONE dense float32 all-reduce of w_i·C(x_i)."""
  n, i = axis_info(axis_name, owner)
  compress_key, sample_key = jax.random.split(key)
  leaves, treedef = jax.tree.flatten(tree)
  like = [jax.ShapeDtypeStruct(l.shape, l.dtype) for l in leaves]
  member, weights, _ = _weights(sampling, sample_key, n, i, owner)
  shared = compressor.decode_needs_key
  enc_key = compress_key if shared else worker_key(compress_key, axis_name)
  payload = compressor.encode(enc_key, leaves)
  own = compressor.decode(payload, like, key=enc_key)
  w = weights[i]
  contrib = [jnp.where(w > 0, o.astype(jnp.float32) * w, 0) for o in own]
  summed = _psum_packed(contrib, axis_name)
  dense_bits = sum(l.size for l in leaves) * 32
  ring = const64(_ring_bits(n, dense_bits))
  mean = treedef.unflatten([s.astype(l.dtype) for s, l in zip(summed, leaves)])
  return Exchanged(mean, treedef.unflatten(own) if return_own else None,
                   CommBits(ring, ring), ())


def _flat(leaves, dtype, total):
  if not leaves:
    return jnp.zeros((total,), dtype)
  flat = jnp.concatenate([l.reshape(-1).astype(dtype) for l in leaves])
  return jnp.pad(flat, (0, total - flat.size))


def _unflat(flat, leaves, treedef):
  out, offset = [], 0
  for l in leaves:
    out.append(flat[offset:offset + l.size].reshape(l.shape).astype(l.dtype))
    offset += l.size
  return treedef.unflatten(out)


def _two_phase(compressor, tree, key, axis_name, sampling, scheme, server_error,
               owner, return_own):
  """All-to-all of compressed chunks to their owners, owners average (and
  re-compress with error feedback), all-gather of the chunks."""
  n, me = axis_info(axis_name, owner)
  compress_key, sample_key = jax.random.split(key)
  worker_base, server_base = jax.random.split(compress_key)
  leaves, treedef = jax.tree.flatten(tree)
  size = sum(l.size for l in leaves)
  dtypes = {np.dtype(l.dtype) for l in leaves}
  wire_dtype = dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float32)
  chunk = max(1, -(-size // n))  # c = ⌈D/n⌉, the vector padded to n·c
  rows = _flat(leaves, wire_dtype, n * chunk).reshape(n, chunk)
  row_like = jax.ShapeDtypeStruct((chunk,), wire_dtype)
  member, weights, m_members = _weights(sampling, sample_key, n, me, owner)

  # Phase 1: C(x_i) chunk by chunk; chunk j goes to worker j.
  shared = compressor.decode_needs_key
  base = worker_base if shared else worker_key(worker_base, axis_name)
  chunk_keys = jax.vmap(lambda j: jax.random.fold_in(base, j))(jnp.arange(n))
  payload = jax.vmap(compressor.encode)(chunk_keys, rows)
  spec = pack(jax.tree.map(lambda a: a[0], payload))[1]
  buf = jax.vmap(lambda p: pack(p)[0])(payload)  # (n, B)
  nbytes = int(buf.shape[1])
  if member is not None:
    buf = jnp.where(member, buf, jnp.zeros_like(buf))
  received = lax.all_to_all(buf, axis_name, 0, 0)  # row i: worker i's chunk `me`
  my_key = jax.random.fold_in(worker_base, me) if shared else None
  decoded = jax.vmap(lambda p: compressor.decode(p, row_like, key=my_key))(
      unpack(received, spec))
  m = _weighted_sum(decoded, weights)  # this owner's chunk of the aggregate, f32
  if member is None:
    sent = CommBits(const64((n - 1) * nbytes * 8), const64((n - 1) * nbytes * 8))
  else:
    member_i = member.astype(jnp.int32)
    sent = CommBits(mul64(member_i * (n - 1), nbytes * 8),
                    mul64(m_members - member_i, nbytes * 8))

  # Phase 2: the owners' chunks to everyone, re-compressed or dense.
  server = scheme.server_compressor
  new_error = server_error
  if server is None:
    gathered = lax.all_gather(m, axis_name)  # (n, c) float32
    sbytes = chunk * 4
  else:
    v = m
    if scheme.error_feedback:
      e_flat = _flat(jax.tree.leaves(server_error), jnp.float32, n * chunk)
      v = v + lax.dynamic_slice(e_flat, (me * chunk,), (chunk,))
    v_like = jax.ShapeDtypeStruct((chunk,), jnp.float32)
    s_key = jax.random.fold_in(server_base, me)
    s_payload = server.encode(s_key, v)
    if scheme.error_feedback:
      # e_s ← v − C_s(v) on the owned chunk; zeros elsewhere (disjoint owners).
      residual = v - server.decode(s_payload, v_like, key=s_key).astype(jnp.float32)
      e_flat = lax.dynamic_update_slice(jnp.zeros((n * chunk,), jnp.float32),
                                        residual, (me * chunk,))
      new_error = _unflat(e_flat, jax.tree.leaves(server_error),
                          jax.tree.structure(server_error))
    s_buf, s_spec = pack(s_payload)
    sbytes = int(s_buf.size)
    s_all = unpack(lax.all_gather(s_buf, axis_name), s_spec)
    s_keys = jax.vmap(lambda j: jax.random.fold_in(server_base, j))(jnp.arange(n))
    gathered = jax.vmap(lambda p, k: server.decode(p, v_like, key=k))(s_all, s_keys)
  sent = add_bits(sent, CommBits(const64(sbytes * 8), const64((n - 1) * sbytes * 8)))
  mean = _unflat(gathered.astype(jnp.float32).reshape(-1), leaves, treedef)

  own = None
  if return_own:
    if shared:
      own_dec = jax.vmap(lambda p, k: compressor.decode(p, row_like, key=k))(
          payload, chunk_keys)
    else:
      own_dec = jax.vmap(lambda p: compressor.decode(p, row_like))(payload)
    own = _unflat(own_dec.reshape(-1), leaves, treedef)
  return Exchanged(mean, own, sent, new_error)


def compressed_mean(compressor: cbase.Compressor, tree, key, axis_name, *,
                    sampling: sampling_lib.Sampling | None = None,
                    owner: str = "compressed_mean", return_own: bool = False):
  """Σ_{i∈S} C(x_i)/(n p_i) over the workers of ``axis_name`` (mean_i C(x_i)
  without sampling), and the bits this worker sent and received, by one
  packed all-gather (see :func:`exchange` for the other schemes).

  Args:
    compressor: a compopt compressor.
    tree: this worker's pytree x_i (floating arrays).
    key: the step key, identical on every worker (uint32[2]).
    axis_name: the worker axis, or None for one worker.
    sampling: optional partial participation (``compopt.sampling``).
    owner: the name used in error messages.
    return_own: also return this worker's own dense C(x_i) (error feedback
      needs it), decoded from the payload it sent.

  Returns:
    ``(aggregate, sent)``, or ``(aggregate, own, sent)`` with ``return_own``:
    the aggregate, shaped and typed like ``tree`` (reduced in float32), and a
    :class:`CommBits` increment.
  """
  n, i = axis_info(axis_name, owner)
  compress_key, sample_key = jax.random.split(key)
  leaves, treedef = jax.tree.flatten(tree)
  like = [jax.ShapeDtypeStruct(l.shape, l.dtype) for l in leaves]

  # Partial participation: S from the shared key, so all workers agree.
  member, weights, m_members = _weights(sampling, sample_key, n, i, owner)

  def cast_back(out):
    return treedef.unflatten([o.astype(l.dtype) for o, l in zip(out, leaves)])

  def finish(out, own_leaves, sent):
    if return_own:
      return cast_back(out), cast_back(own_leaves), sent
    return cast_back(out), sent

  # ---------------------------------------------------------- dense all-reduce
  if _is_identity(compressor) or _is_shared_rand_k(compressor):
    if _is_identity(compressor):
      payload = [l for l in leaves]
      own = leaves
    else:  # values only: every worker drew the same positions from the shared key
      payload = compressor.encode(compress_key, leaves)
      own = compressor.decode(payload, like, key=compress_key)
      payload = [p["values"] if p else jnp.zeros((0,), l.dtype)
                 for p, l in zip(payload, leaves)]
    if sampling is not None:  # members send x_i/p_i, others zeros
      scale = weights[i] * n
      payload = [jnp.where(member, (p.astype(jnp.float32) * scale), 0).astype(p.dtype)
                 for p in payload]
    dense_bits = sum(p.size * np.dtype(p.dtype).itemsize * 8 for p in payload)
    if axis_name is None:
      summed, sent = payload, zero_bits()
    else:
      summed = _psum_packed(payload, axis_name)
      ring = const64(_ring_bits(n, dense_bits))
      sent = CommBits(ring, ring)
    if _is_identity(compressor):
      out = [s.astype(jnp.float32) / n for s in summed]
    else:
      full = [{"values": s} if l.size else {} for s, l in zip(summed, leaves)]
      dec = compressor.decode(full, like, key=compress_key)
      out = [d.astype(jnp.float32) / n for d in dec]
    return finish(out, own, sent)

  # ------------------------------------- one packed all-gather of the payload
  shared = compressor.decode_needs_key
  enc_key = compress_key if shared else worker_key(compress_key, axis_name)
  payload = compressor.encode(enc_key, leaves)
  own = compressor.decode(payload, like, key=enc_key) if return_own else None
  buf, spec = pack(payload)
  nbits = int(buf.size) * 8
  if sampling is not None:
    buf = jnp.where(member, buf, jnp.zeros_like(buf))
  if axis_name is None:
    gathered = buf[None]
    sent = zero_bits()
  else:
    gathered = lax.all_gather(buf, axis_name)  # (n, B)
    if sampling is None:
      sent = CommBits(const64(nbits), const64((n - 1) * nbits))
    else:
      member_i = member.astype(jnp.int32)
      sent = CommBits(mul64(member_i, nbits), mul64(m_members - member_i, nbits))
  payloads = unpack(gathered, spec)
  dec_key = compress_key if shared else None
  if jax.tree.leaves(payloads):
    decoded = jax.vmap(lambda p: compressor.decode(p, like, key=dec_key))(payloads)
  else:  # only empty leaves: nothing was sent, and vmap needs an array
    decoded = [jnp.zeros((n,) + l.shape, l.dtype) for l in like]
  out = [_weighted_sum(d, weights) for d in decoded]
  return finish(out, own, sent)


def member_mean(tree, key, axis_name, sampling: sampling_lib.Sampling, *,
                owner: str = "member_mean"):
  """(1/n) Σ_{i∈S} x_i: the members of a sampled set S send x_i uncompressed.

  For updates that only some workers make in a round (Rand-DIANA's shift
  refresh): S is drawn from ``key``, common to all workers, so everyone knows
  who sends; there is no 1/p_i reweighting.

  Args:
    tree: this worker's pytree x_i.
    key: a key identical on every worker.
    axis_name: the worker axis, or None for one worker.
    sampling: how S is drawn (e.g. ``compopt.sampling.independent(p)``).
    owner: the name used in error messages.

  Returns:
    ``(mean, own, sent)``: (1/n) Σ_{i∈S} x_i (float32 leaves), this worker's
    contribution 1[i∈S]·x_i (in x_i's dtype) and a :class:`CommBits` increment.
    Bits: a member sends its D dense bits once and every worker receives the
    D bits of each other member (the physical collective is an all-reduce of
    the zero-padded vectors, which XLA needs for its static shapes).
  """
  n, i = axis_info(axis_name, owner)
  mask, _ = sampling.draw(key, n, owner)
  member = mask[i]
  leaves, treedef = jax.tree.flatten(tree)
  own = [jnp.where(member, l, jnp.zeros_like(l)) for l in leaves]
  dense_bits = sum(l.size * np.dtype(l.dtype).itemsize * 8 for l in leaves)
  if axis_name is None:
    summed, sent = own, CommBits(zero_bits().uplink, zero_bits().downlink)
  else:
    summed = _psum_packed(own, axis_name)
    member_i = member.astype(jnp.int32)
    others = jnp.sum(mask.astype(jnp.int32)) - member_i
    sent = CommBits(mul64(member_i, dense_bits), mul64(others, dense_bits))
  mean = [s.astype(jnp.float32) / n for s in summed]
  return treedef.unflatten(mean), treedef.unflatten(own), sent
