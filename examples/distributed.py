"""Joining a multi-process JAX cluster from flags or the launcher's environment.

A run of P processes (on one machine or several) gives every process the same
three facts: the coordinator's address, P, and its own rank. They come from
arguments (``examples.main``'s flags ``--coordinator_address``,
``--num_processes``, ``--process_id``) or, for those not given, from the
environment that ``python -m examples.launch`` sets:

=============================== ==============================================
``JAX_COORDINATOR_ADDRESS``     ``host:port`` of process 0 (JAX's own variable;
                                ``jax.distributed.initialize`` reads it too)
``COMPOPT_NUM_PROCESSES``       P, the number of processes over all machines
``COMPOPT_PROCESS_ID``          this process's rank in [0, P)
``COMPOPT_LOCAL_RANK``          its rank among the processes of its machine
``COMPOPT_DEVICES_PER_PROCESS`` devices each process uses (K)
``COMPOPT_HEARTBEAT_TIMEOUT``   seconds without a heartbeat after which
                                ``jax.distributed`` declares a process dead
                                (optional; JAX's default is 100)
=============================== ==============================================

JAX itself reads only the coordinator's address from the environment (and
finds everything on Slurm, Open MPI, Kubernetes or Cloud TPU by itself), so
the others have names of their own.

:func:`initialize` must run before anything starts a JAX backend (creates an
array, lists devices). It sets K devices per process -- on CPU
``jax_num_cpu_devices`` (as ``XLA_FLAGS=--xla_force_host_platform_device_count=K``
does); on GPUs the K GPUs ``local_rank·K ... local_rank·K + K − 1`` of the
machine -- and, with P > 1, calls ``jax.distributed.initialize`` with gloo
collectives on CPU (GPUs keep the backend's default, NCCL). An uncaught
exception then ends the process at once, so that a launcher sees it die.

When a process dies. A process killed on a machine that stays up (SIGKILL,
out of memory, a crash) has its sockets closed by the kernel: on CPU the
others' next gloo collective fails at once (``Gloo AllGather failed:
Connection closed by peer``) and ends them. A process that hangs (stopped,
deadlocked) or whose machine vanishes without closing its connections
(power, network) leaves the others blocked in a collective, with no Python
exception, until ``jax.distributed``'s coordination service (on process 0)
misses its heartbeats for the heartbeat timeout and aborts every process
still running (a C++ ``LOG(FATAL)``: SIGABRT, exit code 134; one waiting in
a barrier of the coordination service, as orbax's, raises
``JaxRuntimeError`` instead: exit code 1). If process 0 itself hangs, the
others abort once their heartbeats to it have failed for as long. Measured
with 2 CPU processes: the survivor ends 89-98 s after the hang with JAX's
default of 100 s, 7-8 s with ``heartbeat_timeout=10``. ``examples.launch``
stops the other processes of its machine as soon as one exits; it does not
see a hung process, nor the processes of other machines: the heartbeat
timeout covers those. Either way the run is over: restart every process,
and the run resumes from its last checkpoint bit for bit (orbax writes each
checkpoint whole or not at all).

This module imports JAX only inside :func:`initialize`, so that the launcher
can use its names without starting anything.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Mapping

ENV_COORDINATOR_ADDRESS = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "COMPOPT_NUM_PROCESSES"
ENV_PROCESS_ID = "COMPOPT_PROCESS_ID"
ENV_LOCAL_RANK = "COMPOPT_LOCAL_RANK"
ENV_DEVICES_PER_PROCESS = "COMPOPT_DEVICES_PER_PROCESS"
ENV_HEARTBEAT_TIMEOUT = "COMPOPT_HEARTBEAT_TIMEOUT"


@dataclasses.dataclass(frozen=True)
class Cluster:
  """Where this process stands in a run of ``num_processes`` processes."""
  coordinator_address: str | None
  num_processes: int
  process_id: int
  local_rank: int
  devices_per_process: int | None  # None: the backend's default
  heartbeat_timeout: int | None = None  # seconds; None: JAX's default (100)

  @property
  def is_multiprocess(self) -> bool:
    return self.num_processes > 1


def _int_from(value, name, env, environ, low):
  """``value`` if given, else the environment variable ``env`` parsed as an
  int; None when neither is set. Checks ``value >= low``."""
  source = name
  if value is None:
    raw = environ.get(env, "").strip()
    if not raw:
      return None
    source = f"the environment variable {env}"
    try:
      value = int(raw)
    except ValueError:
      raise ValueError(f"{source}={raw!r} is not an integer") from None
  if isinstance(value, bool) or not isinstance(value, int):
    raise TypeError(f"{name} must be an int; got {value!r}")
  if value < low:
    raise ValueError(f"{source} must be >= {low}; got {value}")
  return value


def resolve(coordinator_address: str | None = None, num_processes: int | None = None,
            process_id: int | None = None, devices_per_process: int | None = None, *,
            local_rank: int | None = None, heartbeat_timeout: int | None = None,
            environ: Mapping[str, str] | None = None) -> Cluster:
  """The :class:`Cluster` of this process: each argument given wins over its
  environment variable (see the module docstring); with neither, a single
  process with the backend's default devices. Several processes have one
  device each unless ``devices_per_process`` says otherwise.

  Raises:
    ValueError: a value out of range (``num_processes >= 1``,
      ``0 <= process_id < num_processes``, ``devices_per_process >= 1``,
      ``heartbeat_timeout >= 1``), or several processes without a
      coordinator address.
  """
  environ = os.environ if environ is None else environ
  num = _int_from(num_processes, "num_processes", ENV_NUM_PROCESSES, environ, 1) or 1
  pid = _int_from(process_id, "process_id", ENV_PROCESS_ID, environ, 0)
  pid = 0 if pid is None else pid
  if pid >= num:
    raise ValueError(f"process_id must be in [0, num_processes) = [0, {num}); got {pid}")
  devices = _int_from(devices_per_process, "devices_per_process", ENV_DEVICES_PER_PROCESS,
                      environ, 1)
  if devices is None and num > 1:
    devices = 1  # one device per process unless told otherwise
  rank = _int_from(local_rank, "local_rank", ENV_LOCAL_RANK, environ, 0)
  heartbeat = _int_from(heartbeat_timeout, "heartbeat_timeout", ENV_HEARTBEAT_TIMEOUT,
                        environ, 1)
  address = coordinator_address or environ.get(ENV_COORDINATOR_ADDRESS) or None
  if num > 1 and not address:
    raise ValueError(
        f"num_processes={num} needs the coordinator's address (host:port of process 0): "
        f"pass coordinator_address (--coordinator_address) or set {ENV_COORDINATOR_ADDRESS}")
  if address is not None and (":" not in address or not address.rsplit(":", 1)[1].isdigit()):
    raise ValueError(f"coordinator_address must be host:port; got {address!r}")
  return Cluster(address, num, pid, pid if rank is None else rank, devices, heartbeat)


def _exit_at_once(previous):
  """A ``sys.excepthook`` that reports the error, then ends the process
  without the exit handlers: ``jax.distributed``'s would wait for the other
  processes, which wait for this one in a collective."""
  def hook(kind, value, tb):
    try:
      previous(kind, value, tb)
      sys.stdout.flush()
      sys.stderr.flush()
    finally:
      os._exit(128 + 2 if issubclass(kind, KeyboardInterrupt) else 1)
  return hook


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, devices_per_process: int | None = None, *,
               local_rank: int | None = None, heartbeat_timeout: int | None = None,
               initialization_timeout: int = 300, exit_on_error: bool = True) -> Cluster:
  """Sets this process's devices and joins the cluster (see the module docstring).

  Call it first, before any JAX computation. Arguments left ``None`` are read
  from the environment (:func:`resolve`). A benchmark's worker module started
  by ``examples.launch.launch`` calls ``initialize()`` without arguments.

  Args:
    coordinator_address: ``host:port`` of process 0's coordinator.
    num_processes: P, the number of processes (over all machines), >= 1.
    process_id: this process's rank in [0, P).
    devices_per_process: K >= 1 devices per process; None: 1 with several
      processes, the backend's default for a single one (on CPU one device,
      or what ``XLA_FLAGS`` says; all GPUs).
    local_rank: the rank among this machine's processes (picks its GPUs);
      defaults to ``process_id``.
    heartbeat_timeout: seconds >= 1 without a heartbeat after which
      ``jax.distributed`` declares a process dead and aborts all the others
      (``jax.distributed.initialize``'s ``heartbeat_timeout_seconds``); None:
      ``$COMPOPT_HEARTBEAT_TIMEOUT``, else JAX's default of 100 s. Give every
      process the same value (process 0's coordination service applies its
      own). Shorter: the survivors of a hung or lost process end sooner
      (measured, 2 CPU processes: 7-8 s after the hang with 10, 89-98 s
      with 100); but a live process whose heartbeats stall that long (an
      overloaded host or network, a process stopped in a debugger) is
      declared dead too and ends the run. Heartbeats run on a thread of
      their own, so long compilations or steps do not stall them.
    initialization_timeout: seconds to wait for all processes to connect.
    exit_on_error: with several processes, an uncaught exception ends this
      process at once (exit code 1) after its traceback, instead of waiting
      in ``jax.distributed``'s exit handler for processes that wait for it;
      the launcher then stops the others.

  Returns:
    The :class:`Cluster` this process joined.
  """
  cluster = resolve(coordinator_address, num_processes, process_id, devices_per_process,
                    local_rank=local_rank, heartbeat_timeout=heartbeat_timeout)
  import jax  # pylint: disable=import-outside-toplevel

  local_ids = None
  if cluster.devices_per_process is not None:
    k = cluster.devices_per_process
    jax.config.update("jax_num_cpu_devices", k)  # the CPU backend only
    local_ids = list(range(cluster.local_rank * k, (cluster.local_rank + 1) * k))
  if cluster.is_multiprocess:
    if getattr(jax.config, "jax_cpu_collectives_implementation", None) is None:
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    extra = {}
    if cluster.heartbeat_timeout is not None:
      extra["heartbeat_timeout_seconds"] = cluster.heartbeat_timeout
    jax.distributed.initialize(
        coordinator_address=cluster.coordinator_address,
        num_processes=cluster.num_processes, process_id=cluster.process_id,
        local_device_ids=local_ids, initialization_timeout=initialization_timeout, **extra)
    if exit_on_error:
      sys.excepthook = _exit_at_once(sys.excepthook)
  elif local_ids is not None:  # one process: still only its K GPUs
    jax.config.update("jax_cuda_visible_devices", ",".join(map(str, local_ids)))
  return cluster
