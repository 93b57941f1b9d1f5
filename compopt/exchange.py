"""How workers exchange compressed vectors, and the cost model that picks one.

Every method takes ``scheme=``: :func:`allgather` (default),
:func:`allreduce`, :func:`two_phase` or :func:`auto`. The README's table of
schemes gives the bytes each moves and which methods stay exact under which
scheme.

With one compressor per worker (``compressor=[C_1, ..., C_n]``, e.g. for
:func:`compopt.diana`), a collective still needs one buffer size on every
worker: :func:`allgather` and :func:`two_phase` pad each worker's payload to
the largest, and count the padded bytes on the wire (``payload`` counts
worker i's own, unpadded message); :func:`allreduce` sums the decoded dense
vectors and pads nothing, the cheaper route when the payloads differ much;
:func:`auto` weighs the two with the padded size.

Sums run in float32 for float16, bfloat16 and float32 leaves and in float64
for float64 leaves (``jax_enable_x64``), whose values then cross the wire as
64 bits.

Example:
  >>> import compopt
  >>> s = compopt.exchange.auto(compopt.exchange.Network(bandwidth_gbps=10), decode_gbps=300)
  >>> s.choose(payload_bytes=1e6, dense_bytes=44e6, n=8).name
  'allgather'
  >>> s.choose(payload_bytes=1e6, dense_bytes=44e6, n=1024).name
  'allreduce'
"""

from compopt._src.schemes import Auto
from compopt._src.schemes import AllGather
from compopt._src.schemes import AllReduce
from compopt._src.schemes import Network
from compopt._src.schemes import Scheme
from compopt._src.schemes import TwoPhase
from compopt._src.schemes import TwoPhaseState
from compopt._src.schemes import allgather
from compopt._src.schemes import allreduce
from compopt._src.schemes import auto
from compopt._src.schemes import collective_bytes
from compopt._src.schemes import collective_seconds
from compopt._src.schemes import fit_network
from compopt._src.schemes import measure_network
from compopt._src.schemes import two_phase

__all__ = (
    "AllGather",
    "AllReduce",
    "Auto",
    "Network",
    "Scheme",
    "TwoPhase",
    "TwoPhaseState",
    "allgather",
    "allreduce",
    "auto",
    "collective_bytes",
    "collective_seconds",
    "fit_network",
    "measure_network",
    "two_phase",
)
