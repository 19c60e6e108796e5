"""Raw losses to the unit interval, and the observations and sample mask a fit uses.

The published code's ``track_training_loss`` preprocessing, and DivideMix's min-max mapping.

``normalize="percentile"`` (both models' default):

1. ``p5, p95`` = the 5th and 95th percentiles of the raw losses, *exact*, with numpy's default
   linear interpolation, without a sort (``jaxnoise.percentiles``: a 32-step bisection over the
   float32 bit patterns; ``percentiles`` and ``order_statistics`` are re-exported by
   ``jaxnoise.mixture``).
2. The fit uses only the samples with ``p5 <= l <= p95``.
3. ``x = (l - lo) / (hi - lo + 1e-6)`` with ``lo = p5 + 1e-5``, ``hi = p95``; then ``x >= 1``
   becomes ``1 - 1e-3`` and ``x <= 0`` becomes ``1e-3`` (``normalize_losses``, the only copy
   of this mapping). Posteriors, densities and log-likelihoods of new losses use the same
   mapping with the stored ``lo``/``hi``. The EM observations are these ``x`` bounded to
   ``[1e-4, 1 - 1e-4]``.

``normalize="minmax"`` (GMM only; DivideMix's ``eval_train``): ``x = (l - min) / (max - min)``
over the (selected) losses, no clipping, no range mask, every selected loss observed
(``minmax_normalize``, also used by the posteriors; the state records it in
``GMMState.normalize``). ``"none"``: the losses are already normalised (``lo, hi = 0, 1``), e.g.
DivideMix's mean over the last 5 epochs of min-max-normalised losses at 90% noise.

Too few samples and masked fits. ``fit_*`` raises ``ValueError`` at trace time for fewer than
``MIN_SAMPLES`` = 10 samples. ``where`` (bool, one per loss) makes a fit behave as if called on
``losses[where]`` — percentiles over the selected samples only, EM sums over the selected
in-range samples — without a gather: the same fused reductions, with the mask folded in. With
``where``, too few selected samples (< ``MIN_SAMPLES``) give ``valid == False`` instead of an
error (the count is traced).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

from jaxnoise.mixture.state import MixtureState
from jaxnoise.percentiles import percentiles

MIN_SAMPLES = 10
_EPS_OBS = 1e-4  # observations bounded to [eps, 1 - eps] in EM
_CLIP_LO = 1e-3  # normalised losses <= 0 become this, >= 1 become 1 - this

Normalize = Literal["percentile", "minmax", "none"]


def loss_scale(lo: jax.Array, hi: jax.Array) -> jax.Array:
    """Width on the raw-loss axis of the normalised unit interval: dx/dl = 1 / loss_scale."""
    return hi - lo + 1e-6


def normalize_losses(
    losses: jax.Array, lo: jax.Array, hi: jax.Array, *, clip: bool = True
) -> jax.Array:
    """Map raw losses to (0, 1) with the stored bounds, as the published code does.

    ``x = (l - lo) / loss_scale(lo, hi)``; with ``clip`` (fit and posteriors) ``x >= 1``
    becomes ``1 - 1e-3`` and ``x <= 0`` becomes ``1e-3``; without, the affine map alone (the
    raw-loss axis of the densities).
    """
    x = (losses - lo) / loss_scale(lo, hi)
    if not clip:
        return x
    x = jnp.where(x >= 1.0, 1.0 - _CLIP_LO, x)
    return jnp.where(x <= 0.0, _CLIP_LO, x)


def minmax_normalize(losses: jax.Array, lo: jax.Array, hi: jax.Array) -> jax.Array:
    """DivideMix's ``eval_train`` normalisation ``x = (l - lo) / (hi - lo)``: no clipping.

    ``lo, hi`` = the min and max of the fitted losses (``normalize="minmax"``) or 0 and 1
    (``"none"``, where it is the identity).
    """
    return (losses - lo) / (hi - lo)


def _unit_losses(normalize: str, losses: jax.Array, lo: jax.Array, hi: jax.Array) -> jax.Array:
    """The normalised losses a state's posteriors use, by its ``normalize``."""
    if normalize == "percentile":
        return normalize_losses(losses, lo, hi)
    return minmax_normalize(losses, lo, hi)


def _observations(
    losses: jax.Array, lo: jax.Array, hi: jax.Array, normalize: str = "percentile"
) -> jax.Array:
    """The EM observations: percentile-normalised losses bounded to [1e-4, 1 - 1e-4], or the
    min-max-normalised losses as they are."""
    if normalize != "percentile":
        return minmax_normalize(losses, lo, hi)
    return jnp.clip(normalize_losses(losses, lo, hi), _EPS_OBS, 1.0 - _EPS_OBS)


def _bounds(state: MixtureState, ndim: int) -> tuple[jax.Array, jax.Array]:
    """``lo``, ``hi`` with ``ndim`` trailing unit axes (a per-class state's class axis leads)."""
    return tuple(v.reshape(v.shape + (1,) * ndim) for v in (state.lo, state.hi))


def in_fitted_range(state: MixtureState, losses: jax.Array) -> jax.Array:
    """Whether raw losses lie in the range the fit uses, ``lo - 1e-5 <= l <= hi``.

    That is the 5th to 95th percentile of the fitted losses (up to the float32 rounding of
    ``lo = p5 + 1e-5``); for a min-max state ``lo <= l <= hi``. A per-class state gives shape
    ``(C, *losses.shape)``.
    """
    losses = jnp.asarray(losses, jnp.float32)
    lo, hi = _bounds(state, losses.ndim)
    if state.normalize != "percentile":
        return (losses >= lo) & (losses <= hi)
    return (losses >= lo - 1e-5) & (losses <= hi)


def _prepare(losses: jax.Array, where: jax.Array | None = None, normalize: str = "percentile"):
    """Percentile bounds, the in-range mask, the EM observations and a validity flag."""
    losses = jnp.asarray(losses, jnp.float32).reshape(-1)
    if normalize != "percentile":
        return _prepare_unclipped(losses, where, normalize)
    if where is not None:
        return _prepare_masked(losses, where)
    if losses.shape[0] < MIN_SAMPLES:
        raise ValueError(
            f"a noise model needs at least {MIN_SAMPLES} losses to fit, got {losses.shape[0]}"
        )
    finite = jnp.all(jnp.isfinite(losses))
    safe = jnp.where(jnp.isfinite(losses), losses, 0.0)
    p5, p95 = percentiles(safe, (5.0, 95.0))
    lo, hi = p5 + 1e-5, p95
    mask = ((safe >= p5) & (safe <= p95)).astype(jnp.float32)
    x = _observations(safe, lo, hi)
    valid = finite & (hi > lo)
    return x, mask, lo, hi, valid


def _selection(losses: jax.Array, where: jax.Array) -> jax.Array:
    """``where`` as a flat bool mask, one entry per loss."""
    sel = jnp.asarray(where, bool).reshape(-1)
    if sel.shape != losses.shape:
        raise ValueError(f"where has {sel.shape[0]} entries for {losses.shape[0]} losses")
    return sel


def _prepare_masked(losses: jax.Array, where: jax.Array):
    """``_prepare`` of ``losses[where]``, as a mask: unselected samples get weight 0."""
    sel = _selection(losses, where)
    n = jnp.sum(sel, dtype=jnp.int32)
    is_finite = jnp.isfinite(losses)
    finite = jnp.all(is_finite | ~sel)  # only the selected samples must be finite
    safe = jnp.where(is_finite, losses, 0.0)
    p5, p95 = percentiles(safe, (5.0, 95.0), where=sel)
    lo, hi = p5 + 1e-5, p95
    mask = (sel & (safe >= p5) & (safe <= p95)).astype(jnp.float32)
    x = _observations(safe, lo, hi)
    valid = finite & (n >= MIN_SAMPLES) & (hi > lo)  # NaN bounds (none selected) fail hi > lo
    return x, mask, lo, hi, valid


def _prepare_unclipped(losses: jax.Array, where: jax.Array | None, normalize: str):
    """``_prepare`` for ``normalize="minmax"`` or ``"none"``: every selected loss is observed.

    ``x = minmax_normalize(l, lo, hi)`` with ``lo, hi`` the min and max of the selected losses
    (``"minmax"``) or 0 and 1 (``"none"``). Invalid input gives ``x = 0.5`` (finite; the fit
    is then discarded).
    """
    if where is None:
        if losses.shape[0] < MIN_SAMPLES:
            raise ValueError(
                f"a noise model needs at least {MIN_SAMPLES} losses to fit, got {losses.shape[0]}"
            )
        sel = jnp.ones(losses.shape, bool)
    else:
        sel = _selection(losses, where)
    n = jnp.sum(sel, dtype=jnp.int32)
    is_finite = jnp.isfinite(losses)
    safe = jnp.where(is_finite, losses, 0.0)
    if normalize == "minmax":
        lo = jnp.min(jnp.where(sel, safe, jnp.inf))
        hi = jnp.max(jnp.where(sel, safe, -jnp.inf))
    else:
        lo, hi = jnp.float32(0.0), jnp.float32(1.0)
    valid = jnp.all(is_finite | ~sel) & (n >= MIN_SAMPLES) & (hi > lo)
    x = jnp.where(valid, _observations(safe, lo, hi, normalize), 0.5)
    return x, sel.astype(jnp.float32), lo, hi, valid
