"""Randomness: every key derives from (seed, epoch, step) inside jit, so nothing random needs
checkpointing, a resumed run draws what an uninterrupted one does, and every process of a
multi-host job draws the same values."""

from __future__ import annotations

import jax


def epoch_keys(seed: int, epoch) -> jax.Array:
    """(permutation key, tracking key, step key) of an epoch (host int or traced)."""
    return jax.random.split(jax.random.fold_in(jax.random.key(seed), epoch), 3)
