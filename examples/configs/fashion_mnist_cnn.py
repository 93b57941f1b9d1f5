"""Fashion-MNIST (IDX files; default directory: the Debian package
dataset-fashion-mnist) with the CNN."""

from examples.configs import default


def get_config():
  config = default.get_config()
  config.dataset = "fashion_mnist"
  config.model = "cnn"
  config.num_steps = 1000
  config.methods = ("psgd", "ef_topk", "ef_scaled_sign")
  return config
