"""Exchange schemes (compopt.exchange): numbers, bits, cost model, HLO bytes.

References are independent of the code under test: NumPy loops over the
workers' vectors, the α-β formulas written out, and payload sizes.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import compopt
from benchmarks.perf import wire
from compopt import compressors as C
from compopt import exchange as X

N = 4
TREE = {"a": jnp.zeros((7,)), "b": jnp.zeros((3, 2))}  # D = 13: pads to 4 chunks of 4


def _grads(n=N, seed=0, tree=TREE):
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: jnp.asarray(rng.standard_normal((n,) + p.shape), jnp.float32),
                      tree)


def _flat(tree):
  return np.concatenate([np.asarray(l).reshape(l.shape[0], -1) for l in jax.tree.leaves(tree)],
                        axis=1)


def _run(opt, grads, n=N, steps=1):
  state = compopt.parallel.stack(opt.init(TREE), n)
  step = jax.jit(jax.vmap(opt.update, axis_name="w"))
  outs = []
  for _ in range(steps):
    u, state = step(grads, state)
    outs.append(u)
  return outs, state


# ------------------------------------------------------------------ cost model


def test_collective_bytes_closed_forms():
  assert X.collective_bytes("allreduce", 800, 8) == pytest.approx(2 * 7 / 8 * 800)
  assert X.collective_bytes("allgather", 800, 8) == 7 * 800
  assert X.collective_bytes("alltoall", 800, 8) == pytest.approx(7 / 8 * 800)
  for kind in ("allreduce", "allgather", "alltoall"):
    assert X.collective_bytes(kind, 800, 1) == 0


def test_collective_seconds_closed_forms():
  net = X.Network(bandwidth_gbps=8.0, latency_us=5.0)  # 1e9 bytes/s
  a, b = 5e-6, 1e9
  assert X.collective_seconds("allreduce", 1e6, 8, net) == pytest.approx(14 * a + 1.75e6 / b)
  assert X.collective_seconds("allgather", 1e6, 8, net) == pytest.approx(7 * a + 7e6 / b)
  assert X.collective_seconds("alltoall", 1e6, 8, net) == pytest.approx(7 * a + 0.875e6 / b)
  tree = X.Network(8.0, 5.0, "tree")
  assert X.collective_seconds("allreduce", 1e6, 8, tree) == pytest.approx(6 * a + 1.75e6 / b)
  assert X.collective_seconds("allgather", 1e6, 8, tree) == pytest.approx(3 * a + 7e6 / b)
  assert X.collective_seconds("alltoall", 1e6, 8, tree) == pytest.approx(3 * a + 1.5e6 / b)
  assert X.collective_seconds("allgather", 1e6, 1, net) == 0.0


def test_two_phase_bytes_are_flat_in_n():
  s = X.two_phase(C.top_k(ratio=0.01))
  per = [s.bytes_per_worker(1e6, 4e7, n) for n in (2, 8, 64, 1024)]
  assert all(b < 2e6 for b in per)  # (n − 1)/n·P + (n − 1)/n·P_s < 2P
  assert per[-1] == pytest.approx(2 * 1023 / 1024 * 1e6)
  assert X.allgather().bytes_per_worker(1e6, 4e7, 1024) == 1023e6


def test_auto_switches_where_the_payload_exceeds_2D_over_n():
  auto = X.auto(X.Network(10.0, latency_us=0.0), decode_gbps=1e12)  # decoding free
  dense = 4e6
  for n in (4, 16, 256):
    below, above = 0.9 * 2 * dense / n, 1.1 * 2 * dense / n
    assert auto.choose(below, dense, n).name == "allgather"
    assert auto.choose(above, dense, n).name == "allreduce"
  # the network passed to seconds() is the one used to choose
  slow = X.Network(1.0, latency_us=0.0)
  assert auto.seconds(1e5, dense, 8, slow) == pytest.approx(
      X.allgather().seconds(1e5, dense, 8, slow))


def test_auto_counts_decoding_n_payloads():
  """allgather decodes n dense vectors, allreduce one: at 4 GB/s decoding and
  10 Gbit/s, n = 8, a 32× payload of 44.7 MB: allgather 7·1.4 MB/1.25 GB/s +
  8·11.2 ms = 97 ms > allreduce 2·7/8·44.7 MB/1.25 GB/s + 11.2 ms = 74 ms."""
  net = X.Network(10.0, latency_us=0.0)
  assert X.auto(net, decode_gbps=4.0).choose(1.4e6, 44.7e6, 8).name == "allreduce"
  assert X.auto(net, decode_gbps=300.0).choose(1.4e6, 44.7e6, 8).name == "allgather"
  with pytest.raises(ValueError, match="decode_gbps"):
    X.auto(decode_gbps=0)


def test_auto_counts_multi_pass_decodes():
  """QSGD(16) decodes 5 bit planes and a sign: 6 passes. At 30 GB/s and
  10 Gbit/s, n = 8, a 44.7 MB gradient and a 8.4 MB payload: allgather
  7·8.4 MB/1.25 GB/s + 8·6·1.49 ms = 118 ms > allreduce 62.6 ms + 6·1.49 ms
  = 71.5 ms; with one pass, allgather 59 ms < allreduce 64 ms."""
  net = X.Network(10.0, latency_us=0.0)
  auto = X.auto(net, decode_gbps=30.0)
  assert C.qsgd(16).decode_passes == 6 and C.natural().decode_passes == 1
  assert C.fcc(C.qsgd(16), rounds=2).decode_passes == 12
  assert C.induced(C.top_k(1), C.qsgd(16)).decode_passes == 7
  assert auto.choose(8.4e6, 44.7e6, 8, C.qsgd(16).decode_passes).name == "allreduce"
  assert auto.choose(8.4e6, 44.7e6, 8, 1.0).name == "allgather"


@pytest.mark.parametrize("kwargs, match", [
    (dict(bandwidth_gbps=0), "bandwidth_gbps"), (dict(latency_us=-1), "latency_us"),
    (dict(topology="mesh"), "topology"), (dict(bandwidth_gbps=float("inf")), "bandwidth_gbps")])
def test_network_rejects_bad_values(kwargs, match):
  with pytest.raises(ValueError, match=match):
    X.Network(**kwargs)


def test_bad_scheme_names_the_argument():
  with pytest.raises(ValueError, match="`scheme` must be"):
    compopt.dcsgd(0.1, compressor=C.natural(), scheme="ring")
  with pytest.raises(TypeError, match="server_compressor"):
    X.two_phase("top_k")
  with pytest.raises(TypeError, match="network"):
    X.auto(network=10)


# ------------------------------------------------------------------- numbers


@pytest.mark.parametrize("comp", [C.top_k(ratio=0.3), C.natural(), C.qsgd(4), C.scaled_sign()],
                         ids=["top_k", "natural", "qsgd", "scaled_sign"])
def test_allreduce_and_auto_give_the_allgather_numbers(comp):
  g = _grads()
  outs = {}
  for scheme in ("allgather", "allreduce", "auto"):
    opt = compopt.dcsgd(1.0, compressor=comp, axis_name="w", scheme=scheme)
    outs[scheme], _ = _run(opt, g)
  for scheme in ("allreduce", "auto"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 outs[scheme], outs["allgather"])


def test_allreduce_with_sampling_matches_allgather():
  g = _grads(seed=3)
  outs = []
  for scheme in ("allgather", "allreduce"):
    opt = compopt.dcsgd(1.0, compressor=C.natural(), axis_name="w", sampling=0.5,
                        scheme=scheme, key=7)
    outs.append(_run(opt, g, steps=3)[0])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), *outs)


def test_two_phase_without_server_compressor_is_the_chunkwise_mean():
  g = _grads(seed=1)
  opt = compopt.compressed_mean(C.top_k(k=2), axis_name="w", scheme=X.two_phase())
  (u,), _ = _run(opt, g)
  x = _flat(g)  # (n, 13); chunks of ceil(13/4) = 4 (the last padded)
  want = np.zeros(13)
  for i in range(N):
    for j in range(0, 16, 4):
      chunk = x[i, j:j + 4]
      keep = np.argsort(-np.abs(chunk), kind="stable")[:2]
      want[j + keep] += chunk[keep] / N
  np.testing.assert_allclose(_flat(u)[0], want, rtol=1e-6, atol=1e-7)
  assert np.allclose(_flat(u), _flat(u)[0])  # every worker has the same mean


def test_two_phase_server_error_feedback_loses_nothing():
  """Σ_t out_t + Σ_owners e_s = Σ_t mean_i sign(x_i,t): the server's residual
  carries exactly what its compressor dropped."""
  opt = compopt.compressed_mean(C.sign(), axis_name="w",
                                scheme=X.two_phase(C.top_k(k=1)))
  state = compopt.parallel.stack(opt.init(TREE), N)
  step = jax.jit(jax.vmap(opt.update, axis_name="w"))
  total_out, total_sign = np.zeros(13), np.zeros(13)
  for t in range(6):
    g = _grads(seed=10 + t)
    u, state = step(g, state)
    total_out += _flat(u)[0]
    total_sign += np.where(_flat(g) < 0, -1.0, 1.0).mean(0)
  e = _flat(state.scheme_state).sum(0)  # each owner holds its chunk, zeros elsewhere
  np.testing.assert_allclose(total_out + e, total_sign, rtol=1e-5, atol=1e-5)
  per_worker = _flat(state.scheme_state).reshape(N, 13)
  for i in range(N):  # owner i's residual lies in its chunk [4i, 4i + 4) only
    outside = np.delete(per_worker[i], np.arange(4 * i, min(4 * i + 4, 13)))
    assert np.all(outside == 0)


def test_ef_sgd_two_phase_keeps_the_worker_invariant():
  """EF-SGD's x_t − mean_i e_t,i = x_0 − γ Σ mean_i g_i
  (Karimireddy et al. 2019, Thm IV) holds under two_phase without a server
  compressor (the aggregate is exact)."""
  opt = compopt.ef_sgd(0.1, compressor=C.top_k(k=2), axis_name="w", scheme=X.two_phase())
  state = compopt.parallel.stack(opt.init(TREE), N)
  step = jax.jit(jax.vmap(opt.update, axis_name="w"))
  x, gsum = np.zeros(13), np.zeros(13)
  for t in range(5):
    g = _grads(seed=20 + t)
    u, state = step(g, state)
    x += _flat(u)[0]
    gsum += _flat(g).mean(0)
  ef_state = [s for s in state if isinstance(s, compopt.ErrorFeedbackState)][0]
  np.testing.assert_allclose(x - _flat(ef_state.error).mean(0), -0.1 * gsum, atol=1e-6)


def test_two_phase_bits_are_flat_in_n_and_match_the_payloads():
  comp = C.scaled_sign()
  tree = {"w": jnp.zeros((64,))}
  for n in (2, 4, 8):
    opt = compopt.compressed_mean(comp, axis_name="w", scheme=X.two_phase())
    state = compopt.parallel.stack(opt.init(tree), n)
    g = {"w": jnp.ones((n, 64))}
    _, state = jax.jit(jax.vmap(opt.update, axis_name="w"))(g, state)
    chunk = 64 // n
    row_bits = comp.wire_bits((chunk,), jnp.float32)  # one chunk's payload
    bits = compopt.comm_bits(state)
    # phase 1: n − 1 rows out and in; phase 2: a ring all-gather of the dense
    # chunks, n − 1 of them out (forwarded) and in
    assert bits.uplink[0] == (n - 1) * row_bits + (n - 1) * 32 * chunk
    assert bits.downlink[0] == (n - 1) * row_bits + (n - 1) * 32 * chunk
    assert bits.payload[0] == n * row_bits


def test_two_phase_shard_map_matches_vmap():
  n = 8
  g = _grads(n=n, seed=5)
  opt = compopt.ef_sgd(0.1, compressor=C.top_k(k=1), axis_name="data",
                       scheme=X.two_phase(C.scaled_sign()))
  state = compopt.parallel.stack(opt.init(TREE), n)
  mesh = jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  u_sm, _ = compopt.parallel.shard_map(opt.update, mesh, "data")(g, state)
  u_vm, _ = jax.jit(jax.vmap(opt.update, axis_name="data"))(g, state)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), u_sm, u_vm)


def test_reshard_moves_the_server_error_to_the_new_owners():
  opt = compopt.compressed_mean(C.sign(), axis_name="w", scheme=X.two_phase(C.top_k(k=1)))
  state = compopt.parallel.stack(opt.init(TREE), N)
  step = jax.jit(jax.vmap(opt.update, axis_name="w"))
  _, state = step(_grads(seed=2), state)
  total = _flat(state.scheme_state).sum(0)
  new = compopt.reshard_state(state, 3)
  per = _flat(new.scheme_state)
  np.testing.assert_allclose(per.sum(0), total, rtol=1e-6)
  chunk = math.ceil(13 / 3)
  for j in range(3):  # new owner j holds its new chunk only
    outside = np.delete(per[j], np.arange(chunk * j, min(chunk * (j + 1), 13)))
    assert np.all(outside == 0)
  # and a step runs on 3 workers from there
  step(_grads(n=3), new)


@pytest.mark.parametrize("make", [
    lambda s: compopt.dcsgd(0.1, compressor=C.natural(), axis_name="w", scheme=s),
    lambda s: compopt.ef_signsgd(0.1, axis_name="w", scheme=s),
    lambda s: compopt.comp_ams(1e-3, compressor=C.block_sign(), axis_name="w", scheme=s),
    lambda s: compopt.comp_ams(1e-3, compressor=C.top_k(k=2), error_feedback=False,
                               axis_name="w", scheme=s),
], ids=["dcsgd", "ef_signsgd", "comp_ams", "comp_ams_no_ef"])
def test_methods_take_every_scheme(make):
  g = _grads(seed=4)
  for scheme in ("allreduce", X.two_phase(C.natural())):  # (allgather: everywhere else)
    outs, state = _run(make(scheme), g, steps=2)
    assert all(np.all(np.isfinite(l)) for l in jax.tree.leaves(outs))
    assert compopt.comm_bits(state).uplink[0] > 0


def test_identity_honours_two_phase_with_a_server_compressor():
  """P-SGD's dense mean goes through two_phase too: each owner keeps the
  top-1 of its chunk of mean_i g_i (no residual yet on the first step)."""
  g = _grads(seed=8)
  opt = compopt.psgd(1.0, axis_name="w", scheme=X.two_phase(C.top_k(k=1)))
  (u,), state = _run(opt, g)
  mean = _flat(g).mean(0)
  want = np.zeros(13)
  for j in range(0, 16, 4):
    chunk = mean[j:j + 4]
    keep = np.argmax(np.abs(chunk))
    want[j + keep] = chunk[keep]
  np.testing.assert_allclose(-_flat(u)[0], want, rtol=1e-6, atol=1e-7)
  mean_state = [s for s in state if isinstance(s, compopt.CompressedMeanState)][0]
  assert mean_state.scheme_state.server_error.shape == (N, 13)  # one flat vector


def test_a_linear_payload_is_summed_before_decoding():
  """The exchange reads a capability, not a compressor type: a compressor
  built on shared rand_k (through ``scaled``) declares a linear payload and is
  averaged as payloads: the same positions on every worker, λ·(d/k)·mean."""
  comp = C.scaled(C.rand_k(3, shared=True), 0.5)
  assert comp.linear_payload and not C.scaled(C.rand_k(3), 0.5).linear_payload
  g = _grads(seed=9)
  (u,), _ = _run(compopt.dcsgd(1.0, compressor=comp, axis_name="w"), g)
  for name, leaf in g.items():
    out = -np.asarray(u[name][0]).reshape(-1)
    support = np.flatnonzero(out)
    assert len(support) == 3
    want = 0.5 * leaf[0].size / 3 * np.asarray(leaf).reshape(N, -1).mean(0)[support]
    np.testing.assert_allclose(out[support], want, rtol=1e-5)


# ----------------------------------------------------------------- HLO bytes


@pytest.mark.parametrize("scheme", [X.allgather(), X.allreduce(), X.two_phase(),
                                    X.two_phase(C.scaled_sign())],
                         ids=["allgather", "allreduce", "two_phase", "two_phase_server"])
def test_compiled_collective_bytes_equal_the_model(scheme):
  """Bytes each worker receives, from the compiled program's collectives, equal
  Scheme.bytes_per_worker of the payload sizes."""
  n, d = 8, 4096
  comp = C.scaled_sign()
  per_kind = wire.exchange_hlo_bytes(comp, scheme, {"w": jax.ShapeDtypeStruct((d,), jnp.float32)}, n)
  factor = {"all-gather": n - 1, "all-to-all": (n - 1) / n, "all-reduce": 2 * (n - 1) / n}
  got = sum(factor[k] * b for k, b in per_kind.items())
  chunk_payload = comp.wire_bits((d // n,), jnp.float32) / 8
  payload = comp.wire_bits((d,), jnp.float32) / 8
  if isinstance(scheme, X.TwoPhase):  # the chunked payload: n chunk payloads
    server = chunk_payload * n if scheme.server_compressor is not None else 4 * d
    want = scheme.bytes_per_worker(n * chunk_payload, 4 * d, n, server_payload_bytes=server)
  else:
    want = scheme.bytes_per_worker(payload, 4 * d, n)
  assert got == pytest.approx(want)


def test_a_linear_payload_is_one_all_reduce_of_its_bytes():
  n, d = 8, 4096
  comp = C.scaled(C.rand_k(64, shared=True), 0.5)
  for scheme in (X.allgather(), X.allreduce(), X.auto()):
    per_kind = wire.exchange_hlo_bytes(comp, scheme,
                                       {"w": jax.ShapeDtypeStruct((d,), jnp.float32)}, n)
    assert per_kind == {"all-reduce": comp.wire_bits((d,), jnp.float32) // 8}


@pytest.mark.parametrize("comp", [C.qsgd(4), C.natural_dithering(3), C.sign(), C.terngrad(),
                                  C.top_k(ratio=0.01)],
                         ids=["qsgd", "natural_dithering", "sign", "terngrad", "top_k"])
def test_fast_compressor_paths_pass_shard_maps_type_check(comp, monkeypatch):
  """The conds inside the compressors (materialize, sign's overflow check,
  top_k's fallback) type-check under shard_map and give vmap's numbers."""
  from compopt._src.compressors import sparse
  monkeypatch.setattr(sparse, "TWO_STAGE_MIN", 1 << 16)  # top_k's two-stage path
  n = 8
  tree = {"w": jnp.zeros((70_000,))}
  g = _grads(n=n, seed=6, tree=tree)
  opt = compopt.compressed_mean(comp, axis_name="data", scheme=X.allreduce())
  state = compopt.parallel.stack(opt.init(tree), n)
  mesh = jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  u_sm, _ = compopt.parallel.shard_map(opt.update, mesh, "data")(g, state)
  u_vm, _ = jax.jit(jax.vmap(opt.update, axis_name="data"))(g, state)
  np.testing.assert_allclose(u_sm["w"], u_vm["w"], rtol=1e-6, atol=1e-7)


def test_fit_network_inverts_the_all_gather_model():
  # times made by collective_seconds from a known network come back as it
  for topology in ("ring", "tree"):
    net = X.Network(bandwidth_gbps=2.5, latency_us=40.0, topology=topology)
    n, small, large = 6, 1_000, 3_000_000
    t1 = X.collective_seconds("allgather", small, n, net)
    t2 = X.collective_seconds("allgather", large, n, net)
    fit = X.fit_network(t1, t2, small, large, n, topology)
    assert fit.bandwidth_gbps == pytest.approx(2.5, rel=1e-9)
    assert fit.latency_us == pytest.approx(40.0, rel=1e-6)
  with pytest.raises(ValueError, match="small < large"):
    X.fit_network(1.0, 2.0, 10, 10, 4)


def test_measure_network_on_a_mesh_is_cached_and_checked():
  mesh = jax.make_mesh((4,), ("data",), devices=jax.devices()[:4],
                       axis_types=(jax.sharding.AxisType.Auto,))
  net = X.measure_network(mesh, "data", sizes=(64, 1 << 16), repeats=2)
  assert net.bandwidth_gbps > 0 and net.latency_us >= 0
  assert X.measure_network(mesh, "data", sizes=(64, 1 << 16), repeats=2) is net
  assert X.measure_network(mesh, "data", sizes=(64, 1 << 16), repeats=2, cache=False) is not net
  one = jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])
  assert X.measure_network(one, "data").bandwidth_gbps == 1e6  # no network
  with pytest.raises(ValueError, match="no axis 'w'"):
    X.measure_network(mesh, "w")
  with pytest.raises(ValueError, match="B_1 < B_2"):
    X.measure_network(mesh, "data", sizes=(100, 10))
  with pytest.raises(ValueError, match="`repeats`"):
    X.measure_network(mesh, "data", repeats=0)
