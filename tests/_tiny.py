"""The tiny configs of the shared test runs (tests/conftest.py) and helpers for tests that read
them. The M-DYR-H one is ``tests/_signal_run.py``'s ``get_config`` (that file is also a script
that subprocess tests run)."""

from __future__ import annotations

import shutil

from configs import quickstart_dividemix
from tests._signal_run import get_config as bootstrap_config  # noqa: F401  (re-exported)


def dividemix_config(**overrides):
    """quickstart_dividemix shrunk: the 1,500 training digits at 90% symmetric noise (so the
    loss-history path of the official ``r == 0.9`` branch runs, and lambda_u / p_threshold come
    from the paper's table), a width-8 CNN, epochs 0..5: warm-up 0..3 at lr 0.05, then the
    semi-supervised epochs 4 and 5 at 0.005.

    Chosen from runs on a 2-core CPU: after four warm-up epochs the first division finds the
    flipped labels (AUROC 0.78 / 0.75 for net1 / net2; after one warm-up epoch on 500 digits it
    was 0.52), and the lower rate keeps the semi-supervised epochs from undoing it (at lr 0.05
    the final division's AUROC fell to 0.65, at 0.005 it is 0.70)."""
    c = quickstart_dividemix.get_config()
    c.width = 8
    c.noise = 0.9
    c.epochs = 5
    c.lr_milestones = (4,)
    c.dividemix_warm_up = 4
    c.lambda_u_rampup = 1.0
    c.dividemix_loss_history = 2
    c.log_every_seconds = 0.0
    for k, v in overrides.items():
        setattr(c, k, v)
    return c


def copy_run(workdir, destination):
    """A copy of a shared run's workdir (for a test that writes into it)."""
    shutil.copytree(workdir, destination)
    return destination
