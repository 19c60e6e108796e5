"""Embeddings without a test set: a features file of training samples only trains, fits the
noise model and writes label_issues.csv; the test evaluation is skipped ("no test set" in the
epoch and done lines, no test_acc / best_acc in metrics.jsonl, NaN accuracies in the summary),
for the bootstrap methods and DivideMix.

Tiny data: 4 well-separated Gaussian clusters in 16 dimensions, 400 samples, 50% symmetric
noise; the noise model's AUROC is checked against the known flips with scikit-learn.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from configs import default
from jaxnoise import inputs, loops
from jaxnoise.cli import train as train_cli
from jaxnoise.data import embeddings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def clusters(n: int = 400, k: int = 4, d: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (k, d))
    y = rng.integers(0, k, n)
    return (centers[y] + rng.normal(0, 1, (n, d))).astype(np.float32), y


# ------------------------------------------------------------------------------------------------
# The files.


def test_a_single_npz_without_test_arrays_gives_an_empty_test_split(tmp_path):
    x, y = clusters()
    np.savez(tmp_path / "e.npz", train_features=x, train_labels=y)
    ds = embeddings.load_features(str(tmp_path / "e.npz"))
    assert ds.test_images.shape == (0, 16) and ds.test_labels.shape == (0,)
    np.testing.assert_array_equal(ds.train_images, x)
    assert ds.class_names == ["0", "1", "2", "3"]


def test_half_a_test_split_is_refused(tmp_path):
    """test_features without test_labels (or the reverse) is a mistake, not "no test set"."""
    x, y = clusters()
    np.savez(tmp_path / "a.npz", train_features=x, train_labels=y, test_features=x)
    with pytest.raises(ValueError, match="missing test_labels"):
        embeddings.load_features(str(tmp_path / "a.npz"))
    np.savez(tmp_path / "b.npz", train_features=x, train_labels=y, test_labels=y)
    with pytest.raises(ValueError, match="missing test_features"):
        embeddings.load_features(str(tmp_path / "b.npz"))


def test_the_train_side_of_a_pair_alone_has_no_test_split(tmp_path):
    """data.features = an .npz of features/labels, or an .npy beside <stem>_labels.npy, and
    no data.test_features."""
    x, y = clusters()
    np.savez(tmp_path / "side.npz", features=x, labels=y, class_names=["a", "b", "c", "d"])
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "x_labels.npy", y)
    for path, names in (("side.npz", ["a", "b", "c", "d"]), ("x.npy", ["0", "1", "2", "3"])):
        ds = embeddings.load_features(str(tmp_path / path))
        assert ds.test_images.shape == (0, 16) and ds.class_names == names, path
        np.testing.assert_array_equal(ds.train_labels, y)


# ------------------------------------------------------------------------------------------------
# Runs.


def _assert_no_test_metrics(wd: str) -> list[dict]:
    """metrics.jsonl has no test metrics; label_issues.csv lists the flagged samples, whose
    p(noisy) detects the known flips (AUROC by scikit-learn)."""
    with open(os.path.join(wd, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    for r in records:
        assert not {"test_acc", "test_loss", "best_acc"} & set(r), r
    per = np.load(os.path.join(wd, "per_sample.npz"))
    assert roc_auc_score(per["noise_mask"], per["p_noisy"]) > 0.9
    with open(os.path.join(wd, "label_issues.csv")) as f:
        rows = list(csv.DictReader(f))
    # the default cut: as many as the noise model estimates wrong, round(sum p(noisy))
    assert len(rows) == int(np.rint(np.sum(per["p_noisy"], dtype=np.float64))) > 0
    assert os.path.isfile(os.path.join(wd, "figures", "accuracy_auroc.png"))
    return records


def test_a_features_file_without_a_test_set_trains_end_to_end(tmp_path):
    """``jaxnoise train --config features_m_dyr_h`` on train_features / train_labels only: each
    epoch line and the done line say "no test set"; exit 0; the report is written."""
    x, y = clusters()
    np.savez(tmp_path / "emb.npz", train_features=x, train_labels=y)
    wd = tmp_path / "wd"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxnoise.cli",
            "train",
            "--config",
            "features_m_dyr_h",
            f"--config.data.features={tmp_path / 'emb.npz'}",
            "--config.mlp_hidden=(32,)",
            "--config.noise=0.5",
            "--config.epochs=3",
            "--config.lr_milestones=(2,)",
            "--config.bootstrap.start_epoch=3",
            "--config.bootstrap.batch_size=50",
            "--config.eval_batch_size=200",
            "--workdir",
            str(wd),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT},
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    epochs = [line for line in r.stdout.splitlines() if "] epoch " in line and "train loss" in line]
    assert len(epochs) == 3 and all("no test set" in line for line in epochs), r.stdout[-3000:]
    assert "test acc" not in r.stdout
    assert "test (0, 16)" in r.stdout  # the data line
    done = r.stdout.strip().splitlines()[-1]
    assert done.startswith("done: M-DYR-H") and "no test set" in done, done
    assert len(_assert_no_test_metrics(str(wd))) == 3


@pytest.mark.slow  # the features path without a test set is in the fast tier
def test_dividemix_without_a_test_set(tmp_path):
    """DivideMix on the train side of a pair alone: the summary's accuracies are NaN, the done
    line says "no test set", the division still finds the flipped labels."""
    x, y = clusters()
    np.savez(tmp_path / "side.npz", features=x, labels=y)
    c = default.get_config("DivideMix")
    c.data.source, c.data.features = "features", str(tmp_path / "side.npz")
    c.data.crop_padding, c.data.flip, c.data.normalization = 0, False, "dataset"
    c.model, c.mlp_hidden, c.noise = "mlp", (32,), 0.5
    c.epochs, c.lr_milestones, c.eval_batch_size = 2, (2,), 200
    c.dividemix.warm_up, c.dividemix.batch_size, c.dividemix.lambda_u_rampup = 1, 32, 1.0
    c.log_every_seconds = 0.0
    wd = str(tmp_path / "wd")
    s = loops.train_and_evaluate(c, wd)
    assert s["epochs_done"] == 2 and not s["interrupted"] and s["has_test"] is False
    assert np.isnan(s["best_acc"]) and np.isnan(s["last_acc"])
    line = train_cli.done_line(c, s, wd, inputs.labels_summary(c))
    assert "no test set" in line and "test acc" not in line, line
    records = _assert_no_test_metrics(wd)
    assert [r["phase"] for r in records] == ["warmup", "semi"]
