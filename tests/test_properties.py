"""Property tests (hypothesis): odd shapes, low-precision dtypes, extreme
magnitudes and small trees, for every compressor and every method. Finite
input gives finite output in the input's dtype, and the payload is exactly
wire_bits."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings, strategies as st

import compopt
from compopt import compressors as C
from compopt._src import wire

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)

COMPRESSORS = {
    "identity": C.identity(), "top_1": C.top_k(1), "top_half": C.top_k(ratio=0.5),
    "rand_1": C.rand_k(1), "rand_2_shared": C.rand_k(2, shared=True),
    "rand_k_wangni": C.rand_k_wangni(1), "nu_rand_1": C.nu_rand_1(), "sign": C.sign(),
    "scaled_sign": C.scaled_sign(), "block_sign": C.block_sign(3), "natural": C.natural(),
    "qsgd": C.qsgd(4), "natural_dithering": C.natural_dithering(3), "terngrad": C.terngrad(),
    "bernoulli": C.bernoulli(0.5), "induced": C.induced(C.top_k(1), C.rand_k(1)),
    "scaled": C.scaled(C.rand_k(1), 0.5), "fcc": C.fcc(C.top_k(1), 2),
}
DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
SHAPES = [(), (0,), (1,), (7,), (3, 5), (2, 0, 3), (33,)]
# finite in every dtype: float16 tops out at 65504, bfloat16 and float32 at ~3e38.
# Unbiased compressors output up to ‖x‖₁ or (d/k)|x_j|, which leaves float16's
# range for inputs far below its maximum; test_numerics.py covers every
# magnitude up to each dtype's limit.
MAGNITUDES = {jnp.float32: [0.0, 1e-40, 1e-3, 1.0, 1e30],
              jnp.bfloat16: [0.0, 1e-40, 1e-3, 1.0, 1e30],
              jnp.float16: [0.0, 1e-7, 1e-3, 1.0]}


@st.composite
def arrays(draw):
  dtype = draw(st.sampled_from(DTYPES))
  shape = draw(st.sampled_from(SHAPES))
  scale = draw(st.sampled_from(MAGNITUDES[dtype]))
  seed = draw(st.integers(0, 2**16))
  signs = draw(st.sampled_from(["mixed", "positive", "constant"]))
  x = np.random.default_rng(seed).normal(size=shape)
  if signs == "positive":
    x = np.abs(x)
  elif signs == "constant":
    x = np.ones(shape)
  return jnp.asarray(x * scale, dtype), seed


def _payload_bits(payload):
  buf, _ = wire.pack(payload)
  return int(buf.size) * 8


@SETTINGS
@given(data=arrays(), name=st.sampled_from(sorted(COMPRESSORS)))
def test_compressor_keeps_dtype_finiteness_and_wire_bits(data, name):
  x, seed = data
  c = COMPRESSORS[name]
  key = jax.random.PRNGKey(seed)
  assert np.all(np.isfinite(np.asarray(x, np.float32)))
  y = c(key, x)
  assert y.shape == x.shape and y.dtype == x.dtype
  assert np.all(np.isfinite(np.asarray(y, np.float32))), (name, x, y)
  payload = c.encode(key, x)
  assert _payload_bits(payload) == c.wire_bits(x.shape, x.dtype)
  np.testing.assert_array_equal(np.asarray(c.decode(payload, x, key=key), np.float32),
                                np.asarray(y, np.float32))


METHODS = {
    "psgd": lambda: compopt.psgd(0.1, momentum=0.9),
    "dcsgd": lambda: compopt.dcsgd(0.1, compressor=C.natural()),
    "ef_sgd": lambda: compopt.ef_sgd(0.1, compressor=C.top_k(1)),
    "ef_signsgd": lambda: compopt.ef_signsgd(0.1),
    "signsgd": lambda: compopt.signsgd(0.1),
    "signum": lambda: compopt.signum(0.1),
    "scaled_signsgd": lambda: compopt.scaled_signsgd(0.1),
    "ef21": lambda: compopt.ef21(0.1, compressor=C.top_k(1)),
    "double_squeeze": lambda: compopt.double_squeeze(0.1, compressor=C.top_k(1)),
    "diana": lambda: compopt.diana(0.1, compressor=C.rand_k(1)),
    "rand_diana": lambda: compopt.rand_diana(0.1, compressor=C.rand_k(1)),
    "gdci": lambda: compopt.gdci(0.1, compressor=C.natural(), eta=0.5),
    "comp_ams": lambda: compopt.comp_ams(0.1, compressor=C.top_k(1)),
    "neolithic": lambda: compopt.neolithic(0.1, compressor=C.top_k(1), rounds=2),
}


@st.composite
def trees(draw):
  dtype = draw(st.sampled_from(DTYPES))
  scale = draw(st.sampled_from(MAGNITUDES[dtype]))
  shapes = draw(st.lists(st.sampled_from(SHAPES), min_size=1, max_size=3))
  seed = draw(st.integers(0, 2**16))
  rng = np.random.default_rng(seed)
  return {f"l{i}": jnp.asarray(rng.normal(size=s) * scale, dtype)
          for i, s in enumerate(shapes)}


@settings(max_examples=15, deadline=None, derandomize=True)  # each example compiles
@given(grads=trees(), name=st.sampled_from(sorted(METHODS)))
def test_method_keeps_dtypes_and_stays_finite(grads, name):
  opt = METHODS[name]()
  params = jax.tree.map(jnp.zeros_like, grads)
  state = opt.init(params)
  for _ in range(2):
    updates, state = opt.update(grads, state, params)
    jax.tree.map(lambda u, p: (u.dtype == p.dtype and u.shape == p.shape) or (_ for _ in ()).throw(
        AssertionError((name, u.dtype, p.dtype))), updates, params)
    for u in jax.tree.leaves(updates):
      assert np.all(np.isfinite(np.asarray(u, np.float32))), (name, grads, updates)
    params = optax.apply_updates(params, updates)
  assert compopt.skipped_steps(state) == 0
