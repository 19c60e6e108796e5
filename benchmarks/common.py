"""Shared by the benchmark scripts: the project root, the commit measured, and a method's fresh
pieces without a workdir."""

import os
import subprocess
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_commit() -> str:
    """Short hash of the checked-out jaxnoise commit (written beside every result)."""
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()


def standin_run(config, ds, mesh=None) -> types.SimpleNamespace:
    """What a method's ``loop.build(run)`` reads of a ``jaxnoise.runkit.Run``: the config, the
    dataset, the mesh (None: one device) and the input normalisation (the dataset's own mean /
    std), for scripts that time or train the real pieces without a workdir, data placement or
    checkpointer (``runkit.open_run`` makes the full ``Run``)."""
    from jaxnoise import parallel

    return types.SimpleNamespace(config=config, ds=ds,
                                 mesh=parallel.make_mesh(1) if mesh is None else mesh,
                                 mean_std=ds.mean_std())  # fmt: skip


def bootstrap_state(config, ds, mesh=None) -> tuple:
    """(graphdef, optimizer direction, train state, per-sample aux) of a fresh run of a bootstrap
    method, as ``jaxnoise.bootstrap.loop.build`` makes them (the state replicated over ``mesh``,
    the aux sharded by sample; None: one device)."""
    from jaxnoise.bootstrap import loop

    pieces, tree = loop.build(standin_run(config, ds, mesh))
    return pieces.graphdef, pieces.tx, tree["state"], tree["aux"]
