"""One process of the two-process test in test_multihost.py (not a test).

Usage: python _multihost_worker.py PROCESS_ID PORT OUT.npz

Joins a 2-process JAX cluster on 127.0.0.1:PORT (CPU, 2 devices per process,
gloo collectives), runs :func:`run_all` over the global 4-device mesh and
(process 0) writes the results to OUT.npz. test_multihost.py runs the same
:func:`run_all` in one process with 4 devices and compares.
"""

import os
import sys

AXIS = "data"
N = 4
STEPS = 4
BAD_STEP = 2  # a NaN on worker 3 (the second process) at this step


def _methods():
  import optax

  import compopt
  from compopt import compressors as C
  return {
      "ef_sgd": compopt.ef_sgd(0.1, compressor=C.top_k(2), axis_name=AXIS, key=1),
      "diana": compopt.diana(0.1, compressor=C.rand_k(2), axis_name=AXIS, key=2),
      "psgd": compopt.psgd(optax.linear_schedule(0.1, 0.01, 4), axis_name=AXIS,
                           momentum=0.9),
  }


def run_all(mesh):
  """{name: stacked params after STEPS steps, name_skipped: skipped counts}."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  import compopt

  sharding = NamedSharding(mesh, P(AXIS))

  def global_array(x):  # the same host data on every process -> one global array
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  params = {"w": jnp.linspace(-1.0, 1.0, 15).reshape(5, 3), "b": jnp.ones(3)}
  rng = np.random.default_rng(0)
  grads = [{k: rng.normal(size=(N,) + v.shape).astype(np.float32) for k, v in params.items()}
           for _ in range(STEPS)]
  grads[BAD_STEP]["w"][3, 0, 0] = np.nan

  out = {}
  for name, opt in _methods().items():
    def step(p, s, g, opt=opt):
      u, s = opt.update(g, s, p)
      return optax.apply_updates(p, u), s
    f = compopt.parallel.shard_map(step, mesh, AXIS)
    p = jax.tree.map(global_array, compopt.parallel.stack(params, N))
    s = jax.tree.map(global_array, compopt.parallel.stack(opt.init(params), N))
    for g in grads:
      p, s = f(p, s, jax.tree.map(global_array, g))
    out[name + "_w"] = p["w"]
    out[name + "_b"] = p["b"]
    out[name + "_skipped"] = s[-1].skipped
    # comm_bits reads this process's workers: (local workers, 3) host ints
    out[name + "_bits"] = np.array(compopt.comm_bits(s), np.int64).T
  return out


def main():
  process_id, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                             process_id=process_id, initialization_timeout=60)
  import numpy as np
  from jax.experimental import multihost_utils

  assert jax.process_count() == 2 and jax.device_count() == N, jax.devices()
  mesh = jax.make_mesh((N,), (AXIS,))
  results = run_all(mesh)
  gathered = {k: np.asarray(multihost_utils.process_allgather(v, tiled=True))
              for k, v in results.items()}
  if process_id == 0:
    np.savez(out, **gathered)
  multihost_utils.sync_global_devices("compopt_multihost_done")
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
