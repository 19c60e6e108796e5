"""The learning rate of an epoch, shared by every method (epochs are 1-based: epoch 1 is the first).

``lr_for_epoch`` is the published step schedule: ``config.lr`` times ``config.lr_gamma`` for every
milestone ``m <= epoch`` in ``config.lr_milestones`` (PyTorch's MultiStepLR stepped at the start
of every epoch, as both published codes do). ``lr`` reads the same values from a float32 table
by a traced epoch, so a compiled step computes the rate of its own position and nothing changes
on the host between epochs. A method's own schedules (phases, temperatures, ramps) live in its
package.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp


def lr_for_epoch(config: Any, epoch: int) -> float:
    """Step learning rate of a 1-based epoch: lr times gamma for every milestone m <= epoch.

    With milestones (100, 250) epochs 1-99 run at lr, epoch 100 already at lr * gamma.
    """
    passed = sum(1 for m in config.lr_milestones if epoch >= m)
    return float(config.lr) * float(config.lr_gamma) ** passed


def per_epoch(fn: Callable[[Any, int], float], config: Any) -> jnp.ndarray:
    """float32 table of ``fn(config, epoch)`` for epochs 0 .. epochs + 1 (computed in float64
    on the host, so in-graph values equal the host's exactly)."""
    return jnp.asarray([fn(config, e) for e in range(config.epochs + 2)], jnp.float32)


def lr(config: Any, epoch) -> jnp.ndarray:
    """``lr_for_epoch`` of a traced (or host) epoch (float32; epochs past the last hold)."""
    return per_epoch(lr_for_epoch, config)[jnp.clip(epoch, 0, config.epochs + 1)]
