r"""Time to accuracy over real sockets, under bandwidth caps.

``python -m benchmarks.sockets [--quick] [--out DIR] [--caps uncapped,10gbit,1gbit,100mbit]
[--delay_ms MS] [--processes 4] [--methods a,b,...]``

P processes (``examples.launch``; jax.distributed, gloo over TCP, one CPU
device and one worker each) train an MLP on MNIST data-parallel. Run as root
where ``unshare`` exists, the benchmark first moves into a network namespace
of its own (``unshare -n``), brings its loopback up and, for each cap, shapes
that loopback with ``tc`` (a token bucket at the cap, optionally behind a
netem delay): nothing outside the namespace is touched. Elsewhere it runs
uncapped on the machine's loopback and says so. All P processes share the
one loopback, so a cap of B bit/s is shared by all their traffic (on a real
cluster each worker has its own link).

Stages:

1. ``steps``: :mod:`benchmarks.sockets.worker` times each (method, scheme)
   under each cap, splits the step into compute, encode, collectives, decode
   and the rest (update), and compares the bytes loopback carried with what
   ``compopt.comm_bits`` counted.
2. ``curves``: test accuracy against steps for each method's numerics
   (:mod:`benchmarks.sockets.curves`; the iterates do not depend on the link).
   The target accuracy is fixed before the run: the baseline's accuracy after
   ``--target_step`` steps.
3. Time to the target at each cap = the steps a method needs x its step time
   under that cap. Output in ``--out`` (default ``benchmarks/sockets/results``,
   ``--quick``: a temporary directory unless given): ``results.md`` (a table
   per cap), ``sockets.png`` (test accuracy against seconds, a panel per cap)
   and ``sockets.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
_NETNS_ENV = "COMPOPT_SOCKETS_NETNS"

CAPS = {  # name -> tc rate in bit/s (None: uncapped)
    "uncapped": None, "10gbit": 10e9, "1gbit": 1e9, "100mbit": 100e6,
}


def _parser():
  p = argparse.ArgumentParser(prog="python -m benchmarks.sockets", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true",
                 help="a tiny MLP, four variants, caps uncapped and 1gbit (about a minute)")
  p.add_argument("--out", default=None,
                 help="output directory (default: a temporary one with --quick, else "
                      "benchmarks/sockets/results)")
  p.add_argument("--caps", default=None, help="comma-separated, from " + ", ".join(CAPS))
  p.add_argument("--delay_ms", type=float, default=0.0, help="netem delay under each cap")
  p.add_argument("--processes", type=int, default=4, help="worker processes (one worker each)")
  p.add_argument("--methods", default=None, help="comma-separated keys of runs.METHODS")
  p.add_argument("--target_step", type=int, default=None,
                 help="the target accuracy is the baseline's after this many steps")
  p.add_argument("--no_namespace", action="store_true",
                 help="do not make a network namespace (uncapped only)")
  p.add_argument("--timeout", type=float, default=3600.0, help="seconds for the workers")
  return p


def _enter_namespace(argv) -> str | None:
  """Re-executes this command in a new network namespace when possible;
  returns None inside it (loopback up), else why it runs uncapped."""
  if os.environ.get(_NETNS_ENV) == "1":
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    return None
  missing = [t for t in ("unshare", "ip", "tc") if shutil.which(t) is None]
  if hasattr(os, "geteuid") and os.geteuid() != 0:
    return "not root: no network namespace, so no caps; uncapped on the machine's loopback"
  if missing:
    return f"{', '.join(missing)} not found: uncapped on the machine's loopback"
  probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False)
  if probe.returncode != 0:
    return (f"unshare -n failed ({probe.stderr.decode().strip()}): uncapped on the "
            "machine's loopback")
  env = dict(os.environ, **{_NETNS_ENV: "1"})
  sys.stdout.flush()
  os.execvpe("unshare", ["unshare", "-n", "--", sys.executable, "-m", "benchmarks.sockets",
                         *argv], env)
  return None  # not reached


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  args = _parser().parse_args(argv)
  note = None if args.no_namespace else _enter_namespace(argv)
  if args.no_namespace:
    note = "--no_namespace: uncapped on the machine's loopback"
  in_namespace = os.environ.get(_NETNS_ENV) == "1" and not args.no_namespace

  from benchmarks.sockets import report  # pylint: disable=import-outside-toplevel
  from benchmarks.sockets import runs  # pylint: disable=import-outside-toplevel
  from examples import launch  # pylint: disable=import-outside-toplevel

  quick = args.quick
  caps = (args.caps.split(",") if args.caps else
          (["uncapped", "1gbit"] if quick else list(CAPS)))
  unknown = [c for c in caps if c not in CAPS]
  if unknown:
    raise SystemExit(f"--caps: unknown {unknown}; choose from {list(CAPS)}")
  if not in_namespace:
    dropped = [c for c in caps if CAPS[c] is not None]
    caps = ["uncapped"]
    if dropped:
      print(f"note: {note}; caps {dropped} skipped", flush=True)
  methods = (args.methods.split(",") if args.methods else
             list(runs.QUICK_METHODS if quick else runs.METHODS))
  if "dense" not in methods:
    methods = ["dense"] + methods
  out = args.out or (tempfile.mkdtemp(prefix="sockets-") if quick else
                     os.path.join(HERE, "results"))
  os.makedirs(out, exist_ok=True)
  steps_path = os.path.join(out, "steps.jsonl")
  if os.path.exists(steps_path):
    os.remove(steps_path)
  size = "quick" if quick else "full"
  spec = {
      "size": size, "test_size": 2000, "batch": 64, "seed": 0, "reps": 3 if quick else 5,
      "measure_auto": True,
      "variants": runs.variants(methods, runs.QUICK_SCHEMES if quick else None),
      "caps": [{"name": c, "steps": _timed_steps(c, quick),
                "tc": None if CAPS[c] is None else {"rate_bits": CAPS[c],
                                                    "delay_ms": args.delay_ms}}
               for c in caps],
  }
  with open(os.path.join(out, "spec.json"), "w") as f:
    json.dump(spec, f, indent=1)
  print(f"{args.processes} processes, {len(spec['variants'])} variants, caps {caps}"
        + ("" if in_namespace else f" ({note})"), flush=True)
  code = launch.launch("benchmarks.sockets.worker", args.processes,
                       args=["--spec", os.path.join(out, "spec.json"), "--out", out],
                       timeout=args.timeout, cwd=os.path.dirname(os.path.dirname(HERE)))
  if code != 0:
    raise SystemExit(f"the worker processes failed (exit code {code})")
  with open(steps_path) as f:
    steps = [json.loads(line) for line in f if line.strip()]
  target_step = args.target_step or (30 if quick else 100)
  result = report.finish(steps, spec, out=out, processes=args.processes,
                         target_step=target_step, note=None if in_namespace else note,
                         delay_ms=args.delay_ms)
  print(result["table"])
  print(f"\nwritten: {result['paths']}")


def _timed_steps(cap: str, quick: bool) -> int:
  if quick:
    return 3
  return {"uncapped": 6, "10gbit": 6, "1gbit": 3, "100mbit": 1}[cap]


if __name__ == "__main__":
  main()
