"""Embeddings as a data source, and frozen extractors whose features are computed once and cached.

A features :class:`~jaxnoise.data.Dataset` holds float32 (N, D) arrays where an image dataset
holds uint8 (N, H, W, C) images; everything downstream (noise, train step, tracking pass, mixture,
report) is unchanged, except that augmentation is off and normalisation is per feature.

``data.source="features"`` reads your own embeddings, in one of two layouts:

* one ``.npz`` (``data.features=FILE.npz``, ``data.test_features=""``) with the keys
  ``train_features`` (N, D) float, ``train_labels`` (N,) int, ``test_features`` (M, D) float,
  ``test_labels`` (M,) int and optionally ``class_names`` (K,) str and ``train_ids`` (N,) str
  (the samples' own identifiers: human label files are aligned by them, label_issues.csv
  reports them);
* a pair (``data.features=TRAIN``, ``data.test_features=TEST``), each side either an ``.npz``
  with ``features``, ``labels`` (and optionally ``class_names``), or an ``.npy`` of features
  whose labels are in the ``.npy`` beside it named ``<stem>_labels.npy``.

Other keys are ignored. Without class names the classes are "0".."K-1", K = 1 + the largest
label. Bad input (a non-float or non-2-D feature array, NaN/inf rows, a feature dimension that
differs between train and test, a label count that differs from the number of rows, negative or
non-integer labels, fewer class names than labels) raises ``ValueError`` naming the file and the
problem, before anything is compiled.

Extractors (``data.extractor="kmeans"`` or ``"resnet50"``, with any image source) turn the loaded
images into features once; the result is cached as an ``.npz`` in the single-file layout above
(so it can be passed back as ``data.source="features"``), keyed by a fingerprint of the
extractor, its settings and the images and labels themselves: changing either recomputes it.
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

from jaxnoise import data as data_lib
from jaxnoise import extractors
from jaxnoise.progress import log

_CACHE_VERSION = "1"
SINGLE_KEYS = ("train_features", "train_labels", "test_features", "test_labels")


class FeatureFileError(ValueError):
    """An embeddings file is missing, malformed, or holds bad values."""


# ------------------------------------------------------------------------------------------------
# Reading and checking embeddings files.


def _load_file(path: str) -> dict[str, np.ndarray]:
    """The arrays of an .npz (all keys) or .npy (key 'features')."""
    if not os.path.isfile(path):
        raise FeatureFileError(f"features file {path}: no such file")
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        if path.endswith(".npy"):
            return {"features": np.load(path, allow_pickle=False)}
    except Exception as err:
        raise FeatureFileError(
            f"features file {path}: cannot be read ({type(err).__name__}: {err})"
        ) from err
    raise FeatureFileError(f"features file {path}: expected a .npz or .npy file")


def _check_features(x: np.ndarray, where: str) -> np.ndarray:
    """A finite float (N, D) array as float32, else FeatureFileError naming `where`."""
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise FeatureFileError(f"{where}: features must be a non-empty (N, D) array, got {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise FeatureFileError(f"{where}: features must be floating point, got dtype {x.dtype}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise FeatureFileError(
            f"{where}: {len(rows)} row(s) hold NaN or inf (first: row {rows[0]})"
        )
    return np.ascontiguousarray(x, np.float32)


def _check_labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    """Non-negative integer (n,) labels as int32, else FeatureFileError naming `where`."""
    if y.ndim != 1:
        raise FeatureFileError(f"{where}: labels must be a 1-D array, got shape {y.shape}")
    if len(y) != n:
        raise FeatureFileError(f"{where}: {len(y)} labels for {n} feature rows")
    if np.issubdtype(y.dtype, np.floating):
        if not (np.isfinite(y).all() and np.array_equal(y, np.round(y))):
            raise FeatureFileError(f"{where}: labels must be whole numbers, got dtype {y.dtype}")
    elif not np.issubdtype(y.dtype, np.integer):
        raise FeatureFileError(f"{where}: labels must be integers, got dtype {y.dtype}")
    if len(y) and y.min() < 0:
        raise FeatureFileError(f"{where}: labels must be >= 0, found {y.min()}")
    return y.astype(np.int32)


def _side(path: str) -> tuple[np.ndarray, np.ndarray, list[str] | None, str]:
    """(features, labels, class names or None, where) of one side of a pair."""
    arrays = _load_file(path)
    if "features" not in arrays:
        raise FeatureFileError(
            f"features file {path}: has no 'features' array (keys: {sorted(arrays)})"
        )
    label_path = path
    if path.endswith(".npy"):
        label_path = path[: -len(".npy")] + "_labels.npy"
        if not os.path.isfile(label_path):
            raise FeatureFileError(
                f"features file {path}: its labels file {label_path} does not exist"
            )
        arrays["labels"] = np.load(label_path, allow_pickle=False)
    elif "labels" not in arrays:
        raise FeatureFileError(
            f"features file {path}: has no 'labels' array (keys: {sorted(arrays)})"
        )
    x = _check_features(arrays["features"], f"features file {path}")
    y = _check_labels(arrays["labels"], x.shape[0], f"features file {label_path}")
    names = [str(n) for n in arrays["class_names"]] if "class_names" in arrays else None
    return x, y, names, path


def load_features(path: str, test_path: str = "", *, name: str = "") -> data_lib.Dataset:
    """Read embeddings (one .npz, or a train/test pair; see the module docstring)."""
    ids = None
    if test_path:
        xtr, ytr, names, where = _side(path)
        xte, yte, names_te, where_te = _side(test_path)
        names = names or names_te
    else:
        arrays = _load_file(path)
        missing = [k for k in SINGLE_KEYS if k not in arrays]
        if missing:
            raise FeatureFileError(
                f"features file {path}: missing {', '.join(missing)} (a single features .npz "
                f"holds {', '.join(SINGLE_KEYS)}; or pass the test side as data.test_features)"
            )
        where = where_te = f"features file {path}"
        xtr = _check_features(arrays["train_features"], where + " [train_features]")
        xte = _check_features(arrays["test_features"], where + " [test_features]")
        ytr = _check_labels(arrays["train_labels"], xtr.shape[0], where + " [train_labels]")
        yte = _check_labels(arrays["test_labels"], xte.shape[0], where + " [test_labels]")
        names = [str(n) for n in arrays["class_names"]] if "class_names" in arrays else None
        if "train_ids" in arrays:  # optional: the samples' own identifiers (label_issues.csv)
            ids = np.asarray(arrays["train_ids"]).astype(str)
            if ids.shape != ytr.shape or len(set(ids.tolist())) != len(ids):
                raise FeatureFileError(
                    f"{where} [train_ids]: expected {len(ytr)} distinct ids, got shape {ids.shape}"
                )
    if xtr.shape[1] != xte.shape[1]:
        raise FeatureFileError(
            f"{where_te}: test features have D={xte.shape[1]}, the training features "
            f"({where}) D={xtr.shape[1]}"
        )
    k = int(max(ytr.max(), yte.max())) + 1
    if names is None:
        names = [str(i) for i in range(k)]
    elif len(names) < k:
        raise FeatureFileError(f"{where}: {len(names)} class names for labels up to {k - 1}")
    label = name or Path(path).stem
    return data_lib.Dataset(xtr, ytr, xte, yte, list(names), label, train_ids=ids)


# ------------------------------------------------------------------------------------------------
# Cached extraction.


def fingerprint(ds: data_lib.Dataset, settings: dict[str, Any]) -> str:
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
        return data_lib._default_cache_dir(Path(root).expanduser().resolve())
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


def _extract(ds: data_lib.Dataset, extractor: str, kmeans, weights: str, batch: int):
    """(train features, test features, extra arrays to cache) computed by `extractor`."""
    if extractor == "kmeans":
        model = extractors.learn_kmeans(ds.train_images, kmeans or extractors.KMeansSettings())
        xtr, xte = (extractors.kmeans_features(model, images, batch=batch,
                                               desc=f"k-means features ({split})")
                    for images, split in ((ds.train_images, "train"), (ds.test_images, "test")))
        extra = {"kmeans_centroids": model.centroids, "kmeans_mean": model.mean,
                 "kmeans_whitening": model.whitening}  # fmt: skip
        return xtr, xte, extra
    xtr, xte = (extractors.resnet50_features(weights, images, batch=batch,
                                             desc=f"resnet50 features ({split})")
                for images, split in ((ds.train_images, "train"), (ds.test_images, "test")))
    return xtr, xte, {}


def extract_cached(
    ds: data_lib.Dataset,
    extractor: str,
    *,
    kmeans: extractors.KMeansSettings | None = None,
    weights: str = "",
    cache_dir: str | os.PathLike | None = None,
    batch: int = 64,
) -> data_lib.Dataset:
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
            return dataclasses.replace(out, train_paths=ds.train_paths, train_ids=ds.train_ids,
                                       label_sets=ds.label_sets)  # fmt: skip
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
    data_lib._write_cache(path, arrays)
    return data_lib.Dataset(xtr, ds.train_labels, xte, ds.test_labels, list(ds.class_names),
                            ds.name, train_paths=ds.train_paths, train_ids=ds.train_ids,
                            label_sets=ds.label_sets)  # fmt: skip
