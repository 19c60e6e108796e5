"""The residual networks: PreAct ResNet-18 and ResNet-34 (CIFAR), ResNet-50 (torchvision).

- ``PreActResNet18``: the CIFAR network of the published code, ``PreResNet.ResNet18`` in
  PaulAlbert31/LabelNoiseCorrection (what its ``train.py`` builds): 3x3 stem conv *followed by
  BN + ReLU*, four stages of two pre-activation blocks (widths w, 2w, 4w, 8w; strides 1, 2, 2,
  2), *no* final BN/ReLU, average pool, linear head; every block's shortcut starts from the
  pre-activated input (see ``PreActBlock``). ``stem_bn=False, shortcut="input"`` gives Kuang
  Liu's pytorch-cifar ``PreActResNet18`` (no stem BN/ReLU, raw input on identity shortcuts).
- ``ResNet34``: the CIFAR-N paper's network for 32x32 inputs (Wei et al. 2022, Kuang Liu's
  ResNet), post-activation ``BasicBlock``s.
- ``ResNet50``: torchvision's ``resnet50`` (v1.5: stride on the 3x3 conv of the ``Bottleneck``),
  the network of the TinyImageNet experiment (ImageNet-pretrained, backbone frozen, head
  trained). Module and attribute names follow torchvision so that ``torch_port`` maps every
  variable to its ``state_dict`` key by path.
"""

from __future__ import annotations

import jax
from flax import nnx

from jaxnoise import choices
from jaxnoise.models.layers import _bn, _conv, _global_avg_pool, _linear, torchvision_conv_init

# --------------------------------------------------------------------------------------------
# PreActResNet18 (the network of Arazo et al.'s CIFAR experiments)
# --------------------------------------------------------------------------------------------


SHORTCUTS = choices.SHORTCUTS


class PreActBlock(nnx.Module):
    """Pre-activation basic block: relu(bn1(x)) -> conv1 -> relu(bn2) -> conv2, plus shortcut.

    The shortcut always starts from the pre-activated input ``relu(bn1(x))``: through a 1x1
    projection when the shape changes, else as it is (``shortcut="preactivated"``, the published
    code's ``PreResNet.PreActBlock``, whose empty ``nn.Sequential`` shortcut is applied to the
    pre-activated input). ``shortcut="input"`` adds the raw ``x`` on identity blocks instead (He et
    al.'s identity mapping, as in Kuang Liu's pytorch-cifar).
    """

    def __init__(
        self,
        in_planes: int,
        planes: int,
        stride: int = 1,
        *,
        shortcut: str = "preactivated",
        rngs: nnx.Rngs,
    ):
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

    def __init__(
        self,
        num_classes: int,
        *,
        width: int = 64,
        in_channels: int = 3,
        blocks: tuple[int, ...] = (3, 4, 6, 3),
        rngs: nnx.Rngs,
    ):
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
