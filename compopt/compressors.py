"""Compressors: pure functions of (key, x) with an exact wire form.

Every compressor is an immutable object built by a factory below. For an
array (or a pytree of arrays, compressed leaf by leaf) ``x``::

    c = compopt.compressors.top_k(ratio=0.01)
    y = c(key, x)                       # dense C(x), same shape and dtype
    payload = c.encode(key, x)          # exactly what a worker sends
    y = c.decode(payload, x)            # == c(key, x)
    c.wire_bits(x.shape, x.dtype)       # bits of that payload
    c.delta(x.shape), c.omega(x.shape)  # constants of its class

Classes: unbiased U(ω), E C(x) = x and
E‖C(x) − x‖² ≤ ω‖x‖²; contractive B(δ), E‖C(x) − x‖² ≤ (1 − δ)‖x‖².
"""

from compopt._src.compressors.base import Compressor
from compopt._src.compressors.cast import cast
from compopt._src.compressors.combine import bernoulli
from compopt._src.compressors.combine import fcc
from compopt._src.compressors.combine import identity
from compopt._src.compressors.combine import induced
from compopt._src.compressors.combine import scaled
from compopt._src.compressors.onebit import onebit
from compopt._src.compressors.quantize import natural
from compopt._src.compressors.quantize import natural_dithering
from compopt._src.compressors.quantize import qsgd
from compopt._src.compressors.quantize import random_dithering
from compopt._src.compressors.quantize import terngrad
from compopt._src.compressors.sign import block_sign
from compopt._src.compressors.sign import scaled_sign
from compopt._src.compressors.sign import sign
from compopt._src.compressors.sparse import nu_rand_1
from compopt._src.compressors.sparse import rand_k
from compopt._src.compressors.sparse import rand_k_wangni
from compopt._src.compressors.sparse import top_k
from compopt._src.compressors.threshold import threshold
from compopt._src.compressors.tree import tree_delta
from compopt._src.compressors.tree import tree_omega
from compopt._src.compressors.tree import tree_wire_bits

__all__ = (
    "Compressor",
    "bernoulli",
    "block_sign",
    "cast",
    "fcc",
    "identity",
    "induced",
    "natural",
    "natural_dithering",
    "nu_rand_1",
    "onebit",
    "qsgd",
    "rand_k",
    "rand_k_wangni",
    "random_dithering",
    "scaled",
    "scaled_sign",
    "sign",
    "terngrad",
    "threshold",
    "top_k",
    "tree_delta",
    "tree_omega",
    "tree_wire_bits",
)
