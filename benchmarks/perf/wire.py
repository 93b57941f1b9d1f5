"""Wire bytes per worker and step, read from compiled XLA programs.

``python -m benchmarks.perf.wire [--quick]`` (through ``python -m
benchmarks.perf``, which gives JAX 32 CPU devices).

For the ResNet-18 (CIFAR) gradient tree (11.2M float32 coordinates, 62
leaves), each compressor and each exchange scheme, the exchange of one step
(``compopt``'s communication layer, as every method calls it) is compiled
under ``jax.shard_map`` on n = 2, 4, 8, 16 and 32 devices, and the operand
bytes of every collective in the compiled HLO are read out
(``benchmarks.perf.hlo``). Bytes each worker *receives* follow from the operand
bytes B of each collective (ring algorithms; what it sends is the same):

* all-gather: (n − 1)·B (everybody else's buffer);
* all-to-all: (n − 1)/n·B (B holds one row per destination);
* all-reduce: 2(n − 1)/n·B (reduce-scatter, then all-gather).

The dense baseline is the all-reduce of the float32 gradient, 2(n − 1)/n·D.
``allgather`` grows linearly in n; ``two_phase`` stays flat (< 2P, and < P +
P_s with a server compressor), ``allreduce`` is the dense all-reduce.
"""

from __future__ import annotations

import argparse
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from benchmarks.perf import harness
from benchmarks.perf import hlo
from benchmarks.perf import trees
from compopt import compressors as C
from compopt import exchange
from compopt._src import comm

NS = (2, 4, 8, 16, 32)


def compressors() -> dict:
  return {
      "top_k 1%": C.top_k(ratio=0.01),
      "top_k 1%, block 1024": C.top_k(ratio=0.01, block_size=1024),
      "scaled_sign": C.scaled_sign(),
      "natural": C.natural(),
      "qsgd(16)": C.qsgd(16),
      "terngrad": C.terngrad(),
  }


def schemes(compressor) -> dict:
  return {
      "allgather": exchange.allgather(),
      "allreduce": exchange.allreduce(),
      "two_phase (dense phase 2)": exchange.two_phase(),
      "two_phase (server C, EF)": exchange.two_phase(compressor),
  }


def received_bytes(per_kind: dict[str, int], n: int) -> float:
  """Bytes one worker receives, from the operand bytes per collective kind."""
  factor = {"all-gather": n - 1, "all-to-all": (n - 1) / n, "all-reduce": 2 * (n - 1) / n,
            "reduce-scatter": (n - 1) / n, "collective-permute": 1}
  return sum(factor[k] * b for k, b in per_kind.items())


def exchange_hlo_bytes(compressor, scheme, shapes, n: int) -> dict[str, int]:
  """Operand bytes per collective kind of one compiled exchange on n devices."""
  mesh = jax.make_mesh((n,), ("w",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:n])

  def one_worker(tree, key):
    tree = jax.tree.map(lambda a: a[0], tree)
    out = comm.exchange(compressor, tree, key, "w", scheme=scheme, state=scheme.init(tree),
                        owner="exchange_hlo_bytes")
    return jax.tree.map(lambda a: a[None], out.mean)

  fn = jax.shard_map(one_worker, mesh=mesh, in_specs=(P("w"), P()), out_specs=P("w"))
  args = (jax.tree.map(lambda s: jax.ShapeDtypeStruct((n,) + s.shape, s.dtype), shapes),
          jax.ShapeDtypeStruct((2,), jnp.uint32))
  return hlo.collective_bytes(jax.jit(fn).lower(*args).compile().as_text())


def run(ns: Sequence[int] = NS, quick: bool = False) -> list[dict]:
  if jax.device_count() < max(ns):
    raise RuntimeError(
        f"wire benchmark needs {max(ns)} devices, JAX sees {jax.device_count()}: set "
        f"XLA_FLAGS=--xla_force_host_platform_device_count={max(ns)} before JAX starts")
  shapes = trees.resnet18_shapes()
  d = sum(s.size for s in jax.tree.leaves(shapes))
  dense = 4 * d
  rows = []
  comps = compressors()
  if quick:
    comps = {k: comps[k] for k in ("top_k 1%", "scaled_sign")}
  for name, c in comps.items():
    payload = C.tree_wire_bits(c, shapes) / 8
    for sname, scheme in schemes(c).items():
      for n in ns:
        per_kind = exchange_hlo_bytes(c, scheme, shapes, n)
        got = received_bytes(per_kind, n)
        rows.append(dict(compressor=name, scheme=sname, n=n, payload_bytes=payload,
                         hlo_operand_bytes=per_kind, received_bytes=got,
                         dense_bytes=received_bytes({"all-reduce": dense}, n),
                         model_bytes=scheme.bytes_per_worker(payload, dense, n)))
  return rows


def table(rows: list[dict], ns: Sequence[int] = NS) -> str:
  """A line per compressor and scheme: MB received per worker at each n, and
  (in brackets) how many times less than the dense all-reduce."""
  ns = sorted({r["n"] for r in rows})
  out, seen = [], {}
  for r in rows:
    seen.setdefault((r["compressor"], r["scheme"]), {})[r["n"]] = r
  dense_line = ["dense float32 (all-reduce)", "allreduce"]
  first = next(iter(seen.values()))
  for n in ns:
    dense_line.append(f"{first[n]['dense_bytes'] / 1e6:.2f}")
  out.append(dense_line)
  for (cname, sname), by_n in seen.items():
    line = [cname, sname]
    for n in ns:
      r = by_n[n]
      line.append(f"{r['received_bytes'] / 1e6:.2f} ({r['dense_bytes'] / r['received_bytes']:.1f}×)")
    out.append(line)
  header = ["compressor", "scheme"] + [f"n = {n}: MB (dense/this)" for n in ns]
  return ("MB each worker receives per step (= sends), from the compiled HLO of the "
          "exchange of a ResNet-18 gradient (11.2M float32).\n\n"
          + harness.markdown_table(header, out))


def main(argv: Sequence[str] | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.perf.wire",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="n = 2 and 8, two compressors")
  args = parser.parse_args(argv)
  rows = run(ns=(2, 8) if args.quick else NS, quick=args.quick)
  print(table(rows))
  return rows


if __name__ == "__main__":
  main()
