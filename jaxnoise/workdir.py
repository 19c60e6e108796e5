"""The run files of a workdir besides the checkpoints: config.json, dataset.json, atomic writes.

A workdir holds one run: ``config.json`` (the resolved config), ``dataset.json`` (what the
samples and classes were), ``metrics.jsonl``, ``per_sample.npz`` and ``checkpoints/``. Resuming
is refused when the config (:func:`check_workdir_config`) or the dataset
(:func:`check_same_dataset`) differs from the run already there. This module imports no other
jaxnoise module, so :mod:`jaxnoise.checkpoint` can re-export it without importing config.py.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jaxnoise import data as data_lib

# Fields that do not change results: a resumed run may differ in these. (The coordinator address
# of a multi-process job changes when a preempted job is rescheduled, and every process has its
# own process_id, while config.json is written by process 0.)
_NON_RESULT_FIELDS = {
    "log_every_steps",
    "log_every_seconds",
    "keep_checkpoints",
    "compilation_cache",
    "data.cache_dir",
    "data.data_dir",
    "distributed.auto",
    "distributed.coordinator_address",
    "distributed.process_id",
}

# What --fresh removes: everything a run writes into its workdir.
RUN_FILES = ("checkpoints", "metrics.jsonl", "config.json", "dataset.json", "per_sample.npz")


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


def atomic_write(path: str, write: Callable[[IO[bytes]], Any]) -> None:
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


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b": value} (as config.flatten, for the JSON of config.json)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_workdir_config(workdir: str, resolved: dict, *, fresh: bool) -> None:
    """Refuse to resume a workdir that holds a run with a different config.

    With ``fresh``, the run files of the workdir are removed instead (other files stay).
    """
    if fresh:
        for name in RUN_FILES:
            p = os.path.join(workdir, name)
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.remove(p)
        return
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            old = _flatten(json.load(f))
    except (OSError, ValueError, AttributeError) as e:  # AttributeError: JSON but not an object
        raise WorkdirConflict(
            f"workdir {workdir!r} holds an unreadable config.json ({e}); use another --workdir, "
            "or pass --fresh to discard that run and start again"
        ) from None
    new = _flatten(resolved)
    diff = sorted(
        k for k in set(old) | set(new) if k not in _NON_RESULT_FIELDS and old.get(k) != new.get(k)
    )
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:8])
        raise WorkdirConflict(
            f"workdir {workdir!r} holds a run with a different config ({shown}); use another "
            "--workdir, or pass --fresh to discard that run and start again"
        )


def write_run_info(workdir: str, resolved: dict, ds: data_lib.Dataset, config: Any) -> None:
    """config.json and dataset.json (class names, image paths, whether the noise is known).

    Written atomically: a process killed meanwhile leaves the previous files, never torn ones.
    """
    atomic_write_text(
        os.path.join(workdir, "config.json"), json.dumps(resolved, indent=2, sort_keys=True)
    )
    info = {
        "name": ds.name,
        "class_names": list(ds.class_names),
        "num_train": int(ds.train_images.shape[0]),
        # With noise_kind="none" the labels are taken as given: which are wrong is unknown.
        "noise_known": config.noise_kind != "none",
        "train_paths": list(ds.train_paths) if ds.train_paths else None,
        # the samples' own identifiers (tfds id, folder-relative path, features train_ids)
        "train_ids": ds.train_ids.tolist() if ds.train_ids is not None else None,
    }
    atomic_write_text(os.path.join(workdir, "dataset.json"), json.dumps(info))


def check_same_dataset(workdir: str, ds: data_lib.Dataset) -> None:
    """Refuse to resume checkpoints of a run whose dataset had other samples or classes."""
    path = os.path.join(workdir, "dataset.json")
    if not (os.path.exists(path) and os.path.isdir(os.path.join(workdir, "checkpoints"))):
        return
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return  # written atomically, so unreadable only if edited by hand: the restore decides
    now = {"num_train": int(ds.train_images.shape[0]), "class_names": list(ds.class_names)}
    diff = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in now.items() if old.get(k) != v]
    if diff:
        raise ValueError(
            f"workdir {workdir!r} holds a run on a different dataset ({'; '.join(diff)[:300]}); "
            "use another --workdir, or pass --fresh to discard that run and start again"
        )
