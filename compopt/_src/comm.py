"""The communication layer: every exchange between workers goes through here.

Workers are the slots of a named axis (``jax.vmap(..., axis_name=...)``,
``jax.pmap`` or ``jax.shard_map``); ``axis_name=None`` means one worker and no
collective. Methods never call a collective themselves: they call
:func:`exchange`, which

* encodes each worker's tree with the compressor (per-worker randomness:
  ``fold_in(key, lax.axis_index(axis_name))``; compressors whose randomness is
  shared with the receiver, ``decode_needs_key``, use the unfolded key);
* moves the payloads by the method's exchange scheme (``compopt.exchange``):

  - ``allgather``: the whole payload tree of the step is bit-cast to bytes
    and packed into ONE uint8 buffer, all-gathered once, split, bit-cast
    back, and every worker's payload is decoded (vmap over the gathered
    axis) and averaged. The bytes on the wire are exactly the payload's;
  - ``allreduce``: each worker decodes its own payload and the dense float32
    vectors (float64 for float64 leaves) are all-reduced;
  - ``two_phase``: chunk payloads go to their owners by an all-to-all; each
    owner averages its chunk (and may re-compress it with its own error
    feedback) and the chunks are all-gathered;
  - ``cast`` to float16/bfloat16 (``low_precision_sum``), under every scheme
    but ``two_phase``: ONE all-reduce of the rounded w_i·x_i in that dtype
    (with ``scale``, after an all-reduce max of one int16 exponent per leaf);
  - compressors with a linear, shared payload (``linear_payload``: identity,
    ``rand_k(shared=True)``), under every scheme but ``two_phase``: the
    payloads themselves are all-reduced and decoded once;
  - one compressor per worker (``cper_worker.PerWorker``, a method given a list):
    worker i encodes with its own C_i, chosen by ``lax.switch`` on its axis
    index; all-gather and two_phase pad every worker's payload to the
    largest one (one buffer shape for the collective), allreduce sums the
    decoded vectors (see :func:`_per_worker`);

* applies partial participation (Horváth & Richtárik 2021, §4.2): the
  sampled set S is drawn from a key common to all workers, non-members send
  zeros, and the aggregate is Σ_{i∈S} Δ_i/(n p_i);
* returns the aggregate in float32, float64 for float64 leaves (methods cast
  once, at their output), this
  worker's own C(x_i) if asked, the bits this worker sent and received (which
  methods add to a :class:`compopt.CommBits` counter in their state) and the
  scheme's new state.

Bit accounting (per worker, per exchange; :class:`compopt.CommBits`). The
up- and downlink count what the collectives' algorithms really move, so that
they match a network interface's counters (up to the transport's framing):

* all-gather (ring): every worker sends and receives (n − 1)·B for a B-bit
  buffer (it forwards the others' buffers);
* all-reduce (ring: reduce-scatter, then all-gather): ⌊2(n − 1)·B/n⌋ each way;
* all-to-all (pairwise): the n − 1 rows for the others out, n − 1 rows in.

With partial participation the non-members' buffers are zeros of the same
size, so they cost the same on the wire; so do the padding bytes of
per-worker compressors. ``payload`` counts the bits of this worker's own
compressed message (its C(x_i), unpadded, 0 for a non-member), whatever the
scheme: the per-worker count of the papers. ``axis_name=None``: nothing.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from compopt._src import counters
from compopt._src import sampling as sampling_lib
from compopt._src import schemes
from compopt._src import wire
from compopt._src.compressors import base as cbase
from compopt._src.compressors import per_worker as cper_worker
from compopt._src.compressors import tree as ctree

_log = logging.getLogger("compopt")

#: The dtype of every aggregate of float16, bfloat16 and float32 leaves:
#: reductions run in float32. Float64 leaves (with ``jax_enable_x64``) are
#: reduced in float64 (:func:`wide_dtype`), never rounded through float32.
ACCUMULATION_DTYPE = jnp.float32


def wide_dtype(dtype) -> np.dtype:
  """The dtype a leaf of ``dtype`` is reduced in: the wider of float32 and
  ``dtype`` (float32 for float16/bfloat16/float32, float64 for float64)."""
  return cbase.compute_dtype(dtype)


def _weight_dtype(leaves) -> np.dtype:
  """float64 when a leaf is float64 (its weights 1/(n p_i) must not be
  rounded to float32), else float32."""
  if any(np.dtype(l.dtype) == np.float64 for l in leaves):
    return np.dtype(np.float64)
  return np.dtype(np.float32)

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


# --------------------------------------------------------- control collectives


def _psum_packed(arrays: list, axis_name) -> list:
  """psum of a list of arrays as ONE (variadic) all-reduce.

  No concatenation into a flat buffer: that cost two copies of the whole
  tree per step (2.5x the dense step on a CPU), while XLA takes the list as
  one all-reduce op with several operands.
  """
  return list(lax.psum(tuple(arrays), axis_name))


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
  :class:`compopt.CommBits`, which count payloads.
  """
  flag = jnp.asarray(flag).astype(jnp.int32)
  if axis_name is None:
    return flag > 0
  axis_info(axis_name, owner)  # a clear error when the axis is not bound
  return lax.psum(flag, axis_name) > 0


def _ring_bits(n: int, dense_bits: int) -> int:
  return (2 * (n - 1) * dense_bits) // n


def _as64(value) -> jax.Array:
  return counters.const64(value) if isinstance(value, (int, np.integer)) else value


def _moved(wire_bits: int, payload) -> counters.CommBits:
  """A symmetric collective moving ``wire_bits`` each way (a static int) and
  ``payload`` bits of this worker's own message (an int or a [hi, lo] pair)."""
  w = counters.const64(wire_bits)
  return counters.CommBits(w, w, _as64(payload))


def _own_payload(member, bits: int):
  """This worker's message bits: all of them, or none for a non-member."""
  return bits if member is None else counters.mul64(member.astype(jnp.int32), bits)


# -------------------------------------------------------------- the exchange


class Exchanged(NamedTuple):
  """What :func:`exchange` returns."""
  mean: Any  # Σ_{i∈S} C(x_i)/(n p_i), shaped like the input tree, wide_dtype leaves
  own: Any  # this worker's own dense C(x_i) in x_i's dtype (None unless asked for)
  sent: counters.CommBits  # bits this worker sent / received in this exchange
  state: Any  # the scheme's new state


def exchange(compressor: cbase.Compressor, tree, key, axis_name, *,
             scheme: schemes.Scheme, state: Any,
             sampling: sampling_lib.Sampling | None = None,
             owner: str, return_own: bool = False) -> Exchanged:
  """Σ_{i∈S} C(x_i)/(n p_i) over the workers of ``axis_name`` (mean_i C(x_i)
  without sampling) by the exchange ``scheme``, and the bits this worker sent
  and received. The one entry point of every method into the communication
  layer.

  Args:
    compressor: a compopt compressor, or one per worker
      (``cper_worker.PerWorker``: worker i encodes with its own C_i, see
      :func:`_per_worker` for what crosses the wire).
    tree: this worker's pytree x_i (floating arrays).
    key: the step key, identical on every worker (uint32[2]).
    axis_name: the worker axis, or None for one worker.
    scheme: the method's exchange scheme, resolved when it was built
      (``schemes.resolve``).
    state: the scheme's state, as ``scheme.init`` made it or the previous
      exchange returned it; the method keeps it without looking inside.
    sampling: optional partial participation (``compopt.sampling``).
    owner: the name used in error messages.
    return_own: also return this worker's own dense C(x_i) (error feedback
      needs it), decoded from the payload it sent.
  """
  if not isinstance(scheme, schemes.Scheme):
    raise TypeError(f"{owner}: exchange needs a resolved scheme; got {scheme!r}")
  n, _ = axis_info(axis_name, owner)
  if isinstance(compressor, cper_worker.PerWorker):
    compressor.check_workers(n, axis_name, owner)
    if len(compressor.groups) > 1:
      return _per_worker(compressor, tree, key, axis_name, sampling, scheme, state, owner,
                         return_own)
    compressor = compressor.compressors[0]  # the same compressor on every worker
  if axis_name is not None and isinstance(scheme, schemes.TwoPhase):
    return _two_phase(compressor, tree, key, axis_name, sampling, scheme, state, owner,
                      return_own)
  if compressor.low_precision_sum:
    out = _low_precision_sum(compressor, tree, axis_name, sampling, key, owner, return_own)
    return out._replace(state=state)
  if compressor.linear_payload:
    out = _linear(compressor, tree, key, axis_name, sampling, owner, return_own)
    return out._replace(state=state)
  if axis_name is not None and isinstance(scheme, schemes.Auto):
    payload_bytes = ctree.tree_wire_bits(compressor, tree) / 8
    dense_bytes = sum(l.size * wide_dtype(l.dtype).itemsize for l in jax.tree.leaves(tree))
    chosen = scheme.choose(payload_bytes, dense_bytes, n, compressor.decode_passes)
    _log.info("%s: auto picks %s for %d workers, payload %.0f B, dense %.0f B, %s",
              owner, chosen.name, n, payload_bytes, dense_bytes, scheme.network)
    scheme = chosen
  if axis_name is not None and isinstance(scheme, schemes.AllReduce):
    out = _allreduce_decoded(compressor, tree, key, axis_name, sampling, owner, return_own)
  else:
    out = _allgather(compressor, tree, key, axis_name, sampling, owner, return_own)
  return out._replace(state=state)


def _weights(sampling, key, n, i, owner, dtype=np.float32):
  """(member, weights): S from the shared key; weights w_j = 1/(n p_j) for
  members, 0 otherwise (1/n without sampling), in ``dtype``."""
  if sampling is None:
    return None, jnp.full((n,), 1.0 / n, dtype)
  mask, probs = sampling.draw(key, n, owner, dtype)
  weights = jnp.where(mask, 1.0 / (n * probs), 0.0).astype(dtype)
  return mask[i], weights


def _like(leaves):
  return [jax.ShapeDtypeStruct(l.shape, l.dtype) for l in leaves]


def _linear(compressor, tree, key, axis_name, sampling, owner, return_own):
  """ONE all-reduce of the payloads, decoded once: for a linear payload that
  every worker encoded with the same key (the positions of shared rand_k)."""
  n, i = axis_info(axis_name, owner)
  compress_key, sample_key = jax.random.split(key)
  leaves, treedef = jax.tree.flatten(tree)
  like = _like(leaves)
  member, weights = _weights(sampling, sample_key, n, i, owner, _weight_dtype(leaves))
  payload = compressor.encode(compress_key, leaves)
  own = compressor.decode(payload, like, key=compress_key) if return_own else None
  # The payloads are summed in float32 (ACCUMULATION_DTYPE) whatever the
  # leaves' dtype, so that every mode of running adds them alike (a bfloat16
  # sum is done in bfloat16 under vmap but widened on some backends); float64
  # payloads in float64 (wide_dtype), which the bits count as 64 each.
  payload = jax.tree.map(lambda p: p.astype(wide_dtype(p.dtype)), payload)
  if member is not None:  # members send C(x_i)/p_i, the others zeros
    scale = weights[i] * n
    payload = jax.tree.map(lambda p: jnp.where(member, p * scale.astype(p.dtype), 0),
                           payload)
  parts, payload_def = jax.tree.flatten(payload)
  if axis_name is None:
    summed, sent = parts, counters.zero_bits()
  else:
    summed = _psum_packed(parts, axis_name)
    bits = wire.nbytes(parts) * 8
    sent = _moved(_ring_bits(n, bits), _own_payload(member, bits))
  wide = [jax.ShapeDtypeStruct(l.shape, wide_dtype(l.dtype)) for l in leaves]
  decoded = compressor.decode(payload_def.unflatten(summed), wide, key=compress_key)
  mean = [d / n for d in decoded]
  return Exchanged(treedef.unflatten(mean),
                   treedef.unflatten(own) if return_own else None, sent, None)


def _low_precision_sum(compressor, tree, axis_name, sampling, key, owner, return_own):
  """ONE all-reduce of C(w_i x_i) in the compressor's low dtype (``cast`` to
  float16/bfloat16), as PyTorch DDP's fp16/bf16 hooks: each worker rounds
  w_i·x_i (w_i = 1/n, or 1/(n p_i) for a sampled member, 0 for the others)
  and the workers add the rounded values in that dtype. With ``scale`` the
  workers first agree on each leaf's exponent (ONE all-reduce max of int16
  exponents, the ``exponent`` field of the payload) and keep a factor n of
  headroom, so the sum stays in range."""
  n, i = axis_info(axis_name, owner)
  _, sample_key = jax.random.split(key)
  leaves, treedef = jax.tree.flatten(tree)
  member, weights = _weights(sampling, sample_key, n, i, owner, _weight_dtype(leaves))
  w = weights[i]
  scaled = [l.astype(wide_dtype(l.dtype)) * w.astype(wide_dtype(l.dtype)) for l in leaves]
  shifts = [None] * len(leaves)
  bits = 0
  if compressor.scale:
    exps = jnp.stack([compressor.exponent(v) for v in scaled]) if leaves else None
    if axis_name is not None and leaves:
      exps = lax.pmax(exps, axis_name)
    shifts = [compressor.shift(exps[j], headroom=n) for j in range(len(leaves))]
    bits += wire.dtype_bits(exps.dtype) * len(leaves) if leaves else 0
  values = [compressor.to_wire(v, s) for v, s in zip(scaled, shifts)]
  bits += sum(wire.dtype_bits(v.dtype) * v.size for v in values)
  if axis_name is None:
    summed, sent = values, counters.zero_bits()
  else:
    summed = _psum_packed(values, axis_name) if values else []
    sent = _moved(_ring_bits(n, bits), _own_payload(member, bits))
  mean = [compressor.from_wire(v, s, l.dtype)
          for v, s, l in zip(summed, shifts, leaves)]
  own = None
  if return_own:  # C(x_i): the value this worker added, divided by its weight
    own = [jnp.where(w > 0, compressor.from_wire(v, s, l.dtype) / w.astype(wide_dtype(l.dtype)),
                     compressor(None, l).astype(wide_dtype(l.dtype))).astype(l.dtype)
           for v, s, l in zip(values, shifts, leaves)]
    own = treedef.unflatten(own)
  return Exchanged(treedef.unflatten(mean), own, sent, None)


def _allgather(compressor, tree, key, axis_name, sampling, owner, return_own):
  """ONE packed all-gather of the payloads; every worker decodes all of them."""
  n, i = axis_info(axis_name, owner)
  compress_key, sample_key = jax.random.split(key)
  leaves, treedef = jax.tree.flatten(tree)
  like = _like(leaves)
  # Partial participation: S from the shared key, so all workers agree.
  member, weights = _weights(sampling, sample_key, n, i, owner, _weight_dtype(leaves))
  shared = compressor.decode_needs_key
  enc_key = compress_key if shared else worker_key(compress_key, axis_name)
  payload = compressor.encode(enc_key, leaves)
  buf, spec = wire.pack(payload)
  nbits = int(buf.size) * 8
  if sampling is not None:
    buf = jnp.where(member, buf, jnp.zeros_like(buf))
  if axis_name is None:
    gathered = buf[None]
    sent = counters.zero_bits()
  else:
    # (n, B). The barrier keeps XLA from fusing the encode into the decoding
    # (under vmap the all-gather is no boundary: top_k's selection was
    # recomputed into the scatter, 19x slower).
    gathered = lax.optimization_barrier(lax.all_gather(buf, axis_name))
    sent = _moved((n - 1) * nbits, _own_payload(member, nbits))
  payloads = wire.unpack(gathered, spec)
  dec_key = compress_key if shared else None
  if jax.tree.leaves(payloads):
    mean = compressor.decode_sum(payloads, like, weights, key=dec_key)
  else:  # only empty leaves: nothing was sent
    mean = [jnp.zeros(l.shape, wide_dtype(l.dtype)) for l in like]
  own = None
  if return_own:  # from the payload it sent (a non-member's row was zeroed)
    own = treedef.unflatten(compressor.decode(payload, like, key=enc_key))
  return Exchanged(treedef.unflatten(mean), own, sent, None)


def _allreduce_decoded(compressor, tree, key, axis_name, sampling, owner, return_own):
  """Decode the own payload, then ONE dense all-reduce of w_i·C(x_i) (float32,
  float64 for float64 leaves)."""
  n, i = axis_info(axis_name, owner)
  compress_key, sample_key = jax.random.split(key)
  leaves, treedef = jax.tree.flatten(tree)
  member, weights = _weights(sampling, sample_key, n, i, owner, _weight_dtype(leaves))
  shared = compressor.decode_needs_key
  enc_key = compress_key if shared else worker_key(compress_key, axis_name)
  payload = compressor.encode(enc_key, leaves)
  like = _like(leaves)
  own = compressor.decode(payload, like, key=enc_key) if return_own else None
  w = weights[i]
  # C(x_i) in float32 (float64 for float64 leaves), not rounded to the leaf's
  # dtype (whose range a decoded value such as rand_k's (d/k)·x_j may leave).
  contrib = [jnp.where(w > 0, o * w.astype(o.dtype), 0)
             for o in compressor.decode_wide(payload, like, key=enc_key)]
  summed = _psum_packed(contrib, axis_name)
  dense_bits = sum(l.size * wide_dtype(l.dtype).itemsize * 8 for l in leaves)
  sent = _moved(_ring_bits(n, dense_bits), _own_payload(member, wire.nbytes(payload) * 8))
  return Exchanged(treedef.unflatten(summed), treedef.unflatten(own) if return_own else None,
                   sent, None)


def _flat(leaves, dtype, total):
  if not leaves:
    return jnp.zeros((total,), dtype)
  flat = jnp.concatenate([l.reshape(-1).astype(dtype) for l in leaves])
  return jnp.pad(flat, (0, total - flat.size))


def _unflat(flat, leaves, treedef, dtype=None):
  out, offset = [], 0
  for l in leaves:
    out.append(flat[offset:offset + l.size].reshape(l.shape).astype(dtype or l.dtype))
    offset += l.size
  return treedef.unflatten(out)


def _two_phase(compressor, tree, key, axis_name, sampling, scheme, state, owner,
               return_own):
  """All-to-all of compressed chunks to their owners, owners average (and
  re-compress with error feedback), all-gather of the chunks."""
  n, me = axis_info(axis_name, owner)
  compress_key, sample_key = jax.random.split(key)
  worker_base, server_base = jax.random.split(compress_key)
  leaves, treedef = jax.tree.flatten(tree)
  size = sum(l.size for l in leaves)
  dtypes = {np.dtype(l.dtype) for l in leaves}
  # one dtype: the leaves' own; mixed: float32, or float64 when one is float64
  wire_dtype = dtypes.pop() if len(dtypes) == 1 else _weight_dtype(leaves)
  acc = wide_dtype(wire_dtype)  # the owners' sums: float32, float64 for float64
  if size > cbase.MAX_LEAF_SIZE:
    raise ValueError(
        f"{owner}: two_phase flattens the update into one vector of D = {size} "
        f"coordinates; at most 2**31 - 1 = {cbase.MAX_LEAF_SIZE} are supported "
        "(positions are int32). Use another exchange scheme for this model.")
  chunk = schemes.chunk_size(size, n)  # c = ⌈D/n⌉, the vector padded to n·c
  rows = _flat(leaves, wire_dtype, n * chunk).reshape(n, chunk)
  row_like = jax.ShapeDtypeStruct((chunk,), wire_dtype)
  member, weights = _weights(sampling, sample_key, n, me, owner, acc)

  # Phase 1: C(x_i) chunk by chunk; chunk j goes to worker j.
  shared = compressor.decode_needs_key
  base = worker_base if shared else worker_key(worker_base, axis_name)
  chunk_keys = jax.vmap(lambda j: jax.random.fold_in(base, j))(jnp.arange(n))
  if n <= cbase.UNROLL_MAX:
    # chunk by chunk: a vmapped encode turns the compressors' CPU fusion
    # cuts (conditionals) into selects over both branches (10x slower for
    # scaled_sign)
    payload = jax.tree.map(lambda *rows_j: jnp.stack(rows_j),
                           *[compressor.encode(chunk_keys[j], rows[j]) for j in range(n)])
  else:
    payload = jax.vmap(compressor.encode)(chunk_keys, rows)
  spec = wire.pack(jax.tree.map(lambda a: a[0], payload))[1]
  buf = jax.vmap(lambda p: wire.pack(p)[0])(payload)  # (n, B)
  nbytes = int(buf.shape[1])
  if member is not None:
    buf = jnp.where(member, buf, jnp.zeros_like(buf))
  # row i: worker i's chunk `me` (the barrier as in _allgather)
  received = lax.optimization_barrier(lax.all_to_all(buf, axis_name, 0, 0))
  my_key = jax.random.fold_in(worker_base, me) if shared else None
  # this owner's chunk of the aggregate, in acc
  m = compressor.decode_sum(wire.unpack(received, spec), row_like, weights, key=my_key)
  # n − 1 rows out and in; the worker's message C(x_i) is its n rows.
  sent = _moved((n - 1) * nbytes * 8, _own_payload(member, n * nbytes * 8))

  # Phase 2: the owners' chunks to everyone, re-compressed or dense.
  gathered, sbytes, new_state = _two_phase_back(m, scheme, state, axis_name, n, me, chunk,
                                                size, server_base, acc, owner)
  sent = counters.add_bits(sent, _moved((n - 1) * sbytes * 8, 0))  # ring all-gather
  mean = _unflat(gathered.astype(acc).reshape(-1), leaves, treedef, acc)

  own = None
  if return_own:
    if shared:
      own_dec = jax.vmap(lambda p, k: compressor.decode(p, row_like, key=k))(
          payload, chunk_keys)
    else:
      own_dec = jax.vmap(lambda p: compressor.decode(p, row_like))(payload)
    own = _unflat(own_dec.reshape(-1), leaves, treedef)
  return Exchanged(mean, own, sent, new_state)


def _two_phase_back(m, scheme, state, axis_name, n, me, chunk, size, server_base, acc,
                    owner):
  """Phase 2 of two_phase: the owners' chunks m (c,) to everyone, dense (in
  ``acc``) or re-compressed by the server compressor (with its error
  feedback). Returns (gathered (n, c), bytes each owner all-gathered, the
  scheme's new state)."""
  server = scheme.server_compressor
  new_state = state
  if server is None:
    gathered = lax.all_gather(m, axis_name)  # (n, c) in acc
    sbytes = chunk * acc.itemsize
  else:
    # the server compressor and its error e_s work in float32
    v = m.astype(jnp.float32)
    # The owned chunk of the flat server error (coordinates past D read as 0).
    owned = me * chunk + jnp.arange(chunk)
    if scheme.keeps_server_error:
      if getattr(state, "server_error", None) is None or state.server_error.shape != (size,):
        got = getattr(getattr(state, "server_error", None), "shape", None)
        raise ValueError(
            f"{owner}: the updates do not match the state: two_phase's server error "
            f"was initialised for {got[0] if got else '?'} coordinates, but the "
            f"updates have {size}. Call init with the same params tree you update.")
      v = v + state.server_error.at[owned].get(mode="fill", fill_value=0)
    v_like = jax.ShapeDtypeStruct((chunk,), jnp.float32)
    s_key = jax.random.fold_in(server_base, me)
    s_payload = server.encode(s_key, v)
    if scheme.keeps_server_error:
      # e_s ← v − C_s(v) on the owned chunk; the rest stays zero (disjoint owners).
      residual = v - server.decode(s_payload, v_like, key=s_key).astype(jnp.float32)
      new_state = state._replace(
          server_error=state.server_error.at[owned].set(residual, mode="drop"))
    s_buf, s_spec = wire.pack(s_payload)
    sbytes = int(s_buf.size)
    s_all = wire.unpack(lax.all_gather(s_buf, axis_name), s_spec)
    s_keys = jax.vmap(lambda j: jax.random.fold_in(server_base, j))(jnp.arange(n))
    gathered = jax.vmap(lambda p, k: server.decode(p, v_like, key=k))(s_all, s_keys)
  return gathered, sbytes, new_state


# ------------------------------------------------------ per-worker compressors


def _payload_spec(compressor, key, x):
  """(spec, nbytes): the layout :func:`wire.pack` gives ``compressor``'s
  payload of ``x`` (an array or a list of arrays) and its size in bytes,
  from shapes alone."""
  shapes = jax.eval_shape(lambda k, v: compressor.encode(k, v),
                          jax.ShapeDtypeStruct(key.shape, key.dtype),
                          jax.tree.map(lambda l: jax.ShapeDtypeStruct(l.shape, l.dtype), x))
  parts, treedef = jax.tree.flatten(shapes)
  return (treedef, [(tuple(p.shape), np.dtype(p.dtype)) for p in parts]), wire.nbytes(parts)


def _worker_bits(member, i, bits_of_worker) -> jax.Array:
  """Worker i's own message bits, ``bits_of_worker[i]`` (static ints), as a
  [hi, lo] pair; 0 for a non-member."""
  table = np.array([[b >> 32, b & 0xFFFFFFFF] for b in bits_of_worker], np.uint32)
  own = jnp.asarray(table)[i]
  return own if member is None else jnp.where(member, own, jnp.zeros_like(own))


def _per_worker(pw: cper_worker.PerWorker, tree, key, axis_name, sampling, scheme, state,
                owner, return_own) -> Exchanged:
  """The exchange of worker i's C_i(x_i) when the workers' compressors differ.

  Every worker traces the same program, so worker i runs its own encoder as
  branch ``group(i)`` of a ``lax.switch`` on its axis index, and the
  collectives need one buffer shape on every worker: each worker's bytes are
  zero-padded to the largest payload B = max_i B_i. What crosses the wire and
  what the counters count:

  * ``allgather``: ONE all-gather of the padded uint8[B] buffers, (n − 1)·B
    bytes each way per worker (a ring forwards the others' buffers); every
    worker decodes the rows of each compressor's group with that compressor
    (one ``decode_sum`` per distinct compressor);
  * ``allreduce``: each worker decodes its own payload (its branch) and the
    dense vectors are all-reduced, 2(n − 1)/n of the dense bits each way: no
    padding, the cheaper route when the payloads differ much in size;
  * ``two_phase``: worker i encodes its n chunks with C_i, each chunk row
    padded to the largest chunk payload; all-to-all, each owner decodes the
    rows of each group with its compressor; phase 2 as for one compressor.

  ``payload`` counts worker i's own message, B_i bits unpadded (the bits its
  own link would carry to a server); up- and downlink count the padded
  buffers the collectives move.
  """
  n, i = axis_info(axis_name, owner)
  groups = pw.groups
  group = jnp.asarray(pw.group_of_worker())[i]
  leaves, treedef = jax.tree.flatten(tree)
  if isinstance(scheme, schemes.Auto):
    payload_bytes = max(ctree.tree_wire_bits(c, leaves) for c, _ in groups) / 8
    dense_bytes = sum(l.size * wide_dtype(l.dtype).itemsize for l in leaves)
    chosen = scheme.choose(payload_bytes, dense_bytes, n, pw.decode_passes)
    _log.info("%s: auto picks %s for %d workers with per-worker compressors, largest "
              "payload %.0f B, dense %.0f B, %s", owner, chosen.name, n, payload_bytes,
              dense_bytes, scheme.network)
    scheme = chosen
  like = _like(leaves)
  compress_key, sample_key = jax.random.split(key)
  member, weights = _weights(sampling, sample_key, n, i, owner, _weight_dtype(leaves))
  if isinstance(scheme, schemes.TwoPhase):
    return _per_worker_two_phase(pw, leaves, treedef, compress_key, member, weights,
                                 axis_name, scheme, state, owner, return_own)
  own_key = worker_key(compress_key, axis_name)
  specs = [_payload_spec(c, key, leaves) for c, _ in groups]
  bits = [8 * specs[g][1] for g in pw.group_of_worker()]  # B_i of each worker

  def enc_key(c):  # shared randomness (decode_needs_key): the unfolded key
    return compress_key if c.decode_needs_key else own_key

  if isinstance(scheme, schemes.AllReduce):
    def branch(c):
      def run():
        k = enc_key(c)
        payload = c.encode(k, leaves)
        w = weights[i]
        contrib = [jnp.where(w > 0, o * w.astype(o.dtype), 0)
                   for o in c.decode_wide(payload, like, key=k)]
        return contrib, (c.decode(payload, like, key=k) if return_own else None)
      return run

    contrib, own = lax.switch(group, [branch(c) for c, _ in groups])
    mean = _psum_packed(contrib, axis_name)
    dense_bits = sum(l.size * wide_dtype(l.dtype).itemsize * 8 for l in leaves)
    sent = _moved(_ring_bits(n, dense_bits), _worker_bits(member, i, bits))
  else:
    width = max(nbytes for _, nbytes in specs)  # B = max_i B_i

    def branch(c):
      def run():
        k = enc_key(c)
        payload = c.encode(k, leaves)
        buf = wire.pack(payload)[0]
        buf = jnp.pad(buf, (0, width - buf.size))
        return buf, (c.decode(payload, like, key=k) if return_own else None)
      return run

    buf, own = lax.switch(group, [branch(c) for c, _ in groups])
    if member is not None:
      buf = jnp.where(member, buf, jnp.zeros_like(buf))
    # (n, B); the barrier as in _allgather
    gathered = lax.optimization_barrier(lax.all_gather(buf, axis_name))
    mean = [jnp.zeros(l.shape, wide_dtype(l.dtype)) for l in like]
    for (c, members), (spec, nbytes) in zip(groups, specs):
      if not nbytes:
        continue
      rows = np.asarray(members)
      payloads = wire.unpack(gathered[rows][:, :nbytes], spec)
      part = c.decode_sum(payloads, like, weights[rows],
                          key=compress_key if c.decode_needs_key else None)
      mean = [a + b for a, b in zip(mean, part)]
    sent = _moved((n - 1) * width * 8, _worker_bits(member, i, bits))
  return Exchanged(treedef.unflatten(mean), treedef.unflatten(own) if return_own else None,
                   sent, state)


def _per_worker_two_phase(pw, leaves, treedef, compress_key, member, weights, axis_name,
                          scheme, state, owner, return_own):
  """two_phase with per-worker compressors (see :func:`_per_worker`)."""
  n, me = axis_info(axis_name, owner)
  groups = pw.groups
  worker_base, server_base = jax.random.split(compress_key)
  size = sum(l.size for l in leaves)
  dtypes = {np.dtype(l.dtype) for l in leaves}
  wire_dtype = dtypes.pop() if len(dtypes) == 1 else _weight_dtype(leaves)
  acc = wide_dtype(wire_dtype)
  if size > cbase.MAX_LEAF_SIZE:
    raise ValueError(
        f"{owner}: two_phase flattens the update into one vector of D = {size} "
        f"coordinates; at most 2**31 - 1 = {cbase.MAX_LEAF_SIZE} are supported "
        "(positions are int32). Use another exchange scheme for this model.")
  chunk = schemes.chunk_size(size, n)
  rows = _flat(leaves, wire_dtype, n * chunk).reshape(n, chunk)
  row_like = jax.ShapeDtypeStruct((chunk,), wire_dtype)
  own_base = worker_key(worker_base, axis_name)
  specs = [_payload_spec(c, worker_base, row_like) for c, _ in groups]
  width = max(nbytes for _, nbytes in specs)

  def branch(c):
    def run():
      base_key = worker_base if c.decode_needs_key else own_base
      keys = [jax.random.fold_in(base_key, j) for j in range(n)]
      payloads = [c.encode(keys[j], rows[j]) for j in range(n)]
      buf = jnp.stack([wire.pack(p)[0] for p in payloads])
      buf = jnp.pad(buf, ((0, 0), (0, width - buf.shape[1])))
      own = None
      if return_own:
        own = jnp.concatenate([c.decode(p, row_like, key=k) for p, k in zip(payloads, keys)])
      return buf, own
    return run

  buf, own_flat = lax.switch(jnp.asarray(pw.group_of_worker())[me],
                             [branch(c) for c, _ in groups])
  if member is not None:
    buf = jnp.where(member, buf, jnp.zeros_like(buf))
  # row i: worker i's chunk `me`, padded (the barrier as in _allgather)
  received = lax.optimization_barrier(lax.all_to_all(buf, axis_name, 0, 0))
  my_key = jax.random.fold_in(worker_base, me)
  m = jnp.zeros((chunk,), acc)
  for (c, members), (spec, nbytes) in zip(groups, specs):
    if not nbytes:
      continue
    idx = np.asarray(members)
    m = m + c.decode_sum(wire.unpack(received[idx][:, :nbytes], spec), row_like,
                         weights[idx], key=my_key if c.decode_needs_key else None)
  bits = [8 * n * specs[g][1] for g in pw.group_of_worker()]  # n chunk payloads
  sent = _moved((n - 1) * width * 8, _worker_bits(member, me, bits))
  gathered, sbytes, new_state = _two_phase_back(m, scheme, state, axis_name, n, me, chunk,
                                                size, server_base, acc, owner)
  sent = counters.add_bits(sent, _moved((n - 1) * sbytes * 8, 0))
  mean = _unflat(gathered.astype(acc).reshape(-1), leaves, treedef, acc)
  own = _unflat(own_flat, leaves, treedef) if return_own else None
  return Exchanged(mean, own, sent, new_state)


def member_mean(tree, key, axis_name, sampling: sampling_lib.Sampling, *,
                owner: str) -> Exchanged:
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
    An :class:`Exchanged`: ``mean`` is (1/n) Σ_{i∈S} x_i (float32 leaves,
    float64 for float64 ones),
    ``own`` this worker's contribution 1[i∈S]·x_i (in x_i's dtype), ``sent``
    the bits: the collective is a ring all-reduce of the zero-padded vectors
    (XLA needs static shapes), 2(n − 1)/n·D each way for every worker; a
    member's payload is its D dense bits, a non-member's 0.
  """
  n, i = axis_info(axis_name, owner)
  mask, _ = sampling.draw(key, n, owner)
  member = mask[i]
  leaves, treedef = jax.tree.flatten(tree)
  own = [jnp.where(member, l, jnp.zeros_like(l)) for l in leaves]
  dense_bits = sum(l.size * np.dtype(l.dtype).itemsize * 8 for l in leaves)
  if axis_name is None:
    summed, sent = own, counters.zero_bits()
  else:
    summed = _psum_packed(own, axis_name)
    sent = _moved(_ring_bits(n, dense_bits), _own_payload(member, dense_bits))
  mean = [s.astype(wide_dtype(s.dtype)) / n for s in summed]
  return Exchanged(treedef.unflatten(mean), treedef.unflatten(own), sent, None)
