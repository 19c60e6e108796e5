"""jaxnoise: learning with noisy labels in JAX/Flax, and finding the wrong labels.

Layered like optax: pure functions at the bottom, a run at the top. Every name below is loaded
on first use (``import jaxnoise`` itself imports neither jax nor flax).

Find the wrong labels in memory (numpy arrays in, numpy arrays out; ``jaxnoise.label_issues``):
    find_label_issues      indices of suspected wrong labels, most suspect first
    label_quality_scores   a score per sample (1 - p(noisy); low = suspect)
    label_issues_table     cleanlab's columns (+ p_noisy, id): dict of arrays or a DataFrame
    fit_noise_model        the fitted mixture on its own: p(noisy), estimated count
    NoiseModel             what fit_noise_model returns
    knn_pred_probs         out-of-sample class probabilities from features (k nearest others)

The noise model (jitted, on the device; ``jaxnoise.mixture``):
    fit_bmm, fit_gmm       two-component beta / Gaussian mixture fitted by EM to a loss array
    posterior_noisy        p(noisy | loss) under a fitted mixture

The loss pieces for your own Flax/optax loop (``jaxnoise.losses``):
    mix, sample_mixup_lambda, dynamic_mixup_lambda, bootstrap_targets, mixup_bootstrap_loss,
    class_balance_regularizer

Runs (``jaxnoise.api``, ``jaxnoise.config``, ``jaxnoise.inference``):
    get_config             a preset config by name, with fields overridden
    validate               check a config without loading anything
    train                  train a config in a workdir; returns the summary
    load_run               a finished run's model, to predict on new inputs
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "find_label_issues": "jaxnoise.label_issues",
    "label_quality_scores": "jaxnoise.label_issues",
    "label_issues_table": "jaxnoise.label_issues",
    "fit_noise_model": "jaxnoise.label_issues",
    "NoiseModel": "jaxnoise.label_issues",
    "knn_pred_probs": "jaxnoise.label_issues",
    "fit_bmm": "jaxnoise.mixture",
    "fit_gmm": "jaxnoise.mixture",
    "posterior_noisy": "jaxnoise.mixture",
    "mix": "jaxnoise.losses",
    "sample_mixup_lambda": "jaxnoise.losses",
    "dynamic_mixup_lambda": "jaxnoise.losses",
    "bootstrap_targets": "jaxnoise.losses",
    "mixup_bootstrap_loss": "jaxnoise.losses",
    "class_balance_regularizer": "jaxnoise.losses",
    "get_config": "jaxnoise.api",
    "validate": "jaxnoise.config",
    "train": "jaxnoise.api",
    "load_run": "jaxnoise.inference",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'jaxnoise' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
