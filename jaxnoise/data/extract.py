"""Frozen extractors run once: an image dataset's features, computed and cached on disk.

Extractors (``data.extractor="kmeans"`` or ``"resnet50"``, :mod:`jaxnoise.data.extractors`, with
any image source) turn the loaded images into features once; the result is cached as an ``.npz``
in the single-file layout of :mod:`jaxnoise.data.embeddings` (so it can be passed back as
``data.source="features"``), keyed by a fingerprint of the extractor, its settings and the images
and labels themselves: changing either recomputes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxnoise.data import cache, extractors
from jaxnoise.data.dataset import Dataset
from jaxnoise.data.embeddings import load_features
from jaxnoise.progress import log

_CACHE_VERSION = "1"


def fingerprint(ds: Dataset, settings: dict[str, Any]) -> str:
    """sha256 of the extractor settings and the dataset's images, labels and class names."""
    h = hashlib.sha256(f"jaxnoise-features-v{_CACHE_VERSION}\n".encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    for arr in (ds.train_images, ds.train_labels, ds.test_images, ds.test_labels):
        a = np.ascontiguousarray(arr)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(memoryview(a.reshape(-1).view(np.uint8)))
    h.update("\0".join(ds.class_names).encode())
    return h.hexdigest()


def _file_digest(path: str) -> str:
    """sha256 of a file's bytes (weights enter the cache key by content)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_cache_dir(root: str = "") -> Path:
    """Beside an image folder (as its decoded-image cache), else ~/.cache/jaxnoise/features."""
    if root:
        return cache.default_dir(Path(root).expanduser().resolve())
    return Path.home() / ".cache" / "jaxnoise" / "features"


def _extractor_settings(extractor: str, kmeans, weights: str) -> dict:
    """The settings that identify an extractor's features (part of the cache key)."""
    if extractor == "kmeans":
        return extractors.settings_dict("kmeans", kmeans or extractors.KMeansSettings())
    if extractor == "resnet50":
        if not weights:
            raise ValueError("extractor 'resnet50' needs data.extractor_weights (a local .npz)")
        return {"extractor": "resnet50", "weights_sha256": _file_digest(weights)}
    raise ValueError(f"unknown extractor {extractor!r}; allowed: 'kmeans', 'resnet50'")


def _extract(ds: Dataset, extractor: str, kmeans, weights: str, batch: int):
    """(train features, test features, extra arrays to cache) computed by `extractor`."""
    if extractor == "kmeans":
        model = extractors.learn_kmeans(ds.train_images, kmeans or extractors.KMeansSettings())
        xtr, xte = (
            extractors.kmeans_features(
                model, images, batch=batch, desc=f"k-means features ({split})"
            )
            for images, split in ((ds.train_images, "train"), (ds.test_images, "test"))
        )
        extra = {
            "kmeans_centroids": model.centroids,
            "kmeans_mean": model.mean,
            "kmeans_whitening": model.whitening,
        }
        return xtr, xte, extra
    xtr, xte = (
        extractors.resnet50_features(
            weights, images, batch=batch, desc=f"resnet50 features ({split})"
        )
        for images, split in ((ds.train_images, "train"), (ds.test_images, "test"))
    )
    return xtr, xte, {}


def extract_cached(
    ds: Dataset,
    extractor: str,
    *,
    kmeans: extractors.KMeansSettings | None = None,
    weights: str = "",
    cache_dir: str | os.PathLike | None = None,
    batch: int = 64,
) -> Dataset:
    """The features of `ds` under `extractor` ('kmeans' | 'resnet50'), from the cache if there."""
    if ds.train_images.ndim != 4:
        raise ValueError(
            f"extractor {extractor!r} needs images; dataset {ds.name!r} holds features"
        )
    settings = _extractor_settings(extractor, kmeans, weights)
    fp = fingerprint(ds, settings)
    cdir = Path(cache_dir) if cache_dir else default_cache_dir()
    # Same settings, other images: the old file is replaced; other settings keep their files.
    tag = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    path = cdir / f"features-{extractor}-{tag}-{fp[:20]}.npz"
    if path.is_file():
        try:
            out = load_features(str(path), name=ds.name)
            log(f"loaded {extractor} features {out.train_images.shape} from cache {path}")
            return dataclasses.replace(
                out, train_paths=ds.train_paths, train_ids=ds.train_ids, label_sets=ds.label_sets
            )
        except ValueError as err:  # a torn or foreign file: recompute
            log(f"warning: ignoring unreadable features cache {path}: {err}")
    t0 = time.time()
    xtr, xte, extra = _extract(ds, extractor, kmeans, weights, batch)
    seconds = time.time() - t0
    log(f"extracted {extractor} features: train {xtr.shape}, test {xte.shape} ({seconds:.1f}s)")
    arrays = {
        "train_features": xtr,
        "train_labels": ds.train_labels.astype(np.int32),
        "test_features": xte,
        "test_labels": ds.test_labels.astype(np.int32),
        "class_names": np.asarray(ds.class_names, dtype=str),
        "settings_json": np.asarray(json.dumps(settings, sort_keys=True)),
        "extract_seconds": np.asarray(seconds),
        **extra,
    }
    cache.write_npz(path, arrays)
    return Dataset(
        xtr,
        ds.train_labels,
        xte,
        ds.test_labels,
        list(ds.class_names),
        ds.name,
        train_paths=ds.train_paths,
        train_ids=ds.train_ids,
        label_sets=ds.label_sets,
    )
