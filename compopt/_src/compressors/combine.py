"""identity, bernoulli, compressors built from others (induced, scaled, fcc),
and per-worker lists of compressors."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from compopt._src import checks
from compopt._src import wire
from compopt._src.compressors import base


@dataclasses.dataclass(frozen=True)
class Identity(base.Compressor):
  """C(x) = x: classes U(0) and B(1). Wire: the dense leaf in its dtype."""
  name: str = "identity"
  randomized = False
  linear_payload = True

  def _encode(self, key, x):
    del key
    return {"values": x}

  def _decode(self, payload, size, dtype, key):
    return payload["values"]

  def _wire_bits(self, size, dtype):
    return size * wire.dtype_bits(dtype)

  def _omega(self, size):
    return 0.0

  def _delta(self, size):
    return 1.0


@dataclasses.dataclass(frozen=True)
class Bernoulli(base.Compressor):
  """B_p(x) = x with probability p, else 0: class B(p).

  Shulgin & Richtárik 2022, footnote 2.

  E‖B_p(x) − x‖² = (1 − p)‖x‖². The payload is the dense leaf, sent only when
  the coin comes up (on average p · ``wire_bits``; ``wire_bits`` counts the
  leaf as if it were always sent, which the fixed-size exchange does);
  whether it did is known to every receiver that shares the key.
  """
  p: float = 1.0
  name: str = "bernoulli"

  def _encode(self, key, x):
    fire = jax.random.bernoulli(key, self.p)
    # 0 * x, not zeros: an inf or NaN in x stays visible when nothing is sent.
    return {"values": jnp.where(fire, x, 0 * x)}

  def _decode(self, payload, size, dtype, key):
    return payload["values"]

  def _wire_bits(self, size, dtype):
    return size * wire.dtype_bits(dtype)

  def _delta(self, size):
    return self.p


def _split(key):
  if key is None:
    return None, None
  k1, k2 = jax.random.split(key)
  return k1, k2


@dataclasses.dataclass(frozen=True)
class Induced(base.Compressor):
  """C(x) = C1(x) + C2(x − C1(x)): class U(ω2(1 − δ1)) (Horváth & Richtárik 2021, Thm 3)."""
  c1: base.Compressor = None
  c2: base.Compressor = None
  name: str = "induced"

  @property
  def randomized(self):
    return self.c1.randomized or self.c2.randomized

  @property
  def decode_needs_key(self):
    return self.c1.decode_needs_key or self.c2.decode_needs_key

  @property
  def linear_payload(self):
    return self.c1.linear_payload and self.c2.linear_payload

  def _encode(self, key, x):
    k1, k2 = _split(key)
    p1 = self.c1._encode(k1, x)
    # The residual x − C1(x), in x's dtype as C2 would see it on its own.
    residual = x - self.c1._decode(p1, x.size, x.dtype, k1).astype(x.dtype)
    return {"c1": p1, "c2": self.c2._encode(k2, residual)}

  def _decode(self, payload, size, dtype, key):
    k1, k2 = _split(key)
    ct = base.compute_dtype(dtype)
    d1 = self.c1._decode(payload["c1"], size, dtype, k1)
    d2 = self.c2._decode(payload["c2"], size, dtype, k2)
    return d1.astype(ct) + d2.astype(ct)

  @property
  def decode_passes(self):
    return self.c1.decode_passes + self.c2.decode_passes

  def _sparse(self, payload, size, dtype, key):
    k1, k2 = _split(key)
    s1 = self.c1._sparse(payload["c1"], size, dtype, k1)
    s2 = self.c2._sparse(payload["c2"], size, dtype, k2)
    if s1 is None or s2 is None:
      return None
    ct = base.compute_dtype(dtype)
    return (jnp.concatenate([s1[0], s2[0]]),
            jnp.concatenate([s1[1].astype(ct), s2[1].astype(ct)]))

  def _wire_bits(self, size, dtype):
    return self.c1._wire_bits(size, dtype) + self.c2._wire_bits(size, dtype)

  def _omega(self, size):
    delta1, omega2 = self.c1._delta(size), self.c2._omega(size)
    if delta1 is None or omega2 is None:
      return None
    return omega2 * (1.0 - delta1)


class _Wrapper(base.Compressor):
  """A compressor built on one ``inner`` compressor: it is randomized, needs
  the key to decode and has a linear payload exactly when ``inner`` does
  (scaling and summing rounds keep decoding linear)."""
  inner: base.Compressor

  @property
  def randomized(self):
    return self.inner.randomized

  @property
  def decode_needs_key(self):
    return self.inner.decode_needs_key

  @property
  def decode_passes(self):
    return self.inner.decode_passes

  @property
  def linear_payload(self):
    return self.inner.linear_payload


@dataclasses.dataclass(frozen=True)
class Scaled(_Wrapper):
  """λ·C(x). For C ∈ U(ω): λ = 1/(1 + ω) gives B(1/(1 + ω)); in general
  E‖λC(x) − x‖² = (1 − (2λ − λ²(1 + ω)))‖x‖², so δ = 2λ − λ²(1 + ω) when
  positive."""
  inner: base.Compressor = None
  scale: float = 1.0
  name: str = "scaled"

  def _encode(self, key, x):
    return self.inner._encode(key, x)

  def _decode(self, payload, size, dtype, key):
    ct = base.compute_dtype(dtype)
    return self.inner._decode(payload, size, dtype, key).astype(dtype).astype(ct) * self.scale

  def _wire_bits(self, size, dtype):
    return self.inner._wire_bits(size, dtype)

  def _omega(self, size):
    return self.inner._omega(size) if self.scale == 1.0 else None

  def _delta(self, size):
    if self.scale == 1.0:
      return self.inner._delta(size)
    omega = self.inner._omega(size)
    if omega is None:
      return None
    lam = self.scale
    delta = 2 * lam - lam * lam * (1 + omega)
    return min(delta, 1.0) if delta > 0 else None


def identity() -> Identity:
  """No compression: C(x) = x, classes U(0) and B(1)."""
  return Identity()


def bernoulli(p: float) -> Bernoulli:
  """Bernoulli compressor B_p (Shulgin & Richtárik 2022, footnote 2): x with
  probability p, else 0. Contractive, class B(p); B_p/p is unbiased,
  U(1/p − 1). Used by the shift update of Rand-DIANA.

  Args:
    p: probability in (0, 1] of sending x.
  """
  return Bernoulli(p=checks.check_fraction(p, "p", "bernoulli"))


def induced(c1: base.Compressor, c2: base.Compressor) -> Induced:
  """The induced compressor of Horváth & Richtárik 2021, Thm 3.

  C(x) = C1(x) + C2(x − C1(x)). For C1 ∈ B(δ1) and C2 ∈ U(ω2), C is unbiased
  and C ∈ U(ω2(1 − δ1)); ``omega`` reports that constant (None unless C1 has a
  δ and C2 an ω). Wire: both payloads.

  Example: ``induced(top_k(ratio=0.025), rand_k_wangni(ratio=0.025))`` is the
  Top-K/2 + Rand-K/2 (Wangni) compressor of the paper's §5.3.

  References:
    Horváth, Richtárik. A better alternative to error feedback for
    communication-efficient distributed learning, ICLR 2021.
    https://arxiv.org/abs/2006.11077
  """
  return Induced(c1=base.check_compressor(c1, "induced", "c1"),
                 c2=base.check_compressor(c2, "induced", "c2"))


def scaled(c: base.Compressor, scale: float) -> Scaled:
  """λ·C(x). ``scaled(c, 1/(1 + c.omega(d)))`` turns an unbiased compressor
  into a contractive one, class B(1/(1 + ω)).

  Args:
    c: the compressor to scale.
    scale: λ, a finite number > 0.
  """
  c = base.check_compressor(c, "scaled", "c")
  scale = checks.check_real(scale, "scale", "scaled", lo=0.0, lo_open=True)
  return Scaled(inner=c, scale=scale)


@dataclasses.dataclass(frozen=True)
class FCC(_Wrapper):
  """R rounds of compressed communication as a compressor (Huang et al. 2022, Alg. 1).

  v⁰ = 0; for r < R: c^r = C(v* − v^r), v^{r+1} = v^r + c^r. The payload is the
  R payloads of the c^r (round r uses the key ``fold_in(key, r)``) and the
  decoded value is v^R = Σ_r c^r. For C ∈ B(δ),
  E‖v^R − v*‖² ≤ (1 − δ)^R ‖v*‖² (Lemma 2), so FCC(C, R) ∈ B(1 − (1 − δ)^R).
  """
  inner: base.Compressor = None
  rounds: int = 1
  name: str = "fcc"

  @property
  def decode_passes(self):
    return self.rounds * self.inner.decode_passes

  def _round_key(self, key, r):
    return None if key is None else jax.random.fold_in(key, r)

  def _encode(self, key, x):
    ct = base.compute_dtype(x.dtype)
    target = x.astype(ct)
    v = jnp.zeros_like(target)  # v^0 = 0
    payloads = []
    for r in range(self.rounds):
      kr = self._round_key(key, r)
      residual = (target - v).astype(x.dtype)  # v* − v^r
      payload = self.inner._encode(kr, residual)  # c^r = C(v* − v^r)
      payloads.append(payload)
      c_r = self.inner._decode(payload, x.size, x.dtype, kr)
      v = v + c_r.astype(ct)  # v^{r+1} = v^r + c^r
    return {"rounds": payloads}

  def _decode(self, payload, size, dtype, key):
    ct = base.compute_dtype(dtype)
    v = jnp.zeros((size,), ct)
    for r, p in enumerate(payload["rounds"]):
      kr = self._round_key(key, r)
      v = v + self.inner._decode(p, size, dtype, kr).astype(ct)
    return v

  def _wire_bits(self, size, dtype):
    return self.rounds * self.inner._wire_bits(size, dtype)

  def _delta(self, size):
    delta = self.inner._delta(size)
    if delta is None:
      return None
    return 1.0 - (1.0 - delta) ** self.rounds

  def _omega(self, size):
    # R = 1 is the compressor itself; more rounds of an unbiased C stay
    # unbiased (each round is unbiased given the past) with ω^R.
    omega = self.inner._omega(size)
    if omega is None:
      return None
    return omega ** self.rounds


def fcc(c: base.Compressor, rounds: int) -> FCC:
  """Fast compressed communication (Huang et al. 2022, Alg. 1): R rounds of C.

  Round r compresses what is still missing, c^r = C(v* − v^r), and the
  receiver adds the rounds up: v^R = Σ_r c^r. For C ∈ B(δ) the error falls
  geometrically, E‖v^R − v*‖² ≤ (1 − δ)^R ‖v*‖² (Lemma 2): class
  B(1 − (1 − δ)^R). Wire: R payloads of C.

  Args:
    c: the compressor used in every round.
    rounds: R >= 1.

  References:
    Huang, Chen, Yin, Yuan. Lower bounds and nearly optimal algorithms in
    distributed learning with communication compression, NeurIPS 2022.
    https://arxiv.org/abs/2206.03665
  """
  c = base.check_compressor(c, "fcc", "c")
  rounds = checks.check_int(rounds, "rounds", "fcc")
  return FCC(inner=c, rounds=rounds)
