"""The bootstrap methods' schedule: which ``Phase`` the train step runs in an epoch, and the
soft-to-hard temperature, as the published code steps them (epochs are 1-based, as everywhere).

A ``Phase`` is static (each distinct phase compiles one train step) and complete: it carries every
choice the step makes, and combinations the methods never use cannot be built. The temperature
(like the learning rate, ``jaxnoise.schedule``) is read inside the compiled step from the step's
epoch (``temperature``), so nothing changes on the host between epochs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from jaxnoise.schedule import per_epoch

MIXUPS = ("none", "static", "dynamic")
BOOTSTRAPS = ("none", "hard", "soft")
PAIR_WEIGHTS = ("mix", "half", "beta")
POSTERIOR_SOURCES = ("batch", "epoch")

# The published code starts bootstrapping (M-DYR-H/S) at epoch lr_milestones[0] + 5 + 1 (106 for
# milestones (100, 250)): 6 epochs at the lowered learning rate before the targets change.
BOOTSTRAP_AFTER_MILESTONE = 6


@dataclasses.dataclass(frozen=True)
class Phase:
    """What one epoch's train step does."""

    mixup: str = "none"  # "none" | "static" (delta ~ Beta) | "dynamic" (weights from posteriors)
    bootstrap: str = "none"  # "none" | "hard" | "soft": targets (1 - w) y + w z
    regularize: bool = False  # the class-balance regulariser (with bootstrapping)
    pair_weight: str = "mix"  # "mix" | "half" | "beta": how the two targets of a pair are weighted
    # The published hard bootstrapping computes the batch posteriors after *both* train-mode
    # forwards (clean and mixed), so their BatchNorm running statistics already hold this step's
    # two updates; soft bootstrapping and dynamic mixup compute them before the mixed forward.
    posteriors_after_mixed: bool = False
    posterior_source: str = "batch"  # "batch": a per-step eval forward | "epoch": tracking pass

    def __post_init__(self) -> None:
        for field, allowed in (
            ("mixup", MIXUPS),
            ("bootstrap", BOOTSTRAPS),
            ("pair_weight", PAIR_WEIGHTS),
            ("posterior_source", POSTERIOR_SOURCES),
        ):
            if getattr(self, field) not in allowed:
                raise ValueError(f"Phase.{field} = {getattr(self, field)!r}; allowed: {allowed}")
        if self.bootstrap != "none" and self.mixup == "none":
            raise ValueError("Phase: bootstrapping is defined on mixed batches (mixup='none')")
        if self.regularize and self.bootstrap == "none":
            raise ValueError("Phase: the class-balance regulariser goes with bootstrapping")
        if self.posteriors_after_mixed and (self.bootstrap != "hard" or self.mixup != "static"):
            raise ValueError(
                "Phase: posteriors_after_mixed is M-DYR-H's (static mixup, hard bootstrapping)"
            )
        if self.pair_weight == "beta" and (self.mixup != "dynamic" or self.bootstrap != "none"):
            raise ValueError("Phase: the 'beta' pair weight is MD-DYR-SH's dynamic-mixup phase")

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


def bootstrap_start_epoch(config: Any) -> int:
    """First bootstrapping epoch of M-DYR-H/S: as configured, or lr_milestones[0] + 6 if 0."""
    if config.bootstrap.start_epoch:
        return int(config.bootstrap.start_epoch)
    return int(config.lr_milestones[0]) + BOOTSTRAP_AFTER_MILESTONE


def phase_for_epoch(config: Any, epoch: int) -> Phase:
    """The train-step phase of a 1-based epoch, following the published schedules."""
    m, b = config.method, config.bootstrap
    mix = "mix" if b.loss_pair_weight == "mix" else None
    reg = b.reg_weight > 0
    common = dict(posterior_source=b.posterior_source)
    if m == "CE":
        return Phase("none", **common)
    if m == "M" or (m in ("M-DYR-H", "M-DYR-S") and epoch < bootstrap_start_epoch(config)):
        return Phase("static", **common)
    if m == "M-DYR-H":
        return Phase("static", "hard", reg, posteriors_after_mixed=True, **common)
    if m == "M-DYR-S":  # the original's M-DYR-S weights the two targets by delta, as M-DYR-H
        return Phase("static", "soft", reg, **common)
    if m != "MD-DYR-SH":
        raise ValueError(f"unknown method {m!r}")
    if epoch < b.dynamic_start_epoch:
        return Phase("static", **common)
    if epoch < b.soft_to_hard_start_epoch:
        # The original weights the two targets by a fresh Beta(32, 32) draw in this phase.
        return Phase("dynamic", pair_weight=mix or "beta", **common)
    return Phase("dynamic", "soft", reg, mix or "half", **common)


def epoch_of_step(count, steps_per_epoch: int):
    """The 1-based epoch of train step ``count`` (0-based, host int or traced)."""
    return count // steps_per_epoch + 1


def temperature_for_epoch(config: Any, epoch: int) -> float:
    """Soft-to-hard temperature of MD-DYR-SH: linear from 1 to final over temperature_epochs,
    then held (one step per epoch from soft_to_hard_start_epoch); 1 for every other method."""
    b = config.bootstrap
    if config.method != "MD-DYR-SH":
        return 1.0
    k = min(max(epoch - b.soft_to_hard_start_epoch, 0), b.temperature_epochs - 1)
    if b.temperature_epochs == 1:
        return float(b.final_temperature)
    return 1.0 + (b.final_temperature - 1.0) * k / (b.temperature_epochs - 1)


def temperature(config: Any, epoch) -> jnp.ndarray:
    """``temperature_for_epoch`` of a traced epoch (float32)."""
    return per_epoch(temperature_for_epoch, config)[jnp.minimum(epoch, config.epochs + 1)]
