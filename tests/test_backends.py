"""The workarounds for XLA's CPU backend stay on CPUs.

The compressors' conds (top_k's two-stage fallback, the fusion cuts of
``isolated``/``materialize``, the 2-norm's fallback, sign's overflow check)
are chosen by ``fusion.per_backend`` for the platform a computation is lowered
for. Lowered here for a GPU or TPU (no such device needed: lowering stops at
StableHLO), the compressors, and methods built on them, hold no conditional;
lowered for a CPU they hold the conds they had. The code of other backends,
run on a CPU, gives the CPU code's numbers bit for bit.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.mlir import ir
from jax.extend.mlir import passmanager

import compopt
from compopt import compressors as C
from compopt._src.compressors import fusion
from compopt._src.compressors import sparse

OTHER_PLATFORMS = ("cuda", "rocm", "tpu")
LARGE = 70_000  # above fusion.ISOLATE_MIN: the paths with conds
TWO_STAGE = 1 << 22  # sparse.TWO_STAGE_MIN: top_k's two-stage path

# name: (compressor, leaf size, conds in its encoder lowered for a CPU).
COMPRESSORS = {
    "top_k": (C.top_k(ratio=0.01), TWO_STAGE, 1),  # the fallback to one lax.top_k
    # isolated norm, holding the 2-norm's fallback, holding _amax's two
    # isolated reductions; materialized codes
    "qsgd": (C.qsgd(16), LARGE, 5),
    "natural_dithering": (C.natural_dithering(3), LARGE, 5),
    "terngrad": (C.terngrad(), LARGE, 3),  # isolated inf-norm, _amax's two
    "sign": (C.sign(), LARGE, 2),  # isolated ‖x‖₁, overflow check
    # isolated ‖x‖₁ (block sums), the rescaled sums where one overflowed
    "scaled_sign": (C.scaled_sign(), LARGE, 2),
    "block_sign": (C.block_sign(1024), LARGE, 2),
}


def _conditionals(lowered) -> int:
  """The conditionals in ``lowered``'s StableHLO once constants are folded.

  ``lax.platform_dependent`` lowered for one platform leaves a conditional on
  a constant index, which the compiler removes; MLIR's canonicalizer removes
  it here the same way and keeps every conditional on a computed predicate.
  """
  module = lowered.compiler_ir("stablehlo")
  with module.context:
    folded = ir.Module.parse(str(module))
    passmanager.PassManager.parse("builtin.module(canonicalize)").run(folded.operation)
  text = str(folded)
  return sum(text.count(op) for op in ("stablehlo.case", "stablehlo.if", "mhlo.if",
                                       "mhlo.case"))


def _lower(fn, platform, *args):
  return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,))


def _leaf(size, dtype=jnp.float32):
  return jax.ShapeDtypeStruct((size,), dtype)


def _stacked(leaf, n):
  return jax.ShapeDtypeStruct((n,) + leaf.shape, leaf.dtype)


KEY = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)


def test_the_count_sees_data_dependent_conds_and_not_platform_choices():
  def f(x):
    y = fusion.per_backend(lambda v: v * 2, lambda v: v + 1, x)
    return jax.lax.cond(y[0] > 0, jnp.sin, jnp.cos, y)

  for platform in ("cpu",) + OTHER_PLATFORMS:
    lowered = _lower(f, platform, _leaf(8))
    assert lowered.as_text().count("stablehlo.case") >= 2  # the choice is there
    assert _conditionals(lowered) == 1  # only the cond on data


@pytest.mark.parametrize("name", list(COMPRESSORS))
def test_compressors_lower_without_conds_off_cpu(name):
  comp, size, cpu_conds = COMPRESSORS[name]
  x = _leaf(size)
  payload = jax.eval_shape(comp.encode, KEY, x)

  def decode(p):
    return comp.decode(p, x, key=jax.random.key(0))

  assert _conditionals(_lower(comp.encode, "cpu", KEY, x)) == cpu_conds
  assert _conditionals(_lower(decode, "cpu", payload)) == 0
  for platform in OTHER_PLATFORMS:
    assert _conditionals(_lower(comp.encode, platform, KEY, x)) == 0, platform
    assert _conditionals(_lower(decode, platform, payload)) == 0, platform


def test_bfloat16_leaves_lower_without_conds_off_cpu():
  x = _leaf(TWO_STAGE, jnp.bfloat16)
  for comp in (C.top_k(ratio=0.003), C.qsgd(4), C.sign()):
    assert _conditionals(_lower(comp.encode, "cpu", KEY, x)) > 0
    assert _conditionals(_lower(comp.encode, "cuda", KEY, x)) == 0


METHODS = {
    "ef_sgd_top_k": lambda axis: compopt.ef_sgd(0.1, compressor=C.top_k(ratio=0.01),
                                                axis_name=axis),
    "dcsgd_qsgd": lambda axis: compopt.dcsgd(0.1, compressor=C.qsgd(16), axis_name=axis),
    "dcsgd_natural_dithering": lambda axis: compopt.dcsgd(
        0.1, compressor=C.natural_dithering(3), axis_name=axis),
    "dcsgd_sign": lambda axis: compopt.dcsgd(0.1, compressor=C.sign(), axis_name=axis),
    "dcsgd_scaled_sign": lambda axis: compopt.dcsgd(0.1, compressor=C.scaled_sign(),
                                                    axis_name=axis),
}
PARAMS = {"w": _leaf(TWO_STAGE), "b": _leaf(LARGE, jnp.bfloat16)}


@pytest.mark.parametrize("name", list(METHODS))
def test_method_updates_lower_without_conds_off_cpu(name):
  opt = METHODS[name](None)
  state = jax.eval_shape(opt.init, PARAMS)
  assert _conditionals(_lower(opt.update, "cpu", PARAMS, state, PARAMS)) > 0
  assert _conditionals(_lower(opt.update, "cuda", PARAMS, state, PARAMS)) == 0

  n = 4  # workers, as jax.vmap and shard_map run them
  opt = METHODS[name]("data")
  state = jax.eval_shape(lambda p: compopt.parallel.stack(opt.init(p), n), PARAMS)
  grads = jax.tree.map(lambda s: _stacked(s, n), PARAMS)
  mesh = jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharded = compopt.parallel.shard_map(opt.update, mesh, "data")
  assert _conditionals(_lower(sharded, "cpu", grads, state)) > 0
  for platform in ("cuda", "tpu"):
    assert _conditionals(_lower(sharded, platform, grads, state)) == 0
  vmapped = jax.vmap(opt.update, axis_name="data")
  assert _conditionals(_lower(vmapped, "cuda", grads, state)) == 0


def test_export_for_several_platforms_runs_the_cpu_code():
  comp = C.qsgd(16)
  x = jax.random.normal(jax.random.key(1), (LARGE,)).at[::97].multiply(1e20)
  key = jax.random.key(2)
  exported = jax.export.export(jax.jit(comp.encode), platforms=("cpu", "cuda"))(key, x)
  want = jax.jit(comp.encode)(key, x)
  jax.tree.map(np.testing.assert_array_equal, exported.call(key, x), want)


# ------------------------------------------------------ the same numbers


@pytest.fixture
def two_stage(monkeypatch):
  """The two-stage path of exact top_k from 65,536 entries on (4M by default)."""
  monkeypatch.setattr(sparse, "TWO_STAGE_MIN", 1 << 16)
  monkeypatch.setattr(sparse, "ROW", 4096)


def _inputs(size):
  rng = np.random.default_rng(size)
  x = rng.standard_normal(size).astype(np.float32)
  ties = np.round(x * 2) / 2  # few distinct magnitudes: ties everywhere
  big = x * np.float32(3e37)  # Σ x² and ‖x‖₁ overflow, x finite
  tiny = x * np.float32(1e-30)  # Σ x² underflows
  with_inf = x.copy()
  with_inf[123] = np.inf
  with_nan = x.copy()
  with_nan[-5] = np.nan
  return {"normal": x, "sorted": np.sort(x), "ties": ties, "big": big, "tiny": tiny,
          "inf": with_inf, "nan": with_nan, "zeros": np.zeros_like(x)}


@pytest.mark.parametrize("name", list(COMPRESSORS))
def test_other_backends_code_gives_the_cpu_numbers(name, two_stage, monkeypatch):
  comp, _, _ = COMPRESSORS[name]
  key = jax.random.key(5)
  inputs = _inputs(LARGE)
  cpu = jax.jit(lambda k, v: comp.encode(k, v))
  want = {case: cpu(key, jnp.asarray(x)) for case, x in inputs.items()}

  monkeypatch.setattr(fusion, "per_backend", lambda cpu, default, *args: default(*args))
  other = jax.jit(lambda k, v: comp.encode(k, v))
  assert _conditionals(other.trace(key, jnp.asarray(inputs["normal"])).lower()) == 0
  for case, x in inputs.items():
    got = other(key, jnp.asarray(x))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want[case])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=case)
      assert a.dtype == b.dtype
