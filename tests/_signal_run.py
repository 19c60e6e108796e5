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

- ``JAXNOISE_TEST_SLOW=SECONDS``: every train step, while it executes, prints ``STEP N`` (N its
  optimizer step count) and sleeps SECONDS (a host callback inside the compiled step): slow
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


def get_config():
    """The tiny run (also what the tests compare against)."""
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from configs import quickstart

    c = quickstart.get_config()
    c.width = 8
    c.epochs = 3
    c.lr_milestones = (2,)
    c.bootstrap_start_epoch = 2
    c.dynamic_start_epoch = 2
    c.soft_to_hard_start_epoch = 3
    c.temperature_epochs = 2
    return c


def _install_hooks() -> None:
    from jaxnoise import checkpoint as ckpt_lib
    from jaxnoise import train

    guards: list = []

    class RecordingGuard(ckpt_lib.PreemptionGuard):
        def __enter__(self):
            guards.append(self)
            return super().__enter__()

    ckpt_lib.PreemptionGuard = RecordingGuard

    pause = os.environ.get("JAXNOISE_TEST_PAUSE_AT")
    if pause:
        pause_at = tuple(int(v) for v in pause.split(":"))
        make_train_step = train.make_train_step

        def patched_make_train_step(*args, **kwargs):
            step_fn = make_train_step(*args, **kwargs)
            spe = []  # steps per epoch, from the first call's data

            def step(state, data, aux, perm):
                import jax

                from jaxnoise import step as step_lib

                if not spe:
                    c = args[2]
                    n = data["images"].shape[0]
                    spe.append(len(step_lib.epoch_batch_sizes(n, c.batch_size, c.drop_last)))
                count = int(state["opt_state"].count)  # the position of the step about to run
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

        train.make_train_step = patched_make_train_step

    slow = os.environ.get("JAXNOISE_TEST_SLOW")
    if slow:
        import jax

        from jaxnoise import step as step_lib

        make_update = step_lib.make_update

        def tick(count):
            print(f"STEP {int(count)}", flush=True)
            time.sleep(float(slow))

        def slow_make_update(*args):
            update = make_update(*args)

            def slowed(state, *a):
                jax.debug.callback(tick, state["opt_state"].count, ordered=True)
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
        forward_all = train.forward_all

        def patched_forward_all(*args, epoch: int = 0, **kwargs):
            loss, logits = forward_all(*args, epoch=epoch, **kwargs)
            if modes.get(epoch) == "const":
                loss = loss * 0.0 + 0.7
            elif modes.get(epoch) == "nan":
                loss = loss.at[0].set(float("nan"))
            return loss, logits

        train.forward_all = patched_forward_all

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


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    os.chdir(ROOT)
    from absl import app

    import main

    _install_hooks()
    app.run(main.main, flags_parser=main.parse_flags)
