"""``config.dividemix``: DivideMix's fields, their defaults (the official ``Train_cifar.py``'s),
their checks, and the paper's per-setting lambda_u and p_threshold. Imports no jax.

Epochs are 1-based as for every method: ``epochs`` is the number of epochs (the official
``num_epochs = 300`` runs epochs 0..300, i.e. ``epochs = 301``), warm-up is epochs
``1 .. warm_up`` (official ``epoch < warm_up``, counted from 0), and the learning rate follows the
shared ``lr`` / ``lr_milestones`` (official: /10 from its epoch 150, i.e. ``lr_milestones =
(151,)``).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from jaxnoise import choices
from jaxnoise import fields as f


def defaults() -> ml_collections.ConfigDict:
    """The block's fields, documented inline (``python main.py --help`` shows these comments)."""
    d = ml_collections.ConfigDict()
    d.warm_up = 10  # cross-entropy warm-up of both networks in epochs 1..warm_up
    # (official: 10 on CIFAR-10, 30 on CIFAR-100)
    d.p_threshold = 0.5  # clean probability above which a sample is labelled (official
    # default; -1: the paper's, 0.6 at 90% noise and 0.5 otherwise, 0.5 for human labels)
    d.lambda_u = 25.0  # weight of the unlabelled loss after its ramp-up (official default;
    # -1: the paper's table for the dataset, noise kind and level; human labels (no noise
    # level) need an explicit value: the paper picks from {0, 25, 50, 150} on a validation set)
    d.lambda_u_rampup = 16.0  # lambda_u ramps up linearly over this many epochs after warm-up
    d.sharpen_temperature = 0.5  # T of co-guessing / co-refinement sharpening
    d.mixmatch_alpha = 4.0  # MixMatch lam ~ Beta(alpha, alpha), lam = max(lam, 1 - lam)
    d.batch_size = 64  # B labelled + B unlabelled samples per step; warm-up batch 2B
    d.loss_history = 5  # at noise >= 0.9 the GMM fits the mean of the last this many
    # epochs' min-max-normalised losses (official: at r = 0.9, 5 epochs)
    d.views = "weak"  # "augdesc-ws" (Nishi et al. 2021): targets from weak views, MixMatch of
    # strong views (crop, flip, AutoAugment's CIFAR-10 policy on the device)
    d.warmup_strong = 0.0  # probability of a strong warm-up view (AugDesc's SAW: 1)
    return d


CHECKS: dict[str, f.Check] = {
    "warm_up": f.integer(1),
    "p_threshold": f.auto_or(f.real(0.0, 1.0, hi_open=True)),
    "lambda_u": f.auto_or(f.real(0.0)),
    "lambda_u_rampup": f.real(0.0, lo_open=True),
    "sharpen_temperature": f.real(0.0, lo_open=True),
    "mixmatch_alpha": f.real(0.0, lo_open=True),
    "batch_size": f.integer(1),
    "loss_history": f.integer(1, 1000),
    "views": f.choice(choices.DIVIDEMIX_VIEWS),
    "warmup_strong": f.real(0.0, 1.0),
}

# The paper (Sec. 4.1) chooses lambda_u from {0, 25, 50, 150} on a validation set and tau = 0.5
# (0.6 at 90% noise). The per-setting lambda_u below equal, for every noisy setting, those of
# presets.json in KentoNishi/Augmentation-for-LNL (Nishi et al., CVPR 2021), whose DivideMix runs
# reproduce the paper; so do its p_threshold (0.6 at 90%) and average_loss (5 at 90%). The 0%
# rows (no noise) are not in that file: they repeat the 20% row.
LAMBDA_U = {  # (dataset, noise kind, noise level) -> lambda_u
    **{
        ("cifar10", "symmetric", r): v
        for r, v in ((0.0, 0.0), (0.2, 0.0), (0.5, 25.0), (0.8, 25.0), (0.9, 50.0))
    },
    ("cifar10", "asymmetric", 0.4): 0.0,
    **{
        ("cifar100", "symmetric", r): v
        for r, v in ((0.0, 25.0), (0.2, 25.0), (0.5, 150.0), (0.8, 150.0), (0.9, 150.0))
    },
}  # fmt: skip  (a table: one row per dataset)
HISTORY_NOISE = 0.9  # from this noise level the GMM fits the mean of the last loss_history
# epochs' normalised losses (the official code: r == 0.9)
_TABLE_NAME = {"cifar10_n": "cifar10", "cifar100_n": "cifar100", "digits": "cifar10"}


def _flat(c: Any) -> dict[str, Any]:
    return c if isinstance(c, dict) else f.flatten(c.to_dict())


def lambda_u(config: Any) -> float:
    """``dividemix.lambda_u``, or (-1) the paper's value for the dataset, noise kind and level."""
    c = _flat(config)
    if float(c["dividemix.lambda_u"]) != f.AUTO:
        return float(c["dividemix.lambda_u"])
    if c["noise_kind"] == "human":
        f.fail(
            "dividemix.lambda_u",
            -1,
            "a number >= 0, set explicitly for noise_kind='human': "
            "DivideMix's paper gives lambda_u for synthetic noise levels only (it picks it "
            "from {0, 25, 50, 150} on a validation set; the official code's default is 25)",
        )
    name = _TABLE_NAME.get(c["data.name"], c["data.name"])
    key = (name, c["noise_kind"], round(float(c["noise"]), 6))
    if key not in LAMBDA_U:
        f.fail(
            "dividemix.lambda_u",
            -1,
            f"a number >= 0: the paper gives no lambda_u for "
            f"{key[1]} noise {key[2]:g} on {name} (its table: "
            + ", ".join(f"{k}/{r:g}" for d, k, r in LAMBDA_U if d == name)
            + ")",
        )
    return LAMBDA_U[key]


def p_threshold(config: Any) -> float:
    """``dividemix.p_threshold``, or (-1) the paper's: 0.6 at 90% noise, else 0.5 (also for
    noise_kind='human', which has no noise level: ``config.noise`` is not read then)."""
    c = _flat(config)
    if float(c["dividemix.p_threshold"]) != f.AUTO:
        return float(c["dividemix.p_threshold"])
    if c["noise_kind"] == "human":
        return 0.5
    return 0.6 if float(c["noise"]) >= HISTORY_NOISE else 0.5


def loss_history(config: Any) -> int:
    """Epochs of normalised losses the GMM averages (0: one epoch's, below 90% noise)."""
    c = _flat(config)
    return int(c["dividemix.loss_history"]) if float(c["noise"]) >= HISTORY_NOISE else 0


def validate(c: dict[str, Any]) -> None:
    """Check the block (``c``: the whole config, flat: ``"dividemix.warm_up"``, ...)."""
    f.check_all(c, CHECKS, "dividemix.")
    features = c["data.source"] == "features" or c["data.extractor"] != "none"
    for field, weak in (("views", "'weak'"), ("warmup_strong", "0")):
        if features and c[f"dividemix.{field}"] not in ("weak", 0, 0.0):
            f.fail(
                f"dividemix.{field}",
                c[f"dividemix.{field}"],
                f"{weak} on feature vectors (strong augmentation is for images)",
            )
    if c["dividemix.warm_up"] >= c["epochs"]:
        f.fail(
            "dividemix.warm_up",
            c["dividemix.warm_up"],
            f"fewer epochs than epochs="
            f"{c['epochs']} (warm-up is epochs 1..warm_up, then the semi-supervised epochs)",
        )
    lambda_u(c)  # an "auto" lambda_u must be in the paper's table


def validate_against_data(config: Any, num_train: int, num_devices: int) -> None:
    """Checks that need the dataset's size (before anything is compiled)."""
    b = config.dividemix.batch_size
    if b % num_devices:
        f.fail("dividemix.batch_size", b, f"a multiple of the number of devices ({num_devices})")
