"""CIFAR-10, MD-DYR-SH with the dynamic-mixup weight drawn from Beta(delta, 1 - delta)."""

from jaxnoise.configs import cifar10_md_dyr_sh


def get_config():
    """MD-DYR-SH, Beta draw (published extension, 80-85% noise)."""
    c = cifar10_md_dyr_sh.get_config()
    c.bootstrap.mixup_draw = "beta"
    return c
