"""Progress on the main process: a tqdm bar on a terminal, timed log lines everywhere else.

Under nohup, SLURM or a pipe there is no terminal to draw a bar on, so :class:`Progress` prints
one line every ``log_every_seconds`` (step, s/step, images/s, ETA) when stdout is not a terminal.
Both count only the steps of this process: a run resumed at step k starts its bar at k and its
rates and ETA from there. Given a :class:`jaxnoise.eta.RunClock`, the bar also feeds it its
steps' times (compile time left out: :func:`jaxnoise.eta.work_clock`) and shows the remaining
time of the whole run ("run ETA").
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import jax
from tqdm.auto import tqdm

from jaxnoise.eta import Estimate, RunClock, format_duration, work_clock

__all__ = ["Progress", "format_duration", "is_main_process", "log"]


def is_main_process() -> bool:
    """True on the process that logs (process 0 of a multi-host job)."""
    return jax.process_index() == 0


def log(message: str) -> None:
    """Print one timestamped line on the main process."""
    if is_main_process():
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


class Progress:
    """A tqdm bar (main process, stderr a terminal) and/or timed log lines (stdout not one).

    ``initial`` is the step a resumed run starts at: the bar shows it, and every rate counts
    only the steps from there. ``items_per_step`` (the batch size) gives images/s.
    ``log_every_seconds`` = 0 turns the log lines off. ``clock`` is for tests (by default a
    clock that leaves out compile time). With ``run``, every update adds its steps' time to
    that RunClock as ``unit`` and the bar and lines show the run's remaining time: this bar's
    steps left plus ``later`` (the run's work after this bar, {unit: count}; ``estimated``
    when that is a guess).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        initial: int = 0,
        items_per_step: int = 0,
        log_every_seconds: float = 60.0,
        clock: Callable[[], float] = work_clock,
        bar: bool | None = None,
        lines: bool | None = None,
        run: RunClock | None = None,
        unit: str = "train",
        later: dict[str, float] | None = None,
        estimated: bool = False,
    ):
        main = is_main_process()
        if bar is None:
            bar = _isatty(sys.stderr)
        if lines is None:
            lines = not _isatty(sys.stdout)
        self.total, self.desc, self.n = total, desc, initial
        self._items = items_per_step
        self._every = float(log_every_seconds)
        self._lines = main and lines and self._every > 0
        self._clock = clock
        self._last_t = self._prev_t = clock()
        self._last_n = initial
        self._run, self._unit, self._later, self._estimated = run, unit, later or {}, estimated
        self._bar = tqdm(
            total=total,
            desc=desc,
            initial=initial,
            disable=not (main and bar),
            leave=False,
            unit="step",
        )

    def update(self, k: int, **postfix: float) -> None:
        """Advance by k steps and show the given numbers (e.g. the running loss)."""
        self.n += k
        now = self._clock() if self._lines or self._run is not None else 0.0
        shown = {key: f"{v:.4g}" for key, v in postfix.items()}
        if self._run is not None:
            self._run.add(self._unit, k, now - self._prev_t)
            self._prev_t = now
            left = self.run_left()
            if left is not None:
                shown["run ETA"] = str(left)
        if shown:
            self._bar.set_postfix(shown, refresh=False)
        self._bar.update(k)
        if self._lines:
            if now - self._last_t >= self._every and self.n > self._last_n:
                log(self.line(now, postfix))
                self._last_t, self._last_n = now, self.n

    def run_left(self) -> Estimate | None:
        """The whole run's remaining time (None without a RunClock or any time yet)."""
        if self._run is None:
            return None
        work = dict(self._later)
        work[self._unit] = work.get(self._unit, 0) + self.total - self.n
        return self._run.estimate(work, estimated=self._estimated)

    def line(self, now: float, postfix: dict[str, float] | None = None) -> str:
        """The log line: rates over the steps since the previous line (or since the start)."""
        steps = self.n - self._last_n
        s_per_step = (now - self._last_t) / max(steps, 1)
        parts = [f"{self.desc}: step {self.n}/{self.total}", f"{s_per_step:.3g} s/step"]
        if self._items:
            parts.append(f"{self._items / max(s_per_step, 1e-9):.0f} images/s")
        parts.append(f"ETA {format_duration((self.total - self.n) * s_per_step)}")
        left = self.run_left()
        if left is not None:
            parts.append(f"run ETA {left}")
        for key, v in (postfix or {}).items():
            if not (self._items and key == "images_per_s"):  # already shown, over this window
                parts.append(f"{key} {v:.4g}")
        return ", ".join(parts)

    def close(self) -> None:
        """Remove the bar."""
        self._bar.close()
