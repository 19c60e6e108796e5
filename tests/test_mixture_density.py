"""Densities, log-likelihoods and posteriors of ``jaxnoise.mixture`` against scipy, and the
figure/report helpers against mixture's own functions.

References are float64 scipy mixtures written here: ``sum_k pi_k Beta(x | a_k, b_k)`` and
``sum_k pi_k N(x | mu_k, var_k)`` on ``x = (l - lo) / (hi - lo + 1e-6)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxnoise import mixture, plots, report

BMM = dict(alphas=[2.0, 6.0], betas=[7.0, 2.5], weights=[0.6, 0.4], lo=0.3, hi=4.3)
BMM_SHARP = dict(alphas=[0.7, 18.7], betas=[3.0, 0.8], weights=[0.55, 0.45], lo=0.0, hi=2.0)
BMM_SKEW = dict(alphas=[1.5, 4.0], betas=[12.0, 1.2], weights=[0.7, 0.3], lo=0.1, hi=9.0)
GMM = dict(means=[0.2, 0.7], variances=[0.01, 0.02], weights=[0.5, 0.5], lo=1.0, hi=3.0)


def _f32(v):
    return np.asarray(v, np.float32).astype(np.float64)  # the float32 values the state holds


def _ref_components(p, x):
    """(2, N) weighted component pdfs pi_k f_k(x) in float64 (0 outside (0, 1) for betas)."""
    x = np.asarray(x, np.float64)
    w = _f32(p["weights"])
    if "alphas" in p:
        a, b = _f32(p["alphas"]), _f32(p["betas"])
        inside = (x > 0) & (x < 1)
        xi = np.where(inside, x, 0.5)
        return np.stack(
            [np.where(inside, w[k] * stats.beta.pdf(xi, a[k], b[k]), 0.0) for k in range(2)]
        )
    m, v = _f32(p["means"]), _f32(p["variances"])
    return np.stack([w[k] * stats.norm.pdf(x, m[k], np.sqrt(v[k])) for k in range(2)])


def _ref_normalise(p, losses):
    """x = (l - lo) / (hi - lo + 1e-6), x >= 1 -> 1 - 1e-3, x <= 0 -> 1e-3 (float64)."""
    lo, hi = _f32(p["lo"]), _f32(p["hi"])
    x = (np.asarray(losses, np.float64) - lo) / (hi - lo + 1e-6)
    return np.where(x >= 1, 1 - 1e-3, np.where(x <= 0, 1e-3, x))


def _bimodal(n: int, seed: int) -> np.ndarray:
    r = np.random.default_rng(seed)
    noisy = r.random(n) < 0.35
    return np.where(noisy, np.abs(2.5 + r.normal(0, 0.6, n)), r.gamma(2.0, 0.15, n)).astype(
        np.float32
    )


@pytest.fixture(scope="module")
def fitted():
    losses = _bimodal(4000, 0)
    states = report.refit_mixtures(losses, {"em_iters": 10, "noisy_component": "max_mean"})
    return losses, states


# ------------------------------------------------------------------------------ densities


@pytest.mark.parametrize("p", [BMM, BMM_SHARP, GMM], ids=["bmm", "bmm_sharp", "gmm"])
def test_density_matches_scipy_mixture(p):
    """density(state, x) = the scipy mixture, per component and in total."""
    state = plots._as_state(p)
    x = np.linspace(-0.2, 1.2, 1401)
    total, comps = (np.asarray(v, np.float64) for v in mixture.density(state, x))
    ref = _ref_components(p, np.asarray(x, np.float32))
    assert comps.shape == (2, x.size) and total.shape == x.shape
    np.testing.assert_allclose(comps, ref, rtol=2e-5, atol=1e-30)
    np.testing.assert_allclose(total, ref.sum(0), rtol=2e-5, atol=1e-30)


@pytest.mark.parametrize("p", [BMM, BMM_SKEW, GMM], ids=["bmm", "bmm_skew", "gmm"])
def test_density_integrates_to_one(p):
    """Over (0, 1) the mixture pdf integrates like the scipy mixture, to 1 for the BMM (the GMM
    to its scipy mass there, and to 1 over a wide range); each component to its weight."""
    state = plots._as_state(p)
    x = np.linspace(0.0, 1.0, 200_001)
    total, comps = (np.asarray(v, np.float64) for v in mixture.density(state, x))
    ref = _ref_components(p, x)
    w = _f32(p["weights"])
    # float32 densities: ~1e-6 relative error
    assert np.trapezoid(total, x) == pytest.approx(np.trapezoid(ref.sum(0), x), abs=1e-5)
    for k in range(2):
        assert np.trapezoid(comps[k], x) == pytest.approx(np.trapezoid(ref[k], x), abs=1e-5)
    if "alphas" in p:
        assert np.trapezoid(total, x) == pytest.approx(1.0, abs=1e-5)
        for k in range(2):
            assert np.trapezoid(comps[k], x) == pytest.approx(w[k], abs=1e-5)
    else:
        m, sd = _f32(p["means"]), np.sqrt(_f32(p["variances"]))
        mass = sum(
            w[k] * (stats.norm.cdf(1, m[k], sd[k]) - stats.norm.cdf(0, m[k], sd[k]))
            for k in range(2)
        )
        assert np.trapezoid(total, x) == pytest.approx(mass, abs=1e-5)
        wide = np.linspace(-2.0, 3.0, 200_001)
        assert np.trapezoid(mixture.density(state, wide)[0], wide) == pytest.approx(1.0, abs=1e-5)


def _per_class(kind: str) -> mixture.MixtureState:
    """A valid 3-class state stacked from hand-made mixtures (no fit needed)."""
    rows = (
        [BMM, BMM_SKEW, BMM_SHARP]
        if kind == "bmm"
        else [GMM, dict(GMM, means=[0.3, 0.5], lo=0.0), dict(GMM, variances=[0.05, 0.001], hi=5.0)]
    )
    states = [plots._as_state(p).replace(valid=jnp.asarray(True)) for p in rows]
    return jax.tree.map(lambda *v: jnp.stack(v), *states)


@pytest.mark.parametrize("kind", ["bmm", "gmm"])
def test_log_weighted_and_density_of_a_per_class_state(kind):
    """A per-class state's class axis leads; row c is the mixture of class c."""
    pc = _per_class(kind)
    grid = np.linspace(0.01, 0.99, 50, dtype=np.float32)
    lw = np.asarray(mixture.log_weighted(pc, grid[None]))
    total, comps = (np.asarray(v) for v in mixture.density(pc, grid[None]))
    assert lw.shape == comps.shape == (2, 3, 50) and total.shape == (3, 50)
    for c in range(3):
        one = jax.tree.map(lambda v, c=c: v[c], pc)
        np.testing.assert_allclose(lw[:, c], mixture.log_weighted(one, grid), rtol=1e-6)
        np.testing.assert_allclose(total[c], mixture.density(one, grid)[0], rtol=1e-6)


# ----------------------------------------------------------------- log-likelihood, posterior


@pytest.mark.parametrize("kind", ["bmm", "gmm"])
def test_log_likelihood_matches_scipy(kind, fitted):
    """Mean log of the scipy mixture pdf at the EM observations of the in-range losses."""
    losses, states = fitted
    state = states[kind]
    p = mixture.summary(state)
    lo, hi = np.float32(p["lo"]), np.float32(p["hi"])
    keep = (losses >= lo - np.float32(1e-5)) & (losses <= hi)
    x = np.clip(_ref_normalise(p, losses[keep]), 1e-4, 1 - 1e-4)
    ref = np.mean(np.log(_ref_components(p, x).sum(0)))
    assert float(mixture.log_likelihood(state, losses)) == pytest.approx(ref, rel=1e-5)
    where = np.arange(losses.size) % 2 == 0
    x = np.clip(_ref_normalise(p, losses[keep & where]), 1e-4, 1 - 1e-4)
    ref = np.mean(np.log(_ref_components(p, x).sum(0)))
    got = float(mixture.log_likelihood(state, losses, where))
    assert got == pytest.approx(ref, rel=1e-5)
    assert np.isnan(float(mixture.log_likelihood(mixture.initial_state(kind), losses)))


def test_log_likelihood_per_class(fitted):
    """A per-class state: one mean log-likelihood per class, that of the class's mixture."""
    losses, _ = fitted
    classes = np.arange(losses.size) % 3
    pc = _per_class("bmm")
    masks = classes[None] == np.arange(3)[:, None]
    got = np.asarray(mixture.log_likelihood(pc, losses, masks))
    for c in range(3):
        one = jax.tree.map(lambda v, c=c: v[c], pc)
        ref = float(mixture.log_likelihood(one, losses, classes == c))
        assert got[c] == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("kind", ["bmm", "gmm"])
def test_posterior_is_the_weighted_density_ratio(kind, fitted):
    """posterior_noisy (exact) = pi_n f_n / sum_k pi_k f_k from scipy, on raw losses; the
    lookup table is that ratio on the original's grid, flat from its argmax on."""
    losses, states = fitted
    state = states[kind]
    p = mixture.summary(state)
    n = p["noisy_component"]
    raw = np.r_[losses[:500], np.linspace(-1.0, 6.0, 300)].astype(np.float32)
    ref = _ref_components(p, _ref_normalise(p, raw))
    ref = ref[n] / (ref.sum(0) + (1e-12 if kind == "bmm" else 0.0))
    np.testing.assert_allclose(mixture.posterior_noisy(state, raw), ref, atol=2e-5)
    grid = np.linspace(1e-12, 1 - 1e-12, 100)
    t = _ref_components(p, grid)
    t = t[n] / (t.sum(0) + (1e-12 if kind == "bmm" else 0.0))
    t[np.argmax(t) :] = t.max()
    np.testing.assert_allclose(state.lookup, t, atol=2e-5)


# ------------------------------------------------------------- the figures and the report


def _old_density_normalised(p, x):
    """plots.mixture_density_normalised before it called mixture.density (float64 numpy)."""
    import math

    x = np.asarray(x, np.float64)
    w = np.asarray(p["weights"], np.float64)
    comps = np.zeros((2, x.size))
    if "alphas" in p:
        a, b = np.asarray(p["alphas"], np.float64), np.asarray(p["betas"], np.float64)
        inside = (x > 0) & (x < 1)
        xi = x[inside]
        for k in range(2):
            lbeta = math.lgamma(a[k]) + math.lgamma(b[k]) - math.lgamma(a[k] + b[k])
            comps[k, inside] = np.exp((a[k] - 1) * np.log(xi) + (b[k] - 1) * np.log1p(-xi) - lbeta)
    else:
        m, v = np.asarray(p["means"], np.float64), np.asarray(p["variances"], np.float64)
        for k in range(2):
            comps[k] = np.exp(-0.5 * (x - m[k]) ** 2 / v[k]) / np.sqrt(2 * np.pi * v[k])
    comps = w[:, None] * comps
    return comps.sum(0), comps


def test_plot_helpers_use_mixtures_functions(fitted):
    """plots' densities are mixture.density on mixture.normalize_losses, exactly."""
    losses, states = fitted
    for state in states.values():
        p = mixture.summary(state)
        x = np.linspace(0.0, 1.0, 257)
        for got, want in zip(plots.mixture_density_normalised(p, x), mixture.density(state, x)):
            assert np.array_equal(got, np.asarray(want, np.float64))
        grid = np.linspace(p["lo"] - 0.5, p["hi"] + 0.5, 300)
        xs = mixture.normalize_losses(grid.astype(np.float32), state.lo, state.hi, clip=False)
        total, comps = mixture.density(state, xs)
        scale = mixture.loss_scale(state.lo, state.hi)
        got = plots.mixture_density(p, grid)
        assert np.array_equal(got[0], np.asarray(total / scale, np.float64))
        assert np.array_equal(got[1], np.asarray(comps / scale, np.float64))
        assert report.mixture_log_likelihood(state, losses) == float(
            mixture.log_likelihood(state, losses)
        )


def test_figure_curves_unchanged(fitted, tmp_path, monkeypatch):
    """The curves loss_histogram draws equal those of the former numpy code (float64) to float32
    precision; the posterior curves are mixture.posterior_noisy."""
    losses, states = fitted
    figs = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (figs.append(fig), save(fig, path))[1])
    summaries = {k: mixture.summary(s) for k, s in states.items()}
    plots.loss_histogram(str(tmp_path / "h.png"), losses, mixtures=summaries)
    lines = {ln.get_label(): ln.get_xydata() for ln in figs[-1].axes[0].get_lines()}
    l64 = losses.astype(np.float64)
    for name, p in summaries.items():
        grid = np.linspace(p["lo"], p["hi"], 400)[1:-1]
        frac = np.mean((l64 >= p["lo"] - 1e-5) & (l64 <= p["hi"]))
        scale = p["hi"] - p["lo"] + 1e-6
        old = frac * _old_density_normalised(p, (grid - p["lo"]) / scale)[0] / scale
        xy = lines[f"{name.upper()} fit"]
        assert np.array_equal(xy[:, 0], grid)
        np.testing.assert_allclose(xy[:, 1], old, rtol=3e-5, atol=1e-7 * old.max())
        assert np.array_equal(xy[:, 1], plots.fitted_curve(p, losses)[1])
    curves = report.posterior_curves(states, {"noise_model": "bmm"}, losses)
    for label, (x, y, _) in curves.items():
        state = states[label.split(":")[0].lower()]
        expect = mixture.posterior_noisy(state, x, lookup="lookup" in label)
        assert np.array_equal(y, np.asarray(expect))
