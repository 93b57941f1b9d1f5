"""Simulated scale: 1,024 workers as one ``jax.vmap`` axis on one CPU.

``python -m benchmarks.perf.scale [--quick]``

A least-squares problem with d = 10,000 unknowns; worker i holds its own 8
rows A_i, b_i (1,024 × 8 × 10,000 float32 = 328 MB), computes g_i =
A_iᵀ(A_i x − b_i) and the method averages the compressed g_i over the 1,024
slots of the vmap axis. We report steps per second of the jitted
(gradient + update) step.

With ``allgather`` every simulated worker would decode all 1,024 payloads:
1,024² decodes of 10,000 coordinates (a 42 GB intermediate) per step, so it
is not run at this n; ``auto`` picks ``allreduce`` (each worker decodes its
own payload, then a dense psum), and ``two_phase`` decodes 1,024 chunks of
10 coordinates per worker.
"""

from __future__ import annotations

import argparse
from typing import Sequence

import jax
import jax.numpy as jnp
import optax

import compopt
from benchmarks.perf import harness
from compopt import compressors as C

AXIS = "workers"


def methods() -> dict:
  return {
      "P-SGD": lambda s: compopt.psgd(1e-4, axis_name=AXIS),
      "DCSGD natural": lambda s: compopt.dcsgd(1e-4, compressor=C.natural(), axis_name=AXIS,
                                               scheme=s),
      "EF-SignSGD": lambda s: compopt.ef_signsgd(1e-4, axis_name=AXIS, scheme=s, zeros="plus"),
      "EF-SGD top_k 1%": lambda s: compopt.ef_sgd(1e-4, compressor=C.top_k(ratio=0.01),
                                                  axis_name=AXIS, scheme=s),
  }


def run(n: int = 1024, d: int = 10_000, rows: int = 8, reps: int = 5,
        names: Sequence[str] | None = None) -> list[dict]:
  """Steps per second of each method (``names``: a subset of :func:`methods`)."""
  key = jax.random.key(0)
  a = jax.random.normal(key, (n, rows, d), jnp.float32) / jnp.sqrt(d)
  b = jax.random.normal(jax.random.fold_in(key, 1), (n, rows), jnp.float32)
  x0 = jnp.zeros((d,), jnp.float32)
  out = []
  for name, make in methods().items():
    if names is not None and name not in names:
      continue
    for scheme in (("auto",) if name == "P-SGD" else ("auto", "two_phase")):
      tx = make(scheme)
      state = compopt.parallel.stack(tx.init(x0), n)
      params = compopt.parallel.stack(x0, n)

      def worker(x, s, a_i, b_i, tx=tx):
        g = a_i.T @ (a_i @ x - b_i)
        u, s = tx.update(g, s, x)
        return optax.apply_updates(x, u), s

      step = jax.jit(jax.vmap(worker, axis_name=AXIS))
      seconds = harness.time_call(lambda: step(params, state, a, b), reps=reps,
                                  max_seconds=20.0)
      out.append(dict(method=name, scheme=scheme, n=n, d=d, seconds=seconds,
                      steps_per_second=1.0 / seconds))
  return out


def table(rows: list[dict]) -> str:
  header = ["method", "scheme", "workers", "d", "ms / step", "steps / s"]
  body = [[r["method"], r["scheme"], f"{r['n']:,}", f"{r['d']:,}",
           f"{r['seconds'] * 1e3:.1f}", f"{r['steps_per_second']:.1f}"] for r in rows]
  return harness.markdown_table(header, body)


def main(argv: Sequence[str] | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.perf.scale",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="128 workers, 3 reps")
  args = parser.parse_args(argv)
  rows = run(n=128, reps=3) if args.quick else run()
  print(table(rows))
  return rows


if __name__ == "__main__":
  main()
