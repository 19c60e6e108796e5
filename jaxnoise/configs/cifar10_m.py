"""CIFAR-10, plain mixup (M), alpha = 32: 300 epochs, lr /10 after 100 and 250."""

from jaxnoise.configs import default


def get_config():
    """Plain mixup on CIFAR-10."""
    c = default.get_config()
    c.method = "M"
    return c
