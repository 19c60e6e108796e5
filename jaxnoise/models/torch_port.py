"""PyTorch ``state_dict`` <-> NNX models, and torchvision resnet50 weights through a local .npz.

``torch_state`` / ``load_torch_state`` map every Param and BatchStat to its PyTorch key by
module path (layouts transposed: conv HWIO <-> OIHW, linear (in, out) <-> (out, in)), so the
published code's ``PreResNet.ResNet18`` checkpoints load into ``PreActResNet18`` as they are.
``save_resnet50_weights`` / ``load_resnet50_weights`` write and read torchvision's resnet50
names and layouts (the TinyImageNet experiment's pretrained backbone), with
``num_batches_tracked`` for ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxnoise.models.resnets import ResNet50

log = logging.getLogger(__name__)

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
    flat = [
        (p, var.replace(jnp.asarray(_from_torch(np.asarray(given[k])), dtype=var.dtype)))
        for k, (p, var) in keyed.items()
    ]
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
