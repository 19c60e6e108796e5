"""Two-component noise models of the per-sample loss: beta (BMM) and Gaussian (GMM) mixtures.

Everything runs on the accelerator, jit-compiled and vectorised over samples, in float32, using
only reductions over the sample axis — so a loss array sharded over devices (or hosts) is fitted
as one global model with no gather.

Preprocessing (the published code's ``track_training_loss``):

1. ``p5, p95`` = the 5th and 95th percentiles of the raw losses, *exact*, with numpy's default
   linear interpolation, without a sort (``jaxnoise.percentiles``: a 32-step bisection over the
   float32 bit patterns; ``percentiles`` and ``order_statistics`` are re-exported here).
2. The fit uses only the samples with ``p5 <= l <= p95``.
3. ``x = (l - lo) / (hi - lo + 1e-6)`` with ``lo = p5 + 1e-5``, ``hi = p95``; then ``x >= 1``
   becomes ``1 - 1e-3`` and ``x <= 0`` becomes ``1e-3`` (``normalize_losses``, the only copy
   of this mapping). Posteriors, densities and log-likelihoods of new losses use the same
   mapping with the stored ``lo``/``hi``.

BMM EM (paper eqs. 4-6): init ``alpha = (1, 2)``, ``beta = (2, 1)``, ``pi = (0.5, 0.5)``;
observations bounded to ``[1e-4, 1 - 1e-4]``; E-step responsibilities ``pi_k Beta(x | a_k, b_k)``
floored at ``1e-12`` then normalised; weighted method-of-moments M-step; exactly ``max_iters``
iterations. The noisy component is component 1 (``noisy="initial"``, the original code) or the
one with the larger fitted mean ``a / (a + b)`` (``noisy="max_mean"``, the published extension).

GMM EM (the comparison model): same preprocessing, init means ``(1/3, 2/3)`` and variances
``1/18`` (the moments of the BMM's initial components), ``pi = (0.5, 0.5)``, sklearn's M-step
(``reg_covar`` added to the variances); the noisy component is the one with the larger mean
(``noisy="max_mean"``, default) or component 1 (``"initial"``).

DivideMix's GMM (Li et al., ICLR 2020, ``eval_train``: sklearn ``GaussianMixture(2,
max_iter=10, tol=1e-2, reg_covar=5e-4)``, clean = the smaller-mean component) is
``fit_gmm(losses, normalize="minmax", init="kmeans", tol=1e-2, reg_covar=5e-4)``:

- ``normalize="minmax"``: ``x = (l - min) / (max - min)`` over the (selected) losses, no
  clipping, no range mask, every selected loss observed (``minmax_normalize``, also used by
  the posteriors; the state records it in ``GMMState.normalize``). ``"none"``: the losses are
  already normalised (``lo, hi = 0, 1``), e.g. DivideMix's mean over the last 5 epochs of
  min-max-normalised losses at 90% noise.
- ``tol``: sklearn's stopping rule. Each iteration is an E-step, whose mean log-likelihood is
  the lower bound, and an M-step; EM stops after the M-step of the first iteration whose
  bound differs from the previous one by less than ``tol`` (at most ``max_iters``; a
  ``lax.while_loop``). ``tol=None``: exactly ``max_iters`` iterations (default).
- ``init="kmeans"``: a deterministic stand-in for sklearn's default initialisation (labels of
  a k-means with a random state, then the clusters' weights, means and variances +
  ``reg_covar``): 1-D Lloyd 2-means started from the smallest and largest observation, run to
  its fixed point (at most 100 steps), then the same cluster moments. In 1-D the two clusters
  are split at one threshold, and for a bimodal loss sample k-means++ + Lloyd reaches the same
  split. ``init="fixed"``: the initial parameters above (default).

Densities. One definition per model of the two weighted components' log-densities:
``gmm_log_weighted``, and ``bmm_log_weighted`` on ``_bmm_log_pdfs`` (log Beta from ``log x`` and
``log(1 - x)``, which EM computes once); ``log_weighted(state, x)`` picks by the state's type and
handles per-class states. EM, the posteriors (exact, per class and the 100-bin lookup table, all
through ``_posterior_pair``), ``density`` (mixture and component pdfs on normalised losses, for
figures) and ``log_likelihood`` derive from them. The BMM's EM and posteriors weight in the
linear domain, ``pi_k * exp(log f_k)``, as the original does: ``exp(log pi_k + log f_k)``
differs in the last bit and would change the fits.

Degenerate input. ``fit_*`` raises ``ValueError`` at trace time for fewer than 10 samples. When
the losses contain NaN/inf, when the 5th and 95th percentiles coincide (e.g. all losses equal),
or when EM produces non-finite parameters, the returned state has ``valid == False``, its
parameters are the initial ones, and ``posterior_noisy`` returns exactly 0.5 for every sample
(no sample is favoured). The training loop reads ``valid`` once per epoch to report it.

Masked and per-class fits. ``where`` (bool, one per loss) makes a fit behave as if called on
``losses[where]`` — percentiles over the selected samples only, EM sums over the selected
in-range samples — without a gather: the same fused reductions, with the mask folded in. With
``where``, too few selected samples (< ``MIN_SAMPLES``) give ``valid == False`` instead of an
error (the count is traced). ``fit_per_class`` fits one mixture per given (noisy) class as one
``jax.vmap`` of the masked fit over the classes; its state has a leading class axis on every leaf
and ``posterior_noisy(..., classes=...)`` evaluates each sample under its class's mixture.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import ClassVar, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxnoise.percentiles import multi_sum as multi_sum
from jaxnoise.percentiles import order_statistics as order_statistics
from jaxnoise.percentiles import percentiles

MIN_SAMPLES = 10
LOOKUP_RESOLUTION = 100
_EPS_OBS = 1e-4  # observations bounded to [eps, 1 - eps] in EM
_EPS_NAN = 1e-12  # responsibility floor and posterior denominator guard
_CLIP_LO = 1e-3  # normalised losses <= 0 become this, >= 1 become 1 - this
_LLOYD_MAX_ITERS = 100  # bound of the k-means initialisation's loop (1-D: converges in a few)

Noisy = Literal["initial", "max_mean"]
Normalize = Literal["percentile", "minmax", "none"]
Init = Literal["fixed", "kmeans"]


@struct.dataclass
class BMMState:
    """A fitted two-component beta mixture over normalised losses, plus its normalisation."""

    alphas: jax.Array  # (2,) float32
    betas: jax.Array  # (2,) float32
    weights: jax.Array  # (2,) float32 mixing proportions
    lo: jax.Array  # () float32: 5th percentile + 1e-5
    hi: jax.Array  # () float32: 95th percentile
    noisy_component: jax.Array  # () int32
    lookup: jax.Array  # (100,) float32 monotone posterior table of the noisy component
    valid: jax.Array  # () bool; False => posteriors are 0.5
    normalize: ClassVar[str] = "percentile"  # the BMM always uses the percentile mapping

    @property
    def means(self) -> jax.Array:
        """Component means a / (a + b) on the normalised scale."""
        return self.alphas / (self.alphas + self.betas)


@struct.dataclass
class GMMState:
    """A fitted two-component Gaussian mixture over normalised losses, plus its normalisation."""

    means: jax.Array  # (2,) float32
    variances: jax.Array  # (2,) float32
    weights: jax.Array  # (2,) float32
    lo: jax.Array
    hi: jax.Array
    noisy_component: jax.Array
    lookup: jax.Array
    valid: jax.Array
    # How raw losses map to x (static): "percentile" (normalize_losses) or "minmax" / "none"
    # (minmax_normalize; lo, hi = the fitted min, max or 0, 1).
    normalize: str = struct.field(pytree_node=False, default="percentile")


MixtureState = BMMState | GMMState


Pair = jax.Array | Sequence[jax.Array]  # the two components' values, p[0] and p[1]


# ---------------------------------------------------------------------------------------------
# Normalisation shared by fit, posterior, density and log-likelihood.


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


# ---------------------------------------------------------------------------------------------
# Component densities: one definition per model.


def _beta_logs(x: jax.Array, one_minus_x: jax.Array | None = None):
    """``log x`` and ``log(1 - x)``, the latter from ``one_minus_x`` when given."""
    return jnp.log(x), (jnp.log1p(-x) if one_minus_x is None else jnp.log(one_minus_x))


def _beta_log_norm(a: jax.Array, b: jax.Array) -> jax.Array:
    """log B(a, b), the beta density's log-normaliser."""
    gl = jax.scipy.special.gammaln
    return gl(a) + gl(b) - gl(a + b)


def _bmm_log_pdfs(
    lx: jax.Array, l1x: jax.Array, alphas: Pair, betas: Pair, log_norms: Pair | None = None
) -> list[jax.Array]:
    """log Beta(x | a_k, b_k), k = 0, 1, from ``log x`` and ``log(1 - x)``: THE beta density.

    Everything of the BMM derives from it (``bmm_log_weighted``, ``_bmm_weighted``); it takes
    the logs so that EM computes those of its observations once, outside the loop.
    ``log_norms``: ``_beta_log_norm(a_k, b_k)`` if already known (per class, then gathered).
    """
    out = []
    for k in range(2):
        a, b = alphas[k], betas[k]
        lbeta = _beta_log_norm(a, b) if log_norms is None else log_norms[k]
        out.append((a - 1.0) * lx + (b - 1.0) * l1x - lbeta)
    return out


def bmm_log_weighted(
    x: jax.Array,
    alphas: Pair,
    betas: Pair,
    weights: Pair | None = None,
    *,
    one_minus_x: jax.Array | None = None,
) -> jax.Array:
    """log(pi_k Beta(x | a_k, b_k)) for k = 0, 1, stacked on a leading axis: (2, ...).

    ``alphas[k]``, ``betas[k]``, ``weights[k]`` ((2,) arrays, or pairs of arrays) broadcast
    against ``x``. ``weights=None``: the unweighted log Beta(x | a_k, b_k). ``one_minus_x``:
    ``1 - x`` where float32 cannot form it from ``x`` (``1 - 1e-12`` rounds to 1).
    """
    lps = _bmm_log_pdfs(*_beta_logs(x, one_minus_x), alphas, betas)
    if weights is not None:
        lps = [jnp.log(weights[k]) + lps[k] for k in range(2)]
    return jnp.stack(lps)


def _bmm_weighted(
    lx, l1x, alphas: Pair, betas: Pair, weights: Pair, log_norms: Pair | None = None
) -> list[jax.Array]:
    """pi_k Beta(x | a_k, b_k) as the original computes them: ``pi_k * exp(log Beta)``.

    EM and the BMM posteriors use this form: ``exp(log pi_k + log Beta)`` (the exponential of
    ``bmm_log_weighted``) differs in the last bit, which would change the fitted parameters.
    """
    lps = _bmm_log_pdfs(lx, l1x, alphas, betas, log_norms)
    return [weights[k] * jnp.exp(lps[k]) for k in range(2)]


def gmm_log_weighted(x: jax.Array, means: Pair, variances: Pair, weights: Pair) -> jax.Array:
    """log(pi_k N(x | mu_k, var_k)) for k = 0, 1, stacked on a leading axis: (2, ...).

    Parameters broadcast against ``x`` as in ``bmm_log_weighted``. EM, the posteriors, the
    lookup table, the densities and the log-likelihood of the GMM all use it.
    """
    return jnp.stack(
        [
            jnp.log(weights[k])
            - 0.5 * (jnp.log(2.0 * jnp.pi * variances[k]) + (x - means[k]) ** 2 / variances[k])
            for k in range(2)
        ]
    )


def _params(state: MixtureState, ndim: int = 0) -> tuple[Pair, Pair, Pair]:
    """A state's (alphas, betas, weights) or (means, variances, weights).

    An ordinary state gives its (2,) leaves. A per-class state gives pairs ``leaf[..., k]`` with
    ``ndim - 1`` trailing unit axes after the class axis, to broadcast against ``x``.
    """
    if isinstance(state, BMMState):
        leaves = (state.alphas, state.betas, state.weights)
    elif isinstance(state, GMMState):
        leaves = (state.means, state.variances, state.weights)
    else:
        raise TypeError(f"expected a BMMState or GMMState, got {type(state).__name__}")
    if state.weights.ndim == 1:
        return leaves
    batch = state.weights.shape[:-1]
    pad = (1,) * max(ndim - len(batch), 0)
    return tuple([v[..., k].reshape(batch + pad) for k in range(2)] for v in leaves)


def log_weighted(state: MixtureState, x: jax.Array) -> jax.Array:
    """log(pi_k f_k(x)), k = 0, 1, of a state's two components at normalised ``x``: (2, ...).

    ``bmm_log_weighted`` or ``gmm_log_weighted`` by the state's type. A per-class state's class
    axis leads: ``x`` of shape (C, ...) (a row per class) or (1, ...) (a grid shared by all
    classes) gives (2, C, ...).
    """
    x = jnp.asarray(x, jnp.float32)
    params = _params(state, x.ndim)
    if isinstance(state, BMMState):
        return bmm_log_weighted(x, *params)
    return gmm_log_weighted(x, *params)


def _posterior_pair(model: type, params: tuple, comp: jax.Array, x, one_minus_x=None):
    """(p(noisy | x), 1 - p(noisy | x)), each computed directly: the posterior of each model.

    For the exact posteriors (of a state's parameters, or per-sample gathered ones) and the
    lookup table. BMM, as the original: ``pi_n f_n / (pi_0 f_0 + pi_1 f_1 + 1e-12)`` from
    ``_bmm_weighted``. GMM: ``exp(log pi_n f_n - logsumexp_k log pi_k f_k)`` from
    ``gmm_log_weighted``. ``comp``: the noisy component n.
    """
    if model is BMMState:
        wl = _bmm_weighted(*_beta_logs(x, one_minus_x), *params)
        total = wl[0] + wl[1] + _EPS_NAN
        noisy, clean = jnp.where(comp == 1, wl[1], wl[0]), jnp.where(comp == 1, wl[0], wl[1])
        return noisy / total, (clean + _EPS_NAN) / total
    logp = gmm_log_weighted(x, *params)
    lse = jax.nn.logsumexp(logp, axis=0)
    noisy, clean = jnp.where(comp == 1, logp[1], logp[0]), jnp.where(comp == 1, logp[0], logp[1])
    return jnp.exp(noisy - lse), jnp.exp(clean - lse)


def _lookup_index(x: jax.Array) -> jax.Array:
    """The table bin ``int(100 x)`` of normalised losses, clamped to [0, 99]."""
    return jnp.clip((LOOKUP_RESOLUTION * x).astype(jnp.int32), 0, LOOKUP_RESOLUTION - 1)


def _lookup_table(model: type, params: tuple, comp: jax.Array) -> jax.Array:
    """The original's 100-bin posterior table, made monotone from its argmax on.

    ``_posterior_pair`` gives the noisy posterior t and its complement c = 1 - t, each computed
    directly. The original finds the argmax in float64; in float32, posteriors within ~1e-7 of
    1 all round to 1.0 and ``argmax`` would pick the first of them. When the flat component
    is the noisy one it wins at both ends of the grid (t = 1 - 1e-11 at x = 1e-12, above
    the float64 values in the middle, below those at the top), so bin 0 would win the tie and
    the whole table would become 1: every sample noisy. The complement keeps its relative
    precision near 0, so its argmin is the float64 argmax.
    """
    grid = jnp.linspace(_EPS_NAN, 1.0 - _EPS_NAN, LOOKUP_RESOLUTION, dtype=jnp.float32)
    # The grid is symmetric, 1 - x_i = x_(99-i): the reversed grid gives 1 - x exactly where
    # float32 cannot (1 - 1e-12 rounds to 1.0), so a beta density with beta < 1 is evaluated
    # at the original's last point 1 - 1e-12 and not at the nearest float32 below 1.
    t, c = _posterior_pair(model, params, comp, grid, grid[::-1])
    c = jnp.where(jnp.isnan(c), jnp.inf, c)
    i = jnp.where(jnp.max(t) > 0.5, jnp.argmin(c), jnp.argmax(t))
    return jnp.where(jnp.arange(LOOKUP_RESOLUTION) >= i, t[i], t)


def _common_fields(model: type, params: tuple, lo, hi, comp, ok) -> dict:
    """The state fields both mixtures share (an invalid fit gets neutral bounds)."""
    return dict(
        weights=params[2],
        lo=jnp.where(ok, lo, 0.0),
        hi=jnp.where(ok, hi, 1.0),
        noisy_component=comp,
        lookup=_lookup_table(model, params, comp),
        valid=ok,
    )


def _choose_noisy(means: jax.Array, noisy: str) -> jax.Array:
    if noisy == "initial":
        return jnp.asarray(1, jnp.int32)
    return jnp.argmax(means).astype(jnp.int32)


def _check_noisy(noisy: str) -> None:
    if noisy not in ("initial", "max_mean"):
        raise ValueError(f"noisy must be 'initial' or 'max_mean', got {noisy!r}")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _check_iters(max_iters: int) -> None:
    if int(max_iters) < 1:
        raise ValueError(f"max_iters must be >= 1, got {max_iters}")


# ---------------------------------------------------------------------------------------------
# Beta mixture.


@functools.partial(jax.jit, static_argnames=("max_iters", "noisy"))
def fit_bmm(
    losses: jax.Array,
    *,
    max_iters: int = 10,
    noisy: Noisy = "initial",
    where: jax.Array | None = None,
) -> BMMState:
    """Fit the published two-component beta mixture to raw per-sample losses (jit, on device).

    ``where`` (bool, one per loss, may be traced): fit ``losses[where]`` (module docstring).
    """
    _check_noisy(noisy)
    _check_iters(max_iters)
    x, mask, lo, hi, valid = _prepare(losses, where)
    lx, l1x = _beta_logs(x)
    init = (
        jnp.array([1.0, 2.0], jnp.float32),
        jnp.array([2.0, 1.0], jnp.float32),
        jnp.array([0.5, 0.5], jnp.float32),
    )

    def em_step(_, params):
        alphas, betas, weights, shift = params
        p0, p1 = (jnp.maximum(p, _EPS_NAN) for p in _bmm_weighted(lx, l1x, *params[:3]))
        inv = mask / (p0 + p1)  # floored, normalised responsibilities r_k = p_k * inv
        new_a, new_b, sums = [], [], []
        for k, rk in enumerate((p0 * inv, p1 * inv)):
            # Sums of r, r (x - c), r (x - c)^2 with c the previous mean, which keeps the
            # float32 variance free of cancellation. (Plain jnp.sum: XLA:CPU vectorises these
            # and sums pairwise-accurately; a variadic reduce is neither.)
            d = x - shift[k]
            s0, s1, s2 = jnp.sum(rk), jnp.sum(rk * d), jnp.sum(rk * d * d)
            mean_d = s1 / s0
            xbar = shift[k] + mean_d
            var = s2 / s0 - mean_d * mean_d
            a = xbar * (xbar * (1.0 - xbar) / var - 1.0)
            new_a.append(a)
            new_b.append(a * (1.0 - xbar) / xbar)
            sums.append(s0)
        s = jnp.stack(sums)
        alphas, betas = jnp.stack(new_a), jnp.stack(new_b)
        return alphas, betas, s / jnp.sum(s), alphas / (alphas + betas)

    shift0 = init[0] / (init[0] + init[1])
    alphas, betas, weights, _ = jax.lax.fori_loop(0, max_iters, em_step, (*init, shift0))
    ok = valid & jnp.all(jnp.isfinite(jnp.concatenate([alphas, betas, weights])))
    ok = ok & jnp.all(alphas > 0) & jnp.all(betas > 0)
    alphas, betas, weights = (jnp.where(ok, v, v0) for v, v0 in zip((alphas, betas, weights), init))
    comp = _choose_noisy(alphas / (alphas + betas), noisy)
    fields = _common_fields(BMMState, (alphas, betas, weights), lo, hi, comp, ok)
    return BMMState(alphas=alphas, betas=betas, **fields)


# ---------------------------------------------------------------------------------------------
# Gaussian mixture (comparison model).


@functools.partial(jax.jit, static_argnames=("max_iters", "noisy", "normalize", "tol", "init"))
def fit_gmm(
    losses: jax.Array,
    *,
    max_iters: int = 10,
    noisy: Noisy = "max_mean",
    reg_covar: float = 1e-6,
    where: jax.Array | None = None,
    normalize: Normalize = "percentile",
    tol: float | None = None,
    init: Init = "fixed",
) -> GMMState:
    """Fit a two-component Gaussian mixture to normalised per-sample losses (jit, on device).

    ``where`` (bool, one per loss, may be traced): fit ``losses[where]`` (module docstring).
    ``normalize``, ``tol``, ``init``: the module docstring's DivideMix options; the defaults
    are the comparison model. An invalid fit keeps the ``"fixed"`` initial parameters.
    """
    _check_noisy(noisy)
    _check_iters(max_iters)
    _check_choice("normalize", normalize, ("percentile", "minmax", "none"))
    _check_choice("init", init, ("fixed", "kmeans"))
    if tol is not None and not float(tol) > 0:
        raise ValueError(f"tol must be None or > 0, got {tol}")
    x, mask, lo, hi, valid = _prepare(losses, where, normalize)
    fixed = (
        jnp.array([1.0 / 3.0, 2.0 / 3.0], jnp.float32),
        jnp.array([1.0 / 18.0, 1.0 / 18.0], jnp.float32),
        jnp.array([0.5, 0.5], jnp.float32),
    )
    n = jnp.sum(mask)
    start = fixed if init == "fixed" else _two_means_init(x, mask, n, reg_covar)
    means, variances, weights = _gmm_em(x, mask, n, start, reg_covar, max_iters, tol)
    ok = valid & jnp.all(jnp.isfinite(jnp.concatenate([means, variances, weights])))
    ok = ok & jnp.all(variances > 0)
    means, variances, weights = (
        jnp.where(ok, v, v0) for v, v0 in zip((means, variances, weights), fixed)
    )
    comp = _choose_noisy(means, noisy)
    fields = _common_fields(GMMState, (means, variances, weights), lo, hi, comp, ok)
    return GMMState(means=means, variances=variances, normalize=normalize, **fields)


def _gaussian_moments(x: jax.Array, resps: Sequence[jax.Array], shifts: Pair, reg_covar):
    """sklearn's M-step from (masked) responsibilities: ``(means, variances, n_k)``, (2,) each.

    ``mu_k = sum r x / n_k``, ``var_k = sum r (x - mu_k)^2 / n_k + reg_covar`` (as sklearn adds
    it, after each M-step), ``n_k = sum r``; the sums are of ``x - shifts[k]`` (the previous
    means), which keeps the float32 variance free of cancellation (see ``fit_bmm``).
    """
    new = []
    for k, rk in enumerate(resps):
        d = x - shifts[k]
        s0, s1, s2 = jnp.sum(rk), jnp.sum(rk * d), jnp.sum(rk * d * d)
        mean_d = s1 / s0
        new.append((shifts[k] + mean_d, s2 / s0 - mean_d * mean_d + reg_covar, s0))
    return tuple(jnp.stack(v) for v in zip(*new))


def _gmm_em(x, mask, n, start: tuple, reg_covar, max_iters: int, tol: float | None) -> tuple:
    """EM iterations from ``start``: exactly ``max_iters``, or sklearn's ``tol`` rule.

    With ``tol``, iteration i's E-step gives the lower bound ``b_i`` (the mean log-likelihood of
    the current parameters); after its M-step EM stops if ``|b_i - b_(i-1)| < tol``
    (``b_0 = -inf``), as ``sklearn.mixture.GaussianMixture.fit`` does.
    """

    def em_step(params):
        logp = gmm_log_weighted(x, *params)
        log_norm = jax.nn.logsumexp(logp, axis=0)
        resps = [mask * jnp.exp(logp[k] - log_norm) for k in range(2)]
        means, variances, nk = _gaussian_moments(x, resps, params[0], reg_covar)
        bound = jnp.sum(jnp.where(mask > 0, log_norm, 0.0)) / n
        return (means, variances, nk / n), bound

    if tol is None:
        return jax.lax.fori_loop(0, max_iters, lambda _, params: em_step(params)[0], start)

    def body(carry):
        i, params, previous, _ = carry
        params, bound = em_step(params)
        return i + 1, params, bound, jnp.abs(bound - previous) < tol

    carry = (jnp.int32(0), start, jnp.float32(-jnp.inf), jnp.bool_(False))
    return jax.lax.while_loop(lambda c: (c[0] < max_iters) & ~c[3], body, carry)[1]


def _two_means_init(x: jax.Array, mask: jax.Array, n: jax.Array, reg_covar) -> tuple:
    """``init="kmeans"``: 1-D Lloyd 2-means from the extremes, then the clusters' moments.

    Centroids start at the smallest and largest selected ``x``; each step assigns every sample
    to the nearer centroid (ties to the lower) and moves the centroids to their clusters' means,
    until they stop changing (their fixed point) or ``_LLOYD_MAX_ITERS`` steps. Then sklearn's
    ``_initialize`` from the hard labels: weights ``n_k / n``, means and variances +
    ``reg_covar`` (``_gaussian_moments``). Component 0 is the lower cluster.
    """
    sel = mask > 0
    first = jnp.stack([jnp.min(jnp.where(sel, x, jnp.inf)), jnp.max(jnp.where(sel, x, -jnp.inf))])

    def clusters(c):
        upper = mask * ((x - c[0]) ** 2 > (x - c[1]) ** 2)
        return [mask - upper, upper]

    def step(carry):
        i, c, _ = carry
        new = jnp.stack([jnp.sum(r * x) / jnp.sum(r) for r in clusters(c)])
        return i + 1, new, jnp.any(new != c)

    carry = (jnp.int32(0), first, jnp.bool_(True))
    centroids = jax.lax.while_loop(lambda c: (c[0] < _LLOYD_MAX_ITERS) & c[2], step, carry)[1]
    means, variances, nk = _gaussian_moments(x, clusters(centroids), centroids, reg_covar)
    return means, variances, nk / n


# ---------------------------------------------------------------------------------------------
# Posteriors, densities, log-likelihood.


def _take(table: jax.Array, idx: jax.Array) -> jax.Array:
    """``table[idx]`` of a small replicated table, sharded like ``idx``."""
    # Explicit-sharding meshes need the output sharding of a gather from a replicated table.
    return table.at[idx].get(out_sharding=jax.typeof(idx).sharding)


def _neutral_unless_valid(p: jax.Array, valid: jax.Array) -> jax.Array:
    """Posteriors clipped to [0, 1]; 0.5 where not finite or the state is invalid."""
    p = jnp.where(jnp.isfinite(p), jnp.clip(p, 0.0, 1.0), 0.5)
    return jnp.where(valid, p, 0.5)


def is_per_class(state: MixtureState) -> bool:
    """Whether ``state`` holds one mixture per class (every leaf has a leading class axis)."""
    return state.weights.ndim == 2


@functools.partial(jax.jit, static_argnames=("lookup",))
def posterior_noisy(
    state: MixtureState,
    losses: jax.Array,
    *,
    lookup: bool = False,
    classes: jax.Array | None = None,
) -> jax.Array:
    """p(noisy | raw loss) for any array of raw losses, with the bounds stored in ``state``.

    ``lookup=True`` reproduces the original code's 100-bin table indexed by ``int(100 x)``;
    ``lookup=False`` gives the exact posterior. An invalid state gives 0.5 everywhere. ``x``
    follows the state's ``normalize`` (a min-max GMM: DivideMix's clean probability is
    ``1 - posterior_noisy``).

    A per-class state (from ``fit_per_class``) needs ``classes`` (int, same shape as
    ``losses``, values in ``[0, C)``): each loss is evaluated under its class's mixture. For an
    ordinary state ``classes`` is ignored.
    """
    losses = jnp.asarray(losses, jnp.float32)
    if is_per_class(state):
        return _posterior_per_class(state, losses, classes, lookup)
    params = _params(state)
    x = _unit_losses(state.normalize, losses, state.lo, state.hi)
    if lookup:
        p = _take(state.lookup, _lookup_index(x))
    else:
        p = _posterior_pair(type(state), params, state.noisy_component, x)[0]
    return _neutral_unless_valid(p, state.valid)


def _posterior_per_class(state: MixtureState, losses: jax.Array, classes, lookup: bool):
    """``posterior_noisy`` of a per-class state: the same formulas on gathered parameters.

    Each sample gathers its class's scalars from (C,) tables (bounds, flags and, per component,
    the parameters and the BMM's log-normaliser): O(N) memory and work, ~12 small gathers.
    Evaluating all C mixtures on all samples and taking along the class axis would cost C times
    the transcendental work and (C, N) intermediates (20 MB each for N = 50k, C = 100). The
    lookup table is read with one gather from the flattened (C, 100) table, never a per-sample
    copy of it. (XLA fuses the per-class lgamma into the gathers, so the exact BMM path
    evaluates it per sample, unvectorised on XLA:CPU: ~15-25 ms for 50k samples there, vs
    ~30-50 ms the (C, N) way and < 1 ms for the lookup path; ~0.1 ms for a batch of 128.)
    """
    if classes is None:
        raise ValueError("a per-class mixture state needs classes= (one class per loss)")
    classes = jnp.asarray(classes, jnp.int32)
    if classes.shape != losses.shape:
        raise ValueError(f"classes has shape {classes.shape}, losses have {losses.shape}")
    params = _params(state, 1)  # pairs of (C,) tables

    def take(t):
        return _take(t, classes)

    x = _unit_losses(state.normalize, losses, take(state.lo), take(state.hi))
    comp = take(state.noisy_component)
    if lookup:
        p = _take(state.lookup.reshape(-1), classes * LOOKUP_RESOLUTION + _lookup_index(x))
    else:
        if isinstance(state, BMMState):  # the log-normalisers per class, not per sample
            log_norm = _beta_log_norm(state.alphas, state.betas)
            params = (*params, [log_norm[:, k] for k in range(2)])
        gathered = tuple([take(v) for v in pair] for pair in params)
        p = _posterior_pair(type(state), gathered, comp, x)[0]
    return _neutral_unless_valid(p, take(state.valid))


@jax.jit
def density(state: MixtureState, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The mixture pdf and its weighted component pdfs at normalised losses ``x`` (figures).

    ``(total, comps)``: ``comps = exp(log_weighted(state, x))``, (2, ...), i.e.
    ``pi_k f_k(x)``, and ``total = comps[0] + comps[1]``, which integrates to 1 over the
    normalised axis (beta densities are 0 outside (0, 1)). On the raw-loss axis, ``x =
    normalize_losses(l, lo, hi, clip=False)`` and the densities divide by ``loss_scale(lo,
    hi)``. Shapes of a per-class state as in ``log_weighted``; an invalid state has its initial
    parameters.
    """
    x = jnp.asarray(x, jnp.float32)
    comps = jnp.exp(log_weighted(state, x))
    if isinstance(state, BMMState):
        comps = jnp.where((x > 0.0) & (x < 1.0), comps, 0.0)
    return comps[0] + comps[1], comps


@jax.jit
def log_likelihood(
    state: MixtureState, losses: jax.Array, where: jax.Array | None = None
) -> jax.Array:
    """Mean log-likelihood ``log sum_k pi_k f_k(x)`` of the raw losses the fit uses.

    Over the losses ``in_fitted_range`` (and ``where``, bool one per loss, if given), at their
    EM observations ``x`` (normalised with the stored bounds, bounded to [1e-4, 1 - 1e-4];
    a min-max state: ``minmax_normalize``);
    ``logsumexp`` of ``log_weighted``. Both models are densities over the same ``x``, so the
    values compare: higher fits better. NaN for an invalid state or no selected loss. A
    per-class state gives one value per class (``where`` may then be (C, N), e.g. the
    class masks).
    """
    losses = jnp.asarray(losses, jnp.float32).reshape(-1)
    sel = in_fitted_range(state, losses)
    if where is not None:
        sel = sel & jnp.asarray(where, bool)
    x = _observations(losses, *_bounds(state, 1), state.normalize)
    ll = jax.nn.logsumexp(log_weighted(state, x), axis=0)
    mean = jnp.sum(jnp.where(sel, ll, 0.0), axis=-1) / jnp.sum(sel, axis=-1)
    return jnp.where(state.valid, mean, jnp.nan)


# ---------------------------------------------------------------------------------------------
# Dispatch, initial states, per-class fits, summaries.


def fit(
    kind: str,
    losses: jax.Array,
    *,
    max_iters: int = 10,
    noisy: Noisy = "initial",
    where: jax.Array | None = None,
):
    """Fit the named noise model ('bmm' or 'gmm'); ``where`` as in ``fit_bmm``."""
    if kind == "bmm":
        return fit_bmm(losses, max_iters=max_iters, noisy=noisy, where=where)
    if kind == "gmm":
        return fit_gmm(losses, max_iters=max_iters, noisy=noisy, where=where)
    raise ValueError(f"unknown noise model {kind!r}; allowed: 'bmm', 'gmm'")


@functools.partial(jax.jit, static_argnames=("kind", "num_classes", "max_iters", "noisy"))
def fit_per_class(
    kind: str,
    losses: jax.Array,
    classes: jax.Array,
    num_classes: int,
    *,
    max_iters: int = 10,
    noisy: Noisy = "initial",
) -> MixtureState:
    """One mixture per given class: class c is ``fit(kind, losses[classes == c])``.

    One jitted ``jax.vmap`` over the classes of the masked fit (mask ``classes == c``): only
    reductions over the sample axis, so a sharded ``losses``/``classes`` pair needs no gather.
    Every leaf of the result has a leading class axis (C, ...). A class with fewer than
    ``MIN_SAMPLES`` samples (or degenerate losses) gets ``valid == False``. Cost: C masked fits
    over all N samples, ~3 (C, N) float32 arrays live through EM (60 MB for C = 100, N = 50k).
    Samples whose class is outside ``[0, C)`` are in no fit.
    """
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    losses = jnp.asarray(losses, jnp.float32).reshape(-1)
    classes = jnp.asarray(classes).reshape(-1)
    if classes.shape != losses.shape:
        raise ValueError(f"{classes.shape[0]} classes for {losses.shape[0]} losses")

    def one(c):
        return fit(kind, losses, max_iters=max_iters, noisy=noisy, where=classes == c)

    return jax.vmap(one)(jnp.arange(num_classes, dtype=classes.dtype))


def initial_state(kind: str, num_classes: int = 0) -> MixtureState:
    """An invalid (uninformative) state: posteriors 0.5 until the first fit.

    ``num_classes > 0``: a per-class state, every leaf with a leading axis of that size.
    """
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    common = dict(
        weights=f32([0.5, 0.5]),
        lo=f32(0.0),
        hi=f32(1.0),
        noisy_component=jnp.asarray(1, jnp.int32),
        lookup=jnp.full((LOOKUP_RESOLUTION,), 0.5, jnp.float32),
        valid=jnp.asarray(False),
    )
    if kind == "bmm":
        state = BMMState(alphas=f32([1.0, 2.0]), betas=f32([2.0, 1.0]), **common)
    elif kind == "gmm":
        state = GMMState(means=f32([1 / 3, 2 / 3]), variances=f32([1 / 18, 1 / 18]), **common)
    else:
        raise ValueError(f"unknown noise model {kind!r}; allowed: 'bmm', 'gmm'")
    if int(num_classes) < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    if num_classes:
        state = jax.tree.map(lambda v: jnp.broadcast_to(v, (num_classes, *v.shape)), state)
    return state


def summary(state: MixtureState) -> dict:
    """Host-side dict of the fitted parameters, for logging (one small transfer).

    A per-class state gives ``scope: "class"`` and one list entry per class for every field; a
    GMM fitted with ``normalize="minmax"`` or ``"none"`` adds ``normalize``.
    """
    s = jax.device_get(state)
    tolist = lambda v: np.asarray(v).tolist()  # noqa: E731
    if is_per_class(s):
        out = {
            "scope": "class",
            "valid": tolist(s.valid),
            "noisy_component": tolist(s.noisy_component),
            "weights": tolist(s.weights),
            "lo": tolist(s.lo),
            "hi": tolist(s.hi),
        }
    else:
        out = {
            "valid": bool(s.valid),
            "noisy_component": int(s.noisy_component),
            "weights": np.asarray(s.weights).tolist(),
            "lo": float(s.lo),
            "hi": float(s.hi),
        }
    if isinstance(s, BMMState):
        out.update(alphas=np.asarray(s.alphas).tolist(), betas=np.asarray(s.betas).tolist())
    else:
        out.update(means=np.asarray(s.means).tolist(), variances=np.asarray(s.variances).tolist())
    if s.normalize != "percentile":  # absent for the default mapping
        out["normalize"] = s.normalize
    return out
