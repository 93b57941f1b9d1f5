"""``python -m benchmarks.perf [--quick] [--only SECTION ...] [--out DIR]``

Runs the performance benchmarks (README.md here) and prints their tables:

* ``throughput``: compressor GB/s next to a jitted copy and a read-only
  reduction, 1M and 11M coordinates, float32 and bfloat16;
* ``peers``: the same compressors as PyTorch users run them (GRACE, Horváth
  et al.), same tensors, same harness (needs PyTorch; skipped without);
* ``step``: a method's whole update step against optax.sgd with momentum,
  ResNet-18-shaped tree, shard_map over 8 CPU devices;
* ``wire``: bytes per worker from compiled HLO for n = 2..32 and every scheme;
* ``network``: projected step time at 1/10/100 Gbit/s for 8–1024 workers
  (figure ``network.png``);
* ``scale``: steps per second with 1,024 vmap-simulated workers.

Writes ``perf.md`` (all tables), ``perf.json`` and ``network.png`` into
``--out`` (default ``benchmarks/perf/results``).
"""

from __future__ import annotations

import os

# 32 CPU devices for the wire table (n up to 32) and the 8-device step; JAX
# reads this once, when it starts, so it is set before anything imports it.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                             + " --xla_force_host_platform_device_count=32").strip()

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import jax  # noqa: E402

SECTIONS = ("throughput", "peers", "step", "wire", "network", "scale")


def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (int, float, str, bool)) or x is None:
    return x
  try:
    return float(x)
  except (TypeError, ValueError):
    return str(x)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.perf",
                                   description="compopt performance benchmarks",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="small sizes, few reps (smoke run)")
  parser.add_argument("--only", nargs="+", choices=SECTIONS, default=None,
                      help="run these sections only")
  parser.add_argument("--out", default=os.path.join("benchmarks", "perf", "results"),
                      help="directory for the tables (perf.md) and JSON")
  args = parser.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  sections = args.only or list(SECTIONS)
  quick = ["--quick"] if args.quick else []
  header = (f"# compopt performance\n\nMachine: {platform.machine()}, {os.cpu_count()} CPU "
            f"cores, JAX {jax.__version__} on {jax.devices()[0].platform} "
            f"({jax.device_count()} devices). Mode: {'--quick' if args.quick else 'full'}.\n")
  print(header)
  md, results, failed = [header], {}, []
  for name in sections:
    t0 = time.time()
    print(f"\n## {name}\n", flush=True)
    try:
      if name == "throughput":
        from benchmarks.perf import throughput as mod
      elif name == "peers":
        try:
          import torch  # noqa: F401
        except ImportError:
          print("PyTorch is not installed: pip install -e '.[perf]' (skipped)")
          md.append(f"\n## {name}\n\nskipped: PyTorch is not installed\n")
          continue
        from benchmarks.perf import peers as mod
      elif name == "step":
        from benchmarks.perf import step as mod
      elif name == "wire":
        from benchmarks.perf import wire as mod
      elif name == "network":
        from benchmarks.perf import network as mod
      else:
        from benchmarks.perf import scale as mod
      extra = ["--out", args.out] if name == "network" else []
      rows = mod.main(quick + extra)
      results[name] = rows
      text = mod.table(rows) if hasattr(mod, "table") else None
      if name == "network":
        text = mod.projection_table(rows) + "\n\n![projected step time](network.png)"
      md.append(f"\n## {name} ({time.time() - t0:.0f} s)\n\n{text}\n")
    except Exception:  # a failing section must not hide the others' tables
      traceback.print_exc()
      failed.append(name)
      md.append(f"\n## {name}\n\nFAILED (traceback on stderr)\n")
  with open(os.path.join(args.out, "perf.md"), "w") as f:
    f.write("\n".join(md))
  with open(os.path.join(args.out, "perf.json"), "w") as f:
    json.dump(_jsonable(results), f, indent=1)
  print(f"\nwrote {os.path.join(args.out, 'perf.md')}")
  return 1 if failed else 0


if __name__ == "__main__":
  raise SystemExit(main())
