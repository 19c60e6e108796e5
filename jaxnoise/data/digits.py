"""scikit-learn's embedded 8x8 digits as a source: no network and no files at all."""

from __future__ import annotations

import numpy as np

from jaxnoise.data.dataset import Dataset


def load_digits() -> Dataset:
    """scikit-learn's 8x8 digits as uint8 (N, 8, 8, 1); stratified 1500 train / 297 test."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int32)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=297, stratify=labels, random_state=0
    )
    return Dataset(
        train_images=images[idx_train],
        train_labels=labels[idx_train],
        test_images=images[idx_test],
        test_labels=labels[idx_test],
        class_names=[str(i) for i in range(10)],
        name="digits",
    )
