"""Helpers to run one data-parallel step in the three execution modes.

Every compopt method takes an ``axis_name``: the workers are the slots of that
named axis. Write the step of ONE worker, then map it over a leading worker
axis of every input (params, optimizer state, batch), in any of three ways,
with the same numbers::

    def step(params, opt_state, batch):        # one worker
      grads = jax.grad(loss)(params, batch)
      updates, opt_state = opt.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    params_n = compopt.parallel.stack(params, n)            # (n, ...) leaves
    state_n = compopt.parallel.stack(opt.init(params), n)
    # 1. simulated, any number of workers on one device
    jax.jit(jax.vmap(step, axis_name="data"))(params_n, state_n, batch_n)
    # 2. jax.pmap, one worker per device
    jax.pmap(step, axis_name="data")(params_n, state_n, batch_n)
    # 3. jax.jit + jax.shard_map over a mesh, one worker per device
    mesh = jax.make_mesh((n,), ("data",))
    compopt.parallel.shard_map(step, mesh, "data")(params_n, state_n, batch_n)
"""

from compopt._src.data_parallel import DataParallel
from compopt._src.data_parallel import data_parallel
from compopt._src.parallel import per_worker
from compopt._src.parallel import shard
from compopt._src.parallel import shard_map
from compopt._src.parallel import stack
from compopt._src.parallel import unstack
from compopt._src.parallel import worker

__all__ = ("DataParallel", "data_parallel", "per_worker", "shard", "shard_map", "stack", "unstack", "worker")
