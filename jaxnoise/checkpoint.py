"""Checkpoints (orbax), config checks on resume, and clean stops on SIGTERM/SIGINT.

A checkpoint holds every array of the train state (params, optimizer, batch statistics, mixture
state, step, the running loss sum), the per-sample posteriors/predictions used by the next epoch,
the noisy labels, and JSON metadata (last completed epoch, steps done in the current epoch, best
accuracy, metric history). Randomness is derived from ``fold_in(seed, epoch, step)``, so nothing
else is needed for an exact resume, also from the middle of an epoch. The orbax step number of a
checkpoint is the number of train steps done, so checkpoints order correctly whether they were
taken at the end of an epoch or by a preemption in the middle of one.

orbax writes each checkpoint to a temporary directory and renames it when complete, so a process
killed while writing leaves the previous checkpoint restorable; the unfinished temporary
directory is removed when the next run opens the workdir.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from jaxnoise import config as config_lib

# Fields that do not change results: a resumed run may differ in these. (The coordinator address
# of a multi-process job changes when a preempted job is rescheduled, and every process has its
# own process_id, while config.json is written by process 0.)
_NON_RESULT_FIELDS = {
    "log_every_steps",
    "log_every_seconds",
    "keep_checkpoints",
    "data.cache_dir",
    "data.data_dir",
    "distributed.auto",
    "distributed.coordinator_address",
    "distributed.process_id",
}


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race orbax's threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: once, at import, before any thread writes
    os.umask(mask)
    return mask


# Files written through a temporary file get the mode a plain open() would give them (the
# temporary file's own mode is 0600), so every file of a workdir shares one permission mode.
FILE_MODE = 0o666 & ~_umask()


class WorkdirConflict(ValueError):
    """The workdir holds a run with another config (a refusal of the command line)."""


def atomic_write(path: str, write) -> None:
    """Write a file atomically: ``write(binary file)`` into a temporary file, then rename.

    A process killed while writing leaves the previous version of ``path`` (or none), never a
    truncated file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    """:func:`atomic_write` of a text file."""
    atomic_write(path, lambda f: f.write(text.encode()))


def check_workdir_config(workdir: str, resolved: dict, *, fresh: bool) -> None:
    """Refuse to resume a workdir that holds a run with a different config (unless fresh)."""
    path = os.path.join(workdir, "config.json")
    if fresh:
        names = ("checkpoints", "metrics.jsonl", "config.json", "dataset.json", "per_sample.npz")
        for name in names:
            p = os.path.join(workdir, name)
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.remove(p)
        return
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            old = config_lib.flatten(json.load(f))
    except (OSError, ValueError) as e:
        raise WorkdirConflict(
            f"workdir {workdir!r} holds an unreadable config.json ({e}); use another --workdir, "
            "or pass --fresh to discard that run and start again"
        ) from None
    new = config_lib.flatten(resolved)
    diff = sorted(
        k for k in set(old) | set(new) if k not in _NON_RESULT_FIELDS and old.get(k) != new.get(k)
    )
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:8])
        raise WorkdirConflict(
            f"workdir {workdir!r} holds a run with a different config ({shown}); use another "
            "--workdir, or pass --fresh to discard that run and start again"
        )


class Checkpointer:
    """Checkpoints of an arbitrary pytree of arrays plus JSON metadata, numbered by train step."""

    def __init__(self, workdir: str, *, keep: int = 2):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=True,
                # Remove temporary directories of saves that a killed process never finished.
                cleanup_tmp_directories=True,
            ),
        )

    @staticmethod
    def _leaves(tree: Any) -> tuple[dict, Any]:
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        return {f"leaf_{i:05d}": leaf for i, leaf in enumerate(leaves)}, treedef

    def save(self, step: int, tree: Any, meta: dict) -> None:
        """Save the pytree of (possibly sharded, multi-host) arrays; collective on all hosts.

        The arrays are copied on device first, so the caller may donate its buffers to the next
        step while orbax writes in the background.
        """
        flat, _ = self._leaves(tree)
        flat = {k: jnp.array(v, copy=True) for k, v in flat.items()}
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(flat), meta=ocp.args.JsonSave(meta)
            ),
        )

    def restore_latest(self, template: Any) -> tuple[Any, dict] | None:
        """Restore the newest checkpoint into the structure and shardings of ``template``."""
        step = self.manager.latest_step()
        if step is None:
            return None
        flat, treedef = self._leaves(template)
        target = {
            k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding) for k, v in flat.items()
        }
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
            ),
        )
        leaves = [restored.state[k] for k in sorted(restored.state)]
        if len(leaves) != treedef.num_leaves:
            raise RuntimeError(f"checkpoint {step} in {self.directory} has a different structure")
        return jax.tree_util.tree_unflatten(treedef, leaves), dict(restored.meta)

    def wait(self) -> None:
        """Block until asynchronous saves are on disk."""
        self.manager.wait_until_finished()


class PreemptionGuard:
    """Turn SIGTERM/SIGINT into a request to stop at the next safe point (a second SIGINT
    interrupts at once). ``signum`` is the first signal received."""

    def __init__(self):
        self.stop_requested = False
        self.signum: int | None = None
        self._old: dict = {}

    def _handler(self, signum, frame):
        if self.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop_requested = True
        if self.signum is None:
            self.signum = signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "stop request"

    def __enter__(self) -> PreemptionGuard:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
