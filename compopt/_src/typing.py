"""Type aliases of compopt's public signatures (the package ships
``py.typed``)."""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from compopt._src import sampling as sampling_lib
from compopt._src import schemes
from compopt._src.compressors import base as cbase

#: A compressor, or one per worker (``[C_1, ..., C_n]``) where a method
#: accepts per-worker compressors.
CompressorArg = Union[cbase.Compressor, Sequence[cbase.Compressor]]
#: An optional compressor (a server's C_s, a shift compressor C_i).
OptionalCompressorArg = Union[cbase.Compressor, Sequence[cbase.Compressor], None]
#: How workers exchange payloads: ``None``/``"allgather"``, ``"allreduce"``,
#: ``"auto"``, or a scheme object (``compopt.exchange.two_phase(...)``).
SchemeArg = Union[str, schemes.Scheme, None]
#: Partial participation: ``None`` (every worker), a probability, one
#: probability per worker, or a sampling (``compopt.sampling.nice(4)``).
SamplingArg = Union[float, Sequence[float], sampling_lib.Sampling, None]
#: A floating dtype for a state buffer (``jnp.float32``, ``jnp.bfloat16``,
#: ``"float32"``...), or None for the method's default.
DTypeArg = Union[type, str, np.dtype, None]
