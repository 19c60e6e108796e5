"""The DivideMix loop (``jaxnoise.dividemix.loop``, the official ``Train_cifar.py`` main loop)
on the run kit: a tiny run on digits, its workdir, an exact resume, one compile of the semi step,
that the division works (its AUROC, co-divide's roles), several devices and processes, refusals.

The tiny run: a width-8 CNN on 500 digits at 90% symmetric noise (so the loss-history path of
the official ``r == 0.9`` branch runs, and lambda_u / p_threshold come from the paper's table),
epoch 1 warm-up, epochs 2 and 3 semi-supervised.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from jaxnoise import config as config_lib
from jaxnoise import loops, runkit, stops
from jaxnoise.dividemix import config as dm_config
from jaxnoise.dividemix import loop as dm_loop
from tests import _tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


tiny_config = _tiny.dividemix_config


def _without_seconds(history) -> str:
    """The history as JSON (NaN equal to NaN), without the timings."""
    return json.dumps([{k: v for k, v in r.items() if k != "seconds"} for r in history])


@pytest.fixture
def full_run(dividemix_run):
    """(summary, workdir, pieces) of the session's uninterrupted tiny run."""
    return dividemix_run


def test_tiny_run_finishes_with_finite_metrics_and_writes_the_workdir(full_run):
    summary, wd, _ = full_run
    h = summary["history"]
    assert [r["epoch"] for r in h] == [1, 2, 3]  # epochs 1..config.epochs
    assert [r["phase"] for r in h] == ["warmup", "semi", "semi"]
    assert not summary["interrupted"] and summary["epochs_done"] == 3
    for r in h:
        assert np.isfinite(r["test_acc"]) and np.isfinite(r["train_loss"])
        assert r["best_acc"] == max(q["test_acc"] for q in h[: h.index(r) + 1])
    for r in h[1:]:
        assert np.isfinite(r["auroc"])
        for name in ("net1", "net2"):
            d, t = r["division"][name], r["nets"][name]
            assert 0.0 <= d["auroc"] <= 1.0 and 0 <= d["labelled"] <= 500
            assert np.isfinite([t["Lx"], t["Lu"], t["loss"]]).all()
        # each network trains on the other's division
        assert r["nets"]["net1"]["labelled"] == r["division"]["net2"]["labelled"]
        assert r["nets"]["net2"]["labelled"] == r["division"]["net1"]["labelled"]
    for f in ("metrics.jsonl", "per_sample.npz", "label_issues.csv", "config.json"):
        assert os.path.exists(os.path.join(wd, f)), f
    with open(os.path.join(wd, "metrics.jsonl")) as f:
        assert [json.loads(line)["epoch"] for line in f] == [1, 2, 3]
    with np.load(os.path.join(wd, "per_sample.npz")) as d:
        assert d["p_noisy"].shape == (500,) and np.all((d["p_noisy"] >= 0) & (d["p_noisy"] <= 1))
        assert np.isfinite(d["loss"]).all()


def test_interrupted_after_an_epoch_and_resumed_gives_the_same_metrics(full_run, tmp_path):
    summary, _, _ = full_run
    wd = str(tmp_path / "resumed")
    first = loops.train_and_evaluate(tiny_config(), wd, stop_after_epoch=2)
    assert first["epochs_done"] == 2 and first["checkpoint_at"] == "the end of epoch 2"
    resumed = loops.train_and_evaluate(tiny_config(), wd)
    assert _without_seconds(resumed["history"]) == _without_seconds(summary["history"])
    with (
        np.load(os.path.join(wd, "per_sample.npz")) as a,
        np.load(os.path.join(full_run[1], "per_sample.npz")) as b,
    ):
        np.testing.assert_array_equal(a["p_noisy"], b["p_noisy"])


class _StopAfterReads:
    """A PreemptionGuard stand-in: a stop is requested from its ``reads``-th check on (the
    run kit checks before the first epoch and at every epoch end, the loop after every train
    step)."""

    signum, signal_name = 15, "SIGTERM"
    idle_message = ""

    def __init__(self, reads: int):
        self.reads = reads
        self.saving_checkpoint = stops.PreemptionGuard().saving_checkpoint  # a no-op here

    def busy(self) -> None:
        pass

    @property
    def stop_requested(self) -> bool:
        self.reads -= 1
        return self.reads < 0


def test_stop_in_the_middle_of_an_epoch_redoes_that_epoch(full_run, tmp_path):
    summary, _, _ = full_run
    wd = str(tmp_path / "stopped")
    # the start check, epoch 1's 2 x 8 warm-up steps and its end check; 3 semi steps of epoch 2
    run = runkit.open_run(tiny_config(), wd, fresh=False, guard=_StopAfterReads(20))
    stopped = dm_loop.train(run)
    assert stopped["interrupted"] and stopped["signal"] == "SIGTERM"
    assert stopped["checkpoint_at"] == "the end of epoch 1" and stopped["epochs_done"] == 1
    resumed = loops.train_and_evaluate(tiny_config(), wd)
    assert _without_seconds(resumed["history"]) == _without_seconds(summary["history"])


def test_semi_step_compiles_once_across_epochs_and_pool_sizes(full_run):
    summary, _, pieces = full_run
    sizes = {r["nets"][n]["labelled"] for r in summary["history"][1:] for n in ("net1", "net2")}
    assert len(sizes) > 1  # the pools differ, the compiled step does not
    assert pieces.semi._cache_size() == 1
    assert pieces.divide._cache_size() == 1


@pytest.fixture(scope="module")
def learning_run(tmp_path_factory):
    """The tiny run at 50% noise with 3 warm-up epochs, then one semi-supervised epoch: long
    enough for the networks to learn something before the first division (at 90% noise, the
    tiny run's networks are still near chance after its one warm-up epoch)."""
    c = tiny_config(noise=0.5, epochs=4, lr_milestones=(4,))
    c.dividemix.warm_up = 3
    return loops.train_and_evaluate(c, str(tmp_path_factory.mktemp("dividemix") / "learning"))


def test_the_division_finds_the_noisy_labels(learning_run):
    """The method works, not only its bookkeeping: at the first division each network's
    division separates clean from noisy labels (AUROC of 1 - p_clean against the known noise:
    measured 0.73 and 0.77 on this run; chance is 0.5, an inverted division ~0.25), and its
    labelled set is cleaner than the data (measured 0.72 and 0.88 clean, against 0.55)."""
    (r,) = [r for r in learning_run["history"] if r["phase"] == "semi"]
    for name in ("net1", "net2"):
        d = r["division"][name]
        assert d["auroc"] > 0.62, (name, d)
        assert d["labelled_precision"] > 0.6, (name, d)


def test_swapping_the_networks_divisions_changes_the_run(full_run, tmp_path, monkeypatch):
    """Co-divide: each network trains on the *other* network's division. A run in which each
    trains on its own division instead (the divisions' roles swapped) differs from the real one
    from the first semi-supervised epoch on; the warm-up, which has no division, is identical."""
    summary, _, _ = full_run
    divide = dm_loop.divide

    def own_division(*args, **kwargs):
        history, out = divide(*args, **kwargs)
        return history, {"net1": out["net2"], "net2": out["net1"]}

    monkeypatch.setattr(dm_loop, "divide", own_division)
    swapped = loops.train_and_evaluate(tiny_config(), str(tmp_path / "swapped"))["history"]
    real = summary["history"]
    assert swapped[0]["train_loss"] == real[0]["train_loss"]  # warm-up: no division
    a, b = real[1], swapped[1]  # the first division: the same divisions, the roles swapped
    assert (a["division"]["net1"], a["division"]["net2"]) == (
        b["division"]["net2"],
        b["division"]["net1"],
    )
    assert (a["nets"]["net1"]["labelled"], a["nets"]["net2"]["labelled"]) == (
        b["nets"]["net2"]["labelled"],
        b["nets"]["net1"]["labelled"],
    )
    assert a["nets"]["net1"]["loss"] != b["nets"]["net1"]["loss"]
    assert [r["test_loss"] for r in real[1:]] != [r["test_loss"] for r in swapped[1:]]


_KMEANS = {"model": "linear", "data.extractor": "kmeans", "data.crop_padding": 0}  # features


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"noise": 0.3}, "config.dividemix.lambda_u = "),  # -1 (auto): not in the paper's table
        ({"dividemix.warm_up": 3}, "config.dividemix.warm_up = "),  # no semi epoch left
        ({"dividemix.p_threshold": 1.0}, "config.dividemix.p_threshold = "),
        ({"dividemix.views": "ss"}, "config.dividemix.views = "),
        ({"dividemix.views": "augdesc-ws", **_KMEANS}, "config.dividemix.views = "),
        ({"dividemix.warmup_strong": 1.0, **_KMEANS}, "config.dividemix.warmup_strong = "),
        ({"dividemix.warmup_strong": 1.5}, "config.dividemix.warmup_strong = "),
    ],
)
def test_config_refusals_name_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        config_lib.validate(tiny_config(**overrides))


@pytest.mark.parametrize("field", ["mixture_scope", "loss_signal", "steps_per_call", "batch_size"])
def test_bootstrap_fields_are_refused_naming_their_owner(field):
    """The bootstrap methods' fields do not exist in a DivideMix config: setting one (flat, as
    before the blocks, or in a config.bootstrap block) is refused naming the methods it
    belongs to."""
    from configs import default

    c = tiny_config()
    with c.unlocked():
        c.bootstrap = default.get_config().bootstrap
    with pytest.raises(ValueError, match="belongs to CE, M, M-DYR-H, M-DYR-S, MD-DYR-SH"):
        config_lib.validate(c)
    if field != "batch_size":  # batch_size is also DivideMix's own: dividemix.batch_size
        c = tiny_config()
        with c.unlocked():
            c[field] = default.get_config().bootstrap[field]
        with pytest.raises(ValueError, match=f"config.bootstrap.{field} belongs to CE, M"):
            config_lib.validate(c)


def test_paper_table_and_official_defaults():
    c = tiny_config()
    assert dm_config.lambda_u(c) == 50.0 and dm_config.p_threshold(c) == 0.6
    c.noise = 0.5
    assert dm_config.lambda_u(c) == 25.0 and dm_config.p_threshold(c) == 0.5
    c.noise_kind, c.noise = "asymmetric", 0.4
    assert dm_config.lambda_u(c) == 0.0
    c.dividemix.lambda_u, c.dividemix.p_threshold = 7.0, 0.3  # set by the user: taken as given
    assert dm_config.lambda_u(c) == 7.0 and dm_config.p_threshold(c) == 0.3
    assert dm_config.loss_history(tiny_config()) == 2
    assert dm_config.loss_history(tiny_config(noise=0.5)) == 0


def test_published_configs_resolve_the_presets_table():
    """configs/cifar{10,100}_dividemix.py: lambda_u / p_threshold per noise level as the presets
    of Nishi et al.'s DivideMix reproduction; CIFAR-100 warms up for 30 epochs."""
    from configs import cifar10_dividemix, cifar100_dividemix

    expected = {"cifar10": (0.0, 25.0, 25.0, 50.0), "cifar100": (25.0, 150.0, 150.0, 150.0)}
    for module, warm_up in ((cifar10_dividemix, 10), (cifar100_dividemix, 30)):
        c = module.get_config()
        assert c.dividemix.warm_up == warm_up
        got = []
        for noise in (0.2, 0.5, 0.8, 0.9):
            c.noise = noise
            config_lib.validate(c)
            got.append(dm_config.lambda_u(c))
            assert dm_config.p_threshold(c) == (0.6 if noise == 0.9 else 0.5)
        assert tuple(got) == expected[c.data.name]


def _check_same(one: list, other: list, what: str) -> None:
    assert len(one) == len(other) == 3, what
    for a, b in zip(one, other, strict=True):
        assert [v["labelled"] for v in a.get("division", {}).values()] == b["labelled"], what
        for k in ("train_loss", "test_loss", "test_acc", "auroc"):
            np.testing.assert_allclose(a[k], b[k], rtol=2e-3, atol=1e-3, err_msg=f"{what} {k}")


@pytest.mark.slow
def test_same_metrics_on_1_and_2_devices(full_run):
    """The tiny run on a 2-device mesh (data sharded, both networks replicated, every batch
    sharded) gives the 1-device run's metrics to float tolerance and its labelled-set sizes."""
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu"
    )
    r = subprocess.run(
        [sys.executable, "tests/_dividemix_parallel_check.py", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, r.stdout[-3000:]
    _check_same(full_run[0]["history"], json.loads(line[-1][len("RESULT ") :])["2"], "2 devices")


@pytest.mark.slow
def test_two_processes_agree_with_one(full_run, tmp_path):
    """DivideMix on two processes joined by jax.distributed (gloo, localhost; 2 CPU devices
    each) through the run kit: the one-process run's metrics and labelled-set sizes; only
    process 0 writes metrics.jsonl."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "tests/_multiprocess_check.py",
                str(i),
                port,
                str(tmp_path / "wd"),
                "dividemix",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=1200) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    line = [x for x in outs[0][0].splitlines() if x.startswith("RESULT ")]
    assert line, outs[0][0][-3000:]
    _check_same(full_run[0]["history"], json.loads(line[-1][len("RESULT ") :]), "2 processes")
    lines = (tmp_path / "wd" / "metrics.jsonl").read_text().strip().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]
