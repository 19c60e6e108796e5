"""CIFAR-10, DivideMix with AugDesc-WS (Nishi et al., CVPR 2021), strong warm-up (their "SAW").

python main.py --config configs/cifar10_dividemix_augdesc_ws.py --config.noise=0.2

configs/cifar10_dividemix.py with the augmentation of Nishi et al.'s AugDesc-WS.SAW presets:
co-guessing and co-refinement on weak views (crop + flip), MixMatch of strong views (crop +
flip + AutoAugment's CIFAR-10 policy, ``jaxnoise/strong_augment.py``), strong warm-up views.
Their presets also change the schedule per noise level (their epochs 0..num_epochs, lr / 10 from
their 0-based milestone; here epochs = num_epochs + 1 and the milestone + 1): 20% and asymmetric
40%: 300 / 150 (this file: 301 / 151); 50%: 300 / 200; 80%: 350 / 200; 90%: 350 / 250 with each
warm-up view strong with probability 0.25:

python main.py --config configs/cifar10_dividemix_augdesc_ws.py --config.noise=0.5 \\
    --config.lr_milestones='(201,)'
python main.py --config configs/cifar10_dividemix_augdesc_ws.py --config.noise=0.8 \\
    --config.epochs=351 --config.lr_milestones='(201,)'
python main.py --config configs/cifar10_dividemix_augdesc_ws.py --config.noise=0.9 \\
    --config.epochs=351 --config.lr_milestones='(251,)' --config.dividemix.warmup_strong=0.25
"""

from jaxnoise.configs import cifar10_dividemix


def get_config():
    """DivideMix, AugDesc-WS views, strong warm-up."""
    c = cifar10_dividemix.get_config()
    c.dividemix.views = "augdesc-ws"
    c.dividemix.warmup_strong = 1.0
    return c
