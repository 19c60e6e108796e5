"""Metric writers beside metrics.jsonl (``jaxnoise.writers``): TensorBoard event files.

The event files are read back here with a TFRecord reader written in this file (length, masked
CRC-32C of the length, the data, its masked CRC; each CRC checked) and tensorboardX's ``Event``
protobuf class, applying TensorBoard's rule for a restarted run (a session START at step s hides
the earlier events at steps >= s). Their scalars are compared with metrics.jsonl, the record.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from jaxnoise import config as config_lib
from jaxnoise import loops
from jaxnoise import writers as writers_lib
from tests import _signal_run

tbx = pytest.importorskip("tensorboardX", reason="tensorboardX (the tensorboard extra) is absent")
from tensorboardX.crc32c import crc32c  # noqa: E402
from tensorboardX.proto.event_pb2 import Event, SessionLog  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _masked(data: bytes) -> int:
    """TFRecord's masked CRC-32C."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(folder) -> list[Event]:
    """Every event of the event files in ``folder``, files in name order (as TensorBoard reads
    them); every record's CRCs checked."""
    events = []
    for name in sorted(n for n in os.listdir(folder) if ".tfevents." in n):
        blob = open(os.path.join(folder, name), "rb").read()
        at = 0
        while at < len(blob):
            head = blob[at : at + 8]
            (n,) = struct.unpack("<Q", head)
            assert struct.unpack("<I", blob[at + 8 : at + 12])[0] == _masked(head)
            data = blob[at + 12 : at + 12 + n]
            assert struct.unpack("<I", blob[at + 12 + n : at + 16 + n])[0] == _masked(data)
            events.append(Event.FromString(data))
            at += 16 + n
    return events


def scalar_series(folder) -> dict[str, list[tuple[int, float, float]]]:
    """{tag: [(step, value, wall time), ...]} as TensorBoard shows them."""
    series: dict[str, list] = {}
    for e in read_events(folder):
        if e.HasField("session_log") and e.session_log.status == SessionLog.START:
            series = {t: [p for p in s if p[0] < e.step] for t, s in series.items()}
        for v in e.summary.value:
            series.setdefault(v.tag, []).append((e.step, v.simple_value, e.wall_time))
    return series


def raw_steps(folder) -> dict[str, list[int]]:
    """{tag: every step an event holds it at}, purge rules not applied."""
    steps: dict[str, list[int]] = {}
    for e in read_events(folder):
        for v in e.summary.value:
            steps.setdefault(v.tag, []).append(e.step)
    return steps


def expected_scalars(path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(epoch, value as float32)]} of metrics.jsonl: every number (booleans as 0 / 1)
    but the epoch, nested names joined with "/" (list items by their index)."""
    out: dict[str, list] = {}
    for line in open(path):
        r = json.loads(line)
        stack = [(k, v) for k, v in r.items() if k != "epoch"]
        while stack:
            tag, v = stack.pop()
            items = v.items() if isinstance(v, dict) else enumerate(v) if type(v) is list else ()
            stack += [(f"{tag}/{k}", x) for k, x in items]
            if isinstance(v, (int, float)):
                out.setdefault(tag, []).append((r["epoch"], float(np.float32(v))))
    return out


def assert_mirrors_metrics(workdir) -> dict:
    """The event files hold each epoch of metrics.jsonl once, every scalar equal (float32, as
    TensorBoard stores them); returns the series."""
    got = scalar_series(os.path.join(workdir, "tensorboard"))
    want = expected_scalars(os.path.join(workdir, "metrics.jsonl"))
    assert sorted(got) == sorted(want)
    for tag, points in want.items():
        shown = [(s, v) for s, v, _ in sorted(got[tag])]
        assert [s for s, _ in shown] == [s for s, _ in points], tag
        assert np.array_equal([v for _, v in shown], [v for _, v in points], equal_nan=True), tag
    for tag, steps in raw_steps(os.path.join(workdir, "tensorboard")).items():
        assert len(steps) == len(set(steps)), (tag, steps)  # even before TensorBoard's purge
    return got


def tiny_config(**fields):
    """The quickstart shrunk (tests/_signal_run.py: 3 epochs of the width-8 CNN on digits)."""
    c = _signal_run.get_config()
    c.log_every_seconds = 0.0
    return _signal_run.set_fields(c, **fields)


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """One workdir trained in three calls: epoch 1 with tensorboard="off", epoch 2 resumed with
    "on", epoch 3 resumed with "auto"; (workdir, what each call left)."""
    wd = str(tmp_path_factory.mktemp("writers") / "run")
    seen = {}
    loops.train_and_evaluate(tiny_config(tensorboard="off"), wd, stop_after_epoch=1)
    seen["off"] = sorted(os.listdir(wd))
    loops.train_and_evaluate(tiny_config(tensorboard="on"), wd, stop_after_epoch=2)
    seen["on"] = scalar_series(os.path.join(wd, "tensorboard"))
    seen["on_metrics"] = expected_scalars(os.path.join(wd, "metrics.jsonl"))
    loops.train_and_evaluate(tiny_config(tensorboard="auto"), wd)
    return wd, seen


@pytest.mark.slow
def test_off_writes_nothing(resumed):
    """tensorboard="off": no tensorboard folder (the run's other files are there)."""
    _, seen = resumed
    assert "tensorboard" not in seen["off"] and "metrics.jsonl" in seen["off"]


@pytest.mark.slow
def test_a_resumed_run_has_each_epoch_once_equal_to_metrics_jsonl(resumed):
    """After each resume the event files mirror metrics.jsonl: the epochs trained before
    TensorBoard was on are written from the history, none appears twice, every numeric field
    (nested ones such as mixture/weights/0 and seconds/train) is a scalar at step = epoch; the
    wall times of the epochs written before a resume are kept."""
    wd, seen = resumed
    assert [e for e, _ in seen["on_metrics"]["test_acc"]] == [1, 2]
    got = assert_mirrors_metrics(wd)
    assert [s for s, _, _ in sorted(got["test_acc"])] == [1, 2, 3]
    for tag in (
        "mixture/weights/0",
        "mixture/weights/1",
        "mixture/valid",
        "seconds/train",
        "loss_quantiles_clean/2",
        "best_acc",
        "lr",
    ):
        assert tag in got, sorted(got)
    assert "epoch" not in got and "phase" not in got
    for tag, points in seen["on"].items():  # epochs 1 and 2, as the second call wrote them
        assert sorted(points) == sorted(p for p in got[tag] if p[0] <= 2), tag


def _history(n: int) -> list[dict]:
    """n epoch records shaped as the methods' (a DivideMix-like nested block, a NaN, a bool)."""
    return [
        {
            "epoch": e,
            "phase": "semi",
            "test_acc": 10.0 * e,
            "auroc": math.nan,
            "division": {"net1": {"auroc": 0.5 + e / 100, "labelled": 40 + e}},
            "mixture": {"valid": e % 2 == 0, "weights": [0.25, 0.75]},
        }
        for e in range(1, n + 1)
    ]


def test_scalars_flattens_nested_fields_with_slashes():
    """Every number but the epoch, nested names joined with "/", booleans as 0 / 1."""
    assert writers_lib.scalars(_history(2)[1]) == pytest.approx(
        {
            "test_acc": 20.0,
            "auroc": math.nan,
            "division/net1/auroc": 0.52,
            "division/net1/labelled": 42.0,
            "mixture/valid": 1.0,
            "mixture/weights/0": 0.25,
            "mixture/weights/1": 0.75,
        },
        nan_ok=True,
    )


def test_an_epoch_redone_after_a_kill_appears_once(tmp_path):
    """A kill after an epoch's record but before its checkpoint: the resumed run's history ends
    one epoch earlier and redoes that epoch; the event files then hold it once (the redone
    values), and the earlier epoch keeps its wall time."""
    wd = str(tmp_path)
    history = _history(3)
    first = writers_lib.open_writers(tiny_config(), wd, history[:1])
    for r in history[1:]:
        first.write(r)
    # no close: the process was killed
    before = scalar_series(os.path.join(wd, "tensorboard"))
    assert [s for s, _, _ in before["test_acc"]] == [1, 2, 3]
    redone = [*history[:2], {**history[2], "test_acc": 31.0}]
    second = writers_lib.open_writers(tiny_config(), wd, redone[:2])
    second.write(redone[2])
    second.close()
    after = scalar_series(os.path.join(wd, "tensorboard"))
    assert [(s, v) for s, v, _ in after["test_acc"]] == [(1, 10.0), (2, 20.0), (3, 31.0)]
    assert [p[2] for p in after["test_acc"][:2]] == [p[2] for p in before["test_acc"][:2]]
    assert all(len(s) == len(set(s)) for s in raw_steps(os.path.join(wd, "tensorboard")).values())


def test_a_writer_failure_is_a_warning_and_the_run_goes_on(tmp_path, capsys):
    """A folder that cannot be made (a file is in the way) and a write that fails (a full disk):
    one warning line each, naming the writer and metrics.jsonl; nothing raised."""
    (tmp_path / "tensorboard").write_text("in the way")
    w = writers_lib.open_writers(tiny_config(), str(tmp_path), _history(1))
    w.write(_history(2)[1])
    w.close()
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "warning: the tensorboard writer failed (FileExistsError" in out[0]
    assert os.path.join(str(tmp_path), "metrics.jsonl") in out[0]

    wd = tmp_path / "full"
    w = writers_lib.open_writers(tiny_config(), str(wd), [])

    def full(*args):
        raise OSError(28, "No space left on device")

    w.writers[0]._file.write_event = full
    w.write(_history(1)[0])
    w.write(_history(2)[1])  # dropped after the failure: no second warning
    w.close()
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "(OSError: [Errno 28] No space left on device)" in out[0], out
    assert "off for the rest of this run" in out[0]


def test_on_without_tensorboardx_is_refused_in_one_line(tmp_path, monkeypatch):
    """tensorboard="on" without tensorboardX: the validator refuses it naming the field and the
    extra; main.py says so in one line (exit 2) before any data is loaded; "auto" and "off" are
    accepted without it."""
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # find_spec: None, import: fails
    with pytest.raises(
        ValueError,
        match=r"config.tensorboard = 'on' is not allowed: .*"
        r"pip install 'jaxnoise\[tensorboard\]'",
    ):
        config_lib.validate(tiny_config(tensorboard="on"))
    for ok in ("auto", "off"):
        config_lib.validate(tiny_config(tensorboard=ok))
        opened = writers_lib.open_writers(tiny_config(tensorboard=ok), str(tmp_path), [])
        assert opened.writers == []
    assert os.listdir(tmp_path) == []
    with pytest.raises(
        ValueError, match="config.tensorboard = 'maybe' is not allowed: one of 'auto', 'on', 'off'"
    ):
        config_lib.validate(tiny_config(tensorboard="maybe"))

    wd = tmp_path / "wd"
    hide = (
        "import runpy, sys; sys.modules['tensorboardX'] = None; "
        f"sys.argv = ['main.py', *sys.argv[1:]]; sys.path.insert(0, {ROOT!r}); "
        f"runpy.run_path({os.path.join(ROOT, 'main.py')!r}, run_name='__main__')"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            hide,
            "--config",
            "configs/quickstart.py",
            "--config.tensorboard=on",
            "--workdir",
            str(wd),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("error: config.tensorboard = 'on'"), lines
    assert not wd.exists()
