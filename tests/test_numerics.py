"""Nothing lost, nothing silent: compression at every magnitude a dtype holds,
float16 through every method, overflows and NaN learning rates that the
guard catches, a bound on consecutive skipped steps, and inputs refused with
errors that name them.

The reference for compressors at extreme magnitudes is an invariant, not the
code's output at another setting: scaling x by a power of two 2^s is exact,
and every compressor commutes with it (C(2^s x) = 2^s C(x) with the same
key; sign() is scale-free). So the value at 2^s is known from the value at
1, and must come out exactly, in float32, wherever float32 holds it; where
it does not, the output must be inf or NaN (which the guard skips), never a
finite wrong value such as the zeros a flushed reciprocal gave.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import _registry as registry
import compopt
from compopt import compressors as C

AXIS = "data"
F32_MAX = float(np.finfo(np.float32).max)

COMPRESSORS = {
    "identity": C.identity(), "top_k": C.top_k(ratio=0.25),
    "top_k_blocks": C.top_k(ratio=0.25, block_size=7), "rand_k": C.rand_k(ratio=0.25),
    "rand_k_shared": C.rand_k(ratio=0.25, shared=True),
    "rand_k_wangni": C.rand_k_wangni(ratio=0.25), "nu_rand_1": C.nu_rand_1(),
    "sign": C.sign(), "scaled_sign": C.scaled_sign(), "block_sign": C.block_sign(5),
    "natural": C.natural(), "natural_dithering": C.natural_dithering(3),
    "natural_dithering_inf": C.natural_dithering(3, norm="inf"),
    "random_dithering": C.random_dithering(4), "qsgd_inf": C.qsgd(2, norm="inf"),
    "terngrad": C.terngrad(), "bernoulli": C.bernoulli(0.5),
    "induced_top_rand": C.induced(C.top_k(ratio=0.125), C.rand_k(ratio=0.25)),
    "induced_top_wangni": C.induced(C.top_k(ratio=0.125), C.rand_k_wangni(ratio=0.25)),
    "scaled_natural": C.scaled(C.natural(), 0.75), "fcc": C.fcc(C.top_k(1), 2),
}
# The dithering quantizers send ‖x‖_p as a float32: beyond float32's range the
# payload cannot carry it, and the output is inf/NaN (skipped by the guard).
NORM = {"natural_dithering": 2, "natural_dithering_inf": np.inf, "random_dithering": 2,
        "qsgd_inf": np.inf, "terngrad": np.inf}
DTYPES = [jnp.float16, jnp.bfloat16, jnp.float32]
D = 21


def _bases(dtype):
  """Three vectors with max |x_j| just below 1, exact in ``dtype``."""
  rng = np.random.default_rng(1)
  rows = [rng.normal(size=D), np.r_[1.0, 1e-3 * rng.normal(size=D - 1)], np.ones(D)]
  out = []
  for r in rows:
    r = r / np.abs(r).max() * (1 - 2.0**-8)
    out.append(np.asarray(jnp.asarray(r, dtype).astype(jnp.float32), np.float64))
  return out


def _exponents(dtype):
  """Powers of two from the small end of the dtype's normal range (the
  output stays normal) to its very top."""
  fi = jnp.finfo(dtype)
  lo, top = int(fi.minexp) + 16, int(fi.maxexp) - 1
  return sorted({lo, lo + 5, -1, 0, 1, 7, top // 2, top - 5, top - 2, top - 1, top})


def _sweep_params():
  # bfloat16 has float32's exponent range and computes in float32 too: its
  # sweep runs under `-m slow`.
  # induced(top_k, rand_k_wangni) and nu_rand_1 share rand_k_wangni's
  # sampling (whose exact integer form compiles slowly): also under slow.
  return [pytest.param(name, dtype, id=f"{name}-{jnp.dtype(dtype).name}",
                       marks=pytest.mark.slow if (dtype == jnp.bfloat16 or name in (
                           "induced_top_wangni", "nu_rand_1")) else ())
          for name in sorted(COMPRESSORS) for dtype in DTYPES]


@pytest.mark.parametrize("name,dtype", _sweep_params())
def test_compressor_is_exact_at_every_magnitude_up_to_the_dtype_limit(name, dtype):
  c = COMPRESSORS[name]
  degree = 0 if name == "sign" else 1

  @jax.jit
  def run(keys, xs):
    def one(key, x):
      # the float32 value the exchange adds up (decode_sum of one payload),
      # and the dense C(x) in x's dtype
      payload = c.encode(key, x)
      one_row = jax.tree.map(lambda a: a[None], payload)
      wide = c.decode_sum(one_row, x, jnp.ones(1, jnp.float32), key=key)
      return wide, c.decode(payload, x, key=key)
    wide, dense = jax.vmap(one)(keys, xs)
    return wide, dense.astype(jnp.float32)

  np_dtype = np.dtype(dtype)
  exps = _exponents(dtype)
  rows, meta = [], []
  for b, base in enumerate(_bases(dtype)):
    for seed in range(2):
      for s in exps:
        rows.append(base * 2.0**s)
        meta.append((b, seed, s))
  xs = jnp.asarray(np.stack(rows), dtype)
  # exact: every row is its base times a power of two, in the dtype
  np.testing.assert_array_equal(np.asarray(xs.astype(jnp.float32), np.float64),
                                np.stack(rows))
  keys = jax.vmap(jax.random.PRNGKey)(jnp.asarray([m[1] for m in meta]))
  wide, dense = (np.asarray(a, np.float64) for a in run(keys, xs))
  at_one = {(b, seed): i for i, (b, seed, s) in enumerate(meta) if s == 0}
  for i, (b, seed, s) in enumerate(meta):
    expected = wide[at_one[b, seed]] * 2.0**(s * degree)  # C(x)·2^s in float64
    where = f"{name} {np_dtype.name} base {b} key {seed} at 2^{s}"
    norm_fits = name not in NORM or np.linalg.norm(rows[i], NORM[name]) <= F32_MAX
    with np.errstate(over="ignore"):
      in_f32 = expected.astype(np.float32)
      in_dtype = in_f32.astype(np_dtype).astype(np.float64)
    # float32 (what the exchange adds up): exact where it holds the value
    if np.all(np.isfinite(in_f32)) and norm_fits:
      np.testing.assert_allclose(wide[i], expected, rtol=2**-22, atol=0, err_msg=where)
    else:
      assert not np.all(np.isfinite(wide[i])), f"{where}: finite but unrepresentable"
    # the dense C(x) in x's dtype: rounded once, inf where the dtype overflows
    if np.all(np.isfinite(in_dtype)) and norm_fits:
      np.testing.assert_allclose(dense[i], in_dtype, rtol=2.0**-jnp.finfo(dtype).nmant,
                                 atol=0, err_msg=where)
    else:
      assert not np.all(np.isfinite(dense[i])), f"{where}: finite but unrepresentable"


def test_wangni_sends_float32_values_for_float16_leaves():
  # x_j/p_j reaches ‖x‖₁ = 7e4 > 65504: the float16 value would be inf.
  x = jnp.full((7,), 1e4, jnp.float16)
  c = C.nu_rand_1()
  payload = c.encode(jax.random.PRNGKey(0), x)
  assert payload["values"].dtype == jnp.float32
  assert c.wire_bits(x.shape, x.dtype) == 32 + 8  # one float32 value, one uint8 index
  np.testing.assert_allclose(float(jnp.sum(c.decode_wide(payload, x))), 7e4, rtol=1e-3)
  assert c.decode(payload, x).dtype == jnp.float16  # C(x) in x's dtype: inf, honestly


# ------------------------------------------------------------- float16 methods


def _vmapped(opt, n):
  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state, updates
  return jax.jit(jax.vmap(step, axis_name=AXIS))


@pytest.mark.parametrize("name", registry.params())  # one per family; the rest: -m slow
def test_float16_through_every_method(name):
  """Ordinary float16 gradients: finite updates in float16, no skipped step,
  and close to the same run in float32."""
  n = 4
  runs = {}
  for dtype in (jnp.float16, jnp.float32):
    opt = registry.make(name, 0.01, n=n, axis_name=AXIS)
    params = compopt.parallel.stack({"w": jnp.zeros((6, 5), dtype), "b": jnp.zeros(5, dtype)},
                                    n)
    state = jax.vmap(opt.init)(params)
    f = _vmapped(opt, n)
    for t in range(3):
      k1, k2 = jax.random.split(jax.random.PRNGKey(t))
      g = {"w": jax.random.normal(k1, (n, 6, 5)).astype(dtype),
           "b": jax.random.normal(k2, (n, 5)).astype(dtype)}
      params, state, updates = f(params, state, g)
      for u in jax.tree.leaves(updates):
        assert u.dtype == dtype
        assert np.all(np.isfinite(np.asarray(u, np.float32))), (name, t)
    if name == "comp_ams_optax" and dtype == jnp.float16:
      # optax.scale_by_amsgrad computes in float16, where ε = 1e-8 is 0 and a
      # zero coordinate gives 0/0: every step is skipped, visibly.
      assert compopt.skipped_steps(state) == [3] * n
      return
    assert compopt.skipped_steps(state) == [0] * n
    runs[dtype] = params
  for a, b in zip(jax.tree.leaves(runs[jnp.float16]), jax.tree.leaves(runs[jnp.float32])):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b), atol=2e-2, rtol=0,
                               err_msg=name)


@pytest.mark.parametrize("make", [
    lambda: compopt.dcsgd(1e-3, compressor=C.rand_k(ratio=0.01), axis_name=AXIS),
    lambda: compopt.diana(1e-3, compressor=C.rand_k(ratio=0.01), axis_name=AXIS),
    lambda: compopt.dcsgd(1e-3, compressor=C.induced(C.top_k(ratio=0.01),
                                                     C.rand_k_wangni(ratio=0.01)),
                          axis_name=AXIS),
    lambda: compopt.dcsgd(1e-3, compressor=C.natural(), axis_name=AXIS),
], ids=["dcsgd_rand_k", "diana_rand_k", "dcsgd_induced_wangni", "dcsgd_natural"])
def test_float16_overflow_made_by_compression_is_never_applied(make):
  """Finite float16 gradients up to ~4000: the unbiased aggregate reaches
  (d/k)·|g|/n ~ 1e5, beyond float16. It is computed in float32; where its
  float16 cast overflows, the step is skipped and counted, never applied
  (before: 46 inf coordinates applied for dcsgd, skipped_steps 0)."""
  n, d = 4, 2000
  opt = make()
  params = compopt.parallel.stack(jnp.zeros(d, jnp.float16), n)
  state = jax.vmap(opt.init)(params)
  f = _vmapped(opt, n)
  applied = 0
  for t in range(6):
    g = (jax.random.normal(jax.random.PRNGKey(t), (n, d)) * 1024).astype(jnp.float16)
    assert np.all(np.isfinite(np.asarray(g, np.float32)))
    before = compopt.skipped_steps(state)[0]
    params, state, updates = f(params, state, g)
    u = np.asarray(updates, np.float32)
    assert np.all(np.isfinite(u)), f"step {t}: inf/NaN applied"
    applied += compopt.skipped_steps(state)[0] == before
  assert np.all(np.isfinite(np.asarray(params, np.float32)))
  assert compopt.skipped_steps(state) == [6 - applied] * n


def test_bfloat16_psgd_is_the_same_under_vmap_and_shard_map():
  """The identity payloads are summed in float32 in every mode (a bfloat16
  sum under vmap differed from shard_map's by 4.9e-4 after 30 steps)."""
  n = 8
  opt = compopt.psgd(0.1, axis_name=AXIS, momentum=0.9)

  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params = compopt.parallel.stack(jnp.zeros(64, jnp.bfloat16), n)
  state = compopt.parallel.stack(opt.init(jnp.zeros(64, jnp.bfloat16)), n)
  grads = [(jax.random.normal(jax.random.PRNGKey(t), (n, 64)) * 3).astype(jnp.bfloat16)
           for t in range(30)]
  out = {}
  for mode, f in [("vmap", jax.jit(jax.vmap(step, axis_name=AXIS))),
                  ("shard_map", compopt.parallel.shard_map(
                      step, jax.make_mesh((n,), (AXIS,)), AXIS))]:
    p, s = params, state
    for g in grads:
      p, s = f(p, s, g)
    out[mode] = np.asarray(p, np.float32)
  # a float32 reference of the same heavy-ball steps, in numpy: the bfloat16
  # runs stay within 30 steps' worth of bfloat16 rounding of it
  ref, m = np.zeros(64), np.zeros(64)
  for g in grads:
    m = 0.9 * m + np.asarray(g, np.float64).mean(0)
    ref = ref - 0.1 * m
  np.testing.assert_array_equal(out["vmap"], out["shard_map"])
  for row in out["vmap"]:
    np.testing.assert_allclose(row, ref, rtol=0, atol=0.3)
  assert np.abs(out["vmap"][0] - ref).mean() < 0.05


# ---------------------------------------------------------------- the guard


def _single(opt, params):
  state = opt.init(params)

  @jax.jit
  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return state, step


def _all_finite(tree):
  return all(np.all(np.isfinite(np.asarray(l, np.float64))) for l in jax.tree.leaves(tree)
             if jnp.issubdtype(jnp.asarray(l).dtype, jnp.inexact))


def test_a_nan_schedule_is_skipped_not_applied():
  """A schedule that returns NaN poisons only the step's own output (the
  update, EF's error buffer): the guard sees them and skips."""
  sched = lambda t: jnp.where(t == 2, jnp.nan, 0.1)  # noqa: E731
  opt = compopt.ef_sgd(sched, compressor=C.top_k(1))
  params = jnp.ones(4)
  state, step = _single(opt, params)
  for t in range(5):
    params, state = step(params, state, jnp.arange(4.0) + t)
    assert _all_finite(params) and _all_finite(state), t
  # A skipped step does not advance the schedule's count, so it stays at the
  # NaN: steps 2, 3 and 4 are all skipped (and past the bound, applied).
  assert compopt.skipped_steps(state) == 3


def test_a_nan_learning_rate_through_inject_hyperparams_is_skipped():
  opt = optax.inject_hyperparams(compopt.ef_sgd, static_args=("compressor",))(
      learning_rate=0.1, compressor=C.top_k(1))
  params = jnp.ones(4)
  state, step = _single(opt, params)
  params, state = step(params, state, jnp.arange(4.0))
  good_params, good_inner = params, state.inner_state[:-1]
  state.hyperparams["learning_rate"] = jnp.asarray(jnp.nan)
  params, state = step(params, state, jnp.arange(4.0))
  np.testing.assert_array_equal(params, good_params)
  for a, b in zip(jax.tree.leaves(state.inner_state[:-1]), jax.tree.leaves(good_inner)):
    np.testing.assert_array_equal(a, b)
  assert compopt.skipped_steps(state) == 1


def test_a_worker_that_is_always_nan_surfaces_after_the_bound():
  """Every worker skips every step (one all-reduced decision); after the
  default bound of 100 consecutive skips the next step is applied on every
  worker, so the NaN reaches the parameters instead of freezing them in
  silence."""
  n = 4
  opt = compopt.dcsgd(0.1, compressor=C.top_k(1), axis_name=AXIS)
  params = compopt.parallel.stack(jnp.zeros(3), n)
  state = jax.vmap(opt.init)(params)
  f = _vmapped(opt, n)
  g = jnp.ones((n, 3)).at[2, 0].set(jnp.nan)
  for _ in range(100):
    params, state, _ = f(params, state, g)
  assert compopt.skipped_steps(state) == [100] * n
  np.testing.assert_array_equal(params, np.zeros((n, 3)))
  params, state, _ = f(params, state, g)
  assert compopt.skipped_steps(state) == [100] * n
  np.testing.assert_array_equal(state[-1].consecutive, [101] * n)
  assert np.all(np.isnan(np.asarray(params)[:, 0]))  # on every worker


def test_the_bound_is_settable_and_can_be_lifted():
  inner = compopt.ef_sgd(0.1, compressor=C.top_k(1), skip_nonfinite=False)
  bad = jnp.array([jnp.nan, 1.0])
  tx = compopt.skip_nonfinite(inner, max_consecutive_skips=3)
  state, step = _single(tx, jnp.zeros(2))
  p = jnp.zeros(2)
  for _ in range(2):
    p, state = step(p, state, bad)
  p, state = step(p, state, jnp.ones(2))  # a finite step resets the count
  assert int(state.consecutive) == 0 and int(state.skipped) == 2
  for _ in range(3):
    p, state = step(p, state, bad)
  assert _all_finite(p) and int(state.skipped) == 5
  p, state = step(p, state, bad)  # the fourth in a row: applied
  assert np.isnan(np.asarray(p)).any() and int(state.skipped) == 5
  forever = compopt.skip_nonfinite(inner, max_consecutive_skips=None)
  state, step = _single(forever, jnp.zeros(2))
  p = jnp.zeros(2)
  for _ in range(150):
    p, state = step(p, state, bad)
  assert int(state.skipped) == 150 and _all_finite(p)
  with pytest.raises(ValueError, match=r"`max_consecutive_skips` must be an integer >= 1"):
    compopt.skip_nonfinite(inner, max_consecutive_skips=0)
  with pytest.raises(TypeError, match=r"`max_consecutive_skips` must be an integer >= 1"):
    compopt.skip_nonfinite(inner, max_consecutive_skips=2.5)


def test_skipping_multisteps_around_a_method_is_refused_at_init():
  """optax.MultiSteps(..., should_skip_update_fn=...) branches around the
  method's collectives on a per-worker predicate: a deadlock under shard_map.
  The method's guard refuses it at init (its plain form is allowed)."""
  method = compopt.dcsgd(0.1, compressor=C.top_k(1), axis_name=AXIS)
  skipping = optax.MultiSteps(method, 2, should_skip_update_fn=optax.skip_not_finite)
  with pytest.raises(ValueError, match="compopt.accumulate"):
    skipping.init(jnp.zeros(3))
  optax.MultiSteps(method, 2).init(jnp.zeros(3))  # no skipping: no error
  single = compopt.dcsgd(0.1, compressor=C.top_k(1))  # one worker: nothing to deadlock
  optax.MultiSteps(single, 2, should_skip_update_fn=optax.skip_not_finite).init(jnp.zeros(3))


@pytest.mark.parametrize("skip", [True, False])
def test_apply_if_finite_around_a_method_is_refused_with_a_pointer_to_the_guard(skip):
  """optax.apply_if_finite skips in a lax.cond on each worker's own gradient:
  a deadlock under shard_map, drifting replicas under vmap. Refused at init
  and at update, naming what to use instead."""
  method = compopt.ef_sgd(0.1, compressor=C.top_k(1), axis_name=AXIS, skip_nonfinite=skip)
  wrapped = optax.apply_if_finite(method, max_consecutive_errors=3)
  with pytest.raises(ValueError, match="compopt.skip_nonfinite"):
    wrapped.init(jnp.zeros(3))
  state = optax.apply_if_finite(optax.identity(), 3).init(jnp.zeros(3))
  state = state._replace(inner_state=method.init(jnp.zeros(3)))
  with pytest.raises(ValueError, match="optax.apply_if_finite around a transformation"):
    jax.vmap(lambda g: wrapped.update(g, state)[0], axis_name=AXIS)(jnp.ones((2, 3)))
  # one worker, no axis: nothing to deadlock or drift
  single = compopt.ef_sgd(0.1, compressor=C.top_k(1))
  optax.apply_if_finite(single, 3).init(jnp.zeros(3))


# ------------------------------------------------------------ refused inputs


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
@pytest.mark.parametrize("name", registry.NAMES)
def test_integer_and_bool_gradients_are_refused_by_every_method(name, dtype):
  opt = registry.make(name)
  state = opt.init(jnp.zeros(3))
  with pytest.raises(TypeError, match=r"`updates` must have floating-point leaves.*"
                                      + jnp.dtype(dtype).name):
    opt.update(jnp.ones(3, dtype), state, jnp.zeros(3))


@pytest.mark.parametrize("make", [
    lambda s: compopt.dcsgd(0.1, compressor=C.top_k(1), axis_name=AXIS, scheme=s),
    lambda s: compopt.comp_ams(0.1, compressor=C.top_k(1), axis_name=AXIS, scheme=s,
                               error_feedback=False),
], ids=["dcsgd", "comp_ams_without_ef"])
def test_two_phase_state_of_another_tree_is_a_clear_error(make):
  opt = make(compopt.exchange.two_phase(C.top_k(1)))
  state = jax.vmap(opt.init)(jnp.zeros((4, 6)))
  with pytest.raises(ValueError, match="two_phase's server error was initialised for 6 "
                                       "coordinates, but the updates have 9"):
    jax.vmap(opt.update, axis_name=AXIS)(jnp.ones((4, 9)), state)


def test_leaves_of_2_to_the_31_elements_get_a_named_error():
  big = jax.ShapeDtypeStruct((2**31,), jnp.float32)
  for c in (C.top_k(1), C.rand_k(1), C.sign(), C.natural(), C.qsgd(2)):
    with pytest.raises(ValueError, match=rf"{c.name}: a leaf of shape \(2147483648,\) has "
                                         r"2147483648 coordinates; at most 2\*\*31 - 1"):
      jax.eval_shape(lambda x: c.encode(jax.random.PRNGKey(0), x), big)


@pytest.mark.parametrize("factory", [C.qsgd, C.random_dithering, C.natural_dithering])
def test_levels_beyond_float32s_resolution_get_a_named_error(factory):
  for levels in (2**24 + 1, 2**32, 2**64):
    with pytest.raises(ValueError, match=r"`levels` must be an integer in \[1, 16777216\]"):
      factory(levels)
  factory(2**24)
