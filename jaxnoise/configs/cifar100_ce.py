"""CIFAR-100 counterpart of configs/cifar10_ce.py (same schedule, 100 classes)."""

from jaxnoise.configs import cifar10_ce


def get_config():
    """The CIFAR-10 row on CIFAR-100."""
    c = cifar10_ce.get_config()
    c.data.name = "cifar100"
    return c
