"""The two models' weighted component log-densities, the figure densities, the log-likelihood.

One definition per formula and model: ``gmm_log_weighted``, and ``bmm_log_weighted`` on
``_bmm_log_pdfs`` (log Beta from ``log x`` and ``log(1 - x)``, which EM computes once);
``log_weighted(state, x)`` picks by the state's type and handles per-class states. EM (``bmm``,
``gmm``), the posteriors (exact, per class and the 100-bin lookup table, all through
``posterior._posterior_pair``), ``density`` (mixture and component pdfs on normalised losses,
for figures) and ``log_likelihood`` derive from them. The BMM's EM and posteriors weight in the
linear domain, ``pi_k * exp(log f_k)`` (``_bmm_weighted``), as the original does:
``exp(log pi_k + log f_k)`` differs in the last bit and would change the fits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnoise.mixture.normalize import _bounds, _observations, in_fitted_range
from jaxnoise.mixture.state import BMMState, MixtureState, Pair, _params

_EPS_NAN = 1e-12  # responsibility floor and posterior denominator guard


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
