"""The fault campaign of issue 25, re-run: every fault as a user meets it, through main.py.

    python benchmarks/fault_campaign.py                # all rows, prints the table
    python benchmarks/fault_campaign.py --write        # and writes benchmarks/results/faults.md
    python benchmarks/fault_campaign.py --only 1,6d    # some rows (ids or their prefixes)

Each row runs ``python main.py --config tests/_signal_run.py`` (the tiny run: width-8 CNN on
digits, 3 epochs of 24 steps, M-DYR-H) in a subprocess. Where a fault needs a moment that cannot
be hit from outside (a pause after a given step, a checkpoint commit held open, a compile the
interpreter waits in) the same run goes through ``python tests/_signal_run.py``, which is main.py
with those hooks (see its docstring). Everything else is real: SIGKILL while polling the
checkpoint folder for the final commit, a real second process, random bytes written into a
committed checkpoint's array file, a features .npz with a stray label, read-only and full
filesystems (tmpfs mounts: run as root), a workdir that a non-root user (``nobody``) may not
write, real signals.

Per row: the command, the exit code (and the one expected), the lines on stdout and stderr,
whether a Python traceback appeared, the wall time (from the signal to the exit for stops), and
whether the outcome is correct: a resumed or rebuilt run's metrics.jsonl (less the timing
fields) and outputs (per_sample.npz, label_issues.csv, label_issues_summary.json, outputs.json,
figures/*.png) byte-identical to an uninterrupted run's; a refused process wrote nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import platform
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.common import git_commit  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results", "faults.md")
RUN = "tests/_signal_run.py"  # the tiny config, and main.py with fault hooks
STEPS = 24  # train steps per epoch of the tiny run
FINAL = 3 * STEPS  # the orbax step of the final checkpoint
TIMING = ("seconds", "images_per_s")  # metrics.jsonl fields that are wall times
OUTPUT_FILES = ("per_sample.npz", "label_issues.csv", "label_issues_summary.json", "outputs.json")
TRACEBACK = "Traceback (most recent call last)"
TIMEOUT = 420  # seconds for any one process


# ------------------------------------------------------------------------------------------------
# Processes


class Proc:
    """A subprocess with stdout and stderr read line by line (kept apart), waitable by text.

    ``watch``: (text, callback) pairs; the reader thread calls ``callback(line)`` the moment a
    line containing ``text`` arrives (e.g. to look at the checkpoint folder at that instant)."""

    def __init__(self, argv: list[str], env: dict, watch=(), shown: str = ""):
        self.shown = shown or " ".join(argv)
        self.t0 = time.monotonic()
        self.t_signal: float | None = None
        self.t_end: float | None = None
        self.p = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.watch = list(watch)
        self._events: queue.Queue = queue.Queue()
        self._threads = [
            threading.Thread(target=self._read, args=(s, sink), daemon=True)
            for s, sink in ((self.p.stdout, self.out), (self.p.stderr, self.err))
        ]
        for t in self._threads:
            t.start()
        CHILDREN.append(self)

    def _read(self, stream, sink: list[str]) -> None:
        for line in stream:
            sink.append(line)
            for text, fn in self.watch:
                if text in line:
                    fn(line)
            self._events.put(line)
        self._events.put(None)

    def wait_for(self, text: str, timeout: float = TIMEOUT) -> str:
        """The first line (from now) that contains ``text``; AssertionError if none comes."""
        deadline, ended = time.monotonic() + timeout, 0
        while True:
            try:
                line = self._events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {text!r} within {timeout}s: {self.tail()}") from None
            if line is None:
                ended += 1
                if ended == 2:
                    raise AssertionError(f"ended before {text!r}: {self.tail()}")
            elif text in line:
                return line

    def signal(self, sig: int) -> None:
        self.t_signal = time.monotonic()
        self.p.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def finish(self, timeout: float = TIMEOUT) -> int:
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait()
            self.err.append(f"[campaign: killed after {timeout} s]\n")
        self.t_end = time.monotonic()
        for t in self._threads:
            t.join(10)
        logs = os.path.join(CTX.base, "logs")  # every process's output, for --keep
        os.makedirs(logs, exist_ok=True)
        stem = os.path.join(logs, f"{CHILDREN.index(self):03d}")
        for ext, lines in (("cmd", [self.shown + "\n"]), ("out", self.out), ("err", self.err)):
            with open(f"{stem}.{ext}", "w") as f:
                f.writelines(lines)
        return rc

    @property
    def rc(self) -> int | None:
        return self.p.returncode

    @property
    def text(self) -> str:
        return "".join(self.out) + "".join(self.err)

    @property
    def tracebacks(self) -> int:
        return self.text.count(TRACEBACK)

    @property
    def wall(self) -> float:
        return (self.t_end or time.monotonic()) - self.t0

    @property
    def after_signal(self) -> float | None:
        return None if self.t_signal is None else (self.t_end or time.monotonic()) - self.t_signal

    def tail(self, n: int = 1500) -> str:
        return " | ".join(self.text[-n:].splitlines())


CHILDREN: list[Proc] = []


def env(**extra: str) -> dict:
    """The children's environment: CPU, the campaign's compilation cache, this worktree first."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("JAXNOISE_TEST_", "XLA_FLAGS"))}
    e.update(
        JAX_PLATFORMS="cpu",
        PYTHONPATH=ROOT,
        JAX_COMPILATION_CACHE_DIR=CTX.cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    e.update(extra)
    return e


def main_py(
    workdir: str, *flags: str, config: str = RUN, pre: tuple = (), watch=(), **extra: str
) -> Proc:
    """``python main.py --config CONFIG --workdir W FLAGS`` (``pre``: a wrapper such as setpriv;
    ``extra``: environment variables)."""
    argv = [*pre, sys.executable, "main.py", "--config", config, "--workdir", workdir, *flags]
    return Proc(
        argv,
        env(**extra),
        watch,
        shown=_shown(["python", "main.py", "--config", config, "--workdir", workdir, *flags], pre),
    )


def hooked(workdir: str, *flags: str, watch=(), **hooks: str) -> Proc:
    """The tiny run through tests/_signal_run.py (main.py with the fault hooks ``hooks``)."""
    argv = [sys.executable, RUN, "--config", RUN, "--workdir", workdir, *flags]
    shown = " ".join(f"{k}={v}" for k, v in hooks.items())
    shown += " " + _shown(["python", RUN, "--config", RUN, "--workdir", workdir, *flags])
    return Proc(argv, env(**hooks), watch, shown=shown.strip())


def report_cli(workdir: str, out: str) -> Proc:
    argv = [sys.executable, "-m", "jaxnoise.report", workdir, "--out", out]
    return Proc(
        argv, env(), shown=_shown(["python", "-m", "jaxnoise.report", workdir, "--out", out])
    )


def _shown(argv: list[str], pre: tuple = ()) -> str:
    """A command as printed in the results: the campaign's temporary folder as $T."""
    return " ".join([*(a for a in pre if not a.startswith("--")), *argv]).replace(CTX.base, "$T")


# ------------------------------------------------------------------------------------------------
# Workdirs


def committed(wd: str) -> list[int]:
    d = os.path.join(wd, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def strays(wd: str) -> list[str]:
    """Entries of the checkpoint folder that are not committed checkpoints."""
    d = os.path.join(wd, "checkpoints")
    return sorted(n for n in os.listdir(d) if not n.isdigit()) if os.path.isdir(d) else []


def metrics(wd: str) -> list[dict] | None:
    try:
        with open(os.path.join(wd, "metrics.jsonl")) as f:
            return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in f]
    except (OSError, ValueError):
        return None


def output_bytes(wd: str) -> dict[str, bytes | None]:
    """The run's outputs byte for byte (None: missing): the report files, the manifest, figures."""
    names = list(OUTPUT_FILES)
    figures = os.path.join(CTX.ref, "figures")
    names += [f"figures/{n}" for n in sorted(os.listdir(figures))] if os.path.isdir(figures) else []
    out = {}
    for n in names:
        p = os.path.join(wd, n)
        out[n] = open(p, "rb").read() if os.path.isfile(p) else None
    return out


def same_as_reference(wd: str, *, outputs: bool = True, aside: tuple = ()) -> tuple[bool, str]:
    """Whether a workdir's metrics (and outputs) equal the uninterrupted run's, byte for byte
    (``aside``: entries of checkpoints/ expected beside the committed ones, e.g. 72.unreadable)."""
    problems = []
    if metrics(wd) != metrics(CTX.ref):
        got = metrics(wd)
        problems.append(f"metrics differ (epochs {[r['epoch'] for r in got or []]})")
    if outputs:
        mine, ref = output_bytes(wd), output_bytes(CTX.ref)
        bad = [n for n in ref if mine.get(n) != ref[n]]
        if bad:
            problems.append(
                "outputs differ: "
                + ", ".join(f"{n}{' (missing)' if mine.get(n) is None else ''}" for n in bad)
            )
    if [n for n in strays(wd) if n not in aside]:
        problems.append(f"stray entries in checkpoints/: {strays(wd)}")
    if problems:
        return False, "; ".join(problems)
    what = (
        "metrics.jsonl and every output (incl. figures) byte-identical"
        if outputs
        else "metrics.jsonl identical"
    )
    return True, f"{what} to the uninterrupted run's"


def snapshot(wd: str) -> dict[str, tuple]:
    """Every file below ``wd``: (size, mtime_ns, sha256); and every folder's name."""
    snap: dict[str, tuple] = {}
    for dirpath, dirs, files in os.walk(wd):
        for d in dirs:
            snap[os.path.relpath(os.path.join(dirpath, d), wd) + "/"] = ()
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.stat(p)
            with open(p, "rb") as fh:
                snap[os.path.relpath(p, wd)] = (
                    st.st_size,
                    st.st_mtime_ns,
                    hashlib.sha256(fh.read()).hexdigest(),
                )
    return snap


def made_from(wd: str) -> int | None:
    try:
        with open(os.path.join(wd, "outputs.json")) as f:
            return json.load(f)["checkpoint"]
    except (OSError, ValueError, KeyError):
        return None


def poll_then(proc: Proc, path: str, action: Callable[[], None], dt: float = 0.001) -> bool:
    """Poll for ``path`` (e.g. a checkpoint's folder: it appears when orbax commits it) while
    ``proc`` runs; run ``action()`` the moment it exists. False if the process ended first."""
    while proc.p.poll() is None:
        if os.path.exists(path):
            action()
            return True
        time.sleep(dt)
    return False


def fill(folder: str, name: str = "filler") -> str:
    """Fill the filesystem of ``folder`` to the last byte (a real full disk): a filler file
    written until ENOSPC; returns its path (remove it to free the space)."""
    path = os.path.join(folder, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            block = b"\xa5" * chunk
            while True:
                try:
                    if os.write(fd, block) < chunk:
                        break
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return path


@contextlib.contextmanager
def tmpfs(name: str, size: str) -> Iterator[str]:
    """A tmpfs of ``size`` mounted at $T/NAME for the block (unmounted after)."""
    point = os.path.join(CTX.base, name)
    os.makedirs(point, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", point], check=True
    )
    try:
        yield point
    finally:
        for proc in CHILDREN:
            if proc.p.poll() is None:
                proc.p.kill()
                proc.p.wait()
        if subprocess.run(["umount", point]).returncode:
            subprocess.run(["umount", "-l", point])


def remount_ro(point: str) -> None:
    subprocess.run(["mount", "-o", "remount,ro", point], check=True)


# ------------------------------------------------------------------------------------------------
# Results


@dataclasses.dataclass
class Row:
    id: str
    fault: str
    proc: Proc | None
    expected_rc: str
    ok: bool
    detail: str
    seconds: str = ""
    command: str = ""
    limitation: str = ""  # not a failure of the fix: a documented limit, named here

    @property
    def verdict(self) -> str:
        if self.ok:
            return "✅"
        return "⚠️ limitation" if self.limitation else "❌ **FAIL**"

    def cells(self) -> list[str]:
        p = self.proc
        rc = "" if p is None else str(p.rc)
        lines = "" if p is None else f"{len(p.out)} / {len(p.err)}"
        tb = "" if p is None else (f"**yes** ({p.tracebacks})" if p.tracebacks else "no")
        return [
            self.id,
            self.fault,
            f"{rc} ({self.expected_rc})" if p else "",
            lines,
            tb,
            self.seconds or (f"{p.wall:.1f}" if p else ""),
            self.verdict,
            self.detail + (f" ({self.limitation})" if self.limitation else ""),
        ]


def row(
    id_: str,
    fault: str,
    proc: Proc | None,
    expected_rc,
    checks: list[tuple[bool, str]],
    seconds: str = "",
    one_line: bool | None = None,
) -> Row:
    """A result: correct when the exit code is the expected one (an int, or a tuple of them), no
    traceback appeared, ``one_line`` (when set) holds for stderr, and every check holds; the
    detail lists what was checked, the failures first."""
    checks = list(checks)
    if proc is not None:
        codes = expected_rc if isinstance(expected_rc, tuple) else (expected_rc,)
        checks.insert(0, (proc.rc in codes, f"exit code {proc.rc}"))
        checks.insert(
            1,
            (
                proc.tracebacks == 0,
                "no traceback" if not proc.tracebacks else f"{proc.tracebacks} traceback(s)",
            ),
        )
        if one_line is not None:
            n = len(proc.err)
            checks.insert(
                2,
                (
                    n == 1,
                    f"stderr {n} line(s)" + (f": `{proc.err[-1].strip()[:160]}`" if n else ""),
                ),
            )
    ok = all(c for c, _ in checks)
    failed = [f"**{t}**" for c, t in checks if not c]
    passed = [t for c, t in checks if c]
    shown = "/".join(map(str, expected_rc)) if isinstance(expected_rc, tuple) else str(expected_rc)
    r = Row(
        id_, fault, proc, shown, ok, "; ".join(failed + passed), seconds, proc.shown if proc else ""
    )
    ROWS.append(r)
    print(
        f"  {'ok  ' if ok else 'FAIL'} {id_}: {fault}: rc {proc.rc if proc else '-'}; {r.detail}",
        flush=True,
    )
    return r


ROWS: list[Row] = []


@dataclasses.dataclass
class Context:
    base: str = ""
    cache: str = ""
    ref: str = ""
    ref_seconds: float = 0.0

    def wd(self, name: str) -> str:
        return os.path.join(self.base, name)


CTX = Context()


def stderr_has(proc: Proc, *texts: str) -> list[tuple[bool, str]]:
    return [(t in "".join(proc.err), f"stderr says “{t}”") for t in texts]


def stdout_has(proc: Proc, *texts: str) -> list[tuple[bool, str]]:
    return [(t in "".join(proc.out), f"says “{t}”") for t in texts]


def resumed_ok(
    wd: str, id_: str, fault: str, *, expect: str = "done:", outputs: bool = True, flags: tuple = ()
) -> Row:
    """Re-run the same command (main.py) on ``wd``; correct if it finishes and matches the
    uninterrupted run."""
    p = main_py(wd, *flags)
    p.finish()
    same, why = same_as_reference(wd, outputs=outputs)
    return row(id_, fault, p, 0, [*stdout_has(p, expect), (same, why)])


# ------------------------------------------------------------------------------------------------
# 1-2. A kill between the commit of the final checkpoint and the outputs


def kill_after_final_commit(wd: str, tries: int = 3) -> tuple[Proc, bool]:
    """main.py on ``wd``, SIGKILLed the moment checkpoints/72 appears (polled every ms). Returns
    the process and whether the kill landed before the outputs were complete (retried up to
    ``tries`` times on a fresh copy of the workdir if not)."""
    backup = wd + ".before"
    if os.path.isdir(wd):
        shutil.copytree(wd, backup, symlinks=True)
    for _ in range(tries):
        p = main_py(wd)
        poll_then(p, os.path.join(wd, "checkpoints", str(FINAL)), p.kill)
        p.finish()
        if made_from(wd) != FINAL:  # outputs.json (written last) not of the final checkpoint
            return p, True
        shutil.rmtree(wd)
        if os.path.isdir(backup):
            shutil.copytree(backup, wd, symlinks=True)
    return p, False


def _kill_report_rerun(id_: str, wd: str, fault: str, report_says: str) -> None:
    """The kill after the final commit, the report CLI on the killed workdir, the re-run, the
    report again."""
    p, hit = kill_after_final_commit(wd)
    left = [n for n in OUTPUT_FILES if os.path.exists(os.path.join(wd, n))]
    row(
        f"{id_}",
        f"{fault}: SIGKILL the moment checkpoint {FINAL} commits",
        p,
        -9,
        [
            (
                hit,
                f"kill landed in the window (committed {committed(wd)}; outputs present: "
                f"{left or 'none'}; outputs.json made from {made_from(wd)})",
            )
        ],
    )
    rep = report_cli(wd, os.path.join(CTX.base, f"report-{id_}"))
    rep.finish()
    r = row(
        f"{id_}",
        "`python -m jaxnoise.report W` on the killed workdir",
        rep,
        2,
        [*stderr_has(rep, report_says)],
        one_line=True,
    )
    if "finished epoch" in "".join(rep.err):
        r.detail += (
            "; note: the line says the workdir holds no finished epoch, while it holds "
            f"{len(metrics(wd) or [])} (its advice, to run the training command, is "
            "right)"
        )
    again = main_py(wd)
    again.finish()
    same, why = same_as_reference(wd)
    row(
        f"{id_}",
        "re-run of the same command",
        again,
        0,
        [*stdout_has(again, f"rebuilding the outputs of checkpoint {FINAL}", "done:"), (same, why)],
    )
    rep = report_cli(wd, os.path.join(CTX.base, f"report-{id_}-after"))
    rep.finish()
    row(
        f"{id_}",
        "`python -m jaxnoise.report W` after the re-run",
        rep,
        0,
        [*stdout_has(rep, "label issues:")],
    )


def row_1() -> None:
    """A finished run that never gets its outputs (a fresh workdir)."""
    _kill_report_rerun("1", CTX.wd("r1"), "fresh workdir", "lacks per_sample.npz")


def row_2a() -> None:
    """2, as met: a workdir once stopped by SIGTERM (at the end of epoch 1), then the kill."""
    wd = CTX.wd("r2a")
    p = hooked(wd, JAXNOISE_TEST_PAUSE_AT="1:23")
    p.wait_for("PAUSED 1 23")
    p.signal(signal.SIGTERM)
    p.finish()
    left = [n for n in OUTPUT_FILES if os.path.exists(os.path.join(wd, n))]
    row(
        "2a",
        "SIGTERM at the end of epoch 1 (the stop that used to write per_sample.npz)",
        p,
        143,
        [
            *stderr_has(p, "stopped by SIGTERM: the checkpoint at the end of epoch 1 is saved"),
            (not left, f"the stop wrote no outputs ({left or 'none present'})"),
        ],
        seconds=f"{p.after_signal:.1f} after the signal",
    )
    _kill_report_rerun("2a", wd, "once-stopped workdir", "lacks per_sample.npz")


def _stopped_after_epoch_1(wd: str) -> Proc:
    """A workdir holding the outputs of checkpoint 24 (epoch 1) beside a newer checkpoint to
    come: ``train_and_evaluate(config, wd, stop_after_epoch=1)``, the API's stop."""
    code = (
        "import sys; from tests import _signal_run; from jaxnoise import loops; "
        f"loops.train_and_evaluate(_signal_run.get_config(), {wd!r}, stop_after_epoch=1)"
    )
    p = Proc(
        [sys.executable, "-c", code],
        env(),
        shown=_shown(["python", "-c", "loops.train_and_evaluate(tiny, W, stop_after_epoch=1)"]),
    )
    p.finish()
    return p


def row_2b() -> None:
    """2, with the stale outputs present: outputs of checkpoint 24, then the kill at 72."""
    wd = CTX.wd("r2b")
    p = _stopped_after_epoch_1(wd)
    row(
        "2b",
        "outputs of epoch 1 in the workdir (`train_and_evaluate(stop_after_epoch=1)`)",
        p,
        0,
        [(made_from(wd) == STEPS, f"outputs.json made from checkpoint {made_from(wd)}")],
    )
    _kill_report_rerun(
        "2b",
        wd,
        "workdir with epoch-1 outputs",
        f"made from checkpoint {STEPS}, but its newest checkpoint is {FINAL}",
    )


def row_2c() -> None:
    """2, in a workdir of the version before the fix: per_sample.npz of epoch 1 without the
    checkpoint it was made from, no outputs.json; then the kill."""
    import numpy as np

    wd = CTX.wd("r2c")
    _stopped_after_epoch_1(wd)
    path = os.path.join(wd, "per_sample.npz")
    with np.load(path) as d:
        arrays = {k: d[k] for k in d.files if k != "checkpoint"}
    np.savez(path, **arrays)
    os.remove(os.path.join(wd, "outputs.json"))
    p, hit = kill_after_final_commit(wd)
    row(
        "2c",
        "pre-fix workdir (epoch-1 per_sample.npz, no checkpoint key, no outputs.json): "
        f"SIGKILL when checkpoint {FINAL} commits",
        p,
        -9,
        [(hit, "kill landed in the window")],
    )
    rep = report_cli(wd, os.path.join(CTX.base, "report-2c"))
    rep.finish()
    row(
        "2c",
        "`python -m jaxnoise.report W` on it (stale arrays without a checkpoint key)",
        rep,
        2,
        [*stderr_has(rep, "does not record the checkpoint", "re-run the training command")],
        one_line=True,
    )
    again = main_py(wd)
    again.finish()
    same, why = same_as_reference(wd)
    row(
        "2c",
        "re-run of the same command",
        again,
        0,
        [*stdout_has(again, f"rebuilding the outputs of checkpoint {FINAL}"), (same, why)],
    )


# ------------------------------------------------------------------------------------------------
# 3. Two processes on one workdir


def row_3a() -> None:
    """A second run (and one with --fresh) while the first trains: refused, writes nothing."""
    wd = CTX.wd("r3a")
    a = hooked(wd, JAXNOISE_TEST_PAUSE_AT="2:0")  # holds the lock, paused in epoch 2
    a.wait_for("PAUSED 2 0")
    before = snapshot(wd)
    for id_, flags in (("3a", ()), ("3a", ("--fresh",))):
        b = main_py(wd, *flags)
        b.finish()
        after = snapshot(wd)
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        row(
            id_,
            f"second `main.py {' '.join(flags)}` on the workdir while the first trains",
            b,
            2,
            [
                *stderr_has(b, f"is in use by another run (pid {a.p.pid} "),
                (
                    not changed,
                    "it wrote nothing (every file's bytes and mtime unchanged)"
                    if not changed
                    else f"changed: {changed[:5]}",
                ),
                (not b.out, f"stdout {len(b.out)} lines"),
            ],
            one_line=True,
        )
    a.signal(signal.SIGTERM)  # let the first run stop (it saves step 1 of epoch 2)
    a.finish()
    row(
        "3a",
        "the first run, stopped (SIGTERM) after the refusals",
        a,
        143,
        stderr_has(a, "stopped by SIGTERM: the checkpoint at step 1/24 of epoch 2"),
    )
    resumed_ok(wd, "3a", "the first run resumed to the end")


def row_3b() -> None:
    """Two runs started at the same instant: one runs, one is refused at once."""
    wd = CTX.wd("r3b")
    a, b = main_py(wd), main_py(wd)
    a.finish(), b.finish()
    winner, loser = (a, b) if a.rc == 0 else (b, a)
    row(
        "3b",
        "two `main.py` started together on one workdir: the refused one",
        loser,
        2,
        [*stderr_has(loser, "is in use by another run"), (not loser.out, "stdout empty")],
        one_line=True,
    )
    same, why = same_as_reference(wd)
    row(
        "3b",
        "… the one that ran",
        winner,
        0,
        [(committed(wd) == [2 * STEPS, FINAL], f"checkpoints {committed(wd)}"), (same, why)],
    )


# ------------------------------------------------------------------------------------------------
# 4. Bit rot in a committed checkpoint


def damage(wd: str, step: int, item: str, seed: int) -> str:
    """4 KiB of random bytes written over the middle of the largest array data file of item
    ``item`` of checkpoint ``step`` (its ocdbt data); returns what was damaged."""
    folder = os.path.join(wd, "checkpoints", str(step), item, "ocdbt.process_0", "d")
    path = max((os.path.join(folder, n) for n in os.listdir(folder)), key=os.path.getsize)
    size = os.path.getsize(path)
    n = min(4096, size // 2)
    offset = size // 2 - n // 2
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(random.Random(seed).randbytes(n))
    return f"{n} random bytes at offset {offset} of {os.path.relpath(path, wd)} ({size} bytes)"


def _rotted(id_: str, fault: str, wd: str, step: int, previous: int, what: str) -> None:
    """Run the same command on a workdir whose checkpoint ``step`` was damaged: correct if the
    damage is named, ``previous`` restores, and the run ends as the uninterrupted one."""
    p = main_py(wd)
    p.finish()
    same, why = same_as_reference(wd, aside=(f"{step}.unreadable",))
    warning = next((x for x in p.out if f"checkpoint {step} in" in x and "unreadable" in x), "")
    reason = re.search(r"is unreadable \((.*?)\); resuming", warning)
    shown = (reason.group(1)[:90] + "…") if reason else "none"
    row(
        id_,
        fault,
        p,
        0,
        [
            (bool(warning), f"warning names the damage: “{shown}”"),
            *stdout_has(p, f"resuming from checkpoint {previous} instead"),
            (
                os.path.isdir(os.path.join(wd, "checkpoints", f"{step}.unreadable")),
                f"set aside as {step}.unreadable",
            ),
            (same, why),
            (True, f"damage: {what}"),
        ],
    )


def row_4a() -> None:
    """A finished run whose newest checkpoint rotted, run again (state; labels)."""
    for item, seed in (("state", 4), ("labels", 7)):
        wd = CTX.wd(f"r4a-{item}")
        shutil.copytree(CTX.ref, wd)
        what = damage(wd, FINAL, item, seed=seed)
        _rotted(
            "4a",
            f"4 KiB of random bytes in the `{item}` array data of the newest "
            "checkpoint of a finished run; the same command again",
            wd,
            FINAL,
            2 * STEPS,
            what,
        )


def row_4b() -> None:
    """A run stopped mid-epoch whose (newest) mid-epoch checkpoint rotted, resumed."""
    wd = CTX.wd("r4b")
    p = hooked(wd, JAXNOISE_TEST_PAUSE_AT="2:4")
    p.wait_for("PAUSED 2 4")
    p.signal(signal.SIGTERM)
    p.finish()
    at = STEPS + 5
    what = damage(wd, at, "aux", seed=5)
    _rotted(
        "4b",
        f"4 KiB of random bytes in the per-sample arrays (`aux`) of mid-epoch "
        f"checkpoint {at} (a SIGTERM stop); resume",
        wd,
        at,
        STEPS,
        what,
    )


# ------------------------------------------------------------------------------------------------
# 5. A stray label in a features file


def _features(path: str, stray: int | None, where: str = "train") -> None:
    import numpy as np

    r = np.random.default_rng(0)
    y, yt = np.arange(300) % 5, np.arange(60) % 5
    x = (r.normal(size=(300, 16)) + y[:, None] * 0.5).astype(np.float32)
    xt = (r.normal(size=(60, 16)) + yt[:, None] * 0.5).astype(np.float32)
    if stray is not None:
        (y if where == "train" else yt)[17] = stray
    np.savez(path, train_features=x, train_labels=y, test_features=xt, test_labels=yt)


FEATURES_SHORT = (
    "--config.epochs=3",
    "--config.lr_milestones=(2,)",
    "--config.bootstrap.start_epoch=2",
    "--config.bootstrap.dynamic_start_epoch=2",
    "--config.bootstrap.soft_to_hard_start_epoch=3",
    "--config.bootstrap.temperature_epochs=2",
)


def row_5() -> None:
    """Labels 0..4 and a single 99, no class_names: refused before anything is compiled; the
    same file without the 99 trains a 5-way head."""
    folder = CTX.wd("r5")
    os.makedirs(folder)
    for id_, stray, where in (("5a", 99, "train"), ("5b", 99, "test")):
        path = os.path.join(folder, f"stray_{where}.npz")
        _features(path, stray, where)
        wd = os.path.join(folder, f"run_{where}")
        p = main_py(
            wd,
            f"--config.data.features={path}",
            *FEATURES_SHORT,
            config="configs/features_m_dyr_h.py",
        )
        p.finish()
        row(
            id_,
            f"features .npz: {where} labels 0..4 and one 99, no class_names",
            p,
            1,
            [
                *stderr_has(p, f"error: features file {path}", "labels go up to 99"),
                (not any("compiling" in x for x in p.out), "nothing compiled"),
                (not os.path.exists(wd), "no workdir left behind"),
            ],
            one_line=True,
        )
    path = os.path.join(folder, "clean.npz")
    _features(path, None)
    wd = os.path.join(folder, "run_clean")
    p = main_py(
        wd, f"--config.data.features={path}", *FEATURES_SHORT, config="configs/features_m_dyr_h.py"
    )
    p.finish()
    import numpy as np

    classes = None
    with contextlib.suppress(OSError, ValueError, KeyError):
        classes = np.load(os.path.join(wd, "per_sample.npz"))["logits"].shape[1]
    row(
        "5c",
        "control: the same file without the 99",
        p,
        0,
        [*stdout_has(p, "classes 5"), (classes == 5, f"a {classes}-way head")],
    )


# ------------------------------------------------------------------------------------------------
# 6. Workdirs that cannot be written; disks that fill


def _refusal(
    id_: str, fault: str, p: Proc, *texts: str, left: str | None = None, code: int = 2
) -> None:
    checks = [
        *stderr_has(p, *texts),
        (not p.out or not any("compiling" in x for x in p.out), "nothing compiled"),
    ]
    if left is not None:
        checks.append((not os.path.exists(left), "no workdir left behind"))
    row(id_, fault, p, code, checks, one_line=True, seconds=f"{p.wall:.1f}")


def row_6a() -> None:
    """Read-only workdirs: a read-only filesystem (empty workdir; a finished run), a folder the
    user may not write (as nobody)."""
    with tmpfs("ro", "4m") as point:
        empty, run = os.path.join(point, "empty"), os.path.join(point, "run")
        os.mkdir(empty)
        shutil.copytree(CTX.ref, run)
        remount_ro(point)
        for id_, wd, what in (("6a", empty, "an empty workdir"), ("6a", run, "a finished run")):
            p = main_py(wd)
            p.finish()
            _refusal(
                id_,
                f"read-only filesystem ({what})",
                p,
                "error: workdir",
                "is on a read-only filesystem",
            )
    wd = CTX.wd("r6a-perm")
    os.makedirs(wd, mode=0o755)
    home = CTX.wd("nobody-home")
    os.makedirs(home, mode=0o777, exist_ok=True)
    os.chmod(home, 0o777)
    p = main_py(
        wd,
        pre=("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"),
        HOME=home,
        JAX_COMPILATION_CACHE_DIR=os.path.join(home, "cache"),
    )
    p.finish()
    _refusal(
        "6a",
        "workdir the user may not write (root's folder, run as nobody)",
        p,
        "error: workdir",
        "is not writable (permission denied)",
    )


def row_6b() -> None:
    """A workdir path that is a file, or lies below one."""
    folder = CTX.wd("r6b")
    os.makedirs(folder)
    f = os.path.join(folder, "f")
    with open(f, "w") as fh:
        fh.write("x")
    for wd, what in ((f, "a file"), (os.path.join(f, "run"), "below a file")):
        p = main_py(wd)
        p.finish()
        _refusal("6b", f"workdir path is {what}", p, "error: workdir", "a file, not a folder")


def row_6c() -> None:
    """No space at the start: a full filesystem; one with room for the probe, not a checkpoint."""
    with tmpfs("full", "1m") as point:
        fill(point)
        wd = os.path.join(point, "run")
        p = main_py(wd)
        p.finish()
        _refusal(
            "6c",
            "no space at all on the workdir's filesystem",
            p,
            "error: no space left for workdir",
            left=wd,
        )
    with tmpfs("almost", "1m") as point:
        filler = fill(point)
        os.truncate(filler, os.path.getsize(filler) - 40 * 1024)  # 40 KiB free
        wd = os.path.join(point, "run")
        p = main_py(wd)
        p.finish()
        _refusal(
            "6c",
            "40 KiB free: room for the probe, not for a checkpoint",
            p,
            "error: the filesystem of workdir",
            "one checkpoint needs about",
        )


def row_6d() -> None:
    """The disk fills during an asynchronous save (of epoch 2's checkpoint); freed, resumed."""
    with tmpfs("fills", "16m") as point:
        wd = os.path.join(point, "run")
        p = main_py(wd)
        filled: list[float] = []
        poll_then(
            p,
            os.path.join(wd, "checkpoints", str(STEPS)),
            lambda: (fill(point), filled.append(time.monotonic())),
        )
        p.finish()
        late = [x.strip()[:60] for x in p.out if "epoch 3" in x]
        row(
            "6d",
            "the disk fills (a real full tmpfs) once checkpoint 24 has committed: the save "
            "of epoch 2 fails",
            p,
            1,
            [
                *stderr_has(
                    p,
                    "could not save a checkpoint to",
                    "no space left on the device (ENOSPC)",
                    f"resume from checkpoint {STEPS}, the last committed one",
                ),
                (
                    not late,
                    "nothing after the failed save (no epoch 3)"
                    if not late
                    else f"went on: {late}",
                ),
                (committed(wd) == [STEPS], f"committed {committed(wd)}"),
            ],
            one_line=True,
            seconds=f"{p.t_end - filled[0]:.1f} after the disk filled" if filled else "",
        )
        os.remove(os.path.join(point, "filler"))
        resumed_ok(wd, "6d", "space freed; the same command again")


def _pages(folder: str) -> int:
    """The bytes a folder's files take on a tmpfs (whole 4 KiB pages)."""
    return sum(
        -(-os.path.getsize(os.path.join(d, f)) // 4096) * 4096
        for d, _, files in os.walk(folder)
        for f in files
    )


def row_6e() -> None:
    """(Beyond the issue) the disk full when the outputs are written: once checkpoint 48
    commits, the disk is filled but for the room of one more checkpoint (48's pages) and
    40 KiB, so the final checkpoint still commits and per_sample.npz (93 KiB) does not fit
    (keep_checkpoints=5: orbax frees nothing meanwhile); freed, run again."""
    with tmpfs("fills2", "16m") as point:
        wd = os.path.join(point, "run")
        p = main_py(wd, "--config.keep_checkpoints=5")

        def almost() -> None:
            room = _pages(os.path.join(wd, "checkpoints", str(2 * STEPS))) + 40 * 1024
            filler = fill(point)
            os.truncate(filler, max(0, os.path.getsize(filler) - room))

        poll_then(p, os.path.join(wd, "checkpoints", str(2 * STEPS)), almost)
        p.finish()
        written = [n for n in OUTPUT_FILES if os.path.exists(os.path.join(wd, n))]
        row(
            "6e",
            "(beyond the issue) the disk full after the final checkpoint commits, when "
            "per_sample.npz is written",
            p,
            1,
            [
                (FINAL in committed(wd), f"checkpoints {committed(wd)}"),
                (True, f"outputs written: {written or 'none'}"),
            ],
            one_line=True,
        )
        os.remove(os.path.join(point, "filler"))
        resumed_ok(
            wd, "6e", "space freed; the same command again", flags=("--config.keep_checkpoints=5",)
        )


# ------------------------------------------------------------------------------------------------
# 7. Stops


def _committed_at_line(wd: str, step: int, seen: dict) -> Callable[[str], None]:
    """A watch callback: record, the instant the line arrives, whether ``step`` is committed."""

    def look(line: str) -> None:
        seen.setdefault("committed", os.path.isdir(os.path.join(wd, "checkpoints", str(step))))
        seen.setdefault("pending", [n for n in strays(wd) if n.startswith(str(step))])

    return look


def row_7a() -> None:
    """'saved' said only once the checkpoint is committed (its commit held open 5 s)."""
    for id_, pause, step, says in (
        ("7a", "1:23", STEPS, "SIGTERM: saved the checkpoint of epoch 1"),
        ("7a", "2:4", STEPS + 5, "SIGTERM during epoch 2: saved a checkpoint after step 5/24"),
    ):
        wd = CTX.wd(f"r7a-{step}")
        seen: dict = {}
        p = hooked(
            wd,
            watch=[(says, _committed_at_line(wd, step, seen))],
            JAXNOISE_TEST_PAUSE_AT=pause,
            JAXNOISE_TEST_SLOW_SAVE=f"{step}:5",
        )
        p.wait_for(f"PAUSED {pause.replace(':', ' ')}")
        p.signal(signal.SIGTERM)
        p.finish()
        row(
            id_,
            f"SIGTERM at step {pause} with the commit of checkpoint {step} taking 5 s",
            p,
            143,
            [
                *stdout_has(p, says),
                (
                    seen.get("committed") is True,
                    f"checkpoint {step} committed when “saved” was printed: "
                    f"{seen.get('committed')}",
                ),
            ],
            seconds=f"{p.after_signal:.1f} after the signal (5 s of it the held commit)",
        )


def row_7b() -> None:
    """A double Ctrl-C: the second while the checkpoint is written (hook); and two Ctrl-C 0.15 s
    apart at real moments (no hooks)."""
    wd = CTX.wd("r7b-hook")
    at = STEPS + 5
    p = hooked(wd, JAXNOISE_TEST_PAUSE_AT="2:4", JAXNOISE_TEST_SLOW_SAVE=f"{at}:3")
    p.wait_for("PAUSED 2 4")
    p.signal(signal.SIGINT)
    p.wait_for(f"SLOW_SAVE {at}")
    p.signal(signal.SIGINT)
    p.finish()
    row(
        "7b",
        "Ctrl-C, and Ctrl-C again while that checkpoint is being written",
        p,
        130,
        [
            *stderr_has(
                p,
                "SIGINT again: the checkpoint is being written",
                "stopped by SIGINT: the checkpoint at step 5/24 of epoch 2 is saved",
            ),
            (at in committed(wd), f"checkpoint {at} committed"),
        ],
        seconds=f"{p.after_signal:.1f} after the 2nd signal (the 3 s commit completes)",
    )
    resumed_ok(wd, "7b", "resumed")
    for id_, moment in (("7b", "after-commit"), ("7b", "mid-epoch-1")):
        wd = CTX.wd(f"r7b-{moment}")
        p = main_py(wd)
        if moment == "after-commit":  # just after epoch 1's checkpoint commits
            poll_then(p, os.path.join(wd, "checkpoints", str(STEPS)), lambda: time.sleep(0.3))
            what = "0.3 s after checkpoint 24 commits"
        else:
            p.wait_for("compiling the mixup train step (batch 64")
            time.sleep(2.5)
            what = "2.5 s after the first train step's compile began"
        p.signal(signal.SIGINT)
        time.sleep(0.15)
        p.signal(signal.SIGINT)
        p.finish()
        row(
            id_,
            f"two Ctrl-C 0.15 s apart, {what} (no hooks)",
            p,
            130,
            [
                (
                    len(p.err) <= 2,
                    f"stderr {len(p.err)} line(s): "
                    + " / ".join(f"`{x.strip()[:110]}`" for x in p.err),
                )
            ],
            seconds=f"{p.after_signal:.1f} after the 2nd signal",
        )
        resumed_ok(wd, id_, "resumed")


def row_7c() -> None:
    """A signal during the first compile: the hook's 60 s compile in C; a real first compile
    (empty compilation cache); a resumed run's first compile."""
    wd = CTX.wd("r7c-hook")
    p = hooked(wd, JAXNOISE_TEST_LONG_FIRST_COMPILE="1")
    p.wait_for("FIRST_COMPILE")
    p.signal(signal.SIGTERM)
    p.finish()
    row(
        "7c",
        "SIGTERM during a 60 s first compile (in C)",
        p,
        143,
        [
            *stderr_has(p, "stopped by SIGTERM: nothing to save yet"),
            (not committed(wd), "nothing saved"),
            (p.after_signal < 5, "exit within 5 s"),
        ],
        one_line=True,
        seconds=f"{p.after_signal:.2f} after the signal",
    )
    for id_, resume in (("7c", False), ("7c", True)):
        wd = CTX.wd(f"r7c-real-{resume}")
        if resume:  # a run stopped at step 5 of epoch 2
            q = hooked(wd, JAXNOISE_TEST_PAUSE_AT="2:4")
            q.wait_for("PAUSED 2 4")
            q.signal(signal.SIGTERM)
            q.finish()
        cache = CTX.wd(f"empty-cache-{resume}")
        p = main_py(wd, JAX_COMPILATION_CACHE_DIR=cache)
        p.wait_for("compiling the mixup")
        time.sleep(0.5)
        p.signal(signal.SIGTERM)
        p.finish()
        says = (
            "nothing new to save; the checkpoint at step 5/24 of epoch 2"
            if resume
            else "nothing to save yet"
        )
        what = "empty cache" + (", resumed run" if resume else "")
        row(
            id_,
            f"SIGTERM 0.5 s into the real first compile ({what})",
            p,
            143,
            [
                *stderr_has(p, f"stopped by SIGTERM: {says}"),
                (p.after_signal < 5, "exit within 5 s"),
                (
                    committed(wd) == ([STEPS, STEPS + 5] if resume else []),
                    f"checkpoints {committed(wd)}",
                ),
            ],
            one_line=True,
            seconds=f"{p.after_signal:.2f} after the signal",
        )


def row_7d() -> None:
    """Ctrl-C (and SIGTERM) while the command starts: imports, config, data."""
    for delay in (0.2, 0.5, 1.0, 2.0, 4.0, 6.0):
        wd = CTX.wd(f"r7d-{delay}")
        p = main_py(wd)
        time.sleep(delay)
        p.signal(signal.SIGINT)
        p.finish()
        phase = "done" if p.rc == 0 else ""
        # Still starting: nothing may be saved. Already training (with a warm compilation
        # cache the tiny run trains within seconds): the checkpoint the line names is saved.
        saved, says = bool(committed(wd)), any("is saved in" in x for x in p.err)
        what = (
            "training had begun: the checkpoint the line names is saved"
            if says
            else ("nothing saved")
        )
        row(
            "7d",
            f"Ctrl-C {delay} s after `python main.py` started",
            p,
            130,
            [
                (saved == says, what if saved == says else f"saved {saved}, the line says {says}"),
                *([(True, phase)] if phase else []),
            ],
            one_line=True,
            seconds=f"{p.after_signal:.2f} after the signal",
        )
    wd = CTX.wd("r7d-term")
    p = main_py(wd)
    time.sleep(0.5)
    p.signal(signal.SIGTERM)
    p.finish()
    row(
        "7d",
        "SIGTERM 0.5 s after start (during imports: Python's default action)",
        p,
        (-15, 143),
        [(len(p.err) <= 1, f"stderr {len(p.err)} line(s)")],
        seconds=f"{p.after_signal:.2f} after the signal",
    )


# ------------------------------------------------------------------------------------------------
# 8. docs/RELIABILITY.md names only tests that exist


def row_8() -> None:
    """Every test docs/RELIABILITY.md names exists (in the file it names, else in tests/)."""
    doc = open(os.path.join(ROOT, "docs", "RELIABILITY.md")).read()
    tests_dir = os.path.join(ROOT, "tests")
    defined: dict[str, set[str]] = {}
    for name in os.listdir(tests_dir):
        if name.endswith(".py"):
            text = open(os.path.join(tests_dir, name)).read()
            defined[name] = set(re.findall(r"^def (test_\w+)", text, re.M))
    missing, n = [], 0
    for cell in re.findall(r"`([^`]*test_\w+[^`]*)`", doc):
        file = None
        for part in re.split(r"[,\s]+", cell):
            m = re.match(r"(?:tests/)?(test_\w+\.py)(?:::(test_\w+))?", part)
            if m:
                file = m.group(1)
                if m.group(2):
                    n += 1
                    if m.group(2) not in defined.get(file, set()):
                        missing.append(f"{file}::{m.group(2)}")
                elif file not in defined:
                    missing.append(file)
                continue
            m = re.match(r"(?:::)?(test_\w+)", part)
            if m and not m.group(1).endswith("_py"):
                n += 1
                where = [file] if file else list(defined)
                if not any(m.group(1) in defined.get(f, set()) for f in where):
                    missing.append(f"{file or 'tests/'}::{m.group(1)}")
    row(
        "8",
        "docs/RELIABILITY.md: every named test exists",
        None,
        "",
        [(not missing, f"{n} test names checked" + (f"; missing: {missing}" if missing else ""))],
    )


# ------------------------------------------------------------------------------------------------


ALL = {
    "1": row_1, "2a": row_2a, "2b": row_2b, "2c": row_2c, "3a": row_3a, "3b": row_3b,
    "4a": row_4a, "4b": row_4b, "5": row_5, "6a": row_6a, "6b": row_6b, "6c": row_6c,
    "6d": row_6d, "6e": row_6e, "7a": row_7a, "7b": row_7b, "7c": row_7c, "7d": row_7d, "8": row_8,
}  # fmt: skip


def reference() -> None:
    """The uninterrupted run (it also fills the campaign's compilation cache)."""
    CTX.ref = CTX.wd("reference")
    p = main_py(CTX.ref)
    p.finish()
    if p.rc != 0:
        raise SystemExit(f"the reference run failed: {p.tail()}")
    CTX.ref_seconds = p.wall
    print(f"reference run: {p.wall:.1f} s", flush=True)


def table(rows: list[Row]) -> str:
    head = [
        "#",
        "fault",
        "rc (expected)",
        "lines out / err",
        "traceback",
        "s",
        "correct",
        "what happened",
    ]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        out.append(
            "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in r.cells()) + " |"
        )
    return "\n".join(out)


def commands(rows: list[Row]) -> str:
    seen, out = set(), []
    for r in rows:
        if r.command and (r.id, r.command) not in seen:
            seen.add((r.id, r.command))
            out.append(f"- {r.id}: `{r.command}`")
    return "\n".join(out)


def write(rows: list[Row], argv: list[str], load0: tuple, load1: tuple, seconds: float) -> None:
    import jax

    failed = [r for r in rows if not r.ok and not r.limitation]
    limits = [r for r in rows if r.limitation]
    text = f"""# Fault campaign (issue 25), re-run after the fixes

Command: `python {" ".join(argv)}` (as root: tmpfs mounts, `setpriv` to user nobody)
Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs, load average
{load0[0]:.1f} at the start and {load1[0]:.1f} at the end (wall times are inflated by the load);
jax {jax.__version__} on CPU; jaxnoise commit {git_commit()}; {seconds / 60:.1f} min in all. The
uninterrupted reference run (`python main.py --config {RUN}`) took {CTX.ref_seconds:.1f} s.

Every process is `python main.py` on the tiny run of `{RUN}` (3 epochs of 24 steps; the final
checkpoint is step {FINAL}) unless the row says otherwise; `JAXNOISE_TEST_*` rows go through
`{RUN}` (main.py with the fault hooks of its docstring). "correct" also requires the expected
exit code and no traceback; "lines out / err" are stdout / stderr lines; "s" is the process's
wall time unless the cell says from when. Byte-identical means metrics.jsonl (less its timing
fields) and per_sample.npz, label_issues.csv, label_issues_summary.json, outputs.json and every
figure equal to the uninterrupted run's.

{len(rows) - len(failed) - len(limits)} of {len(rows)} checks correct, {len(failed)} failed
({", ".join(r.id for r in failed) or "none"}), {len(limits)} documented limitation(s)
({", ".join(r.id for r in limits) or "none"}).

{table(rows)}

## Commands ($T: the campaign's temporary folder)

{commands(rows)}
"""
    with open(RESULTS, "w") as f:
        f.write(text)
    print(f"wrote {RESULTS}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated row ids or prefixes")
    parser.add_argument("--write", action="store_true", help=f"write {RESULTS}")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--cache",
        default="",
        help="a compilation cache folder to reuse "
        "(default: a new one in the temporary folder, filled by the reference)",
    )
    args = parser.parse_args()
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    chosen = [k for k in ALL if not wanted or any(k.startswith(w) for w in wanted)]
    if os.geteuid() != 0 and any(k[0] == "6" for k in chosen):
        print("rows 6a/6c/6d/6e mount tmpfs filesystems: run as root", file=sys.stderr)
    load0, t0 = os.getloadavg(), time.time()
    CTX.base = tempfile.mkdtemp(prefix="faults-")
    os.chmod(CTX.base, 0o755)  # user nobody (row 6a) walks through it
    CTX.cache = os.path.abspath(args.cache) if args.cache else CTX.wd("xla-cache")
    print(f"campaign folder {CTX.base}; rows {', '.join(chosen)}", flush=True)
    try:
        if any(k != "8" for k in chosen):
            reference()
        for k in chosen:
            print(f"row {k}: {ALL[k].__doc__.splitlines()[0]}", flush=True)
            try:
                ALL[k]()
            except Exception as e:  # a row that could not be run is a failed row, not the end
                ROWS.append(
                    Row(
                        k,
                        f"{ALL[k].__doc__.splitlines()[0]} (the campaign itself failed)",
                        None,
                        "",
                        False,
                        f"**{type(e).__name__}: {' '.join(str(e).split())[:600]}**",
                    )
                )
                print(f"  FAIL {k}: {type(e).__name__}: {e}", flush=True)
    finally:
        for proc in CHILDREN:
            if proc.p.poll() is None:
                proc.p.kill()
        if not args.keep:
            shutil.rmtree(CTX.base, ignore_errors=True)
    print()
    print(table(ROWS))
    if args.write:
        write(ROWS, sys.argv, load0, os.getloadavg(), time.time() - t0)
    return 0 if all(r.ok or r.limitation for r in ROWS) else 1


if __name__ == "__main__":
    sys.exit(main())
