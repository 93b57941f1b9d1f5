"""How the workers exchange compressed vectors, and what each way costs.

Three schemes move the same compressed payloads; they differ in who receives
what, so in the bytes per worker as the number of workers n grows. With P the
bytes of one worker's payload and D the bytes of the dense float32 vector:

========================  =========================================  ==================
scheme                    per step, per worker                       result
========================  =========================================  ==================
``allgather``             sends P, receives (n − 1)·P; decodes n      mean_i C(x_i)
                          payloads
``allreduce``             decodes its own payload, then a ring        mean_i C(x_i)
                          all-reduce of the dense vector:
                          2(n − 1)/n·D each way
``two_phase``             the vector is cut into n chunks, chunk j    C_s(mean_i C(x_i)
                          owned by worker j. Each worker compresses   + e_s) chunk by
                          every chunk, an all-to-all sends chunk j    chunk, or
                          to its owner ((n − 1)/n·P each way), the    mean_i C(x_i)
                          owner decodes and averages its chunk,       with no server
                          re-compresses it with C_s (with its own     compressor
                          error feedback e_s) and an all-gather
                          hands the chunks to everyone
                          ((n − 1)/n·P_s received)
========================  =========================================  ==================

``allgather`` and ``allreduce`` give the same numbers (up to the order of a
float32 sum) for every method and compressor: they are interchangeable, and
:func:`auto` picks the cheaper by the cost model. ``two_phase`` keeps per-worker
bytes flat in n (the scheme of DeepSpeed's 1-bit Adam and Bagua); it applies
the worker compressor to each chunk of the flattened vector instead of each
leaf (same ratio; for block-wise compressors such as scaled_sign, a scale per
chunk), and with a server compressor the aggregate is compressed a second
time, which is the bidirectional, server-side-compression method the papers
analyse (Double-Squeeze, NEOLITHIC, paper 003's server): with
``error_feedback=True`` each owner keeps the residual of its chunk, so nothing
is lost, only delayed. Which methods stay exact under which scheme:

* every method: ``allgather`` (the default) and ``allreduce``;
* ``two_phase(None)`` (no server compressor: the owners all-gather their mean
  chunk dense): DCSGD, EF-SGD, EF-SignSGD, COMP-AMS's workers, with the
  compressor applied chunk-wise (unbiased compressors stay unbiased with the
  same ω when ω does not depend on the size, e.g. natural; size-dependent ω
  and δ are those of the chunk);
* ``two_phase(C_s)``: the bidirectional variant of the same methods; with
  ``error_feedback=True`` (default) it is EF on both sides, as in
  Double-Squeeze and paper 001's NEOLITHIC; without, C_s must be unbiased
  for the aggregate to stay unbiased, and its ω_s multiplies the aggregate's
  second moment into the variance.

The cost model is the α-β model of collectives (Thakur, Rabenseifner, Gropp,
"Optimization of collective communication operations in MPICH", IJHPCA 2005):
a message costs α (latency) plus bytes/β (bandwidth).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from compopt._src.compressors import base as cbase

# ------------------------------------------------------------------ the model


@dataclasses.dataclass(frozen=True)
class Network:
  """A network for the α-β cost model.

  Attributes:
    bandwidth_gbps: β, each worker's link in Gbit/s (each direction).
    latency_us: α, the cost of one message in microseconds.
    topology: ``"ring"`` (bandwidth-optimal ring algorithms, n − 1 steps) or
      ``"tree"`` (recursive doubling/halving, ⌈log2 n⌉ steps; Bruck's
      all-to-all).
  """
  bandwidth_gbps: float = 10.0
  latency_us: float = 10.0
  topology: str = "ring"

  def __post_init__(self):
    for name in ("bandwidth_gbps", "latency_us"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"Network: `{name}` must be a number; got {v!r}")
      if not (math.isfinite(v) and (v > 0 if name == "bandwidth_gbps" else v >= 0)):
        allowed = "> 0" if name == "bandwidth_gbps" else ">= 0"
        raise ValueError(f"Network: `{name}` must be a finite number {allowed}; got {v!r}")
    if self.topology not in ("ring", "tree"):
      raise ValueError(f"Network: `topology` must be 'ring' or 'tree'; got {self.topology!r}")

  @property
  def bytes_per_second(self) -> float:
    return self.bandwidth_gbps * 1e9 / 8

  @property
  def latency(self) -> float:
    return self.latency_us * 1e-6


COLLECTIVES = ("allreduce", "allgather", "alltoall")


def _check_n(n, owner):
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"{owner}: `n` must be an int >= 1 (the number of workers); got {n!r}")
  return int(n)


def collective_bytes(kind: str, nbytes: float, n: int) -> float:
  """Bytes each worker receives (= sends, for these symmetric algorithms) in
  one collective on a buffer of ``nbytes`` per worker.

  * ``allreduce``: 2(n − 1)/n·nbytes (reduce-scatter, then all-gather);
  * ``allgather``: (n − 1)·nbytes (everybody else's buffer);
  * ``alltoall``: (n − 1)/n·nbytes (the worker's buffer holds n rows, one
    per destination; the own row stays).
  """
  n = _check_n(n, "collective_bytes")
  if kind == "allreduce":
    return 2 * (n - 1) / n * nbytes
  if kind == "allgather":
    return (n - 1) * nbytes
  if kind == "alltoall":
    return (n - 1) / n * nbytes
  raise ValueError(f"collective_bytes: `kind` must be one of {COLLECTIVES}; got {kind!r}")


def collective_seconds(kind: str, nbytes: float, n: int, network: Network | None = None) -> float:
  """Seconds of one collective by the α-β model.

  Ring: all-reduce 2(n − 1)α + 2(n − 1)/n·B/β; all-gather (n − 1)α + (n − 1)B/β;
  all-to-all (pairwise exchange) (n − 1)α + (n − 1)/n·B/β.
  Tree: all-reduce 2⌈log2 n⌉α + 2(n − 1)/n·B/β (Rabenseifner); all-gather
  ⌈log2 n⌉α + (n − 1)B/β (recursive doubling); all-to-all ⌈log2 n⌉α +
  ⌈log2 n⌉/2·B/β (Bruck).
  """
  network = Network() if network is None else network
  n = _check_n(n, "collective_seconds")
  if n == 1:
    return 0.0
  alpha, beta = network.latency, network.bytes_per_second
  steps = (n - 1) if network.topology == "ring" else math.ceil(math.log2(n))
  if kind == "allreduce":
    return 2 * steps * alpha + collective_bytes(kind, nbytes, n) / beta
  if kind == "allgather":
    return steps * alpha + collective_bytes(kind, nbytes, n) / beta
  if kind == "alltoall":
    if network.topology == "ring":
      return steps * alpha + collective_bytes(kind, nbytes, n) / beta
    return steps * alpha + steps / 2 * nbytes / beta
  raise ValueError(f"collective_seconds: `kind` must be one of {COLLECTIVES}; got {kind!r}")


# ---------------------------------------------------------------- the schemes


@dataclasses.dataclass(frozen=True)
class Scheme:
  """Base class of the exchange schemes (use the factories below)."""
  name: str = "scheme"

  def collectives(self, payload_bytes: float, dense_bytes: float, n: int,
                  server_payload_bytes: float | None = None) -> list[tuple[str, float]]:
    """The collectives of one exchange as (kind, per-worker buffer bytes)."""
    raise NotImplementedError

  def bytes_per_worker(self, payload_bytes: float, dense_bytes: float, n: int,
                       server_payload_bytes: float | None = None) -> float:
    """Bytes each worker receives per exchange (the model's count)."""
    return sum(collective_bytes(k, b, n) for k, b in
               self.collectives(payload_bytes, dense_bytes, n, server_payload_bytes))

  def seconds(self, payload_bytes: float, dense_bytes: float, n: int,
              network: Network | None = None,
              server_payload_bytes: float | None = None) -> float:
    """Modelled seconds of one exchange."""
    return sum(collective_seconds(k, b, n, network) for k, b in
               self.collectives(payload_bytes, dense_bytes, n, server_payload_bytes))


@dataclasses.dataclass(frozen=True)
class AllGather(Scheme):
  name: str = "allgather"

  def collectives(self, payload_bytes, dense_bytes, n, server_payload_bytes=None):
    return [("allgather", payload_bytes)]


@dataclasses.dataclass(frozen=True)
class AllReduce(Scheme):
  name: str = "allreduce"

  def collectives(self, payload_bytes, dense_bytes, n, server_payload_bytes=None):
    return [("allreduce", dense_bytes)]


@dataclasses.dataclass(frozen=True)
class TwoPhase(Scheme):
  server_compressor: cbase.Compressor | None = None
  error_feedback: bool = True
  name: str = "two_phase"

  def collectives(self, payload_bytes, dense_bytes, n, server_payload_bytes=None):
    # Without a given server payload size: P_s = P with a server compressor
    # (the same compressor on both sides), the dense chunk D without one.
    if server_payload_bytes is None:
      server_payload_bytes = payload_bytes if self.server_compressor is not None else dense_bytes
    # phase 1: the worker's n chunk payloads; phase 2: its own chunk, 1/n of the vector.
    return [("alltoall", payload_bytes), ("allgather", server_payload_bytes / n)]


#: Dense bytes per second a device decodes (writes) by default, per backend:
#: measured about 4 GB/s for natural/sign/top_k decodes of 11M float32 on a
#: 2-core CPU; accelerators write at hundreds of GB/s.
DECODE_GBPS = {"cpu": 4.0, "gpu": 300.0, "cuda": 300.0, "rocm": 300.0, "tpu": 300.0}


def default_decode_gbps() -> float:
  import jax  # pylint: disable=import-outside-toplevel
  return DECODE_GBPS.get(jax.default_backend(), 4.0)


@dataclasses.dataclass(frozen=True)
class Auto(Scheme):
  """Picks ``allgather`` or ``allreduce`` (same numbers) by the cost model:
  the collectives' α-β time plus the decoding, n dense vectors for
  ``allgather`` and one for ``allreduce``."""
  network: Network = dataclasses.field(default_factory=Network)
  decode_gbps: float | None = None
  name: str = "auto"

  def choose(self, payload_bytes: float, dense_bytes: float, n: int) -> Scheme:
    decode = dense_bytes / ((self.decode_gbps or default_decode_gbps()) * 1e9)
    candidates = [(AllGather(), n), (AllReduce(), 1)]
    costs = [c.seconds(payload_bytes, dense_bytes, n, self.network) + decodes * decode
             for c, decodes in candidates]
    return candidates[int(np.argmin(costs))][0]

  def collectives(self, payload_bytes, dense_bytes, n, server_payload_bytes=None):
    return self.choose(payload_bytes, dense_bytes, n).collectives(
        payload_bytes, dense_bytes, n, server_payload_bytes)

  def seconds(self, payload_bytes, dense_bytes, n, network=None, server_payload_bytes=None):
    """Communication seconds of the scheme chosen for ``network`` (default: its own)."""
    chooser = self if network is None else Auto(network=network, decode_gbps=self.decode_gbps)
    return chooser.choose(payload_bytes, dense_bytes, n).seconds(
        payload_bytes, dense_bytes, n, chooser.network, server_payload_bytes)


def allgather() -> AllGather:
  """Every worker all-gathers every payload (default): (n − 1)·P received.

  Exact for every method; best for small n or tiny payloads.
  """
  return AllGather()


def allreduce() -> AllReduce:
  """Each worker decodes its own payload; a dense float32 all-reduce sums them.

  Exact for every method (the same mean_i C(x_i)); 2(n − 1)/n·D each way, so
  it wins over ``allgather`` once P > 2D/n (sparse payloads at large n).
  Bits are counted as the dense ring all-reduce's.
  """
  return AllReduce()


def two_phase(server_compressor: cbase.Compressor | None = None, *,
              error_feedback: bool = True) -> TwoPhase:
  """All-to-all of compressed chunks to their owners, then an all-gather.

  Per-worker bytes stay flat in n: (n − 1)/n·P up and down in phase 1, and
  (n − 1)/n·P_s received in phase 2 (P_s: the server payload, or the dense
  float32 chunk without a server compressor).

  Args:
    server_compressor: C_s, applied by each owner to its averaged chunk before
      the all-gather; ``None`` all-gathers the averaged chunk dense (exact:
      mean_i C(x_i) with C applied chunk-wise).
    error_feedback: with a server compressor, each owner keeps the residual
      e_s ← m + e_s − C_s(m + e_s) of its chunk in the method's state
      (``server_error``) and adds it to the next step's chunk.

  See the module docstring for which methods stay exact.
  """
  if server_compressor is not None and not isinstance(server_compressor, cbase.Compressor):
    raise TypeError("two_phase: `server_compressor` must be a compopt compressor or None; "
                    f"got {server_compressor!r}")
  if not isinstance(error_feedback, (bool, np.bool_)):
    raise TypeError(f"two_phase: `error_feedback` must be True or False; got {error_feedback!r}")
  return TwoPhase(server_compressor=server_compressor, error_feedback=bool(error_feedback))


def auto(network: Network | None = None, *, decode_gbps: float | None = None) -> Auto:
  """``allgather`` or ``allreduce``, whichever the cost model says is faster
  for this payload, this n and ``network`` (decided when the step is traced).

  Both give the same numbers, so the choice is safe for every method. The
  model adds to the α-β time of the collectives the time to decode: n dense
  vectors for ``allgather`` (every payload), one for ``allreduce``.

  Args:
    network: the :class:`Network` to model (default: 10 Gbit/s, 10 µs, ring).
    decode_gbps: dense bytes per second (in GB/s) a device decodes; default by
      backend (4 on a CPU, 300 on a GPU/TPU), see ``DECODE_GBPS``.
  """
  if network is not None and not isinstance(network, Network):
    raise TypeError(f"auto: `network` must be a compopt.exchange.Network; got {network!r}")
  if decode_gbps is not None and (
      isinstance(decode_gbps, bool) or not isinstance(decode_gbps, (int, float))
      or not (math.isfinite(decode_gbps) and decode_gbps > 0)):
    raise ValueError(f"auto: `decode_gbps` must be a finite number > 0 or None; "
                     f"got {decode_gbps!r}")
  return Auto(network=Network() if network is None else network,
              decode_gbps=None if decode_gbps is None else float(decode_gbps))


def resolve(scheme, owner: str) -> Scheme:
  """A scheme argument: None (all-gather), a name, or a Scheme object."""
  if scheme is None:
    return AllGather()
  if isinstance(scheme, Scheme) and type(scheme) is not Scheme:
    return scheme
  if isinstance(scheme, str):
    table = {"allgather": allgather, "allreduce": allreduce, "two_phase": two_phase,
             "auto": auto}
    if scheme in table:
      return table[scheme]()
  raise ValueError(
      f"{owner}: `scheme` must be 'allgather', 'allreduce', 'two_phase', 'auto' or "
      f"a compopt.exchange scheme (e.g. compopt.exchange.two_phase(server_compressor=...)); "
      f"got {scheme!r}")


def needs_server_state(scheme: Scheme) -> bool:
  return (isinstance(scheme, TwoPhase) and scheme.server_compressor is not None
          and scheme.error_feedback)
