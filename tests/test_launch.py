"""The local launcher (examples/launch.py) and examples.main over several
processes (jax.distributed, gloo on CPU).

The processes get a clean environment: conftest.py gives this process 8 host
devices through XLA_FLAGS, which the children must not inherit.
"""

import concurrent.futures
import io
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from examples import distributed
from examples import launch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CHILD = [sys.executable, os.path.join(HERE, "_launch_child.py")]
TIMEOUT_S = 240


def child_env():
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "JAX_PLATFORMS") and not k.startswith("COMPOPT_")
         and not k.startswith("JAX_COORDINATOR")}
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = os.pathsep.join(
      [ROOT, HERE] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  return env


def run_launch(target, n, args=(), **kwargs):
  """launch.launch with the output captured: (code, text, launcher messages, seconds)."""
  out, log = io.StringIO(), io.StringIO()
  kwargs.setdefault("timeout", TIMEOUT_S)
  t0 = time.monotonic()
  code = launch.launch(target, n, args=args, env=child_env(), output=out, log=log, **kwargs)
  return code, out.getvalue(), log.getvalue(), time.monotonic() - t0


def read_pids(piddir, ranks):
  """The pids the processes wrote to ``piddir``, by rank."""
  pids = {}
  for r in ranks:
    path = os.path.join(piddir, f"{r}.pid")
    if os.path.exists(path):
      with open(path) as f:
        pids[r] = int(f.read())
  return pids


def gone(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  return False


# ------------------------------------------------------------ the launcher


def test_rank_prefixes_and_environment():
  code, text, _, _ = run_launch(CHILD, 3, args=["echo"], devices_per_process=2)
  assert code == 0, text
  lines = text.splitlines(keepends=True)
  for r in range(3):
    mine = [line for line in lines if line.startswith(f"[{r}] ")]
    assert len(mine) == 4, text  # echo, 50% (ended by \r), 100%, no newline
    assert mine[0].startswith(f"[{r}] rank {r} of 3 local {r} devices 2 heartbeat - ")
    assert "--xla_force_host_platform_device_count=2" in mine[0]
    assert " coordinator 127.0.0.1:" in mine[0]
    assert mine[1] == f"[{r}] progress 50%\r"
    assert mine[2] == f"[{r}] progress 100%\n"
    assert mine[3] == f"[{r}] no newline {r}\n"
  assert all(line[:1] == "[" for line in lines)  # nothing unprefixed
  coords = {line.split(" coordinator ")[1].strip() for line in lines if " coordinator " in line}
  assert len(coords) == 1


def test_command_line_ranks_on_a_second_node():
  """``python -m examples.launch`` with --module, --nnodes and --node_rank."""
  proc = subprocess.run(
      [sys.executable, "-m", "examples.launch", "-n", "2", "--nnodes", "3", "--node_rank", "1",
       "--coordinator", "127.0.0.1:1", "--module", "_launch_child", "--timeout", "60",
       "--heartbeat_timeout", "7", "--", "echo"],
      env=child_env(), capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  for r, local in ((2, 0), (3, 1)):  # ranks node_rank * n + i of 6
    assert f"[{r}] rank {r} of 6 local {local} devices 1 heartbeat 7 " in proc.stdout
    assert f"coordinator 127.0.0.1:1\n" in proc.stdout
  assert "[0]" not in proc.stdout and "[4]" not in proc.stdout


@pytest.mark.parametrize("how,expected", [("kill", 128 + 9), ("3", 3)])
def test_a_dead_process_stops_the_others(tmp_path, how, expected):
  code, text, log, seconds = run_launch(CHILD, 3, args=["die", "1", how, str(tmp_path)],
                                        timeout=60, grace_period=2.0)
  assert code == expected, (text, log)
  assert seconds < 20, seconds  # not the sleepers' ten minutes, nor the timeout
  assert "process 1 " in log and "stopping the others" in log
  pids = read_pids(tmp_path, [0, 1, 2])
  assert len(pids) == 3 and all(gone(p) for p in pids.values()), pids


def test_an_error_after_joining_ends_the_run_quickly():
  """An uncaught exception ends its process at once (not in jax.distributed's
  exit barrier), so the launcher stops the one waiting in a collective (JAX
  catches its SIGTERM as a preemption notice: SIGKILL ends it)."""
  code, text, log, seconds = run_launch(CHILD, 2, args=["jax_error"], timeout=120,
                                        grace_period=1.0)
  assert code == 1, text + log
  assert "[1] RuntimeError: rank 1 fails after joining" in text
  assert "process 1 exited with code 1" in log
  assert seconds < 30, seconds  # not jax's 30 s gloo or 100 s heartbeat timeouts


def test_sigterm_ignored_then_sigkill_and_the_timeout(tmp_path):
  code, _, log, seconds = run_launch(CHILD, 2, args=["stubborn", str(tmp_path)], timeout=3,
                                     grace_period=1.0)
  assert code == launch.TIMEOUT_EXIT_CODE and "timed out after 3 s" in log
  assert "2 process(es) still running 1 s after SIGTERM; SIGKILL" in log
  assert 3 <= seconds < 15, seconds
  pids = read_pids(tmp_path, [0, 1])
  assert len(pids) == 2 and all(gone(p) for p in pids.values()), pids


def test_two_processes_overwrite_one_checkpoint(tmp_path):
  """compopt.checkpoint.save with force=True from every process: process 0
  swaps the directories between barriers, so each process restores the new
  checkpoint right after the save, and nothing is left beside it."""
  code, text, log, _ = run_launch(CHILD, 2, args=["checkpoint", str(tmp_path / "ckpt")],
                                  timeout=120, grace_period=1.0)
  assert code == 0, text + log
  for r in range(2):
    assert [line for line in text.splitlines() if line.startswith(f"[{r}] restored")] == [
        f"[{r}] restored {k}" for k in range(3)], text
  assert "[0] left ['ckpt']\n" in text, text


def test_bad_arguments_name_the_parameter():
  with pytest.raises(ValueError, match="num_processes must be an int >= 1"):
    launch.launch(CHILD, 0)
  with pytest.raises(ValueError, match=r"node_rank must be an int in \[0, num_nodes\)"):
    launch.launch(CHILD, 1, num_nodes=2, node_rank=2, coordinator="h:1")
  with pytest.raises(ValueError, match="num_nodes=2 needs coordinator"):
    launch.launch(CHILD, 1, num_nodes=2)
  with pytest.raises(ValueError, match="coordinator must be host:port"):
    launch.launch(CHILD, 1, coordinator="localhost")
  with pytest.raises(ValueError, match="timeout must be > 0"):
    launch.launch(CHILD, 1, timeout=0)
  with pytest.raises(ValueError, match=r"heartbeat_timeout must be an int >= 1 .*got 0"):
    launch.launch(CHILD, 1, heartbeat_timeout=0)


def test_distributed_resolve_flags_win_over_environment():
  env = {distributed.ENV_COORDINATOR_ADDRESS: "h:5", distributed.ENV_NUM_PROCESSES: "4",
         distributed.ENV_PROCESS_ID: "3", distributed.ENV_DEVICES_PER_PROCESS: "2"}
  c = distributed.resolve(environ=env)
  assert (c.coordinator_address, c.num_processes, c.process_id, c.local_rank,
          c.devices_per_process) == ("h:5", 4, 3, 3, 2)
  c = distributed.resolve(num_processes=8, process_id=5, environ=env)
  assert (c.num_processes, c.process_id) == (8, 5)
  assert distributed.resolve(environ={}) == distributed.Cluster(None, 1, 0, 0, None)
  two = distributed.resolve("h:1", 2, 1, environ={})  # one device each by default
  assert (two.devices_per_process, two.local_rank, two.is_multiprocess) == (1, 1, True)
  with pytest.raises(ValueError, match=r"process_id must be in \[0, num_processes\)"):
    distributed.resolve(process_id=4, environ=env)
  with pytest.raises(ValueError, match="COMPOPT_NUM_PROCESSES='x' is not an integer"):
    distributed.resolve(environ={distributed.ENV_NUM_PROCESSES: "x"})
  with pytest.raises(ValueError, match="needs the coordinator's address"):
    distributed.resolve(num_processes=2, environ={})
  with pytest.raises(ValueError, match="devices_per_process must be >= 1"):
    distributed.resolve(devices_per_process=0, environ={})


def test_distributed_heartbeat_timeout_from_flag_or_environment():
  env = {distributed.ENV_HEARTBEAT_TIMEOUT: "12"}
  assert distributed.resolve(environ={}).heartbeat_timeout is None  # JAX's default
  assert distributed.resolve(environ=env).heartbeat_timeout == 12
  assert distributed.resolve(heartbeat_timeout=5, environ=env).heartbeat_timeout == 5
  with pytest.raises(ValueError, match="heartbeat_timeout must be >= 1; got 0"):
    distributed.resolve(heartbeat_timeout=0, environ={})
  with pytest.raises(ValueError, match="COMPOPT_HEARTBEAT_TIMEOUT must be >= 1; got -3"):
    distributed.resolve(environ={distributed.ENV_HEARTBEAT_TIMEOUT: "-3"})
  penv = launch.process_env({}, coordinator="h:1", num_processes=2, process_id=0, local_rank=0,
                            devices_per_process=1, heartbeat_timeout=9)
  assert penv[distributed.ENV_HEARTBEAT_TIMEOUT] == "9"
  assert distributed.ENV_HEARTBEAT_TIMEOUT not in launch.process_env(
      {}, coordinator="h:1", num_processes=2, process_id=0, local_rank=0,
      devices_per_process=1)


# ------------------------------------------------------ examples.main, P > 1


def main_args(workdir, **config):
  flags = {"dataset": "digits", "model": "mlp", "num_workers": 2, "batch_size": 8,
           "methods": "('ef_topk','psgd')", "num_steps": 4, "log_every": 2, "eval_every": 4,
           "checkpoint_every": 4, "test_limit": 64, "eval_batch_size": 64,
           "progress": False}
  flags.update(config)
  return [f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in flags.items()]


def final_params(run_dir):
  """The params (every worker's) of the last checkpoint in ``run_dir``, as numpy."""
  mngr = ocp.CheckpointManager(os.path.join(run_dir, "checkpoints"))
  path = os.path.join(run_dir, "checkpoints", str(mngr.latest_step()), "default")
  mngr.close()
  checkpointer = ocp.StandardCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  # numpy targets: restored on the host, whatever devices wrote it
  target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype) if hasattr(m, "shape") else 0, tree)
  return checkpointer.restore(path, target)["state"]["params"]


def history(run_dir):
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k != "wall_time"} for line in f]


# tests/test_multihost.py checks the same numbers on a smaller step; this one runs
# examples/main.py as a user would, both setups at once (about 35 s).
@pytest.mark.slow
def test_two_processes_match_one_process_with_two_devices(tmp_path):
  setups = {"two": (2, 1), "one": (1, 2)}  # processes, devices per process
  with concurrent.futures.ThreadPoolExecutor(len(setups)) as pool:  # both at once
    futures = {name: pool.submit(run_launch, "examples.main", n, main_args(tmp_path / name),
                                 devices_per_process=k, cwd=str(tmp_path))
               for name, (n, k) in setups.items()}
  runs = {}
  for name, future in futures.items():
    code, text, log, _ = future.result()
    assert code == 0, text[-5000:] + log
    runs[name] = text
  assert "2 workers (shard_map, 2 processes)" in runs["two"]
  assert "2 workers (shard_map)" in runs["one"]
  # Process 0 alone reports and writes the summary and the figure.
  assert "[0] method" in runs["two"] and "[1] method" not in runs["two"]
  assert (tmp_path / "two" / "summary.json").exists()
  assert (tmp_path / "two" / "comparison.png").exists()
  for preset in ("ef_topk", "psgd"):
    two, one = tmp_path / "two" / preset, tmp_path / "one" / preset
    h2, h1 = history(two), history(one)
    assert [r["step"] for r in h2] == [2, 4] and h2[-1]["mb_sent"] > 0
    p2, p1 = final_params(two), final_params(one)
    if preset == "ef_topk":
      # All-gathers of the top-k payloads, summed locally in a fixed order:
      # the same bits whether the two workers share a process or not.
      assert h2 == h1
      jax.tree.map(np.testing.assert_array_equal, p2, p1)
    else:
      # P-SGD's dense float all-reduce runs over gloo in one case and inside
      # XLA in the other; the summation order may differ.
      assert [r["mb_sent"] for r in h2] == [r["mb_sent"] for r in h1]
      for r2, r1 in zip(h2, h1):
        np.testing.assert_allclose(r2["train_loss"], r1["train_loss"], rtol=1e-5)
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p2, p1)


def test_workers_must_equal_the_global_device_count(tmp_path):
  code, text, log, _ = run_launch("examples.main", 2,
                                  main_args(tmp_path, num_workers=3, methods="()"),
                                  cwd=str(tmp_path), grace_period=2.0)
  assert code != 0
  assert "config.num_workers=3 must equal the number of devices over all 2 processes" in text


@pytest.mark.slow  # three launches of two processes
def test_two_processes_resume_bit_for_bit(tmp_path):
  """Orbax checkpoints written by 2 processes resume on 2 processes and end
  where an uninterrupted run ends."""
  def run(name, **config):
    args = main_args(tmp_path / name, methods="()", method="ef_sgd",
                     compressor="top_k(ratio=0.1)", num_steps=6, checkpoint_every=2,
                     eval_every=2, **config)
    code, text, log, _ = run_launch("examples.main", 2, args, cwd=str(tmp_path))
    assert code == 0, text[-5000:] + log
  run("full")
  run("resumed", halt_after_steps=3)
  assert [r["step"] for r in history(tmp_path / "resumed")] == [2, 3]
  run("resumed")
  jax.tree.map(np.testing.assert_array_equal, final_params(tmp_path / "resumed"),
               final_params(tmp_path / "full"))
  full = {r["step"]: r for r in history(tmp_path / "full")}
  resumed = history(tmp_path / "resumed")
  assert [r["step"] for r in resumed] == [2, 3, 4, 6]
  for r in resumed:
    if r["step"] in (2, 6):  # 4 covers steps 3..4 only in the resumed run
      assert r == full[r["step"]]


def checkpoint_steps(run_dir):
  """The steps of the complete checkpoints in ``run_dir`` (orbax renames a
  step's temporary directory to its number once every process has written)."""
  path = os.path.join(run_dir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def timed(fn, *args, **kwargs):
  """fn's result and the monotonic time it returned."""
  result = fn(*args, **kwargs)
  return result, time.monotonic()


HEARTBEAT_S = 10


@pytest.mark.slow  # five launches of two processes, one waiting out a heartbeat timeout
def test_a_dead_process_ends_the_run_and_a_restart_resumes_bit_for_bit(tmp_path):
  """One process of a 2-process examples.main run dies mid-training, after
  its second checkpoint:

  * ``kill``: SIGKILL, both processes under one launcher, which stops the
    other at once;
  * ``freeze``: SIGSTOP (a hung process, or a machine that vanished without
    closing its connections), each process under a launcher of its own as
    on two machines: the survivor waits in a collective or a barrier until
    jax.distributed, with a heartbeat timeout of 10 s, ends it.

  Restarting both processes from the last checkpoint then ends with the
  parameters and metrics of a run that never stopped, bit for bit."""
  steps = 40

  def args(name, piddir=None):
    flags = main_args(tmp_path / name, methods="()", method="ef_sgd",
                      compressor="top_k(ratio=0.1)", num_steps=steps, log_every=2,
                      eval_every=steps, checkpoint_every=4)
    return ["main", str(piddir)] + flags if piddir else flags

  def stop_after_a_checkpoint(name, futures, ranks, sig):
    """Sends ``sig`` to the process of rank ``ranks[-1]`` once run ``name``
    has its second checkpoint; the time it was sent."""
    piddir = tmp_path / f"{name}_pids"
    deadline = time.monotonic() + TIMEOUT_S
    while not (len(checkpoint_steps(tmp_path / name)) >= 2
               and len(read_pids(piddir, ranks)) == len(ranks)):
      assert not any(f.done() for f in futures), [f.result()[0][1][-3000:] for f in futures]
      assert time.monotonic() < deadline, "no second checkpoint"
      time.sleep(0.05)
    os.kill(read_pids(piddir, ranks)[ranks[-1]], sig)
    return time.monotonic(), read_pids(piddir, ranks)

  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    full = pool.submit(run_launch, "examples.main", 2, args("full"), cwd=str(tmp_path))

    # kill: the launcher notices and stops the other process.
    (tmp_path / "kill_pids").mkdir()
    killed = pool.submit(timed, run_launch, CHILD, 2, args("kill", tmp_path / "kill_pids"),
                         cwd=str(tmp_path), grace_period=2.0, heartbeat_timeout=HEARTBEAT_S)
    t_kill, pids = stop_after_a_checkpoint("kill", [killed], [0, 1], signal.SIGKILL)
    (code, text, log, _), t_end = killed.result()
    assert code == 128 + signal.SIGKILL, text[-3000:] + log
    assert "process 1 was killed by SIGKILL; stopping the others" in log
    assert t_end - t_kill < 10, t_end - t_kill
    assert all(gone(p) for p in pids.values())
    assert checkpoint_steps(tmp_path / "kill")[-1] < steps  # it died mid-training

    # freeze: two launchers, as on two machines; the heartbeat ends rank 0.
    (tmp_path / "freeze_pids").mkdir()
    coordinator = f"127.0.0.1:{launch.free_port()}"
    nodes = [pool.submit(timed, run_launch, CHILD, 1, args("freeze", tmp_path / "freeze_pids"),
                         cwd=str(tmp_path), num_nodes=2, node_rank=r, coordinator=coordinator,
                         grace_period=2.0, heartbeat_timeout=HEARTBEAT_S) for r in range(2)]
    t_stop, pids = stop_after_a_checkpoint("freeze", nodes, [0, 1], signal.SIGSTOP)
    try:
      (code, text, log, _), t_end = nodes[0].result(timeout=TIMEOUT_S)
    finally:
      os.kill(pids[1], signal.SIGKILL)  # the hung machine is gone for good
    # jax.distributed aborts it (SIGABRT), or raises in a barrier of the
    # coordination service (orbax's), which ends it with code 1
    assert code in (128 + signal.SIGABRT, 1), text[-3000:] + log
    assert "heartbeat" in text.lower(), text[-5000:]  # the error, before the stack dumps
    assert t_end - t_stop < 2 * HEARTBEAT_S, t_end - t_stop  # not JAX's default 100 s
    assert nodes[1].result()[0][0] == 128 + signal.SIGKILL
    assert checkpoint_steps(tmp_path / "freeze")[-1] < steps

    # Restart every process: they resume from the last checkpoint.
    restarts = {name: pool.submit(run_launch, "examples.main", 2, args(name),
                                  cwd=str(tmp_path)) for name in ("kill", "freeze")}
    for future in [full] + list(restarts.values()):
      code, text, log, _ = future.result()
      assert code == 0, text[-5000:] + log
  for name in ("kill", "freeze"):
    jax.tree.map(np.testing.assert_array_equal, final_params(tmp_path / name),
                 final_params(tmp_path / "full"))
    assert history(tmp_path / name) == history(tmp_path / "full")
