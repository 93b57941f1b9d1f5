"""The paper reproductions (benchmarks/reproduce) run end to end in --fast mode
(all of them under `pytest -m slow`, the quickest one by default).

A claim of a paper that does not reproduce is a FAIL row in results.md and
makes the runner exit 1; that is a finding, not a broken build. This test
fails when the runner crashes, an experiment raises, or an output is missing.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compopt
from compopt import compressors as C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIGURES = ("top1_counterexample.png", "neolithic_lsq.png", "rand_diana_ridge.png", "ef_signsgd.png",
           "induced_mnist.png", "comp_ams_mnist.png")
# Every result row of results.md is labelled with the key of its paper.
PAPERS = ("Horváth & Richtárik 2021", "Huang et al. 2022", "Shulgin & Richtárik 2022", "Li & Li 2022",
          "Karimireddy et al. 2019")


def _reproduce(tmp_path, *only):
  """Runs the reproductions in --fast mode; returns (exit status, result rows)."""
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)          # one host device is enough (and faster)
  env["JAX_PLATFORMS"] = "cpu"
  cmd = [sys.executable, "-m", "benchmarks.reproduce", "--fast", "--out", str(tmp_path)]
  if only:
    cmd += ["--only", *only]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode in (0, 1), proc.stderr[-3000:]
  assert (tmp_path / "results.md").exists(), proc.stderr[-3000:]
  results = (tmp_path / "results.md").read_text()
  assert "experiment crashed" not in results, results
  rows = [l for l in results.splitlines() if l.startswith(tuple(f"| {p} " for p in PAPERS))]
  assert all(l.rstrip().endswith(("| PASS |", "| FAIL |", "| INFO |")) for l in rows)
  # exit status agrees with the table
  assert (proc.returncode == 1) == any(l.rstrip().endswith("| FAIL |") for l in rows)
  return proc.returncode, rows


@pytest.mark.slow
def test_reproduce_fast(tmp_path):
  _, rows = _reproduce(tmp_path)
  for name in FIGURES:
    assert (tmp_path / name).stat().st_size > 1000, name
  assert len(rows) >= 10
  # COMP-AMS §5.1 runs one worker (no axis): its bits are the compressor's
  # payload on the MLP's leaves, not the 0 that an axis-less comm_bits gives.
  from benchmarks.reproduce import mnist_mlp  # pylint: disable=import-outside-toplevel
  shapes = jax.eval_shape(mnist_mlp.init, jax.random.key(0))
  want = C.tree_wire_bits(C.top_k(ratio=0.01), shapes)
  assert want > 0
  assert f"TopK-EF-0.01 {want:.3g}," in (tmp_path / "results.md").read_text()


def test_reproduce_one_experiment(tmp_path):
  """The runner end to end on its quickest experiment (the Top-1 counterexample)."""
  _, rows = _reproduce(tmp_path, "top1")
  assert (tmp_path / "top1_counterexample.png").stat().st_size > 1000
  assert len(rows) == 4 and all(r.startswith("| Horváth & Richtárik 2021 §5.5") for r in rows)


def test_cnn_patch_convolutions_match_lax_conv():
  """The CNN of the linear-speedup study: its training path (convolutions as
  products over 3×3 patches) computes what lax.conv computes, and it has the
  shapes of the 32-64 conv, 9216-128-10 FC network."""
  from benchmarks.reproduce import mnist_cnn  # pylint: disable=import-outside-toplevel
  p = mnist_cnn.init(jax.random.key(0))
  assert mnist_cnn.num_params() == 320 + 18_496 + 1_179_776 + 1_290
  x = jax.random.normal(jax.random.key(1), (3, 784))
  a = mnist_cnn.logits(p, x)
  b = mnist_cnn.logits(p, x, patches=False)
  assert a.shape == (3, 10)
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  # dropout is on only with a key, and then changes the output
  assert not np.allclose(mnist_cnn.logits(p, x, jax.random.key(2)), a, atol=1e-3)


def test_simulate_stops_where_stop_fn_says():
  """common.simulate's stop_fn ends the run at the first chunk end it accepts,
  and every returned series ends there."""
  from benchmarks.reproduce import common  # pylint: disable=import-outside-toplevel

  def grad_fn(x, key, i, t):
    del key, i, t
    return x                     # f = ½‖x‖²: x_t = (1 − γ)^t x₀

  def eval_fn(p):
    return {"f": 0.5 * np.sum(np.asarray(p) ** 2, axis=-1)}

  x0 = jnp.ones(2)
  r = common.simulate(lambda s: compopt.psgd(0.1, axis_name=common.AXIS), x0, grad_fn, n=1,
                      steps=40, chunks=20, eval_fn=eval_fn,
                      stop_fn=lambda e: bool(np.all(e["f"] <= 0.5)))
  # ‖x_t‖²/2 = 0.9^{2t} ≤ 0.5 first at t = 4, a chunk end (chunks of 2 steps)
  assert r["chunk_steps"].tolist() == [0, 2, 4]
  assert len(r["evals"]) == 3 and r["uplink"].shape == (1, 3)
  np.testing.assert_allclose(r["evals"][-1]["f"], 0.9 ** 8, rtol=1e-5)
