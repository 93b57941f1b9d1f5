"""compopt's JAX compressors against what users run today in PyTorch.

For each compressor, the PyTorch function a user of GRACE or of Horváth et
al.'s natural compression would call is timed next to the compopt encoder
that produces the same kind of payload (``jax.jit(c.encode)``), on the same
data, on this machine, with the one harness (``harness.time_call``). Each
PyTorch function takes a tensor and returns its wire payload, the way those
codebases do; the throughput column is input bytes / seconds.

Peers (all written here in PyTorch from the published formulas; these are
reimplementations, not the authors' code):

* GRACE: Xu, Ho, Sahu, Dutta, Canini, Kalnis. "GRACE: A Compressed
  Communication Framework for Distributed Machine Learning", ICDCS 2021,
  https://github.com/sands-lab/grace (``grace_dl/torch/compressor``): top-k
  (``torch.topk`` on |x|, values + indices), random-k (``torch.randperm``
  indices, values), signSGD (``x >= 0``, one byte per coordinate), EF-SignSGD
  (mean |x| and the sign bytes), QSGD (s levels, int8 codes + the norm),
  TernGrad (max-|x| scale, Bernoulli(|x|/scale), int8 signs), natural
  compression via log2 (int8/uint8 sign-and-exponent codes).
* Horváth, Ho, Horváth, Sahu, Canini, Richtárik. "Natural Compression for
  Distributed Deep Learning", 2019, https://arxiv.org/abs/1905.10988: natural
  compression on the float bits (the exponent field, rounded up when a random
  integer falls below the mantissa; one sign-and-exponent byte per
  coordinate, the byte layout of their CUDA kernel) and natural dithering
  with s levels {0, 2^(1-s), ..., 1/2, 1}.
* Bit-packed variants of signSGD / EF-SignSGD (8 signs per byte, what compopt
  sends), so that the 1-byte-per-sign GRACE form is not the only comparison.

Run ``python -m benchmarks.perf.peers [--quick]``.
"""

from __future__ import annotations

import argparse
import math
from typing import Any, Callable

import numpy as np
import torch

from benchmarks.perf.harness import gbps, markdown_table, time_call

RATIO = 0.01  # density of top-k / random-k
QSGD_LEVELS = 16  # s of QSGD, the same on both sides
ND_LEVELS = 7  # s of natural dithering: codes 0..7, 3 bits + a sign bit

Gen = torch.Generator | None


# ---------------------------------------------------------------- torch peers


def _k(numel: int, ratio: float) -> int:
  return max(1, int(numel * ratio))  # GRACE's rounding (compopt rounds)


def topk(x: torch.Tensor, ratio: float = RATIO) -> tuple[torch.Tensor, torch.Tensor]:
  """GRACE TopKCompressor: the k largest |x_j|; payload (values, indices)."""
  x = x.flatten()
  _, idx = torch.topk(x.abs(), _k(x.numel(), ratio))
  return x[idx], idx


def randomk(x: torch.Tensor, ratio: float = RATIO,
            generator: Gen = None) -> tuple[torch.Tensor, torch.Tensor]:
  """GRACE RandomKCompressor: k positions from ``torch.randperm``.

  GRACE sends only the values (the receiver regenerates the positions from a
  shared seed) and does not rescale by d/k; the indices are returned too.
  """
  x = x.flatten()
  idx = torch.randperm(x.numel(), generator=generator, device=x.device)[:_k(x.numel(), ratio)]
  return x[idx], idx


def _packbits(bits: torch.Tensor) -> torch.Tensor:
  """Bool tensor packed 8 per byte, first bit in the MSB (``np.packbits``).

  Each group of 8 bytes (0/1) is read as one int64 and a multiply by
  0x8040201008040201 gathers its 8 low bits into the top byte.
  """
  b = bits.flatten().view(torch.uint8)
  pad = (-b.numel()) % 8
  if pad:
    b = torch.cat([b, b.new_zeros(pad)])
  v = b.view(torch.int64)  # little-endian: byte i holds bit i of the group
  return ((v * 0x8040201008040201) >> 56).to(torch.uint8)


def signsgd(x: torch.Tensor) -> torch.Tensor:
  """GRACE SignSGDCompressor: ``x >= 0`` as uint8, one byte per coordinate."""
  return (x.flatten() >= 0).to(torch.uint8)


def signsgd_packed(x: torch.Tensor) -> torch.Tensor:
  """signSGD with the signs packed 8 per byte (compopt's wire form)."""
  return _packbits(x.flatten() >= 0)


def efsignsgd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
  """GRACE EFSignSGDCompressor: (mean |x|, ``x >= 0`` as uint8)."""
  x = x.flatten()
  return x.abs().mean(), (x >= 0).to(torch.uint8)


def efsignsgd_packed(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
  """EF-SignSGD with the signs packed 8 per byte."""
  x = x.flatten()
  return x.abs().mean(), _packbits(x >= 0)


def qsgd(x: torch.Tensor, levels: int = QSGD_LEVELS,
         generator: Gen = None) -> tuple[torch.Tensor, torch.Tensor]:
  """GRACE QSGDCompressor: signed integer levels of s|x_j|/‖x‖₂ and ‖x‖₂.

  level = s|x_j|/‖x‖, rounded up with probability level − ⌊level⌋; codes are
  sign·level in int8 (s < 128) or int16. Decoded: ‖x‖·code/s.
  """
  x = x.flatten()
  norm = x.norm()
  level_float = levels / norm * x.abs()
  floor = level_float.floor()
  u = torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator)
  level = floor + (u < level_float - floor).to(x.dtype)
  codes = (level * x.sign()).to(torch.int8 if levels < 128 else torch.int16)
  return codes, norm


def terngrad(x: torch.Tensor, clip: bool = False,
             generator: Gen = None) -> tuple[torch.Tensor, torch.Tensor]:
  """GRACE TernGradCompressor: int8 signs kept w.p. |x_j|/max|x|, and max|x|.

  GRACE (and Wen et al.'s layer-wise option) first clips x to 2.5 standard
  deviations (``clip=True``, biased); compopt's terngrad does not, so the
  default here does not either.
  """
  x = x.flatten()
  if clip:
    c = 2.5 * (x - x.mean()).pow(2).mean().sqrt()
    x = torch.clamp(x, -c, c)
  a = x.abs()
  scale = a.max()
  u = torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator)
  keep = u * scale < a
  return torch.where(keep, x.sign(), 0).to(torch.int8), scale


# Natural compression: one byte per coordinate, sign in the top bit and the
# float32 exponent field e (value 2^(e-127)) as e − 17 in the low 7 bits,
# clamped to [0, 127]: code 0 is zero, codes 1..127 are 2^-109 .. 2^17 (the
# byte layout of Horváth et al.'s CUDA kernel in GRACE).
_NAT_E_OFFSET = 17


def _nat_code(exp_field: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
  code = (exp_field - _NAT_E_OFFSET).clamp_(0, 127).to(torch.uint8)
  return code | (negative.to(torch.uint8) << 7)


def natural(x: torch.Tensor, generator: Gen = None) -> torch.Tensor:
  """Natural compression on the float bits (Horváth et al., 2019).

  With the exponent field e and mantissa field m of |x_j| (float32: 23 bits,
  bfloat16: 7 bits), 2^e ≤ |x_j| < 2^(e+1) and |x_j|/2^e − 1 = m/2^bits, so
  rounding up iff a uniform random integer r < m is unbiased. Payload: one
  sign-and-exponent byte per coordinate (see ``_nat_code``).
  """
  x = x.flatten()
  if x.dtype == torch.float32:
    bits, mbits = x.view(torch.int32), 23
  elif x.dtype == torch.bfloat16:
    bits, mbits = x.view(torch.int16), 7
  else:
    raise TypeError(f"natural: float32 or bfloat16, got {x.dtype}")
  mant = bits & ((1 << mbits) - 1)
  exp = (bits >> mbits) & 0xFF
  r = torch.randint(0, 1 << mbits, x.shape, dtype=bits.dtype, device=x.device,
                    generator=generator)
  return _nat_code(exp + (r < mant).to(bits.dtype), bits < 0)


def natural_log2(x: torch.Tensor, generator: Gen = None) -> torch.Tensor:
  """Natural compression as GRACE's Python NaturalCompressor computes it.

  e = ⌊log2|x_j|⌋ in floating point, rounded up with probability
  |x_j|/2^e − 1; the same byte payload as :func:`natural`.
  """
  x = x.flatten()
  a = x.abs()
  e = torch.log2(a).floor()
  p_up = a * torch.exp2(-e) - 1
  u = torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator)
  e = e + (u < p_up).to(x.dtype)
  # Zero gives e = -inf; clamp to the byte's range before the integer cast.
  field = (e.clamp(-128, 128) + 127).to(torch.int16)
  return _nat_code(field, x < 0)


def natural_dithering(x: torch.Tensor, levels: int = ND_LEVELS,
                      generator: Gen = None) -> tuple[torch.Tensor, torch.Tensor]:
  """Natural dithering with s levels (Horváth et al., 2019, Def. of C_nat,p,s).

  y_j = |x_j|/‖x‖₂ is rounded, unbiasedly, to a neighbour in
  {0, 2^(1−s), ..., 1/2, 1}. Code c ≥ 1 stands for 2^(c−s), 0 for zero;
  payload sign·code in int8 and ‖x‖₂.
  """
  x = x.flatten()
  norm = x.norm()
  y = x.abs() / norm
  mant, ex = torch.frexp(y)  # y = mant·2^ex, mant in [0.5, 1)
  small = y < 2.0 ** (1 - levels)
  low = torch.where(small, 0, ex + (levels - 1))
  p_up = torch.where(small, y * 2.0 ** (levels - 1), 2 * mant - 1)
  u = torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator)
  code = (low + (u < p_up).to(low.dtype)).clamp_(max=levels)
  return torch.where(x < 0, -code, code).to(torch.int8), norm


# ------------------------------------------------------------------- decoders


def _decode_natural(code: torch.Tensor) -> torch.Tensor:
  e = (code & 127).to(torch.float32)
  mag = torch.where(e > 0, torch.exp2(e + (_NAT_E_OFFSET - 127)), 0.0)
  return torch.where(code >= 128, -mag, mag)


def _decode_natural_dithering(payload, levels: int) -> torch.Tensor:
  code, norm = payload
  c = code.to(torch.float32)
  mag = torch.where(c != 0, torch.exp2(c.abs() - levels), 0.0)
  return torch.sign(c) * mag * norm


def _unbiased(x: torch.Tensor, draws: torch.Tensor, name: str, sigmas: float = 5.0) -> None:
  mean = draws.mean(0)
  se = draws.std(0) / math.sqrt(draws.shape[0])
  err = (mean - x).abs()
  tol = sigmas * se + 1e-6 * x.abs().max()
  if not bool((err <= tol).all()):
    j = int((err - tol).argmax())
    raise AssertionError(f"{name}: biased at {j}: mean {float(mean[j])} vs x {float(x[j])}"
                         f" (se {float(se[j])})")


def check_peers(draws: int = 2000, seed: int = 0) -> None:
  """Checks each torch peer's payload on a 64-element float32 tensor.

  Top-k keeps exactly the k largest magnitudes; random-k sends k distinct
  positions, each with frequency k/d; the signs decode to sign(x); QSGD,
  TernGrad, natural compression (both forms) and natural dithering decode to
  the allowed levels and are unbiased within 5 standard errors over
  ``draws`` draws. Raises AssertionError on failure.
  """
  rng = np.random.default_rng(seed)
  xn = rng.standard_normal(64).astype(np.float32)
  xn[5] = 0.0  # a zero coordinate: every compressor must send it as zero
  x = torch.from_numpy(xn)
  d = x.numel()
  g = torch.Generator().manual_seed(seed)

  # top-k: the kept set is the k largest |x_j|, with their values.
  values, idx = topk(x, 0.125)
  k = _k(d, 0.125)
  want = set(np.argsort(-np.abs(xn), kind="stable")[:k].tolist())
  assert set(idx.tolist()) == want and len(idx) == k, "topk: wrong kept set"
  assert torch.equal(values, x[idx]), "topk: wrong values"

  # random-k: k distinct positions, each kept with probability k/d.
  counts = torch.zeros(d)
  for _ in range(draws):
    values, idx = randomk(x, 0.125, generator=g)
    assert len(set(idx.tolist())) == k and torch.equal(values, x[idx]), "randomk"
    counts[idx] += 1
  p = k / d
  freq_err = (counts / draws - p).abs().max().item()
  assert freq_err < 5 * math.sqrt(p * (1 - p) / draws), f"randomk: frequency off by {freq_err}"

  # signs (GRACE's 1 byte per sign, and packed) and EF-SignSGD's scale.
  plus = xn >= 0
  assert np.array_equal(signsgd(x).numpy(), plus.astype(np.uint8)), "signsgd"
  assert np.array_equal(signsgd_packed(x).numpy(), np.packbits(plus)), "signsgd_packed"
  x13 = torch.from_numpy(xn[:13].copy())  # not a multiple of 8: padding
  assert np.array_equal(signsgd_packed(x13).numpy(), np.packbits(xn[:13] >= 0)), "padding"
  for fn in (efsignsgd, efsignsgd_packed):
    scale, _ = fn(x)
    assert abs(float(scale) - float(np.abs(xn).mean())) < 1e-6, fn.__name__
  assert np.array_equal(efsignsgd_packed(x)[1].numpy(), np.packbits(plus)), "efsignsgd bits"

  # unbiased quantizers: decoded values on their grids, mean x.
  s = QSGD_LEVELS
  norm = float(np.linalg.norm(xn))
  dec = {"qsgd": [], "terngrad": [], "natural": [], "natural_log2": [], "natural_dithering": []}
  for _ in range(draws):
    codes, nrm = qsgd(x, s, generator=g)
    dec["qsgd"].append(codes.float() * nrm / s)
    codes, scale = terngrad(x, generator=g)
    dec["terngrad"].append(codes.float() * scale)
    dec["natural"].append(_decode_natural(natural(x, generator=g)))
    dec["natural_log2"].append(_decode_natural(natural_log2(x, generator=g)))
    dec["natural_dithering"].append(
        _decode_natural_dithering(natural_dithering(x, ND_LEVELS, generator=g), ND_LEVELS))
  dec = {name: torch.stack(v) for name, v in dec.items()}

  q = dec["qsgd"] * s / norm  # integer levels, within one of s|x_j|/‖x‖
  assert torch.allclose(q, q.round(), atol=1e-4), "qsgd: off the grid"
  assert ((q.abs() - s * x.abs() / norm).abs() < 1 + 1e-4).all(), "qsgd: not a neighbour"
  t = dec["terngrad"] / np.abs(xn).max()
  assert set(t.round().unique().tolist()) <= {-1.0, 0.0, 1.0}, "terngrad: not ternary"
  nz = x != 0
  lo = torch.exp2(torch.log2(x[nz].abs()).floor())
  for name in ("natural", "natural_log2"):
    mag = dec[name][:, nz].abs()
    assert ((mag == lo) | (mag == 2 * lo)).all(), f"{name}: not a neighbouring power of 2"
  y = dec["natural_dithering"].abs() / norm
  log_y = torch.log2(y[y > 0])
  assert ((log_y - log_y.round()).abs() < 1e-5).all(), "natural_dithering: off the grid"
  assert ((log_y > -ND_LEVELS + 0.5) & (log_y < 0.5)).all(), "natural_dithering: level range"
  for name, draws_ in dec.items():
    assert (draws_[:, ~nz] == 0).all(), f"{name}: zero not sent as zero"
    _unbiased(x, draws_, name)


# ------------------------------------------------------------------ benchmark


def _pairs(qsgd_levels: int, nd_levels: int) -> list[tuple[str, str, Callable, Any]]:
  """(compopt compressor label, peer label, torch fn, compopt compressor)."""
  import compopt.compressors as cc
  return [
      (f"top_k(ratio={RATIO})", "GRACE topk = torch.topk(abs x) (torch)",
       topk, cc.top_k(ratio=RATIO)),
      (f"rand_k(ratio={RATIO})", "GRACE randomk, randperm (torch)",
       randomk, cc.rand_k(ratio=RATIO)),
      ("sign()", "GRACE signsgd, 1 byte/sign (torch)", signsgd, cc.sign()),
      ("sign()", "signsgd, packed bits (torch)", signsgd_packed, cc.sign()),
      ("scaled_sign()", "GRACE efsignsgd, 1 byte/sign (torch)", efsignsgd, cc.scaled_sign()),
      ("scaled_sign()", "efsignsgd, packed bits (torch)", efsignsgd_packed, cc.scaled_sign()),
      (f"qsgd({qsgd_levels})", f"GRACE qsgd s={qsgd_levels} (torch)",
       lambda x: qsgd(x, qsgd_levels), cc.qsgd(qsgd_levels)),
      ("terngrad()", "GRACE terngrad, no clip (torch)", terngrad, cc.terngrad()),
      ("natural()", "Horváth natural, float bits (torch)", natural, cc.natural()),
      ("natural()", "GRACE natural, log2 (torch)", natural_log2, cc.natural()),
      (f"natural_dithering({nd_levels})", f"Horváth natural dithering s={nd_levels} (torch)",
       lambda x: natural_dithering(x, nd_levels), cc.natural_dithering(nd_levels)),
  ]


def _torch_device() -> tuple[str, Callable[[Any], Any]]:
  if torch.cuda.is_available():
    def sync(out):
      torch.cuda.synchronize()
      return out
    return "cuda", sync
  return "cpu", lambda out: out


def run(sizes=(1_000_000, 11_000_000), dtypes=("float32", "bfloat16"), reps: int = 5,
        *, max_seconds: float = 1.0, qsgd_levels: int = QSGD_LEVELS,
        nd_levels: int = ND_LEVELS, torch_threads: int | None = None) -> list[dict]:
  """Times each (torch peer, compopt encoder) pair on the same data.

  ``torch_threads`` sets ``torch.set_num_threads`` (default: torch's own).
  On a CPU shared with other work, torch's OpenMP ops slow down by 10-40x
  as soon as one of their threads is descheduled; 1 thread avoids that.

  Returns one dict per row: size, dtype, compressor, peer, peer_gbps,
  compopt_gbps, speedup (peer seconds / compopt seconds).
  """
  import jax
  import jax.numpy as jnp

  if torch_threads is not None:
    torch.set_num_threads(torch_threads)
  device, sync = _torch_device()
  key = jax.random.key(0)
  pairs = _pairs(qsgd_levels, nd_levels)
  encoders = {id(c): jax.jit(lambda k, x, c=c: c.encode(k, x)) for _, _, _, c in pairs}
  rows = []
  for size in sizes:
    base = np.random.default_rng(0).standard_normal(size, dtype=np.float32)
    for dtype in dtypes:
      xt = torch.from_numpy(base).to(device=device, dtype=getattr(torch, dtype))
      xj = jnp.asarray(base).astype(getattr(jnp, dtype))
      nbytes = size * xt.element_size()
      for label, peer, fn, c in pairs:
        enc = encoders[id(c)]
        t_peer = time_call(lambda: fn(xt), reps=reps, sync=sync, max_seconds=max_seconds)
        t_ours = time_call(lambda: enc(key, xj), reps=reps, max_seconds=max_seconds)
        rows.append({"size": size, "dtype": dtype, "compressor": label, "peer": peer,
                     "peer_gbps": gbps(nbytes, t_peer), "compopt_gbps": gbps(nbytes, t_ours),
                     "speedup": t_peer / t_ours})
      del xt, xj
  return rows


def table(rows: list[dict]) -> str:
  """The caption and the markdown table of :func:`run`'s rows."""
  import jax
  device, _ = _torch_device()
  caption = (f"torch {torch.__version__} ({torch.get_num_threads()} threads, {device}) vs "
             f"compopt on jax {jax.__version__} ({jax.devices()[0].device_kind}); "
             "GB/s = input bytes / median encode time; speedup = torch time / compopt time.")
  header = ["size", "dtype", "compressor", "peer", "peer GB/s", "compopt GB/s", "speedup"]
  return caption + "\n\n" + markdown_table(
      header, [[f"{r['size']:,}", r["dtype"], r["compressor"], r["peer"], r["peer_gbps"],
                r["compopt_gbps"], r["speedup"]] for r in rows])


def main(argv: list[str] | None = None) -> list[dict]:
  """Prints the table (``--quick``: 1M float32, 3 reps) and returns the rows."""
  parser = argparse.ArgumentParser(prog="python -m benchmarks.perf.peers",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="1M float32 only, 3 reps")
  parser.add_argument("--torch-threads", type=int, default=None,
                      help="torch.set_num_threads (default: torch's own)")
  args = parser.parse_args(argv)
  if args.quick:
    rows = run(sizes=(1_000_000,), dtypes=("float32",), reps=3,
               torch_threads=args.torch_threads)
  else:
    rows = run(torch_threads=args.torch_threads)
  print(table(rows))
  return rows


if __name__ == "__main__":
  main()
