"""Strong augmentation for AugDesc-WS (Nishi et al., CVPR 2021), on the device.

AugDesc-WS trains on strongly augmented views and makes its targets (co-guessing,
co-refinement) from weakly augmented ones. In the official code the CIFAR-10 *and* CIFAR-100
AugDesc-WS presets (``presets.json``: ``transform_strong_10`` / ``_100``, defined in
``dataloader_cifar.py``) build the strong view as ``RandomCrop(32, padding=4)``,
``RandomHorizontalFlip()``, then ``CIFAR10Policy()``: AutoAugment's CIFAR-10 policy (Cubuk et
al., 2019), 25 sub-policies of two (probability, op, magnitude level) each, PIL ops on uint8
images with fill colour (128, 128, 128). :func:`strong_augment` is that transform for a
(B, H, W, C) uint8 batch: :func:`jaxnoise.data.augment` (crop after zero padding, flip), then
per sample one sub-policy drawn uniformly, each of its two ops applied with its probability.
As in the official code, Rotate always turns counter-clockwise (no random sign); Shear,
Translate, Color, Contrast, Sharpness and Brightness take a random sign; Translate moves by a
fraction (up to 150/331) of the side; ShearX/Y are bicubic, the others nearest neighbour.

Each op is a function of one (H, W, C) uint8 image (C = 3, or 1: grey, where Color is the
identity) written from PIL's C and Python code, and equal to PIL, pixel for pixel and under jit,
for Invert, Posterize, Solarize, Equalize, Translate, Rotate (PIL's 16.16 fixed point, computed
on the host) and Color, Contrast, Brightness, Sharpness (``ImageEnhance``: float32 blend with a
degenerate image, truncated; products kept out of XLA's FMA fusion, see :func:`_times`).
Where it parts from the official transform:

* AutoContrast is the exact integer stretch ``(x - lo) * 255 // (hi - lo)``; PIL's
  ``int(x * scale + offset)`` in double lands 1 lower on about 0.4% of the look-up entries
  (e.g. the maximum of a channel becomes 254).
* ShearX/Y follow PIL's bicubic filter in float32 (PIL: double): about 1% of the values are
  truncated 1 off.
* The draws are JAX's (one key per sample), not Python's ``random``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnoise import data

FILL = 128  # the official code's fillcolor (128, 128, 128)
POLICIES = ("cifar10_autoaugment",)

# AutoAugment's CIFAR-10 policy: per sub-policy two (probability, op, magnitude level 0..9).
_CIFAR10_POLICY = (
    ((0.1, "invert", 7), (0.2, "contrast", 6)),
    ((0.7, "rotate", 2), (0.3, "translateX", 9)),
    ((0.8, "sharpness", 1), (0.9, "sharpness", 3)),
    ((0.5, "shearY", 8), (0.7, "translateY", 9)),
    ((0.5, "autocontrast", 8), (0.9, "equalize", 2)),
    ((0.2, "shearY", 7), (0.3, "posterize", 7)),
    ((0.4, "color", 3), (0.6, "brightness", 7)),
    ((0.3, "sharpness", 9), (0.7, "brightness", 9)),
    ((0.6, "equalize", 5), (0.5, "equalize", 1)),
    ((0.6, "contrast", 7), (0.6, "sharpness", 5)),
    ((0.7, "color", 7), (0.5, "translateX", 8)),
    ((0.3, "equalize", 7), (0.4, "autocontrast", 8)),
    ((0.4, "translateY", 3), (0.2, "sharpness", 6)),
    ((0.9, "brightness", 6), (0.2, "color", 8)),
    ((0.5, "solarize", 2), (0.0, "invert", 3)),
    ((0.2, "equalize", 0), (0.6, "autocontrast", 0)),
    ((0.2, "equalize", 8), (0.6, "equalize", 4)),
    ((0.9, "color", 9), (0.6, "equalize", 6)),
    ((0.8, "autocontrast", 4), (0.2, "solarize", 8)),
    ((0.1, "brightness", 3), (0.7, "color", 0)),
    ((0.4, "solarize", 5), (0.9, "autocontrast", 3)),
    ((0.9, "translateY", 9), (0.7, "translateY", 9)),
    ((0.9, "autocontrast", 2), (0.8, "solarize", 3)),
    ((0.8, "equalize", 8), (0.1, "invert", 3)),
    ((0.7, "translateY", 9), (0.9, "autocontrast", 1)),
)

# Magnitude of level 0..9 per op (AutoAugment's ranges as in the official code).
_LEVELS = {
    "shearX": np.linspace(0.0, 0.3, 10),  # shear factor
    "shearY": np.linspace(0.0, 0.3, 10),
    "translateX": np.linspace(0.0, 150 / 331, 10),  # fraction of the image side
    "translateY": np.linspace(0.0, 150 / 331, 10),
    "rotate": np.linspace(0.0, 30.0, 10),  # degrees
    "color": np.linspace(0.0, 0.9, 10),  # enhance factor 1 +- level
    "contrast": np.linspace(0.0, 0.9, 10),
    "sharpness": np.linspace(0.0, 0.9, 10),
    "brightness": np.linspace(0.0, 0.9, 10),
    "posterize": np.round(np.linspace(8.0, 4.0, 10)),  # bits kept
    "solarize": np.linspace(256.0, 0.0, 10),  # threshold
    "autocontrast": np.zeros(10),
    "equalize": np.zeros(10),
    "invert": np.zeros(10),
}
_SIGNED = frozenset(
    {"shearX", "shearY", "translateX", "translateY", "color", "contrast", "sharpness", "brightness"}
)


# --------------------------------------------------------------------------------------
# pixel ops (LUT-like)


def invert(image: jax.Array) -> jax.Array:
    """ImageOps.invert: 255 - x."""
    return 255 - image


def posterize(image: jax.Array, bits: jax.Array | int) -> jax.Array:
    """ImageOps.posterize: keep the `bits` most significant bits of each value."""
    mask = (0xFF << (8 - jnp.asarray(bits, jnp.int32))) & 0xFF
    return (image.astype(jnp.int32) & mask).astype(jnp.uint8)


def solarize(image: jax.Array, threshold: jax.Array | float) -> jax.Array:
    """ImageOps.solarize: invert the values at or above `threshold`."""
    below = image.astype(jnp.float32) < jnp.asarray(threshold, jnp.float32)
    return jnp.where(below, image, 255 - image)


def autocontrast(image: jax.Array) -> jax.Array:
    """ImageOps.autocontrast (cutoff 0): stretch each channel's [min, max] to [0, 255]."""
    x = image.astype(jnp.int32)
    lo = x.min(axis=(0, 1))  # (C,)
    hi = x.max(axis=(0, 1))
    stretched = (x - lo) * 255 // jnp.maximum(hi - lo, 1)
    return jnp.where(hi > lo, stretched, x).astype(jnp.uint8)


def _equalize_channel(channel: jax.Array) -> jax.Array:
    """ImageOps.equalize of one (H, W) channel (integer arithmetic as PIL)."""
    x = channel.astype(jnp.int32).ravel()
    hist = jnp.bincount(x, length=256)
    step = (x.size - hist[x.max()]) // 255  # pixels below the top value, per output level
    below = jnp.cumsum(hist) - hist  # pixels below each value
    lut = jnp.minimum((step // 2 + below) // jnp.maximum(step, 1), 255)
    return jnp.where(step > 0, lut[x], x).reshape(channel.shape).astype(jnp.uint8)


def equalize(image: jax.Array) -> jax.Array:
    """ImageOps.equalize: per-channel histogram equalisation."""
    return jax.vmap(_equalize_channel, in_axes=-1, out_axes=-1)(image)


# --------------------------------------------------------------------------------------
# ImageEnhance: blend with a degenerate image


def _times(factor: jax.Array | float, n: jax.Array) -> jax.Array:
    """float32(factor) * n for integers |n| <= 255, rounded once as C's float product.

    A plain multiply followed by an add is fused into an FMA by XLA (one rounding fewer than
    PIL), which moves truncated results by 1. Here the product of the 24-bit significand and
    n is exact in uint32, rounded once by the conversion, then scaled by a power of two
    (exact, so an FMA with it changes nothing). Factors below 2**-103 count as 0.
    """
    f = jnp.asarray(factor, jnp.float32)
    bits = lax.bitcast_convert_type(jnp.abs(f), jnp.int32)
    biased = bits >> 23  # exponent field: |f| = significand * 2**(biased - 150)
    significand = ((bits & 0x7FFFFF) | 0x800000).astype(jnp.uint32)
    product = (significand * jnp.abs(n).astype(jnp.uint32)).astype(jnp.float32)  # < 2**32
    scale = lax.bitcast_convert_type(jnp.maximum(biased - 23, 1) << 23, jnp.float32)
    magnitude = jnp.where(biased < 24, 0.0, product * scale)
    return jnp.where((f < 0) != (n < 0), -magnitude, magnitude)


def _blend(degenerate: jax.Array, image: jax.Array, factor: jax.Array | float) -> jax.Array:
    """Image.blend(degenerate, image, factor): float32 d + f * (x - d), clipped, truncated."""
    d = degenerate.astype(jnp.int32)
    out = d.astype(jnp.float32) + _times(factor, image.astype(jnp.int32) - d)
    return jnp.clip(out, 0.0, 255.0).astype(jnp.uint8)


def _luma(image: jax.Array) -> jax.Array:
    """PIL's convert("L"): (H, W) int32, ITU-R 601-2 luma in 16-bit fixed point."""
    x = image.astype(jnp.int32)
    if x.shape[-1] == 1:
        return x[..., 0]
    return (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16


def color(image: jax.Array, factor: jax.Array | float) -> jax.Array:
    """ImageEnhance.Color: blend with the greyscale image (identity for 1 channel)."""
    if image.shape[-1] == 1:
        return image
    grey = jnp.broadcast_to(_luma(image)[..., None], image.shape)
    return _blend(grey, image, factor)


def contrast(image: jax.Array, factor: jax.Array | float) -> jax.Array:
    """ImageEnhance.Contrast: blend with the mean luma (rounded half up) as a flat image."""
    luma = _luma(image)
    mean = (2 * luma.sum() + luma.size) // (2 * luma.size)  # int(mean + 0.5), exactly
    return _blend(jnp.full(image.shape, mean, jnp.int32), image, factor)


def brightness(image: jax.Array, factor: jax.Array | float) -> jax.Array:
    """ImageEnhance.Brightness: blend with black."""
    return _blend(jnp.zeros_like(image), image, factor)


def smooth(image: jax.Array) -> jax.Array:
    """ImageFilter.SMOOTH: 3x3 kernel [[1,1,1],[1,5,1],[1,1,1]]/13, border pixels kept.

    Float32 in PIL's order: 0.5 (rounding) + row below + row + row above, then truncated.
    """
    h, w = image.shape[:2]
    if h < 3 or w < 3:  # PIL returns a copy of an image smaller than the kernel
        return image
    x = image.astype(jnp.int32)
    # Products value * weight as float32 tables (one rounding each, as PIL; no FMA possible).
    values = np.arange(256, dtype=np.float32)
    k1 = jnp.asarray(values * (np.float32(1) / np.float32(13)))
    k5 = jnp.asarray(values * (np.float32(5) / np.float32(13)))

    def row(r: jax.Array, k_mid: jax.Array) -> jax.Array:  # one kernel row, interior columns
        return (k1[r[:, :-2]] + k_mid[r[:, 1:-1]]) + k1[r[:, 2:]]

    ss = ((np.float32(0.5) + row(x[2:], k1)) + row(x[1:-1], k5)) + row(x[:-2], k1)
    return image.at[1:-1, 1:-1].set(jnp.clip(ss, 0.0, 255.0).astype(jnp.uint8))


def sharpness(image: jax.Array, factor: jax.Array | float) -> jax.Array:
    """ImageEnhance.Sharpness: blend with the SMOOTH-filtered image."""
    return _blend(smooth(image), image, factor)


# --------------------------------------------------------------------------------------
# geometric ops: PIL's Image.transform maps each output pixel centre to an input point


def _take(image: jax.Array, rows: jax.Array, cols: jax.Array, fill: int) -> jax.Array:
    """image[rows, cols] where both are in range, else `fill`; rows, cols (H, W) int32."""
    h, w = image.shape[:2]
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    pixels = image[jnp.clip(rows, 0, h - 1), jnp.clip(cols, 0, w - 1)]
    return jnp.where(inside[..., None], pixels, jnp.asarray(fill, image.dtype))


def _translate(image: jax.Array, dx: jax.Array, dy: jax.Array, fill: int) -> jax.Array:
    """Affine (1, 0, dx, 0, 1, dy), nearest: input x = floor(x + 0.5 + dx) (PIL's COORD)."""
    h, w = image.shape[:2]
    rows = jnp.arange(h)[:, None] + jnp.floor(jnp.asarray(dy, jnp.float32) + 0.5).astype(int)
    cols = jnp.arange(w)[None, :] + jnp.floor(jnp.asarray(dx, jnp.float32) + 0.5).astype(int)
    return _take(image, jnp.broadcast_to(rows, (h, w)), jnp.broadcast_to(cols, (h, w)), fill)


def translate_x(image: jax.Array, pixels: jax.Array | float, fill: int = FILL) -> jax.Array:
    """Image.transform AFFINE (1, 0, pixels, 0, 1, 0), nearest: content moves left."""
    return _translate(image, pixels, 0.0, fill)


def translate_y(image: jax.Array, pixels: jax.Array | float, fill: int = FILL) -> jax.Array:
    """Image.transform AFFINE (1, 0, 0, 0, 1, pixels), nearest: content moves up."""
    return _translate(image, 0.0, pixels, fill)


def _rotation_fixed(degrees: float, h: int, w: int) -> np.ndarray:
    """Image.rotate's inverse affine map about the centre, as PIL's 16.16 fixed-point ints."""
    angle = -math.radians(degrees % 360.0)
    a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
    d, e = -b, a
    c = a * (-w / 2) + b * (-h / 2) + w / 2
    f = d * (-w / 2) + e * (-h / 2) + h / 2
    fix = lambda v: math.floor(v * 65536.0 + 0.5)
    # PIL's affine_fixed folds the pixel centre (+0.5) into the offsets.
    return np.asarray(
        [fix(a), fix(b), fix(c + a * 0.5 + b * 0.5), fix(d), fix(e), fix(f + d * 0.5 + e * 0.5)],
        np.int32,
    )


def rotate(image: jax.Array, degrees: float, fill: int = FILL) -> jax.Array:
    """Image.rotate(degrees) (counter-clockwise, nearest, no expand) filled with `fill`.

    `degrees` is a Python float: the coefficients are computed on the host in double precision
    and applied in PIL's fixed point, so the result matches PIL exactly.
    """
    h, w = image.shape[:2]
    a = _rotation_fixed(float(degrees), h, w)
    y, x = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
    cols = (a[2] + y * a[1] + x * a[0]) >> 16  # arithmetic shift: floor
    rows = (a[5] + y * a[4] + x * a[3]) >> 16
    return _take(image, rows, cols, fill)


def _cubic(v1: jax.Array, v2: jax.Array, v3: jax.Array, v4: jax.Array, d: jax.Array) -> jax.Array:
    """PIL's BICUBIC polynomial (its a = -1 kernel) at offset d in [0, 1) from v2 towards v3."""
    p2 = v3 - v1
    p3 = 2 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    return v2 + d * (p2 + d * (p3 + d * p4))


def shear_y(image: jax.Array, factor: jax.Array | float, fill: int = FILL) -> jax.Array:
    """Image.transform AFFINE (1, 0, 0, factor, 1, 0), BICUBIC: input y = y + factor * x.

    Input x is the pixel centre, so PIL's 4x4 bicubic filter (horizontal pass at offset 0, an
    exact copy) reduces to 4 taps along y; float32 here, double in PIL.
    """
    h, w = image.shape[:2]
    twice_x = 2 * jnp.arange(w) + 1  # 2 (x + 0.5), exact
    if 2 * w + 1 < 256:  # factor * (x + 0.5) rounded once, so never fused differently (FMA)
        shift = _times(factor, twice_x) * 0.5
    else:
        shift = jnp.asarray(factor, jnp.float32) * (twice_x * 0.5)
    # A tie (input y exactly on a row) must floor the same in the taps and in dy.
    yin = shift[None, :] + (jnp.arange(h, dtype=jnp.float32)[:, None] + 0.5)
    inside = (yin >= 0) & (yin < h)  # (H, W); input x is always inside
    y0 = jnp.floor(yin - 0.5)
    dy = ((yin - 0.5) - y0)[..., None]
    rows = jnp.clip(y0.astype(jnp.int32) + jnp.arange(-1, 3)[:, None, None], 0, h - 1)
    px = image.astype(jnp.float32)[rows, jnp.arange(w)]  # (4, H, W, C): taps edge-clamped
    v = jnp.clip(_cubic(px[0], px[1], px[2], px[3], dy), 0.0, 255.0).astype(jnp.uint8)
    return jnp.where(inside[..., None], v, jnp.asarray(fill, jnp.uint8))


def shear_x(image: jax.Array, factor: jax.Array | float, fill: int = FILL) -> jax.Array:
    """Image.transform AFFINE (1, factor, 0, 0, 1, 0), BICUBIC: input x = x + factor * y."""
    return jnp.swapaxes(shear_y(jnp.swapaxes(image, 0, 1), factor, fill), 0, 1)


# --------------------------------------------------------------------------------------
# the policy


Op = Callable[[jax.Array, jax.Array], jax.Array]  # (image, parameter) -> image
_BRANCHES: dict[str, Op] = {  # each op of its device parameter (see _parameter)
    "shearX": shear_x,
    "shearY": shear_y,
    "translateX": translate_x,
    "translateY": translate_y,
    "color": color,
    "contrast": contrast,
    "sharpness": sharpness,
    "brightness": brightness,
    "posterize": lambda img, bits: posterize(img, bits.astype(jnp.int32)),
    "solarize": solarize,
    "autocontrast": lambda img, _p: autocontrast(img),
    "equalize": lambda img, _p: equalize(img),
    "invert": lambda img, _p: invert(img),
}


def _parameter(name: str, value: float, sign: float, h: int, w: int) -> float:
    """The op's argument for magnitude `value` and `sign`, in double as the official code."""
    if name in ("translateX", "translateY"):  # pixels: a fraction of the side
        return sign * value * (w if name == "translateX" else h)
    if name in ("color", "contrast", "sharpness", "brightness"):
        return 1.0 + sign * value  # enhance factor
    return sign * value if name in _SIGNED else value


def policy_table(policy: str, h: int, w: int) -> tuple[list[Op], dict[str, np.ndarray]]:
    """The policy's op branches and tables per (sub-policy, slot): branch, prob, signed, and
    param (..., 2): the op's argument for the positive and the negative sign."""
    if policy != "cifar10_autoaugment":
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    keys: dict[str, int] = {}
    branches: list[Op] = []
    n = len(_CIFAR10_POLICY)
    table = {
        "branch": np.zeros((n, 2), np.int32),
        "prob": np.zeros((n, 2), np.float32),
        "signed": np.zeros((n, 2), bool),
        "param": np.zeros((n, 2, 2), np.float32),
    }
    for s, sub in enumerate(_CIFAR10_POLICY):
        for j, (prob, name, level) in enumerate(sub):
            value = float(_LEVELS[name][level])
            key, fn = name, _BRANCHES.get(name)
            if name == "rotate":  # a static angle (PIL's fixed point): one branch per angle
                key, fn = f"rotate{value}", lambda img, _p, deg=value: rotate(img, deg)
            if key not in keys:
                keys[key] = len(branches)
                branches.append(fn)
            table["branch"][s, j] = keys[key]
            table["prob"][s, j] = prob
            table["signed"][s, j] = name in _SIGNED
            table["param"][s, j] = [_parameter(name, value, sg, h, w) for sg in (1.0, -1.0)]
    return branches, table


def draw(key: jax.Array, table: dict[str, np.ndarray]) -> tuple[jax.Array, ...]:
    """One sample's draws: sub-policy index (uniform), whether each of its two ops is applied
    (with its probability), and their arguments (the sign drawn at random; it only matters
    for the signed ops)."""
    u = jax.random.uniform(key, (5,))  # one draw of 5 uniforms in [0, 1)
    n = table["branch"].shape[0]
    s = jnp.minimum((u[0] * n).astype(jnp.int32), n - 1)
    applied = u[1:3] < jnp.asarray(table["prob"])[s]  # (2,) bool
    negative = (u[3:5] < 0.5).astype(jnp.int32)
    param = jnp.asarray(table["param"])[s, jnp.arange(2), negative]  # (2,)
    return s, applied, param


def apply_subpolicy(
    image: jax.Array,
    s: jax.Array,
    applied: jax.Array,
    param: jax.Array,
    branches: list[Op],
    table: dict[str, np.ndarray],
) -> jax.Array:
    """Sub-policy `s` on one image: op j (if `applied[j]`) with argument `param[j]`, j = 0, 1."""
    for j in range(2):
        out = lax.switch(jnp.asarray(table["branch"])[s, j], branches, image, param[j])
        image = jnp.where(applied[j], out, image)
    return image


def strong_augment(
    images: jax.Array,
    key: jax.Array,
    *,
    policy: str = "cifar10_autoaugment",
    padding: int = 4,
    flip: bool = True,
) -> jax.Array:
    """AugDesc-WS's strong view of a (B, H, W, C) uint8 batch: crop + flip, then AutoAugment.

    Per-sample independent draws from `key`; `policy`, `padding` and `flip` are static under
    jit. The per-sample op choice (a switch under vmap) evaluates every branch, 13 for
    CIFAR-10's policy, for each of the two slots and selects.
    """
    images = jnp.asarray(images)
    if images.ndim != 4 or images.dtype != jnp.uint8 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"images must be (B, H, W, 1 or 3) uint8, got {images.shape} {images.dtype}"
        )
    b, h, w, _ = images.shape
    branches, table = policy_table(policy, h, w)
    crop_key, policy_key = jax.random.split(key)
    images = data.augment(images, crop_key, padding=padding, flip=flip)
    keys = jax.random.split(policy_key, b)

    def one(image: jax.Array, k: jax.Array) -> jax.Array:
        return apply_subpolicy(image, *draw(k, table), branches, table)

    return jax.vmap(one)(images, keys)
