"""The Gaussian mixture's EM: the comparison model, and DivideMix's options.

Same preprocessing as the BMM (``normalize``), init means ``(1/3, 2/3)`` and variances ``1/18``
(``state.initial_params``), ``pi = (0.5, 0.5)``, sklearn's M-step (``reg_covar`` added to the
variances); the noisy component is the one with the larger mean (``noisy="max_mean"``, default)
or component 1 (``"initial"``).

DivideMix's GMM (Li et al., ICLR 2020, ``eval_train``: sklearn ``GaussianMixture(2,
max_iter=10, tol=1e-2, reg_covar=5e-4)``, clean = the smaller-mean component) is
``fit_gmm(losses, normalize="minmax", init="kmeans", tol=1e-2, reg_covar=5e-4)``
(``normalize="minmax"``: see ``normalize``):

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
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp

from jaxnoise.mixture.densities import gmm_log_weighted
from jaxnoise.mixture.normalize import Normalize, _prepare
from jaxnoise.mixture.posterior import _common_fields
from jaxnoise.mixture.state import (
    GMMState,
    Noisy,
    Pair,
    _check_iters,
    _check_noisy,
    _choose_noisy,
    initial_params,
)

_LLOYD_MAX_ITERS = 100  # bound of the k-means initialisation's loop (1-D: converges in a few)

Init = Literal["fixed", "kmeans"]


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


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

    ``losses``: (N,) float. Returns a ``GMMState`` (means, variances, weights: (2,) float32;
    ``noisy_component``; the bounds; ``valid``): pass it to :func:`posterior_noisy`.

    ``where`` (bool, one per loss, may be traced): fit ``losses[where]`` (``normalize``).
    ``normalize``, ``tol``, ``init``: DivideMix's options (module docstring); the defaults are
    the comparison model. An invalid fit keeps the ``"fixed"`` initial parameters.
    """
    _check_noisy(noisy)
    _check_iters(max_iters)
    _check_choice("normalize", normalize, ("percentile", "minmax", "none"))
    _check_choice("init", init, ("fixed", "kmeans"))
    if tol is not None and not float(tol) > 0:
        raise ValueError(f"tol must be None or > 0, got {tol}")
    x, mask, lo, hi, valid = _prepare(losses, where, normalize)
    fixed = initial_params("gmm")
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
