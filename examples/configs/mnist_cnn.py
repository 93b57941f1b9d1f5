"""MNIST with the CNN of Li & Li 2022 (2 conv + 2 FC, dropout 0.5), COMP-AMS and
baselines."""

from examples.configs import default


def get_config():
  config = default.get_config()
  config.model = "cnn"
  config.num_steps = 500
  config.methods = ("psgd", "ef_topk", "comp_ams")
  return config
