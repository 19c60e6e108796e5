"""The in-memory dataset every source gives, its subsets, and the input normalisation statistics.

A :class:`Dataset` holds uint8 (N, H, W, C) images, or float32 (N, D) features (the
``features`` source and the extractors), with int32 labels, the samples' identifiers and any
named label sets that travel with them; :func:`balanced_subset` and :func:`take_train` keep a
part of the training split, :func:`normalization_stats` gives the per-channel mean and std that
:func:`jaxnoise.data.normalize` applies on the device.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Dataset:
    """An in-memory image-classification dataset: uint8 NHWC images and int32 labels."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    name: str
    train_paths: list[str] | None = None
    # Per-sample identifiers of the training set, kept through subsets so that label files are
    # aligned by identity: tfds the record's `id` (CIFAR: "train_XXXXX", XXXXX = the position
    # in the original CIFAR order), image folders the path relative to the root, features a
    # given `train_ids` array or the row index. None: the row index.
    train_ids: np.ndarray | None = None
    # Named per-sample label sets of the training set besides `train_labels` (e.g. tfds
    # cifar10_n's worse_label, aggre_label, ...; or a resolved label file), aligned with it.
    label_sets: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        """Check that arrays and paths have consistent shapes."""
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.ndim not in (2, 4):  # features: float (N, D); see jaxnoise/data/embeddings.py
                raise ValueError(
                    f"{split}_images must be (N, H, W, C) images or (N, D) features, got shape "
                    f"{images.shape}"
                )
            if labels.shape != (images.shape[0],):
                raise ValueError(
                    f"{split}_labels must have shape ({images.shape[0]},), got {labels.shape}"
                )
        if self.train_paths is not None and len(self.train_paths) != len(self.train_labels):
            raise ValueError(
                f"train_paths has {len(self.train_paths)} entries for "
                f"{len(self.train_labels)} training images"
            )
        n = len(self.train_labels)
        if self.train_ids is not None:
            self.train_ids = np.asarray(self.train_ids).astype(str)
            if self.train_ids.shape != (n,):
                raise ValueError(f"train_ids has shape {self.train_ids.shape}, expected ({n},)")
        for key, values in self.label_sets.items():
            if np.shape(values) != (n,):
                raise ValueError(f"label set {key!r} has shape {np.shape(values)}, expected ({n},)")

    def ids(self) -> np.ndarray:
        """The training samples' identifiers as strings (the row index when none are known)."""
        if self.train_ids is not None:
            return self.train_ids
        return np.arange(len(self.train_labels)).astype(str)

    def take(self, rows: np.ndarray) -> Dataset:
        """The dataset with only the training samples ``rows`` (test split untouched)."""
        rows = np.asarray(rows)
        return dataclasses.replace(
            self,
            train_images=self.train_images[rows],
            train_labels=self.train_labels[rows],
            train_paths=None if self.train_paths is None else [self.train_paths[i] for i in rows],
            train_ids=None if self.train_ids is None else self.train_ids[rows],
            label_sets={k: np.asarray(v)[rows] for k, v in self.label_sets.items()},
        )

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape (H, W, C) of one image, or (D,) of one feature vector."""
        return tuple(int(s) for s in self.train_images.shape[1:])

    @property
    def is_features(self) -> bool:
        """Whether the samples are (N, D) feature vectors rather than images."""
        return self.train_images.ndim == 2

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel mean and (population) std of train_images / 255, as float32 (C,)."""
        x = self.train_images
        if x.ndim == 2:  # features: per-feature mean / std (a constant feature gets std 1)
            mean = np.zeros(x.shape[1], np.float64)
            sq = np.zeros(x.shape[1], np.float64)
            for start in range(0, x.shape[0], 65536):  # float64 sums without a full copy
                block = x[start : start + 65536].astype(np.float64)
                mean += block.sum(0)
                sq += (block * block).sum(0)
            mean /= x.shape[0]
            std = np.sqrt(np.maximum(sq / x.shape[0] - mean**2, 0.0))
            std[std <= 1e-12 * np.maximum(np.abs(mean), 1.0)] = 1.0
            return mean.astype(np.float32), std.astype(np.float32)
        if x.dtype != np.uint8:
            flat = x.reshape(-1, x.shape[-1]).astype(np.float64) / 255.0
            return flat.mean(0).astype(np.float32), flat.std(0).astype(np.float32)
        # Exact and memory-light for uint8: a 256-bin histogram per channel.
        values = np.arange(256, dtype=np.float64) / 255.0
        means, stds = [], []
        for ch in range(x.shape[-1]):
            counts = np.bincount(x[..., ch].ravel(), minlength=256).astype(np.float64)
            n = counts.sum()
            mean = (counts * values).sum() / n
            var = max((counts * values**2).sum() / n - mean**2, 0.0)
            means.append(mean)
            stds.append(np.sqrt(var))
        return np.asarray(means, np.float32), np.asarray(stds, np.float32)


# The published code's input normalisation (CIFAR-10 constants, used there for CIFAR-100 too).
PUBLISHED_MEAN = np.asarray((0.4914, 0.4822, 0.4465), np.float32)
PUBLISHED_STD = np.asarray((0.2023, 0.1994, 0.2010), np.float32)


def normalization_stats(ds: Dataset, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) of the inputs: "published" constants or the "dataset"'s own."""
    if kind == "dataset":
        return ds.mean_std()
    if kind != "published":
        raise ValueError(f"normalization must be 'published' or 'dataset', got {kind!r}")
    channels = ds.image_shape[-1]
    if channels != 3:
        raise ValueError(
            f"config.data.normalization = 'published' is for 3-channel images (the CIFAR "
            f"constants); dataset {ds.name!r} has {channels} channel(s): use 'dataset'"
        )
    return PUBLISHED_MEAN, PUBLISHED_STD


def balanced_subset(ds: Dataset, per_class: int, *, seed: int) -> Dataset:
    """Keep `per_class` random training images of every class (test split untouched)."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(ds.num_classes):
        idx = np.flatnonzero(ds.train_labels == c)
        if len(idx) < per_class:
            raise ValueError(
                f"class {c} ({str(ds.class_names[c])!r}) has {len(idx)} training images, "
                f"fewer than per_class={per_class}"
            )
        picks.append(rng.choice(idx, per_class, replace=False))
    return ds.take(np.sort(np.concatenate(picks)))


def take_train(ds: Dataset, n: int) -> Dataset:
    """Keep the first `n` training samples (test split untouched)."""
    return ds.take(np.arange(min(n, len(ds.train_labels))))
