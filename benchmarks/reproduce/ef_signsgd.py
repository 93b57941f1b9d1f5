"""Karimireddy et al. 2019: §3 counterexamples 1–3 (signSGD fails, EF-SignSGD
converges), §5.2 with A.6's data (distance to the span of the gradients,
train/test loss) and A.1's sparse-noise toy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import compopt
from benchmarks.reproduce import common
from benchmarks.reproduce.common import Row, check

NAME = "signsgd"
TITLE = "Karimireddy et al. 2019, signSGD counterexamples, gradient span, sparse noise"
AX = common.AXIS
EPS = 0.5
NOTES = """\
One worker (the paper's setting), run through the same vmap'd worker axis (n = 1).
- CE1: f(x) = x/4 on [−1, 1] (projection after each step), x⁰ = 0, g = 4 w.p. ¼
  else −1, constant γ = 0.01, 50 keys. For d = 1, scaled_sign is the identity,
  so EF-SignSGD is SGD here; that is what the paper's claim amounts to.
- CE2: f = ε|x₁ + x₂| + |x₁ − x₂|, ε = 0.5, the paper's subgradient, x⁰ = (1, 1),
  γ_t = 0.1/√(t + 1) for both methods (a decreasing sequence, as the claim is
  for any sequence). At x⁰ the term |x₁ − x₂| is at its kink; we take the
  subgradient sign(0) := +1 there, as the paper's argument needs
  (sign(g) = ±(1, −1)); with jnp.sign(0) = 0 the subgradient is ε(1, 1) and
  signSGD's first step leaves the line x₁ + x₂ = 2.
- CE3: f = ⟨a₁, x⟩² + ⟨a₂, x⟩², a₁,₂ = ±(1, −1) + ε(1, 1), one of the two terms'
  gradients w.p. ½, x⁰ = (1, 1), γ_t = 0.1/√(t + 1), 20 keys.
- §5.2/A.6: Wilson et al.'s data as in A.6 (n = 200, d = 1200, split 100/100
  at random, seed 0), f = (1/m)‖Ax − y‖² on the train half, full-batch
  gradients, x⁰ = 0. The span of the gradients is the row space of A_train
  (all full-batch gradients lie in it; we project onto it). Step sizes (the
  paper tuned, we fix them up front): SGD γ = 1/L; EF-SignSGD γ = 0.5/L;
  signSGD γ_t and signSGDM (β = 0.9) γ_t = 0.01/√(t + 1), L = 2λ_max(AᵀA)/m.
- A.1: f = ½‖x‖², d = 100, N(0, 100²) noise on the first coordinate only,
  x⁰ = (1, …, 1); the paper's step sizes (SGD and EF-SignSGD 0.001, signSGD and
  scaled signSGD 0.01), 100 keys (the paper repeats 100 times), T = 1000.
"""


def wilson_data(n=200, seed=0):
  rng = np.random.default_rng(seed)
  d = 6 * n
  y = rng.choice([-1.0, 1.0], size=n)
  A = np.zeros((n, d))
  A[:, 0] = y
  A[:, 1:3] = 1.0
  for i in range(n):
    start = 3 + 5 * i
    A[i, start:start + 1 + int(2 * (1 - y[i]))] = 1.0
  perm = rng.permutation(n)
  tr, te = perm[: n // 2], perm[n // 2:]
  return A[tr], y[tr], A[te], y[te]


def run(out_dir: str, fast: bool = False) -> list[Row]:
  prog = common.Progress(NAME, 5 * 2 + 4 + 4)
  rows, figs = [], {}
  sched = lambda g0: (lambda t: g0 / jnp.sqrt(t + 1.0))

  # ---------------- CE1
  T1 = 1000 if fast else 3000

  def g1(x, key, i, t):
    return jnp.where(jax.random.uniform(key) < 0.25, 4.0, -1.0) * jnp.ones_like(x)

  proj = lambda x: jnp.clip(x, -1.0, 1.0)
  f1 = lambda x: x[0] / 4
  ce1 = {name: common.simulate(mk, jnp.zeros(1), g1, n=1, steps=T1, seeds=range(50), chunks=5,
                               trace_fn=f1, post_fn=proj, progress=prog)["trace"]["value"].mean(0)
         for name, mk in (("signSGD", lambda s: compopt.signsgd(0.01, axis_name=AX)),
                          ("EF-SignSGD", lambda s: compopt.ef_signsgd(0.01, axis_name=AX, key=s)))}
  figs["CE1: f(x) = x/4 on [−1,1] (mean of 50 keys)"] = ce1
  rows.append(Row("Karimireddy et al. 2019 §3 CE1", "with a fixed step, signSGD increases f in expectation (f = x/4 on [−1,1]); EF converges",
                  f"mean f(x_T) − f(x⁰), T = {T1} (f* − f(x⁰) = −0.25)",
                  f"signSGD {ce1['signSGD'][-1]:+.3f}, EF-SignSGD {ce1['EF-SignSGD'][-1]:+.3f}",
                  check(ce1["signSGD"][-1] > 0.1 and ce1["EF-SignSGD"][-1] < -0.2)))

  # ---------------- CE2, CE3
  T2 = 1000 if fast else 4000

  def g2(x, key, i, t):
    sgn = lambda v: jnp.where(v >= 0, 1.0, -1.0)   # a subgradient of |·| at 0 (see NOTES)
    return (sgn(x[0] + x[1]) * EPS * jnp.array([1.0, 1.0])
            + sgn(x[0] - x[1]) * jnp.array([1.0, -1.0]))

  f2 = lambda x: EPS * jnp.abs(x[0] + x[1]) + jnp.abs(x[0] - x[1])
  a12 = jnp.array([[1.0, -1.0], [-1.0, 1.0]]) + EPS
  def g3(x, key, i, t):
    a = a12[jax.random.bernoulli(key).astype(jnp.int32)]
    return 2.0 * jnp.dot(a, x) * a
  f3 = lambda x: jnp.sum((a12 @ x) ** 2)
  x0 = jnp.ones(2)
  for tag, g, f, nk in (("CE2", g2, f2, 1), ("CE3", g3, f3, 20)):
    res = {name: common.simulate(mk, x0, g, n=1, steps=T2, seeds=range(nk), chunks=2,
                                 trace_fn=f, progress=prog)["trace"]["value"].mean(0)
           for name, mk in (
               ("signSGD", lambda s: compopt.signsgd(sched(0.1), axis_name=AX)),
               ("EF-SignSGD", lambda s: compopt.ef_signsgd(sched(0.1), axis_name=AX, key=s)))}
    figs[f"{tag}: f(x_t), x⁰ = (1,1), γ_t = 0.1/√(t+1)"] = res
    f0 = float(f(x0))
    rows.append(Row(f"Karimireddy et al. 2019 §3 {tag}", ("signSGD never decreases f = ε|x₁+x₂| + |x₁−x₂| from (1,1); EF-SignSGD converges"
                                       if tag == "CE2" else
                                       "signSGD stays stuck on x₁ + x₂ = 2 in the smooth least-squares example; EF-SignSGD converges"),
                    f"f(x_T)/f(x⁰), T = {T2}",
                    f"signSGD {res['signSGD'][-1] / f0:.3f}, EF-SignSGD {res['EF-SignSGD'][-1] / f0:.2e}",
                    check(res["signSGD"].min() >= f0 * (1 - 1e-4) and res["EF-SignSGD"][-1] < 1e-2 * f0)))

  # ---------------- §5.2 with A.6's data
  Atr, ytr, Ate, yte = wilson_data()
  m = len(ytr)
  U, S, Vt = np.linalg.svd(Atr, full_matrices=False)
  Q = jnp.asarray(Vt[S > 1e-8 * S[0]].T, jnp.float32)     # basis of the row space
  L = 2 * float(S[0] ** 2) / m
  Atr_j, ytr_j, Ate_j, yte_j = (jnp.asarray(a, jnp.float32) for a in (Atr, ytr, Ate, yte))
  T5 = 500 if fast else 3000

  def g5(x, key, i, t):
    return 2.0 / m * Atr_j.T @ (Atr_j @ x - ytr_j)

  def tr5(x):
    return {"dist": jnp.linalg.norm(x - Q @ (Q.T @ x)),
            "train": jnp.mean((Atr_j @ x - ytr_j) ** 2),
            "test": jnp.mean((Ate_j @ x - yte_j) ** 2)}
  meths = {
      "SGD": lambda s: compopt.psgd(1.0 / L, axis_name=AX),
      "signSGD": lambda s: compopt.signsgd(sched(0.01), axis_name=AX),
      "signSGDM": lambda s: compopt.signum(sched(0.01), momentum=0.9, axis_name=AX),
      "EF-SignSGD": lambda s: compopt.ef_signsgd(0.5 / L, axis_name=AX, key=s),
  }
  span = {k: common.simulate(mk, jnp.zeros(Atr.shape[1]), g5, n=1, steps=T5, chunks=1, trace_fn=tr5,
                             progress=prog)["trace"] for k, mk in meths.items()}
  fin = {k: {q: float(v[q][0, -1]) for q in ("dist", "train", "test")} for k, v in span.items()}
  best_test = {k: float(v["test"][0].min()) for k, v in span.items()}
  rows.append(Row("Karimireddy et al. 2019 §5.2 span", "EF-SignSGD's iterates approach the span of the gradients; signSGD's and signSGDM's stay far",
                  f"‖x_T − Π_G(x_T)‖ after {T5} full-batch steps",
                  ", ".join(f"{k} {v['dist']:.3f}" for k, v in fin.items()),
                  check(fin["EF-SignSGD"]["dist"] < 0.1 * min(fin["signSGD"]["dist"], fin["signSGDM"]["dist"])),
                  "Train loss at T: " + ", ".join(f"{k} {v['train']:.1e}" for k, v in fin.items())))
  rows.append(Row("Karimireddy et al. 2019 §5.2 test", "signSGD/signSGDM do not generalise (best test loss > 0.8); EF-SignSGD's test loss goes to ~0 like SGD's",
                  "best test loss over the run",
                  ", ".join(f"{k} {v:.3f}" for k, v in best_test.items()),
                  check(min(best_test["signSGD"], best_test["signSGDM"]) > 0.8
                        and best_test["EF-SignSGD"] < 0.2),
                  "Final test loss: " + ", ".join(f"{k} {v['test']:.3f}" for k, v in fin.items())
                  + "; the best test loss is reached at step " + ", ".join(
                      f"{k} {int(np.argmin(v['test'][0]))}" for k, v in span.items())
                  + ". We would need the paper's step sizes (and signSGDM's β): it tunes them "
                  "\"to obtain fastest convergence\" and does not list them. We tried one setting "
                  "per method, fixed up front: SGD γ = 1/L, EF-SignSGD γ = 0.5/L, signSGD and "
                  f"signSGDM (β = 0.9) γ_t = 0.01/√(t + 1), L = {L:.3g}, {T5} full-batch steps."))

  # ---------------- A.1 sparse noise
  TA = 1000
  dA = 100

  def gA(x, key, i, t):
    return x + jnp.zeros_like(x).at[0].set(100.0 * jax.random.normal(key))
  fA = lambda x: 0.5 * jnp.sum(x ** 2)
  nkeys = 30 if fast else 100
  a1 = {k: common.simulate(mk, jnp.ones(dA), gA, n=1, steps=TA, seeds=range(nkeys), chunks=1,
                           trace_fn=fA, progress=prog)["trace"]["value"]
        for k, mk in (("SGD", lambda s: compopt.psgd(0.001, axis_name=AX)),
                      ("EF-SignSGD", lambda s: compopt.ef_signsgd(0.001, axis_name=AX, key=s)),
                      ("signSGD", lambda s: compopt.signsgd(0.01, axis_name=AX)),
                      ("scaled signSGD", lambda s: compopt.scaled_signsgd(0.01, axis_name=AX)))}
  prog.close()
  mA = {k: float(v[:, -1].mean()) for k, v in a1.items()}
  rows.append(Row("Karimireddy et al. 2019 A.1 sparse noise", "with noise on one coordinate, signSGD and scaled signSGD are faster than SGD and EF-SignSGD",
                  f"mean f(x_T), T = {TA}, {nkeys} keys",
                  ", ".join(f"{k} {v:.3g}" for k, v in mA.items()),
                  check(max(mA["signSGD"], mA["scaled signSGD"]) < min(mA["SGD"], mA["EF-SignSGD"]))))
  rows.append(Row("Karimireddy et al. 2019 A.1 EF ≈ SGD", "SGD and EF-SignSGD converge at the same (slower) rate",
                  "mean f(x_T) ratio EF-SignSGD / SGD (same: within [0.5, 2])",
                  f"{mA['EF-SignSGD'] / mA['SGD']:.2f}", check(0.5 <= mA["EF-SignSGD"] / mA["SGD"] <= 2)))

  # ---------------- figure and data
  fig, axs = common.figure(6, width=3.6)
  for a, (t, res) in zip(axs[:3], figs.items()):
    for k, v in res.items():
      a.plot(v, label=k)
    if not t.startswith("CE1"):
      a.set_yscale("log")
    a.set_title(t, fontsize=7); a.set_xlabel("iterations"); a.legend(fontsize=6)
  for a, q, lab in zip(axs[3:5], ("dist", "test"), ("‖x − Π_G(x)‖", "test loss")):
    for k, v in span.items():
      a.plot(v[q][0], label=k)
    a.set_title(f"§5.2/A.6: {lab}", fontsize=7); a.set_xlabel("iterations"); a.legend(fontsize=6)
  for k, v in a1.items():
    axs[5].semilogy(v.mean(0), label=k)
  axs[5].set_title("A.1 sparse noise: mean f(x_t)", fontsize=7); axs[5].set_xlabel("iterations")
  axs[5].legend(fontsize=6)
  common.save(fig, common.out_path(out_dir, "ef_signsgd.png"), "Karimireddy et al. 2019: counterexamples, gradient span, sparse noise")
  common.write_json(common.out_path(out_dir, "ef_signsgd.json"), {
      "counterexamples": figs, "span": {k: {q: v[q][0] for q in v} for k, v in span.items()},
      "sparse_noise_mean_f": {k: v.mean(0) for k, v in a1.items()}})
  common.write_series_csv(common.out_path(out_dir, "ef_signsgd_span.csv"), "t", np.arange(T5 + 1),
                          {f"{k}_{q}": v[q][0] for k, v in span.items() for q in v})
  return rows
