"""Your own embeddings as a source: a features file read and checked into a :class:`Dataset`.

A features :class:`Dataset` holds float32 (N, D) arrays where an image dataset holds uint8
(N, H, W, C) images; everything downstream (noise, train step, tracking pass, mixture,
report) is unchanged, except that augmentation is off and normalisation is per feature.

``data.source="features"`` reads your own embeddings, in one of two layouts:

* one ``.npz`` (``data.features=FILE.npz``, ``data.test_features=""``) with the keys
  ``train_features`` (N, D) float, ``train_labels`` (N,) int, optionally ``test_features``
  (M, D) float and ``test_labels`` (M,) int (both or neither), and optionally ``class_names``
  (K,) str and ``train_ids`` (N,) str (the samples' own identifiers: human label files are
  aligned by them, label_issues.csv reports them);
* a pair (``data.features=TRAIN``, ``data.test_features=TEST``), each side either an ``.npz``
  with ``features``, ``labels`` (and optionally ``class_names``), or an ``.npy`` of features
  whose labels are in the ``.npy`` beside it named ``<stem>_labels.npy``; the test side may be
  left out (``data.test_features=""`` with a train side as ``data.features``).

Without a test set the test split is empty: the run trains, fits the noise model and writes
label_issues.csv, and the test evaluation is skipped (no test accuracy).

Other keys are ignored. Without class names the classes are "0".."K-1", K = 1 + the largest
label. Bad input (a non-float or non-2-D feature array, NaN/inf rows, a feature dimension that
differs between train and test, a label count that differs from the number of rows, negative or
non-integer labels, fewer class names than labels) raises :class:`FeatureFileError` (a
``ValueError``) naming the file and the problem, before anything is compiled.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jaxnoise.data.dataset import Dataset

SINGLE_KEYS = ("train_features", "train_labels", "test_features", "test_labels")


class FeatureFileError(ValueError):
    """An embeddings file is missing, malformed, or holds bad values."""


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


def _check_contiguous(train_labels: np.ndarray, k: int, where: str) -> None:
    """Without class_names the labels define the classes: 0..K-1, each with a training sample
    (else a stray label, e.g. one 99 among 0..4, would train a 100-way head)."""
    missing = np.setdiff1d(np.arange(k), train_labels).tolist()
    if missing:
        shown = ", ".join(map(str, missing[:8])) + (", ..." if len(missing) > 8 else "")
        raise FeatureFileError(
            f"{where}: without class_names the labels must be 0..K-1 with every class in the "
            f"training labels, but labels go up to {k - 1} and {len(missing)} of those classes "
            f"have no training sample ({shown}); relabel the classes 0..K-1, or add class_names "
            "(one per class) to the file if those classes exist"
        )


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


def _single(path: str) -> tuple:
    """(train features, labels, test features, labels, class names, ids, where) of a single
    .npz (``test_*`` optional: both or neither)."""
    arrays = _load_file(path)
    required = ["train_features", "train_labels"]
    if "test_features" in arrays or "test_labels" in arrays:  # the test set is optional
        required += ["test_features", "test_labels"]
    missing = [k for k in required if k not in arrays]
    if missing:
        raise FeatureFileError(
            f"features file {path}: missing {', '.join(missing)} (a single features .npz "
            f"holds {', '.join(SINGLE_KEYS)}, the test pair optional; or pass the test side "
            "as data.test_features)"
        )
    where = f"features file {path}"
    xtr = _check_features(arrays["train_features"], where + " [train_features]")
    ytr = _check_labels(arrays["train_labels"], xtr.shape[0], where + " [train_labels]")
    xte, yte = _no_test(xtr)
    if "test_features" in arrays:
        xte = _check_features(arrays["test_features"], where + " [test_features]")
        yte = _check_labels(arrays["test_labels"], xte.shape[0], where + " [test_labels]")
    names = [str(n) for n in arrays["class_names"]] if "class_names" in arrays else None
    ids = None
    if "train_ids" in arrays:  # optional: the samples' own identifiers (label_issues.csv)
        ids = np.asarray(arrays["train_ids"]).astype(str)
        if ids.shape != ytr.shape or len(set(ids.tolist())) != len(ids):
            raise FeatureFileError(
                f"{where} [train_ids]: expected {len(ytr)} distinct ids, got shape {ids.shape}"
            )
    return xtr, ytr, xte, yte, names, ids, where


def _no_test(xtr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An empty test split of the training features' dimension."""
    return np.zeros((0, xtr.shape[1]), np.float32), np.zeros((0,), np.int32)


def _is_train_side(path: str) -> bool:
    """Whether ``data.features`` alone is one side of a pair (an .npy, or an .npz of
    ``features``/``labels``) rather than the single-.npz layout: a training set without a test
    set."""
    if path.endswith(".npy"):
        return True
    if not (path.endswith(".npz") and os.path.isfile(path)):
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            return "features" in z.files and "train_features" not in z.files
    except Exception:  # unreadable: _load_file names the problem
        return False


def load_features(path: str, test_path: str = "", *, name: str = "") -> Dataset:
    """Read embeddings (one .npz, or a train/test pair; see the module docstring); without a
    test side the test split is empty (no test accuracy)."""
    ids = None
    if test_path or _is_train_side(path):
        xtr, ytr, names, where = _side(path)
        xte, yte, names_te, where_te = (
            _side(test_path) if test_path else (*_no_test(xtr), None, where)
        )
        names = names or names_te
    else:
        xtr, ytr, xte, yte, names, ids, where = _single(path)
        where_te = where
    if xtr.shape[1] != xte.shape[1]:
        raise FeatureFileError(
            f"{where_te}: test features have D={xte.shape[1]}, the training features "
            f"({where}) D={xtr.shape[1]}"
        )
    k = int(max(ytr.max(), yte.max(initial=0))) + 1
    if names is None:
        _check_contiguous(ytr, k, where)
        names = [str(i) for i in range(k)]
    elif len(names) < k:
        raise FeatureFileError(f"{where}: {len(names)} class names for labels up to {k - 1}")
    label = name or Path(path).stem
    return Dataset(xtr, ytr, xte, yte, list(names), label, train_ids=ids)
