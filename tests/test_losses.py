"""Independent tests for ``jaxnoise.losses`` (paper eqs. 7-10 and mixup helpers).

Every reference is plain float64 numpy/scipy written here from the equations:

(L1) CE(h, y) = -log softmax(h)_y                 (per sample)
(L2) soft CE(h, t) = -sum_c t_c log softmax(h)_c
(L3) clip_posteriors(w) = clip(w, 1e-4, 1 - 1e-4)
(L4) mix(x, perm, lam) = lam x + (1 - lam) x[perm]
(L5) dynamic delta = (1 - w_p) / ((1 - w_p) + (1 - w_q)), w_q = w[perm];
     "beta": lam ~ Beta(delta, 1 - delta); "binomial": b1 / (b1 + b2),
     b1 ~ Bin(10000, delta), b2 ~ Bin(10000, 1 - delta)
(L6) bootstrap target t = (1 - w) onehot(y) + w z, z = onehot(argmax h_clean) ("hard") or
     softmax(h_clean / T) ("soft")                                   (paper eqs. 7/9)
(L7) mixup bootstrap loss = mean_i[lam_i CE(h_i, t_i) + (1 - lam_i) CE(h_i, t_perm(i))] (eq. 8)
(L8) R = sum_c p_c log(p_c / hbar_c), hbar = mean_batch softmax(h)             (eq. 10)
(L9) mixup CE = mean_i[lam_i CE(h_i, y_i) + (1 - lam_i) CE(h_i, y_perm(i))]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxnoise import losses

B, C = 64, 10
RTOL = 1e-5
ATOL = 1e-6


# ----------------------------------------------------------------- numpy references


def _log_softmax(z):
    z = np.asarray(z, np.float64)
    m = z.max(-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def _softmax(z):
    return np.exp(_log_softmax(z))


def _onehot(y, c):
    return np.eye(c)[np.asarray(y)]


def _ref_ce(logits, labels):
    ls = _log_softmax(logits)
    return -ls[np.arange(len(labels)), labels]


def _ref_soft_ce(logits, targets):
    return -(np.asarray(targets, np.float64) * _log_softmax(logits)).sum(-1)


def _ref_bootstrap_targets(labels, w, logits_clean, c, mode, temperature):
    w = np.asarray(w, np.float64)[:, None]
    if mode == "hard":
        z = _onehot(np.argmax(logits_clean, -1), c)
    else:
        z = _softmax(np.asarray(logits_clean, np.float64) / temperature)
    return (1 - w) * _onehot(labels, c) + w * z


def _lam_vec(lam, b):
    return np.broadcast_to(np.asarray(lam, np.float64), (b,))


def _ref_mixup_bootstrap(logits_mixed, labels, w, logits_clean, perm, lam, c, mode, temperature):
    t = _ref_bootstrap_targets(labels, w, logits_clean, c, mode, temperature)
    lam = _lam_vec(lam, len(labels))
    return np.mean(
        lam * _ref_soft_ce(logits_mixed, t) + (1 - lam) * _ref_soft_ce(logits_mixed, t[perm])
    )


def _ref_mixup_ce(logits_mixed, labels, perm, lam):
    lam = _lam_vec(lam, len(labels))
    return np.mean(
        lam * _ref_ce(logits_mixed, labels) + (1 - lam) * _ref_ce(logits_mixed, labels[perm])
    )


def _ref_reg(logits, prior=None):
    hbar = _softmax(logits).mean(0)
    p = np.full(hbar.shape, 1.0 / hbar.size) if prior is None else np.asarray(prior, np.float64)
    return np.sum(p * np.log(p / hbar))


# ----------------------------------------------------------------- data


def _binned_gof_pvalue(samples, dist, nbins=20):
    """Chi-square goodness of fit on equiprobable bins of ``dist``.

    Used instead of KS because float32 draws of e.g. Beta(0.857, 0.143) round ~9% of the
    mass (everything above 1 - 6e-8) to exactly 1.0; KS treats such ties as a jump of the
    empirical CDF and rejects a correct sampler. Bin edges above 1 - 1e-6 (below 1e-30) are
    merged so every bin is resolvable in float32.
    """
    edges = dist.ppf(np.linspace(0, 1, nbins + 1)[1:-1])
    edges = np.unique(edges[(edges > 1e-30) & (edges < 1 - 1e-6)])
    edges = np.concatenate([[-np.inf], edges, [np.inf]])
    counts = np.histogram(samples, bins=edges)[0]
    probs = np.diff(dist.cdf(np.clip(edges, 0, 1)))
    return stats.chisquare(counts, probs / probs.sum() * len(samples)).pvalue


def _batch(seed=0, scale=3.0, b=B, c=C):
    r = np.random.default_rng(seed)
    logits = (scale * r.standard_normal((b, c))).astype(np.float32)
    clean = (scale * r.standard_normal((b, c))).astype(np.float32)
    labels = r.integers(0, c, b).astype(np.int32)
    w = r.uniform(0.0, 1.0, b).astype(np.float32)
    perm = r.permutation(b).astype(np.int32)
    lam_vec = r.uniform(0, 1, b).astype(np.float32)
    return logits, clean, labels, w, perm, lam_vec


def _extreme_logits(seed=1, b=B, c=C):
    r = np.random.default_rng(seed)
    return (50.0 * r.choice([-1.0, 1.0], size=(b, c))).astype(np.float32)


def _a(x):
    return np.asarray(x, np.float64)


# ----------------------------------------------------------------- CE


@pytest.mark.parametrize("kind", ["normal", "extreme"])
def test_cross_entropy(kind):
    """(L1) per-sample -log softmax[label] vs numpy (rtol 1e-5), finite for logits +-50."""
    logits, _, labels, *_ = _batch(2)
    if kind == "extreme":
        logits = _extreme_logits()
    got = _a(losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels)))
    assert got.shape == (B,)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, _ref_ce(logits, labels), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kind", ["normal", "extreme"])
def test_soft_cross_entropy(kind):
    """(L2) -sum_c t_c log softmax_c vs numpy, incl. one-hot targets (== L1) and +-50 logits."""
    logits, clean, labels, *_ = _batch(3)
    if kind == "extreme":
        logits = _extreme_logits(4)
    targets = _softmax(clean).astype(np.float32)
    got = _a(losses.soft_cross_entropy(jnp.asarray(logits), jnp.asarray(targets)))
    assert got.shape == (B,) and np.all(np.isfinite(got))
    np.testing.assert_allclose(got, _ref_soft_ce(logits, targets), rtol=RTOL, atol=ATOL)
    oh = _onehot(labels, C).astype(np.float32)
    got_oh = _a(losses.soft_cross_entropy(jnp.asarray(logits), jnp.asarray(oh)))
    np.testing.assert_allclose(got_oh, _ref_ce(logits, labels), rtol=RTOL, atol=ATOL)


def test_clip_posteriors():
    """(L3) clip to [1e-4, 1 - 1e-4]."""
    w = np.array([-1.0, 0.0, 1e-5, 1e-4, 0.3, 0.99995, 1.0, 2.0], np.float32)
    got = _a(losses.clip_posteriors(jnp.asarray(w)))
    want = np.clip(w.astype(np.float64), 1e-4, 1 - 1e-4)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------- mixup helpers


def test_mixup_pairs_is_permutation():
    """mixup_pairs(key, B) is a permutation of range(B); deterministic per key."""
    p1 = np.asarray(losses.mixup_pairs(jax.random.key(0), B))
    p1b = np.asarray(losses.mixup_pairs(jax.random.key(0), B))
    p2 = np.asarray(losses.mixup_pairs(jax.random.key(1), B))
    assert p1.shape == (B,) and np.issubdtype(p1.dtype, np.integer)
    np.testing.assert_array_equal(np.sort(p1), np.arange(B))
    np.testing.assert_array_equal(p1, p1b)
    assert (p1 != p2).any()


def test_mix_scalar_and_per_sample_lambda():
    """(L4) lam x + (1 - lam) x[perm], lam scalar or (B,) broadcast over trailing axes."""
    r = np.random.default_rng(5)
    x = r.standard_normal((B, 4, 4, 3)).astype(np.float32)
    perm = r.permutation(B)
    lam_s = np.float32(0.37)
    got = _a(losses.mix(jnp.asarray(x), jnp.asarray(perm), lam_s))
    want = 0.37 * x.astype(np.float64) + 0.63 * x[perm]
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    lam_v = r.uniform(0, 1, B).astype(np.float32)
    got = _a(losses.mix(jnp.asarray(x), jnp.asarray(perm), jnp.asarray(lam_v)))
    lv = lam_v.astype(np.float64)[:, None, None, None]
    want = lv * x + (1 - lv) * x[perm]
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    # 2-D (one-hot labels) too
    y = _onehot(r.integers(0, C, B), C).astype(np.float32)
    got = _a(losses.mix(jnp.asarray(y), jnp.asarray(perm), jnp.asarray(lam_v)))
    want = lam_v[:, None] * y + (1 - lam_v[:, None]) * y[perm]
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("alpha", [1.0, 0.4, 32.0])
def test_sample_mixup_lambda_beta_distribution(alpha):
    """delta ~ Beta(alpha, alpha): scalar in [0, 1]; KS test over 400 keys vs scipy Beta."""
    keys = jax.random.split(jax.random.key(7), 400)
    one = losses.sample_mixup_lambda(keys[0], alpha)
    assert np.shape(one) == ()
    draws = _a(jax.vmap(lambda k: losses.sample_mixup_lambda(k, alpha))(keys))
    assert np.all(np.isfinite(draws)) and draws.min() >= 0 and draws.max() <= 1
    _, pval = stats.kstest(draws, stats.beta(alpha, alpha).cdf)
    assert pval > 1e-4, pval


# ----------------------------------------------------------------- dynamic mixup lambda


def _dyn_setup(b=8000):
    """Four blocks with constant w, perm pairs block i with block i+2 (roll by b/2), so delta
    takes 4 known values, each on b/4 samples."""
    q = b // 4
    w = np.repeat(np.array([0.1, 0.7, 0.5, 0.95]), q).astype(np.float32)
    perm = ((np.arange(b) + b // 2) % b).astype(np.int32)
    w64 = w.astype(np.float64)
    delta = (1 - w64) / ((1 - w64) + (1 - w64[perm]))
    blocks = [slice(i * q, (i + 1) * q) for i in range(4)]
    return w, perm, delta, blocks


def test_dynamic_mixup_lambda_none_exact():
    """(L5) draw="none": delta = (1 - w_p) / ((1 - w_p) + (1 - w_q)) exactly (rtol 1e-5)."""
    r = np.random.default_rng(8)
    w = r.uniform(0.01, 0.99, B).astype(np.float32)
    perm = r.permutation(B).astype(np.int32)
    got = _a(losses.dynamic_mixup_lambda(jax.random.key(0), jnp.asarray(w), jnp.asarray(perm)))
    w64 = w.astype(np.float64)
    want = (1 - w64) / ((1 - w64) + (1 - w64[perm]))
    assert got.shape == (B,)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    got2 = _a(
        losses.dynamic_mixup_lambda(
            jax.random.key(0), jnp.asarray(w), jnp.asarray(perm), draw="none"
        )
    )
    np.testing.assert_allclose(got2, want, rtol=RTOL, atol=ATOL)
    # pairs are complementary: lam_p + lam_{perm(p)} == 1 when perm is an involution
    inv = np.arange(B).reshape(-1, 2)[:, ::-1].ravel().astype(np.int32)
    g = _a(losses.dynamic_mixup_lambda(jax.random.key(0), jnp.asarray(w), jnp.asarray(inv)))
    np.testing.assert_allclose(g + g[inv], 1.0, rtol=1e-6)


def test_dynamic_mixup_lambda_beta_mean():
    """(L5) draw="beta": lam ~ Beta(delta, 1 - delta); per-block mean ~ delta (5 SE), variance
    ~ delta(1 - delta)/2, binned chi-square vs scipy Beta; values finite in [0, 1]."""
    w, perm, delta, blocks = _dyn_setup()
    lam = _a(
        losses.dynamic_mixup_lambda(
            jax.random.key(1), jnp.asarray(w), jnp.asarray(perm), draw="beta"
        )
    )
    assert lam.shape == w.shape
    assert np.all(np.isfinite(lam)) and lam.min() >= 0 and lam.max() <= 1
    for sl in blocks:
        d = delta[sl][0]
        s = lam[sl]
        var = d * (1 - d) / 2.0  # Var Beta(a, b) = ab / ((a+b)^2 (a+b+1)), a+b = 1
        assert abs(s.mean() - d) < 5 * np.sqrt(var / len(s)), (d, s.mean())
        assert 0.8 * var < s.var() < 1.2 * var, (d, s.var(), var)
        pval = _binned_gof_pvalue(s, stats.beta(d, 1 - d))
        assert pval > 1e-4, (d, pval)


def test_dynamic_mixup_lambda_binomial_mean_var():
    """(L5) draw="binomial": lam = b1/(b1+b2); mean ~ delta; variance ~ delta-method value
    delta(1-delta)((1-delta)^2 + delta^2)/n (n = 10000), i.e. O(delta(1-delta)/n)."""
    w, perm, delta, blocks = _dyn_setup()
    lam = _a(
        losses.dynamic_mixup_lambda(
            jax.random.key(2), jnp.asarray(w), jnp.asarray(perm), draw="binomial"
        )
    )
    assert lam.shape == w.shape
    assert np.all(np.isfinite(lam)) and lam.min() >= 0 and lam.max() <= 1
    n = 10_000
    for sl in blocks:
        d = delta[sl][0]
        s = lam[sl]
        var = d * (1 - d) * ((1 - d) ** 2 + d**2) / n
        assert abs(s.mean() - d) < 5 * np.sqrt(var / len(s)) + 1e-6, (d, s.mean())
        assert 0.75 * var < s.var() < 1.33 * var, (d, s.var(), var)
        assert s.var() < 2 * d * (1 - d) / n  # the spec's "2/n-ish" sanity bound


def test_dynamic_mixup_lambda_extreme_and_bad_draw():
    """w near 0/1 (after clip_posteriors) keeps every draw finite in [0, 1]; unknown draw
    raises ValueError naming it."""
    r = np.random.default_rng(9)
    w = np.asarray(losses.clip_posteriors(jnp.asarray(r.choice([0.0, 1.0], B).astype(np.float32))))
    perm = r.permutation(B).astype(np.int32)
    for draw in ("none", "beta", "binomial"):
        lam = _a(losses.dynamic_mixup_lambda(jax.random.key(3), w, jnp.asarray(perm), draw=draw))
        assert np.all(np.isfinite(lam)) and lam.min() >= 0 and lam.max() <= 1, draw
    with pytest.raises(ValueError, match="gaussian"):
        losses.dynamic_mixup_lambda(jax.random.key(3), w, jnp.asarray(perm), draw="gaussian")


# ----------------------------------------------------------------- bootstrap


@pytest.mark.parametrize("mode,temperature", [("hard", 1.0), ("soft", 1.0), ("soft", 2.5)])
def test_bootstrap_targets(mode, temperature):
    """(L6) (1 - w) onehot(y) + w z; rows sum to 1; w = 0 gives onehot(y)."""
    _, clean, labels, w, *_ = _batch(10)
    got = _a(
        losses.bootstrap_targets(
            jnp.asarray(labels),
            jnp.asarray(w),
            jnp.asarray(clean),
            num_classes=C,
            mode=mode,
            temperature=temperature,
        )
    )
    want = _ref_bootstrap_targets(labels, w, clean, C, mode, temperature)
    assert got.shape == (B, C)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-5)
    got0 = _a(
        losses.bootstrap_targets(
            jnp.asarray(labels), jnp.zeros(B), jnp.asarray(clean), num_classes=C, mode=mode
        )
    )
    np.testing.assert_allclose(got0, _onehot(labels, C), atol=1e-7)


@pytest.mark.parametrize("mode", ["hard", "soft"])
@pytest.mark.parametrize("lam_kind", ["scalar", "vector"])
@pytest.mark.parametrize("kind", ["normal", "extreme"])
def test_mixup_bootstrap_loss(mode, lam_kind, kind):
    """(L7) paper eq. 8 batch mean vs numpy (rtol 1e-5); finite for +-50 logits."""
    logits, clean, labels, w, perm, lam_vec = _batch(11)
    if kind == "extreme":
        logits, clean = _extreme_logits(12), _extreme_logits(13)
    lam = np.float32(0.63) if lam_kind == "scalar" else lam_vec
    got = float(
        losses.mixup_bootstrap_loss(
            jnp.asarray(logits),
            jnp.asarray(labels),
            jnp.asarray(w),
            jnp.asarray(clean),
            jnp.asarray(perm),
            jnp.asarray(lam),
            num_classes=C,
            mode=mode,
            temperature=1.0,
        )
    )
    want = _ref_mixup_bootstrap(logits, labels, w, clean, perm, lam, C, mode, 1.0)
    assert np.isfinite(got)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_mixup_bootstrap_loss_soft_temperature():
    """(L7) with soft targets at temperature 3: z = softmax(h_clean / 3)."""
    logits, clean, labels, w, perm, lam_vec = _batch(14)
    got = float(
        losses.mixup_bootstrap_loss(
            jnp.asarray(logits),
            jnp.asarray(labels),
            jnp.asarray(w),
            jnp.asarray(clean),
            jnp.asarray(perm),
            jnp.asarray(lam_vec),
            num_classes=C,
            mode="soft",
            temperature=3.0,
        )
    )
    want = _ref_mixup_bootstrap(logits, labels, w, clean, perm, lam_vec, C, "soft", 3.0)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_mixup_bootstrap_loss_gradient(mode):
    """d(L7)/d logits_mixed == (softmax(h) - [lam t + (1 - lam) t_perm]) / B (analytic CE
    gradient; targets depend only on logits_clean); finite also for +-50 logits."""
    for logits, clean in (_batch(15)[:2], (_extreme_logits(16), _extreme_logits(17))):
        _, _, labels, w, perm, lam_vec = _batch(15)

        def f(h, clean=clean, labels=labels, w=w, perm=perm, lam_vec=lam_vec):
            return losses.mixup_bootstrap_loss(
                h,
                jnp.asarray(labels),
                jnp.asarray(w),
                jnp.asarray(clean),
                jnp.asarray(perm),
                jnp.asarray(lam_vec),
                num_classes=C,
                mode=mode,
            )

        g = _a(jax.grad(f)(jnp.asarray(logits)))
        assert np.all(np.isfinite(g))
        t = _ref_bootstrap_targets(labels, w, clean, C, mode, 1.0)
        lam = lam_vec.astype(np.float64)[:, None]
        want = (_softmax(logits) - (lam * t + (1 - lam) * t[perm])) / B
        np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------- regulariser, mixup CE


@pytest.mark.parametrize("kind", ["normal", "extreme"])
def test_class_balance_regularizer(kind):
    """(L8) sum_c p_c log(p_c / hbar_c), uniform prior by default and a given prior."""
    logits = _batch(18)[0] if kind == "normal" else _extreme_logits(19)
    got = float(losses.class_balance_regularizer(jnp.asarray(logits)))
    assert np.isfinite(got)
    np.testing.assert_allclose(got, _ref_reg(logits), rtol=RTOL, atol=ATOL)
    prior = np.random.default_rng(20).dirichlet(np.ones(C)).astype(np.float32)
    got_p = float(losses.class_balance_regularizer(jnp.asarray(logits), prior=jnp.asarray(prior)))
    np.testing.assert_allclose(got_p, _ref_reg(logits, prior), rtol=RTOL, atol=ATOL)


def test_class_balance_regularizer_zero_when_balanced():
    """(L8) R = 0 when the mean prediction equals the uniform prior (identical logits rows
    permuted cyclically over classes)."""
    base = np.random.default_rng(21).standard_normal(C).astype(np.float32)
    logits = np.stack([np.roll(base, i) for i in range(C)] * 2)  # hbar exactly uniform
    got = float(losses.class_balance_regularizer(jnp.asarray(logits)))
    assert abs(got) < 1e-6


@pytest.mark.parametrize("lam_kind", ["scalar", "vector"])
@pytest.mark.parametrize("kind", ["normal", "extreme"])
def test_mixup_ce_loss(lam_kind, kind):
    """(L9) plain mixup CE, batch mean, vs numpy (rtol 1e-5)."""
    logits, _, labels, _, perm, lam_vec = _batch(22)
    if kind == "extreme":
        logits = _extreme_logits(23)
    lam = np.float32(0.25) if lam_kind == "scalar" else lam_vec
    got = float(
        losses.mixup_ce_loss(
            jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(perm), jnp.asarray(lam)
        )
    )
    assert np.isfinite(got)
    np.testing.assert_allclose(got, _ref_mixup_ce(logits, labels, perm, lam), rtol=RTOL, atol=ATOL)


def test_mixup_bootstrap_reduces_to_mixup_ce_when_w_zero():
    """(L7) with w = 0 the bootstrap targets are one-hot labels, so (L7) == (L9)."""
    logits, clean, labels, _, perm, lam_vec = _batch(24)
    a = float(
        losses.mixup_bootstrap_loss(
            jnp.asarray(logits),
            jnp.asarray(labels),
            jnp.zeros(B),
            jnp.asarray(clean),
            jnp.asarray(perm),
            jnp.asarray(lam_vec),
            num_classes=C,
        )
    )
    b = float(
        losses.mixup_ce_loss(
            jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(perm), jnp.asarray(lam_vec)
        )
    )
    np.testing.assert_allclose(a, b, rtol=1e-5)


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_one_class_fixed_point_of_hard_bootstrapping_with_regularizer(eta):
    """When every flagged sample's own argmax is the same class k, eq. 8 (hard) + eta * eq. 10
    has a stable minimum that predicts k everywhere: the regulariser only bounds its confidence.

    Derived by hand (Lagrange, sum q = 1) for a batch sharing one softmax q, w = 1:
    L(q) = -log q_k + eta sum_c (1/C) log((1/C) / q_c) is minimised at
    q_k = (1 + eta/C) / (1 + eta), q_c = (eta/C) / (1 + eta) (c != k); for C = 10, eta = 1:
    q_k = 0.55, L = 1.0512 - the softmax (0.548) and train loss (1.055) of the collapsed
    MD-DYR-SH cells in benchmarks/results/reproduce_reduced_notes.md.
    """
    k, n = 3, 16
    q = np.full(C, eta / C / (1 + eta))
    q[k] = (1 + eta / C) / (1 + eta)
    expected = -np.log(q[k]) + eta * np.sum((1 / C) * (np.log(1 / C) - np.log(q)))

    labels = jnp.asarray(np.arange(n) % C, jnp.int32)  # the given labels do not matter at w = 1
    w = jnp.ones((n,), jnp.float32)
    clean = jnp.zeros((n, C), jnp.float32).at[:, k].set(1.0)  # argmax k for every sample
    perm = jnp.asarray(np.random.default_rng(0).permutation(n), jnp.int32)

    def objective(shared_logits):
        logits = jnp.broadcast_to(shared_logits, (n, C))
        boot = losses.mixup_bootstrap_loss(
            logits, labels, w, clean, perm, jnp.float32(0.7), num_classes=C, mode="hard"
        )
        return boot + eta * losses.class_balance_regularizer(logits)

    at_min = jnp.asarray(np.log(q), jnp.float32)
    value, grad = jax.value_and_grad(objective)(at_min)
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), 0.0, atol=1e-5)
    # From uniform predictions the gradient pushes towards k (descent raises logit k).
    g_uniform = np.asarray(jax.grad(objective)(jnp.zeros((C,), jnp.float32)))
    assert g_uniform[k] < 0 and np.all(np.delete(g_uniform, k) > 0)
