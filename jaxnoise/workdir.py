"""The run files of a workdir besides the checkpoints (config.json, dataset.json, atomic writes),
the workdir's lock, and the checks that name a workdir's problems before any data is loaded.

A workdir holds one run: ``config.json`` (the resolved config), ``dataset.json`` (what the
samples and classes were), ``metrics.jsonl``, ``per_sample.npz``, ``checkpoints/`` and ``.lock``.
Resuming is refused when the config (:func:`check_workdir_config`) or the dataset
(:func:`check_same_dataset`) differs from the run already there. A run starts with
:func:`check_writable` (a file, below a file, not writable, read-only, full: one line each),
:func:`check_space` (room for a checkpoint) and :func:`lock` (one run per workdir); an error of a
save (disk full, quota, read-only, I/O) is named by :func:`save_failed`. Of jaxnoise it imports
only ``fields`` (the one ``flatten``), so :mod:`jaxnoise.checkpoint` can use it without importing
the validator.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from jaxnoise.fields import flatten

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
    "tensorboard",
    "data.cache_dir",
    "data.data_dir",
    "distributed.auto",
    "distributed.coordinator_address",
    "distributed.process_id",
}

# What --fresh removes: everything a run writes into its workdir.
RUN_FILES = (
    "checkpoints",
    "metrics.jsonl",
    "config.json",
    "dataset.json",
    "per_sample.npz",
    "outputs.json",
    "label_issues.csv",
    "label_issues_summary.json",
    "figures",
    "tensorboard",
)


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


class WorkdirBusy(ValueError):
    """Another process holds the workdir's lock: a run is going on in it."""


class WorkdirError(ValueError):
    """A workdir that cannot hold a run: a file, below a file, not writable, or full."""


class SaveFailed(WorkdirError):
    """A checkpoint could not be written (disk full, quota, read-only filesystem, I/O error)."""


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
            old = flatten(json.load(f))
    except (OSError, ValueError, AttributeError) as e:  # AttributeError: JSON but not an object
        raise WorkdirConflict(
            f"workdir {workdir!r} holds an unreadable config.json ({e}); use another --workdir, "
            "or pass --fresh to discard that run and start again"
        ) from None
    if "method" in old and not ({"bootstrap.batch_size", "dividemix.batch_size"} & set(old)):
        raise WorkdirConflict(
            f"workdir {workdir!r} holds a run of an earlier jaxnoise (a flat config.json, before "
            "each method's fields moved to config.bootstrap / config.dividemix), whose "
            "checkpoints this version cannot resume; use another --workdir, or pass --fresh to "
            "discard that run and start again"
        )
    new = flatten(resolved)
    diff = sorted(
        k for k in set(old) | set(new) if k not in _NON_RESULT_FIELDS and old.get(k) != new.get(k)
    )
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:8])
        raise WorkdirConflict(
            f"workdir {workdir!r} holds a run with a different config ({shown}); use another "
            "--workdir, or pass --fresh to discard that run and start again"
        )


def write_run_info(
    workdir: str,
    resolved: dict,
    ds: data_lib.Dataset,
    config: Any,
    noise_known: bool | None = None,
    mean_std: tuple | None = None,
) -> None:
    """config.json and dataset.json (class names, image paths, whether the noise is known:
    ``noise_known``, ``metrics.noise_known`` of the run's noise mask; None: noise_kind != none;
    the model's inputs: their shape, dtype and the normalisation ``mean_std``, which
    :mod:`jaxnoise.inference` applies to new data).

    Written atomically: a process killed meanwhile leaves the previous files, never torn ones.
    """
    atomic_write_text(
        os.path.join(workdir, "config.json"), json.dumps(resolved, indent=2, sort_keys=True)
    )
    info = {
        "name": ds.name,
        "class_names": list(ds.class_names),
        "num_train": int(ds.train_images.shape[0]),
        # With noise_kind="none" (or no label flipped) which labels are wrong is unknown.
        "noise_known": config.noise_kind != "none" if noise_known is None else bool(noise_known),
        "train_paths": list(ds.train_paths) if ds.train_paths else None,
        # the samples' own identifiers (tfds id, folder-relative path, features train_ids)
        "train_ids": ds.train_ids.tolist() if ds.train_ids is not None else None,
    }
    if mean_std is not None:  # float32 values, exact as JSON floats
        info["inputs"] = {
            "shape": list(ds.image_shape),
            "dtype": str(ds.train_images.dtype),
            "mean": [float(v) for v in mean_std[0]],
            "std": [float(v) for v in mean_std[1]],
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


# ------------------------------------------------------------------------------------------------
# One run per workdir.

LOCK_FILE = ".lock"  # not among RUN_FILES: --fresh keeps it (deleting a held lock breaks it)
_held: dict[str, WorkdirLock] = {}  # realpath of the lock file -> this process's lock on it


class WorkdirLock:
    """This process's exclusive lock on a workdir; held until :meth:`release` or the process
    ends (the kernel releases it then, also after SIGKILL)."""

    def __init__(self, path: str, fd: int):
        self.path, self._fd = path, fd

    def release(self) -> None:
        """Give the lock up (the lock file stays: deleting it would race another process)."""
        if self._fd is not None:
            _held.pop(os.path.realpath(self.path), None)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fd: int) -> str:
    """Who holds a lock, from its lock file: 'pid 123 on host, started 2026-01-01 12:00:00'."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        return f"pid {int(info['pid'])} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown: the lock is being taken"  # the holder has not written it yet


def lock(workdir: str) -> WorkdirLock:
    """Take the workdir's lock (``WORKDIR/.lock``) for this process, or :class:`WorkdirBusy`.

    An OS lock (``flock``) held for the life of the process: a run that dies, even by SIGKILL,
    frees it, so it never blocks its own resume. The lock file records the holder's pid, host
    and start time, which the refusal names. Within one process the lock is re-entrant (the same
    handle is returned). The workdir must exist (:func:`check_writable` creates it). On several
    hosts only process 0 should take it (the caller decides): the others' refusal would stop the
    job. A child process made by ``fork`` shares the lock while it lives. On a network
    filesystem the lock is only as good as its ``flock`` (NFSv4 implements it with byte-range
    locks).
    """
    path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    if os.path.realpath(path) in _held:
        return _held[os.path.realpath(path)]
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise WorkdirBusy(
            f"workdir {workdir!r} is in use by another run ({holder}); wait for it to end or "
            "stop it, or pass another --workdir"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started})
    os.ftruncate(fd, 0)
    os.pwrite(fd, (info + "\n").encode(), 0)
    handle = _held[os.path.realpath(path)] = WorkdirLock(path, fd)
    return handle


# ------------------------------------------------------------------------------------------------
# Workdir problems, named before any data is loaded.

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _write_error(workdir: str, e: OSError) -> WorkdirError:
    """The one-line error of a failed write in (or creation of) the workdir."""
    where, path = f"workdir {workdir!r}", os.path.abspath(workdir)
    if e.filename and not os.path.abspath(e.filename).startswith(path):  # creating a parent
        where += f" (creating {e.filename})"
    if e.errno in (errno.EACCES, errno.EPERM):
        return WorkdirError(
            f"{where} is not writable (permission denied); change its "
            "permissions or pass another --workdir"
        )
    if e.errno == errno.EROFS:
        return WorkdirError(
            f"{where} is on a read-only filesystem; pass a --workdir on a writable one"
        )
    if e.errno in _NO_SPACE:
        return WorkdirError(
            f"no space left for {where} ({e.strerror}); free space there or "
            "pass a --workdir on another filesystem"
        )
    return WorkdirError(f"{where} cannot be written ({e.strerror}); pass another --workdir")


def _existing(path: str) -> str:
    """The deepest part of ``path`` that exists (``path`` itself if it does)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _probe(folder: str) -> None:
    """Create, write, sync and remove a small file in ``folder`` (OSError if it cannot)."""
    probe = os.path.join(folder, f".write-probe-{os.getpid()}")
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"\0" * 4096)
        os.fsync(fd)
    finally:
        os.close(fd)
        os.remove(probe)


def check_writable(workdir: str) -> None:
    """Create the workdir if missing and check a run can write in it, or a one-line
    :class:`WorkdirError`: the path is a file, lies below a file, is not writable, is on a
    read-only filesystem, or has no space left. Folders it created are removed if it fails."""
    path, existing = os.path.abspath(workdir), _existing(workdir)
    if existing == path and not os.path.isdir(path):
        raise WorkdirError(f"workdir {workdir!r} is a file, not a folder; pass another --workdir")
    if not os.path.isdir(existing):
        raise WorkdirError(
            f"workdir {workdir!r} lies below {existing!r}, which is a file, not "
            "a folder; pass another --workdir"
        )
    created = []  # the folders this call makes, outermost first
    p = path
    while p != existing:
        created.insert(0, p)
        p = os.path.dirname(p)
    try:
        for folder in list(created):
            try:
                os.mkdir(folder)
            except FileExistsError:  # another process (of a multi-process run) made it first
                if not os.path.isdir(folder):
                    raise
                created.remove(folder)
        _probe(path)
        checkpoints = os.path.join(path, "checkpoints")
        if os.path.isdir(checkpoints):
            _probe(checkpoints)
    except OSError as e:
        for folder in reversed(created):
            try:
                os.rmdir(folder)
            except OSError:
                break
        raise _write_error(workdir, e) from None


def _size(nbytes: float) -> str:
    """'1.5 GiB'."""
    units = ("bytes", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while nbytes >= 1024 and i < len(units) - 1:
        nbytes, i = nbytes / 1024, i + 1
    return f"{nbytes:.0f} bytes" if i == 0 else f"{nbytes:.1f} {units[i]}"


def check_space(workdir: str, nbytes: int) -> None:
    """:class:`WorkdirError` when the workdir's filesystem has less free space than ``nbytes``,
    the caller's estimate of one checkpoint (e.g. the bytes of the train state)."""
    free = shutil.disk_usage(_existing(workdir)).free
    if free < nbytes:
        raise WorkdirError(
            f"the filesystem of workdir {workdir!r} has {_size(free)} free, one checkpoint needs "
            f"about {_size(nbytes)}; free space there or pass a --workdir on another filesystem"
        )


# What a failed save names; other errors are not the workdir's and stay as they are.
_SAVE_ERRORS = {
    errno.ENOSPC: ("no space left on the device", "free space there"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space there or raise the quota"),
    errno.EROFS: ("the filesystem is read-only", "make it writable"),
    errno.EIO: ("an I/O error (a failing disk or network filesystem)", "check the disk"),
}
_TENSORSTORE_CODE = re.compile(r"os_error_code='?(\d+)")  # tensorstore's ValueError of an OSError


def os_error_code(error: BaseException) -> int | None:
    """The errno of an OSError in ``error``'s chain (its causes and contexts), or the OS error
    code a tensorstore error names (orbax writes arrays through tensorstore)."""
    seen = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno:
            return e.errno
        match = _TENSORSTORE_CODE.search(str(e))
        if match:
            return int(match.group(1))
        e = e.__cause__ or e.__context__
    return None


def save_failed(error: BaseException, path: str, last_committed: int | None) -> SaveFailed | None:
    """The one-line :class:`SaveFailed` of an error raised while saving a checkpoint to ``path``
    (ENOSPC, EDQUOT, EROFS, EIO, as an OSError or tensorstore's error), naming the last
    committed checkpoint (orbax's step; None: none yet); None for any other error."""
    code = os_error_code(error)
    if code not in _SAVE_ERRORS:
        return None
    what, fix = _SAVE_ERRORS[code]
    if last_committed is None:
        then = "then rerun the same command (no checkpoint was committed yet: it starts again)"
    else:
        then = f"then rerun the same command to resume from checkpoint {last_committed}, the last "
        then += "committed one"
    return SaveFailed(
        f"could not save a checkpoint to {path}: {what} ({errno.errorcode[code]}); {fix}, {then}"
    )


def outputs_failed(error: BaseException, workdir: str, step: int | None) -> SaveFailed | None:
    """The one-line :class:`SaveFailed` of an error raised while writing a finished run's outputs
    (per_sample.npz, the report) for the same OS errors as :func:`save_failed`; None for others."""
    code = os_error_code(error)
    if code not in _SAVE_ERRORS:
        return None
    what, fix = _SAVE_ERRORS[code]
    return SaveFailed(
        f"could not write the outputs of checkpoint {step} to {workdir}: {what} "
        f"({errno.errorcode[code]}); {fix}, then rerun the same command (it rebuilds them from "
        "the checkpoint, which is committed)"
    )


class NamedSaveErrors(logging.Filter):
    """Drops the tracebacks orbax's background threads log for a save that failed for an OS
    reason jaxnoise names in one line (:func:`save_failed`): a full disk logs one per thread
    (18 for one save of a small run), the one line says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        if record.exc_info and record.exc_info[1] is not None:
            if os_error_code(record.exc_info[1]) in _SAVE_ERRORS:
                return False
        message = record.getMessage()
        return not any(
            f"[Errno {c}]" in message or f"os_error_code='{c}'" in message for c in _SAVE_ERRORS
        )


def _late_io_callback(unraisable: Any) -> bool:
    """Whether an unraisable error is a tensorstore I/O callback that found orbax's event loop
    closed: when one write of a save fails (a full disk), orbax closes the save's loop while the
    save's other writes are still in flight, and each of them, on completing, calls
    ``loop.call_soon_threadsafe`` from tensorstore's C++ thread (no Python caller, so no object
    to name) and gets ``RuntimeError: Event loop is closed``. Up to 27 such tracebacks came
    before the one line of :func:`save_failed`; the failed save itself is reported by that line."""
    error, tb = unraisable.exc_value, unraisable.exc_traceback
    if not isinstance(error, RuntimeError) or str(error) != "Event loop is closed":
        return False
    if unraisable.object is not None or tb is None:
        return False
    return tb.tb_frame.f_code.co_name == "call_soon_threadsafe"


def dropping_unraisable(
    previous: Callable[[Any], None], drop: Callable[[Any], bool]
) -> Callable[[Any], None]:
    """A ``sys.unraisablehook`` that passes every unraisable error to ``previous`` but those
    ``drop`` is true of (its ``drops`` attribute is ``drop``)."""

    def hook(unraisable: Any) -> None:
        if not drop(unraisable):
            previous(unraisable)

    hook.drops = drop  # type: ignore[attr-defined]
    return hook


def quiet_named_save_errors() -> None:
    """Install :class:`NamedSaveErrors` on the logger orbax logs through (absl's), and drop the
    late I/O callbacks of a failed save (:func:`_late_io_callback`) from ``sys.unraisablehook``;
    once each. Every other log record and unraisable error goes where it went before."""
    logger = logging.getLogger("absl")
    if not any(isinstance(f, NamedSaveErrors) for f in logger.filters):
        logger.addFilter(NamedSaveErrors())
    if getattr(sys.unraisablehook, "drops", None) is not _late_io_callback:
        sys.unraisablehook = dropping_unraisable(sys.unraisablehook, _late_io_callback)
