"""1-bit Adam (Tang et al. 2021, Alg. 1) and 0/1 Adam's variance schedule (Lu et
al. 2022) against NumPy transcriptions of the algorithm and of DeepSpeed's
compressed all-reduce, the parallel modes, the compiled program's bytes,
argument checks, skipped steps, resharding and a convergence check."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import compopt
from benchmarks.perf import hlo
from compopt import compressors as C
from compopt._src.methods import onebit_adam as oa

AXIS = "data"
SHAPES = {"w": (5, 3), "b": (3,)}  # D = 18; leaves in jax.tree order: b, w
KEYS = sorted(SHAPES)
D = sum(math.prod(s) for s in SHAPES.values())


# ------------------------------------------------------------ the reference


def np_l2_sign(x, zeros):
  """(‖x‖₂/√d)·sign(x), DeepSpeed's compressor: sign(0) = +1 ("plus": its
  ``sign().add_(1).bool()``) or 0 ("keep")."""
  x = np.asarray(x, np.float64)
  scale = np.sqrt(np.mean(x * x))
  s = np.where(x < 0, -1.0, 1.0) if zeros == "plus" else np.sign(x)
  return scale * s


def _flat(tree):
  return np.concatenate([np.asarray(tree[k], np.float64).reshape(-1) for k in KEYS])


def _unflat(vec):
  out, i = {}, 0
  for k in KEYS:
    size = math.prod(SHAPES[k])
    out[k] = vec[i:i + size].reshape(SHAPES[k])
    i += size
  return out


def _segments():
  i = 0
  for k in KEYS:
    size = math.prod(SHAPES[k])
    yield slice(i, i + size)
    i += size


def np_onebit_adam(grads, x0, *, dense, lr, b1, b2, eps, wd, zeros, layout):
  """Alg. 1 of Tang et al. 2021 as DeepSpeed's OnebitAdam runs it, in float64.

  grads: (steps, n, D), the workers' gradients flattened (leaves in jax.tree
  order); dense(t): whether step t (from 1) all-reduces the gradient and
  takes an Adam step (warm-up; 0/1 Adam's T_v). Otherwise the momentum goes
  through the error-compensated compression of the workers and the server:

  * layout "two_phase": DeepSpeed's compressed_allreduce on the flattened
    vector zero-padded to n·c (c = ⌈D/n⌉): worker i compresses each chunk j
    of m_i + δ_i (one scale per chunk), owner j averages its chunk over the
    workers, adds its error δ̄_j, compresses, and everyone gets the chunks;
    the errors of the padding are dropped;
  * layout "per_leaf": the same algorithm with each leaf compressed on its
    own, on the workers and by the (replicated) server.

  Returns the iterates after every step and the final errors.
  """
  steps, n, d = grads.shape
  x = x0.copy()
  m, v = np.zeros(d), np.zeros(d)
  e, e_server = np.zeros((n, d)), np.zeros(d)
  xs = []
  for t in range(1, steps + 1):
    g = grads[t - 1]
    if dense(t):
      gbar = g.mean(0)
      m = b1 * m + (1 - b1) * gbar
      v = b2 * v + (1 - b2) * gbar ** 2
    else:
      p = b1 * m + (1 - b1) * g + e  # m_t^(i) + δ_{t−1}^(i)
      if layout == "two_phase":
        c = -(-d // n)
        padded = np.zeros((n, n * c))
        padded[:, :d] = p
        sent = np.stack([np.concatenate([np_l2_sign(padded[i, j * c:(j + 1) * c], zeros)
                                         for j in range(n)]) for i in range(n)])
        e = p - sent[:, :d]  # δ_t^(i)
        s = sent.mean(0)
        s[:d] += e_server  # mean_i m̂_t^(i) + δ̄_{t−1}, chunk by chunk
        out = np.concatenate([np_l2_sign(s[j * c:(j + 1) * c], zeros) for j in range(n)])
        e_server = (s - out)[:d]  # δ̄_t
        m = out[:d]
      else:
        sent = np.zeros_like(p)
        for seg in _segments():
          for i in range(n):
            sent[i, seg] = np_l2_sign(p[i, seg], zeros)
        e = p - sent
        s = sent.mean(0) + e_server
        m = np.zeros(d)
        for seg in _segments():
          m[seg] = np_l2_sign(s[seg], zeros)
        e_server = s - m
    x = x - lr * (m / (np.sqrt(v) + eps) + wd * x)
    xs.append(x.copy())
  return np.stack(xs), e


def deepspeed_tv(steps, var_freeze_step, var_update_scaler):
  """The steps in T_v by DeepSpeed ZeroOneAdam's loop (var_interval,
  var_counter), capped at var_freeze_step (its max T_v)."""
  interval, counter, out = 1, 0, set()
  for t in range(1, steps + 1):
    if t % interval == 0 and t <= var_freeze_step:
      out.add(t)
      counter += 1
      if counter == var_update_scaler:
        counter, interval = 0, interval * 2
  return out


def _grads(steps, n, seed):
  """(steps, n, D) float32 gradients: leaves of different scales and a drift."""
  rng = np.random.default_rng(seed)
  scale = np.concatenate([np.full(3, 0.2), np.linspace(0.5, 3.0, 15)])  # b, then w
  g = rng.standard_normal((steps, n, D)) * scale + 0.3 * np.cos(np.arange(steps))[:, None, None]
  return g.astype(np.float32)


def _x0():
  return np.linspace(-1, 1, D).astype(np.float32)


def _run_vmap(opt, grads, x0, n):
  """The iterates of n workers (jit(vmap)) after every step, flattened, and
  the states."""
  def step(p, s, g):
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s

  f = jax.jit(jax.vmap(step, axis_name=AXIS))
  params = compopt.parallel.stack(jax.tree.map(jnp.asarray, _unflat(x0.astype(np.float64))), n)
  params = jax.tree.map(lambda a: a.astype(jnp.float32), params)
  state = compopt.parallel.stack(opt.init(compopt.parallel.worker(params, 0)), n)
  xs, states = [], []
  for t in range(grads.shape[0]):
    g = {k: jnp.asarray(np.stack([_unflat(grads[t, i])[k] for i in range(n)]), jnp.float32)
         for k in KEYS}
    params, state = f(params, state, g)
    for leaf in jax.tree.leaves(params):  # every worker holds the same params
      np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[:1], leaf.shape))
    xs.append(_flat(compopt.parallel.worker(params, 0)))
    states.append(state)
  return np.stack(xs), states


def _core(state):
  """The OnebitAdamState of a method's state (guarded chain: first entry)."""
  return state[0]


# Iterates agree with the float64 transcription to float32 rounding: the
# largest difference seen was 2.4e-7 (relative: 5.6e-6) over 14–16 steps,
# with params up to 1 that moved by up to 0.45.
RTOL, ATOL = 1e-5, 2e-6
LR, B1, B2, EPS = 0.01, 0.9, 0.99, 1e-8


@pytest.mark.parametrize("scheme, zeros", [
    ("two_phase", "keep"), ("allgather", "plus"),
    pytest.param("two_phase", "plus", marks=pytest.mark.slow),
    pytest.param("allgather", "keep", marks=pytest.mark.slow)])
def test_onebit_adam_matches_alg1_every_step(scheme, zeros):
  n, steps, freeze = 4, 14, 4
  grads = _grads(steps, n, seed=1)
  x0 = _x0()
  opt = oa.onebit_adam(LR, b1=B1, b2=B2, eps=EPS, freeze_step=freeze, zeros=zeros,
                       weight_decay=0.01, axis_name=AXIS,
                       scheme=None if scheme == "two_phase" else scheme)
  got, states = _run_vmap(opt, grads, x0, n)
  want, errors = np_onebit_adam(
      grads.astype(np.float64), x0.astype(np.float64), dense=lambda t: t <= freeze, lr=LR,
      b1=B1, b2=B2, eps=EPS, wd=0.01, zeros=zeros,
      layout="two_phase" if scheme == "two_phase" else "per_leaf")
  for t in range(steps):
    np.testing.assert_allclose(got[t], want[t], rtol=RTOL, atol=ATOL, err_msg=f"step {t + 1}")
  # the compression stage did move the params differently from Adam, and the
  # worker errors are each worker's own
  last = _core(states[-1])
  e = np.stack([np.concatenate([np.asarray(last.worker_error[k][i]).reshape(-1)
                                for k in KEYS]) for i in range(n)])
  np.testing.assert_allclose(e, errors, rtol=1e-4, atol=1e-5)
  assert np.abs(e).max() > 1e-2
  # v froze at the end of the warm-up
  nu = [np.asarray(_core(s).nu["w"]) for s in states]
  np.testing.assert_array_equal(nu[freeze - 1], nu[-1])
  assert not np.array_equal(nu[freeze - 2], nu[freeze - 1])


def test_bits_of_each_stage():
  """Warm-up: one ring all-reduce of the float32 gradient; compression stage
  under two_phase: n − 1 chunk payloads out and in (all-to-all), n − 1 server
  payloads in (all-gather). D = 18, n = 4: chunks of c = 5, a payload of
  ⌈5/5⌉ = 1 byte of base-3 codes and a float32 scale."""
  n, freeze = 4, 2
  opt = oa.onebit_adam(LR, freeze_step=freeze, axis_name=AXIS)
  _, states = _run_vmap(opt, _grads(4, n, seed=2), _x0(), n)
  bits = [compopt.comm_bits(s) for s in states]
  dense = 2 * (n - 1) * (32 * D) // n
  chunk = 8 * (1 + 4)
  compressed = (n - 1) * chunk + (n - 1) * chunk
  assert [b.uplink for b in bits] == [[dense * t] * n for t in (1, 2)] + [
      [2 * dense + compressed * t] * n for t in (1, 2)]
  assert bits[-1].downlink == bits[-1].uplink
  # the worker's own messages: the dense gradient, then its n chunk payloads
  assert bits[-1].payload == [2 * 32 * D + 2 * n * chunk] * n


def test_zero_one_adam_matches_its_schedule_every_step():
  n, steps = 4, 16
  var_freeze_step, kappa = 12, 2
  tv = deepspeed_tv(steps, var_freeze_step, kappa)
  assert tv == {1, 2, 4, 6, 8, 12}  # κ = 2 at intervals 1, 2, 4, then 8; none past 12
  grads = _grads(steps, n, seed=3)
  x0 = _x0()
  for scheme, layout in [(None, "two_phase"), ("allreduce", "per_leaf")]:
    opt = oa.zero_one_adam(LR, b1=B1, b2=B2, eps=EPS, var_freeze_step=var_freeze_step,
                           var_update_scaler=kappa, axis_name=AXIS, scheme=scheme)
    got, states = _run_vmap(opt, grads, x0, n)
    want, _ = np_onebit_adam(grads.astype(np.float64), x0.astype(np.float64),
                             dense=lambda t: t in tv, lr=LR, b1=B1, b2=B2, eps=EPS, wd=0.0,
                             zeros="keep", layout=layout)
    for t in range(steps):
      np.testing.assert_allclose(got[t], want[t], rtol=RTOL, atol=ATOL,
                                 err_msg=f"{scheme}, step {t + 1}")
    # v moved exactly on the steps of T_v
    nus = [np.zeros(SHAPES["w"])] + [np.asarray(_core(s).nu["w"][0]) for s in states]
    moved = {t for t in range(1, steps + 1) if not np.array_equal(nus[t], nus[t - 1])}
    assert moved == tv, scheme


def test_var_schedule_doubles_after_kappa_updates():
  assert deepspeed_tv(200, 10**6, 16) == (set(range(1, 17)) | set(range(18, 49, 2))
                                          | set(range(52, 113, 4)) | set(range(120, 201, 8)))
  schedule = oa._variance_schedule(var_freeze_step=10**6, var_update_scaler=16)
  interval, counter = jnp.int32(1), jnp.int32(0)
  got = set()
  for t in range(1, 201):
    dense, interval, counter = schedule(jnp.int32(t), interval, counter)
    if dense:
      got.add(t)
  assert got == deepspeed_tv(200, 10**6, 16)


# ------------------------------------------------------------ parallel modes


N = 8


def _problem(seed=0):
  params = {"w": jnp.zeros((5, 3)), "b": jnp.zeros(3)}
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  return params, (jax.random.normal(k1, (N, 4, 5)), jax.random.normal(k2, (N, 4, 3)))


def _loss(params, batch):
  x, y = batch
  return jnp.mean((x @ params["w"] + params["b"] - y) ** 2)


@pytest.mark.parametrize("make", [
    lambda: oa.onebit_adam(0.05, freeze_step=3, axis_name=AXIS),
    pytest.param(lambda: oa.zero_one_adam(0.05, var_freeze_step=6, var_update_scaler=2,
                                          axis_name=AXIS, scheme="allgather", zeros="plus"),
                 marks=pytest.mark.slow),
], ids=["onebit_two_phase", "zero_one_allgather"])
def test_vmap_and_shard_map_agree_on_8_devices(make):
  opt = make()
  params, batch = _problem()

  def step(p, s, b):
    u, s = opt.update(jax.grad(_loss)(p, b), s, p)
    return optax.apply_updates(p, u), s

  runs = {}
  for mode, f in {"vmap": jax.jit(jax.vmap(step, axis_name=AXIS)),
                  "shard_map": compopt.parallel.shard_map(
                      step, jax.make_mesh((N,), (AXIS,)), AXIS)}.items():
    p, s = compopt.parallel.stack(params, N), compopt.parallel.stack(opt.init(params), N)
    for _ in range(6):  # across the switch to the compressed steps
      p, s = f(p, s, batch)
    runs[mode] = (p, s)
  (pv, sv), (ps, ss) = runs["vmap"], runs["shard_map"]
  for a, b in zip(jax.tree.leaves(pv), jax.tree.leaves(ps)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
  assert compopt.comm_bits(ss) == compopt.comm_bits(sv)
  assert np.abs(np.asarray(pv["w"])).max() > 0.1


# ------------------------------------------------------------ compiled bytes


def _computations(text):
  """{name: body} of the computations of compiled HLO text."""
  out, name, body = {}, None, []
  for line in text.splitlines():
    m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) \(", line)
    if m and line.rstrip().endswith("{"):
      name, body = m.group(1), []
    elif line.startswith("}") and name is not None:
      out[name] = "\n".join(body)
      name = None
    elif name is not None:
      body.append(line)
  return out


def _called(body, names):
  return {c for c in re.findall(r"%([\w.\-]+)", body) if c in names}


def _bytes_under(name, comps, seen=None):
  """Collective bytes per kind in computation ``name`` and all it calls."""
  seen = set() if seen is None else seen
  seen.add(name)
  total = dict(hlo.collective_bytes(comps[name]))
  for c in _called(comps[name], comps) - seen:
    for k, v in _bytes_under(c, comps, seen).items():
      total[k] = total.get(k, 0) + v
  return total


@pytest.mark.parametrize("zeros", ["keep", pytest.param("plus", marks=pytest.mark.slow)])
def test_compiled_branches_move_exactly_the_bits_counted(zeros):
  """The compiled shard_map step is one conditional: its dense branch holds
  ONE all-reduce of the float32 gradient, its compressed branch the
  all-to-all of the chunk payloads and the all-gather of the server's; and
  the bit counters of a warm-up step and of a compressed step, run by that
  program, match them."""
  n = 8
  params = {"w": jnp.zeros((64, 96)), "b": jnp.zeros(96)}
  d = 64 * 96 + 96
  opt = oa.onebit_adam(0.01, freeze_step=1, axis_name=AXIS, zeros=zeros,
                       skip_nonfinite=False)  # the guard's 4-byte flag left out
  mesh = jax.make_mesh((n,), (AXIS,))
  g = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(0), (n,) + p.shape), params)
  s0 = compopt.parallel.stack(opt.init(params), n)
  g, s0 = compopt.parallel.shard(g, mesh, AXIS), compopt.parallel.shard(s0, mesh, AXIS)
  step = jax.jit(jax.shard_map(compopt.parallel.per_worker(lambda g, s: opt.update(g, s)[1]),
                               mesh=mesh, in_specs=P(AXIS), out_specs=P(AXIS)))
  compiled = step.lower(g, s0).compile()
  text = compiled.as_text()
  comps = _computations(text)
  branches = [re.search(r"branch_computations=\{([^}]*)\}", line).group(1)
              for line in text.splitlines() if " conditional(" in line
              and "branch_computations" in line]
  per_branch = [_bytes_under(b.strip().lstrip("%"), comps)
                for names in branches for b in names.split(",")]
  per_branch = [b for b in per_branch if b]  # the branches that communicate
  assert len(per_branch) == 2, per_branch
  dense = next(b for b in per_branch if "all-reduce" in b)
  comp = next(b for b in per_branch if "all-to-all" in b)
  assert dense == {"all-reduce": 4 * d}
  c = math.ceil(d / n)
  chunk_bytes = C.scaled_sign(zeros=zeros, scale="l2").wire_bits(c, jnp.float32) // 8
  assert chunk_bytes == (math.ceil(c / 5) if zeros == "keep" else math.ceil(c / 8)) + 4
  assert comp == {"all-to-all": n * chunk_bytes, "all-gather": chunk_bytes}
  # nothing crosses outside the conditional
  assert hlo.collective_bytes(text) == {**dense, **comp}

  # what the counters say one step of each kind moved
  s1 = compiled(g, s0)
  s2 = compiled(g, s1)
  b1, b2 = compopt.comm_bits(s1), compopt.comm_bits(s2)
  up1 = b1.uplink[0]
  up2 = b2.uplink[0] - up1
  assert up1 == 2 * (n - 1) * 8 * dense["all-reduce"] // n  # ring all-reduce
  assert up2 == 8 * ((n - 1) * comp["all-to-all"] // n + (n - 1) * comp["all-gather"])
  assert b2.payload[0] - b1.payload[0] == 8 * comp["all-to-all"]  # its n chunk payloads
  # 1.6 or 1 bit per coordinate and a scale per chunk against 32 bits
  assert 4 * d >= (19 if zeros == "keep" else 30) * comp["all-to-all"]


# ------------------------------------------------------------ bad arguments


@pytest.mark.parametrize("factory, kwargs, error, match", [
    (oa.onebit_adam, dict(b1=1.0), ValueError, r"onebit_adam: `b1` must be in \[0, 1\)"),
    (oa.onebit_adam, dict(b2=-0.1), ValueError, r"`b2` must be in \[0, 1\)"),
    (oa.onebit_adam, dict(eps=0.0), ValueError, r"`eps` must be > 0"),
    (oa.onebit_adam, dict(weight_decay=-1e-4), ValueError, r"`weight_decay` must be >= 0"),
    (oa.onebit_adam, dict(freeze_step=0), ValueError, r"`freeze_step` must be an integer in "
                                                      r"\[1, 2147483646\]; got 0"),
    (oa.onebit_adam, dict(freeze_step=2.5), TypeError, r"`freeze_step` must be an integer"),
    (oa.onebit_adam, dict(freeze_step=True), TypeError, r"`freeze_step` must be an integer"),
    (oa.onebit_adam, dict(zeros="zero"), ValueError, r"`zeros` must be one of"),
    (oa.onebit_adam, dict(compressor="sign"), TypeError, r"`compressor` must be a compopt "
                                                         r"compressor"),
    (oa.onebit_adam, dict(server_compressor=C.top_k), TypeError,
     r"`server_compressor` must be a compopt compressor"),
    (oa.onebit_adam, dict(compressor=C.top_k(1), zeros="plus"), ValueError,
     r"`zeros` sets the default compressor's sign\(0\)"),
    (oa.onebit_adam, dict(server_compressor=C.top_k(1), scheme="two_phase"), ValueError,
     r"pass it there, compopt.exchange.two_phase\(server_compressor\)"),
    (oa.onebit_adam, dict(scheme="ring"), ValueError, r"`scheme` must be 'allgather'"),
    (oa.onebit_adam, dict(key="seed"), TypeError, r"onebit_adam: `key` must be an int seed"),
    (oa.onebit_adam, dict(axis_name=3), TypeError, r"`axis_name` must be a str"),
    (oa.onebit_adam, dict(skip_nonfinite="yes"), TypeError, r"`skip_nonfinite` must be True "
                                                            r"or False"),
    (oa.zero_one_adam, dict(var_freeze_step=0), ValueError,
     r"zero_one_adam: `var_freeze_step` must be an integer in \[1, 2147483646\]"),
    (oa.zero_one_adam, dict(var_update_scaler=0), ValueError,
     r"`var_update_scaler` must be an integer in \[1, 2147483647\]; got 0"),
    (oa.zero_one_adam, dict(b1=-0.5), ValueError, r"zero_one_adam: `b1` must be in"),
])
def test_bad_arguments_name_the_parameter_and_range(factory, kwargs, error, match):
  with pytest.raises(error, match=match):
    factory(0.1, **kwargs)


def test_bad_learning_rate_and_missing_params_are_named():
  with pytest.raises(ValueError, match=r"onebit_adam: `learning_rate` must be a finite number"):
    oa.onebit_adam(-0.1)
  opt = oa.onebit_adam(0.1, weight_decay=0.1)
  state = opt.init(jnp.zeros(3))
  with pytest.raises(ValueError, match=r"onebit_adam: weight_decay needs the params"):
    opt.update(jnp.ones(3), state)
  with pytest.raises(ValueError, match=r"`state.mu` was initialised for"):
    opt.update({"a": jnp.ones(3)}, state, {"a": jnp.ones(3)})


# ------------------------------------------------------------ faults


def _stack_grads(t, n, poison=None):
  g = jnp.asarray(_grads(1, n, seed=100 + t)[0])
  if poison is not None:
    g = g.at[poison].set(g[poison].at[4].set(jnp.nan))
  return {k: jnp.stack([_unflat(g[i])[k] for i in range(n)]) for k in KEYS}


@pytest.mark.parametrize("bad_step", [2, 4], ids=["warm_up", "compressed"])
def test_nan_on_one_worker_skips_the_step_and_keeps_the_state(bad_step):
  n, freeze = 4, 2
  opt = oa.onebit_adam(0.05, freeze_step=freeze, axis_name=AXIS)

  def step(p, s, g):
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s, u

  f = jax.jit(jax.vmap(step, axis_name=AXIS))
  params = compopt.parallel.stack({k: jnp.ones(s) for k, s in SHAPES.items()}, n)
  state = compopt.parallel.stack(opt.init(compopt.parallel.worker(params, 0)), n)
  clean_p, clean_s = params, state
  for t in range(1, 7):
    if t == bad_step:
      p2, s2, u = f(params, state, _stack_grads(t, n, poison=1))
      for leaf in jax.tree.leaves(u):
        np.testing.assert_array_equal(leaf, 0)
      # the whole inner state (moments, errors, count, key, bits, server
      # error) exactly as it was; only the guard counted the skip
      for a, b in zip(jax.tree.leaves(s2[:-1]), jax.tree.leaves(state[:-1])):
        np.testing.assert_array_equal(a, b)
      assert compopt.skipped_steps(s2) == [1] * n
      params, state = p2, s2
    params, state, _ = f(params, state, _stack_grads(t + 10, n))
    clean_p, clean_s, _ = f(clean_p, clean_s, _stack_grads(t + 10, n))
  # the run is the clean run, step for step
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(clean_p)):
    np.testing.assert_array_equal(a, b)
  assert compopt.comm_bits(state) == compopt.comm_bits(clean_s)


# ------------------------------------------------------------ resharding


@pytest.mark.parametrize("scheme", [
    None, pytest.param("allgather", marks=pytest.mark.slow)], ids=["two_phase", "allgather"])
def test_reshard_4_to_2_workers(scheme):
  opt = oa.onebit_adam(0.05, freeze_step=1, axis_name=AXIS, scheme=scheme)
  _, states = _run_vmap(opt, _grads(3, 4, seed=5), _x0(), 4)
  s4 = states[-1]
  s2 = compopt.reshard_state(s4, 2)
  c4, c2 = _core(s4), _core(s2)
  for k in KEYS:
    # δ'_j = mean_i δ_i: the pending correction mean_i δ_i is kept whole
    np.testing.assert_allclose(c2.worker_error[k], np.broadcast_to(
        np.asarray(c4.worker_error[k]).mean(0), c2.worker_error[k].shape), rtol=1e-6)
    np.testing.assert_array_equal(c2.mu[k], np.asarray(c4.mu[k])[:2])  # replicated
    np.testing.assert_array_equal(c2.nu[k], np.asarray(c4.nu[k])[:2])
  assert np.abs(np.asarray(c4.worker_error["w"])).max() > 0
  if scheme is None:  # two_phase: the owners' chunks of δ̄, cut for two owners
    e4 = np.asarray(c4.scheme_state.server_error)
    e2 = np.asarray(c2.scheme_state.server_error)
    np.testing.assert_allclose(e2.sum(0), e4.sum(0), rtol=1e-6)
    assert np.count_nonzero(e2[0][9:]) == 0 and np.count_nonzero(e2[1][:9]) == 0
    assert np.count_nonzero(e4.sum(0)) == D
  else:
    np.testing.assert_array_equal(c2.server_error["w"], np.asarray(c4.server_error["w"])[:2])
  # worker 1 keeps its counter, worker 0 takes those of the removed 2 and 3
  b4, b2 = compopt.comm_bits(s4), compopt.comm_bits(s2)
  assert b2.uplink == [b4.uplink[0] + b4.uplink[2] + b4.uplink[3], b4.uplink[1]]
  # and two workers step on from it
  g = {k: jnp.ones((2,) + s) for k, s in SHAPES.items()}
  p = compopt.parallel.stack({k: jnp.zeros(s) for k, s in SHAPES.items()}, 2)
  u, s = jax.jit(jax.vmap(opt.update, axis_name=AXIS))(g, jax.tree.map(jnp.asarray, s2), p)
  assert all(np.isfinite(np.asarray(l)).all() for l in jax.tree.leaves(u))
  assert int(_core(s).count[0]) == 4


# ------------------------------------------------------------ one worker, dtypes


def test_bf16_params_keep_bf16_updates_and_float32_state():
  opt = oa.onebit_adam(0.01, freeze_step=1)
  params = {k: jnp.ones(s, jnp.bfloat16) for k, s in SHAPES.items()}
  state = opt.init(params)
  update = jax.jit(opt.update)
  for t in range(3):
    g = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(t), p.shape, p.dtype),
                     params)
    u, state = update(g, state, params)
    assert all(l.dtype == jnp.bfloat16 for l in jax.tree.leaves(u))
    params = optax.apply_updates(params, u)
  core = _core(state)
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves((core.mu, core.nu,
                                                               core.worker_error)))


def test_inject_hyperparams_gives_the_same_steps():
  kwargs = dict(freeze_step=2, b1=0.75, b2=0.9375, weight_decay=0.5)
  injected = compopt.inject_hyperparams(oa.onebit_adam)(0.1, **kwargs)
  plain = oa.onebit_adam(0.1, **kwargs)
  params = {k: jnp.ones(s) for k, s in SHAPES.items()}
  p1 = p2 = params
  s1, s2 = injected.init(params), plain.init(params)
  step1, step2 = jax.jit(injected.update), jax.jit(plain.update)
  for t in range(4):
    g = jax.tree.map(lambda p: jax.random.normal(jax.random.PRNGKey(t), p.shape), params)
    u1, s1 = step1(g, s1, p1)
    u2, s2 = step2(g, s2, p2)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert set(s1.hyperparams) == {"learning_rate", "b1", "b2", "eps", "weight_decay"}


# ------------------------------------------------------------ convergence


def test_least_squares_reaches_adams_loss():
  """8 workers, each with its own rows of a least-squares problem: 1-bit Adam
  (40 warm-up steps) ends within 2% of Adam on the full data after 400
  steps, far below the starting loss."""
  n, rows, dim = 8, 16, 20
  rng = np.random.default_rng(0)
  a = rng.standard_normal((n, rows, dim)).astype(np.float32)
  x_true = rng.standard_normal(dim).astype(np.float32)
  y = a @ x_true + 0.1 * rng.standard_normal((n, rows)).astype(np.float32)

  def loss(x, a, y):
    return 0.5 * jnp.mean((a @ x - y) ** 2)

  def full_loss(x):
    return float(loss(x, a.reshape(-1, dim), y.reshape(-1)))

  lr, steps = 0.05, 400
  runs = {}
  for name, opt in {"onebit": oa.onebit_adam(lr, freeze_step=40, axis_name=AXIS),
                    "adam": optax.adam(lr, b1=0.9, b2=0.999)}.items():
    def step(x, s, a, y, opt=opt):
      g = jax.grad(loss)(x, a, y)
      if name == "adam":
        g = jax.lax.pmean(g, AXIS)
      u, s = opt.update(g, s, x)
      return optax.apply_updates(x, u), s

    def run(x, s, opt=opt, step=step):
      def body(carry, _):
        return jax.vmap(step, axis_name=AXIS)(*carry, a, y), None
      return jax.lax.scan(body, (x, s), None, length=steps)[0]

    x0 = jnp.zeros((n, dim))
    s0 = compopt.parallel.stack(opt.init(jnp.zeros(dim)), n)
    x, _ = jax.jit(run)(x0, s0)
    runs[name] = full_loss(x[0])
  start = full_loss(jnp.zeros(dim))
  assert runs["adam"] < 0.01 * start
  assert runs["onebit"] < 1.02 * runs["adam"] + 1e-3, (runs, start)
