"""Wire formats: bit packing, low-bit codes, index types and byte buffers.

Everything a compressor sends is built from these pieces, so the number of
bits on the wire is the summed size of the arrays they return; the
communication layer sends a payload tree as one byte buffer (:func:`pack`).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def dtype_bits(dtype) -> int:
  """Bits of one element of ``dtype``."""
  return np.dtype(dtype).itemsize * 8


def index_dtype(size: int) -> np.dtype:
  """The narrowest unsigned/int dtype that can address ``size`` coordinates."""
  if size <= 2**8:
    return np.dtype(np.uint8)
  if size <= 2**16:
    return np.dtype(np.uint16)
  if size <= 2**31:
    return np.dtype(np.int32)
  return np.dtype(np.int64)


def packed_bytes(num_bits: int) -> int:
  """Bytes used by ``pack_bits`` for ``num_bits`` booleans."""
  return (num_bits + 7) // 8


def pack_bits(bits: jnp.ndarray) -> jnp.ndarray:
  """Packs a 1-D boolean array 8 per byte (uint8, big-endian bit order)."""
  return jnp.packbits(bits.astype(jnp.bool_))


def unpack_bits(packed: jnp.ndarray, size: int) -> jnp.ndarray:
  """Inverse of :func:`pack_bits`: a boolean array of length ``size``."""
  return jnp.unpackbits(packed, count=size).astype(jnp.bool_)


def code_bits(levels: int) -> int:
  """Bits needed for the codes 0..levels: ceil(log2(levels + 1))."""
  return max(1, math.ceil(math.log2(levels + 1)))


def pack_codes(codes: jnp.ndarray, bits: int) -> jnp.ndarray:
  """Packs 1-D non-negative integer codes below 2**bits into bit planes.

  Returns uint8 of shape (bits, ceil(size / 8)): plane b holds bit b of every
  code, packed 8 codes per byte, so ``size`` codes take ``bits * size`` bits
  plus at most 7 bits of padding per plane.
  """
  codes = codes.astype(jnp.uint32)
  planes = [pack_bits((codes >> b) & 1) for b in range(bits)]
  return jnp.stack(planes)


def unpack_codes(planes: jnp.ndarray, size: int) -> jnp.ndarray:
  """Inverse of :func:`pack_codes`: uint32 codes of length ``size``."""
  codes = jnp.zeros((size,), jnp.uint32)
  for b in range(planes.shape[0]):
    codes = codes | (unpack_bits(planes[b], size).astype(jnp.uint32) << b)
  return codes


#: Trits (codes 0, 1, 2) per byte of :func:`pack_trits`: 3^5 = 243 <= 256.
TRITS_PER_BYTE = 5


def trit_bytes(size: int) -> int:
  """Bytes used by :func:`pack_trits` for ``size`` trits: ceil(size / 5)."""
  return (size + TRITS_PER_BYTE - 1) // TRITS_PER_BYTE


def pack_trits(trits: jnp.ndarray) -> jnp.ndarray:
  """Packs 1-D codes in {0, 1, 2} five per byte, in base 3: 1.6 bits each.

  With m = ceil(size / 5), byte b of the uint8[m] result is
  t_b + 3 t_{b+m} + 9 t_{b+2m} + 27 t_{b+3m} + 81 t_{b+4m} <= 242, the trits
  past ``size`` being 0: trit plane i (coordinates i·m .. i·m + m − 1) is
  digit i of every byte, so that unpacking is five contiguous passes.
  """
  size = trits.shape[0]
  m = trit_bytes(size)
  t = jnp.pad(trits.astype(jnp.uint8), (0, TRITS_PER_BYTE * m - size)).reshape(
      TRITS_PER_BYTE, m)
  out = t[TRITS_PER_BYTE - 1]
  for i in range(TRITS_PER_BYTE - 2, -1, -1):  # Horner: at most 242, exact in uint8
    out = out * jnp.uint8(3) + t[i]
  return out


def trit_planes(packed: jnp.ndarray) -> jnp.ndarray:
  """All 5·m codes of :func:`pack_trits`'s m bytes, padding included (uint8):
  digit i of every byte, for i = 0..4, one contiguous pass each."""
  digits, q = [], packed.astype(jnp.uint8)
  for _ in range(TRITS_PER_BYTE):
    digits.append(q % jnp.uint8(3))
    q = q // jnp.uint8(3)
  return jnp.concatenate(digits)


def unpack_trits(packed: jnp.ndarray, size: int) -> jnp.ndarray:
  """Inverse of :func:`pack_trits`: uint8 codes in {0, 1, 2} of length ``size``."""
  return trit_planes(packed)[:size]


# ------------------------------------------------------------ byte buffers


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


def nbytes(tree) -> int:
  """Bytes of the buffer :func:`pack` makes of ``tree`` (static)."""
  return sum(int(np.prod(l.shape)) * np.dtype(l.dtype).itemsize
             for l in jax.tree.leaves(tree))


def pack(tree) -> tuple[jax.Array, Any]:
  """All arrays of ``tree`` bit-cast into one uint8 buffer, and what
  :func:`unpack` needs: the bytes on the wire are exactly the arrays' bytes."""
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
