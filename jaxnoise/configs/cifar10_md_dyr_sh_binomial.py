"""CIFAR-10, MD-DYR-SH with the weight from two Binomial(10000, .) draws normalised to 1."""

from jaxnoise.configs import cifar10_md_dyr_sh


def get_config():
    """MD-DYR-SH, Binomial draw (published extension, 90% noise)."""
    c = cifar10_md_dyr_sh.get_config()
    c.bootstrap.mixup_draw = "binomial"
    return c
