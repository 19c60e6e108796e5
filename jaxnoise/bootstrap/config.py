"""``config.bootstrap``: the fields of the bootstrap methods (CE, M, M-DYR-H, M-DYR-S, MD-DYR-SH),
their defaults (the published CIFAR settings) and their checks. Imports no jax."""

from __future__ import annotations

from typing import Any

import ml_collections

from jaxnoise import choices
from jaxnoise import fields as f

# The published code starts bootstrapping (M-DYR-H/S) at epoch lr_milestones[0] + 5 + 1 (106 for
# milestones (100, 250)): 6 epochs at the lowered learning rate before the targets change.
BOOTSTRAP_AFTER_MILESTONE = 6


def defaults() -> ml_collections.ConfigDict:
    """The block's fields, documented inline (``python main.py --help`` shows these comments)."""
    b = ml_collections.ConfigDict()
    b.batch_size = 128
    b.drop_last = False  # False: the last, smaller batch of an epoch is trained too, as the
    # published code does (391 steps per CIFAR-10 epoch, the last of 80 images); True: dropped
    b.steps_per_call = 1  # K train steps per dispatch (jax.lax.scan); results equal K = 1
    b.noise_model = "bmm"  # "bmm" | "gmm": the mixture fitted to the per-sample losses
    b.noisy_component = "initial"  # "initial" (original code) | "max_mean" (extension)
    b.em_iters = 10  # EM iterations of the mixture fit
    b.mixture_scope = "global"  # "global": one mixture over all samples (published) | "class":
    # one per (noisy) class, fitted together (instance-dependent / asymmetric noise)
    b.loss_signal = "epoch"  # what the mixture fits: "epoch" (this epoch's loss, published) |
    # "ema" (moving average over epochs) | "mean_k" (mean of the last signal_k epochs, as
    # DivideMix at 90% noise); accumulated signals need posterior_source="epoch"
    b.signal_k = 5  # loss_signal="mean_k": epochs averaged
    b.signal_momentum = 0.9  # loss_signal="ema": s = m * s + (1 - m) * loss
    b.posterior_lookup = True  # batch posteriors from the original's 100-bin lookup table
    b.posterior_source = "batch"  # "batch": per-step eval forward (published) | "epoch": from
    # the end-of-epoch tracking pass (one forward fewer per step)
    b.track_augment = True  # augment the tracking pass (crop + flip) as the published code
    # does (its tracking loader uses the training transform); False: losses of the clean images
    b.mixup_alpha = 32.0  # static mixup: delta ~ Beta(alpha, alpha)
    b.mixup_draw = "none"  # dynamic mixup weight: "none" | "beta" | "binomial" (extensions)
    b.binomial_n = 10000  # n of the Binomial draw
    b.reg_weight = 1.0  # eta, weight of the class-balance regulariser
    b.reg_prior_classes = 0  # prior 1/K per class in the regulariser; 0: K = number of classes
    # (the original's M-DYR-S always passes K = 10, also on CIFAR-100; cifar100_m_dyr_s.py does)
    b.loss_pair_weight = "published"  # "published": as the original code (plain mixup,
    # M-DYR-H and M-DYR-S weight the two targets by delta; MD-DYR-SH by 0.5, and by a fresh
    # Beta(32, 32) draw in its dynamic-mixup-only epochs) | "mix": by the mixing weight (eq. 8)
    b.start_epoch = 0  # M-DYR-H/S: bootstrapping from this epoch (mixup before);
    # 0: lr_milestones[0] + 6 as the published code (106 for milestones (100, 250))
    b.dynamic_start_epoch = 106  # MD-DYR-SH: dynamic mixup from this epoch (a constant in the
    # published code, not derived from the milestones)
    b.soft_to_hard_start_epoch = 111  # MD-DYR-SH: soft-to-hard bootstrapping from this epoch
    b.temperature_epochs = 89  # temperature goes linearly 1 -> final over this many epochs
    b.final_temperature = 0.001
    return b


CHECKS: dict[str, f.Check] = {
    "batch_size": f.integer(1),
    "drop_last": f.boolean,
    "steps_per_call": f.integer(1, 1024),
    "noise_model": f.choice(choices.NOISE_MODELS),
    "noisy_component": f.choice(choices.NOISY_COMPONENTS),
    "em_iters": f.integer(1),
    "mixture_scope": f.choice(choices.MIXTURE_SCOPES),
    "loss_signal": f.choice(choices.LOSS_SIGNALS),
    "signal_k": f.integer(1, 1000),
    "signal_momentum": f.real(0.0, 1.0, hi_open=True),
    "posterior_lookup": f.boolean,
    "posterior_source": f.choice(choices.POSTERIOR_SOURCES),
    "track_augment": f.boolean,
    "mixup_alpha": f.real(0.0),
    "mixup_draw": f.choice(choices.MIXUP_DRAWS),
    "binomial_n": f.integer(1),
    "reg_weight": f.real(0.0),
    "reg_prior_classes": f.integer(0),
    "loss_pair_weight": f.choice(choices.PAIR_WEIGHTS),
    "start_epoch": f.integer(0),
    "dynamic_start_epoch": f.integer(1),
    "soft_to_hard_start_epoch": f.integer(1),
    "temperature_epochs": f.integer(1),
    "final_temperature": f.real(0.0, lo_open=True),
}


def validate(c: dict[str, Any]) -> None:
    """Check the block (``c``: the whole config, flat: ``"bootstrap.batch_size"``, ...)."""
    f.check_all(c, CHECKS, "bootstrap.")
    epochs, ms, method = c["epochs"], tuple(c["lr_milestones"]), c["method"]
    if method in ("M-DYR-H", "M-DYR-S"):  # the bootstrapping phase must start inside the run
        s = c["bootstrap.start_epoch"]
        if s == 0 and not ms:
            f.fail(
                "bootstrap.start_epoch",
                s,
                "an epoch >= 2 when lr_milestones is empty (0 derives it from the first milestone)",
            )
        s = s or ms[0] + BOOTSTRAP_AFTER_MILESTONE
        if not (2 <= s <= epochs):
            f.fail(
                "bootstrap.start_epoch",
                s,
                f"an epoch in [2, epochs={epochs}] (bootstrapping "
                "needs a mixture fitted after at least one epoch of mixup warm-up, and must "
                f"start before the run ends; 0 derives it as lr_milestones[0] + "
                f"{BOOTSTRAP_AFTER_MILESTONE})",
            )
    if method == "MD-DYR-SH":
        d, s = c["bootstrap.dynamic_start_epoch"], c["bootstrap.soft_to_hard_start_epoch"]
        if not (2 <= d <= s <= epochs):
            f.fail(
                "bootstrap.dynamic_start_epoch / bootstrap.soft_to_hard_start_epoch",
                (d, s),
                f"2 <= dynamic_start_epoch <= soft_to_hard_start_epoch <= epochs={epochs} "
                "(at least one epoch of mixup warm-up first)",
            )
    if c["bootstrap.loss_signal"] != "epoch" and c["bootstrap.posterior_source"] != "epoch":
        f.fail(
            "bootstrap.posterior_source",
            c["bootstrap.posterior_source"],
            "'epoch' when "
            f"loss_signal={c['bootstrap.loss_signal']!r} (the mixture is fitted to an "
            "accumulated per-sample loss, so the posteriors are the tracked samples', not one "
            "step's batch)",
        )
    if c["bootstrap.mixup_draw"] != "none" and method != "MD-DYR-SH":
        f.fail(
            "bootstrap.mixup_draw", c["bootstrap.mixup_draw"], "'none' unless method='MD-DYR-SH'"
        )


def validate_against_data(config: Any, num_train: int, num_devices: int) -> None:
    """Checks that need the dataset's size (before anything is compiled)."""
    b = config.bootstrap.batch_size
    if b % num_devices:
        f.fail(
            "bootstrap.batch_size",
            b,
            f"a multiple of the number of devices ({num_devices}) for data parallelism",
        )
    if b > num_train:
        f.fail("bootstrap.batch_size", b, f"at most the number of training samples ({num_train})")
