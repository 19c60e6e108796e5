"""One run per workdir (the lock), and workdir problems named in one line before anything is
loaded: a file, below a file, not writable, read-only, no space; and errors of a save."""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from jaxnoise import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A second process trying the lock: prints "LOCKED" and holds it for a minute, or prints the
# refusal and exits 3.
_TRY_LOCK = """
import sys, time
from jaxnoise import workdir
try:
    workdir.lock(sys.argv[1])
except workdir.WorkdirBusy as e:
    print("BUSY", e, flush=True)
    sys.exit(3)
print("LOCKED", flush=True)
time.sleep(float(sys.argv[2]))
"""


def other_process(workdir, hold: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _TRY_LOCK, str(workdir), str(hold)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def try_lock(workdir) -> tuple[int, str]:
    p = other_process(workdir)
    out, err = p.communicate(timeout=60)
    assert p.returncode in (0, 3), err
    return p.returncode, out.strip()


def test_a_second_process_is_refused_while_the_first_holds_the_lock(tmp_path):
    with workdir_lib.lock(str(tmp_path)) as held:
        assert workdir_lib.lock(str(tmp_path)) is held  # re-entrant within the process
        code, out = try_lock(tmp_path)
        assert code == 3
        assert out.startswith(
            f"BUSY workdir '{tmp_path}' is in use by another run (pid {os.getpid()} on "
        )
        assert out.endswith("; wait for it to end or stop it, or pass another --workdir")
        assert "\n" not in out
    assert try_lock(tmp_path) == (0, "LOCKED")  # released


def test_a_killed_holder_leaves_the_lock_free(tmp_path):
    holder = other_process(tmp_path, hold=120)
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        with pytest.raises(workdir_lib.WorkdirBusy, match=f"pid {holder.pid} on "):
            workdir_lib.lock(str(tmp_path))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=60)
    assert holder.returncode == -signal.SIGKILL
    with workdir_lib.lock(str(tmp_path)):  # its own resume is not blocked
        assert try_lock(tmp_path)[0] == 3


def test_fresh_keeps_the_lock(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.json").write_text("{}")
    with workdir_lib.lock(str(tmp_path)):
        workdir_lib.check_workdir_config(str(tmp_path), {"noise": 0.2}, fresh=True)
        assert os.listdir(tmp_path) == [".lock"]
        assert try_lock(tmp_path)[0] == 3  # still held


def test_the_workdir_is_a_file_or_below_one(tmp_path):
    f = tmp_path / "run"
    f.write_text("not a folder")
    with pytest.raises(workdir_lib.WorkdirError) as e:
        workdir_lib.check_writable(str(f))
    assert str(e.value) == f"workdir '{f}' is a file, not a folder; pass another --workdir"
    with pytest.raises(workdir_lib.WorkdirError) as e:
        workdir_lib.check_writable(str(f / "a" / "b"))
    assert str(e.value) == (
        f"workdir '{f / 'a' / 'b'}' lies below '{f}', which is a file, not a folder; pass "
        "another --workdir"
    )
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_a_missing_workdir_is_created_and_probed(tmp_path):
    wd = tmp_path / "runs" / "x"
    workdir_lib.check_writable(str(wd))
    assert os.listdir(wd) == []  # the probe file is gone
    (wd / "checkpoints").mkdir()
    workdir_lib.check_writable(str(wd))
    assert os.listdir(wd / "checkpoints") == []


def _os_open_failing(code: int, real=os.open):
    """os.open that fails with ``code`` for the probe file."""

    def fake(path, flags, *args, **kwargs):
        if ".write-probe-" in os.fspath(path):
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real(path, flags, *args, **kwargs)

    return fake


PROBE_ERRORS = {
    errno.EROFS: "is on a read-only filesystem; pass a --workdir on a writable one",
    errno.EACCES: "is not writable (permission denied); change its permissions or pass another "
    "--workdir",
    errno.ENOSPC: None,
    errno.EDQUOT: None,
    errno.EIO: "cannot be written (Input/output error); pass another --workdir",
}


@pytest.mark.parametrize("code", PROBE_ERRORS, ids=lambda c: errno.errorcode[c])
def test_probe_errors_are_named_and_created_folders_removed(tmp_path, monkeypatch, code):
    wd = tmp_path / "runs" / "x"
    monkeypatch.setattr(os, "open", _os_open_failing(code))
    with pytest.raises(workdir_lib.WorkdirError) as e:
        workdir_lib.check_writable(str(wd))
    want = PROBE_ERRORS[code]
    if want is None:  # no space
        want = (
            f"no space left for workdir '{wd}' ({os.strerror(code)}); free space there or "
            "pass a --workdir on another filesystem"
        )
    else:
        want = f"workdir '{wd}' {want}"
    assert str(e.value) == want
    assert os.listdir(tmp_path) == []  # runs/ and runs/x were removed again


def _root_can_write(folder: str) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def test_a_read_only_folder_is_named(tmp_path):
    """chmod 0o555; as root (who writes there anyway) the check runs as the user nobody."""
    base = tempfile.mkdtemp(prefix="jaxnoise-ro-")  # under /tmp, which anyone may traverse
    try:
        os.chmod(base, 0o755)
        ro = os.path.join(base, "ro")
        os.mkdir(ro, 0o555)
        os.chmod(ro, 0o555)
        uid = os.getuid()
        if _root_can_write(ro):
            try:
                uid = pwd.getpwnam("nobody").pw_uid
            except KeyError:
                pytest.skip("running as root, and there is no user nobody to run the check as")
        r = subprocess.run(
            [sys.executable, "-c", _AS_USER, os.path.join(ro, "wd"), str(uid)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 3, r.stderr[-2000:]
        assert r.stdout == (
            f"workdir '{ro}/wd' is not writable (permission denied); change its permissions or "
            "pass another --workdir\n"
        )
        assert os.listdir(ro) == []
    finally:
        shutil.rmtree(base)


# check_writable as another user (imports first: python's own files may be unreadable to it)
_AS_USER = """
import os, sys
from jaxnoise import workdir
uid = int(sys.argv[2])
if uid != os.getuid():
    os.setuid(uid)
try:
    workdir.check_writable(sys.argv[1])
except workdir.WorkdirError as e:
    print(e)
    sys.exit(3)
"""


def test_check_space(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    workdir_lib.check_space(str(tmp_path / "missing" / "wd"), 1024)
    nbytes = free + 2**50
    with pytest.raises(workdir_lib.WorkdirError) as e:
        workdir_lib.check_space(str(tmp_path), nbytes)
    msg = str(e.value)
    assert msg.startswith(f"the filesystem of workdir '{tmp_path}' has ")
    assert msg.endswith(
        f" free, one checkpoint needs about {nbytes / 2**40:.1f} TiB; free space "
        "there or pass a --workdir on another filesystem"
    )
    assert "GiB free" in msg or "TiB free" in msg or "MiB free" in msg


def test_save_failed_names_the_path_and_the_last_checkpoint():
    path = "/runs/x/checkpoints"
    # as tensorstore reports a full disk during an orbax save (seen on a full tmpfs)
    ts = ValueError(
        'RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database at local file "/runs/x/'
        'checkpoints/3.orbax-checkpoint-tmp/state/ocdbt.process_0/": Failed to write 576268 '
        "bytes to file 5: No space left on device [os_error_code='28']"
    )
    e = workdir_lib.save_failed(ts, path, 120)
    assert isinstance(e, workdir_lib.SaveFailed) and isinstance(e, ValueError)
    assert str(e) == (
        "could not save a checkpoint to /runs/x/checkpoints: no space left on the device "
        "(ENOSPC); free space there, then rerun the same command to resume from checkpoint 120, "
        "the last committed one"
    )
    chained = RuntimeError("save failed")
    chained.__cause__ = OSError(errno.EROFS, "Read-only file system")
    assert str(workdir_lib.save_failed(chained, path, None)) == (
        "could not save a checkpoint to /runs/x/checkpoints: the filesystem is read-only "
        "(EROFS); make it writable, then rerun the same command (no checkpoint was committed "
        "yet: it starts again)"
    )
    for code, what in [
        (errno.EDQUOT, "the disk quota is exceeded (EDQUOT)"),
        (errno.EIO, "an I/O error (a failing disk or network filesystem) (EIO)"),
    ]:
        msg = str(workdir_lib.save_failed(OSError(code, os.strerror(code)), path, 3))
        assert f": {what}; " in msg and "\n" not in msg
    assert workdir_lib.save_failed(ValueError("shape mismatch"), path, 3) is None
    assert workdir_lib.save_failed(OSError(errno.ENOENT, "No such file"), path, 3) is None


def test_orbax_tracebacks_of_a_named_save_error_are_dropped_and_others_kept():
    """The filter on absl's logger drops ERROR records of a save that failed for an OS reason
    the one line names (ENOSPC as an OSError, or tensorstore's os_error_code), keeps the rest."""
    import errno
    import logging

    f = workdir_lib.NamedSaveErrors()

    def record(msg, exc=None, level=logging.ERROR):
        info = (type(exc), exc, None) if exc else None
        return logging.LogRecord("absl", level, "x.py", 1, msg, (), info)

    full = OSError(errno.ENOSPC, "No space left on device")
    assert not f.filter(record("_SignalingThread.run() raised an exception", full))
    assert not f.filter(record("RESOURCE_EXHAUSTED: ... [os_error_code='28']"))
    assert f.filter(record("something else failed", ValueError("bad value")))
    assert f.filter(record("[Errno 28] as a warning", level=logging.WARNING))
    assert f.filter(record("permission", OSError(errno.EACCES, "Permission denied")))


def test_outputs_failed_names_the_checkpoint_and_the_rerun():
    import errno

    e = workdir_lib.outputs_failed(OSError(errno.ENOSPC, "full"), "/w", 72)
    assert isinstance(e, workdir_lib.SaveFailed) and "outputs of checkpoint 72 to /w" in str(e)
    assert "(ENOSPC)" in str(e) and "rerun the same command" in str(e)
    assert workdir_lib.outputs_failed(ValueError("x"), "/w", 72) is None


def test_late_io_callbacks_of_a_failed_save_are_dropped_and_nothing_else(monkeypatch):
    """A tensorstore future completing after orbax closed the save's event loop (what the
    save's other writes do once one write hit a full disk) raises ``Event loop is closed`` in
    tensorstore's thread; Python prints it through ``sys.unraisablehook``, with a traceback
    before jaxnoise's one line. The filter drops exactly that; other unraisable errors pass."""
    import asyncio
    import gc

    import tensorstore as ts

    seen: list[BaseException] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))
    workdir_lib.quiet_named_save_errors()
    workdir_lib.quiet_named_save_errors()  # once: not wrapped twice

    promise, write = ts.Promise.new()

    async def pending_write() -> None:
        await write

    async def failed_save() -> None:
        asyncio.ensure_future(pending_write())
        await asyncio.sleep(0.01)  # another write failed: the save ends, this one in flight

    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda loop, context: None)  # the task left pending, collected
    loop.run_until_complete(failed_save())
    loop.close()
    promise.set_result(1)  # the write completes into the closed loop
    gc.collect()
    assert seen == []

    class Collected:
        def __del__(self):
            raise ValueError("another unraisable error")

    Collected()
    assert [str(e) for e in seen] == ["another unraisable error"]
