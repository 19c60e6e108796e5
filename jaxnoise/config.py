"""Config validation (before any data is loaded or anything compiled) and method phases."""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxnoise import noise as noise_lib

METHODS = ("CE", "M", "M-DYR-H", "M-DYR-S", "MD-DYR-SH")
CHOICES: dict[str, tuple[str, ...]] = {
    "method": METHODS,
    "noise_model": ("bmm", "gmm"),
    "noisy_component": ("initial", "max_mean"),
    "posterior_source": ("batch", "epoch"),
    "mixup_draw": ("none", "beta", "binomial"),
    "loss_pair_weight": ("published", "mix"),
    "optimizer": ("sgd", "adam"),
    "noise_kind": noise_lib.KINDS,
    "model": ("preact_resnet18", "small_cnn", "resnet50"),
    "data.source": ("tfds", "folder", "digits"),
}


def _get(config: Any, dotted: str) -> Any:
    obj = config
    for part in dotted.split("."):
        obj = obj[part]
    return obj


def _fail(field: str, value: Any, allowed: str) -> None:
    raise ValueError(f"config.{field} = {value!r} is not allowed: {allowed}")


def validate(config: Any) -> None:
    """Check every field's type, range and consistency; raise ValueError naming the field."""
    for field, allowed in CHOICES.items():
        value = _get(config, field)
        if value not in allowed:
            _fail(field, value, "one of " + ", ".join(repr(a) for a in allowed))
    noise = config.noise
    if not isinstance(noise, (int, float)) or not (0.0 <= float(noise) <= 1.0):
        _fail("noise", noise, "a number in [0, 1]")
    if config.noise_kind == "human" and not config.label_file:
        _fail("label_file", config.label_file, "a label file path when noise_kind='human'")
    for field in ("epochs", "batch_size", "width", "eval_batch_size", "em_iters",
                  "log_every_steps", "keep_checkpoints", "binomial_n"):  # fmt: skip
        value = _get(config, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            _fail(field, value, "a positive integer")
    for field in ("lr", "final_temperature"):
        value = _get(config, field)
        if not isinstance(value, (int, float)) or not value > 0:
            _fail(field, value, "a positive number")
    for field in ("weight_decay", "reg_weight", "mixup_alpha"):
        value = _get(config, field)
        if not isinstance(value, (int, float)) or value < 0:
            _fail(field, value, "a non-negative number")
    if not (0.0 <= config.momentum < 1.0):
        _fail("momentum", config.momentum, "a number in [0, 1)")
    if not (0.0 < config.lr_gamma <= 1.0):
        _fail("lr_gamma", config.lr_gamma, "a number in (0, 1]")
    ms = tuple(config.lr_milestones)
    if any((not isinstance(m, int)) or m < 1 or m >= config.epochs for m in ms) or list(
        ms
    ) != sorted(set(ms)):
        _fail(
            "lr_milestones",
            ms,
            f"strictly increasing whole epochs in [1, epochs={config.epochs})",
        )
    if config.data.crop_padding < 0:
        _fail("data.crop_padding", config.data.crop_padding, "an integer >= 0")
    if config.data.subset_per_class < 0:
        _fail("data.subset_per_class", config.data.subset_per_class, "an integer >= 0")
    if config.data.source == "folder" and not config.data.root:
        _fail("data.root", config.data.root, "an image-folder path when data.source='folder'")
    if config.data.source == "tfds" and not config.data.name:
        _fail("data.name", config.data.name, "a tfds dataset name when data.source='tfds'")
    if config.weights and config.model != "resnet50":
        _fail("weights", config.weights, "only with model='resnet50'")
    if config.freeze_backbone and not config.weights:
        _fail("freeze_backbone", True, "only with pretrained weights (config.weights)")
    if config.temperature_epochs < 1:
        _fail("temperature_epochs", config.temperature_epochs, "an integer >= 1")
    # Schedule consistency: a method's phase must start inside the run.
    if config.method in ("M-DYR-H", "M-DYR-S"):
        b = config.bootstrap_start_epoch
        if not (2 <= b <= config.epochs):
            _fail(
                "bootstrap_start_epoch",
                b,
                f"an epoch in [2, epochs={config.epochs}] (bootstrapping needs a mixture fitted "
                "after at least one epoch, and must start before the run ends)",
            )
    if config.method == "MD-DYR-SH":
        d, s = config.dynamic_start_epoch, config.soft_to_hard_start_epoch
        if not (2 <= d <= s <= config.epochs):
            _fail(
                "dynamic_start_epoch / soft_to_hard_start_epoch",
                (d, s),
                f"2 <= dynamic_start_epoch <= soft_to_hard_start_epoch <= epochs={config.epochs}",
            )
    if config.mixup_draw != "none" and config.method != "MD-DYR-SH":
        _fail("mixup_draw", config.mixup_draw, "'none' unless method='MD-DYR-SH'")


@dataclasses.dataclass(frozen=True)
class Phase:
    """What one epoch's train step does (static: each distinct phase is one compiled step)."""

    mixup: str  # "none" | "static" | "dynamic"
    bootstrap: str  # "none" | "hard" | "soft"
    regularize: bool
    pair_weight: str  # "mix" | "half" | "beta": how the two targets of a pair are weighted

    @property
    def needs_posteriors(self) -> bool:
        return self.bootstrap != "none" or self.mixup == "dynamic"

    @property
    def needs_clean_logits(self) -> bool:
        return self.bootstrap != "none"

    @property
    def name(self) -> str:
        parts = {"none": "CE", "static": "mixup", "dynamic": "dynamic-mixup"}[self.mixup]
        if self.bootstrap != "none":
            parts += f"+{self.bootstrap}-bootstrap"
        return parts


def phase_for_epoch(config: Any, epoch: int) -> Phase:
    """The train-step phase of a 1-based epoch, following the published schedules."""
    m = config.method
    mix = "mix" if config.loss_pair_weight == "mix" else None
    if m == "CE":
        return Phase("none", "none", False, "mix")
    if m == "M":
        return Phase("static", "none", False, "mix")
    if m in ("M-DYR-H", "M-DYR-S"):
        if epoch < config.bootstrap_start_epoch:
            return Phase("static", "none", False, "mix")
        if m == "M-DYR-H":
            return Phase("static", "hard", config.reg_weight > 0, "mix")
        return Phase("static", "soft", config.reg_weight > 0, mix or "half")
    # MD-DYR-SH
    if epoch < config.dynamic_start_epoch:
        return Phase("static", "none", False, "mix")
    if epoch < config.soft_to_hard_start_epoch:
        # The original weights the two targets by a fresh Beta(32, 32) draw in this phase.
        return Phase("dynamic", "none", False, mix or "beta")
    return Phase("dynamic", "soft", config.reg_weight > 0, mix or "half")


def temperature_for_epoch(config: Any, epoch: int) -> float:
    """Soft-to-hard temperature: linear from 1 to final over temperature_epochs, then held."""
    k = min(max(epoch - config.soft_to_hard_start_epoch, 0), config.temperature_epochs - 1)
    if config.temperature_epochs == 1:
        return float(config.final_temperature)
    return 1.0 + (config.final_temperature - 1.0) * k / (config.temperature_epochs - 1)


def lr_for_epoch(config: Any, epoch: int) -> float:
    """Step learning rate: lr times gamma for every milestone already passed."""
    passed = sum(1 for m in config.lr_milestones if epoch > m)
    return float(config.lr) * float(config.lr_gamma) ** passed
