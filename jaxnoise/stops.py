"""Clean stops on SIGTERM / SIGINT (a preemption, Ctrl-C): what a signal does at each moment.

- **Nothing to save** (before the first train step of this process returns: loading data,
  restoring, compiling the first step): the process exits at once with ``128 + signum`` and one
  line, also while the main thread is inside a long XLA compile (a watcher thread, woken by
  ``signal.set_wakeup_fd``, acts without waiting for the interpreter). Single-process runs only:
  the processes of a multi-host job must stop together.
- **Training**: a request to stop at the next step boundary (``stop_requested``); the run kit
  saves the position there and says "saved" once the checkpoint is committed.
- **A second signal while a checkpoint is being written**: one line, and the write completes
  (killing the process now would leave the previous checkpoint, which is said too).
- **A second SIGINT otherwise**: ``KeyboardInterrupt`` at once (the command line turns it into
  one line: the last committed checkpoint is kept).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_AT_IDLE_EXIT: list = []  # callables run (best effort) before an immediate exit


def at_idle_exit(fn) -> None:
    """Run ``fn()`` before the process exits at once on a signal with nothing to save (e.g. the
    command line removes a workdir it created and that holds nothing)."""
    _AT_IDLE_EXIT.append(fn)


class PreemptionGuard:
    """Turns SIGTERM / SIGINT into a request to stop at the next safe point (see the module
    docstring). ``signum`` is the first signal received; ``idle_message`` is the line an
    immediate exit prints after "stopped by SIG...: " (the run kit sets it)."""

    def __init__(self, *, exit_when_idle: bool = True):
        self.stop_requested = False
        self.signum: int | None = None
        self.idle = True  # nothing new to save since the start or the restored checkpoint
        self.idle_message = "nothing to save yet"
        self._saving = 0
        self._exit_when_idle = exit_when_idle
        self._old: dict = {}
        self._old_wakeup: int | None = None
        self._pipe: tuple[int, int] | None = None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "stop request"

    @property
    def saving(self) -> bool:
        return self._saving > 0

    def busy(self) -> None:
        """The run has something new (its first train step returned): signals stop at a step."""
        self.idle = False

    @contextlib.contextmanager
    def saving_checkpoint(self) -> Iterator[None]:
        """While a checkpoint is being written: a second signal waits for it."""
        self._saving += 1
        try:
            yield
        finally:
            self._saving -= 1

    def _handler(self, signum, frame):
        if self.saving and self.stop_requested:
            print(
                f"{signal.Signals(signum).name} again: the checkpoint is being written and is "
                "complete in a moment (killed now, the previous checkpoint stays)",
                file=sys.stderr,
                flush=True,
            )
            return
        if self.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop_requested = True
        if self.signum is None:
            self.signum = signum

    def _watch(self, fd: int) -> None:
        """The watcher thread: exit at once on a signal while the run is idle."""
        while True:
            try:
                data = os.read(fd, 64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                if signum in SIGNALS and self.idle and not self.saving:
                    name = signal.Signals(signum).name
                    os.write(2, f"stopped by {name}: {self.idle_message}\n".encode())
                    for fn in _AT_IDLE_EXIT:
                        try:
                            fn()
                        except Exception:  # best effort: the exit must happen
                            pass
                    os._exit(128 + signum)

    def __enter__(self) -> PreemptionGuard:
        for sig in SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                return self
        if self._exit_when_idle:
            r, w = os.pipe()
            os.set_blocking(w, False)
            self._pipe = (r, w)
            self._old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
            threading.Thread(target=self._watch, args=(r,), daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        if self._pipe is not None:
            signal.set_wakeup_fd(self._old_wakeup if self._old_wakeup is not None else -1)
            for fd in reversed(self._pipe):  # the write end first: the watcher reads EOF
                os.close(fd)
            self._pipe = None
