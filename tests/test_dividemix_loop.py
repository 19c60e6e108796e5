"""The DivideMix loop (``jaxnoise.dividemix_loop``, the official ``Train_cifar.py`` main loop):
a tiny run on digits, its workdir, an exact resume, one compile of the semi step, refusals.

The tiny run: a width-8 CNN on 500 digits at 90% symmetric noise (so the loss-history path of
the official ``r == 0.9`` branch runs, and lambda_u / p_threshold come from the paper's table),
epoch 0 warm-up, epochs 1 and 2 semi-supervised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import quickstart_dividemix
from jaxnoise import config as config_lib
from jaxnoise import dividemix_loop, train


def tiny_config(**overrides):
    """quickstart_dividemix shrunk: 500 samples, width 8, epochs 0..2 (warm-up epoch 0)."""
    c = quickstart_dividemix.get_config()
    c.data.subset_per_class = 50
    c.width = 8
    c.noise = 0.9
    c.epochs = 2
    c.lr_milestones = (2,)
    c.dividemix_warm_up = 1
    c.lambda_u_rampup = 1.0
    c.dividemix_loss_history = 2
    c.log_every_seconds = 0.0
    for k, v in overrides.items():
        setattr(c, k, v)
    return c


def _without_seconds(history) -> str:
    """The history as JSON (NaN equal to NaN), without the timings."""
    return json.dumps([{k: v for k, v in r.items() if k != "seconds"} for r in history])


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """(summary, workdir) of the uninterrupted tiny run, through train.train_and_evaluate."""
    wd = str(tmp_path_factory.mktemp("dividemix") / "full")
    return train.train_and_evaluate(tiny_config(), wd), wd


def test_tiny_run_finishes_with_finite_metrics_and_writes_the_workdir(full_run):
    summary, wd = full_run
    h = summary["history"]
    assert [r["epoch"] for r in h] == [0, 1, 2]  # epochs 0..config.epochs
    assert [r["phase"] for r in h] == ["warmup", "semi", "semi"]
    assert not summary["interrupted"] and summary["epochs_done"] == 2
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
        assert [json.loads(line)["epoch"] for line in f] == [0, 1, 2]
    with np.load(os.path.join(wd, "per_sample.npz")) as d:
        assert d["p_noisy"].shape == (500,) and np.all((d["p_noisy"] >= 0) & (d["p_noisy"] <= 1))
        assert np.isfinite(d["loss"]).all()


def test_interrupted_after_an_epoch_and_resumed_gives_the_same_metrics(full_run, tmp_path):
    summary, _ = full_run
    wd = str(tmp_path / "resumed")
    first = train.train_and_evaluate(tiny_config(), wd, stop_after_epoch=1)
    assert first["epochs_done"] == 1 and first["checkpoint_at"] == "the end of epoch 1"
    resumed = train.train_and_evaluate(tiny_config(), wd)
    assert _without_seconds(resumed["history"]) == _without_seconds(summary["history"])
    with np.load(os.path.join(wd, "per_sample.npz")) as a, \
            np.load(os.path.join(full_run[1], "per_sample.npz")) as b:  # fmt: skip
        np.testing.assert_array_equal(a["p_noisy"], b["p_noisy"])


class _StopAfterReads:
    """A PreemptionGuard stand-in: a stop is requested from its ``reads``-th check on (the
    loop checks after every train step and at every epoch end)."""

    signum, signal_name = 15, "SIGTERM"

    def __init__(self, reads: int):
        self.reads = reads

    @property
    def stop_requested(self) -> bool:
        self.reads -= 1
        return self.reads < 0


def test_stop_in_the_middle_of_an_epoch_redoes_that_epoch(full_run, tmp_path):
    summary, _ = full_run
    wd = str(tmp_path / "stopped")
    # epoch 0: 2 x 8 warm-up steps and the epoch-end check; then 3 semi steps of epoch 1
    stopped = dividemix_loop.train_dividemix(tiny_config(), wd, guard=_StopAfterReads(20))
    assert stopped["interrupted"] and stopped["signal"] == "SIGTERM"
    assert stopped["checkpoint_at"] == "the end of epoch 0" and stopped["epochs_done"] == 0
    resumed = train.train_and_evaluate(tiny_config(), wd)
    assert _without_seconds(resumed["history"]) == _without_seconds(summary["history"])


def test_semi_step_compiles_once_across_epochs_and_pool_sizes(full_run):
    summary, _ = full_run
    sizes = {r["nets"][n]["labelled"] for r in summary["history"][1:] for n in ("net1", "net2")}
    assert len(sizes) > 1  # the pools differ, the compiled step does not
    (pieces,) = [p for k, p in dividemix_loop._PIECES.items()
                 if json.loads(k[0]) == json.loads(tiny_config().to_json_best_effort())]
    assert pieces.semi._cache_size() == 1
    assert pieces.divide._cache_size() == 1


_KMEANS = dict(model="linear", data={"extractor": "kmeans", "crop_padding": 0})  # features


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(distributed=dict(num_processes=2)), "distributed.num_processes"),
        (dict(mixture_scope="class"), "mixture_scope"),
        (dict(loss_signal="mean_k", posterior_source="epoch"), "loss_signal"),
        (dict(steps_per_call=2), "steps_per_call"),
        (dict(noise=0.3), "lambda_u"),  # -1 (auto): not in the paper's table
        (dict(dividemix_warm_up=3), "dividemix_warm_up"),  # > epochs
        (dict(p_threshold=1.0), "p_threshold"),
        (dict(dividemix_views="ss"), "dividemix_views"),
        (dict(dividemix_views="augdesc-ws", **_KMEANS), "dividemix_views"),
        (dict(dividemix_warmup_strong=1.0, **_KMEANS), "dividemix_warmup_strong"),
        (dict(dividemix_warmup_strong=1.5), "dividemix_warmup_strong"),
    ],
)
def test_config_refusals_name_the_field(overrides, field):
    c = tiny_config()
    for k, v in overrides.items():
        if isinstance(v, dict):
            for kk, vv in v.items():
                setattr(getattr(c, k), kk, vv)
        else:
            setattr(c, k, v)
    with pytest.raises(ValueError, match=f"config.{field} = "):
        config_lib.validate(c)


def test_paper_table_and_official_defaults():
    c = tiny_config()
    assert config_lib.dividemix_lambda_u(c) == 50.0 and config_lib.dividemix_p_threshold(c) == 0.6
    c.noise = 0.5
    assert config_lib.dividemix_lambda_u(c) == 25.0 and config_lib.dividemix_p_threshold(c) == 0.5
    c.noise_kind, c.noise = "asymmetric", 0.4
    assert config_lib.dividemix_lambda_u(c) == 0.0
    c.lambda_u, c.p_threshold = 7.0, 0.3  # set by the user: taken as given
    assert config_lib.dividemix_lambda_u(c) == 7.0 and config_lib.dividemix_p_threshold(c) == 0.3
    assert dividemix_loop.hyperparameters(tiny_config())["loss_history"] == 2
    assert dividemix_loop.hyperparameters(tiny_config(noise=0.5))["loss_history"] == 0


def test_published_configs_resolve_the_presets_table():
    """configs/cifar{10,100}_dividemix.py: lambda_u / p_threshold per noise level as the presets
    of Nishi et al.'s DivideMix reproduction; CIFAR-100 warms up for 30 epochs."""
    from configs import cifar10_dividemix, cifar100_dividemix

    expected = {"cifar10": (0.0, 25.0, 25.0, 50.0), "cifar100": (25.0, 150.0, 150.0, 150.0)}
    for module, warm_up in ((cifar10_dividemix, 10), (cifar100_dividemix, 30)):
        c = module.get_config()
        assert c.dividemix_warm_up == warm_up
        got = []
        for noise in (0.2, 0.5, 0.8, 0.9):
            c.noise = noise
            config_lib.validate(c)
            got.append(config_lib.dividemix_lambda_u(c))
            assert config_lib.dividemix_p_threshold(c) == (0.6 if noise == 0.9 else 0.5)
        assert tuple(got) == expected[c.data.name]


def test_same_metrics_on_1_and_2_devices(full_run):
    """The tiny run on a 2-device mesh (data sharded, both networks replicated, every batch
    sharded) gives the 1-device run's metrics to float tolerance and its labelled-set sizes."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")  # fmt: skip
    r = subprocess.run([sys.executable, "tests/_dividemix_parallel_check.py", "2"],
                       cwd=root, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, r.stdout[-3000:]
    two = json.loads(line[-1][len("RESULT ") :])["2"]
    one = full_run[0]["history"]
    assert len(one) == len(two) == 3
    for a, b in zip(one, two, strict=True):
        assert [v["labelled"] for v in a.get("division", {}).values()] == b["labelled"]
        for k in ("train_loss", "test_loss", "test_acc", "auroc"):
            np.testing.assert_allclose(a[k], b[k], rtol=2e-3, atol=1e-3, err_msg=k)
