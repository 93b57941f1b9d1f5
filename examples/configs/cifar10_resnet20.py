"""CIFAR-10 ResNet-20 (Huang et al. 2022, Table 2)."""

from examples.configs import cifar10_resnet18


def get_config():
  config = cifar10_resnet18.get_config()
  config.model = "resnet20"
  config.methods = ("psgd", "ef_topk", "neolithic")
  return config
