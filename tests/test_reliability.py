"""Reliability: bad input is refused early with a message, numerical faults stop the run and keep
the last good checkpoint, and real signals (SIGTERM, SIGINT, SIGKILL during a checkpoint write)
lose nothing: resuming gives exactly the metrics of an uninterrupted run.

The fault table with every test is docs/RELIABILITY.md. Subprocess tests run the tiny run of
tests/_signal_run.py through main.py and compare with the session's uninterrupted run of the same
config (tests/conftest.py ``bootstrap_run``, trained in-process); they share the session's
persistent XLA compilation cache, so no child compiles what that run compiled. One signal
scenario is in the fast tier; the others are in the slow tier (``pytest -m slow``).
"""

from __future__ import annotations

import json
import math
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time

import ml_collections
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxnoise import checkpoint as ckpt_lib
from jaxnoise import config as config_lib
from jaxnoise import data as data_lib
from jaxnoise import inputs, loops, runkit, schedule, stops
from jaxnoise import noise as noise_lib
from jaxnoise import workdir as workdir_lib
from jaxnoise.bootstrap import schedule as bootstrap_schedule
from jaxnoise.bootstrap import step as step_lib
from tests import _signal_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER = os.path.join("tests", "_signal_run.py")
STEPS = 24  # train steps per epoch of the tiny run: 23 of 64 samples and the last one of 28
TIMING = ("seconds", "images_per_s")


def tiny(**overrides) -> ml_collections.ConfigDict:
    return _signal_run.set_fields(_signal_run.get_config(), **overrides)


# ================================================================================================
# Bad input: refused before any compute, with a message naming what is wrong and what is allowed.


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("nosie", 0.5, r"config\.nosie is not a config field \(did you mean config\.noise\?\)"),
        ("noise", "0.5", r"config\.noise = '0\.5' is not allowed: a number in \[0, 1\]"),
        ("noise", float("nan"), r"config\.noise = nan .*\[0, 1\]"),
        ("noise", -0.1, r"config\.noise = -0\.1 .*\[0, 1\]"),
        ("lr", float("inf"), r"config\.lr = inf .*finite number > 0"),
        ("epochs", 2.5, r"config\.epochs = 2\.5 .*positive integer"),
        ("epochs", True, r"config\.epochs = True .*positive integer"),
        ("width", 2**40, r"config\.width = 1099511627776 .*at most 2\*\*31 - 1"),
        ("momentum", "high", r"config\.momentum = 'high' .*\[0, 1\)"),
        ("lr_milestones", 5, r"config\.lr_milestones = 5 .*tuple of whole epochs"),
        ("lr_milestones", (4,), r"config\.lr_milestones = \(4,\) .*\[1, epochs=3\]"),
        ("seed", -1, r"config\.seed = -1 .*\[0, 4294967295\]"),
        ("method", 3, r"config\.method = 3 .*one of 'CE'"),
        ("bootstrap.start_epoch", 1, r"bootstrap\.start_epoch = 1 .*warm-up"),
    ],
)
def test_config_errors_name_field_value_and_allowed(field, value, match):
    """Mistyped names and values of the wrong type, range or consistency: one ValueError each.

    (A value of the wrong type cannot be set on a type-safe ConfigDict, but a config file or a
    hand-built dict can hold one, so the config is rebuilt from a dict here.)"""
    d = tiny().to_dict()
    _set(d, field, value)
    with pytest.raises(ValueError, match=match):
        config_lib.validate(ml_collections.ConfigDict(d))


def test_config_missing_field_and_md_dyr_sh_schedule():
    d = tiny().to_dict()
    del d["bootstrap"]["em_iters"]
    with pytest.raises(ValueError, match=r"config\.bootstrap\.em_iters is missing"):
        config_lib.validate(ml_collections.ConfigDict(d))
    c = tiny(method="MD-DYR-SH", dynamic_start_epoch=3, soft_to_hard_start_epoch=2)
    with pytest.raises(ValueError, match="2 <= dynamic_start_epoch <= soft_to_hard_start_epoch"):
        config_lib.validate(c)


def test_config_names_missing_local_files(tmp_path):
    """Files a config names (weights, label_file, data.root) are checked before any data load."""
    missing = str(tmp_path / "nope.npz")
    with pytest.raises(ValueError, match=rf"config\.weights = '{missing}' .*no such file"):
        config_lib.validate(tiny(model="resnet50", weights=missing))
    with pytest.raises(ValueError, match=rf"config\.label_file = '{missing}' .*no such file"):
        config_lib.validate(tiny(noise_kind="human", label_file=missing))
    labels = tmp_path / "labels.npy"
    np.save(labels, np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=r"config\.label_file .*unless noise_kind='human'"):
        config_lib.validate(tiny(label_file=str(labels)))  # would silently be ignored
    c = tiny()
    c.data.source, c.data.root = "folder", str(tmp_path / "images")
    with pytest.raises(ValueError, match=r"config\.data\.root = .*images' .*existing directory"):
        config_lib.validate(c)


def test_cli_missing_weights_file_fails_before_compute():
    """`--config.weights=/nonexistent.npz` fails at once naming the file; no data is loaded
    (no `data:` line; not timed, as the machine's load would decide a time limit)."""
    r = subprocess.run(
        [
            sys.executable,
            "main.py",
            "--config",
            "configs/quickstart.py",
            "--config.weights=/nonexistent.npz",
            "--workdir",
            "/nonexistent/wd",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 2, r.stderr[-2000:]  # a refusal of the command line
    assert "error: config.weights = '/nonexistent.npz' is not allowed" in r.stderr
    assert "Traceback" not in r.stderr and "data:" not in r.stdout


def test_bad_data_is_refused_before_compute(tmp_path, monkeypatch):
    """A corrupt image (named), a label file of the wrong length or with out-of-range labels,
    a one-class or tiny dataset: ValueError before anything is compiled."""
    compiled = []
    monkeypatch.setattr(step_lib, "make_train_step", lambda *a, **k: compiled.append(1))
    # Image folder with a corrupt image.
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (tmp_path / "img" / split / cls).mkdir(parents=True)
            for i in range(6):
                Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(
                    tmp_path / "img" / split / cls / f"{i}.png"
                )
    bad = tmp_path / "img" / "train" / "dog" / "3.png"
    bad.write_bytes(b"\x89PNG not an image")
    c = tiny(noise_kind="none", noise=0.0)
    c.data.source, c.data.root, c.data.name = "folder", str(tmp_path / "img"), "pets"
    with pytest.raises(data_lib.ImageFolderError, match=str(bad.name)):
        loops.train_and_evaluate(c, str(tmp_path / "wd1"))
    # Label files: wrong length, out-of-range label.
    for name, labels, match in [
        ("short.npy", np.zeros(10, np.int64), r"short\.npy' has shape \(10,\), expected \(1500,\)"),
        ("range.npy", np.full(1500, 12, np.int64), r"range\.npy': labels must lie in \[0, 10\)"),
    ]:
        np.save(tmp_path / name, labels)
        c = tiny(noise_kind="human", label_file=str(tmp_path / name))
        with pytest.raises(ValueError, match=match):
            loops.train_and_evaluate(c, str(tmp_path / "wd2"))
    assert not compiled
    # Dataset-level checks (validate_against_data).
    img = np.zeros((8, 4, 4, 1), np.uint8)
    one_class = data_lib.Dataset(img, np.zeros(8, np.int32), img, np.zeros(8, np.int32), ["a"], "x")
    with pytest.raises(ValueError, match=r"1 class\(es\) \['a'\]; .*at least 2"):
        inputs.validate_against_data(tiny(batch_size=4), one_class)
    two = data_lib.Dataset(img, np.arange(8) % 2, img, np.arange(8) % 2, ["a", "b"], "x")
    with pytest.raises(ValueError, match="8 training samples; the noise model needs at least 10"):
        inputs.validate_against_data(tiny(batch_size=4), two)
    # Asymmetric (CIFAR class-pair) noise on a dataset with another number of classes.
    with pytest.raises(ValueError, match="'cifar10' needs 10 classes, but the dataset has 5"):
        noise_lib.apply("asymmetric", np.arange(20) % 5, num_classes=5, rate=0.5, dataset="cifar10")


def test_workdir_of_another_dataset_or_torn_config_is_refused(tmp_path):
    """Resuming a workdir whose dataset changed, or whose config.json is unreadable, is refused
    with a message pointing at --fresh (instead of an error deep inside the restore)."""
    wd = tmp_path / "wd"
    (wd / "checkpoints").mkdir(parents=True)
    (wd / "dataset.json").write_text(json.dumps({"num_train": 1400, "class_names": ["a", "b"]}))
    img = np.zeros((12, 4, 4, 1), np.uint8)
    labels = np.arange(12) % 2
    ds = data_lib.Dataset(img, labels, img, labels, ["a", "b"], "x")
    with pytest.raises(ValueError, match=r"different dataset \(num_train: 1400 -> 12\).*--fresh"):
        workdir_lib.check_same_dataset(str(wd), ds)
    (wd / "config.json").write_text('{"noise": 0.')
    with pytest.raises(ValueError, match=r"unreadable config\.json .*--fresh"):
        ckpt_lib.check_workdir_config(str(wd), {"noise": 0.5}, fresh=False)
    ckpt_lib.check_workdir_config(str(wd), {"noise": 0.5}, fresh=True)  # discards the old run
    assert not (wd / "config.json").exists() and not (wd / "checkpoints").exists()


def test_workdir_check_ignores_per_process_and_rescheduling_fields(tmp_path):
    """config.json is written by process 0; process 1 of the same job, or the job rescheduled
    with another coordinator address, must still resume (they used to be refused)."""
    c = tiny()
    c.distributed.num_processes, c.distributed.coordinator_address = 2, "10.0.0.1:1234"
    (tmp_path / "config.json").write_text(json.dumps(runkit.fingerprint(c)))
    c.distributed.process_id, c.distributed.coordinator_address = 1, "10.0.0.7:4321"
    ckpt_lib.check_workdir_config(str(tmp_path), runkit.fingerprint(c), fresh=False)


def test_atomic_write_keeps_old_file_when_writer_dies(tmp_path):
    """config.json / dataset.json / metrics.jsonl / per_sample.npz are replaced atomically."""
    p = tmp_path / "f.json"
    ckpt_lib.atomic_write_text(str(p), "old")

    def dies(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ckpt_lib.atomic_write(str(p), dies)
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["f.json"]


def test_preemption_guard_records_signal_and_second_sigint_interrupts():
    with stops.PreemptionGuard(exit_when_idle=False) as g:
        signal.raise_signal(signal.SIGTERM)
        assert g.stop_requested and g.signal_name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # a second Ctrl-C: stop at once
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


# ================================================================================================
# Property tests: any config override / any label array is accepted (and valid) or refused with a
# ValueError carrying a message, never another exception.

_CHECKS = config_lib.checks_of("M-DYR-H")
_FIELDS = sorted(_CHECKS)
_DEFAULTS = _signal_run.get_config()
_CHOICES = {k: c.allowed for k, c in _CHECKS.items() if hasattr(c, "allowed")}
_CHOICE_VALUES = sorted({v for vs in _CHOICES.values() for v in vs})
_wild = st.one_of(
    st.integers(-3, 12),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=6),
    st.sampled_from(_CHOICE_VALUES),
    st.tuples(st.integers(-2, 5)),
    st.lists(st.floats(), max_size=2),
)


def _plausible(field: str):
    """Values of the field's own type (so that many configs are accepted)."""
    if field in _CHOICES:
        return st.sampled_from(_CHOICES[field])
    default = _get(_DEFAULTS.to_dict(), field)
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.integers(1, 6)
    if isinstance(default, float):
        return st.floats(0.01, 0.99)
    if isinstance(default, tuple):
        return st.lists(st.integers(1, 4), max_size=2, unique=True).map(lambda v: tuple(sorted(v)))
    return st.just("")  # strings: paths and names ("" = unset)


def _get(tree: dict, dotted: str):
    for p in dotted.split("."):
        tree = tree[p]
    return tree


def _set(tree: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree[p]
    tree[leaf] = value


_override = st.one_of(
    st.sampled_from(_FIELDS).flatmap(lambda f: st.tuples(st.just(f), _plausible(f))),
    st.sampled_from(_FIELDS).flatmap(lambda f: st.tuples(st.just(f), _plausible(f))),
    st.tuples(st.sampled_from(_FIELDS), _wild),
    st.tuples(st.sampled_from(["nosie", "data.nmae", "mesh.x"]), _wild),
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(overrides=st.lists(_override, min_size=1, max_size=3))
def test_property_config_validation_is_total(overrides):
    """Random overrides of random fields (right type or anything: negative, huge, NaN, strings,
    tuples, None, unknown names): validate accepts a usable config or raises ValueError."""
    d = tiny().to_dict()
    for name, value in overrides:
        _set(d, name, value)
    config = ml_collections.ConfigDict(d)
    try:
        config_lib.validate(config)
    except ValueError as e:
        assert str(e).startswith("config") and len(str(e)) > 20, str(e)
        event("refused")
        return
    event("accepted")
    # Accepted: the schedule functions work for every epoch and give usable numbers.
    for epoch in sorted({1, 2, config.epochs}):
        assert math.isfinite(schedule.lr_for_epoch(config, epoch))
        assert schedule.lr_for_epoch(config, epoch) > 0
        assert bootstrap_schedule.temperature_for_epoch(config, epoch) > 0
        bootstrap_schedule.phase_for_epoch(config, epoch)
    json.loads(config.to_json_best_effort())
    assert 0.0 <= config.noise <= 1.0 and isinstance(config.data.flip, bool)


_INT_DTYPES = ["int8", "uint8", "int32", "int64", "uint64"]
_DTYPES = [*_INT_DTYPES, "float16", "float32", "float64", "bool", "complex64", "U3"]


@st.composite
def _wild_labels(draw):
    """Random label containers: arrays of any dtype/shape/values, or Python lists of anything."""
    if draw(st.booleans()):
        return draw(
            st.lists(st.one_of(st.integers(-2, 12), st.floats(), st.text(max_size=2)), max_size=6)
        )
    dtype = np.dtype(draw(st.sampled_from(_DTYPES)))
    shape = draw(st.sampled_from([(), (0,), (1,), (7,), (40,), (3, 2)]))
    if dtype.kind in "iu" and draw(st.booleans()):
        info = np.iinfo(dtype)
        return draw(hnp.arrays(dtype, shape, elements=st.integers(max(-3, info.min), 120)))
    if dtype.kind == "f" and draw(st.booleans()):
        return draw(hnp.arrays(dtype, shape, elements=st.integers(-1, 12).map(float)))
    return draw(hnp.arrays(dtype, shape))


@st.composite
def _noise_inputs(draw):
    """(kind, labels, num_classes, rate, seed, dataset, human): each part valid with p = 0.9,
    else anything (so both acceptance and every kind of refusal are reached)."""

    def good() -> bool:
        return draw(st.integers(0, 9)) > 0

    kind = draw(st.sampled_from(noise_lib.KINDS) if good() else st.sampled_from(["bogus", 3]))
    dataset = draw(st.sampled_from(["cifar10", "cifar100"] if good() else ["digits", 3]))
    if good():
        size = {"cifar10": 10, "cifar100": 100}.get(dataset)
        num_classes = size if kind == "asymmetric" and size else draw(st.integers(2, 120))
    else:
        num_classes = draw(st.sampled_from([-1, 0, 1, 2, 10, 100, True, 2.5, "10", None]))

    def labels_like(n):
        valid_nc = isinstance(num_classes, int) and num_classes >= 2
        if good() and valid_nc:
            dtype = draw(st.sampled_from(_INT_DTYPES + ["float32"]))
            top = min(num_classes - 1, 127)
            return draw(hnp.arrays(dtype, (n,), elements=st.integers(0, top)))
        return draw(_wild_labels())

    n = draw(st.integers(0, 40))
    labels = labels_like(n)
    rate = draw(
        st.floats(0, 1)
        if good()
        else st.one_of(
            st.floats(allow_nan=True, allow_infinity=True),
            st.sampled_from([0, 1, True, "0.5", None, (0.5,)]),
        )
    )
    seed = draw(
        st.integers(0, 2**70)
        if good()
        else st.one_of(st.integers(-5, -1), st.sampled_from([0.5, None, "1"]))
    )
    if kind == "human" and good():
        human = labels_like(n)
    else:
        human = draw(st.one_of(st.none(), _wild_labels(), st.just("/nonexistent/labels.npy")))
    return kind, labels, num_classes, rate, seed, dataset, human


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inputs=_noise_inputs())
def test_property_noise_injection_is_total(inputs):
    """Random label arrays (any dtype, shape, values incl. NaN/huge/strings) and random kinds,
    class counts, rates, seeds and human labels: noise.apply returns valid noisy labels and a
    consistent mask, or raises ValueError with a message."""
    kind, labels, num_classes, rate, seed, dataset, human = inputs
    try:
        noisy, mask = noise_lib.apply(
            kind,
            labels,
            num_classes=num_classes,
            rate=rate,
            seed=seed,
            dataset=dataset,
            human_labels=human,
        )
    except ValueError as e:
        assert len(str(e)) > 10, str(e)
        event("refused")
        return
    event(f"accepted {kind}")
    clean = np.asarray(labels)
    assert noisy.dtype == np.int32 and mask.dtype == bool
    assert noisy.shape == mask.shape == clean.shape and clean.ndim == 1
    assert np.all((noisy >= 0) & (noisy < num_classes))
    np.testing.assert_array_equal(mask, noisy != clean)
    if kind == "none" or (kind != "human" and rate == 0):
        np.testing.assert_array_equal(noisy, clean)
    if kind == "human":
        np.testing.assert_array_equal(noisy, np.asarray(human))


# ================================================================================================
# Real processes and signals. Each child is the tiny run through main.py (tests/_signal_run.py).


class Child:
    """A child run whose output lines are collected by a thread (no pipe can fill up)."""

    def __init__(self, workdir, *flags, cache_dir, **env):
        base = dict(os.environ)
        base.pop("XLA_FLAGS", None)
        env = dict(
            base,
            JAX_PLATFORMS="cpu",
            JAX_COMPILATION_CACHE_DIR=str(cache_dir),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
            **env,
        )
        self.proc = subprocess.Popen(
            [sys.executable, HELPER, "--config", HELPER, "--workdir", str(workdir), *flags],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, prefix: str, timeout: float = 600) -> str:
        deadline = time.time() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.time()))
            except queue.Empty:
                self.proc.kill()
                raise AssertionError(f"no {prefix!r} within {timeout}s:\n{self.output}") from None
            if line is None:
                raise AssertionError(f"child ended before {prefix!r}:\n{self.output[-4000:]}")
            if line.startswith(prefix):
                return line

    def finish(self, timeout: float = 600) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"child did not end within {timeout}s:\n{self.output}") from None
        self._reader.join(10)
        return rc


def _metrics(workdir) -> list[dict]:
    """metrics.jsonl without the timing fields."""
    path = os.path.join(workdir, "metrics.jsonl")
    with open(path) as f:
        return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in f]


def _committed_steps(workdir) -> list[int]:
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def _assert_clean_exit(child: Child, rc: int, code: int, *texts: str) -> None:
    out = child.output
    assert rc == code, f"exit code {rc}, expected {code}:\n{out[-4000:]}"
    assert "Traceback" not in out, out[-4000:]
    for t in texts:
        assert t in out, f"{t!r} not in:\n{out[-4000:]}"


@pytest.fixture(scope="module")
def reference(bootstrap_run):
    """The uninterrupted tiny run (the session's, in-process): (compilation cache dir, workdir)."""
    _, wd, _ = bootstrap_run
    assert len(_metrics(wd)) == 3
    return os.environ["JAX_COMPILATION_CACHE_DIR"], wd


def _resume_and_compare(wd, reference, resumed_at: str) -> None:
    cache, ref_wd = reference
    child = Child(wd, cache_dir=cache)
    _assert_clean_exit(child, child.finish(), 0, f"resumed from {wd} at {resumed_at}", "done:")
    assert _metrics(wd) == _metrics(ref_wd)  # every metric of every epoch, exactly
    assert not [n for n in os.listdir(wd / "checkpoints") if not n.isdigit()]  # no tmp dirs left
    ref_arrays, arrays = np.load(ref_wd / "per_sample.npz"), np.load(wd / "per_sample.npz")
    for k in ref_arrays.files:
        np.testing.assert_array_equal(arrays[k], ref_arrays[k], err_msg=k)


@pytest.mark.parametrize(
    "sig,code,epoch,step",
    [pytest.param(signal.SIGTERM, 143, 2, 4, id="SIGTERM"),
     pytest.param(signal.SIGINT, 130, 1, 9, id="SIGINT", marks=pytest.mark.slow)],
)  # fmt: skip
def test_signal_mid_epoch_saves_exact_position_and_resume_matches(
    reference, tmp_path, sig, code, epoch, step
):
    """SIGTERM (preemption) / SIGINT (Ctrl-C) in the middle of an epoch: the step finishes, a
    checkpoint of that exact step is saved, the process exits with 128 + signal and a message;
    re-running resumes at that step and every metric equals the uninterrupted run's."""
    cache, ref_wd = reference
    wd = tmp_path / "wd"
    child = Child(wd, cache_dir=cache, JAXNOISE_TEST_PAUSE_AT=f"{epoch}:{step}")
    child.wait_for(f"PAUSED {epoch} {step}")
    child.proc.send_signal(sig)
    where = f"step {step + 1}/{STEPS} of epoch {epoch}"
    _assert_clean_exit(
        child,
        child.finish(),
        code,
        f"stopped by {sig.name}: the checkpoint at "
        f"{where} is saved in {wd}; re-run the same command to resume",
    )
    assert _committed_steps(wd)[-1] == (epoch - 1) * STEPS + step + 1
    assert _metrics(wd) == _metrics(ref_wd)[: epoch - 1]
    _resume_and_compare(wd, reference, where)


@pytest.mark.slow
def test_sigint_with_slow_steps_stops_after_at_most_one_more_step(reference, tmp_path):
    """Steps that take long to *execute*: a SIGINT while step N runs stops the run after at most
    one more step (at most one step call is in flight), measured by the saved step count."""
    cache, _ = reference
    wd = tmp_path / "wd"
    child = Child(wd, cache_dir=cache, JAXNOISE_TEST_SLOW="0.3")
    running = STEPS + 6  # optimizer step 30: step 7 of epoch 2, between log points (every 5)
    child.wait_for(f"STEP {running}")
    child.proc.send_signal(signal.SIGINT)
    assert child.finish() == 128 + signal.SIGINT, child.output[-3000:]
    saved = _committed_steps(wd)[-1]
    assert running + 1 <= saved <= running + 2, (saved, child.output[-3000:])


@pytest.mark.slow
def test_sigkill_during_checkpoint_writes_keeps_previous_checkpoint(reference, tmp_path):
    """SIGKILL while a checkpoint is being written (everything written, not yet committed):

    1. at the end of epoch 2: the epoch-1 checkpoint restores; the epoch-2 metrics line already
       written is not duplicated when epoch 2 is redone;
    2. SIGTERM in epoch 3, then SIGKILL while that preemption checkpoint is written (a
       scheduler's grace period running out): the epoch-2 checkpoint restores.
    After each, the resumed run's metrics equal the uninterrupted run's."""
    cache, ref_wd = reference
    wd = tmp_path / "wd"
    child = Child(wd, cache_dir=cache, JAXNOISE_TEST_HANG_SAVE=str(2 * STEPS))
    tmp_dir = child.wait_for(f"HANG_SAVE {2 * STEPS}").split()[-1]
    child.proc.kill()
    assert child.finish() == -signal.SIGKILL
    assert os.path.isdir(tmp_dir) and ".orbax-checkpoint-tmp" in tmp_dir  # the unfinished write
    assert _committed_steps(wd) == [STEPS]
    assert len(_metrics(wd)) >= 2  # epoch 2 was logged before its checkpoint was written

    child = Child(
        wd,
        cache_dir=cache,
        JAXNOISE_TEST_PAUSE_AT="3:4",
        JAXNOISE_TEST_HANG_SAVE=str(2 * STEPS + 5),
    )
    child.wait_for("PAUSED 3 4")
    child.proc.send_signal(signal.SIGTERM)
    child.wait_for(f"HANG_SAVE {2 * STEPS + 5}")
    child.proc.kill()
    assert child.finish() == -signal.SIGKILL
    assert "resumed from" in child.output and "at the end of epoch 1" in child.output
    assert _committed_steps(wd)[-1] == 2 * STEPS
    assert _metrics(wd) == _metrics(ref_wd)[:2]  # epochs 1-2 as uninterrupted, no duplicates

    _resume_and_compare(wd, reference, "the end of epoch 2")


@pytest.mark.slow
def test_fresh_discards_a_run_with_another_config(reference, tmp_path):
    """main.py refuses a workdir holding a run with a different config, naming the difference and
    --fresh; with --fresh it starts again."""
    cache, ref_wd = reference
    wd = tmp_path / "wd"
    shutil.copytree(ref_wd, wd)
    child = Child(wd, "--config.noise=0.2", cache_dir=cache)
    _assert_clean_exit(
        child,
        child.finish(),
        2,
        "holds a run with a different config (noise: 0.5 -> 0.2)",
        "pass --fresh",
    )
    child = Child(wd, "--config.noise=0.2", "--fresh", cache_dir=cache)
    _assert_clean_exit(child, child.finish(), 0, "done:")
    assert "resumed" not in child.output
    assert json.loads((wd / "config.json").read_text())["noise"] == 0.2
    assert [r["epoch"] for r in _metrics(wd)] == [1, 2, 3]


@pytest.mark.slow
def test_nan_training_loss_stops_and_keeps_last_good_checkpoint(reference, tmp_path):
    """A diverging epoch (lr 1e30 from epoch 2) stops at the next loss check with a message; the
    epoch-1 checkpoint is kept and resumes exactly (here without the fault)."""
    cache, ref_wd = reference
    wd = tmp_path / "wd"
    child = Child(wd, cache_dir=cache, JAXNOISE_TEST_LR="2:1e30")
    _assert_clean_exit(
        child,
        child.finish(),
        1,
        "error: non-finite training loss",
        "of epoch 2: training diverged; the checkpoint at the end of epoch 1",
    )
    assert _committed_steps(wd) == [STEPS]
    assert _metrics(wd) == _metrics(ref_wd)[:1]
    _resume_and_compare(wd, reference, "the end of epoch 1")


@pytest.mark.slow
def test_preemption_never_checkpoints_a_diverged_state(reference, tmp_path):
    """SIGTERM after 3 diverging steps (before any loss check): the NaN state is not saved; the
    run stops with the divergence message and the epoch-1 checkpoint stays the newest."""
    cache, _ = reference
    wd = tmp_path / "wd"
    child = Child(wd, cache_dir=cache, JAXNOISE_TEST_LR="2:1e30", JAXNOISE_TEST_PAUSE_AT="2:2")
    child.wait_for("PAUSED 2 2")
    child.proc.send_signal(signal.SIGTERM)
    _assert_clean_exit(
        child,
        child.finish(),
        1,
        "error: non-finite train state at step 3 of epoch 2: training diverged; the checkpoint "
        "at the end of epoch 1",
    )
    assert _committed_steps(wd) == [STEPS]


@pytest.mark.slow
def test_degenerate_fit_continues_and_nan_tracking_loss_stops(reference, tmp_path):
    """All-equal tracking losses (epoch 1): the fit falls back to p(noisy) = 0.5 with a logged
    warning and training continues; a NaN tracking loss (epoch 3) stops the run with a message
    and keeps the epoch-2 checkpoint."""
    cache, _ = reference
    wd = tmp_path / "wd"
    child = Child(wd, cache_dir=cache, JAXNOISE_TEST_TRACK="1:const,3:nan")
    _assert_clean_exit(
        child,
        child.finish(),
        1,
        "warning: epoch 1: the bmm fit was degenerate (the 5th and 95th loss percentiles coincide",
        "every p(noisy) is 0.5",
        "error: 1 of 1500 per-sample losses of the tracking pass after epoch 3 are NaN",
        "the checkpoint at the end of epoch 2",
    )
    records = _metrics(wd)
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[0]["mixture"]["valid"] is False and records[0]["auroc"] == 0.5
    assert records[1]["mixture"]["valid"] is True
    assert _committed_steps(wd)[-1] == 2 * STEPS


@pytest.mark.slow
def test_multiprocess_sigterm_to_one_process_stops_all_at_one_step(tmp_path):
    """A 2-process job (2 CPU devices each, gloo): SIGTERM to process 0 only. Both processes
    agree at the next log step, save one collective checkpoint of that step and exit 143;
    resuming both gives exactly the metrics of an uninterrupted 2-process run."""
    import socket

    def pair(wd, env0=None):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
        return [
            Child(
                wd,
                f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                "--config.distributed.num_processes=2",
                f"--config.distributed.process_id={i}",
                cache_dir=tmp_path / "cache",
                **env,
                **((env0 or {}) if i == 0 else {}),
            )
            for i in range(2)
        ]

    ref = pair(tmp_path / "ref")
    for c in ref:
        _assert_clean_exit(c, c.finish(600), 0, "done:")
    wd = tmp_path / "wd"
    children = pair(wd, {"JAXNOISE_TEST_PAUSE_AT": "2:1"})  # 2 steps done; log steps: 5, 10, ..
    children[0].wait_for("PAUSED 2 1")
    children[0].proc.send_signal(signal.SIGTERM)
    where = f"step 5/{STEPS} of epoch 2"
    _assert_clean_exit(
        children[0], children[0].finish(), 143, f"stopped by SIGTERM: the checkpoint at {where}"
    )
    _assert_clean_exit(
        children[1],
        children[1].finish(),
        143,
        f"stopped by a signal to another process of the job: the checkpoint at {where}",
    )
    assert _committed_steps(wd)[-1] == STEPS + 5
    for c in pair(wd):
        _assert_clean_exit(c, c.finish(), 0, "done:")
    assert _metrics(wd) == _metrics(tmp_path / "ref")


# ================================================================================================
# Issue 25: outputs as a function of the newest checkpoint, one run per workdir, workdir problems
# named before loading, saves that fail named at once, stops that tell the truth quickly.


def _outputs(workdir) -> dict[str, bytes]:
    """The run's outputs, byte for byte (the report's files and the manifest)."""
    names = ("per_sample.npz", "label_issues.csv", "label_issues_summary.json", "outputs.json")
    return {n: (workdir / n).read_bytes() for n in names}


class _Killed(BaseException):
    """Stands for a SIGKILL between the commit of the final checkpoint and the outputs."""


def test_outputs_of_a_kill_after_the_final_checkpoint_are_rebuilt(tmp_path, monkeypatch, capsys):
    """A kill after the final checkpoint commits and before the outputs are written (a fresh
    workdir, and a workdir holding the outputs of an earlier checkpoint, as a run stopped after
    epoch 1 leaves them, also as a jaxnoise from before outputs recorded their checkpoint left
    them): the report refuses the stale outputs in one line; a re-run makes the
    outputs of the newest checkpoint, says so, and they equal an uninterrupted run's byte for
    byte."""
    from jaxnoise import report

    c = tiny()
    loops.train_and_evaluate(c, str(tmp_path / "ref"))
    write = runkit.write_outputs

    def killed(*args, **kwargs):
        raise _Killed

    for name, first_epochs in (("fresh", 0), ("stopped", 1), ("stopped-pre-fix", 1)):
        wd = tmp_path / name
        if first_epochs:  # outputs of checkpoint 24 (epoch 1) in the workdir
            loops.train_and_evaluate(c, str(wd), stop_after_epoch=first_epochs)
            assert json.loads((wd / "outputs.json").read_text())["checkpoint"] == STEPS
        if name.endswith("pre-fix"):  # per_sample.npz without its checkpoint, no outputs.json
            with np.load(wd / "per_sample.npz") as d:
                arrays = {k: d[k] for k in d.files if k != "checkpoint"}
            np.savez(wd / "per_sample.npz", **arrays)
            (wd / "outputs.json").unlink()
        monkeypatch.setattr(runkit, "write_outputs", killed)
        with pytest.raises(_Killed):
            loops.train_and_evaluate(c, str(wd))
        monkeypatch.setattr(runkit, "write_outputs", write)
        assert _committed_steps(wd)[-1] == 3 * STEPS
        if first_epochs:
            refused = (
                rf"does not record the checkpoint it was made from .* newest checkpoint is "
                rf"{3 * STEPS}: re-run the training command"
                if name.endswith("pre-fix")
                else rf"made from checkpoint {STEPS}, but its newest checkpoint is {3 * STEPS}"
            )
            with pytest.raises(report.WorkdirError, match=refused):
                report.load_workdir(str(wd))
        capsys.readouterr()
        loops.train_and_evaluate(c, str(wd))
        out = capsys.readouterr().out
        assert f"rebuilding the outputs of checkpoint {3 * STEPS}" in out, out
        assert _outputs(wd) == _outputs(tmp_path / "ref"), name
    # A finished run whose outputs are complete: a re-run rebuilds nothing and says nothing.
    capsys.readouterr()
    loops.train_and_evaluate(c, str(tmp_path / "ref"))
    assert "rebuilding" not in capsys.readouterr().out


def test_a_second_process_on_the_workdir_is_refused_before_loading(tmp_path):
    """A workdir in use (its lock held by another process; here this one) refuses a second run
    in one line naming the workdir and the holder's pid, exit 2, and it writes nothing."""
    wd = tmp_path / "wd"
    wd.mkdir()
    with workdir_lib.lock(str(wd)):
        child = Child(wd, cache_dir=tmp_path / "cache")
        rc = child.finish()
    _assert_clean_exit(
        child, rc, 2, f"error: workdir '{wd}' is in use by another run (pid {os.getpid()} "
    )
    assert len(child.lines) == 1 and sorted(os.listdir(wd)) == [".lock"], child.output


@pytest.mark.parametrize("where", ["file", "below a file"])
def test_a_workdir_that_is_a_file_or_below_one_is_refused_before_loading(tmp_path, where):
    """One line, exit 2, before any data is loaded."""
    (tmp_path / "f").write_text("x")
    wd = tmp_path / "f" if where == "file" else tmp_path / "f" / "run"
    child = Child(wd, cache_dir=tmp_path / "cache")
    _assert_clean_exit(child, child.finish(), 2, "error: workdir", "a file, not a folder")
    assert len(child.lines) == 1, child.output


@pytest.mark.slow
def test_a_save_that_fails_for_lack_of_space_is_one_line_at_once(reference, tmp_path):
    """The disk full at the save of epoch 2: one line naming the checkpoint folder and the last
    committed checkpoint, exit 1, nothing after it; the run stops there (no epoch 3)."""
    cache, _ = reference
    wd = tmp_path / "wd"
    child = Child(wd, cache_dir=cache, JAXNOISE_TEST_ENOSPC=str(2 * STEPS))
    rc = child.finish()
    _assert_clean_exit(
        child,
        rc,
        1,
        f"error: could not save a checkpoint to {wd}/checkpoints: "
        "no space left on the device (ENOSPC)",
        f"resume from checkpoint {STEPS}, the last committed one",
    )
    assert child.lines[-1].startswith("error: "), child.output
    assert "epoch 3" not in child.output and _committed_steps(wd) == [STEPS]


@pytest.mark.slow
def test_a_second_signal_while_saving_waits_and_saved_means_committed(reference, tmp_path):
    """SIGTERM mid-epoch, then SIGINT while that checkpoint is being written: one line, the
    write completes, and "saved" is printed only once the checkpoint is committed."""
    cache, _ = reference
    wd = tmp_path / "wd"
    at = STEPS + 5
    child = Child(
        wd, cache_dir=cache, JAXNOISE_TEST_PAUSE_AT="2:4", JAXNOISE_TEST_SLOW_SAVE=f"{at}:3"
    )
    child.wait_for("PAUSED 2 4")
    child.proc.send_signal(signal.SIGTERM)
    child.wait_for(f"SLOW_SAVE {at}")
    child.proc.send_signal(signal.SIGINT)
    child.wait_for("SIGINT again: the checkpoint is being written")
    line = child.wait_for("[")  # the next log line: the stop's
    assert "SIGTERM during epoch 2: saved a checkpoint after step 5/" in line, child.output
    assert at in _committed_steps(wd)  # committed when "saved" was printed
    _assert_clean_exit(child, child.finish(), 128 + signal.SIGTERM, "stopped by SIGTERM")


def test_a_signal_during_the_first_compile_exits_at_once(tmp_path):
    """Before the first train step returns there is nothing new to save: a signal, even while
    the interpreter waits in a compile (in C), ends the run with one line and 128 + signal,
    without training or saving."""
    wd = tmp_path / "wd"
    child = Child(wd, cache_dir=tmp_path / "cache", JAXNOISE_TEST_LONG_FIRST_COMPILE="1")
    child.wait_for("FIRST_COMPILE")
    child.proc.send_signal(signal.SIGTERM)
    _assert_clean_exit(
        child, child.finish(50), 128 + signal.SIGTERM, "stopped by SIGTERM: nothing to save yet"
    )
    assert "epoch 1:" not in child.output and not os.path.isdir(wd / "checkpoints" / "24")


def test_sigint_while_starting_is_one_line_and_130(tmp_path):
    """Ctrl-C while the command starts (imports, the config, loading the data): one line, exit
    130, no traceback."""
    child = Child(tmp_path / "wd", cache_dir=tmp_path / "cache")
    time.sleep(0.5)
    child.proc.send_signal(signal.SIGINT)
    _assert_clean_exit(child, child.finish(), 130)
    assert any(
        t in child.output
        for t in ("interrupted (SIGINT while starting)", "stopped by SIGINT: nothing to save yet")
    ), child.output
