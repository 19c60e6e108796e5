"""Shared by the benchmark scripts: the project root, the commit measured, and a bootstrap
method's fresh state without a workdir."""

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_commit() -> str:
    """Short hash of the checked-out jaxnoise commit (written beside every result)."""
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()


def bootstrap_state(config, ds, mesh=None) -> tuple:
    """(graphdef, optimizer direction, train state, per-sample aux) of a fresh run of a bootstrap
    method, as ``jaxnoise.bootstrap.loop.build`` makes them (the state replicated over ``mesh``,
    the aux sharded by sample; None: one device)."""
    from jaxnoise.bootstrap import loop

    pieces, tree = loop.build(config, ds, ds.mean_std(), mesh)
    return pieces.graphdef, pieces.tx, tree["state"], tree["aux"]
