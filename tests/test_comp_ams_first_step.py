"""The first steps of COMP-AMS's server transform against their closed forms
(Li & Li 2022, Alg. 2 lines 13–16) and against optax.amsgrad.

From m_0 = v_0 = v̂_0 = 0 the paper's step is m_1/√(v̂_1 + ε) with
m_1 = (1 − β1)g, v_1 = (1 − β2)g²; optax's bias-corrected AMSGrad steps
m̂_1/(√v̂_1 + ε) = g/(|g| + ε). For a constant g the paper's t-th step is
(1 − β1^t)g/√((1 − β2^t)g² + ε) and optax's stays g/(|g| + ε).
"""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import compopt

B1, B2, EPS = 0.9, 0.999, 1e-8


def _first_step(tx, g):
  u, _ = tx.update(jnp.asarray(g, jnp.float32), tx.init(jnp.zeros(len(g), jnp.float32)))
  return np.asarray(u, np.float64)


@pytest.mark.parametrize("eps", [EPS, 1e-3])
def test_first_step_is_the_closed_form(eps):
  g = np.array([2.0, -0.5, 4.0, 1e-4, -3e-3, 0.0])
  got = _first_step(compopt.scale_by_comp_ams(b1=B1, b2=B2, eps=eps), g)
  want = (1 - B1) * g / np.sqrt((1 - B2) * g**2 + eps)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12)


def test_first_step_is_3_16_times_optax_amsgrad():
  # |g| ≫ √(ε/(1 − β2)) ≈ 3.2e-3: ε is negligible in both.
  g = np.array([2.0, -0.5, 4.0, -0.1])
  ours = _first_step(compopt.scale_by_comp_ams(), g)
  theirs = _first_step(optax.scale_by_amsgrad(), g)
  # optax's bias correction 1 − β2^t is computed in float32: 7e-6 off.
  np.testing.assert_allclose(theirs, g / (np.abs(g) + EPS), rtol=2e-5)
  np.testing.assert_allclose(theirs, np.sign(g), rtol=2e-5)
  ratio = ours / theirs
  exact = ((1 - B1) * g / np.sqrt((1 - B2) * g**2 + EPS)) / (g / (np.abs(g) + EPS))
  np.testing.assert_allclose(ratio, exact, rtol=2e-5)
  # ε costs 5e-4 of the step at |g| = 0.1, less above.
  np.testing.assert_allclose(ratio, (1 - B1) / np.sqrt(1 - B2), rtol=1e-3)
  assert np.all(ratio > 3.16)  # the paper's form moves more, not less

  # The same through the learning rate: optax.amsgrad(lr) moves x by −lr·sign(g).
  lr = 0.01
  opt = optax.amsgrad(lr)
  u, _ = opt.update(jnp.asarray(g, jnp.float32), opt.init(jnp.zeros(4)))
  np.testing.assert_allclose(np.asarray(u), -lr * np.sign(g), rtol=2e-5)
  opt = compopt.comp_ams(lr, compressor=compopt.compressors.identity())
  u, _ = opt.update(jnp.asarray(g, jnp.float32), opt.init(jnp.zeros(4)))
  np.testing.assert_allclose(np.asarray(u), -lr * (1 - B1) * g / np.sqrt((1 - B2) * g**2 + EPS),
                             rtol=1e-5)


def test_ratio_over_the_first_steps_for_a_constant_gradient():
  # ratio_t = (1 − β1^t)/√(1 − β2^t): 3.16 at t = 1, largest ≈ 6.57 at t = 12.
  steps, g = 40, jnp.array([1.5, -2.0], jnp.float32)
  ours, theirs = compopt.scale_by_comp_ams(), optax.scale_by_amsgrad()
  sa, sb = ours.init(jnp.zeros(2)), theirs.init(jnp.zeros(2))
  ratios = []
  for _ in range(steps):
    ua, sa = ours.update(g, sa)
    ub, sb = theirs.update(g, sb)
    ratios.append(float(ua[0] / ub[0]))
  t = np.arange(1, steps + 1)
  want = (1 - B1**t) / np.sqrt(1 - B2**t)
  np.testing.assert_allclose(ratios, want, rtol=1e-4)
  assert int(np.argmax(ratios)) + 1 == 12
  assert max(ratios) == pytest.approx(6.57, abs=0.01)
