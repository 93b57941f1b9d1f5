"""One compressor per worker: the list a method was given, for the
communication layer (which alone knows a worker's index on the axis)."""

from __future__ import annotations

import dataclasses

import numpy as np

from compopt._src.compressors import base


@dataclasses.dataclass(frozen=True)
class PerWorker:
  """Worker i compresses with its own compressor C_i.

  Shulgin & Richtárik 2022, Alg. 1 lets each worker use its own Q_i ∈ U(ω_i)
  (and C_i ∈ B(δ_i)), so that a worker on a slow link can compress more. This
  is not a compressor itself: which C_i encodes depends on the worker's index
  on the axis, which only the communication layer knows (it picks worker i's
  branch with ``lax.switch`` on ``lax.axis_index``; see
  ``compopt.exchange``). ``name`` is the argument the list was given as, for
  error messages.
  """
  compressors: tuple[base.Compressor, ...]
  name: str = "compressor"

  @property
  def groups(self) -> tuple[tuple[base.Compressor, tuple[int, ...]], ...]:
    """The distinct compressors, each with the workers that use it, in the
    order of first use."""
    out: list[tuple[base.Compressor, list[int]]] = []
    for i, c in enumerate(self.compressors):
      for d, members in out:
        if d == c:
          members.append(i)
          break
      else:
        out.append((c, [i]))
    return tuple((c, tuple(m)) for c, m in out)

  def group_of_worker(self) -> np.ndarray:
    """int32[n]: the index in :attr:`groups` of each worker's compressor."""
    out = np.zeros(len(self.compressors), np.int32)
    for g, (_, members) in enumerate(self.groups):
      out[list(members)] = g
    return out

  @property
  def unbiased(self) -> bool:
    return all(c.unbiased for c in self.compressors)

  @property
  def decode_passes(self) -> float:
    return max(c.decode_passes for c in self.compressors)

  def check_workers(self, n: int, axis_name, owner: str):
    """A clear error unless there is one compressor per worker of the axis."""
    if len(self.compressors) != n:
      raise ValueError(
          f"{owner}: `{self.name}` lists {len(self.compressors)} entries, one per "
          f"worker, but the worker axis {axis_name!r} has {n} workers")


def per_worker(compressors, owner: str, name: str = "compressor") -> PerWorker:
  """A :class:`PerWorker` from a list or tuple of compopt compressors, one per
  worker (clear errors naming ``name`` and the bad entry otherwise)."""
  if not isinstance(compressors, (list, tuple)) or not compressors:
    raise TypeError(
        f"{owner}: `{name}` must be a compopt compressor or a non-empty list of "
        f"them (one per worker); got {compressors!r}")
  return PerWorker(tuple(base.check_compressor(c, owner, f"{name}[{i}]")
                         for i, c in enumerate(compressors)), name)
