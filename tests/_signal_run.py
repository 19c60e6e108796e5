"""A tiny jaxnoise run through main.py, with fault-injection hooks for tests/test_reliability.py.

    python tests/_signal_run.py --config tests/_signal_run.py --workdir W [--fresh] [--config.X=Y]

This file is both the script and its config (``get_config``: the quickstart shrunk as in
tests/test_train.py ``tiny_config``: width-8 CNN on digits, 3 epochs of 23 steps, M-DYR-H with
bootstrapping from epoch 2). The run goes through ``main.main`` unchanged, so exit codes and
messages are main.py's. Hooks, set by environment variables, make the moment a signal arrives
deterministic (the test process waits for a marker line, then signals):

- ``JAXNOISE_TEST_PAUSE_AT=E:S``: after train step S (0-based) of epoch E has run, print
  ``PAUSED E S`` and wait until a stop has been requested (SIGTERM/SIGINT reached the
  PreemptionGuard), then let the run continue: the signal is handled exactly after that step.
- ``JAXNOISE_TEST_HANG_SAVE=N``: when orbax is about to commit (rename) checkpoint N, everything
  written to its temporary directory, print ``HANG_SAVE N <tmp dir>`` and block forever: the
  test sends SIGKILL while the checkpoint write is unfinished.
- ``JAXNOISE_TEST_SLOW_SAVE=N:SECONDS``: the same moment of checkpoint N prints ``SLOW_SAVE N``
  and waits SECONDS before committing (a save in flight long enough to signal during it).
- ``JAXNOISE_TEST_ENOSPC=N``: the save of checkpoint N raises ENOSPC (a full disk).
- ``JAXNOISE_TEST_LONG_FIRST_COMPILE=1``: the first train step prints ``FIRST_COMPILE`` and
  spends 60 s in C (as a long XLA compile does: the interpreter runs no signal handler then).

- ``JAXNOISE_TEST_SLOW=SECONDS``: every train step, while it executes, prints ``STEP N`` (N its
  train step count) and sleeps SECONDS (a host callback inside the compiled step): slow
  steps whose execution, not their dispatch, the test can follow.

Numerical faults:

- ``JAXNOISE_TEST_LR=E:LR``: learning rate LR from epoch E on (e.g. ``2:1e30`` diverges).
- ``JAXNOISE_TEST_TRACK=E:const,E:nan``: the tracking pass of epoch E returns all-equal losses
  (a degenerate mixture fit) or a NaN loss (a diverged model).
"""

from __future__ import annotations

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The quickstart shrunk: width-8 CNN, 3 epochs, bootstrapping from epoch 2 (tests/test_cli.py
# runs the same through the command line: ``flags(SHRUNK)``).
SHRUNK = {
    "width": 8,
    "epochs": 3,
    "lr_milestones": (2,),
    "bootstrap.start_epoch": 2,
    "bootstrap.dynamic_start_epoch": 2,
    "bootstrap.soft_to_hard_start_epoch": 3,
    "bootstrap.temperature_epochs": 2,
}


def get_config():
    """The tiny run (also what the tests compare against)."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from configs import quickstart

    return set_fields(quickstart.get_config(), **SHRUNK)


def set_fields(c, **fields):
    """Set config fields by name (``jaxnoise.config.override``): a shared field, a field of the
    config's method block (``batch_size`` is ``bootstrap.batch_size`` on a bootstrap config), or
    a dotted path."""
    from jaxnoise import config as config_lib

    return config_lib.override(c, **fields)


def flags(fields: dict) -> list[str]:
    """The same fields as command-line overrides: ``--config.NAME=VALUE``."""
    return [f"--config.{name}={value}" for name, value in fields.items()]


def _install_hooks() -> None:
    from jaxnoise import stops
    from jaxnoise.bootstrap import loop as bootstrap_loop
    from jaxnoise.bootstrap import step as step_lib

    guards: list = []

    class RecordingGuard(stops.PreemptionGuard):
        def __enter__(self):
            guards.append(self)
            return super().__enter__()

    stops.PreemptionGuard = RecordingGuard

    pause = os.environ.get("JAXNOISE_TEST_PAUSE_AT")
    if pause:
        pause_at = tuple(int(v) for v in pause.split(":"))
        make_train_step = step_lib.make_train_step

        def patched_make_train_step(*args, **kwargs):
            step_fn = make_train_step(*args, **kwargs)
            spe = []  # steps per epoch, from the first call's data

            def step(state, data, aux, perm):
                import jax

                if not spe:
                    b = args[2].bootstrap
                    n = data["images"].shape[0]
                    spe.append(len(step_lib.epoch_batch_sizes(n, b.batch_size, b.drop_last)))
                count = int(state["step"])  # the position of the step about to run
                epoch, s = count // spe[0] + 1, count % spe[0]
                out = step_fn(state, data, aux, perm)
                if (epoch, s) == pause_at:
                    jax.block_until_ready(out)
                    print(f"PAUSED {epoch} {s}", flush=True)
                    deadline = time.time() + 600  # a hang guard, not a time limit
                    while not guards[-1].stop_requested and time.time() < deadline:
                        time.sleep(0.01)
                return out

            return step

        step_lib.make_train_step = patched_make_train_step

    slow = os.environ.get("JAXNOISE_TEST_SLOW")
    if slow:
        import jax

        make_update = step_lib.make_update

        def tick(count):
            print(f"STEP {int(count)}", flush=True)
            time.sleep(float(slow))

        def slow_make_update(*args):
            update = make_update(*args)

            def slowed(state, *a):
                jax.debug.callback(tick, state["step"], ordered=True)
                return update(state, *a)

            return slowed

        step_lib.make_update = slow_make_update

    lr = os.environ.get("JAXNOISE_TEST_LR")
    if lr:
        from jaxnoise import schedule

        from_epoch, value = int(lr.split(":")[0]), float(lr.split(":")[1])
        lr_for_epoch = schedule.lr_for_epoch  # read by the in-graph schedule's table
        schedule.lr_for_epoch = lambda c, e: value if e >= from_epoch else lr_for_epoch(c, e)

    track = os.environ.get("JAXNOISE_TEST_TRACK")
    if track:
        modes = {int(e): m for e, m in (item.split(":") for item in track.split(","))}
        track_and_fit = bootstrap_loop.track_and_fit

        def patched_track_and_fit(run, pieces, state, aux, epoch):
            forward = pieces.forward

            def tracking(*args, **kwargs):
                loss, logits = forward(*args, **kwargs)
                if modes.get(epoch) == "const":
                    loss = loss * 0.0 + 0.7
                elif modes.get(epoch) == "nan":
                    loss = loss.at[0].set(float("nan"))
                return loss, logits

            pieces.forward = tracking
            try:
                return track_and_fit(run, pieces, state, aux, epoch)
            finally:
                pieces.forward = forward

        bootstrap_loop.track_and_fit = patched_track_and_fit

    hang = os.environ.get("JAXNOISE_TEST_HANG_SAVE")
    if hang:
        from orbax.checkpoint._src.path import atomicity

        cls = atomicity.AtomicRenameTemporaryPath
        finalize = cls.finalize

        async def hanging_finalize(self):
            if self.get_final().name == hang:
                print(f"HANG_SAVE {hang} {self.get()}", flush=True)
                while True:  # the test kills us here
                    time.sleep(1)
            return await finalize(self)

        cls.finalize = hanging_finalize

    slow_save = os.environ.get("JAXNOISE_TEST_SLOW_SAVE")
    if slow_save:
        from orbax.checkpoint._src.path import atomicity

        step_name, seconds = slow_save.split(":")
        cls = atomicity.AtomicRenameTemporaryPath
        finalize_slowly = cls.finalize

        async def slow_finalize(self):
            if self.get_final().name == step_name:
                print(f"SLOW_SAVE {step_name}", flush=True)
                time.sleep(float(seconds))
            return await finalize_slowly(self)

        cls.finalize = slow_finalize

    if os.environ.get("JAXNOISE_TEST_LONG_FIRST_COMPILE"):  # a compile the interpreter waits in
        import ctypes

        make_first = step_lib.make_train_step

        def long_compiling_step(*args, **kwargs):
            step_fn = make_first(*args, **kwargs)

            def step(*a):
                print("FIRST_COMPILE", flush=True)
                ctypes.CDLL(None).sleep(60)  # in C, as XLA: Python's own handlers wait
                return step_fn(*a)

            return step

        step_lib.make_train_step = long_compiling_step

    enospc = os.environ.get("JAXNOISE_TEST_ENOSPC")
    if enospc:
        import errno

        from jaxnoise import checkpoint as ckpt_lib

        save = ckpt_lib.Checkpointer.save

        def full_disk_save(self, step, *args, **kwargs):
            if step == int(enospc):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.directory)
            return save(self, step, *args, **kwargs)

        ckpt_lib.Checkpointer.save = full_disk_save


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    os.chdir(ROOT)
    import signal

    import main

    signal.signal(signal.SIGINT, main._interrupted_while_starting)  # as main.py as a script
    from absl import app

    _install_hooks()
    app.run(main.main, flags_parser=main.parse_flags)
