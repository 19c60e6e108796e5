"""What a new user met from a fresh clone (issue 23, point 5), one test (or a few) per item.

No training here: log lines come from the functions that print them (fed a small fitted
mixture), the command lines are refused before anything is loaded, and the report runs on a
hand-made workdir. References are numpy / sklearn, written in the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from jaxnoise import inputs, loops, mixture, runkit
from jaxnoise import metrics as metrics_lib
from jaxnoise import writers as writers_lib
from jaxnoise.bootstrap import loop as bootstrap_loop
from jaxnoise.dividemix import config as dm_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # main.py, configs/ and benchmarks/ as the user runs them

import main  # noqa: E402
from tests import _signal_run  # noqa: E402


def tiny_config(**overrides):
    """The quickstart shrunk (width-8 CNN on digits, 3 epochs), with `overrides` set."""
    return _signal_run.set_fields(_signal_run.get_config(), **overrides)


def fitted_losses(n: int = 400, seed: int = 0) -> dict:
    """Two loss populations, the BMM fitted to them and its posteriors (as track_and_fit)."""
    rng = np.random.default_rng(seed)
    loss = np.concatenate([rng.gamma(2.0, 0.2, n - n // 3), rng.gamma(9.0, 0.4, n // 3)])
    loss = jnp.asarray(loss.astype(np.float32))
    state = mixture.fit_bmm(loss)
    p = mixture.posterior_noisy(state, loss)
    return {"loss": loss, "fit_loss": loss, "p_noisy": p, "p_exact": p, "mixture": state}


def record(run, fitted) -> dict:
    """The bootstrap loop's record of an epoch with these fitted losses, logged as it logs it."""
    aux = {k: fitted[k] for k in ("loss", "p_noisy")}
    extras = {k: fitted[k] for k in ("fit_loss", "p_exact")}
    r = bootstrap_loop.epoch_record(
        run,
        1,
        1.0,
        aux,
        extras,
        fitted["mixture"],
        {"test_acc": 50.0, "test_loss": 1.0},
        SECONDS,
        400,
    )
    return runkit.record(run, r, bootstrap_loop.describer(run))


def fake_run(tmp_path, config, mask: np.ndarray) -> types.SimpleNamespace:
    """What `runkit.record`, `runkit.summary` and the loops' epoch records read of a run."""
    return types.SimpleNamespace(
        config=config,
        mask=jnp.asarray(mask),
        noise_mask=mask,
        history=[],
        best_acc=0.0,
        metrics_path=str(tmp_path / "metrics.jsonl"),
        workdir=str(tmp_path),
        saved_at=None,
        noise_known=metrics_lib.noise_known(mask),
        has_test=True,
        guard=types.SimpleNamespace(signal_name=None, signum=None),
        writers=writers_lib.Writers(),  # none open
    )


def epoch_line(capsys) -> str:
    """The one log line that mentions the epoch."""
    lines = [x for x in capsys.readouterr().out.splitlines() if "] epoch " in x]
    assert len(lines) == 1, lines
    return lines[0]


# ------------------------------------------------------------------------------------------------
# 1. No known noise: no detection metrics in the epoch line and the summary; the estimate instead.

SECONDS = {"train": 1.0, "track": 0.5, "fit": 0.01}


@pytest.mark.parametrize("kind", ["none", "symmetric"])
def test_epoch_line_without_known_noise_shows_the_estimate_not_auroc(kind, tmp_path, capsys):
    """noise_kind=none, or symmetric noise that flipped nothing (noise=0): the line says
    'est. noisy X%' (X = the mean p(noisy), numpy) and neither AUROC nor P/R (NaN / 0.000)."""
    fitted = fitted_losses()
    mask = np.zeros(400, bool)
    run = fake_run(tmp_path, tiny_config(noise_kind=kind, noise=0.0), mask)
    record(run, fitted)
    line = epoch_line(capsys)
    est = float(np.mean(np.asarray(fitted["p_noisy"], np.float64)))
    assert 0.05 < est < 0.95
    assert f"est. noisy {est:.1%}" in line, line
    assert "AUROC" not in line and "P/R" not in line and "nan" not in line, line


def test_epoch_line_with_known_noise_keeps_auroc_and_precision_recall(tmp_path, capsys):
    """With a known mask the line keeps AUROC (sklearn) and P/R@0.5 (numpy)."""
    fitted = fitted_losses()
    p = np.asarray(fitted["p_noisy"], np.float64)
    mask = np.zeros(400, bool)
    mask[-400 // 3 :] = True
    mask[:20] = True  # some clean-looking samples are noisy too
    run = fake_run(tmp_path, tiny_config(), mask)
    record(run, fitted)
    line = epoch_line(capsys)
    flagged = p > 0.5
    precision = np.sum(flagged & mask) / np.sum(flagged)
    recall = np.sum(flagged & mask) / np.sum(mask)
    assert f"noise AUROC {roc_auc_score(mask, p):.4f}" in line, line
    assert f"P/R@0.5 {precision:.3f}/{recall:.3f}" in line, line
    assert "est. noisy" not in line


def test_done_line_and_summary_without_known_noise(tmp_path, capsys):
    """The run's summary says the noise is unknown and carries the estimate; main.py's last
    line shows that estimate, not 'noise-detection AUROC nan'."""
    fitted = fitted_losses()
    config = tiny_config(noise_kind="none", noise=0.0)
    run = fake_run(tmp_path, config, np.zeros(400, bool))
    record(run, fitted)
    summary = runkit.summary(run, False)
    est = float(np.mean(np.asarray(fitted["p_noisy"], np.float64)))
    assert summary["noise_known"] is False
    assert summary["est_noisy"] == pytest.approx(est, rel=1e-5)
    line = main.done_line(config, summary, "W", inputs.labels_summary(config))
    assert line.startswith("done: M-DYR-H labels as given ")
    assert f"est. noisy {est:.1%}" in line and "AUROC" not in line, line


def dividemix_divisions(n: int = 400, seed: int = 1) -> dict:
    """Two networks' divisions: p_clean, the labelled set (p_clean > 0.5), loss, logits."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in ("net1", "net2"):
        pc = rng.uniform(0.0, 1.0, n).astype(np.float32)
        out[name] = {
            "p_clean": jnp.asarray(pc),
            "labelled": jnp.asarray(pc > 0.5),
            "loss": jnp.asarray(rng.gamma(2.0, 0.5, n).astype(np.float32)),
            "logits": jnp.zeros((n, 10)),
        }
    return out


def test_dividemix_epoch_line_without_known_noise(tmp_path, capsys):
    """DivideMix's line: 'est. noisy X%' (X = 1 - mean of the two p_clean, numpy) instead of
    'division AUROC nan'; in warm-up (no division yet) neither."""
    from configs import quickstart_dividemix
    from jaxnoise.dividemix import loop as dm_loop

    config = quickstart_dividemix.get_config()
    config.noise_kind, config.noise = "none", 0.0
    run = fake_run(tmp_path, config, np.zeros(400, bool))
    divisions = dividemix_divisions()
    trained = {
        name: {"loss": 1.0, "Lx": 1.0, "Lu": 0.0, "steps": 3, "labelled": 200}
        for name in ("net1", "net2")
    }
    test = {"test_acc": 50.0, "test_loss": 1.0}
    describe = dm_loop.describer(run)

    def record_epoch(epoch, phase, division):  # as the loop's epoch function records an epoch
        r = {
            "epoch": epoch,
            "phase": phase,
            "lr": 0.02,
            "train_loss": 1.0,
            **test,
            **division,
            "nets": trained,
            "seconds": SECONDS,
        }
        runkit.record(run, r, describe)

    record_epoch(12, "semi", dm_loop.division_metrics(run, divisions))
    line = epoch_line(capsys)
    pc = [np.asarray(d["p_clean"], np.float64) for d in divisions.values()]
    est = float(np.mean(1.0 - (pc[0] + pc[1]) / 2))
    assert f"est. noisy {est:.1%}" in line and "AUROC" not in line, line
    record_epoch(1, "warmup", dm_loop.division_metrics(run, None))
    line = epoch_line(capsys)
    assert "AUROC" not in line and "est. noisy" not in line and "nan" not in line, line


# ------------------------------------------------------------------------------------------------
# 2. Human labels are described as human labels, not as 'noise human r=0.0 ... flipped'.


def test_human_labels_log_line_and_done_line(tmp_path, capsys):
    """The data line names the label file and key and says how many labels differ from the
    dataset's (numpy); the done line says 'human labels', not 'noise=0.0'."""
    from jaxnoise import data as data_lib

    labels = data_lib.load_digits().train_labels
    human = labels.copy()
    human[::3] = (human[::3] + 1) % 10
    path = str(tmp_path / "human.npz")
    np.savez(path, worse_label=human, aggre_label=labels)
    config = tiny_config(noise_kind="human", noise=0.0, label_file=path, label_key="worse_label")
    config.method = "CE"
    inputs.load_noisy_data(config, 1)
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "] data: " in x]
    differ = np.mean(human != labels)
    assert (
        f"labels: human (label file {path} / key worse_label): {differ:.1%} differ from the "
        "dataset's labels"
    ) in line, line
    assert "flipped" not in line and "r=0.0" not in line, line
    summary = {"best_acc": 50.0, "last_acc": 40.0, "auroc": 0.7, "noise_known": True}
    done = main.done_line(config, summary, "W", inputs.labels_summary(config))
    assert done.startswith(f"done: CE human labels (label file {path} / key worse_label) best ")
    assert "noise=" not in done


# ------------------------------------------------------------------------------------------------
# 11. The report: a threshold that lists nothing says so; no detection figures without a mask.


def report_workdir(path, *, noise_known_in_json: bool, mask_any: bool, p_max: float = 0.8):
    """A finished run's files: 300 samples, two loss populations, p(noisy) below `p_max`."""
    rng = np.random.default_rng(0)
    n = 300
    os.makedirs(path, exist_ok=True)
    noisy = np.arange(n) % 3 == 0
    loss = np.where(noisy, rng.gamma(9.0, 0.4, n), rng.gamma(1.5, 0.15, n)).astype(np.float32)
    p = np.where(noisy, rng.uniform(0.5, p_max, n), rng.uniform(0.0, 0.2, n)).astype(np.float32)
    labels = rng.integers(0, 3, n).astype(np.int32)
    np.savez(
        os.path.join(path, "per_sample.npz"),
        loss=loss,
        p_noisy=p,
        prediction=labels,
        noisy_label=labels,
        true_label=labels,
        noise_mask=noisy & mask_any,
        logits=np.zeros((n, 3), np.float32),
    )
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(
            {
                "method": "M-DYR-H",
                "noise_model": "bmm",
                "em_iters": 10,
                "noise_kind": "symmetric",
                "data": {"name": "toy"},
            },
            f,
        )
    with open(os.path.join(path, "dataset.json"), "w") as f:
        json.dump(
            {
                "name": "toy",
                "class_names": ["a", "b", "c"],
                "num_train": n,
                "noise_known": noise_known_in_json,
                "train_paths": None,
            },
            f,
        )
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for epoch in (1, 2):
            f.write(
                json.dumps(
                    {
                        "epoch": epoch,
                        "test_acc": 50.0,
                        "best_acc": 50.0,
                        "auroc": 0.8 if mask_any else float("nan"),
                        "flagged_fraction": 0.3,
                        "est_noisy": 0.3,
                    }
                )
                + "\n"
            )
    return str(path), p


def test_report_threshold_that_flags_nothing_says_so(tmp_path, capsys):
    """python -m jaxnoise.report W --threshold 0.9, above every p(noisy): one warning line with
    the largest p(noisy) and the estimated number of wrong labels (the sum of p(noisy), numpy),
    pointing to the default cut."""
    from jaxnoise import report

    wd, p = report_workdir(tmp_path / "w", noise_known_in_json=True, mask_any=True)
    assert report.main([wd, "--threshold", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "(0 of 300 samples with p(noisy) > 0.9)" in out
    (line,) = [x for x in out.splitlines() if x.startswith("warning: no sample has")]
    assert f"no sample has p(noisy) > 0.9 (the largest is {p.max():.3f})" in line, line
    assert f"estimates {p.astype(np.float64).sum():.0f} of 300 labels wrong" in line, line
    assert "without --threshold" in line, line


def test_report_without_a_noisy_label_has_no_precision_and_one_histogram(tmp_path, monkeypatch):
    """A run whose mask marks nothing (e.g. noise=0, or human labels equal to the dataset's)
    is reported as unknown noise: no precision/recall, and one histogram of all losses with the
    fitted mixtures, not a stacked clean / empty 'noisy (0)' one."""
    from matplotlib.axes import Axes

    from jaxnoise import report

    hists = []
    real_hist = Axes.hist
    monkeypatch.setattr(
        Axes, "hist", lambda self, *a, **k: hists.append(k.get("label")) or real_hist(self, *a, **k)
    )
    wd, _ = report_workdir(tmp_path / "w", noise_known_in_json=True, mask_any=False)
    out = report.write_report(wd)
    assert out["noise_known"] is False and "precision" not in out
    with open(os.path.join(wd, "label_issues_summary.json")) as f:
        assert "precision" not in json.load(f)
    assert hists == ["all samples (300)"], hists
    from jaxnoise import plots

    hists.clear()
    plots.loss_histogram(str(tmp_path / "h.png"), np.arange(10.0), noise_mask=np.zeros(10, bool))
    assert hists == ["all samples (10)"], hists


# ------------------------------------------------------------------------------------------------
# 3-6. Label files: refused before loading, plain values in messages, index arrays, short names.


def run_main(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """python main.py ARGS, output captured."""
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "main.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )


def one_line_refusal(r: subprocess.CompletedProcess) -> str:
    """The refusal's one stderr line (exit code 2)."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def test_auto_label_order_on_an_image_folder_is_refused_in_validation(tmp_path):
    """A label file without a path column on an image folder: refused by config validation (exit
    2, one line naming label_order), before any image is loaded: the folder here holds none, so a
    refusal after loading would be a different error (exit 1)."""
    root = tmp_path / "images"
    root.mkdir()
    path = tmp_path / "human.npz"
    np.savez(path, worse_label=np.arange(6) % 3)
    r = run_main(
        "--config",
        "configs/quickstart.py",
        "--config.data.source=folder",
        f"--config.data.root={root}",
        "--config.noise_kind=human",
        f"--config.label_file={path}",
        "--config.label_key=worse_label",
        f"--workdir={tmp_path / 'run'}",
    )
    line = one_line_refusal(r)
    assert "config.label_order = 'auto'" in line and "no path column" in line, line
    assert not (tmp_path / "run").exists()
    csv = tmp_path / "human.csv"  # a path column: auto is fine, and the folder's absence shows
    csv.write_text("path,label\ntrain/a/0.png,1\n")
    r = run_main(
        "--config",
        "configs/quickstart.py",
        "--config.data.source=folder",
        f"--config.data.root={root}",
        "--config.noise_kind=human",
        f"--config.label_file={csv}",
        f"--workdir={tmp_path / 'run'}",
    )
    assert r.returncode == 1 and "config.label_order" not in r.stderr, r.stderr[-2000:]
    assert "has no train/ subfolder" in r.stderr, r.stderr[-2000:]


def folder_like_dataset(n: int = 6):
    """An in-memory dataset with an image folder's paths and ids (train/<class>/<i>.png)."""
    from jaxnoise import data as data_lib

    ids = np.asarray([f"train/{'ab'[i % 2]}/{i}.png" for i in range(n)])
    labels = (np.arange(n) % 2).astype(np.int32)
    return data_lib.Dataset(
        np.zeros((n, 2, 2, 3), np.uint8),
        labels,
        np.zeros((2, 2, 2, 3), np.uint8),
        labels[:2],
        ["a", "b"],
        "imgs",
        train_paths=[f"/r/{i}" for i in ids],
        train_ids=ids,
    )


def test_refusals_show_plain_values_not_numpy_reprs(tmp_path):
    """Messages that quote a value taken from an array show it as Python shows a str / number."""
    from jaxnoise import labels as labels_lib
    from jaxnoise import noise as noise_lib

    ds = folder_like_dataset()
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\n" + "".join(f"{p},1\n" for p in ds.train_ids[:-1]))
    with pytest.raises(ValueError) as e:
        labels_lib.resolve(ds, label_file=str(csv), label_key="", label_order="id")
    assert "e.g. 'train/b/5.png'" in str(e.value) and "np." not in str(e.value), e.value
    with pytest.raises(ValueError) as e:
        labels_lib.resolve(ds, label_file=str(csv), label_key="", label_order="cifar")
    assert "ids like 'train/a/0.png'" in str(e.value) and "np." not in str(e.value), e.value
    with pytest.raises(ValueError) as e:
        noise_lib.apply("symmetric", np.zeros(4, int), num_classes=3, rate=np.float64(1.5))
    assert "got 1.5" in str(e.value) and "np." not in str(e.value), e.value


def cifar_like_dataset(n: int = 8, seed: int = 0):
    """A tfds-CIFAR-like dataset: ids train_XXXXX (XXXXX the CIFAR index) in another order."""
    from jaxnoise import data as data_lib

    rng = np.random.default_rng(seed)
    cifar_index = rng.permutation(n)
    labels = rng.integers(0, 10, n).astype(np.int32)
    ids = np.asarray([f"train_{i:05d}" for i in cifar_index])
    return data_lib.Dataset(
        np.zeros((n, 2, 2, 3), np.uint8),
        labels,
        np.zeros((2, 2, 2, 3), np.uint8),
        labels[:2],
        [str(k) for k in range(10)],
        "cifar10",
        train_ids=ids,
    ), cifar_index


def test_an_index_array_is_not_a_label_set_and_aligns_the_rows(tmp_path):
    """A CIFAR-N .npz with an `index` array (CIFAR positions of its rows, here shuffled): the
    index is not listed among the label sets, and the rows are aligned by it."""
    from jaxnoise import labels as labels_lib

    ds, cifar_index = cifar_like_dataset()
    n = len(cifar_index)
    rng = np.random.default_rng(1)
    rows_order = rng.permutation(n)  # the file's row r holds CIFAR sample rows_order[r]
    clean_by_cifar = np.empty(n, np.int64)
    clean_by_cifar[cifar_index] = ds.train_labels  # the label of CIFAR sample i
    worse_by_cifar = (clean_by_cifar + 1) % 10
    path = tmp_path / "CIFAR-10_human.npz"
    np.savez(
        path,
        clean_label=clean_by_cifar[rows_order],
        worse_label=worse_by_cifar[rows_order],
        index=rows_order,
    )
    assert labels_lib.available_keys(path) == ["clean_label", "worse_label"]
    with pytest.raises(ValueError, match=r"several label sets \(clean_label, worse_label\)"):
        labels_lib.read(path)
    got = labels_lib.resolve(ds, label_file=str(path), label_key="worse_label")
    expected = worse_by_cifar[cifar_index]  # sample j of ds is CIFAR sample cifar_index[j]
    np.testing.assert_array_equal(got.label_sets[labels_lib.KEY], expected)


@pytest.mark.parametrize(
    ("short", "long"),
    [
        ("worse", "worse_label"),
        ("aggre", "aggre_label"),
        ("random1", "random_label1"),
        ("random3", "random_label3"),
        ("rand2", "random_label2"),
    ],
)
def test_label_key_short_names_work_for_a_file_and_for_the_source(short, long, tmp_path):
    """label_key=worse (etc.) picks worse_label from a file as it does from tfds cifar10_n."""
    import dataclasses

    from jaxnoise import labels as labels_lib

    ds = folder_like_dataset(12)
    rng = np.random.default_rng(0)
    sets = {
        name: rng.integers(0, 2, 12)
        for name in (
            "worse_label",
            "aggre_label",
            "random_label1",
            "random_label2",
            "random_label3",
        )
    }
    path = tmp_path / "labels.npz"
    np.savez(path, **sets)
    got = labels_lib.resolve(ds, label_file=str(path), label_key=short, label_order="dataset")
    np.testing.assert_array_equal(got.label_sets[labels_lib.KEY], sets[long])
    source = dataclasses.replace(ds, label_sets=sets)  # as tfds cifar10_n carries them
    got = labels_lib.resolve(source, label_file="", label_key=short)
    np.testing.assert_array_equal(got.label_sets[labels_lib.KEY], sets[long])


# ------------------------------------------------------------------------------------------------
# 7. DivideMix with human labels: lambda_u must be set; p_threshold=-1 is 0.5, not read from noise.


def human_dividemix(**overrides):
    """configs/cifar10_dividemix.py (lambda_u and p_threshold -1) on CIFAR-10N's worse labels."""
    from configs import cifar10_dividemix

    c = cifar10_dividemix.get_config()
    c.data.name, c.noise_kind, c.label_key = "cifar10_n", "human", "worse_label"
    return _signal_run.set_fields(c, **overrides)


def test_dividemix_human_labels_need_an_explicit_lambda_u():
    """lambda_u=-1 with human labels: one line saying the paper gives none and what to set,
    not 'no lambda_u for human noise 0'; an explicit value passes."""
    from jaxnoise import config as config_lib

    with pytest.raises(ValueError) as e:
        config_lib.validate(human_dividemix())
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("config.dividemix.lambda_u = -1")
    assert "noise_kind='human'" in msg and "{0, 25, 50, 150}" in msg, msg
    assert "human noise 0" not in msg
    config_lib.validate(human_dividemix(lambda_u=25.0))


def test_dividemix_human_labels_p_threshold_auto_is_half_whatever_config_noise_says():
    """p_threshold=-1 with human labels is 0.5 (the paper's below 90%); config.noise, which
    human labels do not use, is not read: 0.95 there would otherwise give 0.6."""

    assert dm_config.p_threshold(human_dividemix(lambda_u=0.0, noise=0.95)) == 0.5
    synthetic = human_dividemix(noise_kind="symmetric", label_key="", noise=0.9)
    assert dm_config.p_threshold(synthetic) == 0.6


# ------------------------------------------------------------------------------------------------
# 8, 9, 12. --help: the quoted tuple, every model, the features source; a field given twice.


def test_help_shows_quoted_tuples_every_model_and_the_features_source():
    """The tuple example is quoted for the shell (and parses as one shell word), the model field
    lists every model the library builds, and the features source names its keys."""
    import shlex

    from jaxnoise import models

    out = run_main("--help").stdout
    assert "'--config.mlp_hidden=(512,)'" in out
    assert shlex.split("python main.py '--config.mlp_hidden=(512,)'")[-1] == (
        "--config.mlp_hidden=(512,)"
    )
    (model_line,) = [x for x in out.splitlines() if x.startswith("  model = ")]
    for name in models.MODEL_NAMES:
        assert f'"{name}"' in model_line, (name, model_line)
    (features,) = [x for x in out.splitlines() if x.startswith("  features ")]
    for key in (
        "train_features",
        "train_labels",
        "test_features",
        "test_labels",
        "class_names",
        "train_ids",
        "--config.data.features=",
        ".npz",
        ".npy",
    ):
        assert key in features, (key, features)
    assert "see configs/default.py" not in features


def test_a_field_given_twice_is_refused():
    """--config.mlp_hidden=(128,) --config.mlp_hidden=(512,) would train a (128, 512) head
    (ml_collections joins repeated tuple flags): refused in one line, exit 2."""
    r = run_main(
        "--config",
        "configs/features_m_dyr_h.py",
        "--config.mlp_hidden=(128,)",
        "--config.mlp_hidden=(512,)",
    )
    line = one_line_refusal(r)
    assert "--config.mlp_hidden is given twice" in line, line
    r = run_main("--config", "configs/quickstart.py", "--config.noise=0.2", "--config.noise=0.4")
    assert "--config.noise is given twice" in one_line_refusal(r)


# ------------------------------------------------------------------------------------------------
# 10. configs/features_m_dyr_h.py is the features protocol's M-DYR-H cell; the protocol takes
#     human labels from a file.


def flat(config) -> dict:
    from jaxnoise import config as config_lib

    return config_lib.flatten(config.to_dict())


def test_features_config_equals_the_features_protocol_cell(tmp_path):
    """Every field of configs/features_m_dyr_h.py equals the protocol's M-DYR-H cell except
    where the data come from (data.source/root/extractor/cache_dir/name) and the noise level."""
    from benchmarks import reproduce
    from configs import features_m_dyr_h

    protocol = flat(reproduce.make_config("features", "M-DYR-H@0.0", str(tmp_path), "/cache"))
    config = flat(features_m_dyr_h.get_config())
    where = {"data.source", "data.root", "data.extractor", "data.cache_dir", "data.name"}
    differ = {k for k in protocol if protocol[k] != config[k]}
    assert differ == where, {k: (protocol[k], config[k]) for k in differ - where}
    assert config["data.kmeans_centroids"] == reproduce.FEATURES["kmeans_centroids"] == 400


def test_reproduce_features_label_file_options_reach_the_config(tmp_path, monkeypatch):
    """--protocol features --label-file F --label-key worse: every cell's config has human labels
    from F (key, order), on the protocol's features; nothing is trained here."""
    from benchmarks import reproduce
    from jaxnoise import config as config_lib

    seen = {}

    def fake_train(config, workdir):
        seen[workdir] = config
        return {"history": []}

    monkeypatch.setattr(loops, "train_and_evaluate", fake_train)
    monkeypatch.setattr(reproduce, "cifar_folder", lambda data_dir: str(tmp_path))
    monkeypatch.setattr(reproduce, "write_table", lambda *a: seen.setdefault("table", a[0]))
    labels = tmp_path / "labels.csv"
    labels.write_text("path,worse_label\ntrain/a/0.png,1\n")
    argv = [
        "reproduce.py",
        "--protocol",
        "features",
        "--root",
        str(tmp_path / "runs"),
        "--label-file",
        str(labels),
        "--label-key",
        "worse",
        "--cells",
        "M-DYR-H@human",
        "CE@human",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    reproduce.main()
    assert seen.pop("table") == "features_human_worse"
    assert sorted(os.path.basename(w) for w in seen) == ["CE_human", "M-DYR-H_human"]
    for workdir, c in seen.items():
        assert os.path.dirname(workdir) == str(tmp_path / "runs" / "features_human_worse")
        assert (c.noise_kind, c.label_file, c.label_key, c.label_order) == (
            "human",
            str(labels),
            "worse",
            "auto",
        )
        assert (c.data.source, c.data.extractor, c.data.kmeans_centroids, c.model) == (
            "folder",
            "kmeans",
            400,
            "mlp",
        )
        config_lib.validate(c)  # the CSV names its samples: auto order is fine on the folder
    monkeypatch.setattr(
        sys, "argv", ["reproduce.py", "--protocol", "reduced", "--label-file", str(labels)]
    )
    with pytest.raises(SystemExit):
        reproduce.main()


# ------------------------------------------------------------------------------------------------
# 13. config.data.kmeans_eps: the k-means contrast-normalisation epsilon, in the cache key.


def test_kmeans_eps_reaches_the_extractor_and_a_changed_eps_extracts_again(tmp_path):
    """Digits through inputs.load_data with a tiny k-means extractor: eps 10 and 2550 give two
    cache files and different features; the features equal a numpy reference of step 2 (contrast
    normalisation with that eps) composed with the cached whitening and centroids."""
    from jaxnoise import config as config_lib

    def load(eps):
        c = tiny_config(model="mlp", track_augment=False)
        c.data.extractor, c.data.cache_dir, c.data.crop_padding = "kmeans", str(tmp_path), 0
        c.data.kmeans_centroids, c.data.kmeans_patches, c.data.kmeans_iters = 4, 300, 1
        c.data.kmeans_eps = eps
        config_lib.validate(c)
        return inputs.load_data(c)

    a, b = load(10.0), load(2550.0)
    caches = sorted(tmp_path.glob("features-kmeans-*.npz"))
    assert len(caches) == 2
    assert not np.allclose(a.train_images, b.train_images)
    for path in caches:  # each cache holds the features its eps gives (numpy reference)
        with np.load(path) as z:
            eps = json.loads(str(z["settings_json"]))["patch_eps"]
            ref = kmeans_reference(inputs.load_data(tiny_config()).train_images[:5], z, eps)
            got = (a if eps == 10.0 else b).train_images[:5]
            np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-3)
    assert {json.loads(str(np.load(p)["settings_json"]))["patch_eps"] for p in caches} == {
        10.0,
        2550.0,
    }


def kmeans_reference(images: np.ndarray, z, eps: float) -> np.ndarray:
    """Coates et al.'s features in numpy: 6x6 patches at stride 1, (x - mean) / sqrt(var + eps)
    (ddof 1), whitening, triangle activation, sum over the 4 quadrants (half rounded up)."""
    x = images.astype(np.float64)
    n, h, w, ch = x.shape
    rows, cols = h - 5, w - 5
    p = np.stack([x[:, i : i + rows, j : j + cols, :] for i in range(6) for j in range(6)], axis=3)
    p = p.reshape(n, rows, cols, 36 * ch)
    p = p - p.mean(-1, keepdims=True)
    p = p / np.sqrt(p.var(-1, ddof=1, keepdims=True) + eps)
    p = (p - z["kmeans_mean"]) @ z["kmeans_whitening"]
    d = np.sqrt(np.maximum(((p[..., None, :] - z["kmeans_centroids"]) ** 2).sum(-1), 0.0))
    f = np.maximum(0.0, d.mean(-1, keepdims=True) - d)
    r, c = -(-rows // 2), -(-cols // 2)
    quads = [f[:, :r, :c], f[:, r:, :c], f[:, :r, c:], f[:, r:, c:]]
    return np.concatenate([q.sum((1, 2)) for q in quads], axis=-1)


def test_a_workdir_of_an_earlier_jaxnoise_is_refused_in_one_line(tmp_path):
    """A config.json of the flat config of before the per-method blocks (and before
    data.kmeans_eps): its checkpoints cannot be resumed by this version; one line says so."""
    from jaxnoise import workdir as workdir_lib

    new = runkit.fingerprint(tiny_config())
    old = {k: v for k, v in new.items() if k not in ("bootstrap", "dividemix")}
    old.update(new["bootstrap"])  # the flat fields of before
    del old["data"]["kmeans_eps"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    with pytest.raises(workdir_lib.WorkdirConflict, match="earlier jaxnoise .* --fresh") as e:
        workdir_lib.check_workdir_config(str(tmp_path), new, fresh=False)
    assert "\n" not in str(e.value)
