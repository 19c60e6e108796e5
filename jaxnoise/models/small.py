"""``SmallCNN``: a few conv+BN+ReLU layers for quick starts and tests on tiny images."""

from __future__ import annotations

import jax
from flax import nnx

from jaxnoise.models.layers import _bn, _conv, _global_avg_pool, _linear


class SmallCNN(nnx.Module):
    """Three conv3x3+BN+ReLU layers (widths w, 2w, 4w; strides 1, 2, 2), global avg pool, linear."""

    def __init__(self, num_classes: int, *, width: int = 32, in_channels: int = 3, rngs: nnx.Rngs):
        chans = (in_channels, width, 2 * width, 4 * width)
        self.convs = nnx.List(
            [_conv(chans[i], chans[i + 1], 3, s, rngs=rngs) for i, s in enumerate((1, 2, 2))]
        )
        self.bns = nnx.List([_bn(c, rngs=rngs) for c in chans[1:]])
        self.head = _linear(chans[-1], num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """(B, H, W, C) float32 -> logits (B, num_classes)."""
        for conv, bn in zip(self.convs, self.bns):
            x = jax.nn.relu(bn(conv(x), use_running_average=not train))
        return self.head(_global_avg_pool(x))
