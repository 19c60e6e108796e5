"""Real human labels (CIFAR-10N / CIFAR-100N, or a user's own) aligned to the dataset by identity.

A label set comes either from the data source itself (tfds ``cifar10_n`` / ``cifar100_n``: its
records carry ``worse_label``, ``aggre_label``, ...) or from a label file (``label_file``, read by
``jaxnoise.labels.files``; the set chosen by ``label_key``, which takes the CIFAR-N short names
``worse``, ``aggre``, ``random1``..``random3`` (or ``rand1``..), ``noisy``, ``clean`` for both
alike: :data:`SHORT_NAMES`). A file's rows are mapped to the dataset's samples by
``label_order``:

* ``"cifar"``: the original CIFAR order (the python batches ``data_batch_1..5`` concatenated), the
  order of the CIFAR-N release. Row ``i`` belongs to the record whose tfds ``id`` is
  ``train_<i:05d>``: tfds stores its records in another order, so by position they would land on
  the wrong images;
* ``"dataset"``: the dataset's own order as loaded (tfds record order, the image folder's sorted
  listing, the rows of a features file);
* ``"id"``: by the file's ``id``/``path`` column (CSV) or ``ids``/``index`` array: each sample's
  identifier (``Dataset.ids()``: tfds ``id``, the image path relative to the folder root, a
  features file's ``train_ids`` or row index; on a tfds CIFAR dataset also its index in the
  original CIFAR order, as the ``XXXXX`` of ``train_XXXXX``) must appear in it exactly once;
* ``"auto"`` (default): ``"id"`` when the file names its samples; ``"cifar"`` for a file holding
  the CIFAR-N ``clean_label`` on a tfds CIFAR dataset; ``"dataset"`` for features and digits,
  whose rows are the user's own order. Anything else is ambiguous and refused with what to pass.

Whenever the file also holds ``clean_label`` (the CIFAR-N files do), the aligned clean labels
must equal the dataset's labels: a wrong order cannot pass silently.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import TYPE_CHECKING

import numpy as np

from jaxnoise import choices
from jaxnoise.labels import files

if TYPE_CHECKING:  # a type only: the validator reads label files without importing jax
    from jaxnoise.data import Dataset

ORDERS = choices.LABEL_ORDERS
KEY = "human"  # the resolved set's key in Dataset.label_sets
# CIFAR-100N's noisy set is "noisy_label" in the official file and "noise_label" in tfds.
ALIASES = {"noisy_label": "noise_label", "noise_label": "noisy_label"}
_CIFAR_ID = re.compile(r"^train_(\d{5})$")
# Short names of the CIFAR-N label sets (the CIFAR-N code's and the configs' arguments), taken by
# label_key for the data source's sets and a file's alike; a set of that very name wins.
SHORT_NAMES = {
    "aggre": "aggre_label", "worse": "worse_label", "worst": "worse_label",
    **{f"{p}{i}": f"random_label{i}" for p in ("rand", "random") for i in (1, 2, 3)},
    "noisy": "noisy_label", "noisy100": "noisy_label", "clean": "clean_label",
}  # fmt: skip


def key_names(key: str) -> list[str]:
    """The label-set names ``key`` stands for, in order: itself, its long name, their aliases."""
    names = [key, SHORT_NAMES.get(key, "")]
    names += [ALIASES.get(n, "") for n in names]
    return list(dict.fromkeys(n for n in names if n))


def resolve(ds: Dataset, *, label_file: str, label_key: str, label_order: str = "auto") -> Dataset:
    """``ds`` with the chosen human label set aligned to its samples in ``label_sets[KEY]``."""
    if label_order not in ORDERS:
        raise ValueError(f"config.label_order = {label_order!r}; allowed: {', '.join(ORDERS)}")
    if not label_file:
        labels = _from_source(ds, label_key)
    else:
        labels = _from_file(ds, label_file, label_key, label_order)
    return dataclasses.replace(ds, label_sets={**ds.label_sets, KEY: labels})


def _from_source(ds: Dataset, key: str) -> np.ndarray:
    """A label set the data source carries (tfds cifar10_n / cifar100_n)."""
    for k in key_names(key):
        if k in ds.label_sets:
            return np.asarray(ds.label_sets[k])
    have = ", ".join(sorted(ds.label_sets)) or "none"
    raise ValueError(
        f"config.label_key = {key!r}: dataset {ds.name!r} carries no such label set (it has: "
        f"{have}); pass config.label_file=FILE for labels from a file"
    )


def _cifar_rows(ds: Dataset) -> np.ndarray | None:
    """Each sample's position in the original CIFAR order, from its tfds id (None if unknown)."""
    if ds.train_ids is None:
        return None
    found = [_CIFAR_ID.match(i) for i in ds.train_ids]
    if not all(found):
        return None
    return np.asarray([int(m.group(1)) for m in found])


def _id_rows(ds: Dataset, ids: np.ndarray, path: str) -> np.ndarray:
    """For every sample of ``ds``, the row of the file that names it."""
    where: dict[str, int] = {}
    for row, i in enumerate(ids.tolist()):
        key = os.path.normpath(str(i).strip())
        if key in where:
            raise ValueError(
                f"label file {path!r}: id {i!r} appears twice (rows {where[key]} and {row})"
            )
        where[key] = row
    names = [ds.ids()]
    cifar = _cifar_rows(ds)
    if cifar is not None:  # an index array: a CIFAR sample's position in the original order
        names.append(cifar.astype(str))
    if ds.train_paths is not None:  # image folders: also absolute paths, or relative to train/
        names += [
            np.asarray(ds.train_paths),
            np.asarray([os.path.relpath(p, "train") for p in ds.ids()]),
        ]
    rows = np.full(len(ds.train_labels), -1)
    for candidates in names:
        for n, name in enumerate(candidates.tolist()):
            if rows[n] < 0:
                rows[n] = where.get(os.path.normpath(name), -1)
    missing = np.flatnonzero(rows < 0)
    if missing.size:
        raise ValueError(
            f"label file {path!r}: {missing.size} of {rows.size} training samples are not in its "
            f"id column, e.g. {str(ds.ids()[missing[0]])!r} (ids are the tfds id or the CIFAR "
            "index, the path relative to the image folder, or a features file's train_ids)"
        )
    return rows


def _auto_order(ds: Dataset, labels: files.LabelSet, keys: list[str]) -> str:
    """The order a file without an explicit label_order must be in, or a refusal."""
    if labels.ids is not None:
        return "id"
    if _cifar_rows(ds) is not None:
        if "clean_label" in keys:
            return "cifar"  # the CIFAR-N release's files; checked by their clean_label below
        raise ValueError(
            f"label file {labels.path!r} has no id column and dataset {ds.name!r} is a tfds "
            "CIFAR dataset, whose record order is not the original CIFAR order: pass "
            "config.label_order='cifar' (files of the CIFAR-N release and anything in the "
            "original CIFAR order) or 'dataset' (the tfds record order)"
        )
    if ds.train_paths is not None:
        raise ValueError(no_path_column(labels.path))
    return "dataset"


def no_path_column(path: str) -> str:
    """Why label_order="auto" refuses a file without ids on an image folder, and what to do."""
    return (
        f"label file {path!r} has no path column: give a CSV with 'path,label' rows (paths "
        "relative to the image folder), or pass config.label_order='dataset' if it follows "
        "the folder's sorted listing (train/<class>/<file>)"
    )


def names_its_samples(path: str, key: str) -> bool:
    """Whether the label set ``key`` of the file comes with the samples' ids (a CSV id/path
    column, an ids array): ``label_order="auto"`` on an image folder needs them."""
    return files.read(path, file_key(files.available_keys(path), key)).ids is not None


def file_key(keys: list[str], key: str) -> str:
    """The name ``key`` stands for among a file's label sets ``keys`` (``key`` itself when none
    matches: reading it then says which sets the file has)."""
    return next((k for k in key_names(key) if k in keys), key)


def _from_file(ds: Dataset, path: str, key: str, order: str) -> np.ndarray:
    """The label set ``key`` of ``path``, with its rows mapped to the samples of ``ds``."""
    keys = files.available_keys(path)
    key = file_key(keys, key)
    chosen = files.read(path, key)
    if order == "auto":
        order = _auto_order(ds, chosen, keys)
    n = len(ds.train_labels)
    if order == "id":
        if chosen.ids is None:
            raise ValueError(
                f"config.label_order = 'id': label file {path!r} has no id/path "
                "column (CSV) or ids array (.npz)"
            )
        rows = _id_rows(ds, chosen.ids, path)
    elif order == "cifar":
        rows = _cifar_rows(ds)
        if rows is None:
            example = str(ds.ids()[0]) if n else ""
            raise ValueError(
                f"config.label_order = 'cifar' needs the tfds ids of a CIFAR dataset "
                f"(train_XXXXX); dataset {ds.name!r} has ids like {example!r}: give a CSV with "
                "an id/path column, or label_order='dataset'"
            )
        if rows.max(initial=-1) >= len(chosen.labels):
            raise ValueError(
                f"label file {path!r} has {len(chosen.labels)} rows; the dataset's "
                f"CIFAR ids reach train_{rows.max():05d}"
            )
    else:
        if len(chosen.labels) != n:
            raise ValueError(
                f"label file {path!r} has shape {chosen.labels.shape}, expected ({n},) (one "
                "label per training sample, in dataset order)"
            )
        rows = np.arange(n)
    labels = np.asarray(chosen.labels)[rows]
    if labels.size and (labels.min() < 0 or labels.max() >= ds.num_classes):
        raise ValueError(
            f"label file {path!r}: labels must lie in [0, {ds.num_classes}), got "
            f"[{labels.min()}, {labels.max()}]"
        )
    if "clean_label" in keys and key != "clean_label":
        clean = np.asarray(files.read(path, "clean_label").labels)[rows]
        wrong = int(np.sum(clean != ds.train_labels))
        if wrong:
            raise ValueError(
                f"label file {path!r}: aligned by label_order={order!r}, its clean_label "
                f"disagrees with the dataset's labels on {wrong} of {n} samples, so the rows "
                "land on the wrong images: pass the label_order the file is in"
            )
    return labels
