"""Partial participation: which workers send in a round.

Horváth & Richtárik 2021, §4.2.

Pass one to a method's ``sampling=`` argument, e.g.
``compopt.dcsgd(0.1, compressor=c, axis_name="data", sampling=compopt.sampling.nice(4))``.
Every worker draws the set S from the same key, so all agree on it; only the
members send, and the aggregate Σ_{i∈S} C(g_i)/(n p_i) stays unbiased.
"""

from compopt._src.sampling import Independent
from compopt._src.sampling import Nice
from compopt._src.sampling import Sampling
from compopt._src.sampling import independent
from compopt._src.sampling import nice

__all__ = ("Independent", "Nice", "Sampling", "independent", "nice")
