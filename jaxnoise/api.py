"""The top of the public API: a config by name and a run from Python.

    import jaxnoise
    config = jaxnoise.get_config("quickstart", noise=0.4, epochs=20)
    summary = jaxnoise.train(config, "runs/mine")
    run = jaxnoise.load_run("runs/mine")          # predict with its newest checkpoint

The other public names are the library's own functions (``jaxnoise/__init__.py``).
"""

from __future__ import annotations

from typing import Any

import ml_collections

from jaxnoise import config as config_lib
from jaxnoise import configs


def get_config(name: str = "default", /, **overrides: Any) -> ml_collections.ConfigDict:
    """The ConfigDict of preset ``name`` (``"quickstart"``, ``"cifar10_m_dyr_h"``,
    ``"cifar10n_ce:aggre"``: ``jaxnoise train --help`` lists them) with ``overrides`` set by field
    name: a shared field (``noise=0.4``), a field of the method's block (``batch_size=64``),
    or a dotted path (``**{"data.root": "/data/cifar10"}``). Unknown names and presets are
    refused with one-line ``ValueError``s; values are checked by :func:`validate` (and by
    :func:`train` before any compute)."""
    return config_lib.override(configs.get(name), **overrides)


def train(
    config: ml_collections.ConfigDict, workdir: str, *, fresh: bool = False
) -> dict[str, Any]:
    """Train ``config`` in ``workdir`` (created if missing; resumed if it holds a run of the same
    config; ``fresh=True`` discards one of another config) and return the run's summary: a dict
    with ``history`` (one dict per epoch, as in ``metrics.jsonl``), ``best_acc``, ``last_acc``,
    ``epochs_done``, ``interrupted``, ``checkpoint_at``. The workdir then holds
    ``per_sample.npz`` (per training sample: ``loss``, ``p_noisy``, ``prediction``,
    ``noisy_label``, ...; (N,) arrays), ``label_issues.csv`` and ``figures/``. A SIGTERM or
    Ctrl-C saves and returns with ``interrupted=True``; calling again resumes exactly."""
    from jaxnoise import loops  # jax, flax, optax: only when a run starts

    return loops.train_and_evaluate(config, workdir, fresh=fresh)
