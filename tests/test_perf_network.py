"""The step-time projection of benchmarks/perf/network.py against closed forms.

No timing: a made-up ``measured`` list goes through ``project``, and the
numbers are checked against the α-β formulas written out by hand.
"""

import math

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from benchmarks.perf import network  # noqa: E402
from compopt import exchange  # noqa: E402

ALPHA_US = 10.0
D = 4e6           # dense float32 bytes (1M coordinates)
P = D / 32        # a sign-like payload
ENC, DEC = 2e-3, 1e-3
MEASURED = [
    dict(name="dense", coords=1_000_000, encode_s=0.0, decode_s=0.0, payload_bytes=D,
         payload_array_bytes=D, dense_bytes=D),
    dict(name="toy", coords=1_000_000, encode_s=ENC, decode_s=DEC, payload_bytes=P,
         payload_array_bytes=P, dense_bytes=D),
]
NS = (8, 64, 1024)
NETS = [exchange.Network(bw, ALPHA_US, "ring") for bw in (1.0, 10.0, 100.0)]


def _row(proj, compressor, scheme, n, bw):
  (r,) = [r for r in proj if r["compressor"] == compressor and r["scheme"] == scheme
          and r["n"] == n and r["bandwidth_gbps"] == bw]
  return r


@pytest.fixture(scope="module")
def proj():
  return network.project(MEASURED, NS, NETS, t_grad=0.0)


def test_row_count_and_fields(proj):
  assert len(proj) == len(MEASURED) * len(NS) * len(NETS) * len(network.SCHEMES)
  for r in proj:
    assert r["total_s"] == pytest.approx(r["t_grad"] + r["compute_s"] + r["comm_s"])
    assert r["speedup"] == pytest.approx(r["dense_s"] / r["total_s"])


def test_dense_allreduce_closed_form(proj):
  n, alpha, beta = 8, ALPHA_US * 1e-6, 10e9 / 8
  want = 2 * 7 * alpha + 2 * 7 / 8 * D / beta
  r = _row(proj, "dense", "allreduce", n, 10.0)
  assert r["total_s"] == pytest.approx(want, rel=1e-12)
  assert r["compute_s"] == 0.0
  assert r["dense_s"] == pytest.approx(want, rel=1e-12)
  assert r["speedup"] == pytest.approx(1.0)
  assert r["best"]  # ties with two_phase(identity) under a ring; allreduce wins the tie
  assert _row(proj, "dense", "two_phase", n, 10.0)["total_s"] == pytest.approx(want)


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("bw", (1.0, 10.0, 100.0))
def test_compressed_closed_forms(proj, n, bw):
  alpha, beta = ALPHA_US * 1e-6, bw * 1e9 / 8
  dense = 2 * (n - 1) * alpha + 2 * (n - 1) / n * D / beta
  want = {
      "allgather": ENC + n * DEC + (n - 1) * alpha + (n - 1) * P / beta,
      "allreduce": ENC + DEC + dense,
      "two_phase": ENC * (1 + 1 / n) + 2 * DEC + 2 * (n - 1) * alpha
                   + 2 * (n - 1) / n * P / beta,
  }
  rows = {s: _row(proj, "toy", s, n, bw) for s in want}
  for s, w in want.items():
    assert rows[s]["total_s"] == pytest.approx(w, rel=1e-12), s
    assert rows[s]["dense_s"] == pytest.approx(dense, rel=1e-12), s
  best = min(want, key=want.get)
  assert [s for s, r in rows.items() if r["best"]] == [best]
  assert rows[best]["speedup"] == pytest.approx(dense / want[best], rel=1e-12)


def test_allgather_compute_grows_with_n(proj):
  compute = [_row(proj, "toy", "allgather", n, 10.0)["compute_s"] for n in NS]
  assert compute == pytest.approx([ENC + n * DEC for n in NS])
  assert compute[0] < compute[1] < compute[2]
  flat = [_row(proj, "toy", "allreduce", n, 10.0)["compute_s"] for n in NS]
  assert flat == pytest.approx([ENC + DEC] * len(NS))


def test_t_grad_is_added_to_everything():
  t = 0.05
  with_t = network.project(MEASURED, (64,), NETS[:1], t_grad=t)
  without = network.project(MEASURED, (64,), NETS[:1])
  for a, b in zip(with_t, without):
    assert a["total_s"] == pytest.approx(b["total_s"] + t)
    assert a["dense_s"] == pytest.approx(b["dense_s"] + t)
    # t_grad pulls every speedup towards 1.
    assert abs(math.log(a["speedup"])) <= abs(math.log(b["speedup"])) + 1e-12


def test_compute_seconds_rejects_unknown_scheme():
  with pytest.raises(ValueError, match="unknown scheme"):
    network.compute_seconds("bogus", 1.0, 1.0, 8)


def test_tables_name_the_best_scheme(proj):
  table = network.projection_table(proj)
  assert table.count("\n") == 2 + len(NS) * len(MEASURED) - 1
  assert "(allreduce)" in table and "×" in table
  measured = network.measured_table(MEASURED)
  assert "| toy |" in measured


def test_figure_writes_png(proj, tmp_path):
  path = network.figure(proj, str(tmp_path / "sub" / "net.png"))
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
