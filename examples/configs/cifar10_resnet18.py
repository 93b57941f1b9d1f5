"""CIFAR-10 ResNet-18 (Horváth & Richtárik 2021, §5; Huang et al. 2022,
Table 2): set config.data_dir to the directory of the python batches
(cifar-10-batches-py).

8 workers, batch 128 per worker, SGD momentum 0.9, weight decay 5e-4,
cosine schedule, crop + flip augmentation; BatchNorm statistics per worker.
"""

from examples.configs import default


def get_config():
  config = default.get_config()
  config.dataset = "cifar10"
  config.model = "resnet18"
  config.augment = True
  config.batch_size = 128
  config.learning_rate = 0.1
  config.weight_decay = 5e-4
  config.schedule = "cosine"
  config.warmup_steps = 200
  config.num_steps = 300 * 48  # 300 epochs of 50k images over 8 x 128
  config.log_every = 100
  config.eval_every = 1000
  config.checkpoint_every = 1000
  config.methods = ("psgd", "ef_topk", "ef_scaled_sign")
  return config
