"""Find the wrong labels of a dataset in memory: numpy arrays in, numpy arrays out.

The in-memory interface people know from cleanlab (``filter.find_label_issues``,
``rank.get_label_quality_scores``, Datalab's table), with jaxnoise's noise model as the engine:
a two-component mixture fitted by EM to the per-sample losses (``jaxnoise.mixture``), whose
posterior p(noisy | loss) ranks the samples and whose noisy component says how many labels are
wrong. Three ways in, one of them per call:

* ``pred_probs`` (N, K): out-of-sample class probabilities (e.g. from cross-validation);
  the loss is ``-log max(p[label], 1e-6)``;
* ``losses`` (N,): per-sample losses from the user's own loop (higher = more suspect);
* ``features`` (N, D) only, training-free: out-of-sample class probabilities from a
  kernel-weighted vote of the k nearest other samples (``knn_pred_probs``; k = 10, Datalab's
  default; the search, ``jaxnoise.knn``, is exact up to 100,000 samples and an inverted-file
  approximation above), then the same loss.

The noise model (``fit_noise_model``): ``model="bmm"`` (default, the published beta mixture on
percentile-normalised losses) or ``"gmm"``; the noisy component is the one with the larger mean;
``scope="global"`` (one mixture) or ``"class"`` (one per given label, ``mixture.fit_per_class``);
exact posteriors (``lookup=True``: the published 100-bin table); ``max_iters=100`` EM steps
(the training loop's fit uses 10; here the fit runs once, and nearer convergence it counts
better: benchmarks/results/label_issues.md). Above ``FIT_SAMPLES`` losses (or 1024 per class)
the EM sees a fixed random subset of them, which estimates the same six parameters at a
fraction of the cost; every sample's posterior is then evaluated. The posterior is made
non-decreasing in the loss (per class; ``monotone``). The estimated number of wrong labels is
the noisy component's weight times N (per class: its weight times the class's size); a fit that
fails (e.g. all losses equal) estimates 0 and warns.

The cut (``find_label_issues``): ``cut="auto"`` (default) keeps that many samples, the most
suspect first (per class, that class's count); ``"threshold"`` keeps ``p_noisy > threshold``
(and warns when that flags nothing while the model estimates wrong labels); ``"count"`` the
``count`` most suspect; ``"none"`` ranks every sample. The ranking: p(noisy) descending, then
the loss descending (posteriors saturate, e.g. above the 95th percentile where the normalised
loss is clipped), then the index.

Bad input raises ``ValueError`` with one line naming the argument, before any fit.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxnoise import knn, mixture

PROB_FLOOR = 1e-6  # p[label] is clipped to this before the log: losses <= 13.8
PROB_SUM_TOL = 1e-3  # |sum_k pred_probs[i, k] - 1| allowed
CUTS = ("auto", "threshold", "count", "none")
MODELS = ("bmm", "gmm")
SCOPES = ("global", "class")
KNN_SMOOTHING = 1.0  # pseudo-votes spread over the classes: no neighbour-probability is 0
MAX_ITERS = 100  # EM iterations (the training loop's published fit uses 10)
FIT_SAMPLES = 1 << 16  # the EM sees at most this many losses (a fixed random subset) ...
FIT_PER_CLASS = 1024  # ... or this many per class, for scope="class"


@dataclasses.dataclass(frozen=True)
class NoiseModel:
    """A noise model fitted to per-sample losses, evaluated on them."""

    p_noisy: np.ndarray  # (N,) float32 posterior of the noisy component
    noisy_count: int  # estimated number of wrong labels (the sum of class_counts if per class)
    class_counts: np.ndarray | None  # (K,) int64 per-class estimates (scope="class"), else None
    state: mixture.MixtureState  # the fit (a per-class state has a leading class axis)
    valid: bool  # False: the fit failed everywhere (p_noisy = 0.5, count 0)


# ---------------------------------------------------------------------------------------------
# Input checks: one line naming the argument, before anything is computed.


def _check_labels(labels, num_classes: int | None) -> np.ndarray:
    """(N,) int32 labels in [0, num_classes) (num_classes None: any non-negative)."""
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"labels: expected a non-empty 1-D array, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels: must be integers, got dtype {y.dtype}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or (num_classes is not None and hi >= num_classes):
        limit = f"[0, {num_classes})" if num_classes is not None else "[0, inf)"
        raise ValueError(f"labels: values must lie in {limit}, got [{lo}, {hi}]")
    return y.astype(np.int32)


def _check_array(name: str, a, ndim: int, n: int | None) -> np.ndarray:
    """A finite float32 array of ``ndim`` dimensions with ``n`` rows (if given)."""
    x = np.asarray(a)
    if x.ndim != ndim or x.size == 0:
        shape = "(N,)" if ndim == 1 else "(N, K)" if name == "pred_probs" else "(N, D)"
        raise ValueError(f"{name}: expected a non-empty {shape} array, got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{name}: must be numbers, got dtype {x.dtype}")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"{name}: has {x.shape[0]} rows but labels has {n}")
    x = x.astype(np.float32, copy=False)
    if not _all_finite(x):
        raise ValueError(f"{name}: contains NaN or inf ({int(np.sum(~np.isfinite(x)))} values)")
    return x


def _all_finite(x: np.ndarray) -> bool:
    """No NaN and no inf: min and max propagate NaN and show inf (no temporary array)."""
    return bool(np.isfinite(np.min(x)) and np.isfinite(np.max(x)))


def _pred_probs_and_labels(pred_probs, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pred_probs (N, K) float32, labels, losses ``-log max(p[i, label_i], PROB_FLOOR)``)
    after every check. On the host: a pass over (N, K) costs less there than its copy to a
    device, and only the (N,) losses go on to the fit."""
    p = _check_array("pred_probs", pred_probs, 2, None)
    if p.shape[1] < 2:
        raise ValueError(f"pred_probs: needs K >= 2 class columns, got shape {p.shape}")
    y = _check_labels(labels, p.shape[1])
    if p.shape[0] != y.size:
        raise ValueError(f"pred_probs: has {p.shape[0]} rows but labels has {y.size}")
    if np.min(p) < 0.0 or np.max(p) > 1.0:
        raise ValueError(f"pred_probs: {int(np.sum((p < 0) | (p > 1)))} values lie outside [0, 1]")
    dev = float(np.max(np.abs(np.sum(p, axis=1) - 1.0)))
    if dev > PROB_SUM_TOL:
        raise ValueError(
            f"pred_probs: rows must sum to 1 (within {PROB_SUM_TOL}); one is off by {dev:.3g}"
        )
    p_label = p[np.arange(y.size), y]
    return p, y, -np.log(np.clip(p_label, np.float32(PROB_FLOOR), np.float32(1.0)))


def _check_choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name}: must be one of {allowed}, got {value!r}")


def _one_source(pred_probs, features, losses) -> str:
    """The name of the one input given among pred_probs, features and losses."""
    given = [
        k
        for k, v in (("pred_probs", pred_probs), ("features", features), ("losses", losses))
        if v is not None
    ]
    if len(given) != 1:
        raise ValueError(
            "pred_probs / features / losses: give exactly one, got "
            + (", ".join(given) if given else "none")
        )
    return given[0]


def _check_num_classes(num_classes) -> int | None:
    if num_classes is None:
        return None
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes: must be an integer >= 1, got {num_classes!r}")
    return int(num_classes)


# ---------------------------------------------------------------------------------------------
# Losses from class probabilities; class probabilities from the nearest neighbours.


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _vote(
    idx: jax.Array, d2: jax.Array, labels: jax.Array, bandwidth: jax.Array, *, num_classes: int
) -> jax.Array:
    """Kernel-weighted neighbour vote: (N, K) probabilities ``(V_c + s / K) / (V + s)``.

    ``V_c = sum_j w_j [y_j = c]`` over the neighbours ``idx`` (N, k) with squared distances
    ``d2``, ``w_j = exp(-d2_j / bandwidth)``, ``V = sum_c V_c``, s = KNN_SMOOTHING; a missing
    neighbour (-1, approximate search) has weight 0.
    """
    w = jnp.where(idx >= 0, jnp.exp(-d2 / bandwidth), 0.0)  # (N, k)
    near = labels[jnp.maximum(idx, 0)]  # (N, k) the neighbours' labels
    votes = sum(
        w[:, j, None] * jax.nn.one_hot(near[:, j], num_classes)  # (N, K), no (N, k, K)
        for j in range(idx.shape[1])
    )
    total = jnp.sum(w, axis=1, keepdims=True)
    return (votes + KNN_SMOOTHING / num_classes) / (total + KNN_SMOOTHING)


def knn_pred_probs(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    k: int = 10,
    num_classes: int | None = None,
    method: str = "auto",
    metric: str = "euclidean",
) -> np.ndarray:
    """Out-of-sample class probabilities from each sample's k nearest other samples: (N, K).

    A Parzen-window vote over the k neighbours (itself excluded): neighbour j weighs
    ``exp(-d_j^2 / h^2)``, with one bandwidth ``h^2`` for the whole dataset, the median of the
    squared distance to the k-th neighbour; one pseudo-vote spread evenly over the K classes is
    added (``(V_c + 1/K) / (V + 1)``). So no probability is 0, and a sample whose neighbours
    all disagree with its label is the more suspect the nearer they are: Datalab's uniform
    vote of k = 10 takes only 11 values, on which a mixture has nothing to fit (a large share of
    samples share the largest loss). ``method``: "exact", "ivf", or "auto" (exact up to
    ``knn.EXACT_MAX_N`` samples).
    """
    y = _check_labels(labels, _check_num_classes(num_classes))
    x = _check_array("features", features, 2, y.size)
    _check_choice("method", method, knn.METHODS)
    _check_choice("metric", metric, knn.METRICS)
    K = int(num_classes or y.max() + 1)
    idx, score = knn.neighbors(x, k, method=method, metric=metric)
    d2 = knn.squared_distances(x, score, metric=metric)
    found = idx[:, -1] >= 0
    bandwidth = float(np.median(d2[found, -1])) if found.any() else 1.0
    bandwidth = bandwidth if bandwidth > 0 else 1.0
    return np.asarray(
        _vote(
            jnp.asarray(idx), jnp.asarray(d2), jnp.asarray(y), jnp.float32(bandwidth), num_classes=K
        )
    )


# ---------------------------------------------------------------------------------------------
# The noise model.


@functools.partial(jax.jit, static_argnames=("num",))
def monotone(p_noisy: jax.Array, losses: jax.Array, classes: jax.Array, *, num: int) -> jax.Array:
    """p(noisy) made non-decreasing in the loss within each class (``classes``, ``num`` of them).

    A two-component beta or Gaussian likelihood ratio has at most one interior extremum in the
    loss, so the posterior can rise and then fall (or fall and then rise): from the smallest loss
    at which it is largest on, p is that maximum (the published lookup table's rule); up to the
    largest loss below it at which p is smallest, that minimum. Between them p is monotone.
    """
    seg = functools.partial(jax.ops.segment_max, segment_ids=classes, num_segments=num)
    seg_min = functools.partial(jax.ops.segment_min, segment_ids=classes, num_segments=num)
    p_max = seg(p_noisy)
    hi = seg_min(jnp.where(p_noisy == p_max[classes], losses, jnp.inf))  # where the max starts
    below = losses <= hi[classes]
    p_min = seg_min(jnp.where(below, p_noisy, jnp.inf))
    lo = seg(jnp.where(below & (p_noisy == p_min[classes]), losses, -jnp.inf))
    p = jnp.where(losses >= hi[classes], p_max[classes], p_noisy)
    return jnp.where(losses <= lo[classes], p_min[classes], p)


def _fit_subset(n: int, num_classes: int) -> np.ndarray | None:
    """Rows the EM sees: all up to FIT_SAMPLES (or 1024 per class), else a fixed random draw."""
    size = max(FIT_SAMPLES, FIT_PER_CLASS * num_classes)
    if n <= size:
        return None
    return np.sort(np.random.default_rng(0).choice(n, size=size, replace=False))


def _noisy_weight(state: mixture.MixtureState) -> np.ndarray:
    """The noisy component's mixing weight: () or (C,) for a per-class state."""
    w, comp = np.asarray(state.weights), np.asarray(state.noisy_component)
    weight = np.take_along_axis(w, comp[..., None], axis=-1)[..., 0]
    return np.where(np.asarray(state.valid), weight, 0.0)


def fit_noise_model(
    losses: np.ndarray,
    *,
    model: str = "bmm",
    scope: str = "global",
    labels: np.ndarray | None = None,
    num_classes: int | None = None,
    lookup: bool = False,
    max_iters: int = MAX_ITERS,
) -> NoiseModel:
    """Fit the two-component mixture to per-sample losses: p(noisy) and the noisy count.

    ``scope="class"`` needs ``labels`` (one mixture per given label). ``max_iters``: EM steps.
    Above FIT_SAMPLES samples the EM sees a fixed random subset of them (module docstring).
    """
    _check_choice("model", model, MODELS)
    _check_choice("scope", scope, SCOPES)
    loss = _check_array("losses", losses, 1, None if labels is None else len(labels))
    if loss.size < mixture.MIN_SAMPLES:
        raise ValueError(f"losses: need at least {mixture.MIN_SAMPLES} samples, got {loss.size}")
    if scope == "class" and labels is None:
        raise ValueError("labels: scope='class' fits one mixture per label and needs them")
    y = None if labels is None else _check_labels(labels, _check_num_classes(num_classes))
    K = int(num_classes or (0 if y is None else y.max() + 1))
    sub = _fit_subset(loss.size, K if scope == "class" else 1)
    fit_loss = jnp.asarray(loss if sub is None else loss[sub])
    lj = jnp.asarray(loss)
    if scope == "class":
        fit_y = jnp.asarray(y if sub is None else y[sub])
        state = mixture.fit_per_class(
            model, fit_loss, fit_y, K, max_iters=max_iters, noisy="max_mean"
        )
        p = mixture.posterior_noisy(state, lj, lookup=lookup, classes=jnp.asarray(y))
        p = monotone(p, lj, jnp.asarray(y), num=K)
        class_counts = np.rint(_noisy_weight(state) * np.bincount(y, minlength=K))
        class_counts = class_counts.astype(np.int64)
        count = int(class_counts.sum())
    else:
        state = mixture.fit(model, fit_loss, max_iters=max_iters, noisy="max_mean")
        p = mixture.posterior_noisy(state, lj, lookup=lookup)
        p = monotone(p, lj, jnp.zeros(loss.size, jnp.int32), num=1)
        class_counts, count = None, int(np.rint(_noisy_weight(state) * loss.size))
    return NoiseModel(
        p_noisy=np.asarray(p, np.float32),
        noisy_count=count,
        class_counts=class_counts,
        state=state,
        valid=bool(np.any(np.asarray(state.valid))),
    )


# ---------------------------------------------------------------------------------------------
# From the inputs to the noise model, and the ranking.


@dataclasses.dataclass(frozen=True)
class _Analysis:
    labels: np.ndarray  # (N,) int32
    losses: np.ndarray  # (N,) float32
    pred_probs: np.ndarray | None  # (N, K) given or from the neighbours; None for losses
    noise: NoiseModel
    keys: np.ndarray  # (N,) uint64 sort keys of the ranking (p_noisy, loss)


def _analyse(
    labels,
    pred_probs,
    features,
    losses,
    *,
    num_classes=None,
    model="bmm",
    scope="global",
    k=10,
    knn_method="auto",
    metric="euclidean",
    lookup=False,
    max_iters=MAX_ITERS,
) -> _Analysis:
    """Check every input, derive the losses, fit the noise model."""
    source = _one_source(pred_probs, features, losses)
    _check_choice("model", model, MODELS)
    _check_choice("scope", scope, SCOPES)
    num_classes = _check_num_classes(num_classes)
    if source == "pred_probs":
        probs, y, loss = _pred_probs_and_labels(pred_probs, labels)
    else:
        y = _check_labels(labels, num_classes)
    if source == "features":
        x = _check_array("features", features, 2, y.size)
        _check_choice("knn_method", knn_method, knn.METHODS)
        _check_choice("metric", metric, knn.METRICS)
        if not isinstance(k, (int, np.integer)) or not 1 <= k < y.size:
            raise ValueError(f"k: must be an integer in [1, {y.size - 1}], got {k!r}")
        probs = knn_pred_probs(
            x, y, k=k, num_classes=num_classes or int(y.max()) + 1, method=knn_method, metric=metric
        )
        probs, y, loss = _pred_probs_and_labels(probs, y)
    if source == "losses":
        loss, probs = _check_array("losses", losses, 1, y.size), None
    K = probs.shape[1] if probs is not None else (num_classes or int(y.max()) + 1)
    noise = fit_noise_model(
        loss, model=model, scope=scope, labels=y, num_classes=K, lookup=lookup, max_iters=max_iters
    )
    return _Analysis(
        labels=y, losses=loss, pred_probs=probs, noise=noise, keys=_sort_keys(noise.p_noisy, loss)
    )


def _sortable(v: np.ndarray) -> np.ndarray:
    """float32 values as uint32 whose unsigned order is the values' order (-0.0 as 0.0)."""
    bits = (np.asarray(v, np.float32) + np.float32(0.0)).view(np.uint32)
    return np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000))


def _sort_keys(p_noisy: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """(N,) uint64 keys whose order is (p_noisy, loss): one integer sort ranks the samples."""
    return (_sortable(p_noisy).astype(np.uint64) << np.uint64(32)) | _sortable(losses)


def rank(p_noisy: np.ndarray, losses: np.ndarray, subset: np.ndarray | None = None) -> np.ndarray:
    """Indices (of ``subset``, default all) by p(noisy) desc, then loss desc, then index."""
    return _order(_sort_keys(p_noisy, losses), subset)


def _order(keys: np.ndarray, subset: np.ndarray | None = None) -> np.ndarray:
    """``subset`` (default all) by key descending, equal keys by index."""
    sel = np.arange(keys.size) if subset is None else np.sort(subset)
    return sel[np.argsort(~keys[sel], kind="stable")]


def _top(keys: np.ndarray, count: int, among: np.ndarray | None = None) -> np.ndarray:
    """The ``count`` first samples of the order (among ``among``), unordered, without a sort."""
    idx = np.arange(keys.size) if among is None else among
    if count >= idx.size:
        return idx
    if count <= 0:
        return idx[:0]
    k = keys[idx]
    edge = np.partition(k, idx.size - count)[idx.size - count]  # the count-th largest key
    above = idx[k > edge]
    return np.concatenate([above, idx[k == edge][: count - above.size]])  # lowest indices


def _cut(a: _Analysis, cut: str, threshold: float, count) -> np.ndarray:
    """The flagged samples (unordered) under the chosen cut."""
    p, noise = a.noise.p_noisy, a.noise
    if cut == "none":
        return np.arange(p.size)
    if cut == "count":
        return _top(a.keys, int(count))
    if cut == "threshold":
        flagged = np.flatnonzero(p > threshold)
        if flagged.size == 0 and noise.noisy_count > 0:
            warnings.warn(
                f"threshold={threshold} flags no sample, but the noise model estimates "
                f"{noise.noisy_count} wrong labels: try cut='auto'",
                stacklevel=3,
            )
        return flagged
    if noise.class_counts is None:
        return _top(a.keys, noise.noisy_count)
    return _top_per_class(a.keys, a.labels, noise.class_counts)


def _top_per_class(keys: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The ``counts[k]`` first samples of the order among those labelled ``k``, for every
    class k (unordered)."""
    by_class = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[by_class], np.arange(counts.size + 1))
    return np.concatenate(
        [_top(keys, int(c), by_class[bounds[k] : bounds[k + 1]]) for k, c in enumerate(counts)]
    )


def top_per_class(
    p_noisy: np.ndarray, losses: np.ndarray, labels: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """Indices of the ``counts[k]`` most suspect samples (the order of :func:`rank`) of each
    class ``k`` of ``labels`` (N,) int, in the order of :func:`rank`: (M,) int64."""
    keys = _sort_keys(p_noisy, losses)
    labels = np.asarray(labels, np.int64)
    return _order(keys, _top_per_class(keys, labels, np.asarray(counts))).astype(np.int64)


def _check_cut(cut, threshold, count) -> None:
    _check_choice("cut", cut, CUTS)
    if cut == "threshold" and not (isinstance(threshold, (int, float)) and 0 <= threshold < 1):
        raise ValueError(f"threshold: must be a number in [0, 1), got {threshold!r}")
    if cut == "count" and (not isinstance(count, (int, np.integer)) or count < 0):
        raise ValueError(f"count: cut='count' needs an integer >= 0, got {count!r}")
    if cut != "count" and count is not None:
        raise ValueError(f"count: only used with cut='count' (cut is {cut!r})")


# ---------------------------------------------------------------------------------------------
# The public functions.


def _fitted(labels, pred_probs, features, losses, options: dict) -> _Analysis:
    """``_analyse`` plus a warning when no mixture could be fitted."""
    a = _analyse(labels, pred_probs, features, losses, **options)
    if not a.noise.valid:
        warnings.warn(
            "the noise model could not be fitted to these losses (e.g. all equal): "
            "every p_noisy is 0.5 and no label is estimated wrong",
            stacklevel=3,
        )
    return a


def label_quality_scores(
    labels: np.ndarray,
    *,
    pred_probs: np.ndarray | None = None,
    features: np.ndarray | None = None,
    losses: np.ndarray | None = None,
    **options,
) -> np.ndarray:
    """Per-sample label quality ``1 - p(noisy)``: (N,) float32, higher = more likely correct.

    One of ``pred_probs`` (N, K), ``features`` (N, D), ``losses`` (N,). ``options``:
    ``num_classes``, ``model`` ("bmm" | "gmm"), ``scope`` ("global" | "class"), ``k``,
    ``knn_method`` ("auto" | "exact" | "ivf"), ``metric``, ``lookup``, ``max_iters``. Equal
    scores (saturated posteriors) are ordered by the loss in ``find_label_issues``.
    """
    a = _fitted(labels, pred_probs, features, losses, options)
    return (1.0 - a.noise.p_noisy).astype(np.float32)


def find_label_issues(
    labels: np.ndarray,
    *,
    pred_probs: np.ndarray | None = None,
    features: np.ndarray | None = None,
    losses: np.ndarray | None = None,
    cut: str = "auto",
    threshold: float = 0.5,
    count: int | None = None,
    **options,
) -> np.ndarray:
    """Indices of the suspected wrong labels, most suspect first: (M,) int64.

    ``cut``: "auto" (the noise model's estimated count, per class for ``scope="class"``),
    "threshold" (``p_noisy > threshold``), "count" (the ``count`` most suspect) or "none" (all
    samples, ranked). Inputs and ``options`` as in ``label_quality_scores``.
    """
    _check_cut(cut, threshold, count)
    a = _fitted(labels, pred_probs, features, losses, options)
    return _order(a.keys, _cut(a, cut, threshold, count)).astype(np.int64)


def label_issues_table(
    labels: np.ndarray,
    *,
    pred_probs: np.ndarray | None = None,
    features: np.ndarray | None = None,
    losses: np.ndarray | None = None,
    ids: np.ndarray | None = None,
    cut: str = "auto",
    threshold: float = 0.5,
    count: int | None = None,
    as_dataframe: bool = False,
    **options,
):
    """cleanlab's table, one row per sample in input order: a dict of (N,) arrays.

    Columns ``is_label_issue`` (bool, under ``cut``), ``label_score`` (``1 - p_noisy``),
    ``given_label``, ``predicted_label`` (argmax of the class probabilities; -1 when only
    ``losses`` are given), ``p_noisy``, ``loss`` (the loss the noise model saw: (N,) float32;
    ``rank(p_noisy, loss)`` is the order of :func:`find_label_issues`), and ``id`` when ``ids``
    are given. ``as_dataframe``: a pandas DataFrame instead (needs pandas).
    """
    _check_cut(cut, threshold, count)
    if ids is not None and np.ndim(ids) != 1:
        raise ValueError(f"ids: expected a 1-D array, got shape {np.shape(ids)}")
    if ids is not None and len(ids) != np.shape(labels)[0]:
        raise ValueError(f"ids: has {len(ids)} entries but labels has {np.shape(labels)[0]}")
    a = _fitted(labels, pred_probs, features, losses, options)
    flagged = np.zeros(a.labels.size, bool)
    flagged[_cut(a, cut, threshold, count)] = True
    predicted = (
        np.full(a.labels.size, -1, np.int64)
        if a.pred_probs is None
        else np.argmax(a.pred_probs, axis=1)
    )
    table = {
        "is_label_issue": flagged,
        "label_score": (1.0 - a.noise.p_noisy).astype(np.float32),
        "given_label": a.labels.astype(np.int64),
        "predicted_label": predicted,
        "p_noisy": a.noise.p_noisy,
        "loss": a.losses,
    }
    if ids is not None:
        table["id"] = np.asarray(ids)
    if not as_dataframe:
        return table
    try:
        import pandas as pd
    except ImportError as err:
        raise ValueError("as_dataframe: needs pandas (pip install pandas)") from err
    return pd.DataFrame(table)
