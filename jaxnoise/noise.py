"""Simulated and real label noise.

Every function returns ``(noisy_labels, mask)``: the noisy labels as an int32 array and the boolean
mask of labels that differ from the true ones. Noise injection runs once per run on the host
(numpy), is deterministic given ``seed``, and validates its input before doing anything.

Kinds (``apply(kind, ...)``):

- ``"symmetric"``: with probability ``rate`` the label is redrawn uniformly over *all* C classes,
  the true class included (the published code's meaning of "noise level"; the realised flip rate
  is ``rate * (C - 1) / C``).
- ``"symmetric_exclusive"``: with probability ``rate`` the label is redrawn over the C - 1 *other*
  classes (flip rate ``rate``).
- ``"asymmetric"``: class-pair flips with probability ``rate``. CIFAR-10: truck→automobile,
  bird→airplane, deer→horse, cat↔dog. CIFAR-100: the next fine class within the same superclass.
- ``"human"``: real human labels (e.g. CIFAR-10N), an array of the same length (label files are
  read and aligned to the samples by :mod:`jaxnoise.labels`).
- ``"none"``: the labels unchanged.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence

import numpy as np

from jaxnoise import choices

KINDS = choices.NOISE_KINDS

# CIFAR-10 class-pair flips (Patrini et al. 2017): truck→automobile, bird→airplane, deer→horse,
# cat↔dog.
CIFAR10_ASYMMETRIC = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}

# CIFAR-100 fine label -> coarse (superclass) label, in CIFAR-100's own label order.
CIFAR100_COARSE = np.array(
    [4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
     6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
     5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
     10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
     16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13],
    dtype=np.int32,
)  # fmt: skip


def _plain(value):
    """A numpy scalar as the Python value it holds (messages show 3, not np.int64(3))."""
    return value.item() if isinstance(value, np.generic) else value


def _check_num_classes(num_classes: int) -> int:
    """Return num_classes as int after checking it is an integer >= 2."""
    if (
        not isinstance(num_classes, numbers.Integral)
        or isinstance(num_classes, bool)
        or num_classes < 2
    ):
        raise ValueError(f"num_classes must be an integer >= 2, got {_plain(num_classes)!r}")
    return int(num_classes)


def _check_labels(labels: np.ndarray | Sequence[int], num_classes: int) -> np.ndarray:
    """Return labels as a 1-D int32 array after checking they lie in [0, num_classes)."""
    num_classes = _check_num_classes(num_classes)
    try:
        arr = np.asarray(labels)
    except (TypeError, ValueError) as e:  # ragged nested sequences and the like
        raise ValueError(f"labels must be a 1-D array of integers: {e}") from None
    if arr.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {arr.shape}")
    integer = np.issubdtype(arr.dtype, np.integer)
    if not (integer or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"labels must be integers, got dtype {arr.dtype}")
    if arr.size and not integer:
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            i = int(np.argmax(~np.isfinite(arr) | (arr != np.round(arr))))
            raise ValueError(
                f"labels must be integers, got dtype {arr.dtype} with value {arr[i]} at index {i}"
            )
    if arr.size:
        # Compare before converting, so huge or unsigned values are reported as they are.
        bad = (arr < 0) | (arr >= num_classes)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"labels must lie in [0, {num_classes}); label {arr[i]} at index {i} does not"
            )
    return arr.astype(np.int32)


def _check_rate(rate: float) -> float:
    """Return rate as float after checking it is a probability."""
    if not isinstance(rate, numbers.Real) or isinstance(rate, bool):
        raise ValueError(f"noise rate must be a number in [0, 1], got {_plain(rate)!r}")
    r = float(rate)
    if not (0.0 <= r <= 1.0):  # also rejects NaN
        raise ValueError(f"noise rate must be in [0, 1], got {_plain(rate)!r}")
    return r


def _check_seed(seed: int) -> int:
    """Return seed as int after checking it is a non-negative integer."""
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"noise seed must be a non-negative integer, got {_plain(seed)!r}")
    return int(seed)


def _result(labels: np.ndarray, noisy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    noisy = noisy.astype(np.int32)
    return noisy, noisy != labels


def symmetric(
    labels: np.ndarray | Sequence[int],
    *,
    rate: float,
    num_classes: int,
    seed: int,
    include_true: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Redraw each label with probability ``rate``, uniformly over all (or the other) classes."""
    labels = _check_labels(labels, num_classes)
    rate = _check_rate(rate)
    rng = np.random.default_rng(_check_seed(seed))
    selected = rng.random(labels.shape[0]) < rate
    if include_true:
        new = rng.integers(0, num_classes, size=labels.shape[0])
    else:
        # Uniform over the C - 1 other classes: shift by 1..C-1 modulo C.
        new = (labels + rng.integers(1, num_classes, size=labels.shape[0])) % num_classes
    return _result(labels, np.where(selected, new, labels))


def asymmetric(
    labels: np.ndarray | Sequence[int],
    *,
    rate: float,
    dataset: str = "cifar10",
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Class-pair flips with probability ``rate`` (CIFAR-10 pairs / CIFAR-100 superclass cycles)."""
    if not isinstance(dataset, str):
        raise ValueError(f"dataset must be 'cifar10' or 'cifar100', got {_plain(dataset)!r}")
    if dataset == "cifar10":
        num_classes = 10
        target = np.arange(10)
        for src, dst in CIFAR10_ASYMMETRIC.items():
            target[src] = dst
    elif dataset == "cifar100":
        num_classes = 100
        target = np.arange(100)
        for coarse in range(20):
            members = np.flatnonzero(CIFAR100_COARSE == coarse)
            target[members] = np.roll(members, -1)
    else:
        raise ValueError(
            "asymmetric noise is defined for dataset 'cifar10' or 'cifar100', got "
            f"{_plain(dataset)!r}"
        )
    labels = _check_labels(labels, num_classes)
    rate = _check_rate(rate)
    rng = np.random.default_rng(_check_seed(seed))
    selected = rng.random(labels.shape[0]) < rate
    return _result(labels, np.where(selected, target[labels], labels))


def from_human(
    labels: np.ndarray | Sequence[int],
    human_labels: np.ndarray | Sequence[int],
    *,
    num_classes: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Use real human labels (an array, one per sample in ``labels``' order) as the noisy labels."""
    labels = _check_labels(labels, num_classes)
    if isinstance(human_labels, (str, os.PathLike)):
        raise ValueError(
            f"human labels must be an array, got the path {os.fspath(human_labels)!r}: a label "
            "file is read and aligned by jaxnoise.labels (resolve, or read(path).labels)"
        )
    human = np.asarray(human_labels)
    if human.ndim != 1 or human.shape[0] != labels.shape[0]:
        raise ValueError(
            f"human labels has shape {human.shape}, expected ({labels.shape[0]},) "
            "(one label per training sample, in dataset order)"
        )
    try:
        human = _check_labels(human, num_classes)
    except ValueError as e:
        raise ValueError(f"human labels: {e}") from None
    return _result(labels, human)


def apply(
    kind: str,
    labels: np.ndarray | Sequence[int],
    *,
    num_classes: int,
    rate: float = 0.0,
    seed: int = 0,
    dataset: str = "cifar10",
    human_labels: np.ndarray | Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Inject label noise of the given kind; see the module docstring for the kinds.

    Every argument is checked first: bad input raises ``ValueError`` naming it and what is allowed.
    """
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; allowed: {', '.join(KINDS)}")
    _check_num_classes(num_classes)
    _check_rate(rate)
    _check_seed(seed)
    if kind == "none":
        labels = _check_labels(labels, num_classes)
        return _result(labels, labels.copy())
    if kind == "symmetric":
        return symmetric(labels, rate=rate, num_classes=num_classes, seed=seed)
    if kind == "symmetric_exclusive":
        return symmetric(labels, rate=rate, num_classes=num_classes, seed=seed, include_true=False)
    if kind == "asymmetric":
        expected = {"cifar10": 10, "cifar100": 100}.get(dataset) if isinstance(dataset, str) else 0
        if expected and num_classes != expected:
            raise ValueError(
                f"asymmetric noise for {_plain(dataset)!r} needs {expected} classes, but the "
                f"dataset has {num_classes}"
            )
        return asymmetric(labels, rate=rate, dataset=dataset, seed=seed)
    if kind == "human":
        if human_labels is None:
            raise ValueError("noise kind 'human' needs human_labels (an array)")
        return from_human(labels, human_labels, num_classes=num_classes)
    raise ValueError(f"unknown noise kind {kind!r}; allowed: {', '.join(KINDS)}")
