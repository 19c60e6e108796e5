"""Independent tests for ``jaxnoise.noise`` (synthetic label-noise generators).

All references (flip maps, CIFAR-100 superclass table, expected rates) are written
here in plain numpy/scipy from the spec; nothing is imported from the code under
test for the reference side.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import stats

from jaxnoise import noise

N = 50_000
C10 = 10
C100 = 100

# CIFAR-10 asymmetric map (Patrini et al. 2017, used by Arazo et al. 2019):
# truck->automobile, bird->airplane, deer->horse, cat->dog, dog->cat.
CIFAR10_MAP = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}

# Standard CIFAR-100 fine -> coarse (superclass) table, written independently.
REF_CIFAR100_COARSE = np.array(
    [4, 1, 14, 8, 0, 6, 7, 7, 18, 3,
     3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
     6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
     0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
     5, 19, 8, 8, 15, 13, 14, 17, 18, 10,
     16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
     10, 3, 2, 12, 12, 16, 12, 1, 9, 19,
     2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
     16, 19, 2, 4, 6, 19, 5, 5, 8, 19,
     18, 1, 2, 15, 6, 0, 17, 8, 14, 13]
)  # fmt: skip


def _ref_cifar100_next(coarse: np.ndarray) -> np.ndarray:
    """fine -> next fine class in the same superclass (increasing order, cyclic)."""
    nxt = np.empty(100, dtype=np.int64)
    for c in range(20):
        members = np.sort(np.flatnonzero(coarse == c))
        for i, f in enumerate(members):
            nxt[f] = members[(i + 1) % len(members)]
    return nxt


def _labels(num_classes: int, seed: int = 0, n: int = N) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_classes, n).astype(np.int32)


def _binom_tol(p: float, n: int) -> float:
    """5-sigma binomial tolerance (plus a tiny floor for p in {0, 1})."""
    return 5.0 * np.sqrt(p * (1.0 - p) / n) + 1e-12


def _check_output(labels, noisy, mask):
    """Return contract: int32 ndarray (N,), bool mask == (noisy != labels)."""
    assert isinstance(noisy, np.ndarray) and isinstance(mask, np.ndarray)
    assert noisy.dtype == np.int32, noisy.dtype
    assert mask.dtype == np.bool_, mask.dtype
    assert noisy.shape == mask.shape == (len(labels),)
    np.testing.assert_array_equal(mask, noisy != np.asarray(labels))


# --------------------------------------------------------------------------- symmetric


@pytest.mark.parametrize("rate", [0.2, 0.5, 0.8])
def test_symmetric_inclusive_flip_rate(rate):
    """Symmetric (include_true=True): realised flip rate == rate*(C-1)/C (binomial tol)."""
    labels = _labels(C10)
    noisy, mask = noise.symmetric(labels, rate=rate, num_classes=C10, seed=1)
    _check_output(labels, noisy, mask)
    p = rate * (C10 - 1) / C10
    assert abs(mask.mean() - p) < _binom_tol(p, N), (mask.mean(), p)
    assert noisy.min() >= 0 and noisy.max() < C10


@pytest.mark.parametrize("rate", [0.2, 0.5, 0.8])
def test_symmetric_exclusive_flip_rate(rate):
    """Symmetric (include_true=False): realised flip rate == rate (binomial tol)."""
    labels = _labels(C10)
    noisy, mask = noise.symmetric(labels, rate=rate, num_classes=C10, seed=2, include_true=False)
    _check_output(labels, noisy, mask)
    assert abs(mask.mean() - rate) < _binom_tol(rate, N), (mask.mean(), rate)


def test_symmetric_inclusive_rate1_uniform_over_all_classes():
    """include_true=True, rate=1: every label redrawn uniformly over ALL C classes.

    For each true class the noisy-label histogram is uniform over C (chi-square test,
    including the diagonal), so the flip rate is (C-1)/C.
    """
    labels = _labels(C10, seed=3)
    noisy, mask = noise.symmetric(labels, rate=1.0, num_classes=C10, seed=4)
    _check_output(labels, noisy, mask)
    table = np.zeros((C10, C10))
    np.add.at(table, (labels, noisy), 1)
    for y in range(C10):
        row = table[y]
        chi2, pval = stats.chisquare(row)  # H0: uniform over all C classes
        assert pval > 1e-4, (y, row, pval)
        assert row[y] > 0  # the true class is a possible outcome
    p = (C10 - 1) / C10
    assert abs(mask.mean() - p) < _binom_tol(p, N)


def test_symmetric_exclusive_rate1_changes_all_and_uniform_over_others():
    """include_true=False, rate=1: every label changes; new label uniform over C-1 others."""
    labels = _labels(C10, seed=5)
    noisy, mask = noise.symmetric(labels, rate=1.0, num_classes=C10, seed=6, include_true=False)
    _check_output(labels, noisy, mask)
    assert mask.all()
    table = np.zeros((C10, C10))
    np.add.at(table, (labels, noisy), 1)
    for y in range(C10):
        assert table[y, y] == 0
        others = np.delete(table[y], y)
        _, pval = stats.chisquare(others)
        assert pval > 1e-4, (y, others, pval)


def test_symmetric_flipped_labels_uniform_over_other_classes_partial_rate():
    """rate=0.4 (both variants): among changed samples, new label ~ uniform over the C-1 others."""
    labels = _labels(C10, seed=7)
    for include_true in (True, False):
        noisy, mask = noise.symmetric(
            labels, rate=0.4, num_classes=C10, seed=8, include_true=include_true
        )
        # offset (noisy - y) mod C is uniform over 1..C-1 for changed samples
        off = (noisy[mask] - labels[mask]) % C10
        counts = np.bincount(off, minlength=C10)
        assert counts[0] == 0
        _, pval = stats.chisquare(counts[1:])
        assert pval > 1e-4, (include_true, counts)


def test_symmetric_rate0_identity_and_determinism():
    """rate=0 -> identical labels; same seed -> same output; different seed -> different."""
    labels = _labels(C10, seed=9)
    for include_true in (True, False):
        noisy, mask = noise.symmetric(
            labels, rate=0.0, num_classes=C10, seed=0, include_true=include_true
        )
        _check_output(labels, noisy, mask)
        np.testing.assert_array_equal(noisy, labels)
        assert not mask.any()
    a, _ = noise.symmetric(labels, rate=0.5, num_classes=C10, seed=123)
    b, _ = noise.symmetric(labels, rate=0.5, num_classes=C10, seed=123)
    c, _ = noise.symmetric(labels, rate=0.5, num_classes=C10, seed=124)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_symmetric_does_not_mutate_input():
    """Generators are pure w.r.t. their input array."""
    labels = _labels(C10, seed=10, n=1000)
    before = labels.copy()
    noise.symmetric(labels, rate=1.0, num_classes=C10, seed=0)
    np.testing.assert_array_equal(labels, before)


@pytest.mark.parametrize("bad_rate", [-0.1, 1.5])
def test_symmetric_bad_rate_raises(bad_rate):
    """rate outside [0, 1] -> ValueError naming the value."""
    labels = _labels(C10, n=100)
    with pytest.raises(ValueError, match=re.escape(str(bad_rate))):
        noise.symmetric(labels, rate=bad_rate, num_classes=C10, seed=0)


@pytest.mark.parametrize("bad_label", [37, -3])
def test_symmetric_bad_label_raises(bad_label):
    """labels outside [0, C) -> ValueError naming the value."""
    labels = _labels(C10, n=100)
    labels[17] = bad_label
    with pytest.raises(ValueError, match=re.escape(str(bad_label))):
        noise.symmetric(labels, rate=0.3, num_classes=C10, seed=0)


# --------------------------------------------------------------------------- asymmetric


@pytest.mark.parametrize("rate", [0.2, 0.4, 1.0])
def test_asymmetric_cifar10_map_and_rate(rate):
    """CIFAR-10 asymmetric: 9->1, 2->0, 4->7, 3->5, 5->3 with prob rate; others never change."""
    labels = _labels(C10, seed=11)
    noisy, mask = noise.asymmetric(labels, rate=rate, dataset="cifar10", seed=12)
    _check_output(labels, noisy, mask)
    src = np.isin(labels, list(CIFAR10_MAP))
    assert not mask[~src].any(), "classes outside the map must never change"
    expected_target = np.array([CIFAR10_MAP.get(int(y), -1) for y in range(C10)])[labels]
    np.testing.assert_array_equal(noisy[mask], expected_target[mask])
    n_src = int(src.sum())
    assert abs(mask[src].mean() - rate) < _binom_tol(rate, n_src), (mask[src].mean(), rate)
    # per source class as well (each ~5000 samples)
    for y in CIFAR10_MAP:
        sel = labels == y
        assert abs(mask[sel].mean() - rate) < _binom_tol(rate, int(sel.sum())), y


def test_cifar100_coarse_table():
    """noise.CIFAR100_COARSE: length 100, each of the 20 superclasses exactly 5 times,
    and equal to the standard fine->coarse table."""
    coarse = np.asarray(noise.CIFAR100_COARSE)
    assert coarse.shape == (100,)
    assert np.issubdtype(coarse.dtype, np.integer)
    np.testing.assert_array_equal(np.bincount(coarse, minlength=20), np.full(20, 5))
    np.testing.assert_array_equal(coarse, REF_CIFAR100_COARSE)


@pytest.mark.parametrize("rate", [0.3, 1.0])
def test_asymmetric_cifar100_next_in_superclass(rate):
    """CIFAR-100 asymmetric: with prob rate, fine label -> next fine class of its superclass
    (increasing fine order, cyclic); coarse label always preserved."""
    labels = _labels(C100, seed=13)
    noisy, mask = noise.asymmetric(labels, rate=rate, dataset="cifar100", seed=14)
    _check_output(labels, noisy, mask)
    np.testing.assert_array_equal(REF_CIFAR100_COARSE[noisy], REF_CIFAR100_COARSE[labels])
    nxt = _ref_cifar100_next(REF_CIFAR100_COARSE)
    np.testing.assert_array_equal(noisy[mask], nxt[labels[mask]])
    assert abs(mask.mean() - rate) < _binom_tol(rate, N), (mask.mean(), rate)
    if rate == 1.0:
        np.testing.assert_array_equal(noisy, nxt[labels])


def test_asymmetric_rate0_and_determinism():
    """rate=0 -> identical; same seed reproducible; different seed differs."""
    for ds, c in (("cifar10", C10), ("cifar100", C100)):
        labels = _labels(c, seed=15)
        noisy, mask = noise.asymmetric(labels, rate=0.0, dataset=ds, seed=0)
        np.testing.assert_array_equal(noisy, labels)
        assert not mask.any()
        a, _ = noise.asymmetric(labels, rate=0.4, dataset=ds, seed=5)
        b, _ = noise.asymmetric(labels, rate=0.4, dataset=ds, seed=5)
        d, _ = noise.asymmetric(labels, rate=0.4, dataset=ds, seed=6)
        np.testing.assert_array_equal(a, b)
        assert (a != d).any()


def test_asymmetric_errors():
    """Unknown dataset, bad rate, out-of-range labels -> ValueError naming the value."""
    labels = _labels(C10, n=100)
    with pytest.raises(ValueError, match="imagenet"):
        noise.asymmetric(labels, rate=0.2, dataset="imagenet", seed=0)
    with pytest.raises(ValueError, match=re.escape("1.2")):
        noise.asymmetric(labels, rate=1.2, dataset="cifar10", seed=0)
    bad = labels.copy()
    bad[3] = 42  # out of range for cifar10
    with pytest.raises(ValueError, match="42"):
        noise.asymmetric(bad, rate=0.2, dataset="cifar10", seed=0)
    bad100 = _labels(C100, n=100)
    bad100[5] = 123
    with pytest.raises(ValueError, match="123"):
        noise.asymmetric(bad100, rate=0.2, dataset="cifar100", seed=0)


# --------------------------------------------------------------------------- human


def _human_pair(n=1000, seed=16):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C10, n).astype(np.int32)
    human = labels.copy()
    flip = rng.random(n) < 0.3
    human[flip] = rng.integers(0, C10, flip.sum())
    return labels, human


def test_from_human_array():
    """from_human with an array: noisy == human labels, mask == human != labels."""
    labels, human = _human_pair()
    noisy, mask = noise.from_human(labels, human, num_classes=C10)
    _check_output(labels, noisy, mask)
    np.testing.assert_array_equal(noisy, human)


def test_from_human_errors():
    """Wrong length and out-of-range human labels -> ValueError naming the value; a path is
    refused (label files are read and aligned by jaxnoise.labels: test_human_labels.py)."""
    labels, human = _human_pair()
    with pytest.raises(ValueError, match="999"):
        noise.from_human(labels, human[:999], num_classes=C10)
    bad = human.copy()
    bad[10] = 77
    with pytest.raises(ValueError, match="77"):
        noise.from_human(labels, bad, num_classes=C10)
    bad[10] = -4
    with pytest.raises(ValueError, match="-4"):
        noise.from_human(labels, bad, num_classes=C10)
    with pytest.raises(ValueError, match=r"got the path 'h\.npy'.*jaxnoise\.labels"):
        noise.from_human(labels, "h.npy", num_classes=C10)


# --------------------------------------------------------------------------- apply


def test_apply_dispatch_matches_direct_calls():
    """apply(kind, ...) == the corresponding generator with the same arguments."""
    labels = _labels(C10, seed=17, n=5000)
    _, human = _human_pair(n=5000, seed=18)

    noisy, mask = noise.apply("none", labels, num_classes=C10, rate=0.7, seed=3)
    _check_output(labels, noisy, mask)
    np.testing.assert_array_equal(noisy, labels)
    assert not mask.any()

    got = noise.apply("symmetric", labels, num_classes=C10, rate=0.4, seed=3)
    ref = noise.symmetric(labels, rate=0.4, num_classes=C10, seed=3, include_true=True)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])

    got = noise.apply("symmetric_exclusive", labels, num_classes=C10, rate=0.4, seed=3)
    ref = noise.symmetric(labels, rate=0.4, num_classes=C10, seed=3, include_true=False)
    np.testing.assert_array_equal(got[0], ref[0])

    got = noise.apply("asymmetric", labels, num_classes=C10, rate=0.4, seed=3, dataset="cifar10")
    ref = noise.asymmetric(labels, rate=0.4, dataset="cifar10", seed=3)
    np.testing.assert_array_equal(got[0], ref[0])

    labels100 = _labels(C100, seed=19, n=5000)
    got = noise.apply(
        "asymmetric", labels100, num_classes=C100, rate=0.4, seed=3, dataset="cifar100"
    )
    ref = noise.asymmetric(labels100, rate=0.4, dataset="cifar100", seed=3)
    np.testing.assert_array_equal(got[0], ref[0])

    got = noise.apply("human", labels, num_classes=C10, human_labels=human)
    np.testing.assert_array_equal(got[0], human)
    np.testing.assert_array_equal(got[1], human != labels)


def test_apply_unknown_kind():
    """Unknown kind -> ValueError naming it."""
    labels = _labels(C10, n=100)
    with pytest.raises(ValueError, match="bogus_kind"):
        noise.apply("bogus_kind", labels, num_classes=C10, rate=0.2)
