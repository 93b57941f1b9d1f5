"""The communication layer: packing, exact bit counters, the collectives in
the compiled program, partial participation, and clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import _compiled
import compopt
from compopt import compressors as C
from benchmarks.perf import hlo
from compopt._src import counters
from compopt._src import wire

AXIS = "data"


# ------------------------------------------------------------------- packing


def test_pack_unpack_round_trips_every_dtype_bit_exactly():
  rng = np.random.default_rng(0)
  tree = {
      "f32": rng.normal(size=(3, 2)).astype(np.float32),
      "bf16": jnp.asarray(rng.normal(size=5), jnp.bfloat16),
      "u8": rng.integers(0, 256, size=7).astype(np.uint8),
      "u16": rng.integers(0, 2**16, size=4).astype(np.uint16),
      "i32": rng.integers(-2**31, 2**31, size=3).astype(np.int32),
      "scalar": np.float32(-0.0),
      "bool": np.array([True, False, True]),
      "nan": np.array([np.nan, np.inf], np.float32),
  }
  tree = jax.tree.map(jnp.asarray, tree)
  buf, spec = wire.pack(tree)
  assert buf.dtype == jnp.uint8
  assert buf.size == sum(np.asarray(l).nbytes for l in jax.tree.leaves(tree))
  back = wire.unpack(buf, spec)
  for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(back)):
    assert a.dtype == b.dtype and a.shape == b.shape
    as_bytes = lambda x: np.asarray(x).reshape(-1).view(np.uint8)
    np.testing.assert_array_equal(as_bytes(a), as_bytes(b))
  # leading (gathered) axes are kept
  back2 = wire.unpack(jnp.stack([buf, buf]), spec)
  assert back2["f32"].shape == (2, 3, 2)


# ------------------------------------------------------------------ counters


def test_64_bit_counters_are_exact():
  rng = np.random.default_rng(1)
  total, ref = counters.const64(0), 0
  for _ in range(50):
    value = int(rng.integers(0, 2**40))
    count = int(rng.integers(0, 2**16))
    total = counters.add64(total, counters.mul64(jnp.int32(count), value))
    ref += count * value
  total = counters.add64(total, counters.const64(2**63 - 1))
  ref += 2**63 - 1
  assert counters.to_int(total) == ref % 2**64


def test_comm_bits_finds_counters_in_nested_optax_states():
  # Compressors are callable: inject_hyperparams must be told they are static.
  ef = optax.inject_hyperparams(compopt.ef_sgd, static_args="compressor")
  opt = optax.MultiSteps(optax.chain(
      optax.add_decayed_weights(1e-4), ef(learning_rate=0.1, compressor=C.top_k(1))),
      every_k_schedule=1)
  state = opt.init({"w": jnp.zeros(4)})
  assert compopt.comm_bits(state) == (0, 0, 0)
  big = counters.CommBits(counters.const64(2**40 + 5), counters.const64(3 * 2**33),
                          counters.const64(7))
  state = jax.tree.map(lambda x: x, state)  # copy
  found = [l for l in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, counters.CommBits))
           if isinstance(l, counters.CommBits)]
  assert len(found) == 1
  state = jax.tree.map(lambda x: big if isinstance(x, counters.CommBits) else x, state,
                       is_leaf=lambda x: isinstance(x, counters.CommBits))
  assert compopt.comm_bits(state) == (2**40 + 5, 3 * 2**33, 7)
  with pytest.raises(ValueError, match="no CommBits counter"):
    compopt.comm_bits(optax.sgd(0.1).init(jnp.zeros(2)))


def _stacked_run(opt, n, tree, steps=1):
  def step(g, s):
    return opt.update(g, s)
  state = compopt.parallel.stack(opt.init(tree), n)
  g = jax.tree.map(
      lambda l: jax.random.normal(jax.random.PRNGKey(1), (n,) + l.shape, l.dtype), tree)
  f = jax.jit(jax.vmap(step, axis_name=AXIS))
  for _ in range(steps):
    u, state = f(g, state)
  return g, u, state


def test_bits_are_the_payload_bytes_all_gather():
  n, tree = 8, {"w": jnp.zeros((300, 5)), "b": jnp.zeros(7)}
  c = C.top_k(ratio=0.1)
  _, _, state = _stacked_run(compopt.dcsgd(0.1, compressor=c, axis_name=AXIS), n, tree, 3)
  wire = C.tree_wire_bits(c, tree)
  # 150 f32 values + 150 uint16 indices, then 1 value + 1 uint8 index
  assert wire == 150 * (32 + 16) + 1 * (32 + 8)
  bits = compopt.comm_bits(state)
  # a ring all-gather: each worker sends its payload and forwards n − 2 others
  assert bits.uplink == [3 * (n - 1) * wire] * n
  assert bits.downlink == [3 * (n - 1) * wire] * n
  assert bits.payload == [3 * wire] * n


def test_bits_dense_all_reduce_follow_the_ring_convention():
  n, tree = 8, {"w": jnp.zeros((10, 3)), "b": jnp.zeros(3, jnp.bfloat16)}
  _, _, state = _stacked_run(compopt.psgd(0.1, axis_name=AXIS), n, tree, 2)
  # The sum runs in float32 whatever the leaves' dtype (the same numbers in
  # every mode), so the bfloat16 leaf crosses the wire as float32.
  dense = 30 * 32 + 3 * 32
  ring = 2 * (n - 1) * dense // n  # 2(n − 1)/n × the dense bits, each way
  assert compopt.comm_bits(state) == ([2 * ring] * n, [2 * ring] * n, [2 * dense] * n)
  c = C.rand_k(3, shared=True)  # values only
  _, _, state = _stacked_run(compopt.dcsgd(0.1, compressor=c, axis_name=AXIS), n, tree)
  assert C.tree_wire_bits(c, tree) == 3 * 32 + 3 * 16  # the compressor's own payload
  values = 3 * 32 + 3 * 32  # summed in float32 on the wire
  assert compopt.comm_bits(state).uplink == [2 * (n - 1) * values // n] * n
  assert compopt.comm_bits(state).payload == [values] * n


def test_bits_with_partial_participation_count_members_payloads():
  n, tree = 8, {"w": jnp.zeros(40)}
  c = C.top_k(4)
  wire = C.tree_wire_bits(c, tree)
  opt = compopt.dcsgd(0.1, compressor=c, axis_name=AXIS, sampling=compopt.sampling.nice(3))
  g, u, state = _stacked_run(opt, n, tree)
  bits = compopt.comm_bits(state)
  payload = np.array(bits.payload)
  member = payload > 0
  assert member.sum() == 3 and set(payload.tolist()) == {0, wire}
  # non-members send zero buffers of the same size: the wire carries them all
  assert bits.uplink == bits.downlink == [(n - 1) * wire] * n
  # the aggregate: Σ_{i∈S} C(g_i)/(n p_i) with p_i = τ/n, computed in NumPy
  gw = np.asarray(g["w"])
  ref = np.zeros(40)
  for i in np.flatnonzero(member):
    idx = np.argsort(-np.abs(gw[i]))[:4]
    ref[idx] += gw[i, idx] / (n * 3 / n)
  np.testing.assert_allclose(-np.asarray(u["w"][0]) / 0.1, ref, rtol=1e-5, atol=1e-6)


def test_shared_rand_k_is_one_mask_for_all_workers():
  n, d, k = 4, 20, 5
  opt = compopt.dcsgd(1.0, compressor=C.rand_k(k, shared=True), axis_name=AXIS, key=4)
  g, u, _ = _stacked_run(opt, n, jnp.zeros(d))
  out = -np.asarray(u[0])
  support = np.flatnonzero(out)
  assert len(support) == k
  np.testing.assert_allclose(out[support], d / k * np.asarray(g).mean(0)[support], rtol=1e-5)


# -------------------------------------------------------------- the wire (HLO)


def step_hlo(opt, tree, n=8):
  return _compiled.step_hlo(opt, tree, n, AXIS)




_MILLION = {  # 1,000,448 float32 parameters in a few layers
    "conv": jax.ShapeDtypeStruct((3, 3, 64, 128), jnp.float32),
    "dense": jax.ShapeDtypeStruct((1024, 904), jnp.float32),
    "bias": jax.ShapeDtypeStruct((1024,), jnp.float32),
}


def test_hlo_bytes_on_the_wire_for_a_million_parameters():
  params = sum(np.prod(x.shape) for x in _MILLION.values())
  assert params == 1_000_448
  dense_bytes = 4 * params
  got = {}
  for name, opt in {
      # the payload alone: without the 4-byte non-finite flag (test_faults.py)
      "identity": compopt.dcsgd(0.1, compressor=C.identity(), axis_name=AXIS,
                                skip_nonfinite=False),
      "top_k": compopt.ef_sgd(0.1, compressor=C.top_k(ratio=0.01), axis_name=AXIS,
                              skip_nonfinite=False),
      "scaled_sign": compopt.ef_signsgd(0.1, axis_name=AXIS, skip_nonfinite=False,
                                        zeros="plus"),  # the 1-bit wire
  }.items():
    c = {"identity": C.identity(), "top_k": C.top_k(ratio=0.01),
         "scaled_sign": C.scaled_sign()}[name]
    per_kind = hlo.collective_bytes(step_hlo(opt, _MILLION))
    got[name] = sum(per_kind.values())
    # exactly the payload: one collective of exactly tree_wire_bits / 8 bytes
    assert 8 * got[name] == C.tree_wire_bits(c, _MILLION), (name, per_kind)
    assert len(per_kind) == 1
  assert got["identity"] == dense_bytes  # the dense all-reduce
  assert dense_bytes >= 40 * got["top_k"]
  assert dense_bytes >= 25 * got["scaled_sign"]


def test_hlo_has_one_collective_per_step():
  tree = {"a": jax.ShapeDtypeStruct((100,), jnp.float32),
          "b": jax.ShapeDtypeStruct((7, 3), jnp.bfloat16)}
  text = step_hlo(compopt.dcsgd(0.1, compressor=C.natural(), axis_name=AXIS,
                                skip_nonfinite=False), tree)
  lines = [l for l in text.splitlines()
           if any(f" {k}(" in l or f" {k}-start(" in l for k in hlo.COLLECTIVES)]
  assert len(lines) == 1, lines
  assert "all-gather" in lines[0] and "u8[" in lines[0]


def test_collective_bytes_parses_hlo_forms():
  text = """
  %a = u8[8,100]{1,0} all-gather(%x), channel_id=1, replica_groups={{0,1,2,3,4,5,6,7}}, dimensions={0}
  %b = f32[10]{0} all-reduce(%y), channel_id=2, replica_groups=[1,8]<=[8], to_apply=%add
  %c = (f32[4]{0}, f32[32]{0}) all-gather-start(%z), replica_groups={{0,1,2,3,4,5,6,7}}
  %d = f32[32]{0} all-gather-done(%c)
  %e = bf16[2,3]{1,0} collective-permute(%w), source_target_pairs={{0,1}}
  %f = f32[5]{0} reduce-scatter(%v), replica_groups={{0,1}}, dimensions={0}
  """
  assert hlo.collective_bytes(text) == {
      "all-gather": 100 + 16, "all-reduce": 40, "collective-permute": 12,
      "reduce-scatter": 40}


# ------------------------------------------------------------------- errors


def test_unbound_axis_name_is_a_clear_error():
  opt = compopt.ef_sgd(0.1, compressor=C.top_k(1), axis_name="batch")
  state = opt.init(jnp.zeros(3))  # init runs outside any mapped context
  with pytest.raises(NameError, match="axis_name='batch' is not bound"):
    opt.update(jnp.ones(3), state)
  with pytest.raises(NameError, match="axis_name='batch' is not bound"):
    jax.vmap(lambda g, s: opt.update(g, s), axis_name="data")(
        jnp.ones((2, 3)), compopt.parallel.stack(state, 2))


@pytest.mark.parametrize("bad", [0.0, 1.5, -0.2, [0.5, 0.0], [1.0, 2.0]])
def test_sampling_probabilities_outside_0_1_are_rejected(bad):
  with pytest.raises(ValueError, match=r"`sampling`.*\(0, 1\]"):
    compopt.dcsgd(0.1, compressor=C.identity(), sampling=bad)
  with pytest.raises(ValueError, match=r"`p`.*\(0, 1\]"):
    compopt.sampling.independent(bad)


def test_sampling_must_fit_the_axis():
  opt = compopt.dcsgd(0.1, compressor=C.identity(), axis_name=AXIS, sampling=[0.5, 0.5, 1.0])
  state = compopt.parallel.stack(opt.init(jnp.zeros(2)), 4)
  with pytest.raises(ValueError, match="3 probabilities but the worker axis has 4"):
    jax.vmap(lambda g, s: opt.update(g, s), axis_name=AXIS)(jnp.ones((4, 2)), state)
  opt = compopt.dcsgd(0.1, compressor=C.identity(), axis_name=AXIS,
                      sampling=compopt.sampling.nice(5))
  with pytest.raises(ValueError, match="5-nice but the worker axis has only 4"):
    jax.vmap(lambda g, s: opt.update(g, s), axis_name=AXIS)(jnp.ones((4, 2)), state)
  with pytest.raises(ValueError, match="`tau`"):
    compopt.sampling.nice(0)


def test_tree_that_does_not_match_the_state_is_a_clear_error():
  opt = compopt.ef_sgd(0.1, compressor=C.top_k(1))
  state = opt.init({"w": jnp.zeros(3)})
  with pytest.raises(ValueError, match="updates do not match the state"):
    opt.update({"v": jnp.zeros(3)}, state)
  with pytest.raises(ValueError, match=r"has shape \(4,\).*holds shape \(3,\)"):
    opt.update({"w": jnp.zeros(4)}, state)
  stacked = compopt.parallel.stack(state, 2)
  with pytest.raises(ValueError, match="mapped over its leading axis"):
    opt.update({"w": jnp.zeros(3)}, stacked)
