"""Config validation (before any data is loaded or anything compiled).

:func:`validate` is total: for any value of any field (wrong type, NaN, huge, a tuple where a
number belongs, a misspelt or missing field) it either returns or raises ``ValueError`` with a
message that names the field, the value and what is allowed. It checks, in order: the set of
fields (every field of ``configs/default.py``, no other), each field's type and range, that local
files the config names exist, and the consistency of the schedule.
"""

from __future__ import annotations

import difflib
import math
import numbers
import os
from collections.abc import Callable
from typing import Any

from jaxnoise import data as data_lib
from jaxnoise import dividemix_step, extractors, losses, models
from jaxnoise import noise as noise_lib
from jaxnoise.schedule import BOOTSTRAP_AFTER_MILESTONE

METHODS = ("CE", "M", "M-DYR-H", "M-DYR-S", "MD-DYR-SH", "DivideMix")
CHOICES: dict[str, tuple[str, ...]] = {
    "method": METHODS,
    "noise_model": ("bmm", "gmm"),
    "noisy_component": ("initial", "max_mean"),
    "posterior_source": ("batch", "epoch"),
    "mixup_draw": losses.DRAWS,
    "loss_pair_weight": ("published", "mix"),
    "optimizer": ("sgd", "adam"),
    "noise_kind": noise_lib.KINDS,
    "model": models.MODEL_NAMES,
    "data.source": data_lib.SOURCES,
    "data.extractor": extractors.EXTRACTORS,  # features
    "data.normalization": ("published", "dataset"),
    "shortcut": models.SHORTCUTS,
    "compute_dtype": models.COMPUTE_DTYPES,
    "label_order": ("auto", "dataset", "cifar", "id"),  # jaxnoise/human_labels.py
    "mixture_scope": ("global", "class"),
    "loss_signal": ("epoch", "ema", "mean_k"),
    "dividemix_views": dividemix_step.VIEWS,
}


INT_MAX = 2**31 - 1  # epochs, steps and sizes reach jitted code as int32
SEED_MAX = 2**32 - 1


# ------------------------------------------------------------------------------------------------
# Field checks: each returns None if the value is allowed, else a description of what is.


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _int(lo: int, hi: int = INT_MAX) -> Callable[[Any], str | None]:
    def check(v):
        if _is_int(v) and lo <= v <= hi:
            return None
        if lo == 1 and hi == INT_MAX:
            return "a positive integer (at most 2**31 - 1)"
        return f"an integer in [{lo}, {hi}]"

    return check


def _real(lo: float, hi: float = math.inf, *, lo_open=False, hi_open=False):
    def check(v):
        if _is_real(v):
            x = float(v)
            ok_lo = x > lo if lo_open else x >= lo
            ok_hi = x < hi if hi_open else x <= hi
            if ok_lo and ok_hi:
                return None
        if hi == math.inf:
            return "a finite number " + ("> " if lo_open else ">= ") + f"{lo:g}"
        return f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    return check


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "True or False"


def _str(v: Any) -> str | None:
    return None if isinstance(v, str) else "a string"


def _cache_folder(v: Any) -> str | None:
    """'auto', '' / 'none' (off), an existing folder, or one that can be created."""
    allowed = "'auto', '' or 'none' (off), or a folder"
    if not isinstance(v, str) or "\0" in v:
        return allowed
    if v in ("auto", "", "none"):
        return None
    path = os.path.abspath(os.path.expanduser(v))
    if os.path.isdir(path):
        return None
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK):
        return None
    why = "a file of that name exists" if parent == path else f"{parent} is not a writable folder"
    return f"{allowed} ({why})"


def _choice(field: str) -> Callable[[Any], str | None]:
    def check(v):
        if isinstance(v, str) and v in CHOICES[field]:
            return None
        return "one of " + ", ".join(repr(a) for a in CHOICES[field])

    return check


def _sizes(v: Any) -> str | None:
    if isinstance(v, (tuple, list)) and all(_is_int(m) and 1 <= m <= INT_MAX for m in v):
        return None
    return "a tuple of positive layer sizes (e.g. (512,))"


def _auto_or(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    """``check``, or the sentinel -1 ("auto": from DivideMix's published table)."""

    def checked(v):
        if _is_real(v) and float(v) == AUTO:
            return None
        allowed = check(v)
        return None if allowed is None else f"{allowed}, or -1 (auto: the paper's value)"

    return checked


def _milestones(v: Any) -> str | None:
    if isinstance(v, (tuple, list)) and all(_is_int(m) and 1 <= m <= INT_MAX for m in v):
        return None
    return "a tuple of whole epochs >= 1"


# Every config field (configs/default.py documents them) and its type/range check.
FIELDS: dict[str, Callable[[Any], str | None]] = {
    "seed": _int(0, SEED_MAX),
    "data.source": _choice("data.source"),
    "data.name": _str,
    "data.root": _str,
    "data.data_dir": _str,
    "data.cache_dir": _str,
    "data.subset_per_class": _int(0),
    "data.crop_padding": _int(0),
    "data.flip": _bool,
    "data.normalization": _choice("data.normalization"),
    "drop_last": _bool,
    "noise": _real(0.0, 1.0),
    "noise_kind": _choice("noise_kind"),
    "label_file": _str,
    "label_key": _str,
    "label_order": _choice("label_order"),
    "noise_seed": _int(0, SEED_MAX),
    "model": _choice("model"),
    "width": _int(1),
    "shortcut": _choice("shortcut"),
    "compute_dtype": _choice("compute_dtype"),
    "weights": _str,
    "freeze_backbone": _bool,
    "method": _choice("method"),
    "noise_model": _choice("noise_model"),
    "noisy_component": _choice("noisy_component"),
    "em_iters": _int(1),
    "mixture_scope": _choice("mixture_scope"),
    "loss_signal": _choice("loss_signal"),
    "signal_k": _int(1, 1000),
    "signal_momentum": _real(0.0, 1.0, hi_open=True),
    "posterior_lookup": _bool,
    "posterior_source": _choice("posterior_source"),
    "track_augment": _bool,
    "mixup_alpha": _real(0.0),
    "mixup_draw": _choice("mixup_draw"),
    "binomial_n": _int(1),
    "reg_weight": _real(0.0),
    "reg_prior_classes": _int(0),
    "loss_pair_weight": _choice("loss_pair_weight"),
    "epochs": _int(1),
    "batch_size": _int(1),
    "optimizer": _choice("optimizer"),
    "lr": _real(0.0, lo_open=True),
    "momentum": _real(0.0, 1.0, hi_open=True),
    "weight_decay": _real(0.0),
    "lr_milestones": _milestones,
    "lr_gamma": _real(0.0, 1.0, lo_open=True),
    "bootstrap_start_epoch": _int(0),
    "dynamic_start_epoch": _int(1),
    "soft_to_hard_start_epoch": _int(1),
    "temperature_epochs": _int(1),
    "final_temperature": _real(0.0, lo_open=True),
    "mesh.num_devices": _int(0),
    "distributed.auto": _bool,
    "distributed.coordinator_address": _str,
    "distributed.num_processes": _int(1),
    "distributed.process_id": _int(0),
    "steps_per_call": _int(1, 1024),
    "eval_batch_size": _int(1),
    "log_every_steps": _int(1),
    # cli/progress
    "log_every_seconds": _real(0.0),
    "keep_checkpoints": _int(1),
    "compilation_cache": _cache_folder,  # jaxnoise/compile_cache.py
    # features (jaxnoise/features.py, jaxnoise/extractors.py; documented in configs/default.py)
    "data.features": _str,
    "data.test_features": _str,
    "data.extractor": _choice("data.extractor"),
    "data.extractor_weights": _str,
    "data.extractor_batch": _int(1),
    "data.kmeans_centroids": _int(2),
    "data.kmeans_patches": _int(2),
    "data.kmeans_iters": _int(1),
    "mlp_hidden": _sizes,
    # DivideMix (jaxnoise/dividemix_loop.py; documented in configs/default.py)
    "dividemix_warm_up": _int(1),
    "p_threshold": _auto_or(_real(0.0, 1.0, hi_open=True)),
    "lambda_u": _auto_or(_real(0.0)),
    "lambda_u_rampup": _real(0.0, lo_open=True),
    "sharpen_temperature": _real(0.0, lo_open=True),
    "mixmatch_alpha": _real(0.0, lo_open=True),
    "dividemix_batch": _int(1),
    "dividemix_loss_history": _int(1, 1000),
    "dividemix_views": _choice("dividemix_views"),
    "dividemix_warmup_strong": _real(0.0, 1.0),
}

# ------------------------------------------------------------------------------------------------
# DivideMix's per-setting values, used where the config says -1 ("auto"). The paper (Li, Socher
# & Hoi, ICLR 2020, Sec. 4.1) chooses lambda_u from {0, 25, 50, 150} on a validation set and
# tau = 0.5 (0.6 at 90% noise). The per-setting lambda_u below equal, for every noisy setting,
# those of presets.json in KentoNishi/Augmentation-for-LNL (Nishi et al., CVPR 2021), whose
# DivideMix runs reproduce the paper; so do its p_threshold (0.6 at 90%) and average_loss (5 at
# 90%). The 0% rows (no noise) are not in that file: they repeat the 20% row.

AUTO = -1.0
DIVIDEMIX_LAMBDA_U = {  # (dataset, noise kind, noise level) -> lambda_u
    **{("cifar10", "symmetric", r): v for r, v in ((0.0, 0.0), (0.2, 0.0), (0.5, 25.0),
                                                   (0.8, 25.0), (0.9, 50.0))},
    ("cifar10", "asymmetric", 0.4): 0.0,
    **{("cifar100", "symmetric", r): v for r, v in ((0.0, 25.0), (0.2, 25.0), (0.5, 150.0),
                                                    (0.8, 150.0), (0.9, 150.0))},
}  # fmt: skip
DIVIDEMIX_HISTORY_NOISE = 0.9  # from this noise level the GMM fits the mean of the last
# dividemix_loss_history epochs' normalised losses (the official code: r == 0.9)


def dividemix_lambda_u(c: Any) -> float:
    """``config.lambda_u``, or (-1) the paper's value for the dataset, noise kind and level."""
    flat = c if isinstance(c, dict) else _as_flat_dict(c)
    if float(flat["lambda_u"]) != AUTO:
        return float(flat["lambda_u"])
    name = {"cifar10_n": "cifar10", "cifar100_n": "cifar100",
            "digits": "cifar10"}.get(flat["data.name"], flat["data.name"])  # fmt: skip
    key = (name, flat["noise_kind"], round(float(flat["noise"]), 6))
    if key not in DIVIDEMIX_LAMBDA_U:
        _fail("lambda_u", -1, f"a number >= 0: the paper gives no lambda_u for {key[1]} "
              f"noise {key[2]:g} on {name} (its table: "
              + ", ".join(f"{k}/{r:g}" for d, k, r in DIVIDEMIX_LAMBDA_U if d == name) + ")")
    return DIVIDEMIX_LAMBDA_U[key]


def dividemix_p_threshold(c: Any) -> float:
    """``config.p_threshold``, or (-1) the paper's: 0.6 at 90% noise, else 0.5."""
    flat = c if isinstance(c, dict) else _as_flat_dict(c)
    if float(flat["p_threshold"]) != AUTO:
        return float(flat["p_threshold"])
    return 0.6 if float(flat["noise"]) >= DIVIDEMIX_HISTORY_NOISE else 0.5


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b": value}."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _as_flat_dict(config: Any) -> dict[str, Any]:
    if hasattr(config, "to_dict"):  # ml_collections.ConfigDict (resolves FieldReferences)
        tree = config.to_dict()
    elif isinstance(config, dict):
        tree = config
    else:
        raise ValueError(
            f"config must be an ml_collections.ConfigDict, got {type(config).__name__}"
        )
    return flatten(tree)


def _show(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 120 else r[:117] + "..."


def _fail(field: str, value: Any, allowed: str) -> None:
    raise ValueError(f"config.{field} = {_show(value)} is not allowed: {allowed}")


def validate(config: Any) -> None:
    """Check every field's type, range and consistency; raise ValueError naming the field."""
    flat = _as_flat_dict(config)
    unknown = sorted(set(flat) - set(FIELDS))
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, list(FIELDS), n=1)
        hint = f" (did you mean config.{close[0]}?)" if close else ""
        raise ValueError(
            f"config.{name} is not a config field{hint}; the fields are documented in "
            "configs/default.py"
        )
    missing = sorted(set(FIELDS) - set(flat))
    if missing:
        raise ValueError(
            f"config.{missing[0]} is missing (build configs from configs/default.py, which sets "
            f"every field; {len(missing)} missing in all)"
        )
    for field, check in FIELDS.items():
        allowed = check(flat[field])
        if allowed is not None:
            _fail(field, flat[field], allowed)
    _check_files(flat)
    _check_features(flat)
    _check_consistency(flat)


def _check_files(c: dict[str, Any]) -> None:
    """Local files and folders named by the config must exist (checked before any data load)."""
    if c["noise_kind"] == "human":
        if not c["label_file"] and not c["label_key"]:
            _fail("label_file", c["label_file"], "a label file path when noise_kind='human' "
                  "(or config.label_key naming a label set of the dataset, e.g. worse_label "
                  "of tfds cifar10_n)")  # fmt: skip
        if c["label_file"] and not os.path.isfile(c["label_file"]):
            _fail("label_file", c["label_file"], "an existing file (no such file)")
    else:
        for field in ("label_file", "label_key"):
            if c[field]:
                _fail(field, c[field], "'' unless noise_kind='human' (it would be ignored)")
    if c["weights"] and not os.path.isfile(c["weights"]):
        _fail("weights", c["weights"], "an existing .npz file (no such file)")
    if c["data.source"] == "folder":
        if not c["data.root"]:
            _fail("data.root", c["data.root"], "an image-folder path when data.source='folder'")
        if not os.path.isdir(c["data.root"]):
            _fail("data.root", c["data.root"], "an existing directory ROOT/{train,test}/<class>/")


# features ----------------------------------------------------------------------------------------
FEATURE_MODELS = ("linear", "mlp")


def _check_features(c: dict[str, Any]) -> None:
    """Embeddings files exist; feature data goes with a head, no augmentation, its own stats."""
    source, extractor = c["data.source"], c["data.extractor"]
    if source == "features":
        if not c["data.features"]:
            _fail("data.features", "", "an embeddings .npz/.npy path when data.source='features'")
        for field in ("data.features", "data.test_features"):
            if c[field] and not os.path.isfile(c[field]):
                _fail(field, c[field], "an existing .npz or .npy file (no such file)")
        if extractor != "none":
            _fail("data.extractor", extractor, "'none' when data.source='features' (the "
                  "embeddings are already features)")  # fmt: skip
    elif c["data.features"] or c["data.test_features"]:
        _fail("data.features", c["data.features"], "'' unless data.source='features'")
    if extractor == "resnet50" and not os.path.isfile(c["data.extractor_weights"]):
        _fail("data.extractor_weights", c["data.extractor_weights"],
              "an existing torchvision resnet50 .npz when data.extractor='resnet50'")  # fmt: skip
    on_features = source == "features" or extractor != "none"
    if on_features != (c["model"] in FEATURE_MODELS):
        _fail("model", c["model"], "one of 'linear', 'mlp' on features (data.source="
              "'features' or a data.extractor), an image model otherwise")  # fmt: skip
    if on_features:
        if c["data.crop_padding"] or c["data.flip"]:
            _fail("data.crop_padding / data.flip", (c["data.crop_padding"], c["data.flip"]),
                  "(0, False) on features: feature vectors are not cropped or flipped")  # fmt: skip
        if c.get("data.normalization", "dataset") != "dataset":
            _fail("data.normalization", c["data.normalization"],
                  "'dataset' on features (per-feature mean / std of the training set)")  # fmt: skip


def _check_consistency(c: dict[str, Any]) -> None:
    epochs = c["epochs"]
    ms = tuple(c["lr_milestones"])
    last = epochs + 1 if c["method"] == "DivideMix" else epochs  # DivideMix: epochs 0..epochs
    if any(m >= last for m in ms) or list(ms) != sorted(set(ms)):
        _fail("lr_milestones", ms, f"strictly increasing whole epochs in [1, epochs={epochs}"
              f"{']' if last > epochs else ')'}")
    if c["data.source"] == "tfds" and not c["data.name"]:
        _fail("data.name", c["data.name"], "a tfds dataset name when data.source='tfds'")
    if c["weights"] and c["model"] != "resnet50":
        _fail("weights", c["weights"], "only with model='resnet50'")
    if c["freeze_backbone"] and not c["weights"]:
        _fail("freeze_backbone", True, "only with pretrained weights (config.weights)")
    # Schedule consistency: a method's phase must start inside the run.
    if c["method"] in ("M-DYR-H", "M-DYR-S"):
        b = c["bootstrap_start_epoch"]
        if b == 0 and not ms:
            _fail("bootstrap_start_epoch", b, "an epoch >= 2 when lr_milestones is empty (0 "
                  "derives it from the first milestone)")  # fmt: skip
        b = b or ms[0] + BOOTSTRAP_AFTER_MILESTONE
        if not (2 <= b <= epochs):
            _fail(
                "bootstrap_start_epoch",
                b,
                f"an epoch in [2, epochs={epochs}] (bootstrapping needs a mixture fitted after "
                "at least one epoch of mixup warm-up, and must start before the run ends; 0 "
                f"derives it as lr_milestones[0] + {BOOTSTRAP_AFTER_MILESTONE})",
            )
    if c["method"] == "MD-DYR-SH":
        d, s = c["dynamic_start_epoch"], c["soft_to_hard_start_epoch"]
        if not (2 <= d <= s <= epochs):
            _fail(
                "dynamic_start_epoch / soft_to_hard_start_epoch",
                (d, s),
                f"2 <= dynamic_start_epoch <= soft_to_hard_start_epoch <= epochs={epochs} "
                "(at least one epoch of mixup warm-up first)",
            )
    if c["loss_signal"] != "epoch" and c["posterior_source"] != "epoch":
        _fail("posterior_source", c["posterior_source"], "'epoch' when loss_signal="
              f"{c['loss_signal']!r} (the mixture is fitted to an accumulated per-sample loss, "
              "so the posteriors are the tracked samples', not one step's batch)")  # fmt: skip
    if c["mixup_draw"] != "none" and c["method"] != "MD-DYR-SH":
        _fail("mixup_draw", c["mixup_draw"], "'none' unless method='MD-DYR-SH'")
    if c["method"] == "DivideMix":
        _check_dividemix(c)
    n, pid = c["distributed.num_processes"], c["distributed.process_id"]
    if pid >= n:
        _fail("distributed.process_id", pid, f"an integer in [0, num_processes={n})")


def _check_dividemix(c: dict[str, Any]) -> None:
    """What the DivideMix loop does not support (yet), and its schedule."""
    unsupported = (
        ("distributed.num_processes", c["distributed.num_processes"] > 1,
         "1 (DivideMix runs in one process)"),
        ("distributed.auto", c["distributed.auto"], "False (DivideMix runs in one process)"),
        ("mixture_scope", c["mixture_scope"] != "global", "'global' with DivideMix (one GMM "
         "per network over all samples)"),
        ("loss_signal", c["loss_signal"] != "epoch", "'epoch' with DivideMix (at 90% noise "
         "it averages the last dividemix_loss_history epochs itself)"),
        ("steps_per_call", c["steps_per_call"] > 1, "1 with DivideMix"),
    )  # fmt: skip
    for field, refused, allowed in unsupported:
        if refused:
            _fail(field, c[field], allowed)
    features = c["data.source"] == "features" or c["data.extractor"] != "none"
    for field, weak in (("dividemix_views", "'weak'"), ("dividemix_warmup_strong", "0")):
        if features and c[field] not in ("weak", 0, 0.0):
            _fail(field, c[field], f"{weak} on feature vectors (strong augmentation is for images)")
    if c["dividemix_warm_up"] > c["epochs"]:
        _fail("dividemix_warm_up", c["dividemix_warm_up"], f"an epoch count <= epochs="
              f"{c['epochs']} (DivideMix runs epochs 0..epochs, warm-up in 0..warm_up - 1)")
    dividemix_lambda_u(c)  # an "auto" lambda_u must be in the paper's table
