"""Checkpoint and resume: the whole per-worker state survives orbax, resuming
is bit for bit the uninterrupted run (vmap and shard_map), and the state can
be resharded to another number of workers by each method's rule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import compopt
from compopt import compressors as C

AXIS = "data"
N = 8

METHODS = {
    "ef_sgd": lambda: compopt.ef_sgd(optax.linear_schedule(0.1, 0.01, 6),
                                     compressor=C.top_k(2), axis_name=AXIS, key=1),
    "diana": lambda: compopt.diana(0.1, compressor=C.rand_k(2), axis_name=AXIS, key=2),
    "comp_ams": lambda: compopt.comp_ams(0.05, compressor=C.scaled_sign(), axis_name=AXIS),
}


def _params():
  return {"w": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3), "b": jnp.ones(3)}


def _grads(t, n=N):
  k1, k2 = jax.random.split(jax.random.PRNGKey(100 + t))
  return {"w": jax.random.normal(k1, (n, 4, 3)), "b": jax.random.normal(k2, (n, 3))}


def _step(opt):
  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state
  return step


def _equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("mode", ["vmap", "shard_map"])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_resume_is_bit_for_bit(name, mode, tmp_path):
  opt = METHODS[name]()
  if mode == "vmap":
    f = jax.jit(jax.vmap(_step(opt), axis_name=AXIS))
    place = lambda tree: tree  # noqa: E731
  else:
    mesh = jax.make_mesh((N,), (AXIS,))
    f = compopt.parallel.shard_map(_step(opt), mesh, AXIS)
    place = lambda tree: compopt.parallel.shard(tree, mesh, AXIS)  # noqa: E731
  fresh = place({"params": compopt.parallel.stack(_params(), N),
                 "opt": compopt.parallel.stack(opt.init(_params()), N)})

  p, s = fresh["params"], fresh["opt"]
  for t in range(6):
    p, s = f(p, s, _grads(t))
  uninterrupted = {"params": p, "opt": s}

  p, s = fresh["params"], fresh["opt"]
  for t in range(3):
    p, s = f(p, s, _grads(t))
  compopt.checkpoint.save(tmp_path / "ckpt", {"params": p, "opt": s})
  del p, s
  restored = compopt.checkpoint.restore(tmp_path / "ckpt", fresh)  # a new process would do this
  if mode == "shard_map":
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(fresh)):
      assert got.sharding == want.sharding
  p, s = restored["params"], restored["opt"]
  for t in range(3, 6):
    p, s = f(p, s, _grads(t))
  _equal({"params": p, "opt": s}, uninterrupted)
  assert compopt.comm_bits(s) == compopt.comm_bits(uninterrupted["opt"])


def _run(opt, params, state, n, steps, t0=0):
  f = jax.jit(jax.vmap(_step(opt), axis_name=AXIS))
  for t in range(t0, t0 + steps):
    params, state = f(params, state, _grads(t, n))
  return params, state


@pytest.mark.parametrize("n_new", [4, 3, 12])
def test_reshard_ef_keeps_the_virtual_iterate(n_new):
  # Karimireddy et al. 2019, Thm IV: x_t − mean_i e_{t,i} =
  # x_0 − γ Σ_s mean_i g_{s,i}. The rule e'_j = mean_i e_i keeps the left side,
  # so the identity runs on across the change of worker count.
  gamma = 0.1
  opt = compopt.ef_sgd(gamma, compressor=C.top_k(2), axis_name=AXIS, key=5)
  x0 = _params()
  p, s = _run(opt, compopt.parallel.stack(x0, N), compopt.parallel.stack(opt.init(x0), N),
              N, 3)
  s2 = compopt.reshard_state(s, n_new)
  np.testing.assert_allclose(s2[1].error["w"], np.broadcast_to(
      np.asarray(s[1].error["w"]).mean(0), (n_new, 4, 3)), rtol=1e-6)
  p2 = jax.tree.map(lambda x: np.broadcast_to(x[:1], (n_new,) + x.shape[1:]), p)
  p2, s2 = _run(opt, p2, s2, n_new, 3, t0=3)
  bits = compopt.comm_bits(s2)
  assert sum(bits.uplink) > sum(compopt.comm_bits(s).uplink)
  for k in x0:
    lhs = np.asarray(p2[k][0], np.float64) - np.asarray(s2[1].error[k], np.float64).mean(0)
    rhs = np.asarray(x0[k], np.float64) - gamma * sum(
        np.asarray(_grads(t, N if t < 3 else n_new)[k], np.float64).mean(0) for t in range(6))
    np.testing.assert_allclose(lhs, rhs, rtol=1e-5, atol=1e-5)


def test_reshard_keeps_bit_totals_and_replicated_buffers():
  opt = compopt.diana(0.1, compressor=C.rand_k(2), axis_name=AXIS, key=2)
  x0 = _params()
  _, s = _run(opt, compopt.parallel.stack(x0, N), compopt.parallel.stack(opt.init(x0), N),
              N, 2)
  for n_new in (2, 8, 16):
    s2 = compopt.reshard_state(s, n_new)
    st, st2 = s[0], s2[0]
    assert sum(compopt.comm_bits(s2).uplink) == sum(compopt.comm_bits(s).uplink)
    # h'_j = h for every new worker, so h = mean_j h'_j still holds
    for k in x0:
      np.testing.assert_array_equal(st2.shift[k], np.broadcast_to(st.mean_shift[k][:1],
                                                                  st2.shift[k].shape))
      np.testing.assert_array_equal(st2.mean_shift[k][0], st.mean_shift[k][0])
    np.testing.assert_array_equal(st2.key, np.broadcast_to(st.key[:1], (n_new, 2)))
  # a stateless-per-worker method reshards trivially
  psgd = compopt.psgd(0.1, axis_name=AXIS, momentum=0.9)
  _, s = _run(psgd, compopt.parallel.stack(x0, N), compopt.parallel.stack(psgd.init(x0), N),
              N, 2)
  s2 = compopt.reshard_state(s, 3)
  assert jax.tree.structure(s2) == jax.tree.structure(s)
  np.testing.assert_array_equal(s2[1].trace["w"][2], s[1].trace["w"][0])


def test_reshard_refuses_what_has_no_rule():
  opt = optax.MultiSteps(compopt.ef_sgd(0.1, compressor=C.top_k(1), axis_name=AXIS), 2)
  x0 = jnp.zeros(3)
  state = compopt.parallel.stack(opt.init(x0), 4)
  f = jax.jit(jax.vmap(lambda g, s: opt.update(g, s, x0), axis_name=AXIS))
  _, state = f(jnp.arange(12.0).reshape(4, 3), state)  # mid-accumulation
  with pytest.raises(ValueError, match=r"cannot reshard state\.acc_grads.*differs between"):
    compopt.reshard_state(state, 2)
  good = compopt.parallel.stack(compopt.ef_sgd(0.1, compressor=C.top_k(1)).init(x0), 4)
  bad = (good[0], good[1]._replace(key=good[1].key.at[2, 0].add(1))) + good[2:]
  with pytest.raises(ValueError, match=r"state\[1\]\.key"):
    compopt.reshard_state(bad, 2)
  with pytest.raises(ValueError, match=r"`n` must be an int >= 1.*got 0"):
    compopt.reshard_state(good, 0)
  with pytest.raises(ValueError, match="stacked on a leading worker axis"):
    compopt.reshard_state(compopt.ef_sgd(0.1, compressor=C.top_k(1)).init(x0), 2)
