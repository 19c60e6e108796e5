"""What a run trains on, from its config: the dataset (with human labels, a subset, frozen
features), the noisy labels and the noise mask, on the host (numpy), checked against the config.

    ds, noisy_labels, noise_mask = load_noisy_data(config, num_devices)
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from jaxnoise import choices, mixture
from jaxnoise import config as config_lib
from jaxnoise import data as data_lib
from jaxnoise import labels as labels_lib
from jaxnoise import noise as noise_lib
from jaxnoise.data import extract, extractors
from jaxnoise.progress import log


def load_data(config: Any) -> data_lib.Dataset:
    """Load the configured dataset (and subset it), returning host uint8 arrays."""
    d = config.data
    ds = data_lib.load(
        d.source,
        name=d.name,
        root=d.root,
        data_dir=d.data_dir or None,
        cache_dir=d.cache_dir or None,
        features=d.features,
        test_features=d.test_features,
    )
    if config.noise_kind == "human":  # aligned by identity before any subsetting
        ds = labels_lib.resolve(
            ds,
            label_file=config.label_file,
            label_key=config.label_key,
            label_order=config.label_order,
        )
    if d.subset_per_class > 0:
        ds = data_lib.balanced_subset(ds, d.subset_per_class, seed=config.seed)
    if d.extractor != "none":  # frozen features, computed once and cached
        root = d.root if d.source == "folder" else ""
        ds = extract.extract_cached(
            ds,
            d.extractor,
            kmeans=extractors.KMeansSettings(
                centroids=d.kmeans_centroids,
                num_patches=d.kmeans_patches,
                iters=d.kmeans_iters,
                patch_eps=d.kmeans_eps,
            ),
            weights=d.extractor_weights,
            cache_dir=d.cache_dir or extract.default_cache_dir(root),
            batch=d.extractor_batch,
        )
    return ds


def inject_noise(config: Any, ds: data_lib.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Noisy labels and the noise mask for the training set."""
    noisy, mask = noise_lib.apply(
        config.noise_kind,
        ds.train_labels,
        num_classes=ds.num_classes,
        rate=config.noise,
        seed=config.noise_seed,
        dataset=ds.name,
        human_labels=ds.label_sets.get(labels_lib.KEY),
    )
    if noisy.size and not (0 <= noisy.min() and noisy.max() < ds.num_classes):  # never trains
        raise ValueError(  # on labels outside the model's classes (jax would not complain)
            f"noise kind {config.noise_kind!r} produced labels outside [0, {ds.num_classes})"
        )
    return noisy, mask


def validate_against_data(config: Any, ds: data_lib.Dataset, num_devices: int = 1) -> None:
    """Checks that need the dataset (still before anything is compiled)."""
    n = ds.train_images.shape[0]
    if ds.num_classes < 2:
        raise ValueError(
            f"dataset {ds.name!r} has {ds.num_classes} class(es) "
            f"{list(ds.class_names)}; learning with noisy labels needs at least 2"
        )
    if n < mixture.MIN_SAMPLES:
        raise ValueError(
            f"dataset {ds.name!r} has {n} training samples; the noise model needs "
            f"at least {mixture.MIN_SAMPLES}"
        )
    if ds.is_features != (config.model in choices.FEATURE_MODELS):
        raise ValueError(
            f"config.model = {config.model!r} does not fit dataset {ds.name!r} of "
            f"{'features' if ds.is_features else 'images'} {ds.image_shape}"
        )
    h, w = ds.image_shape[:2] if not ds.is_features else (0, 0)
    if config.data.crop_padding > max(h, w) and not ds.is_features:
        raise ValueError(
            f"config.data.crop_padding = {config.data.crop_padding} exceeds the image size {h}x{w}"
        )
    config_lib.validate_against_data(config, n, num_devices)


def load_noisy_data(config: Any, num_devices: int):
    """(dataset, noisy labels, noise mask), the training set cut to a multiple of the devices."""
    t0 = time.time()
    ds = load_data(config)
    validate_against_data(config, ds, num_devices)
    noisy_labels, noise_mask = inject_noise(config, ds)
    n_use = ds.train_images.shape[0] // num_devices * num_devices
    if n_use < ds.train_images.shape[0]:  # per-sample arrays shard evenly over the devices
        log(
            f"using the first {n_use} of {ds.train_images.shape[0]} training samples "
            f"(divisible by the {num_devices} devices)"
        )
        ds = data_lib.take_train(ds, n_use)
        noisy_labels, noise_mask = noisy_labels[:n_use], noise_mask[:n_use]
    log(
        f"data: {ds.name} train {ds.train_images.shape} test {ds.test_images.shape} classes "
        f"{ds.num_classes}; {labels_line(config, noise_mask)} "
        f"({time.time() - t0:.1f}s)"
    )
    return ds, noisy_labels, noise_mask


def _label_source(config: Any) -> str:
    """'label file F / key K' (either part may be absent) of human labels."""
    parts = [f"label file {config.label_file}"] if config.label_file else []
    return " / ".join(parts + ([f"key {config.label_key}"] if config.label_key else []))


def labels_summary(config: Any) -> str:
    """Where the training labels come from, in a few words: "human labels (label file F / key
    K)", "labels as given" (noise_kind="none") or "symmetric noise r=0.5"."""
    if config.noise_kind == "human":
        return f"human labels ({_label_source(config)})"
    if config.noise_kind == "none":
        return "labels as given"
    return f"{config.noise_kind} noise r={config.noise:g}"


def labels_line(config: Any, noise_mask: np.ndarray) -> str:
    """The data log line's account of the labels: human labels differ from the dataset's
    labels, synthetic noise flips them, noise_kind="none" leaves which are wrong unknown."""
    if config.noise_kind == "human":
        return (
            f"labels: human ({_label_source(config)}): {noise_mask.mean():.1%} differ from "
            "the dataset's labels"
        )
    if config.noise_kind == "none":
        return "labels: as given (noise_kind=none: which are wrong is unknown)"
    return f"labels: {labels_summary(config)}: {noise_mask.mean():.1%} flipped"
