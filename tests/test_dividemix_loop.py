"""The DivideMix loop (``jaxnoise.dividemix_loop``, the official ``Train_cifar.py`` main loop)
on the session's tiny DivideMix run (tests/conftest.py ``dividemix_run``, config
tests/_tiny.py ``dividemix_config``: 1,500 digits at 90% noise, width 8, warm-up epochs 0..3,
semi-supervised 4 and 5): its workdir, that its division finds the flipped labels, exact
resumes, one compile of the semi step, refusals.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from jaxnoise import config as config_lib
from jaxnoise import dividemix_loop, train
from tests._tiny import dividemix_config as tiny_config

N = 1500  # training digits
WARM_UP, EPOCHS = 4, 5


def _without_seconds(history) -> str:
    """The history as JSON (NaN equal to NaN), without the timings."""
    return json.dumps([{k: v for k, v in r.items() if k != "seconds"} for r in history])


def test_tiny_run_finishes_with_finite_metrics_and_writes_the_workdir(dividemix_run):
    summary, wd = dividemix_run
    h = summary["history"]
    assert [r["epoch"] for r in h] == list(range(EPOCHS + 1))  # epochs 0..config.epochs
    assert [r["phase"] for r in h] == ["warmup"] * WARM_UP + ["semi"] * (EPOCHS + 1 - WARM_UP)
    assert not summary["interrupted"] and summary["epochs_done"] == EPOCHS
    for r in h:
        assert np.isfinite(r["test_acc"]) and np.isfinite(r["train_loss"])
        assert r["best_acc"] == max(q["test_acc"] for q in h[: h.index(r) + 1])
    for r in h[WARM_UP:]:
        assert np.isfinite(r["auroc"])
        for name in ("net1", "net2"):
            d, t = r["division"][name], r["nets"][name]
            assert 0.0 <= d["auroc"] <= 1.0 and 0 <= d["labelled"] <= N
            assert np.isfinite([t["Lx"], t["Lu"], t["loss"]]).all()
        # each network trains on the other's division
        assert r["nets"]["net1"]["labelled"] == r["division"]["net2"]["labelled"]
        assert r["nets"]["net2"]["labelled"] == r["division"]["net1"]["labelled"]
    for f in ("metrics.jsonl", "per_sample.npz", "label_issues.csv", "config.json"):
        assert os.path.exists(os.path.join(wd, f)), f
    with open(os.path.join(wd, "metrics.jsonl")) as f:
        assert [json.loads(line)["epoch"] for line in f] == list(range(EPOCHS + 1))
    with np.load(os.path.join(wd, "per_sample.npz")) as d:
        assert d["p_noisy"].shape == (N,) and np.all((d["p_noisy"] >= 0) & (d["p_noisy"] <= 1))
        assert np.isfinite(d["loss"]).all()


def test_division_finds_the_flipped_labels(dividemix_run):
    """The method works: at 90% noise (21% of the labels correct) the co-divided networks rank
    the flipped labels first. Independently of jaxnoise's metrics: the final division (both
    networks' mean p(clean), per_sample.npz) by sklearn's AUROC against the noise mask, and the
    share of correct labels on its clean side; and each semi-supervised epoch's division as
    logged: each network's AUROC and its labelled set's precision.

    Measured on this run (2-core CPU): final AUROC 0.699, 34% correct labels among the 563
    samples with p(noisy) < 0.5; per network and epoch AUROC 0.74-0.78 and precision 0.40-0.47.
    Floors with margin; a division that ignores the losses gives 0.5 and 21%."""
    summary, wd = dividemix_run
    with np.load(os.path.join(wd, "per_sample.npz")) as d:
        p_noisy, mask = d["p_noisy"], d["noise_mask"]
        assert np.array_equal(mask, d["noisy_label"] != d["true_label"])
    base = 1.0 - mask.mean()  # correct labels: 0.1 + 0.9 / 10 expected
    assert 0.15 < base < 0.27
    assert roc_auc_score(mask, p_noisy) > 0.62
    clean_side = p_noisy < 0.5
    assert clean_side.sum() >= 100 and (~mask[clean_side]).mean() > base + 0.06
    for r in summary["history"][WARM_UP:]:
        for name, d in r["division"].items():
            assert d["auroc"] > 0.68 and d["labelled_precision"] > base + 0.1, (r["epoch"], name)


def test_interrupted_after_an_epoch_and_resumed_gives_the_same_metrics(dividemix_run, tmp_path):
    summary, full_wd = dividemix_run
    wd = str(tmp_path / "resumed")
    first = train.train_and_evaluate(tiny_config(), wd, stop_after_epoch=WARM_UP)
    assert first["epochs_done"] == WARM_UP
    assert first["checkpoint_at"] == f"the end of epoch {WARM_UP}"
    resumed = train.train_and_evaluate(tiny_config(), wd)
    assert _without_seconds(resumed["history"]) == _without_seconds(summary["history"])
    with np.load(os.path.join(wd, "per_sample.npz")) as a, \
            np.load(os.path.join(full_wd, "per_sample.npz")) as b:  # fmt: skip
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


def test_stop_in_the_middle_of_an_epoch_redoes_that_epoch(dividemix_run, tmp_path):
    summary, _ = dividemix_run
    wd = str(tmp_path / "stopped")
    # each warm-up epoch: 2 networks x 24 steps (23 of 64 and the last of 28) and the epoch-end
    # check; then 3 semi steps of epoch 4
    reads = WARM_UP * (2 * 24 + 1) + 3
    stopped = dividemix_loop.train_dividemix(tiny_config(), wd, guard=_StopAfterReads(reads))
    assert stopped["interrupted"] and stopped["signal"] == "SIGTERM"
    assert stopped["checkpoint_at"] == f"the end of epoch {WARM_UP - 1}"
    assert stopped["epochs_done"] == WARM_UP - 1
    resumed = train.train_and_evaluate(tiny_config(), wd)
    assert _without_seconds(resumed["history"]) == _without_seconds(summary["history"])


def test_semi_step_compiles_once_across_epochs_and_pool_sizes(dividemix_run):
    summary, _ = dividemix_run
    sizes = {r["nets"][n]["labelled"] for r in summary["history"][WARM_UP:]
             for n in ("net1", "net2")}  # fmt: skip
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
        (dict(dividemix_warm_up=7), "dividemix_warm_up"),  # > epochs (5)
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


@pytest.mark.slow
def test_same_metrics_on_1_and_2_devices():
    """A small DivideMix run (500 digits, epochs 0..2) on a 2-device mesh (data sharded, both
    networks replicated, every batch sharded) gives the 1-device run's metrics to float
    tolerance and its labelled-set sizes; both runs in one subprocess."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")  # fmt: skip
    r = subprocess.run([sys.executable, "tests/_dividemix_parallel_check.py", "1", "2"],
                       cwd=root, env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, r.stdout[-3000:]
    result = json.loads(line[-1][len("RESULT ") :])
    one, two = result["1"], result["2"]
    assert len(one) == len(two) == 3
    for a, b in zip(one, two, strict=True):
        assert a["labelled"] == b["labelled"]
        for k in ("train_loss", "test_loss", "test_acc", "auroc"):
            np.testing.assert_allclose(a[k], b[k], rtol=2e-3, atol=1e-3, err_msg=k)
