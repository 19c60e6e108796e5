"""Datasets for jaxnoise: sources read on the host (NumPy), transforms applied on the device (JAX).

Every source gives the same in-memory :class:`Dataset` (uint8 images or float32 features, int32
labels), one module each:

* ``tfds``: a tensorflow-datasets dataset, e.g. ``cifar10`` (:mod:`jaxnoise.data.tfds`);
* ``folder``: an image folder ``ROOT/{train,test}/<class>/<image>`` (:mod:`jaxnoise.data.folder`);
* ``digits``: scikit-learn's embedded 8x8 digits (:mod:`jaxnoise.data.digits`);
* ``features``: your own embeddings (:mod:`jaxnoise.data.embeddings`).

Frozen extractors turn an image dataset into features once, cached (:mod:`jaxnoise.data.extract`
over :mod:`jaxnoise.data.extractors`). On the device, :func:`augment` and :func:`normalize`
(:mod:`jaxnoise.data.transforms`) are pure ``jax.numpy`` with explicit PRNG keys.
"""

from __future__ import annotations

import dataclasses

from jaxnoise import choices
from jaxnoise.data.dataset import (
    PUBLISHED_MEAN,
    PUBLISHED_STD,
    Dataset,
    balanced_subset,
    normalization_stats,
    take_train,
)
from jaxnoise.data.digits import load_digits
from jaxnoise.data.embeddings import FeatureFileError, load_features
from jaxnoise.data.folder import IMAGE_EXTENSIONS, ImageFolderError, load_image_folder
from jaxnoise.data.tfds import TFDS_LABEL_SETS, DatasetUnavailable, load_tfds
from jaxnoise.data.transforms import augment, normalize

__all__ = [
    "IMAGE_EXTENSIONS", "PUBLISHED_MEAN", "PUBLISHED_STD", "SOURCES", "TFDS_LABEL_SETS",
    "Dataset", "DatasetUnavailable", "FeatureFileError", "ImageFolderError", "augment",
    "balanced_subset", "load", "load_digits", "load_features", "load_image_folder", "load_tfds",
    "normalization_stats", "normalize", "take_train",
]  # fmt: skip

SOURCES = choices.DATA_SOURCES


def load(
    source: str,
    *,
    name: str = "",
    root: str = "",
    data_dir: str | None = None,
    cache_dir: str | None = None,
    features: str = "",
    test_features: str = "",
) -> Dataset:
    """Load a dataset from source 'tfds' (name), 'folder' (root), 'digits' or 'features'."""
    if source == "tfds":
        if not name:
            raise ValueError("data source 'tfds' needs a dataset name (e.g. name='cifar10')")
        return load_tfds(name, data_dir=data_dir)
    if source == "folder":
        if not root:
            raise ValueError(
                "data source 'folder' needs root=/path/to/images "
                "(layout ROOT/{train,test}/<class>/<img>)"
            )
        ds = load_image_folder(root, cache_dir=cache_dir)
        return dataclasses.replace(ds, name=name) if name else ds
    if source == "digits":
        return load_digits()
    if source == "features":
        if not features:
            raise ValueError("data source 'features' needs data.features=/path/to/file.npz")
        return load_features(features, test_features, name=name)
    raise ValueError(
        f"unknown data source {source!r}; expected one of {', '.join(repr(s) for s in SOURCES)}"
    )
