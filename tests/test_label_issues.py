"""Independent tests for ``jaxnoise.label_issues`` and ``jaxnoise.knn`` (wrong labels in memory).

References, in plain numpy / scipy / sklearn, written here from the module docstrings:

(L1) loss_i = -log max(p[i, y_i], 1e-6) for pred_probs; the given losses as they are.
(M1) BMM: the published EM (tests/test_mixture.py's P1-P2, E1-E3) run for ``max_iters``
     iterations; noisy component = larger a / (a + b); p_noisy of every raw loss = (Q1).
(M2) GMM: sklearn ``GaussianMixture(2, tol=0, max_iter, reg_covar=1e-6, weights (.5, .5),
     means (1/3, 2/3), precisions 18)`` on the same observations; noisy = larger mean.
(M3) p_noisy made non-decreasing in the loss (per class): np_monotone below.
(C1) estimated count = round(pi_noisy * N); per class round(pi_c * N_c); 0 for a failed fit.
(R1) ranking: p_noisy descending, then loss descending, then index ascending.
(K1) neighbours: brute-force squared distances, the sample itself excluded, ties to the lower
     index; vote weights exp(-d^2 / h^2), h^2 = median squared distance to the k-th neighbour;
     p_c = (sum_j w_j [y_j = c] + 1/K) / (sum_j w_j + 1).
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from scipy import stats
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from jaxnoise import knn
from jaxnoise import label_issues as li

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ITERS = 30  # EM iterations in these tests (float32 and float64 EM agree closely over 30)


# =========================================================================== references


def np_normalise(loss: np.ndarray):
    """(P1)-(P2): x of every loss, the fitted mask, EM observations of the fitted ones."""
    loss = loss.astype(np.float64)
    p5, p95 = np.percentile(loss, [5, 95])
    keep = (loss >= p5) & (loss <= p95)
    lo, hi = p5 + 1e-5, p95
    x = (loss - lo) / (hi - lo + 1e-6)
    x = np.where(x >= 1, 1 - 1e-3, np.where(x <= 0, 1e-3, x))
    return x, keep, np.clip(x[keep], 1e-4, 1 - 1e-4)


def np_bmm(loss: np.ndarray, iters: int) -> tuple[np.ndarray, float]:
    """(M1): (p_noisy of every loss, noisy weight)."""
    x, _, xo = np_normalise(loss)
    a, b, pi = np.array([1.0, 2.0]), np.array([2.0, 1.0]), np.array([0.5, 0.5])
    for _ in range(iters):
        r = np.stack([pi[k] * stats.beta.pdf(xo, a[k], b[k]) for k in range(2)])
        r = np.maximum(r, 1e-12)
        r /= r.sum(0)
        for k in range(2):
            xbar = np.sum(r[k] * xo) / r[k].sum()
            var = np.sum(r[k] * (xo - xbar) ** 2) / r[k].sum()
            a[k] = xbar * (xbar * (1 - xbar) / var - 1)
            b[k] = a[k] * (1 - xbar) / xbar
        pi = r.sum(1) / r.sum()
    n = int(np.argmax(a / (a + b)))
    w = np.stack([pi[k] * stats.beta.pdf(x, a[k], b[k]) for k in range(2)])
    return w[n] / (w.sum(0) + 1e-12), float(pi[n])


def np_gmm_weight(loss: np.ndarray, iters: int) -> float:
    """(M2): the noisy weight of sklearn's GaussianMixture from the fixed initialisation."""
    _, _, xo = np_normalise(loss)
    gm = GaussianMixture(
        2,
        tol=0.0,
        max_iter=iters,
        reg_covar=1e-6,
        weights_init=[0.5, 0.5],
        means_init=[[1 / 3], [2 / 3]],
        precisions_init=[[[18.0]], [[18.0]]],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(xo[:, None])
    return float(gm.weights_[int(np.argmax(gm.means_[:, 0]))])


def np_monotone(p: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """(M3): p from the smallest loss of its maximum on = the maximum; up to the largest loss
    (below that) of its minimum = the minimum."""
    p_max = p.max()
    hi = loss[p == p_max].min()
    below = loss <= hi
    p_min = p[below].min()
    lo = loss[below & (p == p_min)].max()
    return np.where(loss <= lo, p_min, np.where(loss >= hi, p_max, p))


def np_rank(p: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """(R1)."""
    return np.lexsort((np.arange(p.size), -loss.astype(np.float64), -p.astype(np.float64)))


def np_neighbours(x: np.ndarray, k: int, metric: str = "euclidean"):
    """(K1): (idx, squared distances) by brute force, self excluded, ties to the lower index."""
    x = x.astype(np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    idx = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(d2, idx, axis=1)


def np_knn_probs(x: np.ndarray, y: np.ndarray, k: int, K: int, metric: str = "euclidean"):
    """(K1): the kernel-weighted vote."""
    idx, d2 = np_neighbours(x, k, metric)
    w = np.exp(-d2 / np.median(d2[:, -1]))
    votes = np.zeros((y.size, K))
    for j in range(k):
        votes[np.arange(y.size), y[idx[:, j]]] += w[:, j]
    return (votes + 1.0 / K) / (w.sum(1, keepdims=True) + 1.0)


# =========================================================================== data


def two_population_losses(n: int = 3000, rate: float = 0.3, seed: int = 0):
    """Losses of clean (small) and noisy (large) samples, and which are noisy."""
    rng = np.random.default_rng(seed)
    noisy = rng.random(n) < rate
    loss = np.where(noisy, rng.gamma(6.0, 0.5, n), rng.gamma(1.5, 0.2, n))
    return loss.astype(np.float32), noisy


def probs_with_noise(n: int = 2000, k: int = 5, rate: float = 0.3, seed: int = 0):
    """(pred_probs, given labels, wrong mask): a model that mostly knows the true class."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, n)
    wrong = rng.random(n) < rate
    given = np.where(wrong, (true + rng.integers(1, k, n)) % k, true)
    logits = rng.normal(0, 1, (n, k)) + 3.0 * np.eye(k)[true]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return p.astype(np.float32), given.astype(np.int64), wrong


# =========================================================================== the noise model


def test_bmm_posterior_and_count_match_a_numpy_em():
    """(M1), (C1): p_noisy of every sample and round(pi_noisy * N) from a float64 EM."""
    loss, _ = two_population_losses()
    model = li.fit_noise_model(loss, model="bmm", max_iters=ITERS)
    p_ref, w_ref = np_bmm(loss, ITERS)
    np.testing.assert_allclose(model.p_noisy, np_monotone(p_ref, loss), atol=2e-4)
    assert abs(model.noisy_count - w_ref * loss.size) <= 1.0
    assert model.class_counts is None and model.valid
    assert not np.all(np.diff(p_ref[np.argsort(loss)]) >= 0)  # (M3) really changed something


def test_gmm_count_matches_sklearn():
    """(M2), (C1): the GMM's noisy weight times N against sklearn's GaussianMixture."""
    loss, _ = two_population_losses(seed=1)
    model = li.fit_noise_model(loss, model="gmm", max_iters=ITERS)
    assert abs(model.noisy_count - np_gmm_weight(loss, ITERS) * loss.size) <= 1.0


def test_per_class_counts_are_each_class_fit():
    """(C1) per class: class c's count is round(pi_c * N_c) of a fit to its losses alone."""
    loss, _ = two_population_losses(n=3000, seed=2)
    labels = np.random.default_rng(3).integers(0, 3, loss.size)
    model = li.fit_noise_model(loss, model="bmm", scope="class", labels=labels, max_iters=ITERS)
    for c in range(3):
        p_ref, w_ref = np_bmm(loss[labels == c], ITERS)
        assert abs(model.class_counts[c] - w_ref * np.sum(labels == c)) <= 1.0
        in_c = labels == c
        np.testing.assert_allclose(model.p_noisy[in_c], np_monotone(p_ref, loss[in_c]), atol=2e-4)
        p_sorted = model.p_noisy[in_c][np.argsort(loss[in_c], kind="stable")]
        assert np.all(np.diff(p_sorted) >= -1e-6)  # non-decreasing up to float32 rounding
    assert model.noisy_count == model.class_counts.sum()


def test_count_estimates_the_noisy_fraction():
    """The estimate tracks the truth on well separated populations (within 3 points)."""
    for rate in (0.3,):
        loss, noisy = two_population_losses(n=4000, rate=rate, seed=4)
        est = li.fit_noise_model(loss, max_iters=li.MAX_ITERS).noisy_count / loss.size
        assert abs(est - noisy.mean()) < 0.03, (rate, est, noisy.mean())


def test_a_failed_fit_estimates_nothing_and_warns():
    """All losses equal: no mixture; p_noisy 0.5, count 0, nothing flagged, one warning."""
    labels = np.zeros(50, np.int64)
    assert li.fit_noise_model(np.ones(50, np.float32)).noisy_count == 0
    with pytest.warns(UserWarning, match="could not be fitted"):
        assert li.find_label_issues(labels, losses=np.ones(50)).size == 0


def test_large_inputs_fit_on_a_subset_and_still_estimate():
    """Above FIT_SAMPLES the EM sees a subset; every sample still gets its posterior."""
    n = li.FIT_SAMPLES + 5000
    loss, noisy = two_population_losses(n=n, rate=0.3, seed=5)
    model = li.fit_noise_model(loss)
    p_ref, w_ref = np_bmm(loss, li.MAX_ITERS)  # the full-data fit
    assert model.p_noisy.shape == (n,)
    assert abs(model.noisy_count / n - w_ref) < 0.01
    assert np.mean(np.abs(model.p_noisy - np_monotone(p_ref, loss))) < 0.01


# =========================================================================== losses, ranking, cut


def test_pred_probs_path_is_the_loss_path_with_eq_l1():
    """(L1): pred_probs give the same ranking and scores as their losses given directly."""
    p, y, _ = probs_with_noise()
    p[0, y[0]] = 0.0  # clipped to 1e-6 (then the row renormalised)
    p[0] /= p[0].sum()
    loss = -np.log(np.maximum(p[np.arange(y.size), y].astype(np.float64), 1e-6))
    a = li.find_label_issues(y, pred_probs=p, cut="none", max_iters=ITERS)
    b = li.find_label_issues(y, losses=loss, cut="none", max_iters=ITERS)
    np.testing.assert_allclose(loss[a], loss[b], rtol=1e-5)  # equal up to float32 rounding
    assert a[0] == 0  # p = 0: the largest loss
    np.testing.assert_allclose(
        li.label_quality_scores(y, pred_probs=p, max_iters=ITERS),
        li.label_quality_scores(y, losses=loss, max_iters=ITERS),
        atol=1e-4,
    )


def test_ranking_breaks_ties_by_loss_then_index():
    """(R1) with saturated posteriors (many p_noisy == 1) and repeated losses."""
    loss, _ = two_population_losses(n=1000, seed=6)
    loss[:40] = loss.max() + 5.0  # 40 equal losses beyond the 95th percentile
    loss[40:60] = np.round(loss[40:60], 1)
    y = np.zeros(loss.size, np.int64)
    p = 1.0 - li.label_quality_scores(y, losses=loss, max_iters=ITERS)
    assert np.sum(p == p.max()) > 40  # ties are really there (M3 makes the top equal)
    order = li.find_label_issues(y, losses=loss, cut="none", max_iters=ITERS)
    np.testing.assert_array_equal(order, np_rank(p, loss))


def test_cuts_count_threshold_auto():
    """cut='count': the first `count` of the ranking; 'threshold': p > t; 'auto': the
    estimated count, the first of the ranking."""
    loss, _ = two_population_losses(n=2000, seed=7)
    y = np.zeros(loss.size, np.int64)
    kw = dict(losses=loss, max_iters=ITERS)
    full = li.find_label_issues(y, cut="none", **kw)
    p = 1.0 - li.label_quality_scores(y, **kw)
    np.testing.assert_array_equal(li.find_label_issues(y, cut="count", count=123, **kw), full[:123])
    thr = li.find_label_issues(y, cut="threshold", threshold=0.7, **kw)
    assert set(thr) == set(np.flatnonzero(p > 0.7))
    np.testing.assert_array_equal(thr, full[: thr.size])
    _, w_ref = np_bmm(loss, ITERS)
    auto = li.find_label_issues(y, **kw)
    assert abs(auto.size - w_ref * loss.size) <= 1.0
    np.testing.assert_array_equal(auto, full[: auto.size])


def test_auto_cut_per_class_takes_each_class_count():
    """scope='class': class c contributes its count_c most suspect samples, ranked globally."""
    loss, _ = two_population_losses(n=3000, seed=8)
    y = np.random.default_rng(9).integers(0, 3, loss.size)
    kw = dict(losses=loss, scope="class", max_iters=ITERS)
    model = li.fit_noise_model(loss, scope="class", labels=y, max_iters=ITERS)
    flagged = li.find_label_issues(y, **kw)
    p = model.p_noisy
    expected = []
    for c in range(3):
        members = np.flatnonzero(y == c)
        expected += list(members[np_rank(p[members], loss[members])[: model.class_counts[c]]])
    expected = np.array(expected)
    np.testing.assert_array_equal(flagged, expected[np_rank(p[expected], loss[expected])])


def test_threshold_that_flags_nothing_warns():
    """A threshold above every posterior, while the model says labels are wrong: one warning."""
    loss, _ = two_population_losses(n=1000, seed=10)
    y = np.zeros(loss.size, np.int64)
    with pytest.warns(UserWarning, match="flags no sample"):
        out = li.find_label_issues(y, losses=loss, cut="threshold", threshold=0.999999999)
    assert out.size == 0


# =========================================================================== neighbours


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_exact_neighbours_match_brute_force_with_ties(metric):
    """(K1): small integer features (exact in float32, many equal distances), chunked."""
    rng = np.random.default_rng(11)
    x = rng.integers(-2, 3, (300, 4)).astype(np.float32)
    x[:5] = x[5]  # duplicates: each other's neighbours, never themselves
    idx, score = knn.exact_neighbors(x, 7, metric=metric, chunk=64)
    ref_idx, ref_d2 = np_neighbours(x, 7, metric)
    np.testing.assert_allclose(knn.squared_distances(x, score, metric=metric), ref_d2, atol=1e-4)
    if metric == "euclidean":  # cosine's normalised rows are not exact: tie order may differ
        np.testing.assert_array_equal(idx, ref_idx)
    assert not np.any(idx == np.arange(300)[:, None])


def test_ivf_probing_every_cell_is_exact():
    """nprobe = nlist: every sample is a candidate, so IVF equals the exact search."""
    x = np.random.default_rng(12).normal(size=(500, 8)).astype(np.float32)
    ie, _ = knn.exact_neighbors(x, 5)
    ia, _ = knn.ivf_neighbors(x, 5, nlist=6, nprobe=6, tile=32)
    np.testing.assert_array_equal(ia, ie)
    assert knn.recall_at_k(ia, ie) == 1.0


def test_ivf_recall_on_clustered_data():
    """The default IVF finds most true neighbours on clustered data (recall@10 > 0.9)."""
    rng = np.random.default_rng(13)
    centers = rng.normal(0, 4, (40, 16))
    x = (centers[rng.integers(0, 40, 4000)] + rng.normal(size=(4000, 16))).astype(np.float32)
    ie, _ = knn.exact_neighbors(x, 10)
    ia, _ = knn.ivf_neighbors(x, 10)
    assert knn.recall_at_k(ia, ie) > 0.9


def test_knn_pred_probs_match_the_kernel_vote():
    """(K1): the out-of-sample probabilities against a numpy vote."""
    rng = np.random.default_rng(14)
    y = rng.integers(0, 4, 400)
    x = (rng.normal(size=(400, 6)) + 2.0 * np.eye(6)[y]).astype(np.float32)
    got = li.knn_pred_probs(x, y, k=10, method="exact")
    np.testing.assert_allclose(got, np_knn_probs(x, y, 10, 4), atol=1e-5)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)


def test_features_path_is_the_pred_probs_path_on_the_vote():
    """features= gives the list pred_probs= gives on the neighbour probabilities."""
    rng = np.random.default_rng(15)
    true = rng.integers(0, 4, 600)
    given = np.where(rng.random(600) < 0.3, rng.integers(0, 4, 600), true)
    x = (rng.normal(size=(600, 6)) + 3.0 * np.eye(6)[true]).astype(np.float32)
    probs = np_knn_probs(x, given, 10, 4).astype(np.float32)
    a = li.find_label_issues(given, features=x, knn_method="exact", max_iters=ITERS)
    b = li.find_label_issues(given, pred_probs=probs, max_iters=ITERS)
    np.testing.assert_array_equal(a, b)


def test_neighbours_sharded_over_two_devices_equal_one():
    """Exact and IVF searches with the queries split over 2 (forced CPU) devices."""
    code = (
        "import numpy as np, jax; from jaxnoise import knn; assert len(jax.devices()) == 2\n"
        "x = np.random.default_rng(0).normal(size=(1000, 8)).astype(np.float32)\n"
        "e = knn.exact_neighbors(x, 5, chunk=128)[0]; a = knn.ivf_neighbors(x, 5, tile=32)[0]\n"
        "import sys; sys.stdout.buffer.write(np.concatenate([e, a]).astype(np.int32).tobytes())\n"
    )
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "PYTHONPATH": ROOT,
        "JAX_PLATFORMS": "cpu",
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    both = np.frombuffer(out.stdout, np.int32).reshape(2000, 5)
    x = np.random.default_rng(0).normal(size=(1000, 8)).astype(np.float32)
    np.testing.assert_array_equal(both[:1000], knn.exact_neighbors(x, 5)[0])
    np.testing.assert_array_equal(both[1000:], knn.ivf_neighbors(x, 5, tile=32)[0])


# =========================================================================== the table


def test_table_columns_and_dataframe():
    """cleanlab's columns, one row per sample; p_noisy and id; the DataFrame form."""
    p, y, _ = probs_with_noise(n=500)
    ids = np.array([f"s{i}" for i in range(500)])
    t = li.label_issues_table(y, pred_probs=p, ids=ids, max_iters=ITERS)
    assert list(t) == [
        "is_label_issue",
        "label_score",
        "given_label",
        "predicted_label",
        "p_noisy",
        "loss",
        "id",
    ]
    flagged = li.find_label_issues(y, pred_probs=p, max_iters=ITERS)
    np.testing.assert_array_equal(np.flatnonzero(t["is_label_issue"]), np.sort(flagged))
    ranked = li.rank(t["p_noisy"], t["loss"])
    np.testing.assert_array_equal(ranked[np.isin(ranked, flagged)], flagged)  # the same order
    np.testing.assert_allclose(
        t["loss"], -np.log(np.maximum(p[np.arange(500), y], 1e-6)), rtol=1e-6
    )
    np.testing.assert_array_equal(t["predicted_label"], np.argmax(p, axis=1))
    np.testing.assert_array_equal(t["given_label"], y)
    np.testing.assert_allclose(t["label_score"], 1.0 - t["p_noisy"], atol=1e-7)
    np.testing.assert_array_equal(t["id"], ids)
    pd = pytest.importorskip("pandas")
    df = li.label_issues_table(y, pred_probs=p, as_dataframe=True, max_iters=ITERS)
    assert isinstance(df, pd.DataFrame) and len(df) == 500 and "id" not in df
    lt = li.label_issues_table(y, losses=-np.log(p[np.arange(500), y]), max_iters=ITERS)
    assert np.all(lt["predicted_label"] == -1)


# =========================================================================== refusals


def _good():
    p, y, _ = probs_with_noise(n=100, k=3)
    return p, y


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda p, y: dict(labels=y.astype(float), pred_probs=p), "labels: must be integers"),
        (lambda p, y: dict(labels=np.where(y == 0, 3, y), pred_probs=p), r"labels: values"),
        (lambda p, y: dict(labels=np.where(y == 0, -1, y), pred_probs=p), r"labels: values"),
        (lambda p, y: dict(labels=y[:, None], pred_probs=p), "labels: expected"),
        (lambda p, y: dict(labels=y, pred_probs=p * 1.1), "pred_probs: .*sum to 1|outside"),
        (lambda p, y: dict(labels=y % 2, pred_probs=p[:, :2] / 2), "pred_probs: rows must sum"),
        (lambda p, y: dict(labels=y, pred_probs=p[:, 0]), r"pred_probs: expected"),
        (lambda p, y: dict(labels=y, pred_probs=p[:90]), "pred_probs: has 90 rows"),
        (lambda p, y: dict(labels=y, pred_probs=np.where(p > 0.5, np.nan, p)), "pred_probs: .*NaN"),
        (lambda p, y: dict(labels=y, losses=np.full(100, np.inf)), "losses: contains NaN or inf"),
        (lambda p, y: dict(labels=y, losses=np.ones(99)), "losses: has 99 rows"),
        (lambda p, y: dict(labels=y, features=np.full((100, 3), np.nan)), "features: contains"),
        (lambda p, y: dict(labels=y, features=np.ones((90, 3))), "features: has 90 rows"),
        (lambda p, y: dict(labels=y), "give exactly one, got none"),
        (lambda p, y: dict(labels=y, pred_probs=p, losses=np.ones(100)), "got pred_probs, losses"),
        (lambda p, y: dict(labels=y, pred_probs=p, cut="best"), "cut: must be one of"),
        (lambda p, y: dict(labels=y, pred_probs=p, cut="count"), "count: cut='count' needs"),
        (lambda p, y: dict(labels=y, pred_probs=p, count=5), "count: only used"),
        (lambda p, y: dict(labels=y, pred_probs=p, cut="threshold", threshold=1.5), "threshold"),
        (lambda p, y: dict(labels=y, pred_probs=p, model="t"), "model: must be one of"),
        (lambda p, y: dict(labels=y, pred_probs=p, scope="all"), "scope: must be one of"),
        (lambda p, y: dict(labels=y, features=np.ones((100, 3)), k=100), "k: must be an integer"),
        (lambda p, y: dict(labels=y, features=np.ones((100, 3)), knn_method="lsh"), "knn_method"),
        (lambda p, y: dict(labels=y, features=np.ones((100, 3)), metric="l1"), "metric"),
        (lambda p, y: dict(labels=y, losses=np.ones(100), num_classes=0), "num_classes"),
    ],
)
def test_bad_input_is_refused_with_one_line_naming_it(change, match):
    """Every refusal is a one-line ValueError that names the argument."""
    p, y = _good()
    kwargs = change(p, y)
    with pytest.raises(ValueError, match=match) as err:
        li.find_label_issues(kwargs.pop("labels"), **kwargs)
    assert "\n" not in str(err.value)


def test_table_refuses_bad_ids():
    p, y = _good()
    with pytest.raises(ValueError, match="ids: has 3 entries"):
        li.label_issues_table(y, pred_probs=p, ids=np.arange(3))
