"""Frozen features: the k-means extractor's equations, the embeddings source, the cache, a run.

References are written here in plain numpy from Coates, Lee & Ng (AISTATS 2011), section 3 and
their released code (contrast normalisation with var + 10, ZCA with eps 0.1, triangle
activation, 4-quadrant sum pooling); none is imported from the code under test.
"""

from __future__ import annotations

import dataclasses
import importlib
import os

import jax.numpy as jnp
import numpy as np
import pytest

from configs import default, features_m_dyr_h
from jaxnoise import config as config_lib
from jaxnoise import data, loops
from jaxnoise.data import embeddings, extract, extractors

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------------------------------
# numpy references


def ref_patches(images: np.ndarray, s: int) -> np.ndarray:
    """Every s x s patch at stride 1, flattened row, column, channel (loops)."""
    n, h, w, c = images.shape
    out = np.empty((n, h - s + 1, w - s + 1, s * s * c))
    for i in range(n):
        for y in range(h - s + 1):
            for x in range(w - s + 1):
                out[i, y, x] = images[i, y : y + s, x : x + s, :].reshape(-1)
    return out


def ref_normalize(p: np.ndarray, eps: float) -> np.ndarray:
    """Coates et al. step 2: x <- (x - mean(x)) / sqrt(var(x) + eps), per patch (ddof 1)."""
    out = np.empty_like(p, dtype=np.float64)
    for i, row in enumerate(p.reshape(-1, p.shape[-1])):
        out.reshape(-1, p.shape[-1])[i] = (row - row.mean()) / np.sqrt(row.var(ddof=1) + eps)
    return out


def ref_zca(x: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """ZCA: m = mean, C = cov (ddof 1) = V D V^T, W = V (D + eps I)^(-1/2) V^T (via the SVD)."""
    m = x.mean(0)
    cov = (x - m).T @ (x - m) / (len(x) - 1)
    u, d, _ = np.linalg.svd(cov)  # symmetric PSD: the SVD is the eigendecomposition
    return m, u @ np.diag(1.0 / np.sqrt(d + eps)) @ u.T


def ref_triangle(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """f_k(x) = max(0, mu(z) - z_k), z_k = ||x - c_k||_2 (loops over centroids)."""
    z = np.stack([np.sqrt(((x - ck) ** 2).sum(-1)) for ck in c], -1)
    return np.maximum(z.mean(-1, keepdims=True) - z, 0.0)


def ref_pool(maps: np.ndarray) -> np.ndarray:
    """Sum over the 4 quadrants, split at MATLAB round(rows / 2): [TL, BL, TR, BR] x K."""
    r, s = maps.shape[1:3]
    hr, hs = int(np.floor(r / 2 + 0.5)), int(np.floor(s / 2 + 0.5))
    out = []
    for rows, cols in (
        (slice(0, hr), slice(0, hs)),
        (slice(hr, r), slice(0, hs)),
        (slice(0, hr), slice(hs, s)),
        (slice(hr, r), slice(hs, s)),
    ):
        total = np.zeros((maps.shape[0], maps.shape[3]))
        for y in range(r)[rows]:
            for x in range(s)[cols]:
                total += maps[:, y, x, :]
        out.append(total)
    return np.concatenate(out, -1)


# ------------------------------------------------------------------------------------------------
# The extractor's pieces


def test_patches_match_loops():
    images = RNG.integers(0, 256, (2, 7, 6, 3)).astype(np.float32)
    got = np.asarray(extractors.extract_patches(jnp.asarray(images), 3))
    np.testing.assert_array_equal(got, ref_patches(images, 3))


def test_contrast_normalisation_is_per_patch_mean_and_var_plus_eps():
    p = RNG.uniform(0, 255, (5, 4, 108)).astype(np.float32)
    p[0, 0] = 7.0  # a flat patch: all zeros, no division by zero (the eps)
    got = np.asarray(extractors.normalize_patches(jnp.asarray(p), 10.0))
    np.testing.assert_allclose(got, ref_normalize(p, 10.0), rtol=1e-5, atol=1e-5)
    assert np.all(got[0, 0] == 0)


def test_zca_whitening_matches_reference_and_whitens():
    a = RNG.normal(size=(6, 6))
    x = RNG.normal(size=(4000, 6)) @ a + 3.0  # correlated, offset
    m, w = extractors.fit_whitening(x, 0.1)
    rm, rw = ref_zca(x, 0.1)
    np.testing.assert_allclose(m, rm, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(w, rw, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(w, w.T, atol=1e-6)  # ZCA: symmetric (rotation back)
    # With eps -> 0 the whitened covariance is the identity.
    m0, w0 = extractors.fit_whitening(x, 1e-9)
    xw = np.asarray(
        extractors.whiten(jnp.asarray(x, jnp.float32), jnp.asarray(m0), jnp.asarray(w0))
    )
    np.testing.assert_allclose(np.cov(xw, rowvar=False), np.eye(6), atol=2e-3)


def test_triangle_activation():
    x = RNG.normal(size=(3, 5, 8)).astype(np.float32)
    c = RNG.normal(size=(7, 8)).astype(np.float32)
    got = np.asarray(extractors.triangle(jnp.asarray(x), jnp.asarray(c)))
    ref = ref_triangle(x.astype(np.float64), c.astype(np.float64))
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    assert (got == 0).mean() > 0.2  # about half the responses are zero ("sparse")


@pytest.mark.parametrize("rows, cols", [(27, 27), (5, 4), (3, 3)])
def test_quadrant_sum_pooling(rows, cols):
    maps = RNG.uniform(size=(2, rows, cols, 3))
    got = np.asarray(extractors.quadrant_pool(jnp.asarray(maps, jnp.float32)))
    np.testing.assert_allclose(got, ref_pool(maps), rtol=1e-5)
    np.testing.assert_allclose(got.reshape(2, 4, 3).sum(1), maps.sum((1, 2)), rtol=1e-5)


def test_encoding_is_the_composition_of_the_steps():
    images = RNG.integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    patches = ref_patches(images.astype(np.float64), 6).reshape(-1, 108)
    normed = ref_normalize(patches, 10.0)
    m, w = ref_zca(normed, 0.1)
    centroids = RNG.normal(size=(5, 108))
    want = ref_pool(ref_triangle((normed - m) @ w, centroids).reshape(2, 3, 3, 5))
    arrays = {
        k: jnp.asarray(v, jnp.float32)
        for k, v in {"mean": m, "whitening": w, "centroids": centroids}.items()
    }
    got = np.asarray(extractors.kmeans_encode(jnp.asarray(images), arrays, patch=6, patch_eps=10.0))
    assert got.shape == (2, 20)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)


def test_kmeans_iteration_is_a_lloyd_step():
    x = RNG.normal(size=(300, 4)).astype(np.float32)
    c = x[:6].copy()
    c[5] = 100.0  # no point is nearest: the empty cluster keeps its centroid
    new, loss = extractors._kmeans_iteration(jnp.asarray(x), jnp.asarray(c))
    d = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    lab = d.argmin(1)
    ref = np.stack([x[lab == k].mean(0) if (lab == k).any() else c[k] for k in range(6)])
    np.testing.assert_allclose(np.asarray(new), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(loss), d.min(1).mean(), rtol=1e-4)


def test_feature_batches_skip_augmentation_and_normalise_per_feature():
    x = jnp.asarray(RNG.normal(size=(4, 3)), jnp.float32)
    key = __import__("jax").random.key(0)
    np.testing.assert_array_equal(data.augment(x, key, padding=0, flip=False), x)
    with pytest.raises(ValueError, match="cannot be cropped or flipped"):
        data.augment(x, key, padding=4, flip=True)
    mean, std = np.asarray([1.0, 2.0, 3.0]), np.asarray([2.0, 4.0, 0.5])
    got = np.asarray(data.normalize(x, mean, std))  # no division by 255 for features
    np.testing.assert_allclose(got, (np.asarray(x) - mean) / std, rtol=1e-6)
    ds = data.Dataset(
        np.c_[np.asarray(x), np.ones(4)].astype(np.float32),
        np.zeros(4, np.int32),
        np.zeros((1, 4), np.float32),
        np.zeros(1, np.int32),
        ["a"],
        "f",
    )
    m, s = ds.mean_std()
    np.testing.assert_allclose(m[:3], np.asarray(x).mean(0), rtol=1e-5)
    np.testing.assert_allclose(s[:3], np.asarray(x).std(0), rtol=1e-5)
    assert s[3] == 1.0  # a constant feature is not divided by zero


# ------------------------------------------------------------------------------------------------
# The embeddings source


def _single(tmp_path, name="emb.npz", **over):
    arrays = {
        "train_features": RNG.normal(size=(20, 5)).astype(np.float32),
        "train_labels": np.arange(20) % 3,
        "test_features": RNG.normal(size=(6, 5)).astype(np.float32),
        "test_labels": np.arange(6) % 3,
    }
    arrays.update(over)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def test_single_npz_and_pairs_load(tmp_path):
    ds = embeddings.load_features(_single(tmp_path, class_names=np.asarray(["a", "b", "c"])))
    assert ds.is_features and ds.image_shape == (5,) and ds.class_names == ["a", "b", "c"]
    assert ds.train_images.dtype == np.float32 and ds.train_labels.dtype == np.int32
    # .npz pair
    xtr, xte = RNG.normal(size=(10, 4)), RNG.normal(size=(3, 4))
    np.savez(tmp_path / "tr.npz", features=xtr, labels=np.arange(10) % 2)
    np.savez(tmp_path / "te.npz", features=xte, labels=np.arange(3) % 2)
    ds = embeddings.load_features(str(tmp_path / "tr.npz"), str(tmp_path / "te.npz"))
    assert ds.class_names == ["0", "1"] and ds.test_images.shape == (3, 4)
    # .npy pair with <stem>_labels.npy
    np.save(tmp_path / "a.npy", xtr.astype(np.float16))
    np.save(tmp_path / "a_labels.npy", np.arange(10) % 2)
    np.save(tmp_path / "b.npy", xte)
    np.save(tmp_path / "b_labels.npy", np.arange(3) % 2)
    ds = embeddings.load_features(str(tmp_path / "a.npy"), str(tmp_path / "b.npy"))
    np.testing.assert_allclose(ds.train_images, xtr.astype(np.float16).astype(np.float32))


BAD = {
    "integer features": ({"train_features": np.ones((20, 5), np.int64)}, "floating point"),
    "NaN row": ({"test_features": np.r_[np.zeros((5, 5)), np.full((1, 5), np.nan)]},
                "1 row\\(s\\) hold NaN or inf \\(first: row 5\\)"),
    "inf row": ({"train_features": np.r_[np.full((1, 5), np.inf), np.zeros((19, 5))]},
                "NaN or inf \\(first: row 0\\)"),
    "D mismatch": ({"test_features": np.zeros((6, 4), np.float32)}, "D=4.*D=5"),
    "label count": ({"train_labels": np.zeros(19, np.int64)}, "19 labels for 20 feature rows"),
    "negative label": ({"test_labels": -np.ones(6, np.int64)}, "labels must be >= 0"),
    "fractional label": ({"train_labels": np.full(20, 0.5)}, "whole numbers"),
    "1-D features": ({"train_features": np.zeros(20, np.float32)}, "non-empty \\(N, D\\)"),
    "missing key": ({"test_labels": None}, "missing test_labels"),
    "too few names": ({"class_names": np.asarray(["a"])}, "1 class names for labels up to 2"),
    # labels 0..2 and one stray 99, no class names: not a 100-class problem
    "label gap": ({"train_labels": np.r_[np.arange(19) % 3, 99]},
                  "labels go up to 99 and 96 of those classes have no training sample"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_embeddings_are_refused_naming_the_file(tmp_path, case):
    over, message = BAD[case]
    path = _single(tmp_path, **over)
    with pytest.raises(ValueError, match=message) as err:
        embeddings.load_features(path)
    assert path in str(err.value) and "\n" not in str(err.value)


def test_pair_problems_name_the_file(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match=r"x_labels\.npy does not exist"):
        embeddings.load_features(str(tmp_path / "x.npy"), str(tmp_path / "x.npy"))
    np.savez(tmp_path / "y.npz", feats=np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"y\.npz: has no 'features' array"):
        embeddings.load_features(str(tmp_path / "y.npz"), str(tmp_path / "y.npz"))
    with pytest.raises(ValueError, match=r"nothere\.npz: no such file"):
        embeddings.load_features(str(tmp_path / "nothere.npz"))


def _features_config(path: str):
    c = features_m_dyr_h.get_config()  # the README's config for your own embeddings
    c.data.features, c.mlp_hidden = path, (32,)
    return c


def test_config_refuses_mismatched_features_settings(tmp_path):
    path = _single(tmp_path)
    config_lib.validate(_features_config(path))
    for field, value, message in [
        ("model", "preact_resnet18", "one of 'linear', 'mlp' on features"),
        ("data.flip", True, "feature vectors are not cropped or flipped"),
        ("data.features", str(tmp_path / "no.npz"), "no such file"),
        ("data.extractor", "kmeans", "'none' when data.source='features'"),
        ("mlp_hidden", (0,), "positive layer sizes"),
    ]:
        c = _features_config(path)
        node, _, leaf = field.rpartition(".")
        setattr(c.data if node else c, leaf, value)
        with pytest.raises(ValueError, match=message):
            config_lib.validate(c)
    c = default.get_config()
    c.model = "linear"  # a head on images
    with pytest.raises(ValueError, match="an image model otherwise"):
        config_lib.validate(c)


# ------------------------------------------------------------------------------------------------
# One run on tiny synthetic embeddings


@pytest.mark.slow  # the embeddings path end to end in the fast tier: tests/test_no_test_set.py
def test_end_to_end_on_synthetic_embeddings(tmp_path):
    k, d = 4, 16
    centers = RNG.normal(0, 3, (k, d))

    def make(n):
        y = RNG.integers(0, k, n)
        return (centers[y] + RNG.normal(0, 1, (n, d))).astype(np.float32), y

    (xtr, ytr), (xte, yte) = make(400), make(200)
    path = tmp_path / "emb.npz"
    np.savez(path, train_features=xtr, train_labels=ytr, test_features=xte, test_labels=yte)
    c = _features_config(str(path))
    c.data.name = "synthetic"
    c.noise, c.method = 0.5, "M-DYR-H"
    c.epochs, c.lr_milestones, c.bootstrap.start_epoch = 4, (2,), 3
    c.bootstrap.batch_size, c.lr, c.eval_batch_size = 50, 0.05, 200  # one compiled eval chunk
    s = loops.train_and_evaluate(c, str(tmp_path / "run"))
    assert s["epochs_done"] == 4 and not s["interrupted"]
    assert s["last_acc"] > 90.0  # 4 well-separated classes: clean accuracy despite 50% noise
    assert s["auroc"] > 0.95  # and the mixture finds the flipped labels
    per = np.load(tmp_path / "run" / "per_sample.npz")
    assert per["loss"].shape == (400,)
    assert os.path.exists(tmp_path / "run" / "label_issues.csv")


# ------------------------------------------------------------------------------------------------
# The extraction cache


TINY = extractors.KMeansSettings(centroids=4, num_patches=300, iters=2)


def _tiny_images():
    rng = np.random.default_rng(1)
    return data.Dataset(
        rng.integers(0, 256, (12, 8, 8, 3)).astype(np.uint8),
        np.arange(12, dtype=np.int32) % 2,
        rng.integers(0, 256, (4, 8, 8, 3)).astype(np.uint8),
        np.arange(4, dtype=np.int32) % 2,
        ["a", "b"],
        "tiny",
    )


def test_cache_is_reused_and_invalidated_by_settings_and_images(tmp_path, monkeypatch):
    ds = _tiny_images()
    first = extract.extract_cached(ds, "kmeans", kmeans=TINY, cache_dir=tmp_path, batch=4)
    assert first.train_images.shape == (12, 16) and first.test_images.shape == (4, 16)
    assert len(list(tmp_path.glob("features-kmeans-*.npz"))) == 1
    calls = []
    real = extractors.learn_kmeans
    monkeypatch.setattr(extractors, "learn_kmeans", lambda *a: calls.append(1) or real(*a))
    again = extract.extract_cached(ds, "kmeans", kmeans=TINY, cache_dir=tmp_path, batch=4)
    assert calls == []  # from the cache
    np.testing.assert_array_equal(again.train_images, first.train_images)
    # The cache file is itself a single-file embeddings .npz.
    (path,) = tmp_path.glob("features-kmeans-*.npz")
    cached = embeddings.load_features(str(path))
    np.testing.assert_array_equal(cached.test_images, first.test_images)
    # Other settings: recomputed, into a file of their own.
    other = extract.extract_cached(  # (same shapes: nothing new to compile)
        ds, "kmeans", kmeans=dataclasses.replace(TINY, seed=1), cache_dir=tmp_path, batch=4
    )
    assert calls == [1] and not np.array_equal(other.train_images, first.train_images)
    assert len(list(tmp_path.glob("features-kmeans-*.npz"))) == 2
    # One changed pixel: recomputed, and replaces the stale file of the same settings.
    images = ds.train_images.copy()
    images[3, 2, 2, 1] ^= 1
    changed = extract.extract_cached(
        dataclasses.replace(ds, train_images=images),
        "kmeans",
        kmeans=TINY,
        cache_dir=tmp_path,
        batch=4,
    )
    assert calls == [1, 1] and changed.train_images.shape == (12, 16)
    assert len(list(tmp_path.glob("features-kmeans-*.npz"))) == 2
    # Changed labels: recomputed as well (they are stored in the cache).
    labels = ds.train_labels.copy()
    labels[0] = 1
    extract.extract_cached(
        dataclasses.replace(ds, train_labels=labels),
        "kmeans",
        kmeans=TINY,
        cache_dir=tmp_path,
        batch=4,
    )
    assert calls == [1, 1, 1]


def test_features_protocol_runs_the_published_schedules(tmp_path):
    from benchmarks import reproduce

    cells = reproduce.cells_for("features")
    assert set(reproduce.CELLS) < set(cells) and len(cells) == 18
    for cell, (method, noise, _over) in cells.items():
        c = reproduce.make_config("features", cell, str(tmp_path), str(tmp_path / "cache"))
        config_lib.validate(c)  # every cell is a valid run
        if method == "DivideMix":  # not a row of Arazo et al.: its own published schedule
            paper = importlib.import_module("configs.cifar10_dividemix").get_config()
        else:
            paper = reproduce.make_config("paper", cell.split("/exclusive")[0], None)
        assert (c.epochs, c.lr_milestones) == (paper.epochs, paper.lr_milestones)
        assert c.epochs == {"CE": 120, "DivideMix": 301}.get(method, 300) and c.noise == noise
        assert (c.data.extractor, c.data.crop_padding, c.data.flip) == ("kmeans", 0, False)
        assert c.noise_kind == ("symmetric_exclusive" if "exclusive" in cell else "symmetric")
