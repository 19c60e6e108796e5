"""Tests for ``jaxnoise.dividemix.pieces`` (and the shared pieces DivideMix uses from
``jaxnoise.losses``) and the DivideMix options of ``mixture.fit_gmm``.

DivideMix (Li, Socher & Hoi, ICLR 2020), official ``Train_cifar.py``. Every reference is numpy
written here from the formulas of that code (sharpening, co-guessing, co-refinement, MixMatch,
SemiLoss, linear_rampup, the uniform prior and NegEntropy penalties), or
``sklearn.mixture.GaussianMixture`` for ``eval_train``'s GMM, never the code under test.
"""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats
from sklearn.mixture import GaussianMixture

from jaxnoise import losses, mixture
from jaxnoise.dividemix import pieces as dividemix

B, C = 6, 5  # batch of labelled (and of unlabelled) samples, classes
T = 0.5
ALPHA = 4.0
DIVIDEMIX_GMM = dict(normalize="minmax", init="kmeans", tol=1e-2, reg_covar=5e-4)


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sharpen(p, t):
    pt = p ** (1.0 / t)
    return pt / pt.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def logits():
    return np.random.default_rng(0).normal(0.0, 2.0, (6, B, C)).astype(np.float32)


# =========================================================================== targets


def test_sharpen_matches_numpy(logits):
    """Sharpening ``p^(1/T) / sum p^(1/T)``, T = 0.5."""
    p = _softmax(logits[0].astype(np.float64))
    got = np.asarray(dividemix.sharpen(jnp.asarray(p, jnp.float32), T))
    np.testing.assert_allclose(got, _sharpen(p, T), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-6)


def test_co_guess_averages_four_softmaxes_then_sharpens(logits):
    """Co-guessing: ``sharpen((sm(u1, net) + sm(u2, net) + sm(u1, other) + sm(u2, other)) / 4)``."""
    views = [logits[k].astype(np.float64) for k in range(4)]
    want = _sharpen(sum(_softmax(v) for v in views) / 4.0, T)
    got = dividemix.co_guess(*(jnp.asarray(v, jnp.float32) for v in views), T)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-7)


def test_co_refine_blends_labels_with_mean_prediction(logits):
    """Co-refinement: ``sharpen(w y + (1 - w) (sm(x1) + sm(x2)) / 2)``, w the clean probability."""
    z1, z2 = logits[4].astype(np.float64), logits[5].astype(np.float64)
    y = np.eye(C)[np.arange(B) % C]
    w = np.linspace(0.0, 1.0, B)
    px = w[:, None] * y + (1.0 - w[:, None]) * (_softmax(z1) + _softmax(z2)) / 2.0
    got = dividemix.co_refine(*(jnp.asarray(v, jnp.float32) for v in (z1, z2, y, w)), T)
    np.testing.assert_allclose(np.asarray(got), _sharpen(px, T), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(got)[-1], y[-1], atol=1e-7)  # w = 1: the label


# =========================================================================== MixMatch


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_mix_given_draw_matches_numpy(dtype):
    """``mixed = l a + (1 - l) a[idx]`` for inputs and targets; the inputs keep their dtype."""
    rng = np.random.default_rng(1)
    inputs = rng.normal(size=(4 * B, 3, 2, 2)).astype(np.float32)
    targets = _softmax(rng.normal(size=(4 * B, C)))
    lam, perm = 0.8, rng.permutation(4 * B)
    x = np.asarray(jnp.asarray(inputs, dtype), np.float64)  # the values the mix sees
    got_x = losses.mix(jnp.asarray(inputs, dtype), perm, lam)
    got_t = losses.mix(jnp.asarray(targets), perm, lam)
    assert got_x.dtype == dtype and got_t.dtype == jnp.float32
    tol = 1e-6 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(
        np.asarray(got_x, np.float64), lam * x + (1 - lam) * x[perm], rtol=tol, atol=tol
    )
    np.testing.assert_allclose(
        np.asarray(got_t), lam * targets + (1 - lam) * targets[perm], rtol=1e-6, atol=1e-7
    )
    with pytest.raises(TypeError, match="floating"):
        losses.mix(jnp.zeros((4, 2), jnp.uint8), perm[:4], lam)


def test_mixmatch_draw_lambda_and_permutation():
    """``l ~ Beta(4, 4)``, ``l = max(l, 1 - l)``; ``idx`` a permutation of the whole batch;
    ``mixmatch`` is ``mix`` with that draw."""
    n, draws = 4 * B, 4000
    rng = np.random.default_rng(2)
    inputs = jnp.asarray(rng.normal(size=(n, 7)), jnp.float32)
    targets = jnp.asarray(_softmax(rng.normal(size=(n, C))), jnp.float32)
    keys = jax.random.split(jax.random.key(0), draws)

    @jax.jit
    def draw_and_mix(keys):
        lams, perms = jax.vmap(lambda k: dividemix.mixmatch_draw(k, n, ALPHA))(keys)
        return lams, perms, dividemix.mixmatch(keys[3], inputs, targets, ALPHA)

    lams, perms, got = draw_and_mix(keys)
    lams, perms = np.asarray(lams, np.float64), np.asarray(perms)
    assert lams.min() >= 0.5 and lams.max() < 1.0
    assert (np.sort(perms, axis=1) == np.arange(n)).all()
    # E[max(L, 1 - L)] = 2 int_{1/2}^1 l f(l) dl, L ~ Beta(4, 4); 5 standard errors.
    mean = 2 * integrate.quad(lambda t: t * stats.beta.pdf(t, ALPHA, ALPHA), 0.5, 1.0)[0]
    assert abs(lams.mean() - mean) < 5 * lams.std() / np.sqrt(draws)
    want = (losses.mix(inputs, perms[3], lams[3]), losses.mix(targets, perms[3], lams[3]))
    assert float(got[2]) == np.float32(lams[3])
    for a, b in zip(got[:2], want):  # jitted vs eager: fusion may round the last bit
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


# =========================================================================== losses


def test_semi_losses_match_numpy(logits):
    """``Lx = -mean(sum(log_softmax * t))``, ``Lu = mean((softmax - t)^2)`` over all elements."""
    zx, zu = (np.concatenate([logits[k], logits[k + 1]]).astype(np.float64) for k in (0, 2))
    tx, tu = _softmax(zu[::-1] * 0.7), _softmax(zx * 1.3)
    want_x = -np.mean(np.sum(np.log(_softmax(zx)) * tx, axis=1))
    want_u = np.mean((_softmax(zu) - tu) ** 2)
    got = dividemix.semi_losses(*(jnp.asarray(v, jnp.float32) for v in (zx, tx, zu, tu)))
    np.testing.assert_allclose([float(v) for v in got], [want_x, want_u], rtol=1e-5)


def test_lambda_u_linear_rampup():
    """``lambda_u * clip((epoch + batch_idx / num_iter - warm_up) / 16, 0, 1)``."""
    warm_up, lam = 10, 25.0
    for progress, want in [(0.0, 0.0), (10.0, 0.0), (14.0, 6.25), (18.0, 12.5), (26.0, 25.0)]:
        assert float(dividemix.lambda_u(progress, warm_up, lam)) == pytest.approx(want)
    num_iter = 50000 // 64 + 1
    progress = 11 + 100 / num_iter
    want = lam * (progress - warm_up) / 16
    assert float(dividemix.lambda_u(progress, warm_up, lam)) == pytest.approx(want, rel=1e-6)
    assert float(dividemix.lambda_u(11.0, 30, 25.0, rampup=4)) == 0.0


def test_uniform_prior_and_negative_entropy_penalties(logits):
    """``sum pi log(pi / mean softmax)`` with ``pi = 1/C``; ``mean(sum(p log p))``."""
    z = logits.reshape(-1, C).astype(np.float64)
    pbar = _softmax(z).mean(axis=0)
    want = np.sum(np.log((1.0 / C) / pbar) / C)
    got = losses.class_balance_regularizer(jnp.asarray(z, jnp.float32))  # the uniform prior
    assert float(got) == pytest.approx(want, rel=1e-5, abs=1e-7)
    p = _softmax(z)
    got = dividemix.neg_entropy(jnp.asarray(z, jnp.float32))
    assert float(got) == pytest.approx(np.mean(np.sum(p * np.log(p), axis=1)), rel=1e-5)
    # An underflowing probability contributes its limit 0 (p log p -> 0), not NaN.
    extreme = jnp.asarray([[0.0, -200.0, 0.0]], jnp.float32)
    assert float(dividemix.neg_entropy(extreme)) == pytest.approx(np.log(0.5), rel=1e-6)


# =========================================================================== pools


def test_division_pools():
    """Labelled = ``p_clean > threshold``, unlabelled = the rest."""
    p = jnp.asarray([0.1, 0.5, 0.50001, 0.9])
    labelled, unlabelled = dividemix.division_pools(p, 0.5)
    assert np.asarray(labelled).tolist() == [False, False, True, True]
    assert np.asarray(unlabelled).tolist() == [True, True, False, False]


_draws = jax.jit(jax.vmap(dividemix.sample_from_pool, in_axes=(0, None, None)), static_argnums=2)


def test_sample_from_pool_distribution():
    """Draws lie in the pool, without replacement, uniformly (chi-square); a draw larger than
    the pool cycles through it; an empty pool is flagged."""
    n, draws = 60, 2000
    mask = np.random.default_rng(3).random(n) < 0.4
    pool = np.flatnonzero(mask)
    keys = jax.random.split(jax.random.key(1), draws)

    idx, valid = (np.asarray(v) for v in _draws(keys, jnp.asarray(mask), 10))
    assert valid.all() and np.isin(idx, pool).all()
    assert all(len(set(row)) == 10 for row in idx)  # without replacement
    counts = np.bincount(idx.ravel(), minlength=n)[pool]
    expected = idx.size / pool.size
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert chi2 < stats.chi2.ppf(0.9999, pool.size - 1), chi2

    size = 2 * pool.size + 3
    idx, _ = (np.asarray(v) for v in _draws(keys, jnp.asarray(mask), size))
    per_row = np.stack([np.bincount(row, minlength=n)[pool] for row in idx])
    assert np.isin(idx, pool).all() and per_row.min() >= 2 and per_row.max() <= 3

    idx, valid = (np.asarray(v) for v in _draws(keys, jnp.zeros(n, bool), 10))
    assert not valid.any() and idx.shape == (draws, 10)
    assert ((idx >= 0) & (idx < n)).all()


# =========================================================================== the GMM


N = 2000  # losses per GMM fit: one shape, so each option set compiles once


def _bimodal_losses(n=N, seed=0):
    """CE-like losses: 70% clean (small), 30% noisy (around 2.5)."""
    rng = np.random.default_rng(seed)
    k = int(0.7 * n)
    clean = rng.gamma(1.5, 0.15, k)
    return np.concatenate([clean, np.clip(rng.normal(2.5, 0.6, n - k), 0, None)]).astype(np.float32)


def _minmax(l):  # noqa: E741
    return (l - l.min()) / (l.max() - l.min())


def _ref_two_means_init(x, reg_covar):
    """1-D Lloyd 2-means from (min, max) to its fixed point, then the clusters' moments."""
    c = np.array([x.min(), x.max()])
    for _ in range(100):
        upper = (x - c[0]) ** 2 > (x - c[1]) ** 2
        new = np.array([x[~upper].mean(), x[upper].mean()])
        if np.array_equal(new, c):
            break
        c = new
    groups = [x[~upper], x[upper]]
    weights = np.array([g.size / x.size for g in groups])
    return weights, np.array([g.mean() for g in groups]), np.array([g.var() for g in groups])


def _sklearn_dividemix(x, init=None):
    """``eval_train``'s GMM on normalised losses ``x``; ``init`` = (weights, means, variances)."""
    kw = dict(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4)
    if init is None:
        kw["random_state"] = 0  # sklearn's own k-means initialisation
    else:
        weights, means, variances = init
        kw.update(
            weights_init=weights,
            means_init=means[:, None],
            precisions_init=1.0 / (variances + 5e-4)[:, None, None],
        )
    gmm = GaussianMixture(**kw).fit(x[:, None])
    clean = int(gmm.means_.argmin())
    return gmm, gmm.predict_proba(x[:, None])[:, clean]


def _dividemix_inputs():
    """Raw losses (``normalize="minmax"``) and, for 90% noise, the mean over the last 5 epochs
    of min-max-normalised losses (``normalize="none"``)."""
    raw = _bimodal_losses()
    jitter = np.random.default_rng(4).lognormal(0.0, 0.2, (5, raw.size))
    history = np.mean([_minmax(raw * j).astype(np.float32) for j in jitter], axis=0)
    return {"minmax": raw, "none": history.astype(np.float32)}


@pytest.mark.parametrize("normalize", ["minmax", "none"])
def test_gmm_matches_sklearn_with_same_init(normalize):
    """``fit_gmm(minmax/none, kmeans, tol 1e-2, reg_covar 5e-4, 10 iters)`` vs sklearn given
    the same initialisation: clean posteriors (smaller-mean component), means, variances,
    weights; EM stopped early by ``tol`` (10 full iterations differ)."""
    losses = _dividemix_inputs()[normalize]
    x = losses.astype(np.float64)
    if normalize == "minmax":
        x = _minmax(x)
    weights, means, variances = _ref_two_means_init(x, 5e-4)
    gmm, want = _sklearn_dividemix(x, (weights, means, variances))
    assert gmm.n_iter_ < 10  # tol stopped it
    kw = dict(DIVIDEMIX_GMM, normalize=normalize)
    state = mixture.fit_gmm(losses, **kw)
    assert bool(state.valid) and state.normalize == normalize
    got = 1.0 - np.asarray(mixture.posterior_noisy(state, losses))
    np.testing.assert_allclose(got, want, atol=1e-4)
    order = np.argsort(gmm.means_.ravel())
    np.testing.assert_allclose(np.asarray(state.means), gmm.means_.ravel()[order], rtol=1e-4)
    np.testing.assert_allclose(
        np.asarray(state.variances), gmm.covariances_.ravel()[order], rtol=1e-4
    )
    np.testing.assert_allclose(np.asarray(state.weights), gmm.weights_[order], rtol=1e-4)
    bounds = (losses.min(), losses.max()) if normalize == "minmax" else (0.0, 1.0)
    assert (float(state.lo), float(state.hi)) == bounds
    if normalize == "none":
        return
    ten = mixture.fit_gmm(losses, **dict(kw, tol=None))
    assert np.abs(1.0 - np.asarray(mixture.posterior_noisy(ten, losses)) - want).max() > 1e-2


def test_gmm_kmeans_init_matches_sklearn_default_init():
    """On a bimodal sample sklearn's own k-means initialisation reaches the same split as the
    deterministic 2-means, so the fits agree."""
    losses = _bimodal_losses(seed=1)
    _, want = _sklearn_dividemix(_minmax(losses.astype(np.float64)))
    state = mixture.fit_gmm(losses, **DIVIDEMIX_GMM)
    got = 1.0 - np.asarray(mixture.posterior_noisy(state, losses))
    np.testing.assert_allclose(got, want, atol=1e-4)


_fit_masked = jax.jit(lambda v, w: mixture.fit_gmm(v, where=w, **DIVIDEMIX_GMM))


def test_masked_minmax_fit_equals_subset_fit():
    """``where=mask`` (traced, under jit) fits ``losses[mask]``: min/max over the selection."""
    losses = _bimodal_losses(N + 500, seed=2)
    order = np.argsort(losses)
    chosen = np.random.default_rng(5).permutation(order[1:-1])[:N]  # not the extremes
    mask = np.zeros(losses.size, bool)
    mask[chosen] = True
    got = _fit_masked(jnp.asarray(losses), jnp.asarray(mask))
    want = mixture.fit_gmm(losses[mask], **DIVIDEMIX_GMM)
    assert bool(got.valid)
    assert float(got.lo) == losses[mask].min() and float(got.hi) == losses[mask].max()
    for name in ("means", "variances", "weights"):
        np.testing.assert_allclose(
            np.asarray(getattr(got, name)), np.asarray(getattr(want, name)), rtol=2e-5
        )
    np.testing.assert_allclose(
        np.asarray(mixture.posterior_noisy(got, losses)),
        np.asarray(mixture.posterior_noisy(want, losses)),
        atol=1e-5,
    )


def test_minmax_fit_degenerate_input_and_argument_checks():
    """Equal losses (max = min) or NaN give an invalid fit (posterior 0.5); bad options raise."""
    for loss in (np.ones(N, np.float32), np.r_[np.arange(N - 1.0), np.nan].astype(np.float32)):
        state = mixture.fit_gmm(loss, **DIVIDEMIX_GMM)
        assert not bool(state.valid)
        np.testing.assert_array_equal(np.asarray(mixture.posterior_noisy(state, loss)), 0.5)
    losses = _bimodal_losses()
    for bad in (dict(normalize="rank"), dict(init="random"), dict(tol=0.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            mixture.fit_gmm(losses, **bad)
    assert "normalize" not in mixture.summary(mixture.initial_state("gmm"))
    assert mixture.summary(mixture.fit_gmm(losses, **DIVIDEMIX_GMM))["normalize"] == "minmax"


def test_minmax_fit_reduces_over_samples_only():
    """Sharding-safe like the default fit: no sort, no gather from a per-sample array."""
    n = 1000
    jaxpr = jax.make_jaxpr(lambda v: mixture.fit_gmm(v, **DIVIDEMIX_GMM))(jnp.zeros(n))
    eqns, stack = [], [jaxpr.jaxpr]
    while stack:
        for e in stack.pop().eqns:
            eqns.append(e)
            for p in e.params.values():
                for sub in p if isinstance(p, tuple | list) else (p,):
                    if isinstance(sub, jax.extend.core.ClosedJaxpr):
                        stack.append(sub.jaxpr)
                    elif isinstance(sub, jax.extend.core.Jaxpr):
                        stack.append(sub)
    assert any(e.primitive.name == "while" for e in eqns)  # the sub-jaxprs were searched
    assert not [e for e in eqns if e.primitive.name == "sort"]
    for e in eqns:
        if e.primitive.name in ("gather", "dynamic_slice"):
            assert np.prod(e.invars[0].aval.shape) < n, e
