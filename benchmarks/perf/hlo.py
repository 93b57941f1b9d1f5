"""Counting the bytes a compiled program sends through collectives.

Reads the text of a compiled XLA program (``jax.jit(f).lower(...).compile()
.as_text()``) and adds up the operand bytes of every collective: all-gather,
all-reduce, all-to-all, reduce-scatter and collective-permute (also their
asynchronous ``-start`` forms; the ``-done`` halves are not counted twice).
The operand bytes are what each device puts into the collective: for an
all-gather its own block, for an all-reduce the buffer being reduced.
"""

from __future__ import annotations

import collections
import math
import re

COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "reduce-scatter",
               "collective-permute")

_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
    "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
    "s32": 4, "u32": 4, "f32": 4,
    "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
}

_OP = re.compile(
    r"=\s*(?P<result>.*?)\s(?P<op>" + "|".join(COLLECTIVES) + r")(?P<start>-start)?\(")
_SHAPE = re.compile(r"\b([a-z]+\d*(?:e\d+m\d+(?:fn)?)?)\[([\d,]*)\]")
_GROUPS_LIST = re.compile(r"replica_groups=\{\{([\d,]*)\}")
_GROUPS_IOTA = re.compile(r"replica_groups=\[(\d+),(\d+)\]")


def _shape_bytes(dtype: str, dims: str) -> int:
  if dtype not in _BYTES:
    raise ValueError(f"unknown HLO element type {dtype!r}")
  size = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
  return size * _BYTES[dtype]


def _group_size(line: str) -> int:
  m = _GROUPS_LIST.search(line)
  if m:
    return len([d for d in m.group(1).split(",") if d])
  m = _GROUPS_IOTA.search(line)
  if m:
    return int(m.group(2))
  raise ValueError(f"cannot read the replica groups of: {line.strip()[:200]}")


def collective_bytes(hlo_text: str) -> dict[str, int]:
  """Bytes each device puts into collectives, per kind, in compiled HLO text.

  Compiled HLO prints the result shapes only; the operand bytes follow from
  them: an all-gather's operand is its result divided by the group size, a
  reduce-scatter's is its result times the group size, and the other kinds
  (all-reduce, all-to-all, collective-permute) have operands as large as
  their results. For an asynchronous ``-start`` op the result is a tuple whose
  last element is the output.
  """
  totals: dict[str, int] = collections.defaultdict(int)
  for line in hlo_text.splitlines():
    m = _OP.search(line)
    if m is None:
      continue
    op = m.group("op")
    shapes = _SHAPE.findall(m.group("result"))
    if m.group("start"):
      shapes = shapes[-1:]
    nbytes = sum(_shape_bytes(d, s) for d, s in shapes)
    if op == "all-gather":
      nbytes //= _group_size(line)
    elif op == "reduce-scatter":
      nbytes *= _group_size(line)
    totals[op] += nbytes
  return dict(totals)
