"""Noise-detection metrics computed on device (one small transfer per epoch)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


@jax.jit
def auroc(scores: jax.Array, positives: jax.Array) -> jax.Array:
    """Area under the ROC curve of ``scores`` for the boolean ``positives``, ties counted half.

    Mann-Whitney U with average ranks for ties (the lookup posterior has only 100 distinct values,
    so ties are common). NaN when one class is empty.
    """
    s = scores.reshape(-1).astype(jnp.float32)
    pos = positives.reshape(-1).astype(jnp.float32)
    srt = jnp.sort(s)
    left = jnp.searchsorted(srt, s, side="left")
    right = jnp.searchsorted(srt, s, side="right")
    ranks = (left + right + 1).astype(jnp.float32) / 2.0  # 1-based average ranks
    n1 = jnp.sum(pos)
    n0 = s.shape[0] - n1
    u = jnp.sum(ranks * pos) - n1 * (n1 + 1.0) / 2.0
    return jnp.where((n1 > 0) & (n0 > 0), u / (n1 * n0), jnp.nan)


@jax.jit
def detection_metrics(p_noisy: jax.Array, losses: jax.Array, noise_mask: jax.Array) -> dict:
    """AUROC of p(noisy) and of the raw loss, precision and recall of p(noisy) > 0.5, and the
    mean p(noisy) (``est_noisy``: the noise model's estimate of the fraction of wrong labels)."""
    pred = p_noisy > 0.5
    tp = jnp.sum(pred & noise_mask)
    return {
        "auroc": auroc(p_noisy, noise_mask),
        "auroc_loss": auroc(losses, noise_mask),
        "precision": jnp.where(jnp.sum(pred) > 0, tp / jnp.maximum(jnp.sum(pred), 1), jnp.nan),
        "recall": jnp.where(
            jnp.sum(noise_mask) > 0, tp / jnp.maximum(jnp.sum(noise_mask), 1), jnp.nan
        ),
        "flagged_fraction": jnp.mean(pred.astype(jnp.float32)),
        "est_noisy": jnp.mean(p_noisy.astype(jnp.float32)),
    }


def noise_known(noise_mask) -> bool:
    """Whether detection metrics mean anything: some labels are known wrong and some right.

    False without noise (``noise_kind="none"``, a rate that flipped nothing, human labels equal
    to the dataset's): which labels are wrong is then unknown, and AUROC / precision / recall
    against the mask are undefined or meaningless.
    """
    n_noisy = int(np.sum(np.asarray(noise_mask, bool)))
    return 0 < n_noisy < np.size(noise_mask)


@jax.jit
def loss_quantiles(losses: jax.Array, noise_mask: jax.Array) -> dict:
    """25/50/75% quantiles of the per-sample loss for clean and noisy samples (paper Fig. 1)."""
    qs = jnp.array([0.25, 0.5, 0.75], jnp.float32)

    def masked_quantiles(m):
        x = jnp.where(m, losses, jnp.nan)
        return jnp.nanquantile(x, qs)

    return {"clean": masked_quantiles(~noise_mask), "noisy": masked_quantiles(noise_mask)}
