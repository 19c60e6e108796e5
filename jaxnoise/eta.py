"""Whole-run time: the remaining time of a run and its projected total, from measured times.

:class:`RunClock` is pure: the loop feeds it how long measured amounts of work took (train
steps of one kind, or per-epoch passes such as the tracking pass and the test evaluation) and
asks how long some amount of work will take (``{unit: count}``). The units are

    train, warmup, semi     one train step (M-DYR-H & co.; DivideMix's warm-up and semi steps)
    track, eval, divide     one per-epoch pass (tracking pass + mixture fit; test evaluation
                            and the epoch's bookkeeping; DivideMix's co-divide of both networks)

Its inputs leave compile time out: :func:`work_clock` is a monotonic clock that stands still
while jax traces, lowers or compiles a program (or loads it from the persistent compilation
cache), so the first call of each compiled step does not count as a slow step. A unit not
measured yet can borrow another's time through a prior (``semi`` = 3x ``warmup``), which makes
the result an estimate (:class:`Estimate`).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
import time

STEP_UNITS = ("train", "warmup", "semi")  # per train step; the others are per pass
DAY = 86400.0

# DivideMix before its first semi epoch: a semi step is six eval-mode forwards of B (co-guessing
# and co-refinement targets) and a forward + backward of 4B mixed rows, ~18B forward-rows, a
# warm-up step a forward + backward of 2B, ~6B (a backward taken as two forwards): 3x.
SEMI_PER_WARMUP_STEP = 3.0


def format_duration(seconds: float) -> str:
    """Seconds as '42s', '7m05s' or '3h02m'."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A time for some work. ``partial``: part of the work has no time yet (a lower bound);
    ``estimated``: it rests on a prior or on a guessed amount of work."""

    seconds: float
    partial: bool = False
    estimated: bool = False

    def __str__(self) -> str:
        return (">" if self.partial else "~" if self.estimated else "") + format_duration(
            self.seconds
        )


class RunClock:
    """Recent seconds per unit of work (the last ``window`` measurements of each unit) and
    the time of any amount of work from them. Times are fed in; it reads no clock."""

    def __init__(self, window: int = 20, priors: dict[str, tuple[str, float]] | None = None):
        self.window = window
        self.priors = dict(priors or {})  # unit -> (measured unit, factor) until it is measured
        self._samples: dict[str, collections.deque] = {}

    def add(self, unit: str, count: float, seconds: float) -> None:
        """``count`` units of ``unit`` took ``seconds`` (compile time left out)."""
        if count > 0 and math.isfinite(seconds) and seconds >= 0:
            self._samples.setdefault(unit, collections.deque(maxlen=self.window)).append(
                (float(count), float(seconds))
            )

    def measured(self, unit: str) -> float | None:
        """Recent seconds per unit: the last ``window`` measurements' time over their count."""
        samples = self._samples.get(unit)
        if not samples:
            return None
        return sum(s for _, s in samples) / sum(n for n, _ in samples)

    def per_unit(self, unit: str) -> tuple[float, bool] | None:
        """(seconds per unit, whether it comes from a prior), or None when unknown."""
        m = self.measured(unit)
        if m is not None:
            return m, False
        base, factor = self.priors.get(unit, ("", 0.0))
        b = self.measured(base) if base else None
        return None if b is None else (b * factor, True)

    def estimate(self, work: dict[str, float], *, estimated: bool = False) -> Estimate | None:
        """The time of ``work`` ({unit: count}); None when none of it has a time yet."""
        total, partial, known = 0.0, False, not any(count > 0 for count in work.values())
        for unit, count in work.items():
            if count <= 0:
                continue
            u = self.per_unit(unit)
            if u is None:
                partial = True
                continue
            total, known, estimated = total + count * u[0], True, estimated or u[1]
        return Estimate(total, partial, estimated) if known else None

    def describe(self, unit: str, label: str = "") -> str:
        """'train 5.1 s/step' or 'track 40s' ('?' when unknown, '~' from a prior)."""
        u = self.per_unit(unit)
        if u is None:
            return f"{label or unit} ?"
        value = f"{u[0]:.3g} s/step" if unit in STEP_UNITS else format_duration(u[0])
        return f"{label or unit} {'~' if u[1] else ''}{value}"


def add_work(*works: dict[str, float]) -> dict[str, float]:
    """The sum of several {unit: count}."""
    out: dict[str, float] = {}
    for w in works:
        for unit, count in w.items():
            out[unit] = out.get(unit, 0) + count
    return out


# ------------------------------------------------------------------------------------------------
# The work of a run.


def bootstrap_work(epochs: int, steps_per_epoch: int) -> dict[str, float]:
    """The work of ``epochs`` whole epochs of the bootstrap loop (jaxnoise/bootstrap/loop.py)."""
    return {"train": epochs * steps_per_epoch, "track": epochs, "eval": epochs}


def dividemix_work(
    first: int, epochs: int, warm_up: int, warm_steps: int, semi_steps: float, final: bool = True
) -> dict[str, float]:
    """The work of DivideMix epochs ``first..epochs`` (1-based, inclusive; warm-up epochs
    ``1..warm_up``): per warm-up epoch ``warm_steps`` (both networks) and an eval, per semi epoch
    a divide, ``semi_steps`` (both networks) and an eval; with ``final``, the division of the
    final networks after them."""
    n = max(0, epochs + 1 - first)
    warm = max(0, min(warm_up, epochs) + 1 - first)
    return {
        "warmup": warm * warm_steps,
        "semi": (n - warm) * semi_steps,
        "eval": n,
        "divide": (n - warm) + int(final),
    }


def dividemix_semi_steps(labelled: list[int], batch: int) -> int:
    """Semi steps of one epoch, both networks: ceil(|labelled| / B) per network."""
    return sum(-(-int(n) // batch) for n in labelled)


def dividemix_priors(n_train: int, n_test: int) -> dict[str, tuple[str, float]]:
    """Until measured: a semi step from the warm-up step's time, a divide (eval-mode forwards of
    both networks over the training set) from the test evaluation's (over the test set; none
    without a test set: unknown until the first division)."""
    priors = {"semi": ("warmup", SEMI_PER_WARMUP_STEP)}
    if n_test:
        priors["divide"] = ("eval", n_train / n_test)
    return priors


def _about(e: Estimate | None) -> str:
    if e is None:
        return "unknown"
    return ("at least " if e.partial else "≈ ") + format_duration(e.seconds)


def faster_hint(platform: str, features: bool) -> str:
    """What would take a fraction of the time: a GPU (on a CPU), embeddings (on images)."""
    ways = [] if platform != "cpu" else ["a GPU"]
    if not features:
        ways.append(
            "a head on embeddings (data.source='features', or data.extractor="
            "'kmeans' / 'resnet50' on these images)"
        )
    return " or ".join(ways)


def projection(
    clock: RunClock,
    epochs: int,
    total: dict[str, float],
    left: dict[str, float],
    terms: str,
    *,
    estimated: bool = False,
    hint: str = "",
) -> str:
    """'projected: 300 epochs ≈ 163h (terms); left ≈ 162h' and, past a day, ``hint`` (what
    takes a fraction of that time, :func:`faster_hint`)."""
    whole = clock.estimate(total, estimated=estimated)
    rest = clock.estimate(left, estimated=estimated)
    if whole is None:
        return f"projected: {epochs} epochs, time unknown yet ({terms})"
    note = "; an estimate" if whole.estimated else ""
    line = f"projected: {epochs} epochs {_about(whole)} ({terms}{note}); left {_about(rest)}"
    if whole.seconds > DAY and hint:
        line += f" — more than a day: {hint} would take a fraction of that"
    return line


def bootstrap_projection(
    clock: RunClock, epochs: int, steps_per_epoch: int, left: dict[str, float], hint: str = ""
) -> str:
    """The projection line of the bootstrap loop: train s/step x steps/epoch + passes."""
    terms = (
        f"{clock.describe('train')} × {steps_per_epoch} steps/epoch + "
        f"{clock.describe('track')} + {clock.describe('eval')} per epoch"
    )
    total = bootstrap_work(epochs, steps_per_epoch)
    return projection(clock, epochs, total, left, terms, hint=hint)


def dividemix_projection(
    clock: RunClock,
    epochs: int,
    warm_up: int,
    warm_steps: int,
    semi_steps: float,
    labelled: str,
    left: dict[str, float],
    hint: str = "",
) -> str:
    """The projection line of DivideMix (epochs 1..epochs): warm-up and semi epochs apart; the
    semi epochs' steps follow the labelled-set size ``labelled`` describes, so an estimate."""
    terms = (
        f"{min(warm_up, epochs)} warm-up epochs of {warm_steps} steps, "
        f"{clock.describe('warmup')}; {max(0, epochs - warm_up)} semi epochs of "
        f"~{semi_steps:.0f} steps ({labelled}), {clock.describe('semi')}; "
        f"{clock.describe('divide')} + {clock.describe('eval')} per epoch"
    )
    total = dividemix_work(1, epochs, warm_up, warm_steps, semi_steps)
    return projection(clock, epochs, total, left, terms, estimated=True, hint=hint)


# ------------------------------------------------------------------------------------------------
# A clock without compile time.


def merge_span(
    spans: list[tuple[float, float]], start: float, end: float
) -> tuple[list[tuple[float, float]], float]:
    """Add [start, end] to sorted disjoint ``spans``: (the merged spans, the newly covered
    length). Nested compile events (a jit traced inside another's trace) count once."""
    if not end > start:
        return spans, 0.0
    covered = sum(max(0.0, min(e, end) - max(s, start)) for s, e in spans)
    lo, hi, keep = start, end, []
    for s, e in spans:
        if e < start or s > end:
            keep.append((s, e))
        else:
            lo, hi = min(lo, s), max(hi, e)
    return sorted([*keep, (lo, hi)])[-256:], (end - start) - covered


_lock = threading.Lock()
_state = {"spans": [], "compile": 0.0, "listening": False}


def _on_span(event: str, start: float, end: float, **_) -> None:
    if event.startswith("/jax/core/compile/"):  # trace, lowering, backend compile (or cache load)
        with _lock:
            _state["spans"], added = merge_span(_state["spans"], start, end)
            _state["compile"] += added


def compile_seconds() -> float:
    """Seconds this process spent tracing, lowering and compiling since it first asked."""
    with _lock:
        if not _state["listening"]:
            import jax

            jax.monitoring.register_event_time_span_listener(_on_span)
            _state["listening"] = True
        return _state["compile"]


def work_clock() -> float:
    """A monotonic clock (seconds) that leaves out compile time; only differences of readings
    taken on both sides of a compile are meaningful."""
    return time.monotonic() - compile_seconds()
