"""Comparing runs: apply a preset to a config, print a table, draw the figure."""

from __future__ import annotations

import math
import os

import ml_collections

from examples import methods


def preset_config(config, name: str):
  """``config`` with the method, compressor and step size of preset ``name``."""
  if name not in methods.PRESETS:
    raise ValueError(f"unknown preset {name!r} in config.methods; choose from "
                     f"{', '.join(methods.PRESETS)}")
  config = ml_collections.ConfigDict(config.to_dict())
  preset = dict(methods.PRESETS[name])
  config.method_kwargs = ml_collections.ConfigDict(preset.pop("method_kwargs", {}))
  config.update(preset)
  config.methods = ()
  return config


def table(summaries: list) -> str:
  """A plain-text table: final train loss, test accuracy, MB sent per worker,
  wall time."""
  head = ("method", "final loss", "test acc", "MB sent/worker", "vs P-SGD", "wall s")
  ref = next((s["mb_sent"] for s in summaries if s["method"] == "psgd"), None)
  rows = []
  for s in summaries:
    ratio = f"{ref / s['mb_sent']:.1f}x less" if ref and s["mb_sent"] else "-"
    acc = s["test_accuracy"]
    rows.append((s["label"], f"{s['train_loss']:.4f}",
                 f"{100 * acc:.2f}%" if acc is not None else "-",
                 f"{s['mb_sent']:.2f}", ratio if s["method"] != "psgd" else "1x",
                 f"{s['wall_time']:.1f}"))
  widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
  fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                            for i, (c, w) in enumerate(zip(r, widths)))
  lines = [fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]
  return "\n".join(lines)


def plot(histories: dict, path: str, title: str = "") -> str:
  """Training loss and test accuracy against epochs and against MB sent per
  worker, one line per run; saved as a PNG at ``path``."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, axes = plt.subplots(2, 2, figsize=(11, 8))
  for label, records in histories.items():
    ev = [r for r in records if "test_accuracy" in r]
    ok = [r for r in records if r["train_loss"] is not None and math.isfinite(r["train_loss"])]
    line, = axes[0, 0].plot([r["epoch"] for r in ok], [r["train_loss"] for r in ok], label=label)
    c = line.get_color()
    axes[0, 1].plot([r["epoch"] for r in ev], [100 * r["test_accuracy"] for r in ev], color=c,
                    marker="o", ms=3, label=label)
    axes[1, 0].plot([max(r["mb_sent"], 1e-3) for r in ok], [r["train_loss"] for r in ok],
                    color=c, label=label)
    axes[1, 1].plot([max(r["mb_sent"], 1e-3) for r in ev],
                    [100 * r["test_accuracy"] for r in ev], color=c, marker="o", ms=3,
                    label=label)
  for ax in axes[:, 0]:
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
  for ax in axes[:, 1]:
    ax.set_ylabel("test accuracy (%)")
  for ax in axes[0]:
    ax.set_xlabel("epochs")
  for ax in axes[1]:
    ax.set_xlabel("MB sent per worker")
    ax.set_xscale("log")
  for ax in axes.flat:
    ax.grid(alpha=0.3)
  axes[0, 1].legend(fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
