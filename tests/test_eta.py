"""The whole-run ETA (jaxnoise/eta.py): RunClock on synthetic times fed in, the work of a run,
the projection line, the compile-free clock's span arithmetic, and Progress feeding a RunClock.

No test reads the wall clock for its numbers: every time is made up and fed in, and each
expected value is worked out here by hand (plain Python), not by the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from jaxnoise import eta, progress


def same(e: eta.Estimate | None, seconds: float, partial=False, estimated=False) -> bool:
    """An estimate of ``seconds`` (to float rounding) with the given flags."""
    return (
        e is not None
        and e.seconds == pytest.approx(seconds)
        and (e.partial, e.estimated) == (partial, estimated)
    )


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_recent_seconds_per_step_is_the_window_total_over_its_steps():
    clock = eta.RunClock(window=3)
    assert clock.measured("train") is None
    samples = [(20, 100.0), (20, 40.0), (10, 30.0), (20, 60.0)]  # (steps, seconds)
    for n, s in samples:
        clock.add("train", n, s)
    # the last three samples only: (40 + 30 + 60) / (20 + 10 + 20)
    assert clock.measured("train") == pytest.approx(130.0 / 50.0)
    clock.add("train", 0, 5.0)  # nothing done: ignored
    clock.add("train", 5, -1.0)  # a clock that went backwards: ignored
    clock.add("train", 5, math.nan)
    assert clock.measured("train") == pytest.approx(130.0 / 50.0)


def test_estimate_sums_work_times_and_flags_unknown_and_prior_parts():
    clock = eta.RunClock(priors={"semi": ("warmup", 3.0)})
    assert clock.estimate({"train": 10}) is None  # nothing timed yet
    assert clock.estimate({}) == eta.Estimate(0.0)  # nothing left: zero, not unknown
    clock.add("train", 4, 2.0)  # 0.5 s/step
    clock.add("eval", 1, 8.0)
    e = clock.estimate({"train": 100, "eval": 3, "track": 3})
    assert same(e, 100 * 0.5 + 3 * 8.0, partial=True)  # track unknown: a lower bound
    assert str(e) == ">1m14s"
    assert same(clock.estimate({"train": 100, "eval": 3}), 74.0)
    assert str(clock.estimate({"train": 100, "eval": 3}, estimated=True)) == "~1m14s"
    # semi not measured: 3x the warm-up step, an estimate; once measured, its own time
    clock.add("warmup", 10, 2.0)
    assert same(clock.estimate({"semi": 10}), 10 * 0.2 * 3.0, estimated=True)
    assert clock.describe("semi") == "semi ~0.6 s/step"
    clock.add("semi", 10, 7.0)
    assert same(clock.estimate({"semi": 10}), 7.0)
    assert clock.describe("semi") == "semi 0.7 s/step"
    assert clock.describe("eval") == "eval 8s" and clock.describe("track") == "track ?"


def test_bootstrap_projection_of_the_issue_example():
    """5.1 s/step x 391 steps + track 40 s + eval 8 s per epoch, 300 epochs: the projected
    total, what is left after the first, and the hint past a day."""
    clock = eta.RunClock()
    for _ in range(5):  # steps in log windows of 20 (compile time already left out)
        clock.add("train", 20, 20 * 5.1)
    clock.add("track", 1, 40.0)
    clock.add("eval", 1, 8.0)
    per_epoch = 391 * 5.1 + 40.0 + 8.0
    total, left = 300 * per_epoch, 299 * per_epoch
    hint = eta.faster_hint("cpu", features=False)
    line = eta.bootstrap_projection(clock, 300, 391, eta.bootstrap_work(299, 391), hint)
    expect_total = f"{int(round(total)) // 3600}h{int(round(total)) % 3600 // 60:02d}m"
    expect_left = f"{int(round(left)) // 3600}h{int(round(left)) % 3600 // 60:02d}m"
    assert line.startswith(
        f"projected: 300 epochs ≈ {expect_total} (train 5.1 s/step × 391 "
        "steps/epoch + track 40s + eval 8s per epoch); "
        f"left ≈ {expect_left}"
    ), line
    assert "more than a day: a GPU or a head on embeddings (data.source='features'" in line
    assert "an estimate" not in line
    # under a day, or with nothing faster to suggest: no hint
    short = eta.bootstrap_projection(clock, 10, 391, eta.bootstrap_work(9, 391), hint)
    assert "more than a day" not in short and "projected: 10 epochs ≈ 5h40m" in short
    assert "more than a day" not in eta.bootstrap_projection(clock, 300, 391, {}, "")
    assert "left ≈ 0s" in eta.bootstrap_projection(clock, 300, 391, {}, "")


def test_faster_hint():
    assert eta.faster_hint("gpu", features=True) == ""
    assert eta.faster_hint("cpu", features=True) == "a GPU"
    assert eta.faster_hint("gpu", features=False).startswith("a head on embeddings")


def test_projection_before_anything_is_timed_and_with_unknown_parts():
    clock = eta.RunClock()
    assert eta.bootstrap_projection(clock, 3, 10, {"train": 20}).startswith(
        "projected: 3 epochs, time unknown yet (train ? × 10 steps/epoch"
    )
    clock.add("train", 10, 10.0)
    line = eta.bootstrap_projection(clock, 3, 10, eta.bootstrap_work(2, 10))
    assert "3 epochs at least 30s" in line and "left at least 20s" in line  # passes unknown


def _dividemix_reference(first, epochs, warm_up, warm_steps, semi_steps):
    """The work epoch by epoch, as the loop runs it (epochs 1..epochs, warm-up 1..warm_up, then
    a final division)."""
    work = {"warmup": 0, "semi": 0, "eval": 0, "divide": 1}
    for e in range(first, epochs + 1):
        if e <= warm_up:
            work["warmup"] += warm_steps
        else:
            work["divide"] += 1
            work["semi"] += semi_steps
        work["eval"] += 1
    return work


@pytest.mark.parametrize(
    "first,epochs,warm_up",
    [
        (1, 301, 10),
        (7, 301, 10),
        (11, 301, 10),
        (250, 301, 10),
        (302, 301, 10),
        (1, 4, 5),
        (3, 4, 5),
    ],
)
def test_dividemix_work_counts_each_epoch(first, epochs, warm_up):
    got = eta.dividemix_work(first, epochs, warm_up, warm_steps=782, semi_steps=390)
    ref = _dividemix_reference(first, epochs, warm_up, 782, 390)
    assert {k: v for k, v in got.items() if v} == {k: v for k, v in ref.items() if v}


def test_dividemix_semi_steps_and_projection():
    assert eta.dividemix_semi_steps([25000, 24937], 64) == 391 + 390  # ceil per network
    clock = eta.RunClock(priors=eta.dividemix_priors(50000, 10000))
    clock.add("warmup", 20, 20 * 1.5)
    clock.add("eval", 1, 10.0)
    # after warm-up epoch 1 of 1..301 (warm-up 1..10): semi steps and divides from the priors
    semi = eta.dividemix_semi_steps([25000, 25000], 64)
    left = eta.dividemix_work(2, 301, 10, 782, semi)
    line = eta.dividemix_projection(clock, 301, 10, 782, semi, "labelled ~25000 each", left)
    per_warm = 782 * 1.5 + 10.0
    per_semi = semi * 4.5 + 10.0 + 50.0  # semi 3 x 1.5 s/step; divide 5 x eval (50k vs 10k)
    total = 10 * per_warm + 291 * per_semi + 50.0  # + the final division
    h = int(round(total))
    assert f"projected: 301 epochs ≈ {h // 3600}h{h % 3600 // 60:02d}m (10 warm-up" in line, line
    assert "semi ~4.5 s/step" in line and "divide ~50s" in line and "an estimate" in line
    assert "291 semi epochs of ~782 steps (labelled ~25000 each)" in line


def test_merge_span_counts_overlaps_once():
    rng = np.random.default_rng(0)
    spans, total = [], 0.0
    intervals = [
        (float(a), float(a + d)) for a, d in zip(rng.uniform(0, 100, 40), rng.uniform(0, 8, 40))
    ]
    intervals += [(10.0, 12.0), (10.5, 11.0), (11.0, 11.5)]  # nested, as inner jit traces are
    for a, b in intervals:
        spans, added = eta.merge_span(spans, a, b)
        assert added >= 0
        total += added
    # reference: the covered length on a fine grid
    grid = np.arange(0, 120, 1e-3) + 5e-4
    covered = np.zeros_like(grid, dtype=bool)
    for a, b in intervals:
        covered |= (grid >= a) & (grid < b)
    assert total == pytest.approx(covered.sum() * 1e-3, abs=0.05)
    assert all(e1 < s2 for (_, e1), (s2, _) in zip(spans, spans[1:]))  # disjoint, sorted
    assert eta.merge_span(spans, 5.0, 5.0)[1] == 0.0


def test_compile_events_are_counted_and_others_not(monkeypatch):
    # A state of its own: the process's real compile spans (kept up to 256) would sort after
    # these made-up ones and push them out.
    monkeypatch.setattr(eta, "_state", {"spans": [], "compile": 0.0, "listening": True})
    before = eta.compile_seconds()
    eta._on_span("/jax/core/compile/backend_compile_duration", 1e9, 1e9 + 2.5)
    eta._on_span("/jax/core/compile/jaxpr_trace_duration", 1e9 + 2.0, 1e9 + 3.0)  # 0.5 new
    eta._on_span("/jax/checkpoint/write", 1e9 + 10, 1e9 + 20)  # not a compile
    assert eta.compile_seconds() - before == pytest.approx(3.0)


def test_a_real_compile_is_seen():
    import jax
    import jax.numpy as jnp

    before = eta.compile_seconds()
    jax.jit(lambda x: jnp.sin(x) * 3.0 + 0.125)(jnp.arange(7.0)).block_until_ready()
    assert eta.compile_seconds() > before


def test_progress_feeds_the_run_clock_and_shows_the_run_eta(capsys):
    clock = FakeClock()
    run = eta.RunClock()
    run.add("track", 1, 30.0)
    run.add("eval", 1, 10.0)
    later = eta.add_work({"track": 1, "eval": 1}, eta.bootstrap_work(2, 100))  # 2 more epochs
    bar = progress.Progress(
        100,
        "epoch 1/3 mixup",
        initial=40,
        items_per_step=128,
        log_every_seconds=10,
        clock=clock,
        bar=False,
        lines=True,
        run=run,
        later=later,
    )
    clock.t += 10
    bar.update(20, loss=1.5)
    assert run.measured("train") == pytest.approx(0.5)
    # left: 40 steps of this epoch + 200 of the next two, 0.5 s each; 3 x (30 + 10) of passes
    assert same(bar.run_left(), 240 * 0.5 + 3 * 40.0)
    line = capsys.readouterr().out.strip()
    assert line.endswith(
        "step 60/100, 0.5 s/step, 256 images/s, ETA 20s, run ETA 4m00s, loss 1.5"
    ), line
    clock.t += 40
    bar.update(40)  # 1 s/step now; the recent rate is (10 + 40) / 60
    assert run.measured("train") == pytest.approx(50.0 / 60.0)
    assert same(bar.run_left(), 200 * 50.0 / 60.0 + 120.0)
    bar.close()


def test_progress_without_a_run_clock_shows_no_run_eta(capsys):
    clock = FakeClock()
    bar = progress.Progress(10, "x", clock=clock, bar=False, lines=True, log_every_seconds=1)
    clock.t += 5
    bar.update(5)
    assert bar.run_left() is None
    assert "run ETA" not in capsys.readouterr().out
    bar.close()
