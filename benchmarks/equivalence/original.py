"""The published code (PaulAlbert31/LabelNoiseCorrection), imported from a checkout, and torch glue.

Nothing of the original is copied here: its modules are imported from ``--orig-dir``. The only
additions are made in memory and leave its code unchanged:

- a width argument for ``PreResNet.ResNet18``: the same ``ResNet`` / ``PreActBlock`` modules with
  base width w instead of 64 (``original_resnet18``);
- its random draws (``np.random.beta`` for the mixup weight, ``torch.randperm`` for the pairs)
  replaced by given values (``given_draws``), so both codes use the same lambda and permutation;
- a stand-in for ``torchvision`` if it cannot be imported: ``utils.py`` imports it at the top but
  none of the functions compared here uses it.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn


def import_original(orig_dir: str):
    """(PreResNet, utils) modules of the original checkout at ``orig_dir``."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # not installed, or built for another torch: only its names are needed
        stub = types.ModuleType("torchvision")
        stub.datasets = types.ModuleType("torchvision.datasets")
        stub.transforms = types.ModuleType("torchvision.transforms")
        stub.models = types.ModuleType("torchvision.models")
        sys.modules.update(
            {
                "torchvision": stub,
                "torchvision.datasets": stub.datasets,
                "torchvision.transforms": stub.transforms,
                "torchvision.models": stub.models,
            }
        )
    sys.path.insert(0, orig_dir)
    try:
        return importlib.import_module("PreResNet"), importlib.import_module("utils")
    finally:
        sys.path.remove(orig_dir)


def original_resnet18(PreResNet, width: int, num_classes: int = 10) -> nn.Module:
    """``PreResNet.ResNet18`` with base width ``width`` (64 = the original): its own modules."""
    net = PreResNet.ResNet.__new__(PreResNet.ResNet)
    nn.Module.__init__(net)
    net.in_planes = width
    net.conv1 = PreResNet.conv3x3(3, width)
    net.bn1 = nn.BatchNorm2d(width)
    net.layer1 = net._make_layer(PreResNet.PreActBlock, width, 2, stride=1)
    net.layer2 = net._make_layer(PreResNet.PreActBlock, 2 * width, 2, stride=2)
    net.layer3 = net._make_layer(PreResNet.PreActBlock, 4 * width, 2, stride=2)
    net.layer4 = net._make_layer(PreResNet.PreActBlock, 8 * width, 2, stride=2)
    net.linear = nn.Linear(8 * width, num_classes)
    return net


def state_numpy(net: nn.Module) -> dict[str, np.ndarray]:
    """The state_dict as numpy arrays (without the num_batches_tracked counters)."""
    return {
        k: v.detach().cpu().numpy().copy()
        for k, v in net.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }


def to_torch_images(images: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 NHWC -> float NCHW as ToTensor() + Normalize(mean, std)."""
    # contiguous NCHW: a permuted (channels-last) input crashed oneDNN's conv backward here
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().float().div(255)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


class Loader:
    """The part of a DataLoader the original train functions use: iteration and .dataset."""

    def __init__(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]):
        self.batches = list(batches)
        self.dataset = [None] * sum(len(b[1]) for b in self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


@contextlib.contextmanager
def given_draws(lams: Sequence[float], perms: Sequence[np.ndarray]):
    """Make np.random.beta and torch.randperm return the given values, in order."""
    lam_it, perm_it = iter(list(lams)), iter(list(perms))

    def beta(a, b, size=None):
        del a, b, size
        return float(next(lam_it))

    def randperm(n, *args, **kwargs):
        p = next(perm_it)
        assert len(p) == n, (len(p), n)
        return torch.as_tensor(np.asarray(p), dtype=torch.int64)

    old_beta, old_randperm = np.random.beta, torch.randperm
    np.random.beta, torch.randperm = beta, randperm
    try:
        yield
    finally:
        np.random.beta, torch.randperm = old_beta, old_randperm
