"""Train with compressed communication; the command-line entry point.

  python -m examples.main                                   # the default comparison
  python -m examples.main --config=examples/configs/mnist_cnn.py --workdir=out/cnn
  python -m examples.main --config.method=ef_sgd \
      --config.compressor='top_k(ratio=0.01)'               # one run
  python -m examples.main --list                            # methods, compressors, presets
  python -m examples.main --config=examples/configs/cifar10_resnet18.py \
      --config.data_dir=path/to/cifar-10-batches-py --workdir=out/r18

Without ``--config.method`` (or ``--config.compressor``, ``--config.method_kwargs``,
``--config.label``) on the command line, each preset of ``config.methods`` runs
in ``workdir/<preset>``, then a table is printed and ``workdir/comparison.png``
written; naming a method runs that one method in ``workdir`` (unless
``--config.methods`` is given too). Rerunning with the
same workdir resumes each run from its latest checkpoint.

Several processes, one worker per device over all of them (see
``examples/launch.py``, which sets the same values through the environment)::

  python -m examples.launch -n 4 -- --config.num_workers=4 --workdir=out/p4
  # or by hand, one command per process (P = 2 here):
  python -m examples.main --coordinator_address=host0:1234 --num_processes=2 \
      --process_id=0 --config.num_workers=2      # and --process_id=1 elsewhere

Process 0 alone prints the table and writes the figure and summary.
"""

import json
import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from examples import distributed
from examples import methods
from examples import report
from examples import train

_DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "default.py")
FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "out/mnist", "Directory for metrics, checkpoints, figure.")
config_flags.DEFINE_config_file("config", _DEFAULT, "Training config file.",
                                lock_config=True)
flags.DEFINE_string(
    "coordinator_address", None,
    f"host:port of process 0 (default: ${distributed.ENV_COORDINATOR_ADDRESS}); "
    "needed with several processes.")
flags.DEFINE_integer(
    "num_processes", None,
    f"Number of processes over all machines (default: ${distributed.ENV_NUM_PROCESSES}, "
    "else 1).", lower_bound=1)
flags.DEFINE_integer(
    "process_id", None,
    f"This process's rank in [0, num_processes) (default: ${distributed.ENV_PROCESS_ID}, "
    "else 0).", lower_bound=0)
flags.DEFINE_integer(
    "devices_per_process", None,
    f"Devices each process uses (default: ${distributed.ENV_DEVICES_PER_PROCESS}, else 1 "
    "with several processes and the backend's default for one: one CPU device unless "
    "XLA_FLAGS says otherwise, all GPUs).",
    lower_bound=1)
flags.DEFINE_bool("list", False, "Print the methods, compressor factories and presets that "
                  "--config.method, --config.compressor and --config.methods take, and exit.")
flags.DEFINE_integer(
    "heartbeat_timeout", None,
    f"Seconds without a heartbeat after which jax.distributed declares a process dead and "
    f"aborts the others (default: ${distributed.ENV_HEARTBEAT_TIMEOUT}, else JAX's 100). "
    "Shorter ends a run with a dead process sooner, but may declare a stalled live one "
    "dead.", lower_bound=1)


#: Fields of one run: naming any of them on the command line asks for one run.
SINGLE_RUN_FIELDS = ("method", "compressor", "method_kwargs", "label")


def presets_to_run(config, overrides) -> tuple:
  """The presets to run (``(None,)``: the single run of ``config.method``).

  ``overrides`` are the config fields set on the command line (dotted names,
  as ml_collections reports them). ``--config.methods`` decides when given;
  otherwise a command line that names a method (or its compressor, arguments
  or label) asks for that one run, not for the default comparison.
  """
  if "methods" not in overrides and any(
      k.split(".")[0] in SINGLE_RUN_FIELDS for k in overrides):
    return (None,)
  return tuple(config.methods) or (None,)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.list:
    print(methods.listing())
    return
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  # Before anything starts a JAX backend: the devices, then the cluster.
  cluster = distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                   FLAGS.process_id, FLAGS.devices_per_process,
                                   heartbeat_timeout=FLAGS.heartbeat_timeout)
  config, workdir = FLAGS.config, FLAGS.workdir
  presets = presets_to_run(config, config_flags.get_override_values(FLAGS["config"]))
  summaries, histories = [], {}
  for name in presets:
    cfg = report.preset_config(config, name) if name else config
    run_dir = os.path.join(workdir, name) if name else workdir
    result = train.train_and_evaluate(cfg, run_dir)
    summaries.append(result.summary)
    histories[result.summary["label"]] = result.history
  if cluster.process_id != 0:  # the same numbers as process 0, which reports them
    _shutdown(cluster)
    return
  s = summaries[0]
  where = f", {cluster.num_processes} processes" if cluster.is_multiprocess else ""
  print(f"\n{config.model} on {config.dataset}, {s['workers']} workers ({s['mode']}{where}), "
        f"batch {config.batch_size}/worker, {s['steps']} steps = {s['epochs']:.2f} epochs")
  print(report.table(summaries))
  fig = report.plot(histories, os.path.join(workdir, "comparison.png"),
                    f"{config.model} on {config.dataset}, {s['workers']} workers")
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summaries, f, indent=2)
  print(f"figure: {fig}\nmetrics: {os.path.join(workdir, '*', 'metrics.jsonl')}")
  _shutdown(cluster)


def _shutdown(cluster):
  """Leaves the cluster together: waits for every process to get here."""
  if cluster.is_multiprocess:
    jax.distributed.shutdown()


if __name__ == "__main__":
  app.run(main)
