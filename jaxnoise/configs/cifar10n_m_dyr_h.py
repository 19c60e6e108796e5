"""M-DYR-H on CIFAR-10N: the CIFAR-N paper's ResNet-34 and data, the published M-DYR-H schedule
(300 epochs, lr /10 at 100 and 250, bootstrapping from 106).

    python main.py --config configs/cifar10n_m_dyr_h.py:worse   # or aggre, rand1, rand2, rand3

Human noise is instance-dependent; the options for it: --config.mixture_scope=class (one mixture
per given class) and --config.loss_signal=ema (with --config.posterior_source=epoch).
"""

from jaxnoise.configs import cifar10n_ce, default


def get_config(label_set: str = "worse"):
    """M-DYR-H on CIFAR-10N with the chosen label set."""
    return cifar10n_ce.cifar_n(default.get_config(), label_set, "cifar10_n")
