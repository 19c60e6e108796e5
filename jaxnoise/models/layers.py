"""The layers every network is built from, with PyTorch's initialisations and BatchNorm.

``_conv`` (bias-free, PyTorch's symmetric padding), ``_linear`` and ``_bn`` use PyTorch's
default inits (``torch_default_kernel_init``, ``torch_default_bias_init``) or torchvision's
ResNet conv init (``torchvision_conv_init``). ``BatchNorm`` is PyTorch's ``nn.BatchNorm2d``
(momentum 0.1, eps 1e-5, two-pass batch variance), including the *unbiased* batch variance in
the running average (flax's own BatchNorm keeps the biased one; the factor n/(n-1), n =
batch*height*width values per channel, is 1.0005 for batch 128 on the 4x4 maps of
PreActResNet18's last stage). Eval mode normalises with the running statistics, so this
matters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# BatchNorm as torch.nn.BatchNorm2d: running = 0.9 * running + 0.1 * batch; eps 1e-5.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# PyTorch's default init of nn.Conv2d / nn.Linear weights: kaiming_uniform_(a=sqrt(5)), i.e.
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)); fan_in = in_channels * kh * kw (flax's fan_in of HWIO too).
torch_default_kernel_init = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# torchvision ResNet convs: kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, 2/fan_out),
# fan_out = out_channels * kh * kw; not truncated.
torchvision_conv_init = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_default_bias_init(fan_in: int) -> Callable[..., jax.Array]:
    """PyTorch's default bias init for `fan_in` inputs: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / np.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _conv(
    in_ch: int,
    out_ch: int,
    kernel: int,
    stride: int = 1,
    *,
    rngs: nnx.Rngs,
    kernel_init: Callable[..., jax.Array] = torch_default_kernel_init,
) -> nnx.Conv:
    """Bias-free conv with PyTorch's symmetric padding (kernel // 2), not XLA's 'SAME'."""
    pad = kernel // 2
    return nnx.Conv(
        in_ch,
        out_ch,
        (kernel, kernel),
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=kernel_init,
        rngs=rngs,
    )


class BatchNorm(nnx.BatchNorm):
    """torch.nn.BatchNorm2d over the last axis: the running variance takes the *unbiased* batch one.

    Train mode normalises with the batch mean and (biased, two-pass) variance and moves the running
    statistics by 10%; eval mode normalises with the running statistics. Variables and their names
    (scale, bias, mean, var) are those of nnx.BatchNorm.
    """

    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        """Normalise x (..., C) with batch statistics (train) or running statistics (eval)."""
        out_dtype, x = x.dtype, x.astype(jnp.float32)  # statistics in float32 under bf16
        if use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x, axes)
            var = jnp.mean(jnp.square(x - mean), axes)  # two-pass, as PyTorch
            n = x.size // x.shape[-1]
            m = self.momentum
            unbiased = var * (n / max(n - 1, 1))
            self.mean[...] = jax.lax.stop_gradient(m * self.mean[...] + (1 - m) * mean)
            self.var[...] = jax.lax.stop_gradient(m * self.var[...] + (1 - m) * unbiased)
        y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
        return (y * self.scale[...] + self.bias[...]).astype(out_dtype)


def _bn(num_features: int, *, rngs: nnx.Rngs) -> BatchNorm:
    """BatchNorm with torch.nn.BatchNorm2d's defaults (scale 1, bias 0, momentum 0.1, eps 1e-5)."""
    return BatchNorm(num_features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, rngs=rngs)


def _linear(in_features: int, out_features: int, *, rngs: nnx.Rngs) -> nnx.Linear:
    """Linear layer with PyTorch's default nn.Linear init."""
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=torch_default_kernel_init,
        bias_init=torch_default_bias_init(in_features),
        rngs=rngs,
    )


def _global_avg_pool(x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, C)."""
    return jnp.mean(x, axis=(1, 2))
