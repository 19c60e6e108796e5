"""CIFAR-10, cross-entropy baseline (CE): 120 epochs, lr /10 after 30, 80 and 110."""

from jaxnoise.configs import default


def get_config():
    """CE on CIFAR-10 with the published schedule without mixup."""
    c = default.get_config()
    c.method = "CE"
    c.epochs = 120
    c.lr_milestones = (30, 80, 110)
    return c
