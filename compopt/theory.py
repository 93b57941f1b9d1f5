"""Theory helpers: constants and hyperparameters from the papers' theorems.

::

    from compopt import compressors, theory
    c = compressors.rand_k(ratio=0.1)
    w = theory.omega(c, params)                    # ω of the layer-wise compressor
    gamma = theory.dcsgd_step_size(w, n=8, L=1.0)  # Horváth & Richtárik 2021, Thm 4
    alpha = theory.diana_alpha(w)                  # Shulgin & Richtárik 2022, Thm 3
    R = theory.neolithic_rounds(delta=0.1, T=10_000, b2=1.0, sigma2=1.0,
                                Delta=1.0, L=1.0)  # Huang et al. 2022, Thm 3
    sched = theory.dcsgd_schedule(w, n=8, L=1.0, mu=0.1, T=10_000)  # Thms 2/4/6
    weights = theory.dcsgd_weights(w, n=8, L=1.0, mu=0.1, T=10_000)  # for x̄^T
    phi = theory.sign_density(grads)               # δ of scaled sign on grads

Notation: unbiased U(ω), E C(x) = x and E‖C(x) − x‖² ≤ ω‖x‖²; contractive
B(δ), E‖C(x) − x‖² ≤ (1 − δ)‖x‖². Every function documents its source theorem.
"""

from compopt._src.theory import TRANSIENT_METHODS
from compopt._src.theory import comp_ams_learning_rate
from compopt._src.theory import dcgd_fixed_step_size
from compopt._src.theory import dcgd_star_step_size
from compopt._src.theory import dcsgd_bound
from compopt._src.theory import dcsgd_delta_n
from compopt._src.theory import dcsgd_delta_s
from compopt._src.theory import dcsgd_schedule
from compopt._src.theory import dcsgd_step_size
from compopt._src.theory import dcsgd_weights
from compopt._src.theory import delta
from compopt._src.theory import diana_alpha
from compopt._src.theory import diana_M
from compopt._src.theory import diana_rate
from compopt._src.theory import diana_step_size
from compopt._src.theory import ef_signsgd_bound
from compopt._src.theory import ef_signsgd_convex_bound
from compopt._src.theory import ef_signsgd_convex_step_size
from compopt._src.theory import ef_signsgd_step_size
from compopt._src.theory import fcc_error_bound
from compopt._src.theory import gdci_eta
from compopt._src.theory import gdci_step_size
from compopt._src.theory import induced_omega
from compopt._src.theory import neolithic_rounds
from compopt._src.theory import omega
from compopt._src.theory import rand_diana_M
from compopt._src.theory import rand_diana_p
from compopt._src.theory import rand_diana_rate
from compopt._src.theory import rand_diana_step_size
from compopt._src.theory import sign_density
from compopt._src.theory import transient_complexity

__all__ = (
    "TRANSIENT_METHODS",
    "comp_ams_learning_rate",
    "dcgd_fixed_step_size",
    "dcgd_star_step_size",
    "dcsgd_bound",
    "dcsgd_delta_n",
    "dcsgd_delta_s",
    "dcsgd_schedule",
    "dcsgd_step_size",
    "dcsgd_weights",
    "delta",
    "diana_M",
    "diana_alpha",
    "diana_rate",
    "diana_step_size",
    "ef_signsgd_bound",
    "ef_signsgd_convex_bound",
    "ef_signsgd_convex_step_size",
    "ef_signsgd_step_size",
    "fcc_error_bound",
    "gdci_eta",
    "gdci_step_size",
    "induced_omega",
    "neolithic_rounds",
    "omega",
    "rand_diana_M",
    "rand_diana_p",
    "rand_diana_rate",
    "rand_diana_step_size",
    "sign_density",
    "transient_complexity",
)
