"""Figures of a run: loss histogram with mixture fits, loss quantiles, accuracy/AUROC, posteriors.

Every function takes plain arrays and records (``metrics.jsonl`` lines, ``mixture.summary``
dicts), writes one PNG and returns its path. Figures are built on ``matplotlib.figure.Figure``
with the Agg canvas, so nothing touches pyplot's global state or needs a display.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from jaxnoise import mixture, workdir

DPI = 120
CLEAN, NOISY, UNKNOWN = "tab:blue", "tab:red", "tab:gray"
MODEL_STYLE = {"bmm": dict(color="black", ls="-"), "gmm": dict(color="tab:green", ls="--")}


def _figure(ncols: int = 1, width: float = 6.4, height: float = 4.2) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _save(fig: Figure, path: str) -> str:
    """Save a figure as PNG atomically (a killed process never leaves a torn figure)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    workdir.atomic_write(path, lambda f: fig.savefig(f, dpi=DPI, format="png"))
    return path


def _as_state(params: Any) -> mixture.MixtureState:
    """A BMMState/GMMState from itself or from ``mixture.summary``-style parameters.

    A mapping needs ``weights``, ``lo``, ``hi`` and ``alphas``/``betas`` (BMM) or
    ``means``/``variances`` (GMM); the other fields are irrelevant to densities.
    """
    if isinstance(params, mixture.BMMState | mixture.GMMState):
        return params
    names = ("alphas", "betas") if "alphas" in params else ("means", "variances")
    base = mixture.initial_state("bmm" if "alphas" in params else "gmm")
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    return base.replace(**{k: f32(params[k]) for k in (*names, "weights", "lo", "hi")})


def _one_group(noise_mask: np.ndarray) -> bool:
    """True when a noise mask splits nothing (every label clean, or every one noisy)."""
    m = np.asarray(noise_mask, bool)
    return bool(m.all() or not m.any())


def mixture_density_normalised(params: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Density of a fitted BMM/GMM over normalised losses ``x``: (total, per-component (2, N)).

    ``mixture.density`` of the state (or ``mixture.summary`` dict), as float64 numpy arrays.
    """
    total, comps = mixture.density(_as_state(params), np.asarray(x, np.float32))
    return np.asarray(total, np.float64), np.asarray(comps, np.float64)


def mixture_density(params: Any, losses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Density of a fitted BMM/GMM on the raw-loss axis: (total, per-component (2, N)).

    The mixtures live on ``x = mixture.normalize_losses(l, lo, hi, clip=False)``; the density
    over raw losses is the density over ``x`` divided by ``mixture.loss_scale(lo, hi)`` (the
    Jacobian). It describes the samples between the 5th and 95th loss percentiles, which the
    fit uses.
    """
    state = _as_state(params)
    x = mixture.normalize_losses(np.asarray(losses, np.float32), state.lo, state.hi, clip=False)
    total, comps = mixture.density(state, x)
    scale = mixture.loss_scale(state.lo, state.hi)
    return np.asarray(total / scale, np.float64), np.asarray(comps / scale, np.float64)


def fitted_curve(params: Any, losses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fit's density curve on the histogram of ``losses`` (the paper's Figure 2).

    ``(grid, y)``: 398 raw losses strictly inside the fitted range ``[lo, hi]`` and the mixture
    density there, scaled by the fraction of ``losses`` in that range
    (``mixture.in_fitted_range``) so that it sits on the density histogram of all samples.
    """
    state = _as_state(params)
    grid = np.linspace(float(state.lo), float(state.hi), 400)[1:-1]
    frac = float(np.mean(np.asarray(mixture.in_fitted_range(state, losses))))
    total, _ = mixture_density(state, grid)
    return grid, frac * total


def loss_histogram(
    path: str,
    losses: np.ndarray,
    *,
    noise_mask: np.ndarray | None = None,
    mixtures: Mapping[str, Any] | None = None,
    bins: int = 80,
    title: str = "Per-sample training loss (last epoch)",
) -> str:
    """Histogram of the losses (clean/noisy stacked when known) with the fitted mixture densities.

    ``mixtures`` maps a label ('bmm', 'gmm', or any) to ``mixture.summary``-style parameters;
    each density is scaled by the fraction of samples inside the fitted range so that it sits
    on the density histogram of all samples (the paper's Figure 2).
    """
    losses = np.asarray(losses, np.float64)
    finite = np.isfinite(losses)
    losses = losses[finite]
    fig, (ax,) = _figure()
    lo_edge, hi_edge = (losses.min(), losses.max()) if losses.size else (0.0, 1.0)
    if hi_edge <= lo_edge:  # all losses equal
        lo_edge, hi_edge = lo_edge - 0.5, hi_edge + 0.5
    edges = np.linspace(lo_edge, hi_edge, bins + 1)
    wt = 1.0 / (max(losses.size, 1) * (edges[1] - edges[0]))
    if noise_mask is not None and _one_group(noise_mask):
        noise_mask = None  # no label known wrong (or right): one histogram, no empty group
    if noise_mask is not None:
        m = np.asarray(noise_mask, bool)[finite]
        groups = [losses[~m], losses[m]]
        ax.hist(
            groups,
            bins=edges,
            stacked=True,
            color=[CLEAN, NOISY],
            alpha=0.6,
            weights=[np.full(g.size, wt) for g in groups],
            label=[f"clean ({(~m).sum()})", f"noisy ({m.sum()})"],
        )
    else:
        ax.hist(
            losses,
            bins=edges,
            color=UNKNOWN,
            alpha=0.6,
            weights=np.full(losses.size, wt),
            label=f"all samples ({losses.size})",
        )
    hist_max = np.histogram(losses, bins=edges)[0].max() * wt
    for name, params in (mixtures or {}).items():
        grid, y = fitted_curve(params, losses)
        style = MODEL_STYLE.get(name.lower(), dict(color=None, ls="-"))
        ax.plot(grid, y, lw=1.8, label=f"{name.upper()} fit", **style)
    if hist_max > 0:
        ax.set_ylim(0, 1.25 * hist_max)
    ax.set_xlabel("cross-entropy loss (w.r.t. the given label)")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(loc="upper center")
    return _save(fig, path)


def loss_quantiles_over_epochs(path: str, records: Sequence[Mapping[str, Any]]) -> str:
    """Median and interquartile range of clean and noisy samples' losses per epoch (Figure 1)."""
    fig, (ax,) = _figure()
    epochs = np.array([r["epoch"] for r in records])
    for key, color, label in (
        ("loss_quantiles_clean", CLEAN, "clean"),
        ("loss_quantiles_noisy", NOISY, "noisy"),
    ):
        q = np.array([r[key] for r in records], np.float64)
        ax.plot(epochs, q[:, 1], color=color, lw=1.8, label=f"{label}: median")
        ax.fill_between(epochs, q[:, 0], q[:, 2], color=color, alpha=0.25, label=f"{label}: 25-75%")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("per-sample loss")
    ax.set_title("Training loss of clean and mislabeled samples")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def accuracy_and_auroc(
    path: str, records: Sequence[Mapping[str, Any]], *, noise_known: bool = True
) -> str:
    """Test accuracy (and best) per epoch (a note instead without a test set); detection AUROC
    when known, else the flagged fraction."""
    fig, (ax_acc, ax_det) = _figure(2, width=10.0)
    epochs = np.array([r["epoch"] for r in records])
    nan = float("nan")
    if any("test_acc" in r for r in records):
        ax_acc.plot(
            epochs, [r.get("test_acc", nan) for r in records], label="test accuracy", lw=1.8
        )
        ax_acc.plot(epochs, [r.get("best_acc", nan) for r in records], label="best so far", ls="--")
        ax_acc.legend()
    else:  # embeddings without a test set: nothing to evaluate
        ax_acc.text(
            0.5,
            0.5,
            "no test set",
            ha="center",
            va="center",
            transform=ax_acc.transAxes,
            fontsize=12,
            color="0.4",
        )
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_title("Test accuracy")
    ax_acc.grid(alpha=0.3)
    if noise_known:
        ax_det.plot(epochs, [r["auroc"] for r in records], lw=1.8, label="p(noisy) (as trained)")
        if all("auroc_loss" in r for r in records):
            ax_det.plot(epochs, [r["auroc_loss"] for r in records], ls="--", label="raw loss")
        ax_det.set_ylabel("AUROC")
        ax_det.set_title("Detection of the mislabeled samples")
    else:
        frac = [100.0 * r.get("flagged_fraction", float("nan")) for r in records]
        ax_det.plot(epochs, frac, lw=1.8, color=NOISY, label="p(noisy) > 0.5")
        if all("est_noisy" in r for r in records):  # the model's estimate of the wrong labels
            ax_det.plot(
                epochs,
                [100.0 * r["est_noisy"] for r in records],
                lw=1.3,
                ls="--",
                color="0.3",
                label="mean p(noisy) (estimated wrong)",
            )
        ax_det.set_ylabel("flagged samples (%)")
        ax_det.set_title("Samples the noise model calls mislabeled")
    ax_det.set_xlabel("epoch")
    for a in (ax_acc, ax_det):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_det.legend()
    ax_det.grid(alpha=0.3)
    return _save(fig, path)


def posterior_vs_loss(
    path: str,
    losses: np.ndarray,
    p_noisy: np.ndarray,
    *,
    noise_mask: np.ndarray | None = None,
    curves: Mapping[str, tuple] | None = None,
    max_points: int = 5000,
    seed: int = 0,
) -> str:
    """Scatter of each sample's p(noisy) against its loss, with the model's posterior curve(s).

    ``curves`` maps a legend label to ``(x, y)`` or ``(x, y, matplotlib line style dict)``.
    """
    losses, p_noisy = np.asarray(losses), np.asarray(p_noisy)
    idx = np.arange(losses.size)
    if losses.size > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(losses.size, max_points, replace=False))
    fig, (ax,) = _figure()
    kw = dict(s=10, alpha=0.5, linewidths=0, zorder=2)
    if noise_mask is not None and not _one_group(noise_mask):
        m = np.asarray(noise_mask, bool)[idx]
        ax.scatter(losses[idx][~m], p_noisy[idx][~m], color=CLEAN, label="clean", **kw)
        ax.scatter(losses[idx][m], p_noisy[idx][m], color=NOISY, label="noisy", **kw)
    else:
        ax.scatter(losses[idx], p_noisy[idx], color=UNKNOWN, label="samples", **kw)
    for name, curve in (curves or {}).items():
        x, y = curve[0], curve[1]
        style = dict(curve[2]) if len(curve) > 2 else {}
        if not style:
            style = dict(MODEL_STYLE.get(name.split()[0].lower(), {}))
        ax.plot(x, y, lw=style.pop("lw", 1.5), label=name, zorder=1, **style)
    ax.axhline(0.5, color="0.5", lw=0.8, ls=":")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("cross-entropy loss (w.r.t. the given label)")
    ax.set_ylabel("p(noisy | loss)")
    ax.set_title("Posterior probability of a wrong label")
    ax.legend(loc="best", markerscale=2, fontsize="small")
    return _save(fig, path)
