"""PowerSGD against independent references: a NumPy loop written from the
paper's Algorithm 1 (and the DDP hook's warm-up and error feedback), PyTorch's
own ``powerSGD_hook`` on two gloo ranks, and exact identities of the method;
then vmap against shard_map, the bytes in the compiled program, bad
arguments, dtypes, the non-finite guard, resharding and checkpoints."""

import datetime
import math
import threading

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import _compiled
import compopt
from benchmarks.perf import hlo
from compopt._src.methods import powersgd as powersgd_lib  # the private helpers it tests

powersgd = powersgd_lib.powersgd
powersgd_mean = powersgd_lib.powersgd_mean
wire_bits = powersgd_lib.powersgd_wire_bits
PowerSGDState = powersgd_lib.PowerSGDState

AXIS = "data"

# JAX layouts, output features last. "conv" is a 3x3 convolution, "b" a bias,
# "small" a matrix the size rule sends dense at rank 2 and rate 1.
SHAPES = {"fc": (12, 10), "conv": (3, 3, 2, 6), "b": (10,), "small": (2, 3)}


def _tree_grads(rng, n, shapes=SHAPES, dtype=np.float32):
  return {k: rng.normal(size=(n,) + s).astype(dtype) for k, s in shapes.items()}


# ----------------------------------------------------------- NumPy reference


def _np_orthogonalize(a, eps):
  """The hook's Gram-Schmidt (``_orthogonalize_gram_schmidt``), float64."""
  a = np.array(a, np.float64)
  for i in range(a.shape[1]):
    a[:, i] /= np.linalg.norm(a[:, i]) + eps
    a[:, i + 1:] -= (a[:, i:i + 1] * a[:, i + 1:]).sum(0) * a[:, i:i + 1]
  return a


def _np_powersgd(grads, q0, *, rank, rate, start_iter, ef=True, warm=True, eps=0.0,
                 fresh=None):
  """PowerSGD on W workers from Vogels et al. 2019, Alg. 1 (one step of
  subspace iteration, P and Q all-reduced) with Alg. 2's error feedback, the
  DDP hook's rules for what is compressed and its dense warm-up.

  grads: per step, a dict of arrays (W, *shape) (JAX layout: a leaf
  (d_1, ..., d_k, n) is M = reshape(leaf, (m, n))ᵀ ∈ R^{n×m}). q0: the initial
  Q per compressed leaf. fresh: per step, the Qs drawn when warm is False.
  Returns the aggregate of every step and the final errors.
  """
  keys = list(grads[0])
  w_count = grads[0][keys[0]].shape[0]
  errors = {k: np.zeros(grads[0][k].shape) for k in keys}
  q = {k: np.asarray(v, np.float64) for k, v in q0.items()}
  outs = []
  for t, g in enumerate(grads):
    g = {k: np.asarray(v, np.float64) for k, v in g.items()}
    if t < start_iter:  # vanilla all-reduce, no error kept
      outs.append({k: v.mean(0) for k, v in g.items()})
      continue
    out = {}
    for k in keys:
      shape = g[k].shape[1:]
      if len(shape) < 2:
        out[k] = g[k].mean(0)
        continue
      n, m = shape[-1], math.prod(shape[:-1])
      r = min(n, m, rank)
      if not (n + m) * r * rate < n * m:
        out[k] = g[k].mean(0)
        continue
      mats = [(g[k][w] + (errors[k][w] if ef else 0)).reshape(m, n).T for w in range(w_count)]
      qk = _np_orthogonalize(q[k] if warm else fresh[t][k], eps)
      p = sum(mw @ qk for mw in mats)  # P = Σ_w M_w Q
      p_hat = _np_orthogonalize(p, eps)
      q[k] = sum(mw.T @ p_hat for mw in mats) / w_count  # Q = mean_w M_wᵀ P̂
      approx = p_hat @ q[k].T  # P̂ Qᵀ
      if ef:
        errors[k] = np.stack([(mw - approx).T.reshape(shape) for mw in mats])
      out[k] = approx.T.reshape(shape)
    outs.append(out)
  return outs, errors


def _run_vmap(opt, grads, state=None, params=None):
  """The steps of W stacked workers under jit(vmap); returns the aggregates
  (worker 0's), the states after each step."""
  w_count = jax.tree.leaves(grads[0])[0].shape[0]
  if state is None:
    state = compopt.parallel.stack(opt.init(params), w_count)
  step = jax.jit(jax.vmap(lambda g, s: opt.update(g, s), axis_name=AXIS))
  outs, states = [], []
  for g in grads:
    u, state = step(g, state)
    for x in jax.tree.leaves(u):  # every worker got the same aggregate
      np.testing.assert_array_equal(x, np.broadcast_to(x[:1], x.shape))
    outs.append(jax.tree.map(lambda x: np.asarray(x[0], np.float64), u))
    states.append(state)
  return outs, states


def _rel_err(got, want):
  """max |got − want| / max |want| over the leaves of a dict."""
  return max(float(np.max(np.abs(got[k] - want[k])) / max(np.max(np.abs(want[k])), 1e-30))
             for k in want)


def _fresh_qs(states_before):
  """The Qs a step with warm_start=False draws: N(0, 1) of Q's shape from
  fold_in(q_key, leaf index), q_key the first of split(split(state.key)[1], 4)
  (the key schedule of powersgd.py); the key is the same on every worker."""
  fresh = []
  for state in states_before:
    key = np.asarray(state.key)[0]
    q_key = jax.random.split(jax.random.split(jnp.asarray(key))[1], 4)[0]
    fresh.append({k: np.asarray(jax.random.normal(jax.random.fold_in(q_key, j), q.shape[1:]))
                  for j, (k, q) in enumerate(sorted(state.q.items())) if q is not None})
  return fresh


@pytest.mark.parametrize("ef,warm,eps", [(True, True, 0.0), (False, True, 1e-3),
                                         (True, False, 0.0)])
def test_matches_numpy_reference(ef, warm, eps):
  w_count, steps, rank, rate, start = 3, 6, 2, 1.0, 2
  rng = np.random.default_rng(0)
  grads = [_tree_grads(rng, w_count) for _ in range(steps)]
  params = {k: jnp.zeros(s) for k, s in SHAPES.items()}
  opt = powersgd_mean(rank=rank, start_iter=start, min_compression_rate=rate,
                      use_error_feedback=ef, warm_start=warm, orthogonalization_epsilon=eps,
                      axis_name=AXIS, key=5)
  state0 = compopt.parallel.stack(opt.init(params), w_count)
  outs, states = _run_vmap(opt, grads, state0)
  # what is compressed: the conv kernel (6×18 at rank 2) and fc (10×12); not
  # the bias nor "small" (2×3: (2 + 3)·2 > 6)
  assert {k for k, q in state0.q.items() if q is not None} == {"conv", "fc"}
  q0 = {k: np.asarray(v[0]) for k, v in state0.q.items() if v is not None}
  fresh = None if warm else _fresh_qs([state0] + states[:-1])
  want, errors = _np_powersgd(grads, q0, rank=rank, rate=rate, start_iter=start, ef=ef,
                              warm=warm, eps=eps, fresh=fresh)
  for t in range(steps):
    assert _rel_err(outs[t], want[t]) < 2e-5, (t, _rel_err(outs[t], want[t]))
    if t < start:  # warm-up: the exact mean
      np.testing.assert_allclose(outs[t]["fc"], grads[t]["fc"].mean(0), rtol=1e-5, atol=1e-6)
  # compression happened: the compressed leaves differ from the mean
  assert np.abs(outs[-1]["fc"] - grads[-1]["fc"].mean(0)).max() > 1e-2
  final = states[-1]
  assert final.error["b"] is None and final.error["small"] is None
  if ef:
    for k in ("fc", "conv"):
      np.testing.assert_allclose(final.error[k], errors[k], rtol=1e-4, atol=2e-5)
      # Σ_t Δ'_t + mean_w e_w = Σ_t mean_w g_w: what was not sent is kept
      sent = sum(o[k] for o in outs)
      kept = np.asarray(final.error[k], np.float64).mean(0)
      total = sum(g[k].astype(np.float64).mean(0) for g in grads)
      np.testing.assert_allclose(sent + kept, total, rtol=1e-5, atol=1e-5)
      assert np.abs(kept).max() > 0.1  # rank 2 did leave something behind
  else:
    assert final.error == {k: None for k in SHAPES}
  # Q is replicated: the same on every worker, bit for bit
  for q in jax.tree.leaves(final.q):
    np.testing.assert_array_equal(q, np.broadcast_to(q[:1], q.shape))
  # the bits: 2 dense steps, then per step P (conv, fc, with b and small) and Q
  dense = 32 * sum(math.prod(s) for s in SHAPES.values())
  p_bits = 32 * (6 * 2 + 10 * 2 + 10 + 6)
  q_bits = 32 * (18 * 2 + 12 * 2)
  assert wire_bits(params, rank=rank, min_compression_rate=rate) == p_bits + q_bits
  ring = lambda b: 2 * (w_count - 1) * b // w_count  # noqa: E731
  got = compopt.comm_bits(final)
  assert got.payload == [start * dense + (steps - start) * (p_bits + q_bits)] * w_count
  assert got.uplink == got.downlink == [
      start * ring(dense) + (steps - start) * (ring(p_bits) + ring(q_bits))] * w_count


def test_wire_bits_follow_the_hooks_rule():
  # 1-D leaves and scalars always dense; a matrix n×m at rank r only if
  # (n + m)·r·rate < n·m; P and Q in float32 (float64 for float64 leaves)
  assert wire_bits({"v": jnp.zeros(100), "s": jnp.zeros(())}, min_compression_rate=0) == (
      32 * 101)
  assert wire_bits({"w": jnp.zeros((3, 4))}) == 32 * 12  # (3 + 4)·2 > 12
  assert wire_bits({"w": jnp.zeros((6, 5))}) == 32 * 11  # (5 + 6)·2 < 30
  assert wire_bits({"w": jnp.zeros((6, 5))}, rank=3) == 32 * 30  # 11·3·2 > 30
  assert wire_bits({"w": jnp.zeros((6, 5))}, rank=9, min_compression_rate=0) == 32 * 55
  assert wire_bits({"w": jax.ShapeDtypeStruct((6, 5), jnp.bfloat16)}) == 32 * 11
  assert wire_bits({"w": jax.ShapeDtypeStruct((2, 3, 4, 8), jnp.float32)}) == 32 * 32


def test_low_rank_mean_is_exact_and_a_zero_gradient_does_not_stick():
  # With eps = 0 a zero matrix gives a zero update (the hook divides 0/0), and
  # its Q, now zero, is drawn again: a later rank-1 mean is sent exactly.
  w_count = 2
  params = {"w": jnp.zeros((6, 5))}
  opt = powersgd_mean(rank=1, axis_name=AXIS)
  u = np.arange(1.0, 7.0)[:, None] * np.arange(1.0, 6.0)[None, :]  # rank 1
  grads = [{"w": np.zeros((w_count, 6, 5), np.float32)},
           {"w": np.stack([0.5 * u, 1.5 * u]).astype(np.float32)}]
  outs, states = _run_vmap(opt, grads, params=params)
  np.testing.assert_array_equal(outs[0]["w"], 0)
  np.testing.assert_allclose(outs[1]["w"], u, rtol=1e-5)
  assert np.all(np.isfinite(np.asarray(states[-1].q["w"])))


# ------------------------------------------------------ PyTorch's DDP hook


class _Bucket:
  """The part of ``dist.GradBucket`` the hook reads: one flat buffer, its
  per-parameter views, index 0, the last bucket of the step."""

  def __init__(self, flat, shapes):
    self._flat, self._grads, offset = flat, [], 0
    for s in shapes:
      size = math.prod(s)
      self._grads.append(flat[offset:offset + size].view(s))
      offset += size

  def buffer(self):
    return self._flat

  def gradients(self):
    return self._grads

  def index(self):
    return 0

  def is_last(self):
    return True


# The gloo groups made so far, kept until the interpreter exits: a group whose
# last reference goes while its own worker thread holds one (the hook's
# callbacks) is destroyed in that thread, which then joins itself and aborts
# the process. Shut down, they hold no thread.
_GLOO_GROUPS = []

# PyTorch layouts of the same layers ((out, in), (out, in, kh, kw)) and the
# transposes that give the JAX layouts of SHAPES.
_TORCH = {"fc": ((10, 12), (1, 0)), "conv": ((6, 2, 3, 3), (2, 3, 1, 0)),
          "b": ((10,), (0,)), "small": ((3, 2), (1, 0))}
_TORCH_ORDER = ("conv", "b", "fc", "small")  # the bucket's order


def _torch_hook_run(grads, *, rank, start_iter, rate):
  """The aggregate of every step of ``powerSGD_hook`` on W gloo ranks (one
  thread each, in this process), and the Qs it drew at its first
  compressed step (replayed from its seed), in the bucket's order."""
  torch = pytest.importorskip("torch")
  dist = pytest.importorskip("torch.distributed")
  hook = pytest.importorskip("torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook")
  w_count = grads[0]["fc"].shape[0]
  shapes = [_TORCH[k][0] for k in _TORCH_ORDER]
  store = dist.HashStore()
  groups = [None] * w_count

  def connect(r):
    groups[r] = dist.ProcessGroupGloo(dist.PrefixStore("powersgd", store), r, w_count,
                                      datetime.timedelta(seconds=60))

  def in_threads(fn):
    threads = [threading.Thread(target=fn, args=(r,)) for r in range(w_count)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()

  in_threads(connect)
  _GLOO_GROUPS.extend(groups)
  try:
    states = [hook.PowerSGDState(groups[r], matrix_approximation_rank=rank,
                                 start_powerSGD_iter=start_iter, min_compression_rate=rate,
                                 random_seed=0) for r in range(w_count)]
    outs = []
    for g in grads:
      flat = [torch.cat([torch.from_numpy(np.ascontiguousarray(
          np.transpose(g[k][r], np.argsort(_TORCH[k][1])))).reshape(-1)
                         for k in _TORCH_ORDER]) for r in range(w_count)]
      # The ranks call the hook one after the other (it draws Q from torch's
      # global generator, which threads would share), and it returns before
      # its collectives complete: they run on the groups' own threads.
      futures = [hook.powerSGD_hook(states[r], _Bucket(flat[r].clone(), shapes))
                 for r in range(w_count)]
      results = [f.wait() for f in futures]
      for r in range(1, w_count):
        assert torch.equal(results[0], results[r])
      out, offset = {}, 0
      for k, s in zip(_TORCH_ORDER, shapes):
        size = math.prod(s)
        out[k] = np.transpose(results[0][offset:offset + size].reshape(s).numpy(),
                              _TORCH[k][1]).astype(np.float64)
        offset += size
      outs.append(out)
  finally:
    for group in groups:
      if group is not None:
        group.shutdown()
  # The hook's first Qs: torch.manual_seed(RandomState(seed).randint(1e9)),
  # then randn(1, m, r) per compressed matrix, grouped by matrix shape.
  seed = np.random.RandomState(0).randint(1_000_000_000)
  gen = torch.Generator().manual_seed(int(seed))
  by_shape = {}
  for k, s in zip(_TORCH_ORDER, shapes):
    if len(s) < 2:
      continue
    n, m = s[0], math.prod(s[1:])
    r = min(n, m, rank)
    if (n + m) * r * rate < n * m:
      by_shape.setdefault((n, m), []).append((k, r))
  q0 = {}
  for (n, m), entries in by_shape.items():
    for k, r in entries:
      q0[k] = torch.randn(1, m, r, generator=gen)[0].numpy()
  return outs, q0


def _q_to_jax(k, q):
  """A hook's Q (rows: the columns of view(out, -1) of the PyTorch layout) as
  the Q of the JAX layout (rows: all axes but the last, in their order)."""
  torch_shape, perm = _TORCH[k]
  rest = torch_shape[1:]  # (in,) or (in, kh, kw)
  q = q.reshape(rest + (q.shape[-1],))
  # JAX axes but the last, as PyTorch axes: perm[:-1] (e.g. kh, kw, in)
  order = [perm[i] - 1 for i in range(len(perm) - 1)] + [len(rest)]
  return np.transpose(q, order).reshape(-1, q.shape[-1])


# Gram-Schmidt in the hook at rank 2; its QR at rank 3 (the same P̂ P̂ᵀ)
@pytest.mark.parametrize("rank", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_matches_pytorch_powersgd_hook(rank):
  w_count, steps, start, rate = 2, 6, 2, 1
  rng = np.random.default_rng(2)
  grads = [_tree_grads(rng, w_count) for _ in range(steps)]
  want, q_torch = _torch_hook_run(grads, rank=rank, start_iter=start, rate=rate)
  opt = powersgd_mean(rank=rank, start_iter=start, min_compression_rate=rate,
                      axis_name=AXIS)
  state = compopt.parallel.stack(opt.init({k: jnp.zeros(s) for k, s in SHAPES.items()}),
                                 w_count)
  assert set(q_torch) == {k for k, q in state.q.items() if q is not None}
  # both sides start from the hook's Q
  q = {k: (None if v is None else jnp.broadcast_to(jnp.asarray(_q_to_jax(k, q_torch[k])),
                                                   v.shape))
       for k, v in state.q.items()}
  outs, _ = _run_vmap(opt, grads, state._replace(q=q))
  errs = [_rel_err(o, w) for o, w in zip(outs, want)]
  assert max(errs) < 2e-5, errs
  assert np.abs(want[-1]["conv"] - grads[-1]["conv"].mean(0)).max() > 1e-2  # compressed


# ------------------------------------------------------ modes and the wire


def test_vmap_and_shard_map_agree():
  n = 8
  rng = np.random.default_rng(3)
  grads = [_tree_grads(rng, n) for _ in range(3)]
  params = {k: jnp.zeros(s) for k, s in SHAPES.items()}
  opt = powersgd(0.1, rank=2, start_iter=1, min_compression_rate=1, momentum=0.9,
                 axis_name=AXIS, key=4)

  def step(p, s, g):
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s

  mesh = jax.make_mesh((n,), (AXIS,))
  results = {}
  for mode, f in {"vmap": jax.jit(jax.vmap(step, axis_name=AXIS)),
                  "shard_map": compopt.parallel.shard_map(step, mesh, AXIS)}.items():
    p, s = compopt.parallel.stack(params, n), compopt.parallel.stack(opt.init(params), n)
    for g in grads:
      p, s = f(p, s, g)
    results[mode] = (p, s)
  (p_v, s_v), (p_s, s_s) = results["vmap"], results["shard_map"]
  for a, b in zip(jax.tree.leaves(p_v), jax.tree.leaves(p_s)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(s_v[0].q), jax.tree.leaves(s_s[0].q)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert compopt.comm_bits(s_v) == compopt.comm_bits(s_s)
  # one dense step, two PowerSGD steps, per worker
  dense = 32 * sum(math.prod(s) for s in SHAPES.values())
  psgd = wire_bits(params, rank=2, min_compression_rate=1)
  assert compopt.comm_bits(s_v).payload == [dense + 2 * psgd] * n
  assert psgd < dense


def test_compiled_step_moves_exactly_the_stated_bytes():
  n = 8
  tree = {"w": jax.ShapeDtypeStruct((256, 128), jnp.float32),
          "conv": jax.ShapeDtypeStruct((3, 3, 16, 32), jnp.bfloat16),
          "b": jax.ShapeDtypeStruct((128,), jnp.float32),
          "small": jax.ShapeDtypeStruct((4, 4), jnp.float32)}
  opt = powersgd(0.1, rank=4, axis_name=AXIS, skip_nonfinite=False)
  text = _compiled.step_hlo(opt, tree, n, AXIS)
  per_kind = hlo.collective_bytes(text)
  bits = wire_bits(tree, rank=4)
  # P (with the dense leaves) and Q: 32·((128 + 256)·4 + (32 + 144)·4 + 128 + 16)
  assert bits == 32 * ((128 + 256) * 4 + (32 + 144) * 4 + 128 + 16)
  assert per_kind == {"all-reduce": bits // 8}, per_kind
  # (XLA may regroup the operands of the P and Q all-reduces, per layer, into
  # other all-reduce ops: the bytes stay those of P, Q and the dense leaves.)
  dense_bytes = 4 * sum(math.prod(x.shape) for x in tree.values())  # a float32 all-reduce
  assert dense_bytes > 15 * bits // 8


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize("call,exc,match", [
    (lambda: powersgd(-0.1), ValueError, r"powersgd: `learning_rate` must be .*got -0\.1"),
    (lambda: powersgd(0.1, rank=0), ValueError, r"powersgd: `rank` must be an integer >= 1; got 0"),
    (lambda: powersgd(0.1, rank=1.5), TypeError, r"`rank` must be an integer >= 1; got 1\.5"),
    (lambda: powersgd(0.1, start_iter=-1), ValueError,
     r"powersgd: `start_iter` must be an integer >= 0; got -1"),
    (lambda: powersgd(0.1, min_compression_rate=-1.0), ValueError,
     r"powersgd: `min_compression_rate` must be in \[0, inf\); got -1\.0"),
    (lambda: powersgd(0.1, min_compression_rate=float("nan")), ValueError,
     r"`min_compression_rate` must be in \[0, inf\); got nan"),
    (lambda: powersgd(0.1, use_error_feedback="yes"), TypeError,
     r"powersgd: `use_error_feedback` must be True or False; got 'yes'"),
    (lambda: powersgd(0.1, warm_start=1), TypeError,
     r"powersgd: `warm_start` must be True or False; got 1"),
    (lambda: powersgd(0.1, orthogonalization_epsilon=-1e-8), ValueError,
     r"powersgd: `orthogonalization_epsilon` must be >= 0; got -1e-08"),
    (lambda: powersgd(0.1, momentum=1.0), ValueError,
     r"powersgd: `momentum` must be in \[0, 1\) or None; got 1\.0"),
    (lambda: powersgd(0.1, key="seed"), TypeError, r"powersgd: `key` must be an int seed"),
    (lambda: powersgd(0.1, skip_nonfinite=None), TypeError,
     r"`skip_nonfinite` must be True or False; got None"),
    (lambda: powersgd(0.1, scheme=compopt.exchange.two_phase(compopt.compressors.top_k(1))),
     ValueError, r"powersgd: needs the exact mean"),
    (lambda: powersgd_mean(rank=0), ValueError, r"powersgd_mean: `rank` must be"),
    (lambda: wire_bits({"w": jnp.zeros((4, 4))}, rank=0), ValueError,
     r"powersgd_wire_bits: `rank` must be an integer >= 1; got 0"),
])
def test_bad_arguments_are_clear_errors(call, exc, match):
  with pytest.raises(exc, match=match):
    call()


def test_mismatched_updates_and_traced_structure_are_clear_errors():
  opt = powersgd(0.1, rank=1)
  state = opt.init({"w": jnp.zeros((6, 5))})
  with pytest.raises(ValueError, match=r"powersgd: the updates do not match the state: "
                     r"leaf \['w'\] has shape \(5, 6\)"):
    opt.update({"w": jnp.zeros((5, 6))}, state)
  with pytest.raises(ValueError, match="structure"):
    opt.update({"v": jnp.zeros((6, 5))}, state)
  # structural numbers cannot be traced, but concrete arrays are read
  injected = optax.inject_hyperparams(powersgd, static_args=("min_compression_rate",))(
      0.1, rank=2, start_iter=1, min_compression_rate=1.0)
  state = injected.init({"w": jnp.zeros((6, 5))})
  injected.update({"w": jnp.ones((6, 5))}, state)  # rank and start_iter as arrays
  with pytest.raises(TypeError, match=r"`rank` decides the shapes .* static_args"):
    jax.jit(injected.update)({"w": jnp.ones((6, 5))}, state)


# ------------------------------------------------------ dtypes and the guard


def test_bf16_leaves_keep_their_dtype_and_state_is_float32():
  n = 2
  params = {"w": jnp.zeros((6, 5), jnp.bfloat16), "b": jnp.zeros(5, jnp.bfloat16)}
  opt = powersgd(0.1, rank=1, start_iter=1, axis_name=AXIS)
  rng = np.random.default_rng(5)
  grads = [{k: jnp.asarray(rng.normal(size=(n,) + v.shape), jnp.bfloat16)
            for k, v in params.items()} for _ in range(3)]
  step = jax.jit(jax.vmap(lambda p, s, g: opt.update(g, s, p), axis_name=AXIS))
  p, s = compopt.parallel.stack(params, n), compopt.parallel.stack(opt.init(params), n)
  for g in grads:
    u, s = step(p, s, g)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(u))
    p = optax.apply_updates(p, u)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(p))
  assert s[0].q["w"].dtype == jnp.float32 and s[0].error["w"].dtype == jnp.float32
  assert s[0].q["w"].shape == (n, 6, 1)


def test_float64_matches_the_reference_tightly():
  with _compiled.x64():
    w_count, steps = 2, 4
    rng = np.random.default_rng(6)
    shapes = {"fc": (12, 10), "b": (10,)}
    grads = [_tree_grads(rng, w_count, shapes, np.float64) for _ in range(steps)]
    opt = powersgd_mean(rank=2, start_iter=1, min_compression_rate=1, axis_name=AXIS)
    params = {k: jnp.zeros(s, jnp.float64) for k, s in shapes.items()}
    state0 = compopt.parallel.stack(opt.init(params), w_count)
    assert state0.q["fc"].dtype == jnp.float64
    outs, _ = _run_vmap(opt, grads, state0)
    want, _ = _np_powersgd(grads, {"fc": np.asarray(state0.q["fc"][0])}, rank=2, rate=1,
                           start_iter=1)
    assert max(_rel_err(o, w) for o, w in zip(outs, want)) < 1e-12


_GUARDED = []


def _guarded():
  """powersgd with its guard and its jitted vmap step, built once (the two
  tests below share the compiled program)."""
  if not _GUARDED:
    opt = powersgd(0.1, rank=2, min_compression_rate=1, axis_name=AXIS)
    _GUARDED.extend([opt, jax.jit(jax.vmap(lambda s, g: opt.update(g, s), axis_name=AXIS))])
  return _GUARDED


def test_nan_on_one_worker_skips_the_step_and_keeps_the_state():
  n = 4
  params = {k: jnp.zeros(s) for k, s in SHAPES.items()}
  opt, step = _guarded()
  rng = np.random.default_rng(7)
  state = compopt.parallel.stack(opt.init(params), n)
  _, state = step(state, _tree_grads(rng, n))
  bad = _tree_grads(rng, n)
  bad["fc"][2, 0, 0] = np.nan
  u, after = step(state, bad)
  for x in jax.tree.leaves(u):
    np.testing.assert_array_equal(x, 0)
  for a, b in zip(jax.tree.leaves(after[:-1]), jax.tree.leaves(state[:-1])):
    np.testing.assert_array_equal(a, b)
  assert compopt.skipped_steps(after) == [1] * n


# ------------------------------------------------ resharding and checkpoints


def test_reshard_from_4_to_2_workers_and_checkpoint_roundtrip(tmp_path):
  rng = np.random.default_rng(8)
  params = {k: jnp.zeros(s) for k, s in SHAPES.items()}
  opt, step = _guarded()
  state = compopt.parallel.stack(opt.init(params), 4)
  for _ in range(2):
    _, state = step(state, _tree_grads(rng, 4))
  two = compopt.reshard_state(state, 2)
  inner, inner2 = state[0], two[0]
  assert isinstance(inner2, PowerSGDState)
  for k in ("fc", "conv"):
    np.testing.assert_allclose(inner2.error[k],
                               np.broadcast_to(np.asarray(inner.error[k]).mean(0),
                                               (2,) + SHAPES[k]), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(inner2.q[k], np.asarray(inner.q[k])[:2])
  u, two = step(jax.tree.map(jnp.asarray, two), _tree_grads(rng, 2))
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(u))
  # checkpoint: save and restore give the state back, bit for bit
  compopt.checkpoint.save(tmp_path / "ckpt", two)
  back = compopt.checkpoint.restore(tmp_path / "ckpt", two)
  assert jax.tree.structure(back) == jax.tree.structure(two)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(two)):
    np.testing.assert_array_equal(a, b)


def test_a_column_dependent_to_working_precision_is_zeroed_not_normalised():
  """A rank-1 gradient makes P's second column a multiple of the first: after
  the projection only rounding noise is left, whose direction differs between
  programs (a vmapped and a sharded step). It must become 0, as an exact
  zero does, and the first column a unit vector."""
  u = np.array([0.3, -1.2, 0.7, 2.0], np.float32)
  a = jnp.asarray(np.stack([u, 3.1 * u + np.float32(1e-9) * np.array([1, -1, 1, 1])], 1),
                  jnp.float32)
  out = np.asarray(powersgd_lib._orthogonalize(a, 0.0))  # pylint: disable=protected-access
  np.testing.assert_allclose(out[:, 0], u / np.linalg.norm(u), rtol=1e-6)
  np.testing.assert_array_equal(out[:, 1], 0)
  # an independent column is kept and orthonormal
  b = jnp.asarray(np.stack([u, np.array([1.0, 0.0, 0.0, 0.0], np.float32)], 1))
  q = np.asarray(powersgd_lib._orthogonalize(b, 0.0))  # pylint: disable=protected-access
  np.testing.assert_allclose(q.T @ q, np.eye(2), atol=1e-6)
