"""Deep Gradient Compression (Lin et al. 2018) against a NumPy transcription of
the paper's algorithm, momentum SGD, the compiled program's collectives, and
the other modes of running."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import _compiled
import compopt
from compopt import compressors as C
from benchmarks.perf import hlo
from compopt import DGCState
from compopt import dgc

from _problems import AXIS as PROBLEM_AXIS
from _problems import relative_errors, ridge, run_ridge

AXIS = "data"
SHAPES = {"w": (4, 5), "b": (10,)}  # 20 and 10 coordinates


def _leaves(tree):
  return [tree["b"], tree["w"]]  # jax.tree order (sorted keys)


def _grads(steps, n, seed=0, scales=(0.3, 3.0)):
  """(steps, n, ...) gradients per leaf; the scale alternates over the steps
  so that local clipping acts on some steps and not on others."""
  rng = np.random.default_rng(seed)
  return {k: np.stack([scales[t % len(scales)] * rng.standard_normal((n,) + s)
                       for t in range(steps)]).astype(np.float32)
          for k, s in SHAPES.items()}


_STEPS = {}


def _step_fn(opt):
  """The jitted vmap step of ``opt`` (one compilation per method object)."""
  if opt not in _STEPS:
    def step(x, s, g):
      u, s = opt.update(g, s, x)
      return optax.apply_updates(x, u), s
    _STEPS[opt] = jax.jit(jax.vmap(step, axis_name=AXIS))
  return _STEPS[opt]


def _run(opt, grads, x0=None, dtype=jnp.float32, start=None, t0=0):
  """One step per row of ``grads`` (from row ``t0``) on n workers under
  jax.vmap, from ``x0`` or from the stacked (params, state) ``start``;
  returns the params and the stacked state after every step."""
  steps, n = next(iter(grads.values())).shape[:2]
  if start is None:
    if x0 is None:
      x0 = {k: jnp.zeros(s, dtype) for k, s in SHAPES.items()}
    start = compopt.parallel.stack(x0, n), compopt.parallel.stack(opt.init(x0), n)
  f = _step_fn(opt)
  x, s = start
  out = []
  for t in range(t0, steps):
    x, s = f(x, s, {k: jnp.asarray(v[t], dtype) for k, v in grads.items()})
    out.append((x, s))
  return out


def _np_top_k_mask(v, k):
  mask = np.zeros(v.shape, bool)
  mask[np.argsort(-np.abs(v), kind="stable")[:k]] = True
  return mask


def np_dgc(grads, lr, m, stages, final_k, clip=None, nesterov=False, masking=True):
  """The paper's algorithm on node k, in its own units, float64.

  Alg. 1 (node k accumulates G_k = ∇_k/N, the all-reduce sums the sparse
  G̃_k), with momentum correction (§3.2; the appendix for Nesterov), momentum
  factor masking (§3.3), local gradient clipping (§3.2 and the appendix:
  ‖G_k‖ ≤ N^{-1/2} thr, on the whole model) and the warm-up (§3.3):
  ``stages`` = [(k per leaf, steps)],
  then ``final_k``. Returns per step (w, U, V, clipped): U, V of shape
  (N, d) per leaf, clipped[k] whether node k clipped.
  """
  leaves = _leaves(grads)
  steps, N = leaves[0].shape[:2]
  g = [l.reshape(steps, N, -1).astype(np.float64) for l in leaves]
  w = [np.zeros(l.shape[2]) for l in g]
  U = [np.zeros((N, l.shape[2])) for l in g]
  V = [np.zeros((N, l.shape[2])) for l in g]
  schedule = [ks for ks, T in stages for _ in range(T)]
  out = []
  for t in range(steps):
    ks = schedule[t] if t < len(schedule) else final_k
    G = [l[t] / N for l in g]
    clipped = np.zeros(N, bool)
    if clip is not None:
      thr = clip * N ** -0.5
      norm = np.sqrt(sum((x ** 2).sum(1) for x in G))
      clipped = norm > thr
      G = [x * np.where(clipped, thr / norm, 1.0)[:, None] for x in G]
    total = [np.zeros_like(x) for x in w]
    for j in range(len(g)):
      for k in range(N):
        if nesterov:
          U[j][k] = m * (U[j][k] + G[j][k])
          V[j][k] = V[j][k] + U[j][k] + G[j][k]
        else:
          U[j][k] = m * U[j][k] + G[j][k]
          V[j][k] = V[j][k] + U[j][k]
        mask = _np_top_k_mask(V[j][k], ks[j])
        total[j] += np.where(mask, V[j][k], 0)  # encode(G̃_k), summed over k
        V[j][k] = np.where(mask, 0, V[j][k])
        if masking:
          U[j][k] = np.where(mask, 0, U[j][k])
    w = [x - lr * s for x, s in zip(w, total)]
    out.append(([x.copy() for x in w], [x.copy() for x in U], [x.copy() for x in V],
                clipped))
  return out


# Densities that give whole k on both leaves (20 and 10 coordinates):
# 0.5 → (5, 10), 0.2 → (2, 4), final 0.1 → (1, 2); [b, w] order.
WARMUP = [(0.5, 2), (0.2, 2)]
STAGES_K = [((5, 10), 2), ((2, 4), 2)]
FINAL_K = (1, 2)


def _compare(run, ref, n, rtol, atol):
  worst = 0.0
  for t, ((x, s), (w, U, V, _)) in enumerate(zip(run, ref)):
    core = s[0]
    for j, key in enumerate(["b", "w"]):
      got = np.asarray(x[key], np.float64).reshape(n, -1)
      np.testing.assert_allclose(got, np.broadcast_to(w[j], got.shape), rtol=rtol,
                                 atol=atol, err_msg=f"params step {t}")
      # u_k, v_k are the paper's U^k, V^k times N (compopt averages, the paper sums)
      for name, ref_buf in (("u", U[j]), ("v", V[j])):
        buf = np.asarray(getattr(core, name)[key], np.float64).reshape(n, -1)
        np.testing.assert_allclose(buf, n * ref_buf, rtol=rtol, atol=atol,
                                   err_msg=f"{name} step {t}")
        worst = max(worst, float(np.max(np.abs(buf - n * ref_buf))))
      worst = max(worst, float(np.max(np.abs(got - w[j]))))
  return worst


@pytest.mark.parametrize("nesterov,masking", [(False, True), (True, True), (False, False)])
def test_matches_the_papers_algorithm_across_the_warmup(nesterov, masking):
  n, steps, lr, m, clip = 3, 7, 0.1, 0.9, 1.0
  grads = _grads(steps, n)
  opt = dgc(lr, momentum=m, ratio=0.1, warmup=WARMUP, clip_norm=clip, nesterov=nesterov,
            momentum_masking=masking, axis_name=AXIS)
  run = _run(opt, grads)
  ref = np_dgc(grads, lr, m, STAGES_K, FINAL_K, clip=clip, nesterov=nesterov,
               masking=masking)
  clipped = np.stack([r[3] for r in ref])
  assert clipped.any() and not clipped.all()  # both cases occur
  _compare(run, ref, n, rtol=1e-5, atol=1e-6)
  # the bits: each step's k values (float32) and k uint8 positions per leaf
  per_step = [sum(ks) * (32 + 8) for ks, T in STAGES_K for _ in range(T)]
  per_step += [sum(FINAL_K) * (32 + 8)] * (steps - len(per_step))
  for t, (_, s) in enumerate(run):
    bits = compopt.comm_bits(s)
    assert bits.payload == [sum(per_step[:t + 1])] * n
    assert bits.uplink == [(n - 1) * sum(per_step[:t + 1])] * n  # ring all-gather
    np.testing.assert_array_equal(s[0].count, [t + 1] * n)


def test_matches_the_papers_algorithm_in_float64():
  n, steps, lr, m, clip = 3, 7, 0.1, 0.9, 1.0
  grads = _grads(steps, n, seed=3)
  with _compiled.x64():
    opt = dgc(lr, momentum=m, ratio=0.1, warmup=WARMUP, clip_norm=clip, axis_name=AXIS)
    run = _run(opt, grads, dtype=jnp.float64)
    assert run[-1][1][0].u["w"].dtype == jnp.float64
    assert run[-1][0]["w"].dtype == jnp.float64
    ref = np_dgc(grads, lr, m, STAGES_K, FINAL_K, clip=clip)
    _compare(run, ref, n, rtol=1e-12, atol=1e-13)


def _momentum_sgd(lr, m, nesterov, grads):
  """optax's momentum SGD on the mean gradient."""
  opt = optax.sgd(lr, momentum=m, nesterov=nesterov)
  x = {k: jnp.zeros(s) for k, s in SHAPES.items()}
  state = opt.init(x)
  out = []
  for t in range(next(iter(grads.values())).shape[0]):
    mean = {k: jnp.asarray(v[t].astype(np.float64).mean(0), jnp.float32)
            for k, v in grads.items()}
    u, state = opt.update(mean, state, x)
    x = optax.apply_updates(x, u)
    out.append(x)
  return out


@pytest.mark.parametrize("nesterov", [False, True])
def test_dense_is_momentum_sgd_on_the_mean_gradient(nesterov):
  # Sending every coordinate (the identity, density 1, a dense warm-up stage)
  # delays none: v_k is sent whole and DGC is momentum SGD on the mean.
  n, steps, lr, m = 4, 5, 0.1, 0.9
  grads = _grads(steps, n, seed=1, scales=(1.0,))
  ref = _momentum_sgd(lr, m, nesterov, grads)
  forms = [dict(compressor=C.identity())]
  if not nesterov:  # the other ways of sending everything
    forms += [dict(compressor=C.top_k(ratio=1.0)), dict(warmup=[(1.0, steps)])]
  for kwargs in forms:
    run = _run(dgc(lr, momentum=m, nesterov=nesterov, axis_name=AXIS, **kwargs), grads)
    for t, ((x, s), want) in enumerate(zip(run, ref)):
      for k in SHAPES:
        np.testing.assert_allclose(x[k][0], want[k], rtol=2e-6, atol=1e-6,
                                   err_msg=f"{kwargs} step {t}")
      np.testing.assert_array_equal(s[0].v["w"], 0)  # nothing is left behind


def test_bf16_params_keep_bf16_updates_and_f32_state():
  # also: warm-up densities take the final top_k's block mode, and a stage
  # may be any compressor
  n = 2
  grads = _grads(3, n, seed=2)
  x0 = {k: jnp.ones(s, jnp.bfloat16) for k, s in SHAPES.items()}
  final = C.top_k(ratio=0.2, block_size=8)
  opt = dgc(0.1, compressor=final, warmup=[(0.3, 1), (C.top_k(3), 1)], axis_name=AXIS)
  x, s = _run(opt, grads, x0=x0, dtype=jnp.bfloat16)[-1]
  assert x["w"].dtype == jnp.bfloat16
  assert s[0].u["w"].dtype == jnp.float32 and s[0].v["b"].dtype == jnp.float32
  # bf16 values on the wire
  tree = {k: jax.ShapeDtypeStruct(v, jnp.bfloat16) for k, v in SHAPES.items()}
  want = sum(C.tree_wire_bits(c, tree) for c in (C.top_k(ratio=0.3, block_size=8),
                                                   C.top_k(3), final))
  assert compopt.comm_bits(s).payload == [want] * n
  assert want != sum(C.tree_wire_bits(c, tree) for c in (C.top_k(ratio=0.3), C.top_k(3),
                                                          final))


# ----------------------------------------------------------- modes of running


def test_vmap_and_shard_map_agree_across_the_warmup():
  n, steps = 8, 4
  opt = dgc(0.1, ratio=0.1, warmup=[(0.5, 1), (1.0, 1)], clip_norm=3.0,
            axis_name=AXIS)
  grads = _grads(steps, n, seed=4)
  x0 = {k: jnp.zeros(s) for k, s in SHAPES.items()}

  def step(x, s, g):
    u, s = opt.update(g, s, x)
    return optax.apply_updates(x, u), s

  mesh = jax.make_mesh((n,), (AXIS,))
  modes = {"vmap": jax.jit(jax.vmap(step, axis_name=AXIS)),
           "shard_map": compopt.parallel.shard_map(step, mesh, AXIS)}
  results = {}
  for mode, f in modes.items():
    x, s = compopt.parallel.stack(x0, n), compopt.parallel.stack(opt.init(x0), n)
    for t in range(steps):
      x, s = f(x, s, {k: jnp.asarray(v[t]) for k, v in grads.items()})
    results[mode] = (x, s)
  (xa, sa), (xb, sb) = results["vmap"], results["shard_map"]
  for a, b in zip(jax.tree.leaves((xa, sa)), jax.tree.leaves((xb, sb))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  assert compopt.comm_bits(sa) == compopt.comm_bits(sb)
  assert np.abs(np.asarray(xa["w"])).max() > 0


_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")


def _computations(text):
  """{name: body text} of the computations in compiled HLO text, and the
  entry computation's name."""
  bodies, name, entry, lines = {}, None, None, []
  for line in text.splitlines():
    if name is None:
      m = _COMPUTATION.match(line)
      if m:
        name, lines = m.group(1), []
        entry = name if line.startswith("ENTRY") else entry
    elif line.startswith("}"):
      bodies[name], name = "\n".join(lines), None
    else:
      lines.append(line)
  return bodies, entry


def _reachable(bodies, root, stop=()):
  """The computations ``root`` calls, transitively (not entering ``stop``)."""
  seen, todo = set(), [root]
  while todo:
    c = todo.pop()
    if c in seen or c in stop:
      continue
    seen.add(c)
    todo.extend(set(re.findall(r"%([\w.\-]+)", bodies[c])) & set(bodies))
  return seen


def _branch_bytes(text):
  """(bytes per device put into collectives by each branch of the one
  conditional, the same outside any branch)."""
  bodies, entry = _computations(text)
  conds = [m for body in bodies.values() for m in _BRANCHES.finditer(body)]
  assert len(conds) == 1, len(conds)
  branches = [b.strip().lstrip("%") for b in conds[0].group(1).split(",")]
  count = lambda names: sum(sum(hlo.collective_bytes(bodies[c]).values()) for c in names)
  inside = set().union(*[_reachable(bodies, b) for b in branches])
  outside = _reachable(bodies, entry, stop=inside)
  return [count(_reachable(bodies, b)) for b in branches], count(outside)


def _compiled_step(opt, tree, n):
  """One shard_map step of ``opt`` on ``tree`` over n devices, compiled
  (as ``_compiled.step_hlo`` builds it): the executable, which runs, and
  its HLO text."""
  mesh = jax.make_mesh((n,), (AXIS,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))

  def stacked(x):
    return jax.ShapeDtypeStruct((n,) + x.shape, x.dtype, sharding=sharding)

  state = jax.tree.map(stacked, jax.eval_shape(opt.init, tree))
  grads = jax.tree.map(stacked, tree)
  step = jax.jit(jax.shard_map(compopt.parallel.per_worker(lambda g, s: opt.update(g, s)),
                               mesh=mesh, in_specs=jax.sharding.PartitionSpec(AXIS),
                               out_specs=jax.sharding.PartitionSpec(AXIS)))
  compiled = step.lower(grads, state).compile()
  return compiled, compiled.as_text(), mesh


def test_compiled_program_moves_exactly_the_counted_bits_in_each_stage():
  n = 8
  tree = {"w": jax.ShapeDtypeStruct((16, 32), jnp.float32),
          "b": jax.ShapeDtypeStruct((32,), jnp.bfloat16)}
  warmup = [(0.25, 1), (1.0, 1), (0.0625, 1)]
  # skip_nonfinite=False: the payload alone, without the guard's 4-byte flag
  opt = dgc(0.1, ratio=0.01, warmup=warmup, axis_name=AXIS, skip_nonfinite=False)
  compiled, text, mesh = _compiled_step(opt, tree, n)
  per_branch, outside = _branch_bytes(text)
  assert outside == 0
  # what the counters count in each stage, running that very program
  rng = np.random.default_rng(7)
  state = compopt.parallel.shard(compopt.parallel.stack(opt.init(
      {k: jnp.zeros(v.shape, v.dtype) for k, v in tree.items()}), n), mesh, AXIS)
  counted = []
  for _ in range(4):
    g = compopt.parallel.shard({k: jnp.asarray(rng.standard_normal((n,) + v.shape), v.dtype)
                                for k, v in tree.items()}, mesh, AXIS)
    before = compopt.comm_bits(state).payload[0]
    _, state = compiled(g, state)
    counted.append(compopt.comm_bits(state).payload[0] - before)
  # and the compressors' own sizes: top_k, the identity, top_k, top_k
  stage_compressors = [C.top_k(ratio=0.25), C.identity(), C.top_k(ratio=0.0625),
                       C.top_k(ratio=0.01)]
  wire = [C.tree_wire_bits(c, tree) for c in stage_compressors]
  # the dense stage all-reduces float32 (the sum's dtype), also for the bf16 leaf
  wire[1] = 32 * (16 * 32 + 32)
  assert counted == wire
  assert [8 * b for b in per_branch] == wire, (per_branch, wire)


@pytest.mark.slow
def test_the_guard_adds_one_4_byte_flag_outside_the_stages():
  tree = {"w": jax.ShapeDtypeStruct((64, 32), jnp.float32)}
  opt = dgc(0.1, ratio=0.01, warmup=[(0.25, 1)], axis_name=AXIS)
  per_branch, outside = _branch_bytes(_compiled.step_hlo(opt, tree, 8, AXIS))
  assert outside == 4
  assert [8 * b for b in per_branch] == [C.tree_wire_bits(C.top_k(ratio=r), tree)
                                         for r in (0.25, 0.01)]


# ------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(momentum=1.0), ValueError, r"dgc: `momentum` must be in \[0, 1\); got 1.0"),
    (dict(momentum=-0.1), ValueError, r"`momentum` must be in \[0, 1\)"),
    (dict(ratio=0.0), ValueError, r"dgc: `ratio` must be in \(0, 1\]; got 0.0"),
    (dict(ratio=1.5), ValueError, r"`ratio` must be in \(0, 1\]"),
    (dict(ratio="0.1"), TypeError, r"`ratio` must be a number in \(0, 1\]"),
    (dict(ratio=0.1, compressor=C.top_k(1)), ValueError, r"give `ratio` .* or `compressor`"),
    (dict(compressor="top_k"), TypeError, r"dgc: `compressor` must be a compopt compressor"),
    (dict(warmup=0.25), TypeError, r"`warmup` must be a sequence of \(density, steps\)"),
    (dict(warmup=[0.25, 0.0625]), TypeError, r"entry 0 is 0.25"),
    (dict(warmup=[(0.25, 10, 3)]), TypeError, r"entry 0 is \(0.25, 10, 3\)"),
    (dict(warmup=[(0.25, 10), (0.0, 10)]), ValueError,
     r"`warmup` densities must be in \(0, 1\]; entry 1 has density 0.0"),
    (dict(warmup=[(1.5, 10)]), ValueError, r"densities must be in \(0, 1\]"),
    (dict(warmup=[("0.25", 10)]), TypeError, r"entry 0 has density '0.25'"),
    (dict(warmup=[(0.25, 0)]), ValueError, r"`warmup` steps must be integers >= 1; entry 0"),
    (dict(warmup=[(0.25, 2.5)]), TypeError, r"entry 0 has steps 2.5"),
    (dict(warmup=[(0.25, 2**31)]), ValueError, r"at most 2\*\*31 - 1"),
    (dict(clip_norm=0.0), ValueError, r"dgc: `clip_norm` must be > 0 or None; got 0.0"),
    (dict(clip_norm=-1.0), ValueError, r"`clip_norm` must be > 0 or None"),
    (dict(nesterov=1), TypeError, r"dgc: `nesterov` must be True or False"),
    (dict(momentum_masking="yes"), TypeError, r"`momentum_masking` must be True or False"),
    (dict(axis_name=3), TypeError, r"dgc: `axis_name` must be a str"),
    (dict(key="seed"), TypeError, r"dgc: `key` must be an int seed"),
    (dict(scheme="ring"), ValueError, r"dgc: "),
    (dict(skip_nonfinite=None), TypeError, r"`skip_nonfinite` must be True or False"),
])
def test_bad_arguments_are_named_at_construction(kwargs, error, match):
  with pytest.raises(error, match=match):
    dgc(0.1, **kwargs)


def test_bad_learning_rate_and_mismatched_updates():
  with pytest.raises(ValueError, match=r"dgc: `learning_rate` must be a finite number"):
    dgc(-1.0)
  opt = dgc(0.1, ratio=0.5)
  state = opt.init({"a": jnp.zeros(3)})
  with pytest.raises(ValueError, match=r"dgc: the updates do not match the state"):
    opt.update({"a": jnp.zeros(4)}, state)
  with pytest.raises(TypeError, match=r"dgc: `updates` must have floating-point leaves"):
    opt.update({"a": jnp.zeros(3, jnp.int32)}, state)


# ----------------------------------------------------------- faults, resharding


def test_nan_on_one_worker_skips_the_step_everywhere_and_keeps_the_stage():
  n = 4
  grads = _grads(4, n, seed=5)
  grads["w"][1, 2, 0, 0] = np.nan  # worker 2, step 1 (the last step of stage 0)
  opt = dgc(0.1, ratio=0.1, warmup=[(0.5, 2)], axis_name=AXIS)
  run = _run(opt, grads)
  (x0, s0), (x1, s1) = run[0], run[1]
  for a, b in zip(jax.tree.leaves((x0, s0[:-1])), jax.tree.leaves((x1, s1[:-1]))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert compopt.skipped_steps(s1) == [1] * n
  # the next step is still stage 0's second step: same as a run without step 1
  clean = {k: np.delete(v, 1, axis=0) for k, v in grads.items()}
  ref = _run(opt, clean)
  for a, b in zip(jax.tree.leaves(run[2][0]), jax.tree.leaves(ref[1][0])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert compopt.comm_bits(run[2][1]) == compopt.comm_bits(ref[1][1])


def test_reshard_gives_new_workers_the_mean_momentum_and_velocity():
  opt = dgc(0.1, ratio=0.1, warmup=[(0.5, 2)], axis_name=AXIS, key=3)
  x, s = _run(opt, _grads(3, 4, seed=6))[-1]
  s2 = compopt.reshard_state(s, 2)
  core, core2 = s[0], s2[0]
  assert isinstance(core2, DGCState)
  for name in ("u", "v"):
    for k in SHAPES:
      old = np.asarray(getattr(core, name)[k], np.float64)
      np.testing.assert_allclose(getattr(core2, name)[k],
                                 np.broadcast_to(old.mean(0), (2,) + old.shape[1:]),
                                 rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(core2.count, [3, 3])
  np.testing.assert_array_equal(core2.key, np.broadcast_to(core.key[:1], (2, 2)))
  assert sum(compopt.comm_bits(s2).payload) == sum(compopt.comm_bits(s).payload)
  # the run goes on with 2 workers, in the final stage
  x2 = jax.tree.map(lambda a: a[:2], x)
  f = jax.jit(jax.vmap(lambda x, s, g: opt.update(g, s, x), axis_name=AXIS))
  g = {k: jnp.ones((2,) + v) for k, v in SHAPES.items()}
  u, s3 = f(x2, s2, g)
  np.testing.assert_array_equal(s3[0].count, [4, 4])
  np.testing.assert_array_equal(u["w"][0], u["w"][1])


@pytest.mark.slow  # orbax; the state is a plain pytree of arrays
def test_checkpoint_round_trip_resumes_bit_for_bit(tmp_path):
  n = 2
  opt = dgc(0.1, ratio=0.1, warmup=[(0.5, 2)], axis_name=AXIS)
  grads = _grads(4, n, seed=8)
  full = _run(opt, grads)
  x, s = full[1]
  compopt.checkpoint.save(tmp_path / "ckpt", {"params": x, "opt": s})
  like = {"params": x, "opt": compopt.parallel.stack(opt.init(
      {k: jnp.zeros(v) for k, v in SHAPES.items()}), n)}
  back = compopt.checkpoint.restore(tmp_path / "ckpt", like)
  resumed = _run(opt, grads, start=(back["params"], back["opt"]), t0=2)
  for a, b in zip(jax.tree.leaves(resumed[-1]), jax.tree.leaves(full[-1])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --------------------------------------------------------------- convergence


def test_converges_on_heterogeneous_least_squares():
  # Least squares on 8 workers with their own data (∇f_i(x*) ≠ 0), 3 of 30
  # coordinates sent per step after a warm-up: DGC reaches a neighbourhood of
  # x* (its size shrinks with η), while the same top_k with momentum but
  # without the accumulation of v (DCSGD) stalls an order of magnitude away.
  p = ridge(n=8, m=40, d=30, lam=0.1, seed=2)
  steps, lr = 600, 0.02 / p.L
  opt = dgc(lr, ratio=0.1, warmup=[(0.5, 50), (0.25, 50)], axis_name=PROBLEM_AXIS)
  e_dgc = relative_errors(run_ridge(opt, p, steps)[0], p.x_star)
  dc = compopt.dcsgd(lr, compressor=C.top_k(3), momentum=0.9, axis_name=PROBLEM_AXIS)
  e_dc = relative_errors(run_ridge(dc, p, steps)[0], p.x_star)
  tail = slice(steps - 100, steps)
  assert e_dgc[tail].max() < 1e-2, e_dgc[tail].max()
  assert e_dc[tail].min() > 5 * e_dgc[tail].max(), (e_dc[tail].min(), e_dgc[tail].max())
