"""Frozen feature extractors: single-layer k-means features (Coates, Lee & Ng 2011), ResNet-50.

Both map uint8 images (N, H, W, C) to float32 features (N, D) once; :mod:`jaxnoise.data.extract`
caches the result. Everything heavy is a jitted, batched ``jax.numpy`` computation (patch
extraction as strided slices, distances as one matrix product per batch), so the same code runs
on CPU, GPU or TPU.

k-means features (Coates, Lee & Ng, "An Analysis of Single-Layer Networks in Unsupervised
Feature Learning", AISTATS 2011, and their released ``kmeans_demo`` code), learned from the
training *images* only, never their labels:

1. ``num_patches`` random ``patch x patch`` patches (random image, random position).
2. Per-patch contrast normalisation: ``x <- (x - mean(x)) / sqrt(var(x) + patch_eps)`` over the
   patch's ``patch*patch*C`` pixel values (0..255; ``var`` with ddof=1, ``patch_eps = 10``, as
   their code; ``config.data.kmeans_eps``).
3. ZCA whitening: ``x <- (x - m) V diag(1 / sqrt(d + zca_eps)) V^T`` with ``C = V diag(d) V^T``
   the patches' covariance (ddof=1), ``zca_eps = 0.1``.
4. k-means (Lloyd iterations; initialised from random patches, an empty cluster keeps its
   previous centroid; the released code starts from ``0.1 * randn`` and zeroes empty clusters).
5. Every ``patch x patch`` patch of an image at stride 1 -> normalised, whitened ->
   "triangle" activation ``f_k(x) = max(0, mu(z) - z_k)``, ``z_k = ||x - c_k||``,
   ``mu(z)`` the mean of ``z`` over the K centroids.
6. Sum pooling of the (H-patch+1) x (W-patch+1) x K response map over its 4 quadrants (the
   first ``round(rows / 2)`` rows / columns, half rounded up, as MATLAB's ``round``) ->
   ``4K`` features, ordered [top-left, bottom-left, top-right, bottom-right] x K.

Standardisation of the features (their step 7) happens in the train step, with the training
set's per-feature mean and std (:func:`jaxnoise.data.normalize`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxnoise import choices
from jaxnoise.progress import Progress, log

EXTRACTORS = choices.EXTRACTORS
_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32/bf16 passes on accelerators: distances matter

# ImageNet statistics expected by torchvision's pretrained ResNet-50.
IMAGENET_MEAN = np.asarray([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.asarray([0.229, 0.224, 0.225], np.float32)


@dataclasses.dataclass(frozen=True)
class KMeansSettings:
    """Everything that determines the k-means features (all of it enters the cache key)."""

    centroids: int = 1600
    patch: int = 6
    num_patches: int = 400_000
    iters: int = 20
    patch_eps: float = 10.0
    zca_eps: float = 0.1
    seed: int = 0


@dataclasses.dataclass
class KMeansModel:
    """A learned k-means dictionary: whitening (mean, matrix) and centroids."""

    settings: KMeansSettings
    mean: np.ndarray  # (P,) float32, P = patch*patch*C
    whitening: np.ndarray  # (P, P) float32
    centroids: np.ndarray  # (K, P) float32


# ------------------------------------------------------------------------------------------------
# The pieces (pure jax.numpy; each has a numpy reference in tests/test_features.py).


def extract_patches(images: jax.Array, size: int) -> jax.Array:
    """All size x size patches at stride 1: (B, H, W, C) -> (B, H-size+1, W-size+1, size*size*C).

    A patch's values are ordered (row, column, channel), row-major.
    """
    b, h, w, c = images.shape
    rows, cols = h - size + 1, w - size + 1
    parts = [
        images[:, dy : dy + rows, dx : dx + cols, :] for dy in range(size) for dx in range(size)
    ]
    return jnp.stack(parts, axis=3).reshape(b, rows, cols, size * size * c)


def normalize_patches(patches: jax.Array, eps: float) -> jax.Array:
    """Per-patch contrast normalisation (x - mean(x)) / sqrt(var(x) + eps), var with ddof=1."""
    p = patches.shape[-1]
    mean = jnp.mean(patches, axis=-1, keepdims=True)
    centred = patches - mean
    var = jnp.sum(centred * centred, axis=-1, keepdims=True) / (p - 1)
    return centred / jnp.sqrt(var + eps)


def fit_whitening(patches: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """ZCA whitening of (N, P) patches: mean m (P,) and W = V diag(1/sqrt(d + eps)) V^T (P, P)."""
    x = np.asarray(patches, np.float64)
    m = x.mean(0)
    cov = np.cov(x, rowvar=False)  # ddof=1
    d, v = np.linalg.eigh(cov)
    w = (v * (1.0 / np.sqrt(np.maximum(d, 0.0) + eps))) @ v.T
    return m.astype(np.float32), w.astype(np.float32)


def whiten(patches: jax.Array, mean: jax.Array, matrix: jax.Array) -> jax.Array:
    """(x - m) W over the last axis."""
    return jnp.matmul(patches - mean, matrix, precision=_HIGHEST)


def distances(x: jax.Array, centroids: jax.Array) -> jax.Array:
    """Euclidean distances ||x - c_k|| (..., P) x (K, P) -> (..., K), via one matrix product."""
    xx = jnp.sum(x * x, axis=-1, keepdims=True)
    cc = jnp.sum(centroids * centroids, axis=-1)
    xc = jnp.matmul(x, centroids.T, precision=_HIGHEST)
    return jnp.sqrt(jnp.maximum(xx - 2.0 * xc + cc, 0.0))


def triangle(x: jax.Array, centroids: jax.Array) -> jax.Array:
    """Triangle activation f_k = max(0, mean_j z_j - z_k), z = distances to the centroids."""
    z = distances(x, centroids)
    return jnp.maximum(jnp.mean(z, axis=-1, keepdims=True) - z, 0.0)


def quadrant_pool(maps: jax.Array) -> jax.Array:
    """Sum pooling over 4 quadrants: (B, R, S, K) -> (B, 4K), [TL, BL, TR, BR] x K."""
    r, s = maps.shape[1], maps.shape[2]
    hr, hs = math.floor(r / 2 + 0.5), math.floor(s / 2 + 0.5)  # MATLAB round (half up)
    quads = [
        maps[:, :hr, :hs],
        maps[:, hr:, :hs],
        maps[:, :hr, hs:],
        maps[:, hr:, hs:],
    ]
    return jnp.concatenate([q.sum(axis=(1, 2)) for q in quads], axis=-1)


# ------------------------------------------------------------------------------------------------
# Learning the dictionary.


def sample_patches(images: np.ndarray, settings: KMeansSettings) -> np.ndarray:
    """(num_patches, patch*patch*C) float32 random patches (random image, random position)."""
    n, h, w, c = images.shape
    s = settings.patch
    rng = np.random.default_rng(settings.seed)
    idx = rng.integers(0, n, settings.num_patches)
    ys = rng.integers(0, h - s + 1, settings.num_patches)
    xs = rng.integers(0, w - s + 1, settings.num_patches)
    off = np.arange(s)
    rows = ys[:, None, None] + off[None, :, None]  # (M, s, 1)
    cols = xs[:, None, None] + off[None, None, :]  # (M, 1, s)
    patches = images[idx[:, None, None], rows, cols]  # (M, s, s, C)
    return patches.reshape(settings.num_patches, s * s * c).astype(np.float32)


@jax.jit
def _kmeans_iteration(x: jax.Array, centroids: jax.Array):
    """One Lloyd step over (M, P) data in chunks: (new centroids, mean squared distance)."""
    k = centroids.shape[0]
    chunk = 8192
    m = x.shape[0]
    pad = (-m) % chunk
    xs = jnp.pad(x, ((0, pad), (0, 0))).reshape(-1, chunk, x.shape[1])
    valid = (jnp.arange(m + pad) < m).reshape(-1, chunk)
    half_cc = 0.5 * jnp.sum(centroids * centroids, -1)

    def body(carry, inp):
        sums, counts, loss = carry
        xb, vb = inp
        score = jnp.matmul(xb, centroids.T, precision=_HIGHEST) - half_cc  # argmax = nearest
        lab = jnp.argmax(score, -1)
        best = jnp.max(score, -1)
        w = vb.astype(x.dtype)
        sums = sums + jax.ops.segment_sum(xb * w[:, None], lab, num_segments=k)
        counts = counts + jax.ops.segment_sum(w, lab, num_segments=k)
        loss = loss + jnp.sum(w * (jnp.sum(xb * xb, -1) - 2.0 * best))
        return (sums, counts, loss), None

    init = (jnp.zeros_like(centroids), jnp.zeros((k,), x.dtype), jnp.zeros((), x.dtype))
    (sums, counts, loss), _ = jax.lax.scan(body, init, (xs, valid))
    new = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centroids)
    return new, loss / m


def learn_kmeans(images: np.ndarray, settings: KMeansSettings) -> KMeansModel:
    """Learn the whitening and the k-means dictionary from training images (no labels)."""
    t0 = time.time()
    raw = sample_patches(images, settings)
    x = np.asarray(normalize_patches(jnp.asarray(raw), settings.patch_eps))
    mean, matrix = fit_whitening(x, settings.zca_eps)
    xw = whiten(jnp.asarray(x), jnp.asarray(mean), jnp.asarray(matrix))
    rng = np.random.default_rng(settings.seed + 1)
    init = rng.choice(settings.num_patches, settings.centroids, replace=False)
    centroids = xw[jnp.asarray(np.sort(init))]
    for it in range(settings.iters):
        centroids, loss = _kmeans_iteration(xw, centroids)
        if it == 0 or it == settings.iters - 1:
            log(
                f"k-means iteration {it + 1}/{settings.iters}: mean squared distance "
                f"{float(loss):.4f}"
            )
    log(
        f"learned {settings.centroids} k-means centroids from {settings.num_patches} patches "
        f"({time.time() - t0:.1f}s)"
    )
    return KMeansModel(settings, mean, matrix, np.asarray(centroids, np.float32))


def kmeans_encode(
    images: jax.Array, model_arrays: dict[str, jax.Array], *, patch: int, patch_eps: float
) -> jax.Array:
    """uint8 (B, H, W, C) -> (B, 4K) float32 features (steps 5-6 of the module docstring)."""
    x = extract_patches(images.astype(jnp.float32), patch)
    x = normalize_patches(x, patch_eps)
    x = whiten(x, model_arrays["mean"], model_arrays["whitening"])
    return quadrant_pool(triangle(x, model_arrays["centroids"]))


# One compiled program per (batch shape, dictionary shape), shared by every call.
_kmeans_encode_jit = jax.jit(kmeans_encode, static_argnames=("patch", "patch_eps"))


# ------------------------------------------------------------------------------------------------
# Batched application with a progress bar.


def apply_batched(
    fn: Callable[[jax.Array], jax.Array], images: np.ndarray, batch: int, desc: str
) -> np.ndarray:
    """Apply a jitted (B, ...) -> (B, D) function over images in fixed-size batches (one compile).

    The last batch is padded by repeating its first image; shows a progress bar and logs a line
    at every 10% so that logs of background runs show progress too.
    """
    n = images.shape[0]
    batch = max(1, min(batch, n))
    steps = -(-n // batch)
    out: np.ndarray | None = None
    bar = Progress(steps, desc)
    t0, next_log = time.time(), 0.1
    for s in range(steps):
        chunk = images[s * batch : (s + 1) * batch]
        if chunk.shape[0] < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch - chunk.shape[0], 0)])
        feats = np.asarray(fn(jnp.asarray(chunk)))
        if out is None:
            out = np.empty((n, feats.shape[1]), np.float32)
        take = min(batch, n - s * batch)
        out[s * batch : s * batch + take] = feats[:take]
        bar.update(1)
        if (s + 1) / steps >= next_log:
            log(f"{desc}: {s + 1}/{steps} batches ({time.time() - t0:.0f}s)")
            next_log += 0.1
    bar.close()
    assert out is not None
    return out


def kmeans_features(
    model: KMeansModel, images: np.ndarray, *, batch: int = 64, desc: str = "k-means features"
) -> np.ndarray:
    """(N, H, W, C) uint8 -> (N, 4K) float32 k-means features."""
    arrays = {
        "mean": jnp.asarray(model.mean),
        "whitening": jnp.asarray(model.whitening),
        "centroids": jnp.asarray(model.centroids),
    }
    s = model.settings
    fn = functools.partial(
        _kmeans_encode_jit, model_arrays=arrays, patch=s.patch, patch_eps=s.patch_eps
    )
    return apply_batched(fn, images, batch, desc)


# ------------------------------------------------------------------------------------------------
# Frozen ResNet-50 (torchvision weights from a local .npz).


def resnet50_features(
    weights: str, images: np.ndarray, *, batch: int = 64, desc: str = "resnet50 features"
) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 2048) globally pooled ResNet-50 features (eval-mode BN).

    Images are normalised with the ImageNet mean/std that torchvision's weights expect.
    """
    from flax import nnx

    from jaxnoise import models

    model = models.ResNet50(1000, rngs=nnx.Rngs(0))
    models.load_resnet50_weights(model, weights)
    graphdef, state = nnx.split(model)
    mean, std = jnp.asarray(IMAGENET_MEAN), jnp.asarray(IMAGENET_STD)

    @jax.jit
    def fn(x: jax.Array) -> jax.Array:
        m = nnx.merge(graphdef, state)
        return m.features((x.astype(jnp.float32) / 255.0 - mean) / std, train=False)

    return apply_batched(fn, images, batch, desc)


def settings_dict(extractor: str, settings: Any) -> dict[str, Any]:
    """JSON-able description of an extractor's settings (for fingerprints and logs)."""
    out = {"extractor": extractor}
    if dataclasses.is_dataclass(settings):
        out.update(dataclasses.asdict(settings))
    elif isinstance(settings, dict):
        out.update(settings)
    return out
