"""``python -m benchmarks.sockets --quick``: processes over sockets.

Run as a user would, in a subprocess (as root it makes its own network
namespace and caps its loopback; elsewhere it runs uncapped and says so).
The default run takes two processes on the uncapped loopback; the quick run
as documented (four processes, uncapped and capped at 1 Gbit/s) is marked
slow.
Checked: the table's shape, and that the bytes loopback carried match what
``compopt.comm_bits`` counted (TCP and gloo framing explain what is above 1).
Not the speed: these machines are noisy.
"""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _quick_run(tmp_path, *extra):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(
      os.pathsep) if p])
  proc = subprocess.run([sys.executable, "-m", "benchmarks.sockets", "--quick", "--out",
                         str(tmp_path), "--timeout", "400", *extra], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=480)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  with open(tmp_path / "sockets.json") as f:
    return json.load(f)


def _check(result, tmp_path, caps):
  for cap in caps:
    rows = [r for r in result["rows"] if r["cap"] == cap]
    # the baseline, then ef_signsgd at its best fixed scheme and with auto
    assert [(r["method"], r["role"]) for r in rows] == [
        ("dense", ""), ("ef_signsgd", "best"), ("ef_signsgd", "auto")]
    for r in rows:
      assert 1.0 <= r["byte_ratio"] <= 1.15, r
      assert r["step_s"] > 0 and r["steps_to_target"] is not None
  # every timed variant's loopback bytes against comm_bits, not only the rows
  for s in result["steps"]:
    assert 1.0 <= s["lo_bytes"] / s["comm_bytes"] <= 1.15, s
  assert (tmp_path / "sockets.png").stat().st_size > 0
  table = (tmp_path / "results.md").read_text()
  assert table.count("| lax.pmean + optax.sgd |") == len(caps)


def test_two_processes_count_the_bytes_that_crossed_loopback(tmp_path):
  result = _quick_run(tmp_path, "--processes", "2", "--caps", "uncapped")
  assert [r["cap"] for r in result["rows"]] == ["uncapped"] * 3
  _check(result, tmp_path, ["uncapped"])


@pytest.mark.slow
def test_quick_run_counts_the_bytes_that_crossed_loopback(tmp_path):
  result = _quick_run(tmp_path)
  caps = list(dict.fromkeys(r["cap"] for r in result["rows"]))
  namespaced = result["note"] is None
  assert caps == (["uncapped", "1gbit"] if namespaced else ["uncapped"])
  _check(result, tmp_path, caps)
