"""Heads on frozen features (``data.source="features"`` or ``data.extractor``): (B, D) -> logits.

``LinearHead`` (the seed's last-layer-only setting) and ``MLPHead`` (ReLU hidden layers with He
init, ``he_normal_init``); both end in a linear layer named ``out`` with PyTorch's default init.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from jaxnoise.models.layers import _linear

# He et al. (2015) init for layers followed by a ReLU: N(0, 2 / fan_in).
he_normal_init = jax.nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class LinearHead(nnx.Module):
    """A linear classifier on feature vectors (the seed's last-layer-only setting)."""

    def __init__(self, num_classes: int, *, width: int = 0, in_channels: int, rngs: nnx.Rngs):
        del width  # no hidden layer
        self.out = _linear(in_channels, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """(B, D) float32 -> logits (B, num_classes)."""
        return self.out(x.reshape(x.shape[0], -1))


class MLPHead(nnx.Module):
    """ReLU MLP on feature vectors: hidden layers of the given sizes (He init), linear output."""

    def __init__(
        self,
        num_classes: int,
        *,
        width: int = 0,
        in_channels: int,
        hidden: Sequence[int] = (512,),
        rngs: nnx.Rngs,
    ):
        del width  # the hidden sizes are `hidden`
        sizes = (in_channels, *(int(h) for h in hidden))
        self.hidden = nnx.List(
            [
                nnx.Linear(
                    a, b, kernel_init=he_normal_init, bias_init=jax.nn.initializers.zeros, rngs=rngs
                )
                for a, b in zip(sizes[:-1], sizes[1:])
            ]
        )
        self.out = _linear(sizes[-1], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """(B, D) float32 -> logits (B, num_classes)."""
        x = x.reshape(x.shape[0], -1)
        for layer in self.hidden:
            x = jax.nn.relu(layer(x))
        return self.out(x)
