"""The on-device transforms of a batch: augmentation (crop after padding, flip) and normalisation.

Pure ``jax.numpy``, jit-friendly, with explicit PRNG keys; a (B, D) batch of features is passed
through :func:`augment` untouched and normalised per feature.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def augment(images: jax.Array, key: jax.Array, *, padding: int = 4, flip: bool = True) -> jax.Array:
    """Per-sample random crop after zero padding and random horizontal flip (B,H,W,C)."""
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    images = jnp.asarray(images)
    if images.ndim == 2:  # (B, D) features: nothing to crop or flip
        if padding or flip:
            raise ValueError("feature vectors cannot be cropped or flipped (padding=0, flip=False)")
        return images
    b, h, w, c = images.shape
    crop_key, flip_key = jax.random.split(key)
    out = images
    if padding > 0:
        p = padding
        padded = jnp.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
        offsets = jax.random.randint(crop_key, (b, 2), 0, 2 * p + 1)
        out = jax.vmap(lambda img, o: lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c)))(
            padded, offsets
        )
    if flip:
        do_flip = jax.random.bernoulli(flip_key, 0.5, (b,))
        out = jnp.where(do_flip[:, None, None, None], out[:, :, ::-1, :], out)
    return out


def normalize(images: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """Map uint8 images to float32 (x / 255 - mean) / std, per channel; (B, D) features to
    (x - mean) / std, per feature."""
    x = jnp.asarray(images).astype(jnp.float32)
    if x.ndim != 2:
        x = x / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
