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

from jaxnoise import mixture, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # main.py, configs/ and benchmarks/ as the user runs them

import main  # noqa: E402
from tests import _signal_run  # noqa: E402


def tiny_config(**overrides):
    """The quickstart shrunk (width-8 CNN on digits, 3 epochs), with `overrides` set."""
    c = _signal_run.get_config()
    for k, v in overrides.items():
        setattr(c, k, v)
    return c


def fitted_losses(n: int = 400, seed: int = 0) -> dict:
    """Two loss populations, the BMM fitted to them and its posteriors (as track_and_fit)."""
    rng = np.random.default_rng(seed)
    loss = np.concatenate([rng.gamma(2.0, 0.2, n - n // 3), rng.gamma(9.0, 0.4, n // 3)])
    loss = jnp.asarray(loss.astype(np.float32))
    state = mixture.fit_bmm(loss)
    p = mixture.posterior_noisy(state, loss)
    return {"track_loss": loss, "fit_loss": loss, "p_noisy": p, "p_exact": p, "logits": None,
            "mixture": state}  # fmt: skip


def fake_run(tmp_path, config, mask: np.ndarray) -> types.SimpleNamespace:
    """What `train.record` / `dividemix_loop.record` read of a run."""
    return types.SimpleNamespace(
        config=config, mask=jnp.asarray(mask), noise_mask=mask, history=[], best_acc=0.0,
        metrics_path=str(tmp_path / "metrics.jsonl"), workdir=str(tmp_path), saved_at=None,
        guard=types.SimpleNamespace(signal_name=None, signum=None),
    )  # fmt: skip


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
    train.record(run, 1, 1.0, fitted, {"test_acc": 50.0, "test_loss": 1.0}, SECONDS, 400)
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
    train.record(run, 1, 1.0, fitted, {"test_acc": 50.0, "test_loss": 1.0}, SECONDS, 400)
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
    train.record(run, 1, 1.0, fitted, {"test_acc": 50.0, "test_loss": 1.0}, SECONDS, 400)
    summary = train.finish(run, None, False)
    est = float(np.mean(np.asarray(fitted["p_noisy"], np.float64)))
    assert summary["noise_known"] is False
    assert summary["est_noisy"] == pytest.approx(est, rel=1e-5)
    line = main.done_line(config, summary, "W", train.labels_summary(config))
    assert line.startswith("done: M-DYR-H labels as given ")
    assert f"est. noisy {est:.1%}" in line and "AUROC" not in line, line


def dividemix_divisions(n: int = 400, seed: int = 1) -> dict:
    """Two networks' divisions: p_clean, the labelled set (p_clean > 0.5), loss, logits."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in ("net1", "net2"):
        pc = rng.uniform(0.0, 1.0, n).astype(np.float32)
        out[name] = {"p_clean": jnp.asarray(pc), "labelled": jnp.asarray(pc > 0.5),
                     "loss": jnp.asarray(rng.gamma(2.0, 0.5, n).astype(np.float32)),
                     "logits": jnp.zeros((n, 10))}  # fmt: skip
    return out


def test_dividemix_epoch_line_without_known_noise(tmp_path, capsys):
    """DivideMix's line: 'est. noisy X%' (X = 1 - mean of the two p_clean, numpy) instead of
    'division AUROC nan'; in warm-up (no division yet) neither."""
    from configs import quickstart_dividemix
    from jaxnoise import dividemix_loop

    config = quickstart_dividemix.get_config()
    config.noise_kind, config.noise = "none", 0.0
    run = fake_run(tmp_path, config, np.zeros(400, bool))
    divisions = dividemix_divisions()
    trained = {name: {"loss": 1.0, "Lx": 1.0, "Lu": 0.0, "steps": 3, "labelled": 200}
               for name in ("net1", "net2")}  # fmt: skip
    test = {"test_acc": 50.0, "test_loss": 1.0}
    division = dividemix_loop.division_metrics(run, divisions)
    dividemix_loop.record(run, 12, "semi", trained, division, test, SECONDS)
    line = epoch_line(capsys)
    pc = [np.asarray(d["p_clean"], np.float64) for d in divisions.values()]
    est = float(np.mean(1.0 - (pc[0] + pc[1]) / 2))
    assert f"est. noisy {est:.1%}" in line and "AUROC" not in line, line
    warm = dividemix_loop.division_metrics(run, None)
    dividemix_loop.record(run, 0, "warmup", trained, warm, test, SECONDS)
    line = epoch_line(capsys)
    assert "AUROC" not in line and "est. noisy" not in line and "nan" not in line, line


# ------------------------------------------------------------------------------------------------
# 2. Human labels are described as human labels, not as 'noise human r=0.0 ... flipped'.


def test_human_labels_log_line_and_done_line(tmp_path, capsys):
    """The data line names the label file and key and says how many labels differ from the
    dataset's (numpy); the done line says 'human labels', not 'noise=0.0'."""
    from jaxnoise import data as data_lib
    from jaxnoise import parallel

    labels = data_lib.load_digits().train_labels
    human = labels.copy()
    human[::3] = (human[::3] + 1) % 10
    path = str(tmp_path / "human.npz")
    np.savez(path, worse_label=human, aggre_label=labels)
    config = tiny_config(noise_kind="human", noise=0.0, label_file=path, label_key="worse_label")
    config.method = "CE"
    train.load_noisy_data(config, parallel.make_mesh(1))
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "] data: " in x]
    differ = np.mean(human != labels)
    assert (f"labels: human (label file {path} / key worse_label): {differ:.1%} differ from the "
            "dataset's labels") in line, line  # fmt: skip
    assert "flipped" not in line and "r=0.0" not in line, line
    summary = {"best_acc": 50.0, "last_acc": 40.0, "auroc": 0.7, "noise_known": True}
    done = main.done_line(config, summary, "W", train.labels_summary(config))
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
    np.savez(os.path.join(path, "per_sample.npz"), loss=loss, p_noisy=p, prediction=labels,
             noisy_label=labels, true_label=labels, noise_mask=noisy & mask_any,
             logits=np.zeros((n, 3), np.float32))  # fmt: skip
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"method": "M-DYR-H", "noise_model": "bmm", "em_iters": 10,
                   "noise_kind": "symmetric", "data": {"name": "toy"}}, f)  # fmt: skip
    with open(os.path.join(path, "dataset.json"), "w") as f:
        json.dump({"name": "toy", "class_names": ["a", "b", "c"], "num_train": n,
                   "noise_known": noise_known_in_json, "train_paths": None}, f)  # fmt: skip
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for epoch in (1, 2):
            f.write(json.dumps({"epoch": epoch, "test_acc": 50.0, "best_acc": 50.0,
                                "auroc": 0.8 if mask_any else float("nan"),
                                "flagged_fraction": 0.3, "est_noisy": 0.3}) + "\n")  # fmt: skip
    return str(path), p


def test_report_threshold_that_flags_nothing_says_so(tmp_path):
    """--threshold 0.9 above every p(noisy): one line with the largest p(noisy) and the
    estimated number of wrong labels (the sum of p(noisy), numpy)."""
    wd, p = report_workdir(tmp_path / "w", noise_known_in_json=True, mask_any=True)
    r = subprocess.run([sys.executable, "-m", "jaxnoise.report", wd, "--threshold", "0.9"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "(0 of 300 samples with p(noisy) > 0.9)" in r.stdout
    (line,) = [x for x in r.stdout.splitlines() if x.startswith("no sample has")]
    assert f"no sample has p(noisy) > 0.9 (the largest is {p.max():.3f})" in line, line
    assert f"estimates {p.astype(np.float64).sum():.0f} of 300 labels wrong" in line, line


def test_report_without_a_noisy_label_has_no_precision_and_one_histogram(tmp_path, monkeypatch):
    """A run whose mask marks nothing (e.g. noise=0, or human labels equal to the dataset's)
    is reported as unknown noise: no precision/recall, and one histogram of all losses with the
    fitted mixtures, not a stacked clean / empty 'noisy (0)' one."""
    from matplotlib.axes import Axes

    from jaxnoise import report

    hists = []
    real_hist = Axes.hist
    monkeypatch.setattr(Axes, "hist", lambda self, *a, **k: hists.append(k.get("label"))
                        or real_hist(self, *a, **k))  # fmt: skip
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
