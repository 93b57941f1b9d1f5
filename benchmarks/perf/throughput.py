"""Compressor throughput next to the machine's limits, in one run.

``python -m benchmarks.perf.throughput [--quick]``

For each tensor (1M and 11M coordinates, float32 and bfloat16) we time, with
the same harness and back to back:

* a jitted copy: ``-x``, one read and one write of the tensor (the limit of
  any compressor that writes something per coordinate, e.g. a dense output);
* a read-only reduction: ``sum(|x|)`` (the limit of a pass that only reads);
* each compressor's ``encode`` (jitted, the payload as it goes on the wire)
  and ``decode`` (payload back to a dense tensor).

GB/s is the input tensor's bytes over the median time. The targets checked
(printed in the last column):

* elementwise random quantizers (natural, the dithering family, TernGrad):
  encode at least as fast as the copy (>= 1× copy);
* the sign family: at least half the speed of the read-only reduction;
* top_k's fast mode (``block_size``): within 3× of the copy (>= 0.33× copy);
* exact top_k: no slower than ``torch.topk`` on the same tensor (the PyTorch
  row comes from ``benchmarks.perf.peers`` in the same run when PyTorch is
  installed).
"""

from __future__ import annotations

import argparse
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.perf import harness
from compopt import compressors as C

SIZES = (1_000_000, 11_000_000)
DTYPES = ("float32", "bfloat16")


def compressors() -> dict[str, tuple[Any, str]]:
  """name -> (compressor, target kind)."""
  return {
      "sign": (C.sign(), "sign"),
      "scaled_sign": (C.scaled_sign(), "sign"),
      "block_sign(4096)": (C.block_sign(4096), "sign"),
      "natural": (C.natural(), "elementwise"),
      "natural_dithering(4)": (C.natural_dithering(4), "elementwise"),
      "qsgd(16)": (C.qsgd(16), "elementwise"),
      "terngrad": (C.terngrad(), "elementwise"),
      "top_k 1%": (C.top_k(ratio=0.01), "exact_topk"),
      "top_k 1%, block 1024": (C.top_k(ratio=0.01, block_size=1024), "fast_topk"),
      "top_k 1%, block 256": (C.top_k(ratio=0.01, block_size=256), "fast_topk"),
      "top_k 1/128, block 128": (C.top_k(ratio=1 / 128, block_size=128), "fast_topk"),
      "rand_k 1%": (C.rand_k(ratio=0.01), None),
      "rand_k_wangni 1%": (C.rand_k_wangni(ratio=0.01), None),
      # the compressors of other systems (PyTorch DDP hooks, CNTK, Strom)
      "cast(float16)": (C.cast("float16"), "elementwise"),
      "cast(float16, scale)": (C.cast("float16", scale=True), "sign"),
      "onebit": (C.onebit(), "sign"),
      "scaled_sign l2 (1-bit Adam)": (C.scaled_sign(scale="l2"), "sign"),
      "threshold 1%": (C.threshold(2.33, ratio=0.01), None),
  }


def _verdict(kind, enc_s, copy_s, reduce_s, torch_topk_s):
  if kind == "elementwise":
    r = copy_s / enc_s
    return f"{r:.2f}× copy (target >= 1): {'PASS' if r >= 1 else 'FAIL'}"
  if kind == "sign":
    r = reduce_s / enc_s
    return f"{r:.2f}× reduction (target >= 0.5): {'PASS' if r >= 0.5 else 'FAIL'}"
  if kind == "fast_topk":
    r = copy_s / enc_s
    return f"{r:.2f}× copy (target >= 0.33): {'PASS' if r >= 1 / 3 else 'FAIL'}"
  if kind == "exact_topk":
    if torch_topk_s is None:
      return "torch.topk not measured (PyTorch not installed)"
    r = torch_topk_s / enc_s
    return f"{r:.2f}× torch.topk (target >= 1): {'PASS' if r >= 1 else 'FAIL'}"
  return ""


def _torch_topk_seconds(x_np: np.ndarray, dtype: str, reps: int) -> float | None:
  try:
    import torch
  except ImportError:
    return None
  t = torch.from_numpy(x_np)
  if dtype == "bfloat16":
    t = t.to(torch.bfloat16)
  k = max(1, round(0.01 * t.numel()))
  return harness.time_call(lambda: torch.topk(t.abs(), k), reps=reps,
                           sync=lambda out: out, max_seconds=3.0)


def run(sizes: Sequence[int] = SIZES, dtypes: Sequence[str] = DTYPES, reps: int = 7,
        only: Sequence[str] | None = None) -> list[dict]:
  """One row per (size, dtype, compressor) with GB/s and the ratios."""
  rows = []
  key = jax.random.key(0)
  for size in sizes:
    x_np = np.random.default_rng(0).standard_normal(size).astype(np.float32)
    for dtype in dtypes:
      x = jnp.asarray(x_np).astype(dtype)
      nbytes = x.size * x.dtype.itemsize
      neg = jax.jit(lambda x: -x)
      red = jax.jit(lambda x: jnp.sum(jnp.abs(x.astype(jnp.float32))))
      copy_s = harness.time_call(lambda: neg(x), reps=reps)
      reduce_s = harness.time_call(lambda: red(x), reps=reps)
      torch_s = _torch_topk_seconds(x_np, dtype, max(3, reps // 2))
      rows.append(dict(size=size, dtype=dtype, compressor="jitted copy (-x)",
                       encode_gbps=harness.gbps(nbytes, copy_s), encode_s=copy_s))
      rows.append(dict(size=size, dtype=dtype, compressor="read-only reduction sum(|x|)",
                       encode_gbps=harness.gbps(nbytes, reduce_s), encode_s=reduce_s))
      if torch_s is not None:
        rows.append(dict(size=size, dtype=dtype, compressor="torch.topk(|x|, 1%)",
                         encode_gbps=harness.gbps(nbytes, torch_s), encode_s=torch_s))
      for name, (c, kind) in compressors().items():
        if only and name not in only:
          continue
        enc = jax.jit(lambda k, x, c=c: c.encode(k, x))
        payload = enc(key, x)
        dec = jax.jit(lambda p, c=c: c.decode(p, jax.ShapeDtypeStruct(x.shape, x.dtype),
                                               key=key))
        enc_s = harness.time_call(lambda: enc(key, x), reps=reps, max_seconds=5.0)
        dec_s = harness.time_call(lambda: dec(payload), reps=reps, max_seconds=5.0)
        rows.append(dict(
            size=size, dtype=dtype, compressor=name, encode_s=enc_s, decode_s=dec_s,
            encode_gbps=harness.gbps(nbytes, enc_s), decode_gbps=harness.gbps(nbytes, dec_s),
            x_copy=copy_s / enc_s, x_reduce=reduce_s / enc_s,
            verdict=_verdict(kind, enc_s, copy_s, reduce_s, torch_s)))
  return rows


def table(rows: list[dict]) -> str:
  header = ["size", "dtype", "compressor", "encode GB/s", "decode GB/s", "× copy",
            "× reduction", "target"]
  out = []
  for r in rows:
    out.append([f"{r['size']:,}", r["dtype"], r["compressor"], r["encode_gbps"],
                r.get("decode_gbps", ""), r.get("x_copy", ""), r.get("x_reduce", ""),
                r.get("verdict", "")])
  return harness.markdown_table(header, out)


def main(argv: Sequence[str] | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.perf.throughput",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="1M float32 only, 3 reps")
  args = parser.parse_args(argv)
  if args.quick:
    rows = run(sizes=(1_000_000,), dtypes=("float32",), reps=3)
  else:
    rows = run()
  print(table(rows))
  return rows


if __name__ == "__main__":
  main()
