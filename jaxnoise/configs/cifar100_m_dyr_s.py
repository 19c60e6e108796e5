"""CIFAR-100 counterpart of configs/cifar10_m_dyr_s.py (same schedule, 100 classes)."""

from jaxnoise.configs import cifar10_m_dyr_s


def get_config():
    """The CIFAR-10 row on CIFAR-100."""
    c = cifar10_m_dyr_s.get_config()
    c.data.name = "cifar100"
    c.bootstrap.reg_prior_classes = 10  # the original's M-DYR-S regulariser keeps its 10 classes
    return c
