"""The beta mixture's EM (Arazo et al., ICML 2019, eqs. 4-6), as the published code fits it.

Init ``alpha = (1, 2)``, ``beta = (2, 1)``, ``pi = (0.5, 0.5)`` (``state.initial_params``);
observations bounded to ``[1e-4, 1 - 1e-4]`` (``normalize``); E-step responsibilities
``pi_k Beta(x | a_k, b_k)`` floored at ``1e-12`` then normalised; weighted method-of-moments
M-step; exactly ``max_iters`` iterations. The noisy component is component 1
(``noisy="initial"``, the original code) or the one with the larger fitted mean ``a / (a + b)``
(``noisy="max_mean"``, the published extension).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxnoise.mixture.densities import _EPS_NAN, _beta_logs, _bmm_weighted
from jaxnoise.mixture.normalize import _prepare
from jaxnoise.mixture.posterior import _common_fields
from jaxnoise.mixture.state import (
    BMMState,
    Noisy,
    _check_iters,
    _check_noisy,
    _choose_noisy,
    initial_params,
)


@functools.partial(jax.jit, static_argnames=("max_iters", "noisy"))
def fit_bmm(
    losses: jax.Array,
    *,
    max_iters: int = 10,
    noisy: Noisy = "initial",
    where: jax.Array | None = None,
) -> BMMState:
    """Fit the published two-component beta mixture to raw per-sample losses (jit, on device).

    ``losses``: (N,) float (any N; e.g. each training sample's cross-entropy after an epoch),
    clipped to their 5th-95th percentile and scaled to [0, 1] inside. Returns a ``BMMState``
    (alphas, betas, weights: (2,) float32; ``noisy_component``; the bounds; ``valid``): pass it
    to :func:`posterior_noisy`.

    ``where`` (bool, one per loss, may be traced): fit ``losses[where]`` (``normalize``).
    """
    _check_noisy(noisy)
    _check_iters(max_iters)
    x, mask, lo, hi, valid = _prepare(losses, where)
    lx, l1x = _beta_logs(x)
    init = initial_params("bmm")

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
