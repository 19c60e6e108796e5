"""CIFAR-10N (human noise; Wei et al., ICLR 2022), the CIFAR-N paper's CE protocol.

ResNet-34, SGD momentum 0.9, weight decay 5e-4, batch 128, lr 0.1 for 60 epochs then 0.01 for
40 (100 epochs), crop + flip; the published numbers are the *best* test accuracy of the 100
epochs (jaxnoise reports best and last). The label set is the config's argument:

    python main.py --config configs/cifar10n_ce.py:worse    # or aggre, rand1, rand2, rand3

Data: tfds ``cifar10_n`` (its records carry every label set and the clean label). With tfds
``cifar10`` and the release's file instead: ``--config.data.name=cifar10
--config.label_file=CIFAR-10_human.pt`` (rows in the original CIFAR order, mapped by tfds id).
"""

from jaxnoise.configs import default
from jaxnoise.labels import SHORT_NAMES

# The CIFAR-N code's short names -> the label sets' names (files and tfds features); label_key
# takes the short names too (jaxnoise/labels/human.py).
LABEL_SETS = SHORT_NAMES


def cifar_n(c, label_set: str, dataset: str):
    """Turn a config into the CIFAR-N protocol's data, labels, network and schedule."""
    c.data.name = dataset
    c.noise_kind = "human"
    c.noise = 0.0
    c.label_key = LABEL_SETS.get(label_set, label_set)
    c.model = "resnet34"
    return c


def get_config(label_set: str = "worse"):
    """CE on CIFAR-10N with the chosen label set."""
    c = cifar_n(default.get_config(), label_set, "cifar10_n")
    c.method = "CE"
    c.weight_decay = 5e-4
    c.epochs = 100
    c.lr_milestones = (61,)  # 0.1 in epochs 1-60, 0.01 in 61-100 (the CIFAR-N code's alpha_plan)
    return c
