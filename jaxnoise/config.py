"""Config validation (before any data is loaded or anything compiled). Imports no jax.

A config has the shared fields at the top (``configs/default.py``: data, label noise, model,
optimizer and schedule, devices, logging) and the block of its method: ``config.bootstrap``
(CE, M, M-DYR-H, M-DYR-S, MD-DYR-SH; ``jaxnoise/bootstrap/config.py``) or ``config.dividemix``
(``jaxnoise/dividemix/config.py``), each with its own defaults and checks. :func:`validate` is
total: for any value of any field (wrong type, NaN, huge, a tuple where a number belongs, a
misspelt, missing or another method's field) it either returns or raises ``ValueError`` with a
message that names the field, the value and what is allowed. It checks, in order: the method and
its block, the set of fields, each shared field's type and range, that local files the config
names exist, the consistency of the shared fields, then the method's block.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import os
from typing import Any

from jaxnoise import choices
from jaxnoise import fields as f
from jaxnoise import labels as labels_lib  # label files: numpy only
from jaxnoise.bootstrap import config as bootstrap_config
from jaxnoise.dividemix import config as dividemix_config
from jaxnoise.fields import ConfigError, flatten  # noqa: F401  (re-exported)

# Each method's block: its name in the config, the methods it serves, its module.
BLOCKS = {
    "bootstrap": (choices.METHODS_BOOTSTRAP, bootstrap_config),
    "dividemix": (choices.METHODS_DIVIDEMIX, dividemix_config),
}

# The shared fields (configs/default.py documents them) and their checks.
SHARED: dict[str, f.Check] = {
    "seed": f.integer(0, f.SEED_MAX),
    "data.source": f.choice(choices.DATA_SOURCES),
    "data.name": f.string,
    "data.root": f.string,
    "data.data_dir": f.string,
    "data.cache_dir": f.string,
    "data.subset_per_class": f.integer(0),
    "data.crop_padding": f.integer(0),
    "data.flip": f.boolean,
    "data.normalization": f.choice(choices.NORMALIZATIONS),
    "data.features": f.string,
    "data.test_features": f.string,
    "data.extractor": f.choice(choices.EXTRACTORS),
    "data.extractor_weights": f.string,
    "data.extractor_batch": f.integer(1),
    "data.kmeans_centroids": f.integer(2),
    "data.kmeans_patches": f.integer(2),
    "data.kmeans_iters": f.integer(1),
    "data.kmeans_eps": f.real(0.0, lo_open=True),
    "noise": f.real(0.0, 1.0),
    "noise_kind": f.choice(choices.NOISE_KINDS),
    "label_file": f.string,
    "label_key": f.string,
    "label_order": f.choice(choices.LABEL_ORDERS),
    "noise_seed": f.integer(0, f.SEED_MAX),
    "model": f.choice(choices.MODELS),
    "width": f.integer(1),
    "shortcut": f.choice(choices.SHORTCUTS),
    "compute_dtype": f.choice(choices.COMPUTE_DTYPES),
    "weights": f.string,
    "freeze_backbone": f.boolean,
    "mlp_hidden": f.sizes,
    "method": f.choice(choices.METHODS),
    "epochs": f.integer(1),
    "optimizer": f.choice(choices.OPTIMIZERS),
    "lr": f.real(0.0, lo_open=True),
    "momentum": f.real(0.0, 1.0, hi_open=True),
    "weight_decay": f.real(0.0),
    "lr_milestones": f.milestones,
    "lr_gamma": f.real(0.0, 1.0, lo_open=True),
    "mesh.num_devices": f.integer(0),
    "distributed.auto": f.boolean,
    "distributed.coordinator_address": f.string,
    "distributed.num_processes": f.integer(1),
    "distributed.process_id": f.integer(0),
    "eval_batch_size": f.integer(1),
    "log_every_steps": f.integer(1),
    "log_every_seconds": f.real(0.0),
    "keep_checkpoints": f.integer(1),
    "compilation_cache": f.cache_folder,  # jaxnoise/compile_cache.py
    "tensorboard": f.choice(choices.TENSORBOARD),  # jaxnoise/writers.py
}

# Fields of the flat config of jaxnoise before the per-method blocks, and where they went.
RENAMED = {
    **{k: f"bootstrap.{k}" for k in bootstrap_config.CHECKS if k != "start_epoch"},
    "bootstrap_start_epoch": "bootstrap.start_epoch",
    **{f"dividemix_{k}": f"dividemix.{k}" for k in ("warm_up", "batch", "loss_history", "views",
                                                    "warmup_strong")},
    **{k: f"dividemix.{k}" for k in ("p_threshold", "lambda_u", "lambda_u_rampup",
                                     "sharpen_temperature", "mixmatch_alpha")},
}  # fmt: skip
RENAMED["dividemix_batch"] = "dividemix.batch_size"


def block_of(method: str) -> str:
    """The config block of a method: "bootstrap" or "dividemix"."""
    return next(name for name, (methods, _) in BLOCKS.items() if method in methods)


def checks_of(method: str) -> dict[str, f.Check]:
    """The check of every field of a config of this method (shared, then its block's), flat; a
    choice's check carries its names as ``.allowed``."""
    name = block_of(method)
    return {**SHARED, **{f"{name}.{k}": v for k, v in BLOCKS[name][1].CHECKS.items()}}


def fields_of(method: str) -> list[str]:
    """Every field of a config of this method (shared, then its block's), flat."""
    return list(checks_of(method))


def foreign_field(name: str, method: str) -> str | None:
    """Why ``name`` is not a field of ``method``'s config, if another method owns it."""
    new = RENAMED.get(name)
    if new is not None and new.split(".")[0] == block_of(method):
        return f"config.{name} is now config.{new} (the fields of each method are in its block)"
    owner = (new or name).split(".")[0]
    if owner in BLOCKS and owner != block_of(method):
        methods = ", ".join(BLOCKS[owner][0])
        return (
            f"config.{new or name} belongs to {methods} (config.{owner}), not to "
            f"method={method!r}, whose fields are in config.{block_of(method)}"
        )
    return None


def _as_flat_dict(config: Any) -> dict[str, Any]:
    if hasattr(config, "to_dict"):  # ml_collections.ConfigDict (resolves FieldReferences)
        return flatten(config.to_dict())
    if isinstance(config, dict):
        return flatten(config)
    raise ValueError(f"config must be an ml_collections.ConfigDict, got {type(config).__name__}")


def _check_method(flat: dict[str, Any]) -> str:
    """The method, checked, and that the config carries its block (and no other)."""
    method = flat.get("method")
    allowed = SHARED["method"](method)
    if allowed is not None:
        f.fail("method", method, allowed)
    mine = block_of(method)
    has = {k.split(".")[0] for k in flat if k.split(".")[0] in BLOCKS}
    if mine not in has:
        others = sorted(has - {mine})
        having = f", and it has config.{others[0]} instead" if others else ""
        raise ConfigError(
            f"config.method = {method!r} needs the config.{mine} block{having}: build the config "
            f"from configs/default.py's get_config({method!r}) (e.g. configs/"
            f"{'cifar10_dividemix' if mine == 'dividemix' else 'cifar10_m_dyr_h'}.py)"
        )
    return method


def _check_names(flat: dict[str, Any], method: str) -> None:
    """Every field is one of the method's config, and none is missing."""
    known = fields_of(method)
    for name in sorted(set(flat) - set(known)):
        raise ConfigError(not_a_field(name, method, known))
    missing = [k for k in known if k not in flat]
    if missing:
        raise ConfigError(
            f"config.{missing[0]} is missing (build configs from jaxnoise.configs.default, which "
            f"sets every field; {len(missing)} missing in all)"
        )


def validate(config: Any) -> None:
    """Check every field's type, range and consistency without loading anything; a one-line
    ``ValueError`` names the first bad field, its value and what is allowed."""
    flat = _as_flat_dict(config)
    method = _check_method(flat)
    _check_names(flat, method)
    f.check_all(flat, SHARED)
    _check_files(flat)
    _check_features(flat)
    _check_shared(flat)
    BLOCKS[block_of(method)][1].validate(flat)


def _check_files(c: dict[str, Any]) -> None:
    """Local files and folders named by the config must exist (checked before any data load)."""
    if c["noise_kind"] == "human":
        if not c["label_file"] and not c["label_key"]:
            f.fail(
                "label_file",
                c["label_file"],
                "a label file path when noise_kind='human' "
                "(or config.label_key naming a label set of the dataset, e.g. worse_label "
                "of tfds cifar10_n)",
            )
        if c["label_file"] and not os.path.isfile(c["label_file"]):
            f.fail("label_file", c["label_file"], "an existing file (no such file)")
    else:
        for field in ("label_file", "label_key"):
            if c[field]:
                f.fail(field, c[field], "'' unless noise_kind='human' (it would be ignored)")
    if c["weights"] and not os.path.isfile(c["weights"]):
        f.fail("weights", c["weights"], "an existing .npz file (no such file)")
    if c["data.source"] == "folder":
        if not c["data.root"]:
            f.fail("data.root", c["data.root"], "an image-folder path when data.source='folder'")
        if not os.path.isdir(c["data.root"]):
            f.fail("data.root", c["data.root"], "an existing directory ROOT/{train,test}/<class>/")
        human_file = c["noise_kind"] == "human" and c["label_file"]
        if human_file and c["label_order"] == "auto":  # the file alone tells, before any loading
            if not labels_lib.names_its_samples(c["label_file"], c["label_key"]):
                f.fail("label_order", "auto", labels_lib.no_path_column(c["label_file"]))


def _check_features(c: dict[str, Any]) -> None:
    """Embeddings files exist; feature data goes with a head, no augmentation, its own stats."""
    source, extractor = c["data.source"], c["data.extractor"]
    if source == "features":
        if not c["data.features"]:
            f.fail("data.features", "", "an embeddings .npz/.npy path when data.source='features'")
        for field in ("data.features", "data.test_features"):
            if c[field] and not os.path.isfile(c[field]):
                f.fail(field, c[field], "an existing .npz or .npy file (no such file)")
        if extractor != "none":
            f.fail(
                "data.extractor",
                extractor,
                "'none' when data.source='features' (the embeddings are already features)",
            )
    elif c["data.features"] or c["data.test_features"]:
        f.fail("data.features", c["data.features"], "'' unless data.source='features'")
    if extractor == "resnet50" and not os.path.isfile(c["data.extractor_weights"]):
        f.fail(
            "data.extractor_weights",
            c["data.extractor_weights"],
            "an existing torchvision resnet50 .npz when data.extractor='resnet50'",
        )
    on_features = source == "features" or extractor != "none"
    if on_features != (c["model"] in choices.FEATURE_MODELS):
        f.fail(
            "model",
            c["model"],
            "one of 'linear', 'mlp' on features (data.source="
            "'features' or a data.extractor), an image model otherwise",
        )
    if on_features:
        if c["data.crop_padding"] or c["data.flip"]:
            f.fail(
                "data.crop_padding / data.flip",
                (c["data.crop_padding"], c["data.flip"]),
                "(0, False) on features: feature vectors are not cropped or flipped",
            )
        if c.get("data.normalization", "dataset") != "dataset":
            f.fail(
                "data.normalization",
                c["data.normalization"],
                "'dataset' on features (per-feature mean / std of the training set)",
            )


def _check_shared(c: dict[str, Any]) -> None:
    """The consistency of the shared fields."""
    epochs, ms = c["epochs"], tuple(c["lr_milestones"])
    if any(m > epochs for m in ms) or list(ms) != sorted(set(ms)):
        f.fail("lr_milestones", ms, f"strictly increasing whole epochs in [1, epochs={epochs}]")
    if c["data.source"] == "tfds" and not c["data.name"]:
        f.fail("data.name", c["data.name"], "a tfds dataset name when data.source='tfds'")
    if c["weights"] and c["model"] != "resnet50":
        f.fail("weights", c["weights"], "only with model='resnet50'")
    if c["freeze_backbone"] and not c["weights"]:
        f.fail("freeze_backbone", True, "only with pretrained weights (config.weights)")
    n, pid = c["distributed.num_processes"], c["distributed.process_id"]
    if pid >= n:
        f.fail("distributed.process_id", pid, f"an integer in [0, num_processes={n})")
    if c["tensorboard"] == "on" and importlib.util.find_spec("tensorboardX") is None:
        f.fail(
            "tensorboard",
            "on",
            "'auto' or 'off' without tensorboardX, which is not installed "
            "(pip install 'jaxnoise[tensorboard]')",
        )


def validate_against_data(config: Any, num_train: int, num_devices: int) -> None:
    """The method's checks that need the training set's size (e.g. its batch size)."""
    BLOCKS[block_of(config.method)][1].validate_against_data(config, num_train, num_devices)


def override(config: Any, **fields: Any) -> Any:
    """Set fields of ``config`` by name and return it: a shared field (``noise=0.8``), a field
    of the config's method block (``batch_size=64`` is ``bootstrap.batch_size`` on a bootstrap
    config), or a dotted path (``**{"data.root": "/data"}``). Refuses, in one line, a name the
    config does not have (naming the method that owns it, if one does). Checks nothing else:
    :func:`validate` does, before a run."""
    for name, value in fields.items():
        target, key = config, name
        if "." in name:
            *path, key = name.split(".")
            for part in path:
                target = target[part] if part in target else None
                if target is None:
                    break
        elif name not in config:
            target = next((config[b] for b in BLOCKS if b in config and name in config[b]), None)
        if target is None or key not in target:
            method = config.method if "method" in config else None
            raise ConfigError(not_a_field(name, method, list(_as_flat_dict(config))))
        with config.unlocked() if hasattr(config, "unlocked") else contextlib.nullcontext():
            target[key] = value
    return config


def not_a_field(name: str, method: str | None, known: list[str]) -> str:
    """Why ``name`` is not a field of a config of ``method`` with the fields ``known``: another
    method's, or a misspelling (with the closest field)."""
    why = foreign_field(name, method) if method is not None else None
    if why:
        return why
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean config.{close[0]}?)" if close else ""
    return (
        f"config.{name} is not a config field{hint}; the fields are documented in "
        "jaxnoise/configs/default.py and jaxnoise train --help"
    )
