"""Huang et al. 2022 §5 (Fig. 1 left): synthetic least squares, d = 30, n = 32,
rand-1, R = 4. NEOLITHIC vs MEM-SGD (ef_sgd), Double-Squeeze and P-SGD in
‖x − x*‖² per communication round."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import compopt
from compopt import compressors as C
from benchmarks.reproduce import common
from benchmarks.reproduce.common import Row, check

NAME = "neolithic"
TITLE = "Huang et al. 2022 §5, least squares, NEOLITHIC vs MEM-SGD / Double-Squeeze / P-SGD"
D, N, R, M_ROWS, BATCH = 30, 32, 4, 100, 1
GAMMAS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05)
CLOSE = 2.0   # "close to P-SGD": final error within this factor (fixed before running)
NOTES = f"""\
The paper gives only d = 30, n = 32, rand-1, R = 4 (details in its Appendix C,
which our copy lacks). We chose:
- data: worker i holds A_i ∈ R^{{{M_ROWS}×{D}}} with N(0, 1) entries and
  b_i = A_i (x_true + ζ_i) + 0.1·N(0, 1), ζ_i ~ N(0, 0.5²) (heterogeneous local
  optima); f = (1/n) Σ_i (1/2m)‖A_i x − b_i‖², x* its exact minimiser; x⁰ = 0;
  stochastic gradients from {BATCH} uniformly sampled row per query;
- compressor: rand-1 scaled by 1/d (= 1/(1 + ω)), so it is contractive with
  δ = 1/d, for every compressed method (MEM-SGD, Double-Squeeze, NEOLITHIC);
  P-SGD sends uncompressed means;
- bidirectional where the method is: Double-Squeeze and NEOLITHIC compress the
  server's broadcast with the same scaled rand-1; MEM-SGD is unidirectional;
- one communication round = one gradient query per worker: NEOLITHIC is
  wrapped in compopt.accumulate(every_k = R), so each of its steps averages R
  stochastic gradients and sends R FCC rounds (Alg. 2's accounting);
- step size: each method gets the best γ of the same grid {GAMMAS} (lowest
  final error over the data seeds), as the paper tunes; the grid is shared,
  not chosen per method. "Close to P-SGD" is read as: final error within
  {CLOSE}× of P-SGD's (fixed before running).
"""


def make_data(seed: int):
  rng = np.random.default_rng(seed)
  x_true = rng.normal(size=D)
  A = rng.normal(size=(N, M_ROWS, D))
  xs = x_true + 0.5 * rng.normal(size=(N, D))
  b = np.einsum("nmd,nd->nm", A, xs) + 0.1 * rng.normal(size=(N, M_ROWS))
  H = np.einsum("nmd,nme->de", A, A) / (N * M_ROWS)
  x_star = np.linalg.solve(H, np.einsum("nmd,nm->d", A, b) / (N * M_ROWS))
  return A.astype(np.float32), b.astype(np.float32), x_star.astype(np.float32)


def run(out_dir: str, fast: bool = False) -> list[Row]:
  T = 600 if fast else 4000
  data_seeds = (0, 1) if fast else (0, 1, 2)
  datas = [make_data(s) for s in data_seeds]
  A = jnp.stack([d[0] for d in datas])
  b = jnp.stack([d[1] for d in datas])
  xstar = jnp.stack([d[2] for d in datas])
  # runs = (data seed, γ) pairs, all in one vmap
  pairs = [(j, g) for j in range(len(data_seeds)) for g in GAMMAS]
  aux = {"data": jnp.array([p[0] for p in pairs]),
         "gamma": jnp.array([p[1] for p in pairs], jnp.float32)}

  def grad_fn(x, key, i, t, a):
    rows = jax.random.randint(key, (BATCH,), 0, M_ROWS)
    Ai = A[a["data"], i][rows]
    bi = b[a["data"], i][rows]
    # learning rate 1 and gradient scaled by γ: the same iterates as step γ for
    # every method here (all are linear in the gradient for a fixed key).
    return a["gamma"] * (Ai.T @ (Ai @ x - bi)) / BATCH

  # the trace needs x* of the run's data seed: pass it through the params? No:
  # record x itself (d = 30) and compute the error on the host.
  rand1 = C.scaled(C.rand_k(1), 1.0 / D)
  ax = common.AXIS
  methods = {
      "P-SGD": lambda s: compopt.psgd(1.0, axis_name=ax),
      "MEM-SGD": lambda s: compopt.ef_sgd(1.0, compressor=rand1, axis_name=ax, key=s),
      "Double-Squeeze": lambda s: compopt.double_squeeze(
          1.0, compressor=rand1, server_compressor=rand1, axis_name=ax, key=s),
      "NEOLITHIC": lambda s: compopt.accumulate(compopt.neolithic(
          1.0, compressor=rand1, rounds=R, server_compressor=rand1, axis_name=ax, key=s),
          every_k=R, axis_name=ax),
  }
  chunks = 20
  prog = common.Progress(NAME, chunks * len(methods))
  x0 = jnp.zeros(D, jnp.float32)
  curves, best, bits = {}, {}, {}
  xs_idx = np.array([p[0] for p in pairs])
  for name, make in methods.items():
    res = common.simulate(make, x0, grad_fn, n=N, steps=T, seeds=range(len(pairs)),
                          chunks=chunks, trace_fn=lambda x: x, progress=prog, aux=aux)
    xt = res["trace"]["value"]                      # (runs, T + 1, D)
    err = np.sum((xt - np.asarray(xstar)[xs_idx][:, None, :]) ** 2, axis=-1)
    per_gamma = {g: err[[k for k, p in enumerate(pairs) if p[1] == g]] for g in GAMMAS}
    tail = slice(3 * T // 4, T + 1)   # the last quarter: less noisy than the last iterate
    final = {g: float(np.mean(np.where(np.isfinite(v[:, tail]), v[:, tail], np.inf)))
             for g, v in per_gamma.items()}
    g_best = min(final, key=final.get)
    best[name] = (g_best, final[g_best], final)
    curves[name] = per_gamma[g_best].mean(0)
    bits[name] = (float(np.mean(res["uplink"][:, -1])) / T, float(np.mean(res["downlink"][:, -1])) / T)
  prog.close()

  fig, (a1, a2) = common.figure(2)
  rounds = np.arange(T + 1)
  for name, c in curves.items():
    a1.semilogy(rounds, c, label=f"{name} (γ = {best[name][0]})")
    a2.semilogy(rounds * (bits[name][0] + bits[name][1]), c, label=name)
  a1.set_xlabel("communication rounds")
  a2.set_xlabel("bits per worker (up + down)")
  for a in (a1, a2):
    a.set_ylabel("‖x − x*‖²")
  a1.legend(fontsize=7)
  common.save(fig, common.out_path(out_dir, "neolithic_lsq.png"),
              f"Huang et al. 2022 Fig. 1 (left): least squares d={D}, n={N}, scaled rand-1, R={R}")
  common.write_series_csv(common.out_path(out_dir, "neolithic_lsq.csv"), "round", rounds, curves)
  common.write_json(common.out_path(out_dir, "neolithic_lsq.json"), {
      "best_gamma": {k: v[0] for k, v in best.items()},
      "final_error_per_gamma": {k: v[2] for k, v in best.items()},
      "bits_per_round_per_worker_up_down": bits})

  fin = {k: v[1] for k, v in best.items()}
  summary = ", ".join(f"{k} {v:.2e}" for k, v in fin.items())
  return [
      Row("Huang et al. 2022 §5 NEOLITHIC vs EF", "NEOLITHIC beats MEM-SGD and Double-Squeeze in ‖x − x*‖² per round",
          f"‖x − x*‖² averaged over rounds {3 * T // 4}..{T} and {len(data_seeds)} data seeds, best γ each",
          f"NEOLITHIC {fin['NEOLITHIC']:.2e} vs MEM-SGD {fin['MEM-SGD']:.2e}, "
          f"Double-Squeeze {fin['Double-Squeeze']:.2e}",
          check(fin["NEOLITHIC"] < min(fin["MEM-SGD"], fin["Double-Squeeze"])),
          "Finding: with a constant step tuned on the shared grid, every compressed method "
          "tracks P-SGD down to its noise floor; NEOLITHIC, one update per R = 4 rounds, is slower "
          "in the transient and reaches a similar (sometimes lower) floor later. We do not see "
          "NEOLITHIC clearly ahead of MEM-SGD. All: " + summary + "; best γ: " + ", ".join(f"{k} {v[0]}" for k, v in best.items())
          + ". We would need the setting of Fig. 1 left, which is in the paper's Appendix C (not "
          "in our copy): how the A_i and b_i are drawn (and how much the workers' optima "
          "differ), the gradient noise (rows per query), x⁰, the horizon, and each method's step "
          f"size or grid. We tried the data above ({len(data_seeds)} data seeds), {BATCH} row per "
          f"query, x⁰ = 0, {T} rounds, and for each method every constant γ of {GAMMAS}; "
          "final error per γ: " + "; ".join(
              f"{k} " + ", ".join(f"{g}: {e:.2e}" for g, e in v[2].items())
              for k, v in best.items() if k != "P-SGD") + "."),
      Row("Huang et al. 2022 §5 NEOLITHIC vs P-SGD", "NEOLITHIC performs close to (uncompressed) P-SGD",
          f"final error ratio NEOLITHIC / P-SGD (close: ≤ {CLOSE})",
          f"{fin['NEOLITHIC'] / fin['P-SGD']:.2f}", check(fin["NEOLITHIC"] <= CLOSE * fin["P-SGD"]),
          f"bits per round per worker (up, down): " + ", ".join(
              f"{k} ({u:.0f}, {d:.0f})" for k, (u, d) in bits.items())),
  ]
