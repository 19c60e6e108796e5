"""CIFAR-100N (human noise, ``noisy_label``; 40.2% wrong), the CIFAR-N paper's CE protocol.

    python main.py --config configs/cifar100n_ce.py

Same network and schedule as configs/cifar10n_ce.py; inputs normalised with the training set's
per-channel statistics (the CIFAR-N code's CIFAR-100 constants are those statistics).
"""

from jaxnoise.configs import cifar10n_ce


def get_config(label_set: str = "noisy100"):
    """CE on CIFAR-100N."""
    c = cifar10n_ce.get_config(label_set)
    c.data.name = "cifar100_n"
    c.data.normalization = "dataset"
    return c
