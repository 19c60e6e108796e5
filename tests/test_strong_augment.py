"""Tests for jaxnoise.strong_augment: each op against PIL (the official code's reference), the
policy table against AutoAugment's CIFAR-10 policy, and the batched draws."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from scipy import stats

from jaxnoise import data
from jaxnoise import strong_augment as sa

# AutoAugment's CIFAR-10 policy as the official CIFAR10Policy instantiates it: per sub-policy
# (probability, op, magnitude) twice, magnitudes already mapped from their levels (translate:
# fraction of the side; enhance ops: the level, used as factor 1 +- level).
CIFAR10 = [
    ((0.1, "invert", 0), (0.2, "contrast", 0.6)),
    ((0.7, "rotate", 20 / 3), (0.3, "translateX", 150 / 331)),
    ((0.8, "sharpness", 0.1), (0.9, "sharpness", 0.3)),
    ((0.5, "shearY", 0.8 / 3), (0.7, "translateY", 150 / 331)),
    ((0.5, "autocontrast", 0), (0.9, "equalize", 0)),
    ((0.2, "shearY", 0.7 / 3), (0.3, "posterize", 5)),
    ((0.4, "color", 0.3), (0.6, "brightness", 0.7)),
    ((0.3, "sharpness", 0.9), (0.7, "brightness", 0.9)),
    ((0.6, "equalize", 0), (0.5, "equalize", 0)),
    ((0.6, "contrast", 0.7), (0.6, "sharpness", 0.5)),
    ((0.7, "color", 0.7), (0.5, "translateX", 150 / 331 * 8 / 9)),
    ((0.3, "equalize", 0), (0.4, "autocontrast", 0)),
    ((0.4, "translateY", 150 / 331 / 3), (0.2, "sharpness", 0.6)),
    ((0.9, "brightness", 0.6), (0.2, "color", 0.8)),
    ((0.5, "solarize", 256 * 7 / 9), (0.0, "invert", 0)),
    ((0.2, "equalize", 0), (0.6, "autocontrast", 0)),
    ((0.2, "equalize", 0), (0.6, "equalize", 0)),
    ((0.9, "color", 0.9), (0.6, "equalize", 0)),
    ((0.8, "autocontrast", 0), (0.2, "solarize", 256 / 9)),
    ((0.1, "brightness", 0.3), (0.7, "color", 0.0)),
    ((0.4, "solarize", 256 * 4 / 9), (0.9, "autocontrast", 0)),
    ((0.9, "translateY", 150 / 331), (0.7, "translateY", 150 / 331)),
    ((0.9, "autocontrast", 0), (0.8, "solarize", 256 * 6 / 9)),
    ((0.8, "equalize", 0), (0.1, "invert", 0)),
    ((0.7, "translateY", 150 / 331), (0.9, "autocontrast", 0)),
]
SIGNED = {"shearY", "translateX", "translateY", "color", "contrast", "sharpness", "brightness"}


def _images(channels: int = 3) -> list[np.ndarray]:
    """32x32 test images: uniform noise, narrow-range noise (so that autocontrast and equalize
    do something), and a smooth pattern with few distinct values."""
    rng = np.random.default_rng(0)
    shape = (32, 32, channels)
    narrow = rng.integers(40, 200, shape) // rng.integers(1, 4, (1, 1, channels)) + 10
    yy, xx = np.mgrid[:32, :32]
    pattern = np.stack([(xx * 7 + yy * 3) % 251, (xx * yy) % 200 + 20, 100 + 50 * np.sin(xx / 3)])
    return [
        rng.integers(0, 256, shape).astype(np.uint8),
        narrow.astype(np.uint8),
        np.moveaxis(pattern[:channels], 0, -1).astype(np.uint8),
    ]


def _pil(name: str, image: np.ndarray, m: float) -> np.ndarray:
    """The official code's op `name` with magnitude `m` (sign included), written with PIL."""
    grey = image.shape[-1] == 1
    img = Image.fromarray(image[..., 0] if grey else image)
    fill = 128 if grey else (128, 128, 128)
    w, h = img.size
    affine = {
        "shearX": ((1, m, 0, 0, 1, 0), Image.BICUBIC),
        "shearY": ((1, 0, 0, m, 1, 0), Image.BICUBIC),
        "translateX": ((1, 0, m * w, 0, 1, 0), Image.NEAREST),
        "translateY": ((1, 0, 0, 0, 1, m * h), Image.NEAREST),
    }
    enhance = {
        "color": ImageEnhance.Color,
        "contrast": ImageEnhance.Contrast,
        "sharpness": ImageEnhance.Sharpness,
        "brightness": ImageEnhance.Brightness,
    }
    if name in affine:
        out = img.transform(
            img.size, Image.AFFINE, affine[name][0], affine[name][1], fillcolor=fill
        )
    elif name == "rotate":  # RGBA rotate, then the transparent corners composited on grey 128
        rot = img.convert("RGBA").rotate(m)
        out = Image.composite(rot, Image.new("RGBA", rot.size, (128,) * 4), rot).convert(img.mode)
    elif name in enhance:
        out = enhance[name](img).enhance(1 + m)
    elif name == "posterize":
        out = ImageOps.posterize(img, int(m))
    elif name == "solarize":
        out = ImageOps.solarize(img, m)
    else:
        out = {"autocontrast": ImageOps.autocontrast, "equalize": ImageOps.equalize}.get(
            name, ImageOps.invert
        )(img)
    out = np.asarray(out)
    return out[..., None] if grey else out


def _argument(name: str, m: float, h: int = 32, w: int = 32) -> float:
    """The op function's argument for the official magnitude `m` (sign included)."""
    if name in ("translateX", "translateY"):
        return m * (w if name == "translateX" else h)
    return 1 + m if name in ("color", "contrast", "sharpness", "brightness") else m


_OPS = {  # jaxnoise's ops of (image, argument), jitted once
    "shearX": sa.shear_x,
    "shearY": sa.shear_y,
    "translateX": sa.translate_x,
    "translateY": sa.translate_y,
    "color": sa.color,
    "contrast": sa.contrast,
    "sharpness": sa.sharpness,
    "brightness": sa.brightness,
    "posterize": lambda x, m: sa.posterize(x, m.astype(jnp.int32)),
    "solarize": sa.solarize,
    "autocontrast": lambda x, m: sa.autocontrast(x),
    "equalize": lambda x, m: sa.equalize(x),
    "invert": lambda x, m: sa.invert(x),
}
_JITTED = {name: jax.jit(fn) for name, fn in _OPS.items()}
_ROTATE = jax.jit(sa.rotate, static_argnums=1)


def _ours(name: str, image: np.ndarray, m: float) -> np.ndarray:
    """jaxnoise's op `name` with the official code's magnitude `m` (sign included)."""
    if name == "rotate":
        return np.asarray(_ROTATE(jnp.asarray(image), m))
    h, w = image.shape[:2]
    return np.asarray(_JITTED[name](jnp.asarray(image), np.float32(_argument(name, m, h, w))))


# Magnitudes: those of the policy (both signs) plus a few others.
EXACT_CASES = [
    ("invert", [0]),
    ("posterize", [4, 5, 6, 7, 8]),
    ("solarize", [256, 256 * 7 / 9, 256 * 4 / 9, 256 / 9, 128, 0]),
    ("equalize", [0]),
    ("color", [0.0, 0.3, -0.3, 0.7, -0.7, 0.9, -0.9]),
    ("contrast", [0.6, -0.6, 0.7, -0.7, 0.9, -0.9]),
    ("brightness", [0.3, -0.3, 0.7, -0.7, 0.9, -0.9]),
    ("sharpness", [0.1, -0.1, 0.5, -0.5, 0.9, -0.9]),
    ("translateX", [150 / 331, -150 / 331, 150 / 331 * 8 / 9, -150 / 331 * 8 / 9, 0.1]),
    ("translateY", [150 / 331, -150 / 331, 150 / 331 / 3, -150 / 331 / 3, -0.1]),
    ("rotate", [20 / 3, 30, -17, 100]),
]


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("name,magnitudes", EXACT_CASES, ids=[c[0] for c in EXACT_CASES])
def test_op_equals_pil(name, magnitudes, channels):
    """Integer or float32 arithmetic as PIL's: identical to PIL, pixel for pixel (also grey)."""
    for image in _images(channels):
        for m in magnitudes:
            np.testing.assert_array_equal(_ours(name, image, m), _pil(name, image, m), f"{m}")


def _numpy_autocontrast(image: np.ndarray) -> np.ndarray:
    """ImageOps.autocontrast's intended LUT in exact integers: floor((x - lo) * 255 / (hi - lo))."""
    x = image.astype(np.int64)
    lo, hi = x.min(axis=(0, 1)), x.max(axis=(0, 1))
    return np.where(hi > lo, (x - lo) * 255 // np.maximum(hi - lo, 1), x).astype(np.uint8)


@pytest.mark.parametrize("channels", [3, 1])
def test_autocontrast_is_the_integer_stretch_and_pil_within_double_rounding(channels):
    """Ours is floor((x - lo) * 255 / (hi - lo)) per channel exactly; PIL's int(x * scale +
    offset) in double can only land 1 lower, and only where that quotient is an integer."""
    for image in _images(channels):
        x = image.astype(np.int64)
        lo, hi = x.min(axis=(0, 1)), x.max(axis=(0, 1))
        ours = _ours("autocontrast", image, 0).astype(np.int64)
        np.testing.assert_array_equal(ours, _numpy_autocontrast(image))
        diff = ours - _pil("autocontrast", image, 0).astype(np.int64)
        assert set(np.unique(diff)) <= {0, 1}
        assert np.all(((x - lo) * 255 % np.maximum(hi - lo, 1))[diff == 1] == 0)


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("name", ["shearX", "shearY"])
def test_shear_matches_pil_bicubic_within_one(name, channels):
    """PIL's bicubic filter in float32 rather than double: truncation may differ by 1 on a
    few pixels (seen: < 1%); a wrong tap or filled border would differ by far more."""
    for image in _images(channels):
        for m in (0.7 / 3, -0.7 / 3, 0.8 / 3, -0.8 / 3, 0.3, -0.1):
            diff = np.abs(_ours(name, image, m).astype(int) - _pil(name, image, m))
            assert diff.max() <= 1 and np.mean(diff > 0) < 0.02, (m, diff.max(), diff.mean())


def test_smooth_keeps_the_border():
    """ImageFilter.SMOOTH leaves the outermost rows and columns untouched."""
    image = _images()[0]
    out = np.asarray(jax.jit(sa.smooth)(image))
    np.testing.assert_array_equal(
        out, np.asarray(Image.fromarray(image).filter(ImageFilter.SMOOTH))
    )
    for edge in (np.s_[0], np.s_[-1], np.s_[:, 0], np.s_[:, -1]):
        np.testing.assert_array_equal(out[edge], image[edge])


def test_policy_table_is_autoaugment_cifar10():
    """25 sub-policies of two ops: probabilities, arguments (both signs) as CIFAR10Policy's."""
    branches, table = sa.policy_table("cifar10_autoaugment", 32, 32)
    assert table["branch"].shape == (25, 2) and len(branches) == 13  # 13 distinct ops
    for s, sub in enumerate(CIFAR10):
        for j, (prob, name, m) in enumerate(sub):
            assert table["prob"][s, j] == np.float32(prob), (s, j)
            assert table["signed"][s, j] == (name in SIGNED), (s, j)
            neg = -m if name in SIGNED else m
            expected = np.float32([_argument(name, m), _argument(name, neg)])
            np.testing.assert_allclose(table["param"][s, j], expected, rtol=1e-6, err_msg=name)
    names = {name for sub in CIFAR10 for _, name, _ in sub}
    for s in range(25):  # one branch per op name: the same op in every sub-policy using it
        for j in range(2):
            twins = [
                (t, k) for t in range(25) for k in range(2) if CIFAR10[t][k][1] == CIFAR10[s][j][1]
            ]
            assert {table["branch"][t, k] for t, k in twins} == {table["branch"][s, j]}
    assert len(names) == 13
    with pytest.raises(ValueError, match="policy"):
        sa.policy_table("imagenet", 32, 32)


@pytest.fixture(scope="module")
def subpolicy_fn():
    """apply_subpolicy jitted once (the sub-policy index traced: every branch compiled)."""
    branches, table = sa.policy_table("cifar10_autoaugment", 32, 32)
    return jax.jit(
        lambda img, s, applied, m: sa.apply_subpolicy(img, s, applied, m, branches, table)
    )


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_every_subpolicy_dispatches_to_its_ops(subpolicy_fn, sign):
    """Each sub-policy with both ops applied equals the two PIL ops in sequence (exact unless
    an inexact op is involved, whose 1-off values may then move a few pixels more)."""
    image = _images()[1]
    for s, sub in enumerate(CIFAR10):
        mags = [m * (sign if name in SIGNED else 1.0) for _, name, m in sub]
        args = jnp.asarray([_argument(name, m) for (_, name, _), m in zip(sub, mags)], jnp.float32)
        ref = image
        for (_, name, _), m in zip(sub, mags):
            ref = _numpy_autocontrast(ref) if name == "autocontrast" else _pil(name, ref, m)
        out = subpolicy_fn(image, jnp.int32(s), jnp.array([True, True]), args)
        diff = np.abs(np.asarray(out).astype(int) - ref)
        if {"shearX", "shearY"} & {name for _, name, _ in sub}:  # bicubic in float32
            assert np.mean(diff > 1) < 0.01 and np.mean(diff > 0) < 0.03, (s, sub)
        else:
            assert diff.max() == 0, (s, sub)
        partial = subpolicy_fn(image, jnp.int32(s), jnp.array([True, False]), args)
        first = _pil(sub[0][1], image, mags[0])
        assert np.mean(np.asarray(partial) != first) < 0.1, (s, sub)


def test_draws_follow_the_policy_probabilities():
    """Sub-policies uniform (chi-square), each op applied with its probability and signed ops
    negative half the time (binomial z-scores), over 20000 fixed-key draws."""
    _, table = sa.policy_table("cifar10_autoaugment", 32, 32)
    n = 20000
    keys = jax.random.split(jax.random.key(123), n)
    s, applied, mag = (np.asarray(a) for a in jax.jit(jax.vmap(lambda k: sa.draw(k, table)))(keys))
    counts = np.bincount(s, minlength=25)
    assert counts.shape == (25,) and stats.chisquare(counts).pvalue > 1e-3, counts
    prob = np.asarray([[p for p, _, _ in sub] for sub in CIFAR10])[s]  # (n, 2)
    z = (applied.sum(0) - prob.sum(0)) / np.sqrt((prob * (1 - prob)).sum(0))
    assert np.all(np.abs(z) < 4), z
    for s_ in (1, 6, 14, 21):  # the probability per sub-policy and slot, not only on average
        for j in range(2):
            p = CIFAR10[s_][j][0]
            hits = applied[s == s_, j]
            assert abs(hits.mean() - p) < 4 * np.sqrt(max(p * (1 - p), 1e-3) / hits.size) + 1e-9
    rows = (s[:, None], np.arange(2))
    varies = table["param"][..., 0] != table["param"][..., 1]  # signed ops of magnitude > 0
    negative = (mag == table["param"][..., 1][rows])[varies[rows]]
    assert np.all((mag == table["param"][..., 0][rows]) | (mag == table["param"][..., 1][rows]))
    assert abs(negative.mean() - 0.5) < 4 * np.sqrt(0.25 / negative.size), negative.mean()
    assert negative.size > 0.3 * n  # the signed ops are drawn often


@pytest.fixture(scope="module")
def strong():
    """strong_augment jitted once for (8, 32, 32, 3) batches."""
    return jax.jit(sa.strong_augment)


def test_strong_augment_shapes_determinism_and_keys(strong):
    """uint8 (B, H, W, C) out; the same key gives the same batch, another key another."""
    images = jnp.asarray(np.stack([_images()[i % 3] for i in range(8)]))
    out = strong(images, jax.random.key(0))
    assert out.shape == images.shape and out.dtype == jnp.uint8
    np.testing.assert_array_equal(out, strong(images, jax.random.key(0)))
    assert np.any(np.asarray(out) != np.asarray(strong(images, jax.random.key(1))))


def test_strong_augment_is_per_sample(strong):
    """Sample i's output depends on image i and the key only; equal images differ."""
    images = np.stack([_images()[1]] * 8)
    out = np.asarray(strong(jnp.asarray(images), jax.random.key(3)))
    assert len({o.tobytes() for o in out}) >= 6  # 8 equal inputs, (almost) all different
    changed = images.copy()
    changed[0] = 255 - changed[0]
    out2 = np.asarray(strong(jnp.asarray(changed), jax.random.key(3)))
    np.testing.assert_array_equal(out2[1:], out[1:])
    assert np.any(out2[0] != out[0])


def test_strong_augment_is_crop_flip_then_the_drawn_subpolicy(strong, subpolicy_fn):
    """The pipeline: jaxnoise.data.augment, then per sample its drawn sub-policy."""
    images = jnp.asarray(np.stack([_images()[i % 3] for i in range(8)]))
    key = jax.random.key(7)
    _, table = sa.policy_table("cifar10_autoaugment", 32, 32)
    crop_key, policy_key = jax.random.split(key)
    base = jax.jit(data.augment)(images, crop_key)  # padding 4, flip: the defaults of both
    draws = jax.jit(jax.vmap(lambda k: sa.draw(k, table)))(jax.random.split(policy_key, 8))
    ref = [subpolicy_fn(base[i], *(d[i] for d in draws)) for i in range(8)]
    np.testing.assert_array_equal(strong(images, key), np.stack(ref))


def test_strong_augment_rejects_bad_input():
    """Not uint8 (B, H, W, 1|3), or an unknown policy: ValueError."""
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="uint8"):
        sa.strong_augment(jnp.zeros((2, 8, 8, 3), jnp.float32), key)
    with pytest.raises(ValueError, match="uint8"):
        sa.strong_augment(jnp.zeros((2, 8, 8, 4), jnp.uint8), key)
    with pytest.raises(ValueError, match="policy"):
        sa.strong_augment(jnp.zeros((2, 8, 8, 3), jnp.uint8), key, policy="svhn")
