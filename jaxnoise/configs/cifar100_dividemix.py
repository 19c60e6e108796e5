"""CIFAR-100, DivideMix as the official Train_cifar.py (configs/cifar10_dividemix.py, 100 classes).

python main.py --config configs/cifar100_dividemix.py --config.noise=0.5

The CIFAR-10 schedule with the official CIFAR-100 warm-up of 30 epochs; lambda_u from the
per-setting table (25 at 20%, 150 at 50%, 80% and 90% symmetric noise), p_threshold 0.5 (0.6 at
90%), at 90% the GMM of the mean of the last 5 epochs' losses.
"""

from jaxnoise.configs import cifar10_dividemix


def get_config():
    """The CIFAR-10 DivideMix row on CIFAR-100, warm-up 30 epochs."""
    c = cifar10_dividemix.get_config()
    c.data.name = "cifar100"
    c.dividemix.warm_up = 30
    return c
