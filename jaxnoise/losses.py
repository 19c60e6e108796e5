"""Loss pieces: cross-entropy, mixup, dynamic bootstrapping, the class-balance regulariser.

Pure functions of arrays and PRNG keys; the train step composes them according to the config.
Shapes: B = batch, C = classes; ``logits`` (B, C) float32, ``labels`` (B,) int, ``w`` (B,)
posterior probabilities of being noisy, ``perm`` (B,) the mixup partner of each sample.

- Mixup (paper eq. 7): ``x = lam x_p + (1 - lam) x_q`` with one ``lam ~ Beta(alpha, alpha)`` per
  batch and ``q = perm[p]`` a random in-batch permutation.
- Dynamic bootstrapping under mixup (paper eq. 8): targets ``(1 - w_p) y_p + w_p z_p``, with
  ``z_p`` the model's own prediction on the clean (un-mixed) sample: one-hot argmax ("hard") or
  softmax at a temperature ("soft"; the soft-to-hard schedule lowers the temperature).
- Regulariser (Tanaka et al. 2018): ``R = sum_c p_c log(p_c / hbar_c)`` with ``hbar`` the
  batch-mean softmax of the mixed outputs and ``p`` uniform unless given.
- Dynamic mixup (paper eq. 9): the per-pair weight ``delta = (1 - w_p) / ((1 - w_p) + (1 - w_q))``,
  or drawn around it: ``lam ~ Beta(delta, 1 - delta)``, or ``lam = b1 / (b1 + b2)`` with
  ``b1 ~ Binomial(n, delta)``, ``b2 ~ Binomial(n, 1 - delta)`` (the published extensions).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnoise import choices

POSTERIOR_EPS = 1e-4
DRAWS = choices.MIXUP_DRAWS


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-sample cross-entropy -log softmax(logits)[label], shape (B,)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]


def soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-sample cross-entropy against target distributions, -sum_c t_c log softmax_c, (B,)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.sum(targets * logp, axis=-1)


def clip_posteriors(w: jax.Array) -> jax.Array:
    """Clip noisy-posteriors to [1e-4, 1 - 1e-4], as the published code does before use."""
    return jnp.clip(w, POSTERIOR_EPS, 1.0 - POSTERIOR_EPS)


def mixup_pairs(key: jax.Array, batch_size: int) -> jax.Array:
    """A random in-batch permutation: sample p is mixed with sample perm[p]."""
    return jax.random.permutation(key, batch_size)


def sample_mixup_lambda(key: jax.Array, alpha: float) -> jax.Array:
    """One mixing weight delta ~ Beta(alpha, alpha) for the batch: a float32 scalar
    (alpha <= 0 gives 1)."""
    if alpha <= 0:
        return jnp.ones((), jnp.float32)
    return jax.random.beta(key, alpha, alpha).astype(jnp.float32)


def _per_sample(lam: jax.Array, ndim: int) -> jax.Array:
    lam = jnp.asarray(lam, jnp.float32)
    return lam.reshape(lam.shape + (1,) * (ndim - lam.ndim)) if lam.ndim else lam


def mix(x: jax.Array, perm: jax.Array, lam: jax.Array) -> jax.Array:
    """lam * x + (1 - lam) * x[perm], lam a scalar or per-sample (B,) (mixup, MixMatch).

    ``x`` (B, ...) floating (normalised inputs, or target distributions); the mix is computed
    in float32 (or wider) and returned in ``x``'s dtype."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"mix needs floating inputs (normalised images, targets), got {x.dtype}")
    lam = _per_sample(lam, x.ndim)
    return (lam * x + (1.0 - lam) * x[perm]).astype(x.dtype)


def dynamic_mixup_lambda(
    key: jax.Array, w: jax.Array, perm: jax.Array, *, draw: str = "none", n: int = 10000
) -> jax.Array:
    """Per-sample weight of sample p in its pair (p, perm[p]) for dynamic mixup, (B,).

    delta = (1 - w_p) / ((1 - w_p) + (1 - w_q)); ``draw="none"`` returns delta (the original
    code), ``"beta"`` draws lam ~ Beta(delta, 1 - delta), ``"binomial"`` draws
    lam = b1 / (b1 + b2) with b1 ~ Bin(n, delta), b2 ~ Bin(n, 1 - delta).
    """
    if draw not in DRAWS:
        raise ValueError(f"unknown dynamic-mixup draw {draw!r}; allowed: {', '.join(DRAWS)}")
    clean_p, clean_q = 1.0 - w, 1.0 - w[perm]
    delta = clean_p / (clean_p + clean_q)
    if draw == "none":
        return delta
    if draw == "beta":
        d = jnp.clip(delta, 1e-6, 1.0 - 1e-6)
        lam = jax.random.beta(key, d, 1.0 - d)
    else:
        k1, k2 = jax.random.split(key)
        b1 = jax.random.binomial(k1, n, delta)
        b2 = jax.random.binomial(k2, n, 1.0 - delta)
        total = b1 + b2
        lam = jnp.where(total > 0, b1 / jnp.where(total > 0, total, 1.0), delta)
    lam = lam.astype(jnp.float32)
    return jnp.where(jnp.isfinite(lam), jnp.clip(lam, 0.0, 1.0), delta)


def bootstrap_targets(
    labels: jax.Array,
    w: jax.Array,
    logits_clean: jax.Array,
    *,
    num_classes: int,
    mode: str = "hard",
    temperature: float | jax.Array = 1.0,
) -> jax.Array:
    """Dynamic bootstrapping targets (1 - w) onehot(y) + w z: (B, C) float32.

    ``labels`` (B,) int, ``w`` (B,) float p(noisy), ``logits_clean`` (B, C) the network's
    logits on the unmixed inputs; z is their argmax (``mode="hard"``) or their softmax at
    ``temperature`` (``"soft"``), without gradient."""
    y = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if mode == "hard":
        z = jax.nn.one_hot(jnp.argmax(logits_clean, axis=-1), num_classes, dtype=jnp.float32)
    elif mode == "soft":
        z = jax.nn.softmax(logits_clean.astype(jnp.float32) / temperature, axis=-1)
    else:
        raise ValueError(f"bootstrap mode must be 'hard' or 'soft', got {mode!r}")
    z = jax.lax.stop_gradient(z)
    w = w[:, None]
    return (1.0 - w) * y + w * z


def mixup_bootstrap_loss(
    logits_mixed: jax.Array,
    labels: jax.Array,
    w: jax.Array,
    logits_clean: jax.Array,
    perm: jax.Array,
    lam: jax.Array,
    *,
    num_classes: int,
    mode: str = "hard",
    temperature: float | jax.Array = 1.0,
) -> jax.Array:
    """Paper eq. 8 averaged over the batch: lam CE(h, t_p) + (1 - lam) CE(h, t_q), a float32
    scalar. ``logits_mixed`` (B, C) on the mixed inputs, ``labels`` (B,) int, ``w`` (B,)
    p(noisy), ``logits_clean`` (B, C) on the unmixed inputs, ``perm`` (B,) int the mixup
    partners, ``lam`` a scalar or (B,) float; t = :func:`bootstrap_targets`."""
    t = bootstrap_targets(
        labels, w, logits_clean, num_classes=num_classes, mode=mode, temperature=temperature
    )
    lam = jnp.broadcast_to(jnp.asarray(lam, jnp.float32), labels.shape)
    ce_p = soft_cross_entropy(logits_mixed, t)
    ce_q = soft_cross_entropy(logits_mixed, t[perm])
    return jnp.mean(lam * ce_p + (1.0 - lam) * ce_q)


def mixup_ce_loss(
    logits_mixed: jax.Array, labels: jax.Array, perm: jax.Array, lam: jax.Array
) -> jax.Array:
    """Plain mixup loss: mean of lam CE(h, y_p) + (1 - lam) CE(h, y_q)."""
    lam = jnp.broadcast_to(jnp.asarray(lam, jnp.float32), labels.shape)
    return jnp.mean(
        lam * cross_entropy(logits_mixed, labels)
        + (1.0 - lam) * cross_entropy(logits_mixed, labels[perm])
    )


def class_balance_regularizer(logits: jax.Array, *, prior: jax.Array | None = None) -> jax.Array:
    """R = sum_c p_c log(p_c / hbar_c), hbar the batch-mean softmax; p uniform by default.
    ``logits`` (B, C), ``prior`` (C,) float; a float32 scalar.

    Written as both published codes compute it (``prior * log(prior / mean)``): Arazo et al.'s
    ``reg_loss_class`` and DivideMix's uniform-prior penalty (over its whole mixed batch)."""
    hbar = jnp.mean(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=0)
    c = logits.shape[-1]
    p = jnp.full((c,), 1.0 / c, jnp.float32) if prior is None else jnp.asarray(prior, jnp.float32)
    return jnp.sum(p * jnp.log(p / hbar))
