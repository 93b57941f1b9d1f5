"""Saving, restoring and resharding the full per-worker optimizer state.

A compopt state holds per-worker buffers (EF errors, DIANA shifts), so a
checkpoint must keep the whole stacked state, not worker 0's copy: dropping
the errors (as DeepSpeed does on load) loses the updates they still owe.
:func:`save` and :func:`restore` write and read any pytree of arrays (params
and stacked states, on host, on one device or sharded over a mesh) with
orbax; resuming from them gives bit-for-bit the run that never stopped::

    compopt.checkpoint.save(path, {"params": params_n, "opt": state_n})
    ...
    like = {"params": params_n, "opt": state_n}   # e.g. fresh init, stacked and sharded
    restored = compopt.checkpoint.restore(path, like)

Saves are crash-safe: a process killed at any moment of :func:`save`, even
while it overwrites a checkpoint (``force=True``), leaves a directory that
:func:`restore` reads, the old checkpoint or the new one bit for bit; the
next save removes what the killed one left. With several processes
(``jax.distributed``) every process calls both, on a shared file system.

To resume on a different number of workers, ``compopt.reshard_state(state,
n)`` maps the stacked state to n new workers where the algorithm allows it;
its docstring lists the rule of every state.
"""

from compopt._src.checkpoint import restore
from compopt._src.checkpoint import save

__all__ = ("restore", "save")
