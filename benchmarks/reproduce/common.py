"""Shared pieces of the reproductions: result rows, a text progress bar, the
simulated-worker loop (``jax.vmap`` over a named worker axis, compopt's public
API only), CSV/JSON writers and figure helpers."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import compopt

AXIS = "data"


@dataclasses.dataclass
class Row:
  """One line of results.md: a claim of a paper and what we measured."""
  experiment: str
  claim: str
  measured: str
  value: str
  verdict: str          # PASS, FAIL or INFO (INFO never fails the run)
  note: str = ""


def check(ok: bool) -> str:
  return "PASS" if ok else "FAIL"


class Progress:
  """A plain-text progress bar on stderr: ``name [#####.....] 12/40 3.1s``."""

  def __init__(self, name: str, total: int, width: int = 30):
    self.name, self.total, self.width = name, max(int(total), 1), width
    self.done = 0
    self.t0 = time.time()
    self.tty = sys.stderr.isatty()
    self._last = -1
    self._draw()

  def update(self, k: int = 1):
    self.done = min(self.done + k, self.total)
    self._draw()

  def _draw(self):
    filled = int(self.width * self.done / self.total)
    if not self.tty:  # in logs: one line per 10%
      tenth = 10 * self.done // self.total
      if tenth == self._last:
        return
      self._last = tenth
    bar = "#" * filled + "." * (self.width - filled)
    line = f"{self.name:<24} [{bar}] {self.done}/{self.total} {time.time() - self.t0:6.1f}s"
    sys.stderr.write(("\r" if self.tty else "") + line + ("" if self.tty else "\n"))
    sys.stderr.flush()

  def close(self):
    self.done = self.total
    self._draw()
    if self.tty:
      sys.stderr.write("\n")


def stack_seeds(trees: Sequence[Any]):
  """Stacks per-seed pytrees on a new leading axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def simulate(make_opt: Callable[[int], optax.GradientTransformation], x0, grad_fn: Callable,
             *, n: int, steps: int, seeds: Sequence[int] = (0,), chunks: int = 20,
             trace_fn: Callable | None = None, eval_fn: Callable | None = None,
             progress: Progress | None = None, aux=None, post_fn: Callable | None = None,
             stop_fn: Callable | None = None):
  """Runs ``steps`` steps of the method ``make_opt(seed)`` on ``n`` simulated
  workers, for every seed at once (vmap over seeds, vmap over workers).

  Args:
    make_opt: seed -> optax transformation (its ``key=`` differs per seed, so
      the compressors' randomness differs per seed).
    x0: initial parameters (any pytree), the same for all seeds and workers.
    grad_fn: (params, key, worker_index, step) -> the worker's gradient; key
      is distinct per (seed, step, worker).
    trace_fn: params -> scalar or dict of scalars, recorded at every step
      (inside the compiled loop; keep it cheap).
    eval_fn: params (numpy pytree, leading seed axis) -> dict, called on the
      host at the end of every chunk.
    aux: optional per-seed data (leading axis = len(seeds)); then grad_fn
      gets it as a fifth argument (e.g. a gradient scale, which for every
      method here is the same as scaling its learning rate).
    post_fn: params -> params applied after every update (e.g. a projection
      onto a constraint set).
    stop_fn: eval_fn's output -> bool, checked at the end of every chunk;
      True ends the run there (the remaining chunks are not run).

  Returns:
    dict with ``trace`` ({name: array (seeds, steps + 1)}), ``chunk_steps``
    (step index at each chunk end, starting with 0), ``uplink`` (the bits of
    a worker's compressed messages, ``comm_bits(...).payload``: what the
    papers count as a worker's uplink) and ``downlink`` (bits received), per
    worker, averaged over workers, arrays (seeds, chunks + 1),
    ``evals`` (list over chunk ends of eval_fn outputs) and ``params`` (final);
    with ``stop_fn``, all of them end at the chunk where it returned True.
  """
  seeds = list(seeds)
  opt = make_opt(seeds[0])
  states = stack_seeds([compopt.parallel.stack(make_opt(s).init(x0), n) for s in seeds])
  params = stack_seeds([compopt.parallel.stack(x0, n)] * len(seeds))
  keys = jnp.stack([jax.random.key_data(jax.random.key(1000 + s)) for s in seeds])

  def as_dict(v):
    return v if isinstance(v, dict) else {"value": v}

  def worker_step(x, s, i, k, t, a):
    g = (grad_fn(x, jax.random.fold_in(k, i), i, t) if aux is None
         else grad_fn(x, jax.random.fold_in(k, i), i, t, a))
    u, s = opt.update(g, s, x)
    x = optax.apply_updates(x, u)
    return (post_fn(x) if post_fn else x), s

  vstep = jax.vmap(worker_step, in_axes=(0, 0, 0, None, None, None), axis_name=AXIS)
  idx = jnp.arange(n)

  def first(x):
    return jax.tree.map(lambda a: a[0], x)

  aux_arr = jnp.zeros(len(seeds)) if aux is None else aux

  def chunk(x, s, kd, a, ts):
    k = jax.random.wrap_key_data(kd)

    def body(c, t):
      x, s = c
      x, s = vstep(x, s, idx, jax.random.fold_in(k, t), t, a)
      out = as_dict(trace_fn(first(x))) if trace_fn else {}
      return (x, s), out

    (x, s), out = jax.lax.scan(body, (x, s), ts)
    return x, s, out

  run_chunk = jax.jit(jax.vmap(chunk, in_axes=(0, 0, 0, 0, None)))
  bounds = np.linspace(0, steps, chunks + 1).round().astype(int)
  trace = None
  if trace_fn:
    trace = {k: [np.asarray(v)[:, None]] for k, v in
             as_dict(jax.vmap(lambda p: trace_fn(first(p)))(params)).items()}
  up, down, evals = [], [], []

  def record():
    b = compopt.comm_bits(states)
    up.append(np.asarray(b.payload, dtype=float).reshape(len(seeds), n).mean(1))
    down.append(np.asarray(b.downlink, dtype=float).reshape(len(seeds), n).mean(1))
    if eval_fn:
      evals.append(eval_fn(jax.tree.map(lambda a: np.asarray(a[:, 0]), params)))

  record()
  done = [0]
  for a, b in zip(bounds[:-1], bounds[1:]):
    if b == a:
      continue
    params, states, out = run_chunk(params, states, keys, aux_arr, jnp.arange(a, b))
    if trace is not None:
      for k, v in out.items():
        trace[k].append(np.asarray(v))
    record()
    done.append(b)
    if progress:
      progress.update(1)
    if stop_fn and stop_fn(evals[-1]):
      break
  return {
      "trace": {k: np.concatenate(v, axis=1) for k, v in trace.items()} if trace else {},
      "chunk_steps": np.asarray(done),
      "uplink": np.stack(up, 1), "downlink": np.stack(down, 1),
      "evals": evals,
      "params": jax.tree.map(lambda a: np.asarray(a[:, 0]), params),
  }


# ----------------------------------------------------------------------- output


def write_csv(path: str, header: Sequence[str], rows: Sequence[Sequence[Any]]):
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    for r in rows:
      w.writerow([f"{v:.6g}" if isinstance(v, (float, np.floating)) else v for v in r])


def write_series_csv(path: str, x_name: str, x, series: dict):
  """One column per series, indexed by x (series may be shorter: blanks)."""
  names = list(series)
  rows = []
  for j, xv in enumerate(x):
    rows.append([xv] + [series[k][j] if j < len(series[k]) else "" for k in names])
  write_csv(path, [x_name] + names, rows)


def write_json(path: str, obj):
  def default(o):
    if isinstance(o, np.ndarray):
      return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
      return o.item()
    raise TypeError(type(o))
  with open(path, "w") as f:
    json.dump(obj, f, indent=1, default=default)


def figure(ncols: int, width: float = 5.0, height: float = 3.8):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
  return fig, list(axes[0])


def save(fig, path: str, title: str | None = None):
  import matplotlib.pyplot as plt
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def out_path(out_dir: str, name: str) -> str:
  os.makedirs(out_dir, exist_ok=True)
  return os.path.join(out_dir, name)
