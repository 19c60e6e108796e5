"""CIFAR-10, DivideMix (Li, Socher & Hoi, ICLR 2020) as the official Train_cifar.py.

python main.py --config configs/cifar10_dividemix.py --config.noise=0.5

PreAct ResNet-18, SGD lr 0.02 (momentum 0.9, weight decay 5e-4), /10 from epoch 150; epochs
0..300 (``epochs = 300`` is the official ``num_epochs``; DivideMix counts from 0 and runs
``num_epochs + 1`` epochs); warm-up 10 epochs; B = 64 (warm-up batch 128); T = 0.5, alpha = 4.
lambda_u from a per-setting table unless set (``--config.lambda_u=25``): 0 at 20%, 25 at 50% and
80%, 50 at 90% symmetric noise, 0 at 40% asymmetric (``jaxnoise/config.py``
``DIVIDEMIX_LAMBDA_U``; the paper picks from {0, 25, 50, 150} on a validation set; these are
the per-setting values of Nishi et al.'s DivideMix presets); p_threshold 0.5, 0.6 at 90%. At 90%
the GMM fits the mean of the last 5 epochs' normalised losses, as the official code.
"""

from configs import default


def get_config():
    """DivideMix with the published CIFAR-10 hyperparameters."""
    c = default.get_config()
    c.method = "DivideMix"
    c.lr = 0.02
    c.momentum = 0.9
    c.weight_decay = 5e-4
    c.epochs = 300
    c.lr_milestones = (150,)
    c.lr_gamma = 0.1
    c.dividemix_warm_up = 10
    c.dividemix_batch = 64
    c.batch_size = 128  # not used by DivideMix (its warm-up batch is 2 * dividemix_batch)
    c.lambda_u = -1.0  # the paper's table by noise kind and level
    c.p_threshold = -1.0  # the paper's: 0.6 at 90% noise, else 0.5
    c.sharpen_temperature = 0.5
    c.mixmatch_alpha = 4.0
    c.lambda_u_rampup = 16.0
    c.dividemix_loss_history = 5
    return c
