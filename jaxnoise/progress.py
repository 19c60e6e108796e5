"""Progress bars and log lines (process 0 only; bars are quiet when not on a terminal)."""

from __future__ import annotations

import sys
import time

import jax
from tqdm.auto import tqdm


def is_main_process() -> bool:
    """True on the process that logs (process 0 of a multi-host job)."""
    return jax.process_index() == 0


def log(message: str) -> None:
    """Print one timestamped line on the main process."""
    if is_main_process():
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Progress:
    """A tqdm bar shown only on the main process and only on a terminal."""

    def __init__(self, total: int, desc: str):
        disable = (not is_main_process()) or not sys.stderr.isatty()
        self._bar = tqdm(total=total, desc=desc, disable=disable, leave=False, unit="step")
        self.n = 0

    def update(self, k: int, **postfix: float) -> None:
        """Advance by k steps and show the given numbers."""
        self.n += k
        if postfix:
            self._bar.set_postfix({key: f"{v:.4g}" for key, v in postfix.items()}, refresh=False)
        self._bar.update(k)

    def close(self) -> None:
        """Remove the bar."""
        self._bar.close()
