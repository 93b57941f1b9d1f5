"""A small process for tests/test_launch.py to start through the launcher (not a test).

Usage: python _launch_child.py MODE [ARGS...]

* ``echo``: prints its rank, the number of processes and its devices
  variables, a progress line ending in ``\\r``, and a last line without a
  newline; exits 0.
* ``die RANK SIGNAL_OR_CODE PIDDIR``: every process writes its pid to
  PIDDIR/<rank>.pid; the process of rank RANK then ends (``kill``: SIGKILL to
  itself, a number: that exit code) and the others sleep for ten minutes.
* ``stubborn PIDDIR``: writes its pid, ignores SIGTERM and sleeps.
* ``jax_error``: joins the JAX cluster (``examples.distributed.initialize``);
  rank 1 raises, the others wait for it in a collective.
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


def main():
  mode, args = sys.argv[1], sys.argv[2:]
  rank = int(os.environ["COMPOPT_PROCESS_ID"])
  if mode == "echo":
    print(f"rank {rank} of {os.environ['COMPOPT_NUM_PROCESSES']} "
          f"local {os.environ['COMPOPT_LOCAL_RANK']} "
          f"devices {os.environ['COMPOPT_DEVICES_PER_PROCESS']} "
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
  if mode == "sleep":
    time.sleep(600)
    return 0
  raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
  sys.exit(main())
