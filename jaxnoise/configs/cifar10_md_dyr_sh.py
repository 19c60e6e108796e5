"""CIFAR-10, MD-DYR-SH: dynamic mixup from 106, soft-to-hard bootstrapping from 111."""

from jaxnoise.configs import default


def get_config():
    """MD-DYR-SH with the original deterministic dynamic-mixup weight."""
    c = default.get_config()
    c.method = "MD-DYR-SH"
    return c
