"""CIFAR-10, M-DYR-H: mixup + dynamic hard bootstrapping + regulariser, BMM (from epoch 106)."""

from jaxnoise.configs import default


def get_config():
    """M-DYR-H with the BMM noise model (the default base)."""
    return default.get_config()
