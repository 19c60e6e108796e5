"""Networks used by Arazo et al. (2019), in Flax NNX, NHWC, float32: names, factory, filters.

``create_model(name, ...)`` builds one of ``MODEL_NAMES``: the residual networks (``resnets``:
PreActResNet18, ResNet34, ResNet50), ``SmallCNN`` (``small``), and the heads on frozen features
(``heads``: LinearHead, MLPHead), all made of ``layers`` (PyTorch's inits and BatchNorm);
``torch_port`` maps them to and from PyTorch state dicts. ``trainable_filter`` selects what the
optimizer trains, ``set_compute_dtype`` switches to mixed precision.

Every model takes ``train`` as a call argument and forwards ``use_running_average=not train`` to
each BatchNorm, so one merged model can run a train-mode and an eval-mode forward inside one
jitted step.

Functional use (the train step)::

    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)

    def loss_fn(params):
        model = nnx.merge(graphdef, params, batch_stats, copy=True)
        logits = model(x, train=True)                     # batch stats, updates running averages
        return loss(logits), nnx.state(model, nnx.BatchStat)
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from jaxnoise import choices
from jaxnoise.models.heads import LinearHead, MLPHead, he_normal_init
from jaxnoise.models.layers import (
    BN_EPSILON,
    BN_MOMENTUM,
    BatchNorm,
    torch_default_bias_init,
    torch_default_kernel_init,
    torchvision_conv_init,
)
from jaxnoise.models.resnets import (
    SHORTCUTS,
    BasicBlock,
    Bottleneck,
    PreActBlock,
    PreActResNet18,
    ResNet34,
    ResNet50,
)
from jaxnoise.models.small import SmallCNN
from jaxnoise.models.torch_port import (
    load_resnet50_weights,
    load_torch_state,
    save_resnet50_weights,
    torch_state,
)

__all__ = [
    "BN_EPSILON", "BN_MOMENTUM", "COMPUTE_DTYPES", "MODEL_NAMES", "SHORTCUTS", "BasicBlock",
    "BatchNorm", "Bottleneck", "LinearHead", "MLPHead", "PreActBlock", "PreActResNet18",
    "ResNet34", "ResNet50", "SmallCNN", "create_model", "he_normal_init", "head_name",
    "load_resnet50_weights", "load_torch_state", "save_resnet50_weights", "set_compute_dtype",
    "torch_default_bias_init", "torch_default_kernel_init", "torch_state",
    "torchvision_conv_init", "trainable_filter",
]  # fmt: skip

MODEL_NAMES: tuple[str, ...] = choices.MODELS

# Mixed precision: "bfloat16" runs convolutions, matmuls and activations in bf16; parameters,
# BatchNorm statistics and everything after the logits (losses, mixture fit) stay float32.
COMPUTE_DTYPES: tuple[str, ...] = choices.COMPUTE_DTYPES

_HEADS: dict[str, str] = {
    "preact_resnet18": "linear", "resnet34": "linear", "small_cnn": "head", "resnet50": "fc",
    "linear": "out", "mlp": "out",
}  # fmt: skip


def _check_name(name: str) -> None:
    """Raise ValueError for a model name outside MODEL_NAMES."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; allowed names: {', '.join(MODEL_NAMES)}")


def create_model(
    name: str, num_classes: int, *, width: int, in_channels: int, rngs: nnx.Rngs, **options: Any
) -> nnx.Module:
    """Build the model called `name` (one of MODEL_NAMES); `options` go to that model only."""
    _check_name(name)
    cls = {
        "preact_resnet18": PreActResNet18,
        "resnet34": ResNet34,
        "small_cnn": SmallCNN,
        "resnet50": ResNet50,
        "linear": LinearHead,
        "mlp": MLPHead,
    }[name]
    return cls(num_classes, width=width, in_channels=in_channels, rngs=rngs, **options)


def set_compute_dtype(model: nnx.Module, compute_dtype: str) -> nnx.Module:
    """Run `model`'s convolutions and linear layers in `compute_dtype` (one of COMPUTE_DTYPES).

    Parameters keep their float32 storage (each layer casts its kernel per call) and BatchNorm
    computes its statistics in float32, so only activations and matmuls change precision."""
    dtype = jnp.dtype(compute_dtype)
    modules = nnx.iter_modules(model) if hasattr(nnx, "iter_modules") else model.iter_modules()
    for _, module in modules:
        if isinstance(module, (nnx.Conv, nnx.Linear)):
            module.dtype = None if dtype == jnp.float32 else dtype
    return model


def head_name(name: str) -> str:
    """Attribute name of the final linear layer of model `name` ('linear', 'head' or 'fc')."""
    _check_name(name)
    return _HEADS[name]


def trainable_filter(name: str, freeze_backbone: bool) -> nnx.filterlib.Filter:
    """NNX filter of the variables the optimizer trains: every nnx.Param, or only the head's.

    With `freeze_backbone` (the TinyImageNet setting: pretrained ResNet-50, only the last linear
    layer trained) the filter is `All(Param, PathContains(<head attribute>))`. Use it as

        optimizer = nnx.Optimizer(model, tx, wrt=trainable_filter(name, freeze))

    or, in a functional step, split the trainable part off and differentiate only w.r.t. it:

        graphdef, trainable, frozen, stats = nnx.split(
            model, trainable_filter(name, freeze), nnx.Param, nnx.BatchStat)
        def loss_fn(trainable):
            m = nnx.merge(graphdef, trainable, frozen, stats, copy=True)
            ...

    The filter only concerns Params; whether the frozen backbone's BatchNorm running statistics
    move is decided by the `train` flag of the forward pass, not by this filter.
    """
    if not freeze_backbone:
        _check_name(name)
        return nnx.Param
    return nnx.All(nnx.Param, nnx.PathContains(head_name(name)))
