"""The one timing harness every table here uses (JAX and PyTorch alike).

A callable is run twice to warm up (compilation, allocation), then ``reps``
times; each run ends with the framework's own synchronisation (JAX:
``block_until_ready``; PyTorch on the CPU runs eagerly, and on a GPU the
caller passes ``torch.cuda.synchronize``). We report the median: the machines
these run on are shared and noisy, and ratios are always taken between
numbers measured in the same run, back to back.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def _block(out: Any) -> Any:
  try:
    import jax
    return jax.block_until_ready(out)
  except ImportError:  # pragma: no cover - PyTorch-only use
    return out


def time_call(fn: Callable[[], Any], *, reps: int = 7, warmup: int = 2,
              sync: Callable[[Any], Any] | None = None,
              max_seconds: float | None = None) -> float:
  """Median wall-clock seconds of ``fn()`` over ``reps`` runs.

  Args:
    fn: a callable with no arguments (close over its inputs).
    reps: timed runs.
    warmup: untimed runs first.
    sync: applied to the result to wait for it (default: JAX's
      ``block_until_ready``, which passes anything else through).
    max_seconds: stop repeating once this much time was spent in timed runs
      (at least 3 runs are kept), for the slow baselines.
  """
  sync = _block if sync is None else sync
  for _ in range(warmup):
    sync(fn())
  times: list[float] = []
  spent = 0.0
  for _ in range(reps):
    t0 = time.perf_counter()
    sync(fn())
    dt = time.perf_counter() - t0
    times.append(dt)
    spent += dt
    if max_seconds is not None and spent > max_seconds and len(times) >= 3:
      break
  return statistics.median(times)


def gbps(nbytes: int, seconds: float) -> float:
  """Throughput in GB/s (10^9 bytes per second) of reading ``nbytes``."""
  return nbytes / seconds / 1e9


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
  """A GitHub-flavoured markdown table (what every benchmark prints)."""
  def cell(v):
    if isinstance(v, float):
      return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)
