"""CIFAR-10, DivideMix (Li, Socher & Hoi, ICLR 2020) as the official Train_cifar.py.

python main.py --config configs/cifar10_dividemix.py --config.noise=0.5

PreAct ResNet-18, SGD lr 0.02 (momentum 0.9, weight decay 5e-4), /10 from epoch 151; 301
epochs (the official ``num_epochs = 300`` counts from 0 and runs epochs 0..300; jaxnoise counts
every method's epochs from 1); warm-up 10 epochs; B = 64 (warm-up batch 128); T = 0.5, alpha = 4.
lambda_u from a per-setting table unless set (``--config.dividemix.lambda_u=25``): 0 at 20%, 25
at 50% and 80%, 50 at 90% symmetric noise, 0 at 40% asymmetric
(``jaxnoise/dividemix/config.py`` ``LAMBDA_U``; the paper picks from {0, 25, 50, 150} on a
validation set; these are
the per-setting values of Nishi et al.'s DivideMix presets); p_threshold 0.5, 0.6 at 90%. At 90%
the GMM fits the mean of the last 5 epochs' normalised losses, as the official code.
"""

from jaxnoise.configs import default


def get_config():
    """DivideMix with the published CIFAR-10 hyperparameters."""
    c = default.get_config("DivideMix")
    c.lr = 0.02
    c.momentum = 0.9
    c.weight_decay = 5e-4
    c.epochs = 301  # the official num_epochs = 300: its epochs 0..300
    c.lr_milestones = (151,)  # the official lr / 10 from its epoch 150 (0-based)
    c.lr_gamma = 0.1
    c.dividemix.warm_up = 10
    c.dividemix.batch_size = 64
    c.dividemix.lambda_u = -1.0  # the paper's table by noise kind and level
    c.dividemix.p_threshold = -1.0  # the paper's: 0.6 at 90% noise, else 0.5
    c.dividemix.sharpen_temperature = 0.5
    c.dividemix.mixmatch_alpha = 4.0
    c.dividemix.lambda_u_rampup = 16.0
    c.dividemix.loss_history = 5
    return c
