"""CIFAR-10 VGG-11 with BatchNorm (Horváth & Richtárik 2021, Fig. 2)."""

from examples.configs import cifar10_resnet18


def get_config():
  config = cifar10_resnet18.get_config()
  config.model = "vgg11"
  config.learning_rate = 0.05
  config.methods = ("psgd", "dcsgd_induced", "ef_topk")
  return config
