"""TinyImageNet, M-DYR-H (bootstrapping from epoch 36); otherwise as tinyimagenet_m."""

from jaxnoise.configs import tinyimagenet_m


def get_config():
    """M-DYR-H on TinyImageNet with a frozen ResNet-50 backbone."""
    c = tinyimagenet_m.get_config()
    c.method = "M-DYR-H"
    return c
