"""A method's whole update step against optax.sgd with momentum, in one run.

``python -m benchmarks.perf.step [--quick]`` (run through ``python -m
benchmarks.perf``, which sets ``XLA_FLAGS=--xla_force_host_platform_device_count``
before JAX starts, or set it yourself).

Each worker holds the ResNet-18 (CIFAR) parameter tree, 11.2M float32
coordinates in 62 leaves, and its own gradient. One step is ``tx.update`` of
the per-worker gradients (compression, collectives, state) and
``optax.apply_updates``, jitted under ``jax.shard_map`` with one worker per
device of an 8-device mesh. The baseline is data-parallel SGD as optax users
write it: ``lax.pmean`` of the gradients, then ``optax.sgd(lr, momentum=0.9)``.
The table gives each step's median time and its ratio to the baseline,
measured back to back in the same process (target: <= 1.3× for the
elementwise compressors with the scheme ``auto`` picks; COMP-AMS, whose
server step is AMSGrad, is held to ``optax.amsgrad`` after the same pmean).

On a CPU host the 8 "devices" share the machine's cores, so every worker's
compute is serialized onto them: the ratio is the compute overhead of
compression (encode, decode, error feedback), not a network measurement;
bytes on a real network are in ``benchmarks.perf.wire`` and the projection
in ``benchmarks.perf.network``.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import compopt
from benchmarks.perf import harness
from benchmarks.perf import trees
from compopt import compressors as C

AXIS = "data"


def baseline(lr: float = 0.1, optimizer: str = "sgd") -> optax.GradientTransformation:
  """What users run today: the mean gradient over workers, then SGD with
  momentum (or, to compare COMP-AMS with its own server step, AMSGrad)."""
  opt = optax.sgd(lr, momentum=0.9) if optimizer == "sgd" else optax.amsgrad(lr)
  return optax.chain(optax.stateless(lambda u, p: jax.lax.pmean(u, AXIS)), opt)


def methods(quick: bool = False) -> dict[str, tuple[Callable[[Any], Any], bool]]:
  """name -> (scheme -> GradientTransformation, elementwise?)."""
  table = {
      "P-SGD, momentum (compopt.psgd)": (
          lambda s: compopt.psgd(0.1, momentum=0.9, axis_name=AXIS), False),
      "EF-SignSGD (scaled sign)": (
          lambda s: compopt.ef_signsgd(0.1, axis_name=AXIS, scheme=s, zeros="plus"), True),
      "DCSGD natural, momentum": (
          lambda s: compopt.dcsgd(0.1, compressor=C.natural(), momentum=0.9,
                                  axis_name=AXIS, scheme=s), True),
      "DCSGD qsgd(16), momentum": (
          lambda s: compopt.dcsgd(0.1, compressor=C.qsgd(16), momentum=0.9,
                                  axis_name=AXIS, scheme=s), True),
      "COMP-AMS block_sign": (
          lambda s: compopt.comp_ams(1e-3, compressor=C.block_sign(), axis_name=AXIS,
                                     scheme=s), True),
      "EF-SGD top_k 1%": (
          lambda s: compopt.ef_sgd(0.1, compressor=C.top_k(ratio=0.01), axis_name=AXIS,
                                   scheme=s), False),
      "EF-SGD top_k 1%, block 1024": (
          lambda s: compopt.ef_sgd(0.1, compressor=C.top_k(ratio=0.01, block_size=1024),
                                   axis_name=AXIS, scheme=s), False),
      # the methods of other systems
      "DCSGD cast(float16, scale), momentum": (
          lambda s: compopt.dcsgd(0.1, compressor=C.cast("float16", scale=True), momentum=0.9,
                                  axis_name=AXIS, scheme=s), True),
      "1-bit SGD (onebit), momentum": (
          lambda s: compopt.onebit_sgd(0.1, momentum=0.9, axis_name=AXIS, scheme=s), False),
      "Strom: EF-SGD threshold 1%": (
          lambda s: compopt.ef_sgd(0.1, compressor=C.threshold(1e-3, ratio=0.01),
                                   axis_name=AXIS, scheme=s), False),
      "DGC 0.1%": (
          lambda s: compopt.dgc(0.1, ratio=0.001, axis_name=AXIS, scheme=s), False),
      "PowerSGD rank 4, momentum": (
          lambda s: compopt.powersgd(0.1, rank=4, momentum=0.9, axis_name=AXIS, scheme=s),
          False),

  }
  if quick:
    keep = ("P-SGD, momentum (compopt.psgd)", "EF-SignSGD (scaled sign)",
            "DCSGD natural, momentum")
    table = {k: v for k, v in table.items() if k in keep}
  return table


def _step_fn(tx, mesh, n):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return compopt.parallel.shard_map(step, mesh, AXIS)


def time_step(tx, params, grads, mesh, n: int, reps: int) -> tuple[float, float]:
  """(median seconds of one step, seconds to compile and run the first)."""
  import time
  state = compopt.parallel.shard(compopt.parallel.stack(tx.init(params), n), mesh, AXIS)
  params_n = compopt.parallel.shard(compopt.parallel.stack(params, n), mesh, AXIS)
  fn = _step_fn(tx, mesh, n)
  t0 = time.perf_counter()
  jax.block_until_ready(fn(params_n, state, grads))
  first = time.perf_counter() - t0
  return harness.time_call(lambda: fn(params_n, state, grads), reps=reps, warmup=1,
                           max_seconds=20.0), first


def run(quick: bool = False, n: int = 8, reps: int = 5,
        schemes: Sequence[str] = ("allgather", "allreduce", "two_phase", "auto"),
        only: Sequence[str] | None = None) -> list[dict]:
  """Rows of seconds per step and the ratio to the baseline, for every method
  of :func:`methods` (those whose name starts with one of ``only``, if given)
  and scheme."""
  if jax.device_count() < n:
    raise RuntimeError(
        f"step benchmark needs {n} devices, JAX sees {jax.device_count()}: set "
        f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before JAX starts "
        "(python -m benchmarks.perf does)")
  mesh = jax.make_mesh((n,), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:n])
  params = trees.flat_tree(1_000_000) if quick else trees.resnet18_tree()
  d = sum(x.size for x in jax.tree.leaves(params))
  rng = np.random.default_rng(1)
  grads = jax.tree.map(
      lambda p: jnp.asarray(rng.standard_normal((n,) + p.shape).astype(np.float32) * 1e-2),
      params)
  grads = compopt.parallel.shard(grads, mesh, AXIS)
  # The baselines are timed first and again last; the faster of the two is
  # used (the first runs of a process pay for fresh memory), which makes
  # every ratio conservative.
  base_s, _ = time_step(baseline(), params, grads, mesh, n, reps)
  ams_s, _ = time_step(baseline(1e-3, "amsgrad"), params, grads, mesh, n, reps)
  rows = []
  for name, (make, elementwise) in methods(quick).items():
    if only and not any(name.startswith(o) for o in only):
      continue
    for scheme in (("allreduce",) if name.startswith("P-SGD") else schemes):
      tx = make(scheme)
      s, first = time_step(tx, params, grads, mesh, n, reps)
      rows.append(dict(method=name, scheme=scheme, seconds=s, d=d, compile_s=first,
                       elementwise=elementwise))
  base_s = min(base_s, time_step(baseline(), params, grads, mesh, n, reps)[0])
  ams_s = min(ams_s, time_step(baseline(1e-3, "amsgrad"), params, grads, mesh, n, reps)[0])
  for row in rows:
    row["ratio"] = row["seconds"] / base_s
    if row["method"].startswith("COMP-AMS"):  # its server step is AMSGrad, not SGD
      row["own_ratio"] = row["seconds"] / ams_s
  head = [dict(method="optax.sgd(momentum=0.9) after lax.pmean (baseline)", scheme="allreduce",
               seconds=base_s, ratio=1.0, d=d, elementwise=False),
          dict(method="optax.amsgrad after lax.pmean", scheme="allreduce", seconds=ams_s,
               ratio=ams_s / base_s, d=d, elementwise=False)]
  return head + rows


def table(rows: list[dict]) -> str:
  out = []
  for r in rows:
    target = ""
    if r["elementwise"] and r["scheme"] == "auto":
      ratio = r.get("own_ratio", r["ratio"])
      target = f"<= 1.3×: {'PASS' if ratio <= 1.3 else 'FAIL'}"
    own = f"{r['own_ratio']:.2f} (vs optax.amsgrad)" if "own_ratio" in r else ""
    out.append([r["method"], r["scheme"], f"{r['seconds'] * 1e3:.1f}", f"{r['ratio']:.2f}",
                own, target])
  header = ["method", "scheme", "ms / step", "× optax.sgd baseline", "× same optimizer",
            "target"]
  d = rows[0]["d"] if rows else 0
  return (f"Update step on {d:,} float32 parameters per worker, 8 workers (shard_map, "
          f"one per CPU device); ratio to the baseline measured in the same run.\n\n"
          + harness.markdown_table(header, out))


def main(argv: Sequence[str] | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.perf.step",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="a 1M tree, 3 methods, 3 reps")
  args = parser.parse_args(argv)
  rows = run(quick=args.quick, reps=3 if args.quick else 5)
  print(table(rows))
  return rows


if __name__ == "__main__":
  main()
