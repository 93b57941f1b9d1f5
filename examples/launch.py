"""Starts the P processes of a multi-process JAX run on this machine.

In the spirit of ``torchrun --standalone``::

  python -m examples.launch -n 4 -- --config.num_workers=4 --workdir=out/p4
  python -m examples.launch -n 2 --devices_per_process 2 -- --config.num_workers=4
  python -m examples.launch --module mypackage.worker -n 4 -- --its --flags

starts ``python -m examples.main`` (or ``--module``) ``-n`` times with the
arguments after ``--``, each with the environment that
:func:`examples.distributed.initialize` reads: the coordinator's address (a
free port on 127.0.0.1 unless ``--coordinator host:port`` is given), the
number of processes, the rank, the devices per process (on CPU also
``XLA_FLAGS=--xla_force_host_platform_device_count=K``). Each line of output
is prefixed with the rank, ``[0] ...``.

Never a hang: when a process dies (a nonzero exit or a signal) the launcher
terminates the others (SIGTERM to each one's process group, SIGKILL after
``--grace_period`` seconds: JAX's preemption service catches SIGTERM as a
notice and keeps running) and exits with the dead process's code (128 + the
signal number for a signal); after ``--timeout`` seconds it stops them all
and exits with 124. SIGINT or SIGTERM to the launcher stops them too. A
process that joined with :func:`examples.distributed.initialize` ends at
once on an uncaught exception, rather than in ``jax.distributed``'s exit
handler, which would wait for the others. A hung process (alive, but no
longer taking part), or a process of another machine, is beyond the
launcher's sight: ``--heartbeat_timeout`` seconds after it stops sending
heartbeats (JAX's default: 100), ``jax.distributed`` ends the others, and
the launcher then stops the rest. To recover, start every process again:
``examples.main`` resumes from the last checkpoint of its workdir.

Several machines: run the launcher on each one with the same ``-n``,
``--nnodes`` and ``--coordinator`` (an address of machine 0 the others can
reach) and its own ``--node_rank``; process ranks are ``node_rank * n + i``.

From Python (a benchmark starting its own worker module)::

  from examples import launch
  code = launch.launch("mypackage.worker", 4, args=["--size", "1000"], timeout=600)

The worker calls ``examples.distributed.initialize()`` first thing.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import IO, Mapping, Sequence

from examples import distributed

DEFAULT_MODULE = "examples.main"
TIMEOUT_EXIT_CODE = 124  # as timeout(1)
_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
_LINE_END = re.compile(rb"\r\n|\n|\r")


def free_port(host: str = "127.0.0.1") -> int:
  """A TCP port on ``host`` that nothing listens on right now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind((host, 0))
    return s.getsockname()[1]


def exit_code(returncode: int) -> int:
  """A child's return code as a shell reports it: 128 + n for signal n."""
  return 128 - returncode if returncode < 0 else returncode


def _describe(returncode: int) -> str:
  if returncode < 0:
    try:
      return f"was killed by {signal.Signals(-returncode).name}"
    except ValueError:
      return f"was killed by signal {-returncode}"
  return f"exited with code {returncode}"


def _with_device_count(xla_flags: str, k: int) -> str:
  """``xla_flags`` with the host device count set to k (replacing any)."""
  kept = [f for f in xla_flags.split() if not f.startswith(_DEVICE_COUNT_FLAG)]
  return " ".join(kept + [f"{_DEVICE_COUNT_FLAG}={k}"])


def process_env(base: Mapping[str, str], *, coordinator: str, num_processes: int,
                process_id: int, local_rank: int, devices_per_process: int,
                bind_address: str | None = None,
                heartbeat_timeout: int | None = None) -> dict:
  """The environment of one process: ``base`` plus the variables of
  :mod:`examples.distributed`."""
  env = dict(base)
  env[distributed.ENV_COORDINATOR_ADDRESS] = coordinator
  env[distributed.ENV_NUM_PROCESSES] = str(num_processes)
  env[distributed.ENV_PROCESS_ID] = str(process_id)
  env[distributed.ENV_LOCAL_RANK] = str(local_rank)
  env[distributed.ENV_DEVICES_PER_PROCESS] = str(devices_per_process)
  env["XLA_FLAGS"] = _with_device_count(env.get("XLA_FLAGS", ""), devices_per_process)
  if heartbeat_timeout is not None:
    env[distributed.ENV_HEARTBEAT_TIMEOUT] = str(heartbeat_timeout)
  if bind_address:
    env["JAX_COORDINATOR_BIND_ADDRESS"] = bind_address  # read by JAX on process 0
  env["PYTHONUNBUFFERED"] = "1"  # lines arrive as they are printed
  return env


def _pump(stream: IO[bytes], prefix: bytes, out, lock: threading.Lock):
  """Copies ``stream`` to ``out`` line by line (``\\n`` or ``\\r``, so that
  progress bars keep their prefix), each line prefixed."""
  binary = getattr(out, "buffer", None)
  pending = b""
  broken = False  # the output went away: keep draining the pipe, lest the child block

  def emit(line: bytes):
    nonlocal broken
    if broken:
      return
    with lock:
      try:
        if binary is not None:
          binary.write(prefix + line)
          binary.flush()
        else:
          out.write((prefix + line).decode("utf-8", "replace"))
          out.flush()
      except (OSError, ValueError):
        broken = True

  try:
    while True:
      chunk = stream.read1(1 << 16) if hasattr(stream, "read1") else stream.read(1 << 16)
      if not chunk:
        break
      pending += chunk
      start = 0
      for m in _LINE_END.finditer(pending):
        if m.group() == b"\r" and m.end() == len(pending):
          break  # maybe the first half of \r\n: wait for more
        emit(pending[start:m.end()])
        start = m.end()
      pending = pending[start:]
    if pending:
      emit(pending + b"\n")
  except (OSError, ValueError):  # the pipe itself failed
    pass
  finally:
    stream.close()


def _signal_group(proc: subprocess.Popen, sig: int):
  """Sends ``sig`` to the process group of ``proc`` (it and its children),
  only while ``proc`` has not been reaped, so that its id still names it."""
  if proc.poll() is None:
    try:
      os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
      pass


def terminate(procs: Sequence[subprocess.Popen], grace_period: float = 5.0, say=None):
  """SIGTERM to every process group still running, SIGKILL to what is left
  after ``grace_period`` seconds; returns once all have been reaped.

  (A process in a ``jax.distributed`` run catches SIGTERM as a preemption
  notice and keeps running: it is the SIGKILL that ends it.)
  """
  alive = [p for p in procs if p.poll() is None]
  for p in alive:
    _signal_group(p, signal.SIGTERM)
  deadline = time.monotonic() + grace_period
  while alive and time.monotonic() < deadline:
    time.sleep(0.05)
    alive = [p for p in alive if p.poll() is None]
  if alive and say is not None:
    say(f"{len(alive)} process(es) still running {grace_period:g} s after SIGTERM; SIGKILL")
  for p in alive:
    _signal_group(p, signal.SIGKILL)
  for p in procs:
    p.wait()  # after SIGKILL, a short wait


def launch(module_or_argv: str | Sequence[str], num_processes: int, *,
           args: Sequence[str] = (), devices_per_process: int = 1,
           coordinator: str | None = None, num_nodes: int = 1, node_rank: int = 0,
           timeout: float | None = None, grace_period: float = 5.0,
           heartbeat_timeout: int | None = None, env: Mapping[str, str] | None = None,
           prefix_output: bool = True, output: IO | None = None, cwd: str | None = None,
           poll_interval: float = 0.05,
           log: IO | None = None) -> int:
  """Runs ``num_processes`` processes of a module (or a command) as one
  multi-process JAX run and returns its exit code.

  Args:
    module_or_argv: a module name, run as ``python -m module`` with this
      Python, or a command line (a sequence of strings).
    num_processes: processes started on this machine, >= 1.
    args: appended to every process's command line.
    devices_per_process: K >= 1 devices each process uses.
    coordinator: ``host:port`` of process 0's coordinator; None: a free port
      on 127.0.0.1, the coordinator listening there only (this machine alone).
    num_nodes: machines taking part (each runs this launcher), >= 1; more
      than one needs ``coordinator``.
    node_rank: this machine's rank in [0, num_nodes); its processes get the
      ranks ``node_rank * num_processes + i``.
    timeout: seconds before every process is stopped (None: no limit).
    grace_period: seconds between SIGTERM and SIGKILL when stopping them.
    heartbeat_timeout: seconds >= 1 without a heartbeat after which
      ``jax.distributed`` declares a process dead and aborts the others
      (see :func:`examples.distributed.initialize`); None: JAX's default,
      100 s. It ends the processes of the other machines when one dies; on
      this machine the launcher stops them at once. Give every machine's
      launcher the same value.
    env: the processes' base environment (default ``os.environ``); the
      variables of :mod:`examples.distributed` are added to it.
    prefix_output: prefix each output line with the rank (``[3] ...``); if
      False the processes write straight to this process's stdout/stderr.
    output: where prefixed lines go (default ``sys.stdout``).
    cwd: the processes' working directory (default this one's).
    poll_interval: seconds between checks of the processes.
    log: where the launcher's own messages go (default ``sys.stderr``).

  Returns:
    0 when every process exited with 0; else the code of the first process
    seen to fail (128 + n for signal n), or 124 on the timeout.

  Raises:
    ValueError: an argument out of range.
  """
  for name, value, low in (("num_processes", num_processes, 1), ("num_nodes", num_nodes, 1),
                           ("devices_per_process", devices_per_process, 1)):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise ValueError(f"{name} must be an int >= {low}; got {value!r}")
  if isinstance(node_rank, bool) or not isinstance(node_rank, int) or not (
      0 <= node_rank < num_nodes):
    raise ValueError(f"node_rank must be an int in [0, num_nodes) = [0, {num_nodes}); "
                     f"got {node_rank!r}")
  if timeout is not None and not timeout > 0:
    raise ValueError(f"timeout must be > 0 seconds (or None); got {timeout!r}")
  if not grace_period >= 0:
    raise ValueError(f"grace_period must be >= 0 seconds; got {grace_period!r}")
  if heartbeat_timeout is not None and (
      isinstance(heartbeat_timeout, bool) or not isinstance(heartbeat_timeout, int)
      or heartbeat_timeout < 1):
    raise ValueError(f"heartbeat_timeout must be an int >= 1 seconds (or None); "
                     f"got {heartbeat_timeout!r}")
  if num_nodes > 1 and not coordinator:
    raise ValueError(f"num_nodes={num_nodes} needs coordinator='host:port', an address of "
                     "node 0 that every machine can reach")
  bind = None
  if coordinator is None:
    port = free_port()
    coordinator, bind = f"127.0.0.1:{port}", f"127.0.0.1:{port}"
  elif ":" not in coordinator or not coordinator.rsplit(":", 1)[1].isdigit():
    raise ValueError(f"coordinator must be host:port; got {coordinator!r}")

  if isinstance(module_or_argv, str):
    command = [sys.executable, "-m", module_or_argv]
  else:
    command = list(module_or_argv)
    if not command:
      raise ValueError("module_or_argv: an empty command line")
  command += [str(a) for a in args]
  base = dict(os.environ if env is None else env)
  out = sys.stdout if output is None else output
  log = sys.stderr if log is None else log
  total = num_nodes * num_processes
  lock = threading.Lock()

  def say(message):
    with lock:
      print(f"[launch] {message}", file=log, flush=True)

  procs, pumps = [], []
  deadline = None if timeout is None else time.monotonic() + timeout
  code = None
  try:
    for i in range(num_processes):
      rank = node_rank * num_processes + i
      penv = process_env(base, coordinator=coordinator, num_processes=total,
                         process_id=rank, local_rank=i,
                         devices_per_process=devices_per_process, bind_address=bind,
                         heartbeat_timeout=heartbeat_timeout)
      pipe = subprocess.PIPE if prefix_output else None
      proc = subprocess.Popen(command, env=penv, cwd=cwd, stdin=subprocess.DEVNULL,
                              stdout=pipe, stderr=subprocess.STDOUT if prefix_output else None,
                              start_new_session=True)  # its own group: we stop it whole
      procs.append(proc)
      if prefix_output:
        pump = threading.Thread(target=_pump, args=(proc.stdout, f"[{rank}] ".encode(), out,
                                                    lock), daemon=True)
        pump.start()
        pumps.append(pump)
    while code is None:
      for i, p in enumerate(procs):
        rc = p.poll()
        if rc is not None and rc != 0:
          rank = node_rank * num_processes + i
          say(f"process {rank} {_describe(rc)}; stopping the others")
          code = exit_code(rc)
          break
      else:
        if all(p.returncode == 0 for p in procs):
          code = 0
        elif deadline is not None and time.monotonic() >= deadline:
          say(f"timed out after {timeout:g} s; stopping the processes")
          code = TIMEOUT_EXIT_CODE
        else:
          time.sleep(poll_interval)
  finally:  # also on KeyboardInterrupt or an error here: no process left behind
    terminate(procs, grace_period, say if code != 0 else None)
    for pump in pumps:
      pump.join(timeout=5.0)
  return code


def _parser():
  p = argparse.ArgumentParser(
      prog="python -m examples.launch",
      description="Start the processes of a multi-process JAX run (examples.main by "
                  "default) on this machine: python -m examples.launch -n 4 -- ARGS",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("-n", "--num_processes", type=int, default=1,
                 help="processes on this machine")
  p.add_argument("--devices_per_process", type=int, default=1,
                 help="devices of each process (CPU: host devices; GPU: GPUs)")
  p.add_argument("--module", default=DEFAULT_MODULE, help="the module each process runs")
  p.add_argument("--coordinator", default=None,
                 help="host:port of process 0 (default: a free port on 127.0.0.1)")
  p.add_argument("--nnodes", type=int, default=1, help="machines, each running the launcher")
  p.add_argument("--node_rank", type=int, default=0, help="this machine's rank")
  p.add_argument("--timeout", type=float, default=None,
                 help="seconds before all processes are stopped (exit code 124)")
  p.add_argument("--grace_period", type=float, default=5.0,
                 help="seconds between SIGTERM and SIGKILL")
  p.add_argument("--heartbeat_timeout", type=int, default=None,
                 help="seconds without a heartbeat before jax.distributed declares a process "
                      "dead and ends the others; None: JAX's default, 100")
  p.add_argument("--no_prefix", action="store_true",
                 help="do not prefix output lines with the rank")
  return p


class _Stop(Exception):
  """SIGTERM to the launcher."""


def main(argv: Sequence[str] | None = None) -> int:
  """The command line; returns the exit code."""
  argv = list(sys.argv[1:] if argv is None else argv)
  own, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (
      argv, [])
  parser = _parser()
  opts = parser.parse_args(own)

  def on_sigterm(signum, frame):
    raise _Stop()
  previous = signal.signal(signal.SIGTERM, on_sigterm)
  try:
    return launch(opts.module, opts.num_processes, args=rest,
                  devices_per_process=opts.devices_per_process, coordinator=opts.coordinator,
                  num_nodes=opts.nnodes, node_rank=opts.node_rank, timeout=opts.timeout,
                  grace_period=opts.grace_period, heartbeat_timeout=opts.heartbeat_timeout,
                  prefix_output=not opts.no_prefix)
  except ValueError as e:
    parser.error(str(e))  # exits with 2
    raise
  except KeyboardInterrupt:
    return 128 + signal.SIGINT
  except _Stop:
    return 128 + signal.SIGTERM
  finally:
    signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
  sys.exit(main())
