"""How workers exchange compressed vectors, and the cost model that picks one.

Every method that averages compressed vectors (``compressed_mean``, ``dcsgd``,
``error_feedback``, ``ef_sgd``, ``ef_signsgd``, ``comp_ams``) takes
``scheme=``: :func:`allgather` (default), :func:`allreduce`, :func:`two_phase`
or :func:`auto`. See the table in ``compopt._src.exchange`` (repeated in the
README's performance section) for the bytes each moves and which methods stay
exact under which scheme.

Example:
  >>> import compopt
  >>> s = compopt.exchange.auto(compopt.exchange.Network(bandwidth_gbps=10), decode_gbps=300)
  >>> s.choose(payload_bytes=1e6, dense_bytes=44e6, n=8).name
  'allgather'
  >>> s.choose(payload_bytes=1e6, dense_bytes=44e6, n=1024).name
  'allreduce'
"""

from compopt._src.exchange import Auto
from compopt._src.exchange import AllGather
from compopt._src.exchange import AllReduce
from compopt._src.exchange import Network
from compopt._src.exchange import Scheme
from compopt._src.exchange import TwoPhase
from compopt._src.exchange import allgather
from compopt._src.exchange import allreduce
from compopt._src.exchange import auto
from compopt._src.exchange import collective_bytes
from compopt._src.exchange import collective_seconds
from compopt._src.exchange import two_phase

__all__ = (
    "AllGather",
    "AllReduce",
    "Auto",
    "Network",
    "Scheme",
    "TwoPhase",
    "allgather",
    "allreduce",
    "auto",
    "collective_bytes",
    "collective_seconds",
    "two_phase",
)
