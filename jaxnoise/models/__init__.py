"""Networks used by Arazo et al. (2019), in Flax NNX, NHWC, float32.

- `PreActResNet18`: the CIFAR network of the published code, `PreResNet.ResNet18` in
  PaulAlbert31/LabelNoiseCorrection (what its `train.py` builds): 3x3 stem conv *followed by
  BN + ReLU*, four stages of two pre-activation blocks (widths w, 2w, 4w, 8w; strides 1, 2, 2, 2),
  *no* final BN/ReLU, average pool, linear head; every block's shortcut starts from the
  pre-activated input (see `PreActBlock`). `stem_bn=False, shortcut="input"` gives Kuang Liu's
  pytorch-cifar `PreActResNet18` (no stem BN/ReLU, raw input on identity shortcuts).
- `ResNet50`: torchvision's `resnet50` (v1.5: stride on the 3x3 conv of the bottleneck), the
  network of the TinyImageNet experiment (ImageNet-pretrained, backbone frozen, head trained).
  Module and attribute names follow torchvision so that `load_resnet50_weights` /
  `save_resnet50_weights` map every variable to its `state_dict` key by path.
- `SmallCNN`: a few conv+BN+ReLU layers for quick starts and tests on tiny images.

Every model takes `train` as a call argument and forwards `use_running_average=not train` to each
BatchNorm, so one merged model can run a train-mode and an eval-mode forward inside one jitted step.
BatchNorm is PyTorch's `nn.BatchNorm2d` (momentum 0.1, eps 1e-5, two-pass batch variance), including
the *unbiased* batch variance in the running average (flax's own BatchNorm keeps the biased one; the
factor n/(n-1), n = batch*height*width values per channel, is 1.0005 for batch 128 on the 4x4 maps
of PreActResNet18's last stage). Eval mode normalises with the running statistics, so this matters.

Functional use (the train step)::

    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)

    def loss_fn(params):
        model = nnx.merge(graphdef, params, batch_stats, copy=True)
        logits = model(x, train=True)                     # batch stats, updates running averages
        return loss(logits), nnx.state(model, nnx.BatchStat)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
    "MODEL_NAMES",
    "PreActBlock",
    "PreActResNet18",
    "SmallCNN",
    "Bottleneck",
    "ResNet50",
    "create_model",
    "head_name",
    "trainable_filter",
    "load_resnet50_weights",
    "load_torch_state",
    "torch_state",
    "save_resnet50_weights",
]

log = logging.getLogger(__name__)

MODEL_NAMES: tuple[str, ...] = ("preact_resnet18", "resnet34", "small_cnn", "resnet50", "linear",
                                 "mlp")  # fmt: skip

# Mixed precision: "bfloat16" runs convolutions, matmuls and activations in bf16; parameters,
# BatchNorm statistics and everything after the logits (losses, mixture fit) stay float32.
COMPUTE_DTYPES: tuple[str, ...] = ("float32", "bfloat16")

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


# --------------------------------------------------------------------------------------------
# PreActResNet18 (the network of Arazo et al.'s CIFAR experiments)
# --------------------------------------------------------------------------------------------


SHORTCUTS = ("preactivated", "input")


class PreActBlock(nnx.Module):
    """Pre-activation basic block: relu(bn1(x)) -> conv1 -> relu(bn2) -> conv2, plus shortcut.

    The shortcut always starts from the pre-activated input ``relu(bn1(x))``: through a 1x1
    projection when the shape changes, else as it is (``shortcut="preactivated"``, the published
    code's ``PreResNet.PreActBlock``, whose empty ``nn.Sequential`` shortcut is applied to the
    pre-activated input). ``shortcut="input"`` adds the raw ``x`` on identity blocks instead (He et
    al.'s identity mapping, as in Kuang Liu's pytorch-cifar).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, *,
                 shortcut: str = "preactivated", rngs: nnx.Rngs):  # fmt: skip
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        self.identity_from_input = shortcut == "input"
        self.bn1 = _bn(in_planes, rngs=rngs)
        self.conv1 = _conv(in_planes, planes, 3, stride, rngs=rngs)
        self.bn2 = _bn(planes, rngs=rngs)
        self.conv2 = _conv(planes, planes, 3, 1, rngs=rngs)
        # 1x1 projection (no BN) of the *pre-activated* input when the shape changes.
        self.shortcut = (
            _conv(in_planes, planes, 1, stride, rngs=rngs)
            if stride != 1 or in_planes != planes
            else None
        )

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """(B, H, W, in_planes) -> (B, H/stride, W/stride, planes)."""
        out = jax.nn.relu(self.bn1(x, use_running_average=not train))
        if self.shortcut is not None:
            shortcut = self.shortcut(out)
        else:
            shortcut = x if self.identity_from_input else out
        out = self.conv1(out)
        out = self.conv2(jax.nn.relu(self.bn2(out, use_running_average=not train)))
        return out + shortcut


class PreActResNet18(nnx.Module):
    """PreActResNet18 of Arazo et al.'s code: stem conv+BN+ReLU, 8 pre-act blocks, pool, linear."""

    def __init__(
        self,
        num_classes: int,
        *,
        width: int = 64,
        in_channels: int = 3,
        stem_bn: bool = True,
        shortcut: str = "preactivated",
        rngs: nnx.Rngs,
    ):
        self.conv1 = _conv(in_channels, width, 3, 1, rngs=rngs)
        # LabelNoiseCorrection's PreResNet.ResNet adds bn1 + ReLU after the stem conv; Kuang Liu's
        # PreActResNet (stem_bn=False) feeds the stem conv straight into the first block.
        self.bn1 = _bn(width, rngs=rngs) if stem_bn else None
        in_planes = width
        layers = []
        for i, stride in enumerate((1, 2, 2, 2)):
            planes = width * 2**i
            blocks = []
            for s in (stride, 1):
                blocks.append(PreActBlock(in_planes, planes, s, shortcut=shortcut, rngs=rngs))
                in_planes = planes
            layers.append(nnx.List(blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = _linear(in_planes, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """(B, H, W, C) float32 -> logits (B, num_classes)."""
        out = self.conv1(x)
        if self.bn1 is not None:
            out = jax.nn.relu(self.bn1(out, use_running_average=not train))
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                out = block(out, train=train)
        # The published code uses F.avg_pool2d(out, 4): the same as a global pool on 32x32 input.
        return self.linear(_global_avg_pool(out))


# --------------------------------------------------------------------------------------------
# ResNet-34 for 32x32 inputs (the CIFAR-N paper's network: Wei et al. 2022, Kuang Liu's ResNet)
# --------------------------------------------------------------------------------------------


class BasicBlock(nnx.Module):
    """Post-activation basic block: relu(bn1(conv1 x)) -> bn2(conv2), plus the shortcut
    (identity, or 1x1 conv + BN when the shape changes), then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, *, rngs: nnx.Rngs):
        self.conv1 = _conv(in_planes, planes, 3, stride, rngs=rngs)
        self.bn1 = _bn(planes, rngs=rngs)
        self.conv2 = _conv(planes, planes, 3, 1, rngs=rngs)
        self.bn2 = _bn(planes, rngs=rngs)
        project = stride != 1 or in_planes != planes
        self.shortcut = _conv(in_planes, planes, 1, stride, rngs=rngs) if project else None
        self.shortcut_bn = _bn(planes, rngs=rngs) if project else None

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """(B, H, W, in_planes) -> (B, H/stride, W/stride, planes)."""
        ra = not train
        out = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ra))
        out = self.bn2(self.conv2(out), use_running_average=ra)
        if self.shortcut is not None:
            x = self.shortcut_bn(self.shortcut(x), use_running_average=ra)
        return jax.nn.relu(out + x)


class ResNet34(nnx.Module):
    """3x3 stem conv + BN + ReLU, basic blocks (3, 4, 6, 3) at widths w..8w, pool, linear."""

    def __init__(self, num_classes: int, *, width: int = 64, in_channels: int = 3,
                 blocks: tuple[int, ...] = (3, 4, 6, 3), rngs: nnx.Rngs):  # fmt: skip
        self.conv1 = _conv(in_channels, width, 3, 1, rngs=rngs)
        self.bn1 = _bn(width, rngs=rngs)
        in_planes, layers = width, []
        for i, n in enumerate(blocks):
            planes, stage = width * 2**i, []
            for s in (1 if i == 0 else 2,) + (1,) * (n - 1):
                stage.append(BasicBlock(in_planes, planes, s, rngs=rngs))
                in_planes = planes
            layers.append(nnx.List(stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers  # torch's names
        self.linear = _linear(in_planes, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """(B, H, W, C) float32 -> logits (B, num_classes)."""
        out = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                out = block(out, train=train)
        return self.linear(_global_avg_pool(out))


# --------------------------------------------------------------------------------------------
# SmallCNN (quick starts, tests)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# ResNet-50 (torchvision naming and init)
# --------------------------------------------------------------------------------------------


class Bottleneck(nnx.Module):
    """torchvision Bottleneck (v1.5): 1x1 -> 3x3 (stride) -> 1x1 (x4), each + BN; ReLU after add."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, *, rngs: nnx.Rngs):
        out_planes = planes * self.expansion
        kinit = torchvision_conv_init
        self.conv1 = _conv(in_planes, planes, 1, rngs=rngs, kernel_init=kinit)
        self.bn1 = _bn(planes, rngs=rngs)
        self.conv2 = _conv(planes, planes, 3, stride, rngs=rngs, kernel_init=kinit)
        self.bn2 = _bn(planes, rngs=rngs)
        self.conv3 = _conv(planes, out_planes, 1, rngs=rngs, kernel_init=kinit)
        self.bn3 = _bn(out_planes, rngs=rngs)
        # torchvision: downsample = Sequential(conv1x1(stride), BatchNorm2d) -> keys downsample.0/1
        self.downsample = (
            nnx.List(
                [
                    _conv(in_planes, out_planes, 1, stride, rngs=rngs, kernel_init=kinit),
                    _bn(out_planes, rngs=rngs),
                ]
            )
            if stride != 1 or in_planes != out_planes
            else None
        )

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """(B, H, W, in_planes) -> (B, H/stride, W/stride, 4*planes)."""
        ura = not train
        out = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
        out = jax.nn.relu(self.bn2(self.conv2(out), use_running_average=ura))
        out = self.bn3(self.conv3(out), use_running_average=ura)
        if self.downsample is not None:
            conv, bn = self.downsample
            x = bn(conv(x), use_running_average=ura)
        return jax.nn.relu(out + x)


class ResNet50(nnx.Module):
    """torchvision resnet50: 7x7/2 stem, BN, ReLU, 3x3/2 maxpool, bottleneck stages [3, 4, 6, 3]."""

    def __init__(self, num_classes: int, *, in_channels: int = 3, width: int = 64, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(
            in_channels,
            width,
            (7, 7),
            strides=2,
            padding=((3, 3), (3, 3)),
            use_bias=False,
            kernel_init=torchvision_conv_init,
            rngs=rngs,
        )
        self.bn1 = _bn(width, rngs=rngs)
        in_planes = width
        layers = []
        for i, (n_blocks, stride) in enumerate(zip((3, 4, 6, 3), (1, 2, 2, 2))):
            planes = width * 2**i
            blocks = []
            for j in range(n_blocks):
                blocks.append(Bottleneck(in_planes, planes, stride if j == 0 else 1, rngs=rngs))
                in_planes = planes * Bottleneck.expansion
            layers.append(nnx.List(blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        # torchvision leaves fc at nn.Linear's default init.
        self.fc = _linear(in_planes, num_classes, rngs=rngs)

    def features(self, x: jax.Array, *, train: bool) -> jax.Array:
        """(B, H, W, C) float32 -> pooled backbone features (B, 32 * width)."""
        ura = not train
        out = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
        # MaxPool2d(3, stride 2, padding 1); flax pads with -inf like PyTorch.
        out = nnx.max_pool(out, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                out = block(out, train=train)
        return _global_avg_pool(out)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """(B, H, W, C) float32 -> logits (B, num_classes)."""
        return self.fc(self.features(x, train=train))


# --------------------------------------------------------------------------------------------
# Factory and optimizer filter
# --------------------------------------------------------------------------------------------

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
    cls = {"preact_resnet18": PreActResNet18, "resnet34": ResNet34, "small_cnn": SmallCNN,
           "resnet50": ResNet50, "linear": LinearHead, "mlp": MLPHead}[name]  # fmt: skip
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


# --------------------------------------------------------------------------------------------
# torchvision resnet50 state_dict <-> ResNet50, through a local .npz
# --------------------------------------------------------------------------------------------

# Last path element of an NNX variable -> suffix of the torchvision key.
_TORCH_SUFFIX = {
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
}


def _to_torch(arr: np.ndarray) -> np.ndarray:
    """NNX layout -> PyTorch layout: conv HWIO -> OIHW, linear (in, out) -> (out, in)."""
    if arr.ndim == 4:
        return arr.transpose(3, 2, 0, 1)
    if arr.ndim == 2:
        return arr.T
    return arr


def _from_torch(arr: np.ndarray) -> np.ndarray:
    """PyTorch layout -> NNX layout: conv OIHW -> HWIO, linear (out, in) -> (in, out)."""
    if arr.ndim == 4:
        return arr.transpose(2, 3, 1, 0)
    if arr.ndim == 2:
        return arr.T
    return arr


def _torch_keyed_state(model: nnx.Module) -> dict[str, tuple[tuple[Any, ...], nnx.Variable]]:
    """PyTorch state_dict key -> (NNX path, Variable) for every Param/BatchStat of `model`.

    Module paths map one to one (list indices as numbers), except a block's `shortcut`
    projection and its BatchNorm (`shortcut_bn`, BasicBlock), which the published code wraps in
    an nn.Sequential (`shortcut.0.weight`, `shortcut.1.weight`).
    """
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model)):
        mods = [str(p) for p in path[:-1]]
        if mods[-1] == "shortcut":
            mods.append("0")
        elif mods[-1] == "shortcut_bn":
            mods[-1:] = ["shortcut", "1"]
        out[".".join(mods) + "." + _TORCH_SUFFIX[path[-1]]] = (path, var)
    return out


def torch_state(model: nnx.Module) -> dict[str, np.ndarray]:
    """`model`'s parameters and running statistics as a PyTorch state_dict (numpy arrays)."""
    return {k: _to_torch(np.asarray(var[...])) for k, (_, var) in _torch_keyed_state(model).items()}


def load_torch_state(model: nnx.Module, state: dict[str, np.ndarray]) -> None:
    """Load a PyTorch state_dict (as numpy arrays, PyTorch layouts) into `model` in place.

    For PreActResNet18 these are the names of the published code's `PreResNet.ResNet18`, so
    its checkpoints load as they are. Every key must match in name and shape
    (`*.num_batches_tracked` is ignored); otherwise ValueError lists the problems.
    """
    keyed = _torch_keyed_state(model)
    given = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    problems = [f"missing {k}" for k in sorted(set(keyed) - set(given))]
    problems += [f"unexpected {k}" for k in sorted(set(given) - set(keyed))]
    for k in sorted(set(keyed) & set(given)):
        got, want = _from_torch(np.asarray(given[k])).shape, tuple(keyed[k][1].shape)
        if got != want:
            problems.append(f"{k}: shape {got} (as NNX layout), model has {want}")
    if problems:
        raise ValueError("cannot load the state_dict: " + "; ".join(problems[:10]))
    flat = [(p, var.replace(jnp.asarray(_from_torch(np.asarray(given[k])), dtype=var.dtype)))
            for k, (p, var) in keyed.items()]  # fmt: skip
    nnx.update(model, nnx.from_flat_state(flat))


def _bn_counter_keys(keys: Sequence[str]) -> list[str]:
    """The `num_batches_tracked` keys torchvision has beside every BatchNorm's running_mean."""
    return [
        k[: -len("running_mean")] + "num_batches_tracked"
        for k in keys
        if k.endswith("running_mean")
    ]


def save_resnet50_weights(model: ResNet50, path: str) -> None:
    """Write `model` to `path` as an .npz of torchvision resnet50 state_dict names and layouts.

    The file also holds `*.num_batches_tracked` (0, int64) so that it loads into torchvision with
    `load_state_dict(strict=True)`; `path` is written as given (no '.npz' is appended).
    """
    arrays = torch_state(model)
    for k in _bn_counter_keys(list(arrays)):
        arrays[k] = np.zeros((), np.int64)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_resnet50_weights(model: ResNet50, path: str) -> None:
    """Load a torchvision-named resnet50 .npz (OIHW convs) into `model` in place.

    Every backbone key must be present with the right shape, and no other key may appear
    (`*.num_batches_tracked` is accepted and ignored); otherwise ValueError lists the problems and
    nothing is changed. The head (`fc.weight`, `fc.bias`) is loaded only if its shape matches the
    model's (same num_classes); if only its number of classes differs it is left at init.
    """
    with np.load(path) as f:
        ckpt = {k: f[k] for k in f.files}
    state = _torch_keyed_state(model)
    expected = set(state)
    ignorable = set(_bn_counter_keys(list(state)))
    missing = sorted(expected - set(ckpt))
    unexpected = sorted(set(ckpt) - expected - ignorable)

    head_keys = ("fc.weight", "fc.bias")
    mismatched = []
    for k in sorted(expected & set(ckpt)):
        want = tuple(state[k][1].shape)
        got = _from_torch(ckpt[k]).shape
        if got != want:
            mismatched.append((k, got, want))
    # A head that differs only in its number of classes is skipped, not an error.
    head_only = [m for m in mismatched if m[0] in head_keys]
    load_head = not head_only
    if head_only:
        in_features = state["fc.weight"][1].shape[0]
        fc_w = ckpt.get("fc.weight")
        if fc_w is not None and fc_w.ndim == 2 and fc_w.shape[1] == in_features:
            mismatched = [m for m in mismatched if m[0] not in head_keys]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys: {missing}")
        if unexpected:
            parts.append(f"unexpected keys: {unexpected}")
        if mismatched:
            parts.append(
                "shape mismatches (key, file shape as HWIO/(in,out), model shape): "
                + str(mismatched)
            )
        raise ValueError(f"cannot load {path} into ResNet50: " + "; ".join(parts))

    new_flat = []
    for k, (p, var) in state.items():
        if k in head_keys and not load_head:
            continue
        new_flat.append((p, var.replace(jnp.asarray(_from_torch(ckpt[k]), dtype=var.dtype))))
    nnx.update(model, nnx.from_flat_state(new_flat))
    if load_head:
        log.info("loaded %s: backbone and head (fc)", path)
    else:
        log.info(
            "loaded %s: backbone only; head (fc) left at init (file has %d classes, model %d)",
            path,
            ckpt["fc.weight"].shape[0],
            state["fc.weight"][1].shape[1],
        )


# --------------------------------------------------------------------------------------------
# Heads on frozen features (data.source="features" or data.extractor): (B, D) -> logits
# --------------------------------------------------------------------------------------------

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

    def __init__(self, num_classes: int, *, width: int = 0, in_channels: int,
                 hidden: Sequence[int] = (512,), rngs: nnx.Rngs):  # fmt: skip
        del width  # the hidden sizes are `hidden`
        sizes = (in_channels, *(int(h) for h in hidden))
        self.hidden = nnx.List(
            [
                nnx.Linear(a, b, kernel_init=he_normal_init,
                           bias_init=jax.nn.initializers.zeros, rngs=rngs)  # fmt: skip
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
