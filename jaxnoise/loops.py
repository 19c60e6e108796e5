"""Train a run: validate its config, open it on the run kit, hand it to its method's loop.

    summary = train_and_evaluate(config, workdir)

The loop is picked from ``LOOPS`` by the config's block: the bootstrap methods of Arazo et al.
(``jaxnoise.bootstrap.loop``) or DivideMix (``jaxnoise.dividemix.loop``). Each loop stands on
``jaxnoise.runkit`` (set-up, checkpoints, metrics, stops, outputs) and imports no other loop.
"""

from __future__ import annotations

import jax
import ml_collections

from jaxnoise import compile_cache, parallel, runkit, stops
from jaxnoise import config as config_lib
from jaxnoise.bootstrap import loop as bootstrap_loop
from jaxnoise.dividemix import loop as dividemix_loop

LOOPS = {"bootstrap": bootstrap_loop.train, "dividemix": dividemix_loop.train}


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    fresh: bool = False,
    stop_after_epoch: int | None = None,
) -> dict:
    """Train and evaluate; resumes from ``workdir`` if it holds a run of the same config.

    ``stop_after_epoch`` ends this call after that epoch's checkpoint; calling again resumes.

    SIGTERM or SIGINT (a preemption, Ctrl-C) lets the current train step finish, saves a
    checkpoint where the method can resume exactly (the bootstrap methods: that step;
    DivideMix: the last finished epoch) and returns with ``summary["interrupted"] = True``
    (``summary["signal"]`` names the signal); calling again resumes and gives exactly the
    metrics of an uninterrupted run. Before the first train step (nothing new to save) a signal
    ends the process at once (``jaxnoise.stops``). A non-finite loss raises FloatingPointError
    and keeps the last good checkpoint. The workdir is locked for the call: another process
    on it is refused (``workdir.WorkdirBusy``).
    """
    config_lib.validate(config)
    # After jax.distributed.initialize, which installs its own SIGTERM notifier: ours replaces it.
    parallel.initialize(config)
    compile_cache.configure(config.compilation_cache)  # before the first compile
    with stops.PreemptionGuard(exit_when_idle=jax.process_count() == 1) as guard:
        run = runkit.open_run(config, workdir, fresh=fresh, guard=guard)
        try:
            return LOOPS[config_lib.block_of(config.method)](run, stop_after_epoch=stop_after_epoch)
        finally:
            runkit.close(run)
