"""Tests for masked and per-class noise models (``where=``, ``fit_per_class``).

The references are float64 numpy/scipy written here from the equations of the
``jaxnoise.mixture`` docstring (nothing from the code under test): percentile clipping and
normalisation, BMM EM with a weighted method-of-moments M-step, GMM EM with sklearn's M-step.
The key property: the per-class mixtures equal per-class single fits, i.e. class c of
``fit_per_class`` is ``fit(losses[classes == c])`` of the existing code.

Every array has one of a few fixed shapes (N losses, C classes, subsets of M), so each jitted
function compiles once per static setting.
"""

from __future__ import annotations

import json

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from jaxnoise import mixture

M = 1000  # samples in each of the classes 0..2 (one subset shape)
SMALL = 5  # samples in class 3: below MIN_SAMPLES
C = 4
N = 3 * M + SMALL
RTOL = 1e-4
KIND_PARAMS = {"bmm": ("alphas", "betas"), "gmm": ("means", "variances")}


# =========================================================================== references


def _ref_prepare(losses):
    """5th-95th percentile clipping, normalisation to (0, 1), then the [1e-4, 1 - 1e-4] bound."""
    l = np.asarray(losses, np.float64)  # noqa: E741
    p5, p95 = np.percentile(l, [5, 95])
    lo, hi = p5 + 1e-5, p95
    x = _ref_normalise(l[(l >= p5) & (l <= p95)], lo, hi)
    return np.clip(x, 1e-4, 1 - 1e-4), lo, hi


def _ref_normalise(raw, lo, hi):
    x = (np.asarray(raw, np.float64) - lo) / (hi - lo + 1e-6)
    return np.where(x >= 1, 1 - 1e-3, np.where(x <= 0, 1e-3, x))


def _ref_bmm_dens(p, x):
    return np.stack([p["weights"][k] * stats.beta.pdf(x, p["a"][k], p["b"][k]) for k in range(2)])


def _ref_gmm_dens(p, x):
    mu, var, w = p["means"], p["variances"], p["weights"]
    logp = np.stack(
        [
            np.log(w[k]) - 0.5 * (np.log(2 * np.pi * var[k]) + (x - mu[k]) ** 2 / var[k])
            for k in (0, 1)
        ]
    )
    return np.exp(logp - logsumexp(logp, axis=0))  # normalised: the posterior of each component


def _ref_fit(kind, losses, noisy, iters=10):
    """Float64 EM of the published BMM / the comparison GMM on one class's losses."""
    x, lo, hi = _ref_prepare(losses)
    if kind == "bmm":
        p = dict(a=np.array([1.0, 2.0]), b=np.array([2.0, 1.0]), weights=np.array([0.5, 0.5]))
        for _ in range(iters):
            r = np.maximum(_ref_bmm_dens(p, x), 1e-12)
            r /= r.sum(0)
            xbar = (r * x).sum(1) / r.sum(1)
            s2 = (r * (x - xbar[:, None]) ** 2).sum(1) / r.sum(1)
            p["a"] = xbar * (xbar * (1 - xbar) / s2 - 1)
            p["b"] = p["a"] * (1 - xbar) / xbar
            p["weights"] = r.sum(1) / r.sum()
        means = p["a"] / (p["a"] + p["b"])
        p["alphas"], p["betas"] = p["a"], p["b"]
    else:
        p = dict(
            means=np.array([1 / 3, 2 / 3]), variances=np.full(2, 1 / 18), weights=np.ones(2) / 2
        )
        for _ in range(iters):
            r = _ref_gmm_dens(p, x)
            nk = r.sum(1)
            p["means"] = (r * x).sum(1) / nk
            p["variances"] = (r * (x - p["means"][:, None]) ** 2).sum(1) / nk + 1e-6
            p["weights"] = nk / len(x)
        means = p["means"]
    p.update(lo=lo, hi=hi, kind=kind, comp=1 if noisy == "initial" else int(np.argmax(means)))
    grid = np.linspace(1e-12, 1 - 1e-12, 100)
    t = _ref_post_x(p, grid)
    t[np.argmax(t) :] = t.max()
    p["lookup"] = t
    return p


def _ref_post_x(p, x):
    if p["kind"] == "gmm":
        return _ref_gmm_dens(p, x)[p["comp"]]
    d = _ref_bmm_dens(p, x)
    return d[p["comp"]] / (d.sum(0) + 1e-12)


# =========================================================================== data


@pytest.fixture(scope="module")
def data():
    """Per-class losses with class-dependent noise rates and clean scales; class 3 is tiny."""
    r = np.random.default_rng(7)
    classes = np.concatenate([np.repeat(np.arange(3), M), np.full(SMALL, 3)]).astype(np.int32)
    noisy = r.random(N) < 0.15 + 0.15 * classes
    clean = r.gamma(1.0 + 0.5 * classes, 0.25, N)
    losses = np.where(noisy, np.abs(r.normal(2.3 - 0.2 * classes, 0.5, N)), clean)
    perm = r.permutation(N)
    return losses[perm].astype(np.float32), classes[perm]


@pytest.fixture(scope="module")
def per_class(data):
    """fit_per_class for every (kind, noisy): compiled once each."""
    losses, classes = data
    return {
        (kind, noisy): mixture.fit_per_class(kind, losses, classes, C, noisy=noisy)
        for kind in ("bmm", "gmm")
        for noisy in ("initial", "max_mean")
    }


def _f(v):
    return np.asarray(v, np.float64)


# A masked BMM fit inside an outer jit (where traced), compiled once for shape (N,).
_masked_bmm = jax.jit(lambda v, w: mixture.fit("bmm", v, where=w))


def _slice(state, c):
    return jax.tree.map(lambda v: v[c], state)


# =========================================================================== masked percentiles


def test_masked_percentiles_match_numpy_subset():
    """percentiles(x, qs, where) == np.percentile(x[where], qs) for random subset sizes (one
    compile: the mask and hence the count are traced), and the masked order statistics are
    exactly the sorted subset's entries."""
    r = np.random.default_rng(0)
    x = np.concatenate([r.gamma(1.0, 0.5, N - 40), np.full(40, 0.25)]).astype(np.float32)
    x = r.permutation(x)  # with ties
    qs = (5.0, 33.3, 95.0, 100.0)
    pct = jax.jit(lambda v, w: mixture.percentiles(v, qs, where=w))
    ost = jax.jit(lambda v, w, k: mixture.order_statistics(v, k, where=w))
    for n in [1, 2, 3, 9, 10, 11, 20, 21, 57, 999, N - 1, N, *r.integers(1, N, 12)]:
        w = np.zeros(N, bool)
        w[r.choice(N, n, replace=False)] = True
        got = _f(pct(x, w))
        np.testing.assert_allclose(got, np.percentile(x[w], qs), rtol=3e-7, atol=0, err_msg=n)
        ranks = r.integers(0, n, 4).astype(np.int32)
        np.testing.assert_array_equal(np.asarray(ost(x, w, ranks)), np.sort(x[w])[ranks])
    assert np.isnan(_f(pct(x, np.zeros(N, bool)))).all()  # nothing selected


# =========================================================================== per-class fits


@pytest.mark.parametrize("kind", ["bmm", "gmm"])
@pytest.mark.parametrize("noisy", ["initial", "max_mean"])
def test_per_class_equals_reference(kind, noisy, data, per_class):
    """Each class of fit_per_class == the float64 reference fitted to that class alone; the
    tiny class 3 is invalid. Shapes: a leading class axis on every leaf."""
    losses, classes = data
    st_ = per_class[kind, noisy]
    for leaf in jax.tree.leaves(st_):
        assert leaf.shape[0] == C
    assert st_.weights.shape == (C, 2) and st_.lookup.shape == (C, 100)
    np.testing.assert_array_equal(np.asarray(st_.valid), [True, True, True, False])
    for c in range(3):
        got, ref = _slice(st_, c), _ref_fit(kind, losses[classes == c], noisy)
        for name in ("lo", "hi", "weights", *KIND_PARAMS[kind]):
            np.testing.assert_allclose(_f(getattr(got, name)), ref[name], rtol=RTOL, err_msg=name)
        np.testing.assert_allclose(_f(got.lookup), ref["lookup"], rtol=RTOL, atol=1e-6)
        assert int(got.noisy_component) == ref["comp"]


@pytest.mark.parametrize("kind", ["bmm", "gmm"])
def test_per_class_equals_single_fits(kind, data, per_class):
    """Class c of fit_per_class == fit(kind, losses[classes == c]) of the existing code: lo/hi
    bit-identical, EM parameters equal up to float32 summation order (masked sums over N
    samples vs sums over the subset), same noisy component. noisy="max_mean" fits the same
    parameters as "initial" (it only picks the component)."""
    losses, classes = data
    st_ = per_class[kind, "initial"]
    names = ("weights", *KIND_PARAMS[kind])
    for c in range(3):
        one, got = mixture.fit(kind, losses[classes == c], noisy="initial"), _slice(st_, c)
        for name in ("lo", "hi"):
            np.testing.assert_array_equal(np.asarray(getattr(got, name)), getattr(one, name))
        for name in names:
            np.testing.assert_allclose(_f(getattr(got, name)), _f(getattr(one, name)), rtol=2e-5)
        np.testing.assert_allclose(_f(got.lookup), _f(one.lookup), rtol=1e-4, atol=1e-6)
        assert int(got.noisy_component) == int(one.noisy_component) == 1
    other = per_class[kind, "max_mean"]
    for name in ("lo", "hi", "valid", *names):
        np.testing.assert_array_equal(np.asarray(getattr(other, name)), getattr(st_, name))
    means = _f(other.alphas / (other.alphas + other.betas)) if kind == "bmm" else _f(other.means)
    np.testing.assert_array_equal(np.asarray(other.noisy_component)[:3], means[:3].argmax(1))


@pytest.mark.parametrize("kind", ["bmm", "gmm"])
def test_posterior_with_classes_equals_per_class_posterior(kind, data, per_class):
    """posterior_noisy(per-class state, classes=) == the posterior of each sample's class
    mixture alone (exact for the lookup table, to float32 rounding otherwise) == the float64
    reference; the tiny class 3 gets exactly 0.5."""
    losses, classes = data
    st_ = per_class[kind, "initial"]
    for lookup in (False, True):
        got = _f(mixture.posterior_noisy(st_, losses, classes=classes, lookup=lookup))
        assert got.shape == (N,) and np.isfinite(got).all()
        np.testing.assert_array_equal(got[classes == 3], 0.5)
        for c in range(3):
            alone = _f(mixture.posterior_noisy(_slice(st_, c), losses, lookup=lookup))
            sel = classes == c
            if lookup:
                np.testing.assert_array_equal(got[sel], alone[sel])
            else:
                np.testing.assert_allclose(got[sel], alone[sel], rtol=1e-5, atol=1e-6)
                ref = _ref_fit(kind, losses[sel], "initial")
                want = _ref_post_x(ref, _ref_normalise(losses[sel], ref["lo"], ref["hi"]))
                np.testing.assert_allclose(got[sel], want, rtol=RTOL, atol=1e-5)
    # the train-step hot path: a batch of 128 with its own (2-D) shape
    idx = np.random.default_rng(1).integers(0, N, 128).reshape(16, 8)
    batch = _f(mixture.posterior_noisy(st_, losses[idx], classes=classes[idx]))
    full = _f(mixture.posterior_noisy(st_, losses, classes=classes))
    np.testing.assert_allclose(batch, full[idx], rtol=1e-6, atol=1e-7)


def test_posterior_classes_argument_checks(data, per_class):
    """A per-class state needs classes (same shape); an ordinary state ignores them."""
    losses, classes = data
    st_ = per_class["bmm", "initial"]
    with pytest.raises(ValueError, match="classes"):
        mixture.posterior_noisy(st_, losses)
    with pytest.raises(ValueError, match="classes"):
        mixture.posterior_noisy(st_, losses, classes=classes[:-1])
    one = _slice(st_, 0)
    np.testing.assert_array_equal(
        np.asarray(mixture.posterior_noisy(one, losses, classes=classes)),
        np.asarray(mixture.posterior_noisy(one, losses)),
    )


def test_small_empty_and_degenerate_classes_are_invalid(data, per_class):
    """< MIN_SAMPLES samples, no samples, all-equal losses, or a NaN loss: valid False,
    initial parameters, posterior exactly 0.5, never NaN; the other classes are unaffected
    (a NaN in class 2 leaves class 0 bit-identical)."""
    losses, classes = data
    losses = losses.copy()
    classes = np.where(classes == 3, 0, classes)  # class 3 now empty, class 0 has M + SMALL
    clean = mixture.fit_per_class("bmm", losses, classes, C, noisy="initial")
    losses[classes == 1] = 0.7  # all equal: p5 == p95
    losses[np.flatnonzero(classes == 2)[3]] = np.nan
    for kind in ("bmm", "gmm"):
        st_ = mixture.fit_per_class(kind, losses, classes, C, noisy="initial")
        np.testing.assert_array_equal(np.asarray(st_.valid), [True, False, False, False])
        for leaf in jax.tree.leaves(st_):
            assert not np.isnan(np.asarray(leaf, np.float64)).any()
        init = mixture.initial_state(kind, C)
        for name in ("weights", *KIND_PARAMS[kind]):
            np.testing.assert_array_equal(
                np.asarray(getattr(st_, name))[1:], getattr(init, name)[1:]
            )
        for lookup in (False, True):
            p = _f(mixture.posterior_noisy(st_, losses, classes=classes, lookup=lookup))
            assert not np.isnan(p).any()
            np.testing.assert_array_equal(p[classes != 0], 0.5)
            assert np.std(p[classes == 0]) > 0.1
    st_ = mixture.fit_per_class("bmm", losses, classes, C, noisy="initial")
    for a, b in zip(jax.tree.leaves(_slice(st_, 0)), jax.tree.leaves(_slice(clean, 0))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the masked single fit of a tiny class is invalid too (no error: its count is traced)
    tiny = _masked_bmm(losses, np.arange(N) < SMALL)
    assert not bool(tiny.valid)
    np.testing.assert_array_equal(np.asarray(mixture.posterior_noisy(tiny, losses)), 0.5)


def test_where_traced_under_jit(data):
    """A masked fit inside an outer jit (where traced) == the fit of the subset (lo/hi
    bit-identical); the masked GMM is exercised through fit_per_class."""
    losses, classes = data
    for c in (1, 2):
        got = _masked_bmm(losses, classes == c)
        one = mixture.fit("bmm", losses[classes == c], noisy="initial")
        for name in ("lo", "hi", "noisy_component", "valid"):
            np.testing.assert_array_equal(np.asarray(getattr(got, name)), getattr(one, name))
        for name in ("alphas", "betas", "weights"):
            np.testing.assert_allclose(_f(getattr(got, name)), _f(getattr(one, name)), rtol=2e-5)


# =========================================================================== states, summary


def test_initial_state_and_summary(per_class):
    """initial_state(kind, C) is the ordinary initial state stacked C times (posterior 0.5);
    summary of a per-class state is JSON-serialisable with one entry per class."""
    for kind in ("bmm", "gmm"):
        base, batched = mixture.initial_state(kind), mixture.initial_state(kind, C)
        assert mixture.initial_state(kind, 0).weights.shape == (2,)
        for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(batched)):
            assert b.shape == (C, *a.shape) and b.dtype == a.dtype
            np.testing.assert_array_equal(np.asarray(b), np.broadcast_to(a, b.shape))
        assert jax.tree.structure(batched) == jax.tree.structure(per_class[kind, "initial"])
        raw = jnp.linspace(0.0, 3.0, N)
        p = mixture.posterior_noisy(batched, raw, classes=jnp.arange(N, dtype=jnp.int32) % C)
        np.testing.assert_array_equal(np.asarray(p), 0.5)

        s = mixture.summary(per_class[kind, "initial"])
        json.dumps(s)
        assert s["scope"] == "class" and s["valid"] == [True, True, True, False]
        assert len(s["lo"]) == len(s["hi"]) == len(s["noisy_component"]) == C
        for name in ("weights", *KIND_PARAMS[kind]):
            assert np.shape(s[name]) == (C, 2)
        single = mixture.summary(base)
        assert "scope" not in single and single["valid"] is False


def _eqns(jaxpr):
    """Every equation of a jaxpr, recursively (jit, scan, while, cond bodies)."""
    for e in jaxpr.eqns:
        yield e
        for v in e.params.values():
            for sub in v if isinstance(v, tuple | list) else (v,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    yield from _eqns(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    yield from _eqns(sub)


def test_no_gather_or_sort_over_samples(data):
    """Sharding-safe by construction: the per-class fit and the per-class posterior contain no
    sort, and gather only from small tables (per-class parameters, constants), never from a
    per-sample array, so a loss array sharded over devices is reduced in place (on an
    8-device CPU mesh the compiled fit communicates only per-device partial counts/sums)."""
    losses, classes = data
    fit_jaxpr = jax.make_jaxpr(lambda v, c: mixture.fit_per_class("bmm", v, c, C))
    post_jaxpr = jax.make_jaxpr(
        lambda s_, v, c: mixture.posterior_noisy(s_, v, classes=c, lookup=True)
    )
    for jaxpr in (
        fit_jaxpr(losses, classes),
        post_jaxpr(mixture.initial_state("gmm", C), losses, classes),
    ):
        prims = list(_eqns(jaxpr.jaxpr))
        assert not [e for e in prims if e.primitive.name == "sort"]
        gathers = [e for e in prims if e.primitive.name in ("gather", "dynamic_slice")]
        assert gathers  # the check below is not vacuous
        for e in gathers:
            assert np.prod(e.invars[0].aval.shape) < N, e


def test_fit_per_class_argument_checks(data):
    losses, classes = data
    with pytest.raises(ValueError, match="noise model"):
        mixture.fit_per_class("kde", losses, classes, C)
    with pytest.raises(ValueError, match="num_classes"):
        mixture.fit_per_class("bmm", losses, classes, 0)
    with pytest.raises(ValueError, match="classes"):
        mixture.fit_per_class("bmm", losses, classes[:-1], C)
    with pytest.raises(ValueError, match="num_classes"):
        mixture.initial_state("bmm", -1)
