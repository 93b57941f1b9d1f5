"""How the workers exchange compressed vectors, and what each way costs.

Three schemes move the same compressed payloads; they differ in who receives
what, so in the bytes per worker as the number of workers n grows. With P the
bytes of one worker's payload and D the bytes of the dense float32 vector:

========================  =========================================  ==================
scheme                    per step, per worker                       result
========================  =========================================  ==================
``allgather``             sends and receives (n − 1)·P (a ring        mean_i C(x_i)
                          forwards the others' payloads); decodes n
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
analyse (Double-Squeeze; NEOLITHIC of Huang et al. 2022; the server of Li &
Li 2022): with ``error_feedback=True`` each owner keeps the residual of its
chunk, so nothing is lost, only delayed.

Every method takes ``scheme=``. Which stay exact under which scheme:

* every method: ``allgather`` (the default), ``allreduce`` and ``auto``;
* ``two_phase()`` (no server compressor: the owners all-gather their mean
  chunk dense): every method, with the compressor applied chunk-wise
  (unbiased compressors stay unbiased with the same ω when ω does not depend
  on the size, e.g. natural; size-dependent ω and δ are those of the chunk);
* ``two_phase(C_s)``: the bidirectional variant. With ``error_feedback=True``
  (default) it is EF on both sides, as in Double-Squeeze and NEOLITHIC;
  without, C_s must be unbiased for the aggregate to stay unbiased, and its
  ω_s multiplies the aggregate's second moment into the variance. Methods
  whose invariants need the exact mean of the messages (EF21's g = mean_i
  g_i, the shifted family's h = mean_i h_i) refuse it.

Compressors whose payload is linear and shared by all workers
(``Compressor.linear_payload``: identity, ``rand_k(shared=True)``) are
all-reduced as payloads and decoded once under ``allgather``, ``allreduce``
and ``auto``: 2(n − 1)/n·P each way, never more than any of the three moves.
The sum runs in float32, so P counts 32 bits per value whatever the leaves'
dtype (a bfloat16 sum would depend on the mode of running and lose digits).
``two_phase`` runs as described for them too.

The cost model is the α-β model of collectives (Thakur, Rabenseifner, Gropp,
"Optimization of collective communication operations in MPICH", IJHPCA 2005):
a message costs α (latency) plus bytes/β (bandwidth).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from compopt._src import checks
from compopt._src import reshard
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
    checks.check_real(self.bandwidth_gbps, "bandwidth_gbps", "Network", lo=0.0, lo_open=True)
    checks.check_real(self.latency_us, "latency_us", "Network", lo=0.0)
    if self.topology not in ("ring", "tree"):
      raise ValueError(f"Network: `topology` must be 'ring' or 'tree'; got {self.topology!r}")

  @property
  def bytes_per_second(self) -> float:
    return self.bandwidth_gbps * 1e9 / 8

  @property
  def latency(self) -> float:
    return self.latency_us * 1e-6


COLLECTIVES = ("allreduce", "allgather", "alltoall")


def collective_bytes(kind: str, nbytes: float, n: int) -> float:
  """Bytes each worker receives (= sends, for these symmetric algorithms) in
  one collective on a buffer of ``nbytes`` per worker.

  * ``allreduce``: 2(n − 1)/n·nbytes (reduce-scatter, then all-gather);
  * ``allgather``: (n − 1)·nbytes (everybody else's buffer);
  * ``alltoall``: (n − 1)/n·nbytes (the worker's buffer holds n rows, one
    per destination; the own row stays).
  """
  n = checks.check_workers(n, "collective_bytes")
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
  n = checks.check_workers(n, "collective_seconds")
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
  """Base class of the exchange schemes (use the factories below).

  A scheme may keep state between steps (``two_phase``'s server error): the
  method stores what :meth:`init` returns in one field of its own state and
  hands it back to the communication layer every step, without looking
  inside.
  """
  name: str = "scheme"

  def init(self, params) -> Any:
    """The scheme's state for a worker whose updates are shaped like ``params``."""
    del params
    return optax.EmptyState()

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
  """What :func:`allgather` returns: every payload all-gathered once."""
  name: str = "allgather"

  def collectives(self, payload_bytes, dense_bytes, n, server_payload_bytes=None):
    return [("allgather", payload_bytes)]


@dataclasses.dataclass(frozen=True)
class AllReduce(Scheme):
  """What :func:`allreduce` returns: a dense all-reduce of the decoded payloads."""
  name: str = "allreduce"

  def collectives(self, payload_bytes, dense_bytes, n, server_payload_bytes=None):
    return [("allreduce", dense_bytes)]


def chunk_size(size: int, n: int) -> int:
  """Coordinates per chunk when ``two_phase`` cuts a flattened vector of
  ``size`` coordinates among n owners: c = ⌈size/n⌉ (at least 1), so owner j
  holds coordinates [j·c, (j + 1)·c) of the vector zero-padded to n·c."""
  return max(1, -(-size // n))


def _owned_chunks(server_error, n_new: int):
  """Reshard rule of the server error: every old owner holds the residual of
  its own chunk (zeros elsewhere), so their sum is the whole residual; new
  owner j gets its new chunk of it."""
  total = np.asarray(server_error).astype(np.float64).sum(0)
  chunk = chunk_size(total.size, n_new)
  owner = np.arange(total.size) // chunk
  return np.stack([np.where(owner == j, total, 0) for j in range(n_new)]).astype(
      np.asarray(server_error).dtype)


@reshard.rules(server_error=_owned_chunks)
class TwoPhaseState(NamedTuple):
  """State of :func:`two_phase` with a server compressor and error feedback."""
  # e_s: float32[D], the residual of the owner's chunk of the flattened update
  # (D coordinates, laid out by chunk_size); zeros outside that chunk.
  server_error: jax.Array


@dataclasses.dataclass(frozen=True)
class TwoPhase(Scheme):
  """What :func:`two_phase` returns: an all-to-all to the chunks' owners, then
  an all-gather of the averaged (and, with ``server_compressor``, compressed)
  chunks."""
  server_compressor: cbase.Compressor | None = None
  error_feedback: bool = True
  name: str = "two_phase"

  @property
  def keeps_server_error(self) -> bool:
    return self.server_compressor is not None and self.error_feedback

  def init(self, params):
    if not self.keeps_server_error:
      return optax.EmptyState()
    size = sum(math.prod(p.shape) for p in jax.tree.leaves(params))
    return TwoPhaseState(server_error=jnp.zeros((size,), jnp.float32))

  def collectives(self, payload_bytes, dense_bytes, n, server_payload_bytes=None):
    # Without a given server payload size: P_s = P with a server compressor
    # (the same compressor on both sides), the dense chunk D without one.
    if server_payload_bytes is None:
      server_payload_bytes = payload_bytes if self.server_compressor is not None else dense_bytes
    # phase 1: the worker's n chunk payloads; phase 2: its own chunk, 1/n of the vector.
    return [("alltoall", payload_bytes), ("allgather", server_payload_bytes / n)]


#: Dense bytes per second a device decodes (writes) by default, per backend:
#: ``Compressor.decode_sum`` of 4 natural/sign/top_k payloads of 5.8M float32
#: ran at 30-60 GB/s of decoded output on a 2-core CPU (block top_k 30);
#: accelerators write at hundreds of GB/s.
DECODE_GBPS = {"cpu": 30.0, "gpu": 300.0, "cuda": 300.0, "rocm": 300.0, "tpu": 300.0}


def default_decode_gbps() -> float:
  return DECODE_GBPS.get(jax.default_backend(), 4.0)


@dataclasses.dataclass(frozen=True)
class Auto(Scheme):
  """Picks ``allgather`` or ``allreduce`` (same numbers) by the cost model:
  the collectives' α-β time plus the decoding, n dense vectors for
  ``allgather`` and one for ``allreduce``."""
  network: Network = dataclasses.field(default_factory=Network)
  decode_gbps: float | None = None
  name: str = "auto"

  def choose(self, payload_bytes: float, dense_bytes: float, n: int,
             decode_passes: float = 1.0) -> Scheme:
    """The cheaper of allgather and allreduce; ``decode_passes``: the cost of
    one decode in dense passes (``Compressor.decode_passes``)."""
    decode = decode_passes * dense_bytes / ((self.decode_gbps or default_decode_gbps()) * 1e9)
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
  """Every worker all-gathers every payload (default): (n − 1)·P received
  (and sent: a ring forwards the others' payloads).

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
  if server_compressor is not None:
    cbase.check_compressor(server_compressor, "two_phase", "server_compressor")
  return TwoPhase(server_compressor=server_compressor,
                  error_feedback=checks.check_bool(error_feedback, "error_feedback",
                                                   "two_phase"))


def auto(network: Network | None = None, *, decode_gbps: float | None = None) -> Auto:
  """``allgather`` or ``allreduce``, whichever the cost model says is faster
  for this payload, this n and ``network`` (decided when the step is traced).

  Both give the same numbers, so the choice is safe for every method. The
  choice is logged (logger ``"compopt"``, level INFO) when a step is traced.
  The model adds to the α-β time of the collectives the time to decode: n dense
  vectors for ``allgather`` (every payload), one for ``allreduce``.

  Args:
    network: the :class:`Network` to model (default: 10 Gbit/s, 10 µs,
      ring); :func:`measure_network` measures the real one.
    decode_gbps: dense bytes per second (in GB/s) a device decodes; default by
      backend (30 on a CPU, 300 on a GPU/TPU), see ``DECODE_GBPS``.
  """
  if network is not None and not isinstance(network, Network):
    raise TypeError(f"auto: `network` must be a compopt.exchange.Network; got {network!r}")
  if decode_gbps is not None:
    decode_gbps = checks.check_real(decode_gbps, "decode_gbps", "auto", lo=0.0, lo_open=True)
  return Auto(network=Network() if network is None else network, decode_gbps=decode_gbps)


_MEASURED: dict = {}


def measure_network(mesh: jax.sharding.Mesh, axis_name: str = "data", *,
                    sizes: tuple[int, int] = (1 << 10, 1 << 22), repeats: int = 5,
                    topology: str = "ring", cache: bool = True) -> Network:
  """The α and β of the worker axis of ``mesh``, measured.

  Times all-gathers of uint8 buffers of two sizes B_1 < B_2 over the mesh
  axis (a warm-up, then the median of ``repeats``) and solves the
  all-gather's α-β time for α and β (:func:`fit_network`). The
  result is cached per (devices, axis, sizes, topology): call it once at
  start and pass it to :func:`auto`::

    scheme = compopt.exchange.auto(compopt.exchange.measure_network(mesh))

  It runs collectives: on several processes every process must call it, at
  the same point of the program. With one device on the axis there is no
  network: 1e6 Gbit/s (free) is returned.

  Args:
    mesh: the device mesh of the run.
    axis_name: its worker axis.
    sizes: the two buffer sizes in bytes per worker, 1 <= B_1 < B_2.
    repeats: timed collectives per size, >= 1.
    topology: the :class:`Network` topology to report.
    cache: reuse an earlier measurement of the same mesh and sizes; False
      measures again (a link whose speed changed).
  """
  owner = "measure_network"
  if axis_name not in mesh.shape:
    raise ValueError(f"{owner}: the mesh has no axis {axis_name!r}; its axes are "
                     f"{tuple(mesh.axis_names)}")
  small, large = (checks.check_int(b, "sizes", owner, lo=1) for b in sizes)
  if not small < large:
    raise ValueError(f"{owner}: `sizes` must be two byte counts B_1 < B_2; got {sizes!r}")
  repeats = checks.check_int(repeats, "repeats", owner, lo=1)
  n = mesh.shape[axis_name]
  cache_key = (tuple(d.id for d in mesh.devices.flat), tuple(mesh.axis_names), axis_name,
               small, large, repeats, topology)
  if cache and cache_key in _MEASURED:
    return _MEASURED[cache_key]
  if n == 1:
    _MEASURED[cache_key] = Network(1e6, 0.0, topology)
    return _MEASURED[cache_key]
  sharding = NamedSharding(mesh, P(axis_name))
  gather = jax.jit(jax.shard_map(
      lambda b: jax.lax.all_gather(b, axis_name, tiled=True), mesh=mesh,
      in_specs=P(axis_name), out_specs=P(), check_vma=False))
  seconds = []
  for size in (small, large):
    buf = jax.device_put(np.zeros((n * size,), np.uint8), sharding)
    gather(buf).block_until_ready()  # compile and warm up
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      gather(buf).block_until_ready()
      times.append(time.perf_counter() - t0)
    seconds.append(float(np.median(times)))
  _MEASURED[cache_key] = fit_network(*seconds, small, large, n, topology)
  return _MEASURED[cache_key]


def fit_network(t_small: float, t_large: float, small: int, large: int, n: int,
                topology: str = "ring") -> Network:
  """The :class:`Network` whose all-gather of ``small`` and ``large`` bytes
  per worker takes ``t_small`` and ``t_large`` seconds on n workers.

  Solves t(B) = s·α + (n − 1)·B/β, s = n − 1 steps (ring) or ⌈log2 n⌉
  (tree), as :func:`collective_seconds` models an all-gather: two equations
  for α and β (α clipped at 0, a non-increasing time read as a free link).
  """
  n = checks.check_workers(n, "fit_network")
  if n == 1 or not small < large:
    raise ValueError(f"fit_network: needs n >= 2 and small < large; got n={n}, "
                     f"small={small}, large={large}")
  steps = (n - 1) if topology == "ring" else math.ceil(math.log2(n))
  per_byte = max(t_large - t_small, 1e-12) / ((n - 1) * (large - small))  # 1/β
  alpha = max((t_small - (n - 1) * small * per_byte) / steps, 0.0)
  return Network(bandwidth_gbps=8e-9 / per_byte, latency_us=alpha * 1e6, topology=topology)


def resolve(scheme, owner: str, *, exact: bool = False) -> Scheme:
  """A method's ``scheme=`` argument: None (all-gather), a name, or a Scheme.

  With ``exact=True`` (methods whose invariants need the aggregate to be
  exactly the mean of what the workers sent, e.g. DIANA's h = mean_i h_i), a
  ``two_phase`` with a server compressor is refused.
  """
  if scheme is None:
    resolved = AllGather()
  elif isinstance(scheme, Scheme) and type(scheme) is not Scheme:
    resolved = scheme
  elif isinstance(scheme, str) and scheme in _NAMED:
    resolved = _NAMED[scheme]()
  else:
    raise ValueError(
        f"{owner}: `scheme` must be 'allgather', 'allreduce', 'two_phase', 'auto' or "
        f"a compopt.exchange scheme (e.g. compopt.exchange.two_phase(server_compressor=...)); "
        f"got {scheme!r}")
  if exact and isinstance(resolved, TwoPhase) and resolved.server_compressor is not None:
    raise ValueError(
        f"{owner}: needs the exact mean of the workers' messages, so `scheme` cannot "
        "compress the aggregate again; use 'allgather', 'allreduce', 'auto' or "
        f"compopt.exchange.two_phase() without a server compressor; got {scheme!r}")
  return resolved


_NAMED = {"allgather": allgather, "allreduce": allreduce, "two_phase": two_phase, "auto": auto}
