"""The session's shared tiny runs (tests/conftest.py): ``bootstrap_run``, whose config is
``tests/_signal_run.py``'s ``get_config``, and ``dividemix_run``, whose config is
:func:`dividemix_config`; helpers for the tests that read them."""

from __future__ import annotations

import shutil
import subprocess

from configs import quickstart_dividemix
from tests._signal_run import set_fields


def dividemix_config(**overrides):
    """quickstart_dividemix shrunk: 500 digits at 90% symmetric noise (so the loss-history path
    of the official ``r == 0.9`` branch runs, and lambda_u / p_threshold come from the paper's
    table), width 8, 3 epochs (warm-up epoch 1, semi-supervised 2 and 3)."""
    c = quickstart_dividemix.get_config()
    c.data.subset_per_class = 50
    c.width = 8
    c.noise = 0.9
    c.epochs = 3
    c.lr_milestones = (3,)
    c.dividemix.warm_up = 1
    c.dividemix.lambda_u_rampup = 1.0
    c.dividemix.loss_history = 2
    c.log_every_seconds = 0.0
    return set_fields(c, **overrides)


def copy_run(workdir, destination):
    """A copy of a shared run's workdir (for a test that writes into it)."""
    shutil.copytree(workdir, destination)
    return destination


def record_returns(mp, module, name: str) -> list:
    """Patch ``module.name`` (with ``mp``, a pytest MonkeyPatch) to also append each value it
    returns to the list returned here (e.g. a run's compiled pieces)."""
    returned, original = [], getattr(module, name)

    def recording(*args, **kwargs):
        returned.append(original(*args, **kwargs))
        return returned[-1]

    mp.setattr(module, name, recording)
    return returned


def cli_in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """``jaxnoise ARGS`` called in this process: its exit code and captured stdout / stderr."""
    from jaxnoise import cli

    try:
        code = cli.main(list(args))
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)
