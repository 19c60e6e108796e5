"""The pure building blocks of DivideMix (Li, Socher & Hoi, ICLR 2020).

Each function is one formula of the official ``Train_cifar.py``, in jnp: jit-able, static
shapes, keys passed explicitly. What DivideMix shares with the bootstrap methods comes from
``jaxnoise.losses``: the mix (``losses.mix``), the uniform-prior penalty
(``losses.class_balance_regularizer``), the soft cross-entropy of ``Lx`` and the Beta draw.

One DivideMix step of network ``net`` (the other network ``other`` is fixed), with B labelled
and B unlabelled samples, each seen in two augmented views:

1. ``division_pools(p_clean, 0.5)``: labelled / unlabelled samples from the *other* network's
   GMM (``mixture.fit_gmm(..., normalize="minmax", init="kmeans", tol=1e-2, reg_covar=5e-4)``,
   ``p_clean = 1 - mixture.posterior_noisy``); ``sample_from_pool`` draws each batch.
2. ``co_refine`` (labelled targets) and ``co_guess`` (unlabelled targets), both sharpened.
3. ``mixmatch`` on ``inputs = [x1, x2, u1, u2]``, ``targets = [tx, tx, tu, tu]``.
4. ``semi_losses`` of the logits of the mixed inputs (first 2B rows labelled, the rest
   unlabelled), weighted ``Lx + lambda_u(...) * Lu + losses.class_balance_regularizer(all
   logits)`` (the uniform-prior penalty).

Warm-up is cross-entropy, plus ``neg_entropy`` for asymmetric noise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnoise import losses


def sharpen(p: jax.Array, T: float) -> jax.Array:
    """Temperature sharpening ``p^(1/T) / sum_c p^(1/T)`` over the last (class) axis."""
    pt = p ** (1.0 / T)
    return pt / jnp.sum(pt, axis=-1, keepdims=True)


def co_guess(
    logits_u1_net: jax.Array,
    logits_u2_net: jax.Array,
    logits_u1_other: jax.Array,
    logits_u2_other: jax.Array,
    T: float,
) -> jax.Array:
    """Label co-guessing of unlabelled samples: ``sharpen`` of the mean of the 4 softmaxes.

    Both networks' predictions on both augmented views, (B, C) each; no gradient flows
    through the targets (the official code computes them under ``torch.no_grad``).
    """
    views = (logits_u1_net, logits_u2_net, logits_u1_other, logits_u2_other)
    p = sum(jax.nn.softmax(v, axis=-1) for v in views) / 4.0
    return jax.lax.stop_gradient(sharpen(p, T))


def co_refine(
    logits_x1: jax.Array,
    logits_x2: jax.Array,
    labels_onehot: jax.Array,
    w_clean: jax.Array,
    T: float,
) -> jax.Array:
    """Label co-refinement of labelled samples: ``sharpen(w y + (1 - w) p)``.

    ``p``: the mean of the training network's softmaxes over both views (B, C); ``y`` the
    one-hot given labels (B, C); ``w_clean`` (B,) the other network's clean probabilities. No
    gradient flows through the targets.
    """
    p = (jax.nn.softmax(logits_x1, axis=-1) + jax.nn.softmax(logits_x2, axis=-1)) / 2.0
    w = jnp.asarray(w_clean, p.dtype)[:, None]
    return jax.lax.stop_gradient(sharpen(w * labels_onehot + (1.0 - w) * p, T))


def mixmatch_draw(key: jax.Array, n: int, alpha: float) -> tuple[jax.Array, jax.Array]:
    """The random part of ``mixmatch``: ``lam ~ Beta(alpha, alpha)``, ``lam = max(lam, 1 - lam)``
    (float32 scalar), and a uniformly random permutation of the ``n`` rows."""
    key_lam, key_perm = jax.random.split(key)
    lam = losses.sample_mixup_lambda(key_lam, alpha)
    return jnp.maximum(lam, 1.0 - lam), jax.random.permutation(key_perm, n)


def mixmatch(
    key: jax.Array, inputs: jax.Array, targets: jax.Array, alpha: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """DivideMix's MixMatch: ``losses.mix`` of the inputs and of the targets with the
    ``mixmatch_draw`` of ``key``.

    ``inputs`` = the concatenation ``[x1, x2, u1, u2]`` (N = 4B, ...) and ``targets`` =
    ``[tx, tx, tu, tu]`` (N, C); one permutation of the whole concatenation, so labelled and
    unlabelled samples mix with each other. Returns ``(mixed_inputs, mixed_targets, lam)``.
    """
    lam, perm = mixmatch_draw(key, inputs.shape[0], alpha)
    return losses.mix(inputs, perm, lam), losses.mix(targets, perm, lam), lam


def semi_losses(
    logits_x: jax.Array, targets_x: jax.Array, logits_u: jax.Array, targets_u: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """``(Lx, Lu)`` of the official ``SemiLoss``.

    ``Lx = -mean_i sum_c t_ic log softmax(z_i)_c`` (the mean soft cross-entropy of the mixed
    labelled rows); ``Lu = mean_ic (softmax(z_i)_c - t_ic)^2`` (over samples *and* classes).
    """
    lx = jnp.mean(losses.soft_cross_entropy(logits_x, targets_x))
    lu = jnp.mean((jax.nn.softmax(logits_u, axis=-1) - targets_u) ** 2)
    return lx, lu


def lambda_u(
    progress_epoch: jax.Array | float, warm_up: float, lambda_max: float, rampup: float = 16.0
) -> jax.Array:
    """The unlabelled loss weight ``lambda_max * clip((progress - warm_up) / rampup, 0, 1)``.

    ``progress_epoch`` = ``epoch + batch_idx / num_iter`` (official ``linear_rampup``, called
    with ``num_iter = len(labelled) // batch_size + 1``).
    """
    return lambda_max * jnp.clip((progress_epoch - warm_up) / rampup, 0.0, 1.0)


def neg_entropy(logits: jax.Array) -> jax.Array:
    """The confidence penalty ``mean_i sum_c p_ic log p_ic`` (official ``NegEntropy``).

    ``log p`` is ``log_softmax``: equal to the official ``softmax().log()`` wherever that is
    finite, and finite where a probability underflows to 0 (there the official gives NaN).
    """
    return jnp.mean(jnp.sum(jax.nn.softmax(logits, axis=-1) * jax.nn.log_softmax(logits, -1), -1))


def division_pools(p_clean: jax.Array, threshold: float = 0.5) -> tuple[jax.Array, jax.Array]:
    """Co-divide: ``(labelled, unlabelled)`` masks, ``p_clean > threshold`` and its complement."""
    labelled = p_clean > threshold
    return labelled, ~labelled


def sample_from_pool(key: jax.Array, mask: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """``size`` indices of samples with ``mask`` True, drawn without replacement: ``(idx, valid)``.

    A uniformly random permutation of all N samples, stably sorted so that the pool comes
    first, gives the pool in uniformly random order; ``idx[j]`` is its ``j mod |pool|``-th
    entry. So a draw of ``size <= |pool|`` is a uniform sample without replacement (a shuffled
    loader's batch), and a larger one cycles through the pool, every sample ``floor`` or ``ceil``
    of ``size / |pool|`` times (a loader restarted when exhausted). Static shapes, no host round
    trip; an empty pool gives ``valid = False`` and arbitrary in-range indices. A ``mask``
    sharded over devices is gathered once (N bools); the indices are replicated.
    """
    mask = jnp.asarray(mask, bool).reshape(-1)
    perm = jax.random.permutation(key, mask.shape[0])
    in_pool = mask[perm]  # replicated, like the indices
    pool_first = perm[jnp.argsort(~in_pool, stable=True)]
    pool_size = jnp.sum(mask, dtype=jnp.int32)
    idx = pool_first[jnp.arange(size) % jnp.maximum(pool_size, 1)]
    return idx, pool_size > 0
