"""The performance benchmarks run end to end on tiny inputs (no timing checked)."""

import jax.numpy as jnp
import pytest

from benchmarks.perf import scale
from benchmarks.perf import step
from benchmarks.perf import throughput
from benchmarks.perf import wire
from compopt import compressors as C


def test_throughput_rows_and_verdicts():
  rows = throughput.run(sizes=(4096,), dtypes=("float32",), reps=1,
                        only=["natural", "sign", "top_k 1%, block 256"])
  names = [r["compressor"] for r in rows]
  assert names[:2] == ["jitted copy (-x)", "read-only reduction sum(|x|)"]
  assert {"natural", "sign", "top_k 1%, block 256"} <= set(names)
  verdicts = {r["compressor"]: r.get("verdict", "") for r in rows}
  assert "× copy (target >= 1)" in verdicts["natural"]
  assert "× reduction (target >= 0.5)" in verdicts["sign"]
  assert "× copy (target >= 0.33)" in verdicts["top_k 1%, block 256"]
  assert "| natural |" in throughput.table(rows).replace("4,096 | float32 | ", "| ")


def test_wire_received_bytes_follow_the_ring_formulas():
  assert wire.received_bytes({"all-gather": 100, "all-to-all": 800, "all-reduce": 800}, 8) == (
      pytest.approx(7 * 100 + 7 / 8 * 800 + 2 * 7 / 8 * 800))
  shapes = {"w": jnp.zeros((256,))}
  per_kind = wire.exchange_hlo_bytes(C.scaled_sign(), wire.schemes(C.scaled_sign())["allgather"],
                                     shapes, 2)
  assert per_kind == {"all-gather": C.scaled_sign().wire_bits((256,), jnp.float32) // 8}


def test_step_times_a_method_against_the_baseline():
  import jax
  import compopt
  n = 8
  mesh = jax.make_mesh((n,), (step.AXIS,), axis_types=(jax.sharding.AxisType.Auto,))
  params = {"w": jnp.zeros((512,))}
  grads = compopt.parallel.shard({"w": jnp.ones((n, 512))}, mesh, step.AXIS)
  for tx in (step.baseline(), compopt.ef_signsgd(0.1, axis_name=step.AXIS, scheme="auto")):
    seconds, first = step.time_step(tx, params, grads, mesh, n, reps=1)
    assert 0 < seconds and 0 < first


def test_scale_runs_simulated_workers():
  rows = scale.run(n=16, d=64, rows=2, reps=1, names=["EF-SignSGD"])
  assert [(r["method"], r["scheme"]) for r in rows] == [("EF-SignSGD", "auto"),
                                                        ("EF-SignSGD", "two_phase")]
  assert all(r["steps_per_second"] > 0 for r in rows)
  assert "| EF-SignSGD | auto | 16 | 64 |" in scale.table(rows)

