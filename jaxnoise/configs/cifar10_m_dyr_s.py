"""CIFAR-10, M-DYR-S: mixup + dynamic soft bootstrapping + regulariser, BMM."""

from jaxnoise.configs import default


def get_config():
    """M-DYR-S on CIFAR-10."""
    c = default.get_config()
    c.method = "M-DYR-S"
    return c
