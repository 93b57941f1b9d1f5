"""Train with compressed communication; the command-line entry point.

  python -m examples.main                                   # the default comparison
  python -m examples.main --config=examples/configs/mnist_cnn.py --workdir=out/cnn
  python -m examples.main --config.methods='()' --config.method=ef_sgd \
      --config.compressor='top_k(ratio=0.01)'               # one run
  python -m examples.main --config=examples/configs/cifar10_resnet18.py \
      --config.data_dir=path/to/cifar-10-batches-py --workdir=out/r18

With ``config.methods`` set, each preset runs in ``workdir/<preset>``, then a
table is printed and ``workdir/comparison.png`` written. Rerunning with the
same workdir resumes each run from its latest checkpoint.
"""

import json
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from examples import report
from examples import train

_DEFAULT = os.path.join(os.path.dirname(__file__), "configs", "default.py")
FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "out/mnist", "Directory for metrics, checkpoints, figure.")
config_flags.DEFINE_config_file("config", _DEFAULT, "Training config file.",
                                lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  config, workdir = FLAGS.config, FLAGS.workdir
  presets = tuple(config.methods) or (None,)
  summaries, histories = [], {}
  for name in presets:
    cfg = report.preset_config(config, name) if name else config
    run_dir = os.path.join(workdir, name) if name else workdir
    result = train.train_and_evaluate(cfg, run_dir)
    summaries.append(result.summary)
    histories[result.summary["label"]] = result.history
  s = summaries[0]
  print(f"\n{config.model} on {config.dataset}, {s['workers']} workers ({s['mode']}), "
        f"batch {config.batch_size}/worker, {s['steps']} steps = {s['epochs']:.2f} epochs")
  print(report.table(summaries))
  fig = report.plot(histories, os.path.join(workdir, "comparison.png"),
                    f"{config.model} on {config.dataset}, {s['workers']} workers")
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump(summaries, f, indent=2)
  print(f"figure: {fig}\nmetrics: {os.path.join(workdir, '*', 'metrics.jsonl')}")


if __name__ == "__main__":
  app.run(main)
