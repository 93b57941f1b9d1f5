"""The sockets benchmark's accuracy curves, tables, figure and JSON."""

from __future__ import annotations

import json
import os

import numpy as np

from benchmarks.sockets import curves
from benchmarks.sockets import runs

EVAL_EVERY = 10


def _best_fixed(records):
  fixed = [r for r in records if r["scheme"] != "auto"]
  return min(fixed, key=lambda r: r["step_s"]) if fixed else None


def rows_by_cap(steps: list) -> dict:
  """{cap: [(method, role, record)]}: the dense baselines, then for each
  method its best fixed scheme ("best") and auto ("auto")."""
  out = {}
  for cap in dict.fromkeys(r["cap"] for r in steps):
    recs = [r for r in steps if r["cap"] == cap]
    rows = []
    for method in dict.fromkeys(r["method"] for r in recs):
      mine = [r for r in recs if r["method"] == method]
      if len(mine) == 1 and mine[0]["scheme"] == "":
        rows.append((method, "", mine[0]))
        continue
      best = _best_fixed(mine)
      if best is not None:
        rows.append((method, "best", best))
      rows += [(method, "auto", r) for r in mine if r["scheme"] == "auto"]
    out[cap] = rows
  return out


def finish(steps, spec, *, out, processes, target_step, note, delay_ms) -> dict:
  data = runs.load_data(spec["test_size"])
  sizes = runs.SIZES[spec["size"]]
  common = dict(data=data, sizes=sizes, workers=processes, batch=spec["batch"],
                eval_every=EVAL_EVERY, seed=spec["seed"])
  by_cap = rows_by_cap(steps)
  base = curves.curve("dense", "", max_steps=target_step, **common)
  target = base["accuracy"][-1]
  curve_of = {"dense": base}
  for rows in by_cap.values():
    for method, _, r in rows:
      key = runs.numerics(method, r["chosen"] if r["scheme"] == "auto" else r["scheme"])
      if key not in curve_of:
        scheme = key.split("/", 1)[1] if "/" in key else "allgather"
        curve_of[key] = curves.curve(method, scheme if runs.METHODS[method].schemes else "",
                                     max_steps=4 * target_step, target=target, **common)

  table_rows = []
  for cap, rows in by_cap.items():
    dense = next(r for m, _, r in rows if m == "dense")
    dense_steps = curves.steps_to(base, target)
    dense_time = dense_steps * dense["step_s"]
    for method, role, r in rows:
      key = runs.numerics(method, r["chosen"] if r["scheme"] == "auto" else r["scheme"])
      n_steps = curves.steps_to(curve_of[key], target)
      seconds = None if n_steps is None else n_steps * r["step_s"]
      table_rows.append(dict(
          cap=cap, method=method, label=runs.METHODS[method].label, role=role,
          scheme=r["scheme"] or "-", chosen=r["chosen"] or "-", curve=key,
          step_s=r["step_s"], compute_s=r["compute_s"], encode_s=r["encode_s"],
          collective_s=r["collective_s"], decode_s=r["decode_s"], update_s=r["update_s"],
          lo_mb=r["lo_bytes"] / 1e6, byte_ratio=r["lo_bytes"] / max(r["comm_bytes"], 1),
          steps_to_target=n_steps, seconds_to_target=seconds,
          speedup=None if seconds is None else dense_time / seconds,
          step_speedup=dense["step_s"] / r["step_s"]))

  goals = _goals(table_rows, by_cap)
  md = _markdown(table_rows, spec, processes, target, target_step, note, delay_ms, goals)
  paths = {"table": os.path.join(out, "results.md"), "json": os.path.join(out, "sockets.json"),
           "figure": os.path.join(out, "sockets.png")}
  with open(paths["table"], "w") as f:
    f.write(md)
  with open(paths["json"], "w") as f:
    json.dump({"spec": spec, "processes": processes, "target": target,
               "target_step": target_step, "note": note, "rows": table_rows,
               "steps": steps, "curves": curve_of, "goals": goals}, f, indent=1)
  _figure(paths["figure"], table_rows, curve_of, target,
          f"MLP {'-'.join(map(str, sizes))} on MNIST, {processes} processes over gloo")
  return {"table": md, "rows": table_rows, "paths": paths, "goals": goals, "target": target}


def _goals(rows, by_cap) -> dict:
  out = {}
  for cap in by_cap:
    mine = [r for r in rows if r["cap"] == cap]
    compressed = [r for r in mine if r["method"] not in ("dense", "psgd")]
    speedups = [r["speedup"] for r in compressed if r["speedup"] is not None]
    auto = [r for r in compressed if r["role"] == "auto"]
    best = {r["method"]: r for r in compressed if r["role"] == "best"}
    out[cap] = {
        "best_time_speedup": max(speedups) if speedups else None,
        "best_method": (max((r for r in compressed if r["speedup"] is not None),
                            key=lambda r: r["speedup"])["label"] if speedups else None),
        "slowest_auto_step_speedup": min((r["step_speedup"] for r in auto), default=None),
        "worst_auto_over_best_fixed": max(
            (r["step_s"] / best[r["method"]]["step_s"] for r in auto if r["method"] in best),
            default=None),
        "byte_ratio_range": [min(r["byte_ratio"] for r in mine),
                             max(r["byte_ratio"] for r in mine)],
    }
  return out


def _fmt(v, spec=".3f"):
  return "—" if v is None else format(v, spec)


def _markdown(rows, spec, processes, target, target_step, note, delay_ms, goals) -> str:
  sizes = runs.SIZES[spec["size"]]
  lines = [f"MLP {'-'.join(map(str, sizes))} ({runs.num_params(sizes) / 1e6:.1f}M parameters) "
           f"on MNIST, {processes} processes (one CPU device each, gloo over TCP on "
           f"loopback), batch {spec['batch']} per worker. Target: test accuracy "
           f"{target:.4f} on {spec['test_size']} test images (the baseline's after "
           f"{target_step} steps)." + (f" netem delay {delay_ms} ms." if delay_ms else "")]
  if note:
    lines.append(f"\n**Note:** {note}.")
  for cap in dict.fromkeys(r["cap"] for r in rows):
    g = goals[cap]
    lines += ["", f"### {cap}", "",
              "| method | scheme | s/step | compute | encode | collectives | decode | update "
              "| lo MB/step | lo / comm_bits | steps to target | s to target | speedup |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in (r for r in rows if r["cap"] == cap):
      scheme = r["scheme"] if r["role"] != "auto" else f"auto → {r['chosen']}"
      lines.append(
          f"| {r['label']} | {scheme} | {r['step_s']:.3f} | {r['compute_s']:.3f} | "
          f"{r['encode_s']:.3f} | {r['collective_s']:.3f} | {r['decode_s']:.3f} | "
          f"{r['update_s']:.3f} | {r['lo_mb']:.2f} | {r['byte_ratio']:.3f} | "
          f"{_fmt(r['steps_to_target'], 'd')} | {_fmt(r['seconds_to_target'], '.1f')} | "
          f"{_fmt(r['speedup'], '.2f')}× |")
    lines.append(
        f"\nBest compressed: {g['best_method']}, {_fmt(g['best_time_speedup'], '.2f')}× "
        f"sooner than the baseline; slowest auto step vs the baseline's: "
        f"{_fmt(g['slowest_auto_step_speedup'], '.2f')}×; worst auto / best fixed scheme: "
        f"{_fmt(g['worst_auto_over_best_fixed'], '.2f')}; lo / comm_bits in "
        f"[{g['byte_ratio_range'][0]:.3f}, {g['byte_ratio_range'][1]:.3f}].")
  lines.append(
      "\nThe parts are timed alone (compute: forward and backward; encode; "
      "collectives: the scheme's collectives on buffers of the step's sizes, under the "
      "cap; decode: the n payloads decoded and summed); update is the step minus "
      "those parts (negative where XLA overlaps or fuses them). Time to target = steps to "
      "target (from the accuracy curve, which does not depend on the link) × the step "
      "time measured under the cap.")
  return "\n".join(lines) + "\n"


def _figure(path, rows, curve_of, target, title):
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  caps = list(dict.fromkeys(r["cap"] for r in rows))
  fig, axes = plt.subplots(1, len(caps), figsize=(4.6 * len(caps), 3.8), squeeze=False)
  for ax, cap in zip(axes[0], caps):
    for r in (r for r in rows if r["cap"] == cap and r["role"] != "auto"):
      c = curve_of[r["curve"]]
      secs = np.asarray(c["steps"]) * r["step_s"]
      style = "-" if r["method"] not in ("dense", "psgd") else "--"
      label = r["label"] + ("" if r["role"] != "best" else f" ({r['scheme']})")
      ax.plot(secs, c["accuracy"], style, label=label, lw=1.3)
    ax.axhline(target, color="gray", lw=0.8, ls=":")
    ax.set_title(cap)
    ax.set_xlabel("wall-clock seconds")
    ax.set_ylim(max(0.0, target - 0.3), min(1.0, target + 0.06))
    ax.set_xscale("log")
  axes[0][0].set_ylabel("test accuracy")
  axes[0][-1].legend(fontsize=6, loc="lower right")
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
