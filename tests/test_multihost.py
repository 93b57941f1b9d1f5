"""Two processes on localhost (jax.distributed, gloo on CPU, 2 devices each)
give the same numbers over a global 4-device mesh as one process with 4
devices, including a step skipped for a NaN on the second process, and
``comm_bits`` reads each process's own workers."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import _multihost_worker as worker

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT_S = 240


def _free_port():
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(tmp_path):
  port = _free_port()
  out = tmp_path / "result.npz"
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  env["PYTHONPATH"] = os.pathsep.join(
      [os.path.dirname(HERE)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  procs = []
  logs = []
  try:
    for i in range(2):
      log = open(tmp_path / f"worker{i}.log", "w+")
      logs.append(log)
      procs.append(subprocess.Popen(
          [sys.executable, os.path.join(HERE, "_multihost_worker.py"), str(i), str(port),
           str(out)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path)))
    for p in procs:
      p.wait(timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired:
    pass
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  text = []
  for i, log in enumerate(logs):
    log.seek(0)
    text.append(f"--- process {i} (rc {procs[i].returncode}) ---\n{log.read()[-3000:]}")
    log.close()
  if any(p.returncode != 0 for p in procs) or not out.exists():
    pytest.fail("the two-process run failed or timed out:\n" + "\n".join(text))
  with np.load(out) as data:
    return dict(data)


def test_two_processes_match_one_process(tmp_path):
  two = _launch(tmp_path)
  mesh = jax.make_mesh((worker.N,), (worker.AXIS,), devices=jax.devices()[:worker.N])
  one = {k: np.asarray(v) for k, v in worker.run_all(mesh).items()}
  assert sorted(two) == sorted(one)
  for name in worker._methods():
    np.testing.assert_array_equal(two[name + "_skipped"], [1] * worker.N)
    # each process read its own two workers' counters; together, all four
    np.testing.assert_array_equal(two[name + "_bits"], one[name + "_bits"])
    assert one[name + "_bits"].shape == (worker.N, 3) and one[name + "_bits"].min() > 0
    for leaf in ("w", "b"):
      a, b = two[f"{name}_{leaf}"], one[f"{name}_{leaf}"]
      assert np.all(np.isfinite(a))
      if name == "psgd":  # a float all-reduce: the summation order may differ
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
      else:  # all-gathers of payloads, summed locally in a fixed order
        np.testing.assert_array_equal(a, b)
