"""Every public factory rejects invalid arguments when it is called, with a
message that names the argument, the value and what is allowed."""

import jax.numpy as jnp
import optax
import pytest

import compopt
from compopt import compressors as C

TOP = C.top_k(1)
RAND = C.rand_k(1)

# (id, call, exception, regex that must match: argument, allowed range, value)
CASES = [
    # learning rates
    ("dcsgd_lr_negative", lambda: compopt.dcsgd(-0.1, compressor=TOP), ValueError,
     r"dcsgd: `learning_rate` must be a finite number >= 0 or an optax schedule.*got -0\.1"),
    ("psgd_lr_nan", lambda: compopt.psgd(float("nan")), ValueError,
     r"psgd: `learning_rate` must be a finite number >= 0.*got nan"),
    ("ef_sgd_lr_str", lambda: compopt.ef_sgd("0.1", compressor=TOP), TypeError,
     r"ef_sgd: `learning_rate` must be a finite number >= 0.*got '0\.1'"),
    ("ef_signsgd_lr_inf", lambda: compopt.ef_signsgd(float("inf")), ValueError,
     r"`learning_rate` must be .*got inf"),
    ("ef21_lr", lambda: compopt.ef21(-1, compressor=TOP), ValueError,
     r"ef21: `learning_rate` must be .*>= 0.*got -1"),
    ("double_squeeze_lr", lambda: compopt.double_squeeze(None, compressor=TOP), TypeError,
     r"double_squeeze: `learning_rate` must be .*got None"),
    ("signsgd_lr", lambda: compopt.signsgd(-1.0), ValueError, r"signsgd: `learning_rate`.*-1\.0"),
    ("signum_lr", lambda: compopt.signum(-1.0), ValueError, r"signum: `learning_rate`.*-1\.0"),
    ("scaled_signsgd_lr", lambda: compopt.scaled_signsgd(-2), ValueError,
     r"scaled_signsgd: `learning_rate`.*got -2"),
    ("ef_signsgd_lr", lambda: compopt.ef_signsgd(-2), ValueError,
     r"ef_signsgd: `learning_rate`.*got -2"),
    ("diana_lr", lambda: compopt.diana(-1, compressor=RAND), ValueError,
     r"diana: `learning_rate`.*got -1"),
    ("rand_diana_lr", lambda: compopt.rand_diana([0.1], compressor=RAND), TypeError,
     r"`learning_rate`.*got \[0\.1\]"),
    ("gdci_lr", lambda: compopt.gdci(-1, compressor=RAND, eta=0.5), ValueError,
     r"gdci: `learning_rate`.*got -1"),
    ("comp_ams_lr", lambda: compopt.comp_ams(-1e-3, compressor=TOP), ValueError,
     r"comp_ams: `learning_rate`.*got -0\.001"),
    ("neolithic_lr", lambda: compopt.neolithic(-1, compressor=TOP, rounds=2), ValueError,
     r"neolithic: `learning_rate`.*got -1"),
    # momentum and flags
    ("dcsgd_momentum", lambda: compopt.dcsgd(0.1, compressor=TOP, momentum=1.0), ValueError,
     r"dcsgd: `momentum` must be in \[0, 1\) or None; got 1\.0"),
    ("psgd_momentum", lambda: compopt.psgd(0.1, momentum=-0.5), ValueError,
     r"psgd: `momentum` must be in \[0, 1\) or None; got -0\.5"),
    ("psgd_nesterov", lambda: compopt.psgd(0.1, momentum=0.9, nesterov="yes"), TypeError,
     r"psgd: `nesterov` must be True or False; got 'yes'"),
    ("signum_momentum", lambda: compopt.signum(0.1, momentum=1.5), ValueError,
     r"signum: `momentum` must be in \[0, 1\); got 1\.5"),
    ("scaled_signsgd_momentum", lambda: compopt.scaled_signsgd(0.1, momentum="a"), TypeError,
     r"`momentum` must be a number in \[0, 1\) or None; got 'a'"),
    ("skip_nonfinite", lambda: compopt.diana(0.1, compressor=RAND, skip_nonfinite=None),
     TypeError, r"`skip_nonfinite` must be True or False; got None"),
    ("comp_ams_ef_flag", lambda: compopt.comp_ams(0.1, compressor=TOP, error_feedback=0),
     TypeError, r"comp_ams: `error_feedback` must be True or False; got 0"),
    ("comp_ams_optax_flag", lambda: compopt.comp_ams(0.1, compressor=TOP, optax_amsgrad="no"),
     TypeError, r"comp_ams: `optax_amsgrad` must be True or False; got 'no'"),
    # compressors
    ("dcsgd_compressor", lambda: compopt.dcsgd(0.1, compressor="top_k"), TypeError,
     r"`compressor` must be a compopt compressor .*got 'top_k'"),
    ("ef_sgd_compressor", lambda: compopt.ef_sgd(0.1, compressor=None), TypeError,
     r"`compressor` must be a compopt compressor .*got None"),
    ("double_squeeze_server", lambda: compopt.double_squeeze(
        0.1, compressor=TOP, server_compressor=3), TypeError,
     r"`server_compressor` must be a compopt compressor .*got 3"),
    ("diana_shift_compressor", lambda: compopt.diana(0.1, compressor=RAND, shift_compressor=1),
     TypeError, r"`shift_compressor` must be a compopt compressor .*got 1"),
    ("neolithic_server", lambda: compopt.neolithic(0.1, compressor=TOP, rounds=1,
                                                   server_compressor="x"), TypeError,
     r"`server_compressor` must be a compopt compressor .*got 'x'"),
    # structural integers and fractions
    ("neolithic_rounds", lambda: compopt.neolithic(0.1, compressor=TOP, rounds=0), ValueError,
     r"neolithic: `rounds` must be an integer >= 1; got 0"),
    ("neolithic_rounds_float", lambda: compopt.neolithic(0.1, compressor=TOP, rounds=2.0),
     TypeError, r"`rounds` must be an integer >= 1; got 2\.0"),
    ("gdci_eta", lambda: compopt.gdci(0.1, compressor=RAND, eta=0.0), ValueError,
     r"gdci: `eta` must be in \(0, 1\]; got 0\.0"),
    ("diana_alpha", lambda: compopt.diana(0.1, compressor=RAND, alpha=1.5), ValueError,
     r"`alpha` must be in \(0, 1\]; got 1\.5"),
    ("rand_diana_p", lambda: compopt.rand_diana(0.1, compressor=RAND, p=0), ValueError,
     r"rand_diana: `p` must be in \(0, 1\]; got 0"),
    ("dcgd_shift_rule", lambda: compopt.dcgd_shift(0.1, compressor=RAND, shift="dynamic"),
     ValueError, r"`shift` must be one of \('fixed', 'star', 'diana', 'rand_diana'\); "
     r"got 'dynamic'"),
    ("comp_ams_b1", lambda: compopt.comp_ams(0.1, compressor=TOP, b1=1.0), ValueError,
     r"comp_ams: `b1` must be in \[0, 1\); got 1\.0"),
    ("comp_ams_b2", lambda: compopt.comp_ams(0.1, compressor=TOP, b2="x"), TypeError,
     r"comp_ams: `b2` must be a number in \[0, 1\); got 'x'"),
    ("comp_ams_eps", lambda: compopt.comp_ams(0.1, compressor=TOP, eps=0.0), ValueError,
     r"comp_ams: `eps` must be > 0; got 0\.0"),
    ("scale_by_comp_ams_eps", lambda: compopt.scale_by_comp_ams(eps=-1.0), ValueError,
     r"`eps` must be > 0; got -1\.0"),
    ("dcsgd_scheme", lambda: compopt.dcsgd(0.1, compressor=TOP, scheme="ring"), ValueError,
     r"dcsgd: `scheme` must be 'allgather', 'allreduce', 'two_phase', 'auto'.*got 'ring'"),
    ("diana_scheme_server", lambda: compopt.diana(
        0.1, compressor=RAND, scheme=compopt.exchange.two_phase(TOP)), ValueError,
     r"diana: needs the exact mean.*`scheme` cannot compress the aggregate again"),
    ("ef21_scheme_server", lambda: compopt.ef21(
        0.1, compressor=TOP, scheme=compopt.exchange.two_phase(TOP)), ValueError,
     r"ef21: needs the exact mean"),
    ("dcsgd_sampling", lambda: compopt.dcsgd(0.1, compressor=TOP, sampling=1.5), ValueError,
     r"`sampling`.*\(0, 1\].*1\.5"),
    # keys, axes and dtypes
    ("dcsgd_key", lambda: compopt.dcsgd(0.1, compressor=TOP, key="seed"), TypeError,
     r"`key` must be an int seed, a scalar jax\.random\.key\(\.\.\.\) or a uint32\[2\] "
     r"jax\.random\.PRNGKey\(\.\.\.\); got 'seed'"),
    ("ef_sgd_key", lambda: compopt.ef_sgd(0.1, compressor=TOP, key=1.5), TypeError,
     r"`key` must be an int seed.*got 1\.5"),
    ("diana_key", lambda: compopt.diana(0.1, compressor=RAND, key=jnp.zeros(3)), TypeError,
     r"`key` must be an int seed.*got "),
    ("gdci_key", lambda: compopt.gdci(0.1, compressor=RAND, eta=0.5, key=None), TypeError,
     r"gdci: `key` must be an int seed.*got None"),
    ("ef21_key", lambda: compopt.ef21(0.1, compressor=TOP, key=[1, 2]), TypeError,
     r"`key` must be an int seed.*got \[1, 2\]"),
    ("dcsgd_axis", lambda: compopt.dcsgd(0.1, compressor=TOP, axis_name=0), TypeError,
     r"`axis_name` must be a str \(or None\); got 0"),
    ("ef_sgd_error_dtype", lambda: compopt.ef_sgd(0.1, compressor=TOP, error_dtype=jnp.int32),
     TypeError, r"`error_dtype` must be a floating dtype \(float16, bfloat16, float32 or "
     r"float64\) or None; got int32"),
    ("ef21_state_dtype", lambda: compopt.ef21(0.1, compressor=TOP, state_dtype=jnp.int8),
     TypeError, r"`state_dtype` must be a floating dtype.*got int8"),
    ("diana_shift_dtype", lambda: compopt.diana(0.1, compressor=RAND, shift_dtype="banana"),
     TypeError, r"`shift_dtype` must be a floating dtype.*got 'banana'"),
    ("comp_ams_mu_dtype", lambda: compopt.scale_by_comp_ams(mu_dtype=jnp.bool_), TypeError,
     r"`mu_dtype` must be a floating dtype.*got bool"),
    # wrappers and helpers
    ("skip_nonfinite_inner", lambda: compopt.skip_nonfinite(optax.sgd), TypeError,
     r"skip_nonfinite: `inner` must be an optax GradientTransformation; got <function"),
    ("reshard_n", lambda: compopt.reshard_state((jnp.zeros((2, 3)),), -1), ValueError,
     r"reshard_state: `n` must be an int >= 1 \(the new number of workers\); got -1"),
    ("stack_n", lambda: compopt.parallel.stack(jnp.zeros(2), 0), ValueError,
     r"stack: `n` must be an int >= 1 \(the number of workers\); got 0"),
]


@pytest.mark.parametrize("call,exc,regex", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_argument_is_rejected_with_a_clear_message(call, exc, regex):
  with pytest.raises(exc, match=regex):
    call()


def test_good_arguments_still_work_under_inject_hyperparams():
  # the checks must let traced / array hyperparameters through
  opt = optax.inject_hyperparams(compopt.dcsgd, static_args=("compressor",))(
      0.1, compressor=TOP, momentum=0.9, key=3)
  state = opt.init(jnp.zeros(3))
  opt.update(jnp.ones(3), state)
