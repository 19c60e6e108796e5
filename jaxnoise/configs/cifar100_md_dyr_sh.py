"""CIFAR-100 counterpart of configs/cifar10_md_dyr_sh.py (same schedule, 100 classes)."""

from jaxnoise.configs import cifar10_md_dyr_sh


def get_config():
    """The CIFAR-10 row on CIFAR-100."""
    c = cifar10_md_dyr_sh.get_config()
    c.data.name = "cifar100"
    return c
