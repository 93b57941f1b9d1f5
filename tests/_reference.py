"""Independent NumPy reference implementations for the compressor tests.

Everything here is written from the definitions in the papers, in float64
NumPy, without importing compopt: the tests compare the library against these,
never against the library's own output.
"""

from __future__ import annotations

import math

import numpy as np


# ------------------------------------------------------------ deterministic
def top_k(x: np.ndarray, k: int) -> np.ndarray:
  """Keeps the k entries of largest |x_j| (x must have distinct |x_j| among
  the kept ones and the first dropped one, or ties only among zeros)."""
  x = np.asarray(x, np.float64).reshape(-1)
  keep = np.argsort(-np.abs(x), kind="stable")[:k]
  out = np.zeros_like(x)
  out[keep] = x[keep]
  return out


def sign(x: np.ndarray) -> np.ndarray:
  """sign(x) in {-1, +1} with sign(0) = +1; an all-zero x maps to 0."""
  x = np.asarray(x, np.float64).reshape(-1)
  if not np.any(x != 0):
    return np.zeros_like(x)
  return np.where(x < 0, -1.0, 1.0)


def block_sign(x: np.ndarray, block: int | None) -> np.ndarray:
  """(‖x_B‖₁/|B|)·sign(x_B) on consecutive blocks B (last one may be short)."""
  x = np.asarray(x, np.float64).reshape(-1)
  d = x.size
  block = d if block is None else min(block, d)
  out = np.zeros_like(x)
  for start in range(0, d, block):
    xb = x[start:start + block]
    out[start:start + block] = np.abs(xb).mean() * np.where(xb < 0, -1.0, 1.0)
  return out


def scaled_sign(x: np.ndarray) -> np.ndarray:
  return block_sign(x, None)


# ------------------------------------------------------------ randomized
def wangni_probabilities(a: np.ndarray, k: int) -> np.ndarray:
  """p_j = min(1, λ a_j) with Σ p_j = min(k, nnz), λ found by sorting.

  With s the magnitudes in decreasing order and m clipped coordinates (the m
  largest), λ = (k − m)/Σ_{j ≥ m} s_j; the right m is the smallest one for
  which the largest unclipped coordinate is not clipped: λ s_m < 1 (the
  clipped ones then satisfy λ s_j ≥ 1 automatically).
  """
  a = np.abs(np.asarray(a, np.float64).reshape(-1))
  nnz = int(np.count_nonzero(a))
  if k >= nnz:
    return (a > 0).astype(np.float64)
  s = np.sort(a)[::-1]
  for m in range(k):
    lam = (k - m) / s[m:].sum()
    if lam * s[m] < 1:
      p = np.minimum(1.0, lam * a)
      assert abs(p.sum() - k) < 1e-9 * k
      return p
  raise AssertionError("unreachable: m = k − 1 always satisfies λ s_m ≤ 1")


def lp_norm(x: np.ndarray, p: float) -> float:
  x = np.abs(np.asarray(x, np.float64).reshape(-1))
  return float(x.max()) if p == math.inf else float(np.sqrt((x * x).sum()))


def natural_bracket(a: np.ndarray):
  """Lower and upper power of two around each |x_j| > 0: 2^⌊log2 a⌋ and twice
  that (equal to a itself when a is a power of two)."""
  a = np.abs(np.asarray(a, np.float64))
  with np.errstate(divide="ignore"):
    lo = np.where(a > 0, 2.0 ** np.floor(np.log2(np.where(a > 0, a, 1))), 0)
  return lo, 2 * lo


def natural_levels(s: int) -> np.ndarray:
  """Levels of natural dithering: 0, 2^(1−s), ..., 1/2, 1."""
  return np.concatenate([[0.0], 2.0 ** np.arange(1 - s, 1)])


def level_bracket(y: np.ndarray, levels: np.ndarray):
  """Largest level ≤ y and smallest level ≥ y, per entry."""
  y = np.asarray(y, np.float64)
  idx_hi = np.searchsorted(levels, y, side="left")
  idx_hi = np.minimum(idx_hi, len(levels) - 1)
  idx_lo = np.searchsorted(levels, y, side="right") - 1
  idx_lo = np.maximum(idx_lo, 0)
  return levels[idx_lo], levels[idx_hi]


# ------------------------------------------------------ exact second moments
def var_rand_k(x, k):
  x = np.asarray(x, np.float64)
  return (x.size / k - 1) * float((x * x).sum())


def var_wangni(x, k):
  x = np.asarray(x, np.float64).reshape(-1)
  p = wangni_probabilities(x, k)
  kept = p > 0
  return float((x[kept] ** 2 * (1 / p[kept] - 1)).sum())


def var_nu_rand_1(x):
  x = np.asarray(x, np.float64)
  return float(np.abs(x).sum() ** 2 - (x * x).sum())


def var_bracket(a, lo, hi):
  """Variance of the unbiased random rounding of a to lo or hi."""
  return float(((a - lo) * (hi - a)).sum())


def var_natural(x):
  a = np.abs(np.asarray(x, np.float64))
  lo, hi = natural_bracket(a)
  return var_bracket(a, lo, hi)


def var_random_dithering(x, s, p):
  nrm = lp_norm(x, p)
  if nrm == 0:
    return 0.0
  y = np.abs(np.asarray(x, np.float64)) / nrm
  lo = np.floor(s * y) / s
  hi = np.minimum(lo + 1 / s, 1.0)
  return nrm**2 * var_bracket(y, lo, hi)


def var_natural_dithering(x, s, p):
  nrm = lp_norm(x, p)
  if nrm == 0:
    return 0.0
  y = np.abs(np.asarray(x, np.float64)) / nrm
  lo, hi = level_bracket(y, natural_levels(s))
  return nrm**2 * var_bracket(y, lo, hi)


# ------------------------------------------------------------ class constants
def omega_random_dithering(d, s):
  """QSGD, Alistarh et al. (2017) Lemma 3.1."""
  return min(d / s**2, math.sqrt(d) / s)


def omega_natural_dithering(d, s):
  """Horváth et al. (2019a), Thm 7 with r = min(p, 2) = 2."""
  t = math.sqrt(d) * 2.0 ** (1 - s)
  return 1 / 8 + t * min(1.0, t)


# ------------------------------------------------------------ wire helpers
def packbits(bits) -> np.ndarray:
  """Big-endian packing, 8 booleans per byte."""
  return np.packbits(np.asarray(bits, bool))


def bit_planes(codes, nbits) -> np.ndarray:
  codes = np.asarray(codes, np.uint32)
  return np.stack([np.packbits(((codes >> b) & 1).astype(bool)) for b in range(nbits)])


# ------------------------------------------------ casts, 1-bit SGD, threshold
def cast(x: np.ndarray, np_dtype, scale: bool, headroom: int = 1) -> np.ndarray:
  """x rounded to ``np_dtype`` (a NumPy/ml_dtypes type); with ``scale``, x·2^s
  rounded and multiplied back, s = T − e with max|x| in [2^(e−1), 2^e), 2^T
  half the dtype's range but at most 2^15, less ceil(log2 headroom) for a
  sum of that many."""
  x = np.asarray(x, np.float64)
  if not scale:
    with np.errstate(over="ignore"):  # beyond the dtype's range: inf, as a cast does
      return x.astype(np.float32).astype(np_dtype).astype(np.float64)
  info = np.finfo(np_dtype)
  amax = np.max(np.abs(x)) if x.size else 0.0
  e = int(np.frexp(amax)[1]) if np.isfinite(amax) and amax > 0 else 0
  t = min(int(np.log2(float(info.max))), 15) - math.ceil(math.log2(headroom))
  s = t - e
  return np.ldexp(np.ldexp(x, s).astype(np.float32).astype(np_dtype).astype(np.float64), -s)


def onebit(x: np.ndarray) -> np.ndarray:
  """Seide et al. 2014: per column (last axis of a 2-D+ array, else the whole
  array), x_j >= 0 -> mean of the column's x >= 0, x_j < 0 -> mean of its x < 0."""
  x = np.asarray(x, np.float64)
  cols = x.shape[-1] if x.ndim >= 2 else 1
  m = x.reshape(-1, cols)
  out = np.zeros_like(m)
  for c in range(cols):
    col = m[:, c]
    neg = col < 0
    if neg.any():
      out[neg, c] = col[neg].mean()
    if (~neg).any():
      out[~neg, c] = col[~neg].mean()
  return out.reshape(x.shape)


def threshold_all(x: np.ndarray, tau: float, quantize: bool) -> np.ndarray:
  """Strom 2015 without a bound: tau·sign(x_j) (or x_j) where |x_j| > tau."""
  x = np.asarray(x, np.float64)
  above = np.abs(x) > tau
  return np.where(above, np.sign(x) * tau if quantize else x, 0.0)
