"""Predicting with a finished run (jaxnoise.inference, ``jaxnoise predict``): the model of the
newest checkpoint on new data, normalised as the run's inputs were.

The check: the predictions of a run's own training images equal the run's per_sample.npz
predictions (made by the run itself, from the same checkpoint): a wrong mean / std, a train-mode
forward or, for DivideMix, one network instead of the sum of both would change them. Tiny runs:
the bootstrap baseline CE, a width-8 CNN on 300 digits for 2 epochs, and the session's DivideMix
run (tests/conftest.py ``dividemix_run``: 500 digits, one warm-up and two semi-supervised epochs).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import quickstart
from jaxnoise import inference, inputs, loops
from tests import _tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _shrink(c):
    c.data.subset_per_class = 30  # 300 training digits
    c.width = 8
    c.epochs = 2
    c.lr_milestones = (2,)
    c.log_every_seconds = 0.0
    return c


def bootstrap_config():
    """CE on digits, its tracking pass without augmentation: per_sample.npz's logits are then
    the eval-mode forward of the final network on the plain training images."""
    c = _shrink(quickstart.get_config())
    c.method = "CE"
    c.bootstrap.track_augment = False
    return c


@pytest.fixture(scope="module", params=["bootstrap", "dividemix"])
def finished(request, tmp_path_factory):
    """(config, workdir, training images) of a finished tiny run: CE trained here; DivideMix
    the session's run (tests/conftest.py ``dividemix_run``, read only)."""
    if request.param == "dividemix":
        summary, wd, _ = request.getfixturevalue("dividemix_run")
        c = _tiny.dividemix_config()
    else:
        c = bootstrap_config()
        wd = str(tmp_path_factory.mktemp(request.param) / "run")
        summary = loops.train_and_evaluate(c, wd)
    assert summary["epochs_done"] == c.epochs and not summary["interrupted"]
    return c, wd, inputs.load_data(c).train_images


def test_predictions_of_the_training_images_are_the_runs_own(finished):
    """load_run + predict on the training images: per_sample.npz's predictions exactly, its
    logits to float32 rounding, probs the softmax of the logits (numpy), shapes and dtypes."""
    c, wd, images = finished
    run = inference.load_run(wd)
    assert run.class_names == [str(i) for i in range(10)]
    assert run.input_shape == (8, 8, 1) and run.input_dtype == "uint8"
    assert run.position == f"the end of epoch {c.epochs}" and run.config.method == c.method
    out = run.predict(images)
    per = np.load(os.path.join(wd, "per_sample.npz"))
    assert out["logits"].dtype == np.float32 and out["logits"].shape == (len(images), 10)
    assert out["probs"].dtype == np.float32 and out["prediction"].dtype == np.int32
    np.testing.assert_array_equal(out["prediction"], per["prediction"])
    np.testing.assert_allclose(out["logits"], per["logits"], rtol=1e-5, atol=1e-5)
    z = per["logits"].astype(np.float64)
    ref = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(out["probs"], ref / ref.sum(1, keepdims=True), atol=1e-5)


def test_the_recorded_normalisation_is_the_training_images_mean_and_std(finished):
    """dataset.json's inputs: the digits' own per-channel mean / std (normalization="dataset"),
    computed here in numpy over the training images / 255."""
    _, wd, images = finished
    with open(os.path.join(wd, "dataset.json")) as f:
        info = json.load(f)["inputs"]
    x = images.astype(np.float64) / 255.0
    assert info["shape"] == [8, 8, 1] and info["dtype"] == "uint8"
    np.testing.assert_allclose(info["mean"], [x.mean()], rtol=1e-6)
    np.testing.assert_allclose(info["std"], [x.std()], rtol=1e-6)


def test_an_image_folder_and_files_predict_as_the_array(finished, tmp_path):
    """The same images as PNG files in a folder (and subfolder), and as .npy / .npz files: the
    same predictions, in the folder's sorted file order."""
    from PIL import Image

    _, wd, images = finished
    run = inference.load_run(wd)
    picks = [0, 7, 42, 299]
    names = []
    for i in picks:
        name = os.path.join("sub" if i % 2 else "", f"img{i:03d}.png")
        os.makedirs(tmp_path / "folder" / os.path.dirname(name), exist_ok=True)
        Image.fromarray(images[i][..., 0]).save(tmp_path / "folder" / name)
        names.append(name)
    order = np.argsort(names)
    want = run.predict(images)["prediction"][np.asarray(picks)[order]]
    x, got_names = inference.read_inputs(str(tmp_path / "folder"), run)
    assert got_names == sorted(names)
    np.testing.assert_array_equal(x, images[np.asarray(picks)[order]])
    np.testing.assert_array_equal(run.predict(str(tmp_path / "folder"))["prediction"], want)
    np.save(tmp_path / "x.npy", images[:50])
    np.savez(tmp_path / "x.npz", images=images[:50], other=np.zeros(3))
    full = run.predict(images[:50])["prediction"]
    for path in ("x.npy", "x.npz"):
        np.testing.assert_array_equal(run.predict(str(tmp_path / path))["prediction"], full)


def test_the_predict_verb_writes_one_row_per_input(finished, tmp_path):
    """``python -m jaxnoise.cli predict WORKDIR --inputs X.npy --out F``: the CSV's labels,
    class names and probabilities are predict()'s."""
    _, wd, images = finished
    np.save(tmp_path / "x.npy", images[:40])
    out = tmp_path / "p.csv"
    r = _cli("predict", wd, "--inputs", str(tmp_path / "x.npy"), "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"predictions: {out} (40 inputs" in r.stdout
    rows = list(csv.DictReader(open(out)))
    want = inference.load_run(wd).predict(images[:40])
    assert [int(row["index"]) for row in rows] == list(range(40))
    assert [int(row["predicted_label"]) for row in rows] == want["prediction"].tolist()
    assert [row["predicted_class"] for row in rows] == [str(k) for k in want["prediction"]]
    top = want["probs"].max(1)
    np.testing.assert_allclose([float(row["probability"]) for row in rows], top, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Refusals: one line, before anything is computed.


def _cli(*args: str):
    return subprocess.run(
        [sys.executable, "-m", "jaxnoise.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )


def _copy_without_checkpoints(wd: str, dest) -> str:
    os.makedirs(dest)
    for name in ("config.json", "dataset.json"):
        shutil.copy(os.path.join(wd, name), dest)
    return str(dest)


def test_a_workdir_without_a_finished_epoch_or_of_an_earlier_jaxnoise_is_refused(
    finished, tmp_path
):
    """No checkpoint (no epoch finished), no run at all, a dataset.json without the inputs'
    normalisation (an earlier jaxnoise): PredictError naming the workdir."""
    _, wd, _ = finished
    bare = _copy_without_checkpoints(wd, tmp_path / "bare")
    with pytest.raises(inference.PredictError, match="no checkpoint: no epoch has finished"):
        inference.load_run(bare)
    with pytest.raises(inference.PredictError, match="config.json is missing"):
        inference.load_run(str(tmp_path))
    old = tmp_path / "old"
    shutil.copytree(wd, old)
    with open(old / "dataset.json") as f:
        dataset = json.load(f)
    del dataset["inputs"]
    with open(old / "dataset.json", "w") as f:
        json.dump(dataset, f)
    with pytest.raises(inference.PredictError, match="earlier jaxnoise.*input normalisation"):
        inference.load_run(str(old))


def test_inputs_that_do_not_fit_the_model_are_refused(finished, tmp_path):
    """Another image size, float images, features, no rows, an .npz of unnamed arrays, a file
    that is not there: PredictError naming what the model takes."""
    _, wd, images = finished
    run = inference.load_run(wd)
    for bad in (
        np.zeros((3, 9, 9, 1), np.uint8),
        images.astype(np.float32),
        np.zeros((3, 64), np.float32),
        images[:, :, :, 0],
    ):
        with pytest.raises(inference.PredictError, match=r"uint8 \(M, 8, 8, 1\) images"):
            run.predict(bad)
    with pytest.raises(inference.PredictError, match="no inputs"):
        run.predict(images[:0])
    np.savez(tmp_path / "two.npz", a=images, b=images)
    with pytest.raises(inference.PredictError, match="name it inputs, images or features"):
        run.predict(str(tmp_path / "two.npz"))
    with pytest.raises(inference.PredictError, match="no such file or folder"):
        run.predict(str(tmp_path / "absent.npy"))


def test_the_predict_verb_refuses_in_one_line_with_exit_code_2(finished, tmp_path, capsys):
    """(In this process: the command's own exit code and stderr; the subprocess form is the
    verb test above.)"""
    _, wd, _ = finished
    np.save(tmp_path / "f.npy", np.zeros((3, 64), np.float32))
    bare = _copy_without_checkpoints(wd, tmp_path / "bare")
    for args, text in [
        ((wd, "--inputs", str(tmp_path / "f.npy")), "float32 (3, 64) do not fit the model"),
        ((bare, "--inputs", str(tmp_path / "f.npy")), "holds no checkpoint"),
        ((wd,), "the following arguments are required: --inputs"),
    ]:
        r = _tiny.cli_in_process(capsys, "predict", *args, "--out", str(tmp_path / "p.csv"))
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
        assert lines[0].startswith("error: ") and text in lines[0], lines[0]
        assert not (tmp_path / "p.csv").exists()
