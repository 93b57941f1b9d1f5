"""A small process for tests/test_launch.py to start through the launcher (not a test).

Usage: python _launch_child.py MODE [ARGS...]

* ``echo``: prints its rank, the number of processes, its devices and
  heartbeat variables, a progress line ending in ``\\r``, and a last line without a
  newline; exits 0.
* ``die RANK SIGNAL_OR_CODE PIDDIR``: every process writes its pid to
  PIDDIR/<rank>.pid; the process of rank RANK then ends (``kill``: SIGKILL to
  itself, a number: that exit code) and the others sleep for ten minutes.
* ``stubborn PIDDIR``: writes its pid, ignores SIGTERM and sleeps.
* ``jax_error``: joins the JAX cluster (``examples.distributed.initialize``);
  rank 1 raises, the others wait for it in a collective.
* ``checkpoint DIR``: joins the JAX cluster, then saves a global array
  (one row per process) to DIR three times with ``force=True`` and restores
  it after each save; prints ``restored K`` per save, and process 0 the
  names left in DIR's parent.
* ``main PIDDIR ARGS...``: writes its pid to PIDDIR/<rank>.pid, then runs
  ``python -m examples.main ARGS...``.
* ``sleep``: sleeps for ten minutes.
"""

import os
import signal
import sys
import time


def _write_pid(piddir, rank):
  path = os.path.join(piddir, f"{rank}.pid")
  with open(path + ".tmp", "w") as f:
    f.write(str(os.getpid()))
  os.replace(path + ".tmp", path)


def _checkpoint(directory, rank):
  from examples import distributed  # pylint: disable=import-outside-toplevel
  distributed.initialize()
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.sharding import NamedSharding  # pylint: disable=import-outside-toplevel
  from jax.sharding import PartitionSpec as P  # pylint: disable=import-outside-toplevel

  import compopt  # pylint: disable=import-outside-toplevel
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  sharding = NamedSharding(mesh, P("data"))
  rows = jax.process_count()

  def tree(k):
    full = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) + 100 * k
    return {"x": jax.make_array_from_callback(full.shape, sharding, lambda i: full[i])}

  for k in range(3):
    compopt.checkpoint.save(directory, tree(k), force=k > 0)
    restored = compopt.checkpoint.restore(directory, tree(0))
    for shard in restored["x"].addressable_shards:
      np.testing.assert_array_equal(np.asarray(shard.data),
                                    np.asarray(tree(k)["x"].addressable_data(0)))
    assert restored["x"].sharding == sharding
    print(f"restored {k}", flush=True)
  if rank == 0:
    print("left", sorted(os.listdir(os.path.dirname(os.path.abspath(directory)))), flush=True)
  jax.distributed.shutdown()
  return 0


def main():
  mode, args = sys.argv[1], sys.argv[2:]
  rank = int(os.environ["COMPOPT_PROCESS_ID"])
  if mode == "echo":
    print(f"rank {rank} of {os.environ['COMPOPT_NUM_PROCESSES']} "
          f"local {os.environ['COMPOPT_LOCAL_RANK']} "
          f"devices {os.environ['COMPOPT_DEVICES_PER_PROCESS']} "
          f"heartbeat {os.environ.get('COMPOPT_HEARTBEAT_TIMEOUT', '-')} "
          f"xla {os.environ['XLA_FLAGS']} coordinator {os.environ['JAX_COORDINATOR_ADDRESS']}")
    sys.stdout.write("progress 50%\r")
    sys.stdout.write("progress 100%\n")
    sys.stdout.write(f"no newline {rank}")
    return 0
  if mode == "die":
    who, how, piddir = int(args[0]), args[1], args[2]
    _write_pid(piddir, rank)
    if rank == who:
      time.sleep(0.5)
      if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
      return int(how)
    time.sleep(600)
    return 0
  if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _write_pid(args[0], rank)
    time.sleep(600)
    return 0
  if mode == "jax_error":
    from examples import distributed  # pylint: disable=import-outside-toplevel
    distributed.initialize()
    import numpy as np  # pylint: disable=import-outside-toplevel
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    print("joined", flush=True)
    if rank == 1:
      raise RuntimeError("rank 1 fails after joining")
    multihost_utils.process_allgather(np.ones(3))  # waits for rank 1
    return 0
  if mode == "checkpoint":
    return _checkpoint(args[0], rank)
  if mode == "main":
    _write_pid(args[0], rank)
    import runpy  # pylint: disable=import-outside-toplevel
    sys.argv = ["examples.main"] + args[1:]
    runpy.run_module("examples.main", run_name="__main__", alter_sys=True)
    return 0
  if mode == "sleep":
    time.sleep(600)
    return 0
  raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
  sys.exit(main())
