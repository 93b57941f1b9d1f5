r"""Projected step time of data-parallel training, with and without compression.

``python -m benchmarks.perf.network [--quick] [--out DIR] [--t-grad SECONDS]``

What is measured, on this machine, on one worker (a plain ``jax.jit``, no
collectives): for each compressor, the seconds ``E`` of ``encode`` and ``Dec``
of ``decode`` of one payload of the whole gradient tree (ResNet-18, CIFAR,
11.2M float32 coordinates; a flat 1M vector with ``--quick``), and the exact
payload size ``P = tree_wire_bits / 8`` bytes. ``D = 4·d`` is the dense
float32 gradient in bytes. Everything else is the α-β model of
:mod:`compopt.exchange` with ring algorithms.

With n workers, α the latency of one message and β the bandwidth of each
worker's link in bytes/s, the time of one step is::

    T(C, scheme, n) = t_grad + T_compute + T_comm

    scheme      T_compute                 T_comm (ring)
    ----------  ------------------------  -------------------------------------
    allgather   E + n·Dec                 (n − 1)·α + (n − 1)·P/β
    allreduce   E + Dec                   2(n − 1)·α + 2(n − 1)/n·D/β
    two_phase   E·(1 + 1/n) + 2·Dec       2(n − 1)·α + 2(n − 1)/n·P/β

    dense       0                         2(n − 1)·α + 2(n − 1)/n·D/β
    (baseline: an uncompressed ring all-reduce of the float32 gradient)

and the speedup of (C, scheme) is T_dense / T(C, scheme, n); the best scheme
of a compressor is the one with the smallest T at that n and network.
``T_comm`` is ``scheme.seconds(P, D, n, network, server_payload_bytes=P)`` of
:mod:`compopt.exchange` (``--topology tree`` swaps in its recursive
doubling/halving and Bruck formulas: ⌈log2 n⌉ steps instead of n − 1).

* ``allgather``: every worker sends its payload and receives the n − 1 others,
  then decodes all n payloads (its own included) to average them.
* ``allreduce``: each worker decodes its own payload and the dense results are
  summed by a ring all-reduce (reduce-scatter + all-gather): the same bytes as
  dense plus E + Dec, so it never beats dense; it is listed because it is
  what ``compopt.exchange.auto`` falls back to when P > 2D/n.
* ``two_phase`` (DeepSpeed's 1-bit Adam, Bagua): the vector is cut into n
  chunks; each worker encodes every chunk (one full ``E``), an all-to-all
  sends chunk j to its owner j ((n − 1)/n·P each way), the owner decodes the
  n payloads of its chunk (n·Dec/n = one full ``Dec``), re-encodes the mean
  chunk with the same compressor on the server side (``E/n``; server payload
  P_s = P, so P/n per chunk) and an all-gather of the n server chunks
  ((n − 1)/n·P received) is decoded by everyone (one more full ``Dec``).

Assumptions:

* links are full duplex: a worker sends and receives β bytes/s at once, so a
  collective costs the bytes each worker *receives* over β;
* α is paid once per message, i.e. once per step of a ring algorithm
  (n − 1 steps for all-gather and all-to-all, 2(n − 1) for all-reduce), the
  network is homogeneous and has no contention beyond the ring's;
* no overlap: compute (encode, decode), communication and ``t_grad`` run one
  after the other (DDP-style bucketing would hide part of the all-reduce
  behind the backward pass, which helps the dense baseline most);
* decode cost is linear in the number of payloads: decoding n payloads (and
  summing them) costs n·Dec, each ``Dec`` including the write of a dense
  vector of the decoded chunk's size; the ring all-reduce's own float32 adds
  are free;
* ``E`` and ``Dec`` are those of one worker on *this* machine (on a CPU, far
  larger than on an accelerator), for the whole tree, leaf by leaf; in
  ``two_phase`` the same costs and payload size are assumed for the
  chunk-wise compression of the flattened vector (the wire bits differ by a
  few index bits and per-chunk scales);
* ``t_grad`` (the forward/backward time, ``--t-grad``, default 0) is the same
  for all schemes: with the default the figures show the optimizer's
  compression plus communication part of a step only, which is what
  compression can change.

Outputs (in ``--out``, default ``benchmarks/perf/results``): ``network.png``
(one panel per bandwidth, projected seconds per step against the number of
workers, a line per compressor at its best scheme plus dense; the marker
names the scheme) and ``network.json`` (measured costs, every projected row
and the configuration).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
from typing import Any, Sequence

import jax

import compopt
from compopt import compressors as cc
from compopt import exchange

from benchmarks.perf import harness
from benchmarks.perf import trees

SCHEMES: dict[str, exchange.Scheme] = {
    "allgather": exchange.allgather(),
    "allreduce": exchange.allreduce(),
    "two_phase": exchange.two_phase(),  # server payload passed explicitly (= P)
}
DENSE = "dense"
DEFAULT_NS = tuple(2**i for i in range(3, 11))  # 8 .. 1024
DEFAULT_BANDWIDTHS_GBPS = (1.0, 10.0, 100.0)
DEFAULT_LATENCY_US = 10.0
TABLE_NS = (8, 64, 1024)
QUICK_D = 1 << 20
_MARKERS = {"allgather": "o", "allreduce": "s", "two_phase": "^"}
_REL_TIE = 1e-9  # totals this close are a tie, broken by the order of SCHEMES


def default_compressors() -> dict[str, cc.Compressor]:
  """The handful of compressors ``main`` measures (the dense baseline is added)."""
  c = compopt.compressors
  return {
      "top_k 1%": c.top_k(ratio=0.01),
      "top_k 1%, block 1024": c.top_k(ratio=0.01, block_size=1024),
      "rand_k 1%": c.rand_k(ratio=0.01),
      "scaled_sign": c.scaled_sign(),
      "natural": c.natural(),
      "qsgd(16)": c.qsgd(16),
  }


def _num_coords(tree: Any) -> int:
  return sum(math.prod(l.shape) for l in jax.tree.leaves(tree))


# -------------------------------------------------------------------- measure


def measure(tree: Any, compressors: dict[str, cc.Compressor], reps: int = 3,
            seed: int = 0) -> list[dict]:
  """Encode and decode seconds and payload bytes of each compressor on ``tree``.

  Each compressor's ``encode(key, tree)`` and ``decode(payload, tree, key=key)``
  of the whole tree are jitted (one worker, no collectives) and timed with
  :func:`benchmarks.perf.harness.time_call` (median of ``reps``, after two
  warm-up runs). A ``"dense"`` row comes first: no encode or decode, payload
  = D; an entry of ``compressors`` named ``"dense"`` is ignored.

  Args:
    tree: a pytree of arrays (the gradient of one worker).
    compressors: name -> compressor.
    reps: timed runs of each call.
    seed: seed of the key given to ``encode``/``decode``.

  Returns:
    One dict per compressor, ``"dense"`` first, with ``name``, ``coords`` (d),
    ``encode_s``, ``decode_s``, ``payload_bytes`` (``tree_wire_bits / 8``),
    ``payload_array_bytes`` (the bytes of the payload's arrays as JAX holds
    them, a cross-check) and ``dense_bytes`` (D = 4·d, float32).
  """
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
  d = _num_coords(tree)
  dense_bytes = 4.0 * d
  rows = [dict(name=DENSE, coords=d, encode_s=0.0, decode_s=0.0, payload_bytes=dense_bytes,
               payload_array_bytes=dense_bytes, dense_bytes=dense_bytes)]
  key = jax.random.key(seed)
  for name, c in compressors.items():
    if name == DENSE:
      continue
    enc = jax.jit(lambda k, t, c=c: c.encode(k, t))
    dec = jax.jit(lambda p, k, c=c: c.decode(p, shapes, key=k))
    payload = jax.block_until_ready(enc(key, tree))
    encode_s = harness.time_call(lambda: enc(key, tree), reps=reps)
    decode_s = harness.time_call(lambda: dec(payload, key), reps=reps)
    rows.append(dict(
        name=name, coords=d, encode_s=encode_s, decode_s=decode_s,
        payload_bytes=cc.tree_wire_bits(c, shapes) / 8,
        payload_array_bytes=float(sum(l.nbytes for l in jax.tree.leaves(payload))),
        dense_bytes=dense_bytes))
  return rows


# -------------------------------------------------------------------- project


def compute_seconds(scheme: str, encode_s: float, decode_s: float, n: int) -> float:
  """Per-worker compute of one exchange (see the module docstring).

  ``allgather``: E + n·Dec; ``allreduce``: E + Dec; ``two_phase``:
  E·(1 + 1/n) + 2·Dec (worker encode of n chunks, owner decode of n chunk
  payloads, owner re-encode of its 1/n chunk, decode of the n server chunks).
  """
  if scheme == "allgather":
    return encode_s + n * decode_s
  if scheme == "allreduce":
    return encode_s + decode_s
  if scheme == "two_phase":
    return encode_s * (1 + 1 / n) + 2 * decode_s
  raise ValueError(f"compute_seconds: unknown scheme {scheme!r}; choose one of {list(SCHEMES)}")


def dense_seconds(dense_bytes: float, n: int, network: exchange.Network,
                  t_grad: float = 0.0) -> float:
  """The baseline: ``t_grad`` + a ring all-reduce of D, no compute."""
  return t_grad + SCHEMES["allreduce"].seconds(dense_bytes, dense_bytes, n, network)


def project(measured: Sequence[dict], ns: Sequence[int],
            networks: Sequence[exchange.Network], t_grad: float = 0.0) -> list[dict]:
  """Projected seconds per step of every (compressor, scheme, n, network).

  Args:
    measured: rows of :func:`measure` (``name``, ``encode_s``, ``decode_s``,
      ``payload_bytes``, ``dense_bytes``).
    ns: numbers of workers.
    networks: the networks to model.
    t_grad: seconds of the forward/backward pass added to every step,
      compressed or dense (default 0: the optimizer's compression and
      communication part of the step only).

  Returns:
    One dict per (compressor, network, n, scheme) with ``compressor``,
    ``scheme``, ``n``, ``bandwidth_gbps``, ``latency_us``, ``topology``,
    ``payload_bytes``, ``dense_bytes``, ``t_grad``, ``compute_s``,
    ``comm_s``, ``total_s`` (= t_grad + compute_s + comm_s), ``dense_s`` (the
    baseline's total), ``speedup`` (dense_s / total_s) and ``best`` (True for
    the scheme with the smallest ``total_s`` of that compressor, n and
    network; ties go to the first of allgather, allreduce, two_phase).
  """
  rows = []
  for m in measured:
    p, dense = float(m["payload_bytes"]), float(m["dense_bytes"])
    for net in networks:
      for n in ns:
        base = dense_seconds(dense, n, net, t_grad)
        group = []
        for sname, scheme in SCHEMES.items():
          compute = compute_seconds(sname, m["encode_s"], m["decode_s"], n)
          comm = scheme.seconds(p, dense, n, net, server_payload_bytes=p)
          total = t_grad + compute + comm
          group.append(dict(
              compressor=m["name"], scheme=sname, n=int(n),
              bandwidth_gbps=net.bandwidth_gbps, latency_us=net.latency_us,
              topology=net.topology, payload_bytes=p, dense_bytes=dense,
              t_grad=t_grad, compute_s=compute, comm_s=comm, total_s=total,
              dense_s=base, speedup=base / total if total > 0 else 1.0, best=False))
        lowest = min(r["total_s"] for r in group)
        next(r for r in group if r["total_s"] <= lowest * (1 + _REL_TIE))["best"] = True
        rows.extend(group)
  return rows


def best_rows(projection: Sequence[dict]) -> list[dict]:
  """The rows of :func:`project` at each compressor's best scheme."""
  return [r for r in projection if r["best"]]


# --------------------------------------------------------------------- figure


def _network_key(r: dict) -> tuple:
  return (r["bandwidth_gbps"], r["latency_us"], r["topology"])


def figure(projection: Sequence[dict], path: str, title: str | None = None) -> str:
  """Plots projected seconds per step against the number of workers.

  One panel per network (bandwidth), x = workers (log2), y = seconds per step
  (log); one line per compressor at its best scheme (the marker at each n
  names that scheme) and the dense all-reduce baseline (black, dashed).

  Args:
    projection: rows of :func:`project`.
    path: the PNG to write.
    title: the figure's title (default: the model, with α and t_grad).

  Returns:
    ``path``.
  """
  # A bare Figure (no pyplot): no global state, no backend to choose.
  import matplotlib  # pylint: disable=import-outside-toplevel
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  from matplotlib.lines import Line2D  # pylint: disable=import-outside-toplevel

  best = best_rows(projection)
  nets = sorted({_network_key(r) for r in projection})
  names = list(dict.fromkeys(r["compressor"] for r in projection if r["compressor"] != DENSE))
  cmap = matplotlib.colormaps["tab10"]
  colors = {name: cmap(i % 10) for i, name in enumerate(names)}
  ns = sorted({r["n"] for r in projection})

  fig = Figure(figsize=(5.2 * len(nets), 5.2), layout="constrained")
  axes = fig.subplots(1, len(nets), sharey=True, squeeze=False)
  for ax, net in zip(axes[0], nets):
    here = [r for r in best if _network_key(r) == net]
    # The baseline, from any compressor's rows (all share D).
    base = {r["n"]: r["dense_s"] for r in here}
    xs = sorted(base)
    ax.plot(xs, [base[x] for x in xs], "k--", lw=2, label="dense (ring all-reduce)")
    for name in names:
      rs = sorted((r for r in here if r["compressor"] == name), key=lambda r: r["n"])
      ax.plot([r["n"] for r in rs], [r["total_s"] for r in rs], "-", color=colors[name],
              lw=1.5, label=name)
      for sname, marker in _MARKERS.items():
        pts = [r for r in rs if r["scheme"] == sname]
        ax.plot([r["n"] for r in pts], [r["total_s"] for r in pts], marker, color=colors[name],
                ms=6, ls="none")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(ns)
    ax.set_xticklabels([str(n) for n in ns])
    ax.set_xlim(ns[0] / 1.2, ns[-1] * 1.2)
    bw, lat, topo = net
    ax.set_title(f"β = {bw:g} Gbit/s per link, α = {lat:g} µs")
    ax.set_xlabel("workers n")
    ax.grid(True, which="major", alpha=0.4)
    ax.grid(True, which="minor", alpha=0.15)
  axes[0][0].set_ylabel("projected seconds per step")
  handles, labels = axes[0][0].get_legend_handles_labels()
  handles += [Line2D([], [], color="gray", marker=m, ls="none", label=f"best scheme: {s}")
              for s, m in _MARKERS.items()]
  labels += [f"best scheme: {s}" for s in _MARKERS]
  fig.legend(handles, labels, fontsize=8, loc="outside lower center",
             ncol=min(len(labels), 5))
  if title is None:
    t_grad = projection[0]["t_grad"] if projection else 0.0
    topo = nets[0][2] if nets else "ring"
    title = (f"Projected step time, α-β model ({topo} collectives, α = latency per message, "
             f"full duplex, no overlap); encode/decode measured on this machine; "
             f"t_grad = {t_grad:g} s")
  fig.suptitle(title, fontsize=10)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  return path


# ----------------------------------------------------------------------- main


def _ms(s: float) -> str:
  return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def measured_table(measured: Sequence[dict]) -> str:
  """The markdown table of :func:`measure`'s rows."""
  rows = []
  for m in measured:
    rows.append([m["name"], m["payload_bytes"] / 1e6, m["dense_bytes"] / m["payload_bytes"],
                 m["encode_s"] * 1e3, m["decode_s"] * 1e3,
                 harness.gbps(m["dense_bytes"], m["encode_s"]) if m["encode_s"] > 0 else "-"])
  return harness.markdown_table(
      ["compressor", "payload P (MB)", "D/P", "encode (ms)", "decode (ms)",
       "encode (GB/s of D)"], rows)


def projection_table(projection: Sequence[dict], ns: Sequence[int] = TABLE_NS) -> str:
  """Markdown: best-scheme step time and speedup over dense per n and bandwidth."""
  best = best_rows(projection)
  bws = sorted({r["bandwidth_gbps"] for r in best})
  names = list(dict.fromkeys(r["compressor"] for r in best))
  index = {(r["compressor"], r["n"], r["bandwidth_gbps"]): r for r in best}
  rows = []
  for n in ns:
    for name in names:
      cells = []
      for bw in bws:
        r = index.get((name, n, bw))
        if r is None:
          cells.append("-")
        elif name == DENSE:
          cells.append(f"{_ms(r['total_s'])} (allreduce)")
        else:
          cells.append(f"{_ms(r['total_s'])}, ×{r['speedup']:.3g} ({r['scheme']})")
      rows.append([n, name] + cells)
  return harness.markdown_table(["n", "compressor"] + [f"{bw:g} Gbit/s" for bw in bws], rows)


def main(argv: Sequence[str] | None = None) -> list[dict]:
  """Measures, projects, prints the tables, writes network.png and network.json."""
  parser = argparse.ArgumentParser(prog="python -m benchmarks.perf.network",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help=f"a flat {QUICK_D:,}-coordinate tree instead of ResNet-18, reps=1")
  parser.add_argument("--out", default=os.path.join("benchmarks", "perf", "results"),
                      help="directory of network.png and network.json")
  parser.add_argument("--t-grad", type=float, default=0.0,
                      help="forward/backward seconds added to every step (default 0: "
                      "compression + communication only)")
  parser.add_argument("--latency-us", type=float, default=DEFAULT_LATENCY_US,
                      help="α, microseconds per message")
  parser.add_argument("--topology", choices=("ring", "tree"), default="ring",
                      help="collective algorithms of the model (default ring)")
  parser.add_argument("--reps", type=int, default=None,
                      help="timed runs (default 3, 1 with --quick)")
  args = parser.parse_args(argv)
  reps = args.reps if args.reps is not None else (1 if args.quick else 3)

  if args.quick:
    tree, model = trees.flat_tree(QUICK_D), f"a flat {QUICK_D:,}-coordinate vector"
  else:
    tree, model = trees.resnet18_tree(), "ResNet-18 (CIFAR)"
  d = _num_coords(tree)
  device = f"{jax.devices()[0].platform} ({platform.processor() or platform.machine()}, " \
           f"{os.cpu_count()} cores)"
  print(f"# Network projection: {model}, d = {d:,}, D = {4 * d / 1e6:.1f} MB float32; "
        f"encode/decode on {device}, reps = {reps}\n")

  measured = measure(tree, default_compressors(), reps=reps)
  print("## Measured on one worker (jit, no collectives)\n")
  print(measured_table(measured))

  networks = [exchange.Network(bw, args.latency_us, args.topology)
              for bw in DEFAULT_BANDWIDTHS_GBPS]
  projection = project(measured, DEFAULT_NS, networks, t_grad=args.t_grad)
  print(f"\n## Projected seconds per step at the best scheme, ×speedup over dense "
        f"(α = {args.latency_us:g} µs, {args.topology}, t_grad = {args.t_grad:g} s)\n")
  print(projection_table(projection))

  os.makedirs(args.out, exist_ok=True)
  png = os.path.join(args.out, "network.png")
  figure(projection, png, title=(
      f"{model}, d = {d / 1e6:.2f}M: projected time per step, α-β model "
      f"({args.topology} collectives, α = {args.latency_us:g} µs latency per message, "
      f"full duplex, no overlap)\n"
      f"encode/decode measured on this machine ({device}); t_grad = {args.t_grad:g} s"))
  out_json = os.path.join(args.out, "network.json")
  with open(out_json, "w") as f:
    json.dump(dict(
        model=model, coords=d, quick=args.quick, reps=reps, t_grad=args.t_grad,
        latency_us=args.latency_us, topology=args.topology, ns=list(DEFAULT_NS),
        bandwidths_gbps=list(DEFAULT_BANDWIDTHS_GBPS), device=device,
        jax_version=jax.__version__, measured=measured, projection=projection), f, indent=1)
  print(f"\nwrote {png} and {out_json}")
  return projection


if __name__ == "__main__":
  main(sys.argv[1:])
