"""Report tests: figures, the label-issue CSV on a hand-made workdir with known answers, unknown
noise, the CLI, and the notebook executed top to bottom on a tiny real run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxnoise import mixture, plots, report
from tests._tiny import copy_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "mixture_fits.ipynb")

N = 200
CLASSES = ["cat", "dog", "eel"]
NOISY = [5, 17, 42, 120, 130]
# index: (p_noisy, loss, given label, predicted label); every other sample has p_noisy = 0.1.
SUSPECTS = {
    5: (0.9, 2.0, 0, 1),
    17: (0.9, 3.0, 2, 0),
    42: (0.7, 5.0, 1, 2),
    60: (0.7, 5.0, 1, 1),  # ties 42 in p and loss: the smaller index first
    99: (0.51, 1.0, 0, 2),
    150: (0.5, 9.0, 2, 2),  # exactly at the threshold: not listed
}
ORDER_05 = [17, 5, 42, 60, 99]  # p desc, then loss desc, then index
COLUMNS = [
    "index",
    "given_label",
    "given_class",
    "predicted_label",
    "predicted_class",
    "p_noisy",
    "loss",
]


def make_workdir(path, *, known: bool = True, paths: bool = False) -> str:
    """A synthetic finished run: two loss populations, crafted posteriors, 4 epochs of metrics."""
    rng = np.random.default_rng(0)
    os.makedirs(path, exist_ok=True)
    mask = np.zeros(N, bool)
    mask[NOISY] = True
    mask[::4] = known  # more noisy samples so the loss histogram has two modes
    mask[[60, 99, 150]] = False
    loss = np.where(mask, rng.gamma(9.0, 0.4, N), rng.gamma(1.5, 0.15, N)).astype(np.float32)
    p = np.full(N, 0.1, np.float32)
    given = rng.integers(0, 3, N).astype(np.int32)
    pred = rng.integers(0, 3, N).astype(np.int32)
    for i, (pi, li, gi, qi) in SUSPECTS.items():
        p[i], loss[i], given[i], pred[i] = pi, li, gi, qi
    if not known:
        mask[:] = False
    np.savez(
        os.path.join(path, "per_sample.npz"),
        loss=loss,
        p_noisy=p,
        prediction=pred,
        noisy_label=given,
        true_label=given,
        noise_mask=mask,
        logits=rng.normal(size=(N, 3)).astype(np.float32),
    )
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(
            {
                "method": "M-DYR-H",
                "noise_model": "bmm",
                "noisy_component": "initial",
                "em_iters": 10,
                "posterior_lookup": True,
                "noise_kind": "symmetric" if known else "none",
                "data": {"name": "toy"},
            },
            f,
        )
    with open(os.path.join(path, "dataset.json"), "w") as f:
        json.dump(
            {
                "name": "toy",
                "class_names": CLASSES,
                "num_train": N,
                "noise_known": known,
                "train_paths": [f"/data/train/img_{i:03d}.png" for i in range(N)]
                if paths
                else None,
            },
            f,
        )
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for epoch, acc in ((1, 40.0), (2, 60.0), (3, 55.0), (3, 70.0), (4, 80.0)):
            r = {
                "epoch": epoch,
                "phase": "mixup",
                "test_acc": acc,
                "best_acc": max(acc, 60.0),
                "auroc": 0.5 + 0.1 * epoch if known else float("nan"),
                "auroc_loss": 0.5 + 0.1 * epoch if known else float("nan"),
                "flagged_fraction": 0.1 * epoch,
                "loss_quantiles_clean": [0.1, 0.2, 0.3],
                "loss_quantiles_noisy": [2.0, 3.0, 4.0],
            }
            f.write(json.dumps(r) + "\n")
    return str(path)


def read_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


@pytest.fixture(scope="module")
def known_report(tmp_path_factory):
    """write_report on the synthetic workdir with known noise."""
    wd = make_workdir(tmp_path_factory.mktemp("known"))
    return wd, report.write_report(wd, threshold=0.5)


def test_figures_exist_and_are_nontrivial(known_report):
    """Four PNGs of the expected pixel size (dpi 120), each more than a few KB."""
    from PIL import Image

    wd, out = known_report
    expected = {
        "loss_histogram": (768, 504),
        "loss_quantiles": (768, 504),
        "accuracy_auroc": (1200, 504),
        "posterior_vs_loss": (768, 504),
    }
    assert set(out["figures"]) == set(expected)
    for name, size in expected.items():
        path = out["figures"][name]
        assert path == os.path.join(wd, "figures", f"{name}.png")
        assert os.path.getsize(path) > 8000, name
        with Image.open(path) as im:
            assert im.size == size, name
            assert len(np.unique(np.asarray(im.convert("L")))) > 20, name  # not blank


def test_label_issue_csv_ranking_and_columns(known_report):
    """Rows p > 0.5 only, ranked by p desc, loss desc, index; classes mapped; values kept."""
    wd, out = known_report
    cols, rows = read_csv(os.path.join(wd, "label_issues.csv"))
    assert cols == COLUMNS
    assert [int(r["index"]) for r in rows] == ORDER_05
    for r in rows:
        p, loss, given, pred = SUSPECTS[int(r["index"])]
        assert int(r["given_label"]) == given and r["given_class"] == CLASSES[given]
        assert int(r["predicted_label"]) == pred and r["predicted_class"] == CLASSES[pred]
        assert float(r["p_noisy"]) == pytest.approx(p, rel=1e-6)
        assert float(r["loss"]) == pytest.approx(loss, rel=1e-6)


def test_precision_recall_known_noise(known_report):
    """3 of the 5 listed are noisy; 3 of the 5 + every 4th sample noisy are found."""
    wd, out = known_report
    n_noisy = len(set(NOISY) | set(range(0, N, 4)) - {60, 99, 150})
    with open(os.path.join(wd, "label_issues_summary.json")) as f:
        summary = json.load(f)
    for s in (out, summary):
        assert s["num_flagged"] == 5 and s["noise_known"] is True
        assert s["precision"] == pytest.approx(3 / 5)
        assert s["recall"] == pytest.approx(3 / n_noisy)
        assert s["num_noisy"] == n_noisy


def test_load_workdir_keeps_last_line_of_a_repeated_epoch(known_report):
    """A resumed epoch's second metrics line replaces the first."""
    run = report.load_workdir(known_report[0])
    assert [r["epoch"] for r in run["records"]] == [1, 2, 3, 4]
    assert run["records"][2]["test_acc"] == 70.0


def test_unknown_noise_with_paths(tmp_path):
    """Image-folder run with labels taken as given: path column, no precision/recall."""
    wd = make_workdir(tmp_path, known=False, paths=True)
    out = report.write_report(wd, threshold=0.5)
    assert "precision" not in out and "recall" not in out
    with open(os.path.join(wd, "label_issues_summary.json")) as f:
        summary = json.load(f)
    assert summary["noise_known"] is False and "precision" not in summary
    cols, rows = read_csv(out["label_issues_csv"])
    assert cols == ["index", "path", *COLUMNS[1:]]
    assert [int(r["index"]) for r in rows] == ORDER_05
    assert all(r["path"] == f"/data/train/img_{int(r['index']):03d}.png" for r in rows)
    assert set(out["figures"]) == {"loss_histogram", "accuracy_auroc", "posterior_vs_loss"}
    assert all(os.path.getsize(p) > 8000 for p in out["figures"].values())


def _expected_auto(wd, per_class=False):
    """The auto cut written from the definitions (numpy, not the code under test): the samples
    by p(noisy) desc, loss desc, index; the first round(sum p(noisy)) of them (per class: of
    each given label's samples, round of that class's sum)."""
    with np.load(os.path.join(wd, "per_sample.npz")) as d:
        p, loss, labels = d["p_noisy"], d["loss"], d["noisy_label"]
    order = np.lexsort((np.arange(p.size), -loss.astype(np.float64), -p.astype(np.float64)))
    if not per_class:
        return order[: int(np.rint(p.astype(np.float64).sum()))].tolist()
    keep = []
    for c in np.unique(labels):
        mine = order[labels[order] == c]
        keep += mine[: int(np.rint(p[labels == c].astype(np.float64).sum()))].tolist()
    return [i for i in order.tolist() if i in set(keep)]


def test_default_cut_is_the_noise_models_estimate(tmp_path, capsys):
    """Without --threshold or --count the list holds round(sum p(noisy)) samples (24 here: 194
    at 0.1 and the six suspects), the most suspect first; the summary names the cut and the
    estimate; the line says how the list was cut."""
    wd = make_workdir(tmp_path)
    assert report.main([wd]) == 0
    out = capsys.readouterr().out
    _, rows = read_csv(os.path.join(wd, "label_issues.csv"))
    assert [int(r["index"]) for r in rows] == _expected_auto(wd)
    assert len(rows) == 24 and [int(r["index"]) for r in rows[:6]] == [*ORDER_05, 150]
    with open(os.path.join(wd, "label_issues_summary.json")) as f:
        summary = json.load(f)
    assert summary["cut"] == "auto" and summary["est_wrong"] == 24 and not summary["per_class"]
    assert "(24 of 200 samples: as many as the noise model estimates wrong)" in out, out


def test_default_cut_per_class_when_the_run_fits_per_class(tmp_path):
    """A run with bootstrap.mixture_scope = "class" is cut per given label."""
    wd = make_workdir(tmp_path)
    with open(os.path.join(wd, "config.json")) as f:
        config = json.load(f)
    config["bootstrap"] = {"mixture_scope": "class"}
    with open(os.path.join(wd, "config.json"), "w") as f:
        json.dump(config, f)
    out = report.write_report(wd)
    _, rows = read_csv(out["label_issues_csv"])
    expected = _expected_auto(wd, per_class=True)
    assert [int(r["index"]) for r in rows] == expected and out["per_class"]
    assert expected != _expected_auto(wd)[: len(expected)]  # the per-class cut differs here


def test_count_cut(tmp_path, capsys):
    """--count 3 lists the 3 most suspect; beside the run's own report in report-count-3."""
    wd = make_workdir(tmp_path)
    report.write_report(wd)  # the run's own report
    assert report.main([wd, "--count", "3"]) == 0
    _, rows = read_csv(os.path.join(wd, "report-count-3", "label_issues.csv"))
    assert [int(r["index"]) for r in rows] == ORDER_05[:3]
    with pytest.raises(SystemExit):
        report.main([wd, "--count", "3", "--threshold", "0.5"])
    assert "not allowed with" in capsys.readouterr().err


def test_cli_threshold(tmp_path):
    """`python -m jaxnoise.report WORKDIR --threshold 0.6` lists p > 0.6 and prints P/R."""
    wd = make_workdir(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "jaxnoise.report", wd, "--threshold", "0.6"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    assert "4 of 200 samples with p(noisy) > 0.6" in r.stdout
    assert "precision 0.7500" in r.stdout
    _, rows = read_csv(os.path.join(wd, "label_issues.csv"))
    assert [int(x["index"]) for x in rows] == [17, 5, 42, 60]


def test_cli_errors(tmp_path, capsys):
    """A workdir without a run, and a bad threshold, are refused with a clear message."""
    with pytest.raises(SystemExit) as e:
        report.main([str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "lacks" in err and "per_sample.npz" in err and "main.py" in err
    with pytest.raises(SystemExit):
        report.main([str(tmp_path), "--threshold", "1.5"])
    assert "--threshold" in capsys.readouterr().err
    with pytest.raises(report.WorkdirError, match="not a directory"):
        report.load_workdir(str(tmp_path / "nope"))


def test_mixture_density_integrates_to_one_on_the_raw_axis():
    """The Jacobian: densities mapped to raw losses integrate to 1 over the fitted range."""
    bmm = {"alphas": [2.0, 6.0], "betas": [7.0, 2.5], "weights": [0.6, 0.4], "lo": 0.3, "hi": 4.3}
    x = np.linspace(0.3, 4.3, 20001)
    total, comps = plots.mixture_density(bmm, x)
    assert np.trapezoid(total, x) == pytest.approx(1.0, abs=1e-3)
    assert np.trapezoid(comps[1], x) == pytest.approx(0.4, abs=1e-3)
    gmm = {
        "means": [0.2, 0.7],
        "variances": [0.01, 0.02],
        "weights": [0.5, 0.5],
        "lo": 1.0,
        "hi": 3.0,
    }
    x = np.linspace(-2.0, 6.0, 40001)
    assert np.trapezoid(plots.mixture_density(gmm, x)[0], x) == pytest.approx(1.0, abs=1e-3)


def test_log_likelihood_against_scipy(known_report):
    """Mean log-likelihood of the fitted observations, against scipy's beta/normal pdfs."""
    from scipy import stats

    loss = np.load(os.path.join(known_report[0], "per_sample.npz"))["loss"]
    states = report.refit_mixtures(loss, {"em_iters": 10, "noisy_component": "initial"})
    b, g = (mixture.summary(states[k]) for k in ("bmm", "gmm"))
    lo, hi = b["lo"], b["hi"]
    keep = (loss >= np.percentile(loss, 5)) & (loss <= np.percentile(loss, 95))
    # The EM observations of jaxnoise.mixture: out-of-range values at 1e-3 from the ends, then
    # everything bounded to [1e-4, 1 - 1e-4].
    x = (loss[keep].astype(np.float64) - lo) / (hi - lo + 1e-6)
    x = np.clip(np.where(x >= 1, 1 - 1e-3, np.where(x <= 0, 1e-3, x)), 1e-4, 1 - 1e-4)
    pdf_b = [w * stats.beta.pdf(x, a, c) for w, a, c in zip(b["weights"], b["alphas"], b["betas"])]
    pdf_g = [
        w * stats.norm.pdf(x, m, np.sqrt(v))
        for w, m, v in zip(g["weights"], g["means"], g["variances"])
    ]
    ref_b, ref_g = np.log(sum(pdf_b)).mean(), np.log(sum(pdf_g)).mean()
    assert report.mixture_log_likelihood(states["bmm"], loss) == pytest.approx(ref_b, rel=1e-4)
    assert report.mixture_log_likelihood(states["gmm"], loss) == pytest.approx(ref_g, rel=1e-4)


def test_degenerate_inputs(tmp_path):
    """Equal losses (no valid mixture) and non-finite values still give figures."""
    flat = np.full(50, 0.7)
    assert os.path.exists(plots.loss_histogram(str(tmp_path / "a.png"), flat))
    bad = np.r_[np.linspace(0, 3, 49), np.inf]
    mask = np.arange(50) % 2 == 0
    assert os.path.exists(plots.loss_histogram(str(tmp_path / "b.png"), bad, noise_mask=mask))


def test_plots_leave_no_pyplot_figures(tmp_path):
    """Figures are built without pyplot's global figure registry."""
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plots.posterior_vs_loss(str(tmp_path / "p.png"), np.arange(20.0), np.linspace(0, 1, 20))
    plots.loss_histogram(str(tmp_path / "h.png"), np.arange(20.0))
    assert plt.get_fignums() == before


# ------------------------------------------------------------------------------------------------
# The session's tiny real run (tests/conftest.py bootstrap_run): the refit reproduces the run's
# last fit, and the notebook runs on it. Tests that write into a workdir work on a copy.


@pytest.fixture
def tiny_run(bootstrap_run, tmp_path):
    """A copy of the shared tiny run's workdir."""
    return str(copy_run(bootstrap_run[1], tmp_path / "run"))


def test_refit_reproduces_the_runs_last_fit(bootstrap_run):
    """Refitting the saved losses gives the BMM logged for the last epoch, and its posteriors."""
    run = report.load_workdir(str(bootstrap_run[1]))
    st = report.refit_mixtures(run["per_sample"]["loss"], run["config"])["bmm"]
    refit, logged = mixture.summary(st), run["records"][-1]["mixture"]
    for k in ("lo", "hi", "alphas", "betas", "weights", "noisy_component"):
        np.testing.assert_allclose(refit[k], logged[k], rtol=1e-6, err_msg=k)
    p = np.asarray(mixture.posterior_noisy(st, run["per_sample"]["loss"], lookup=True))
    np.testing.assert_array_equal(p, run["per_sample"]["p_noisy"])


def snapshot(workdir) -> dict[str, bytes]:
    """Every file of a workdir and its bytes."""
    out = {}
    for d, _, files in os.walk(workdir):
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                out[os.path.relpath(os.path.join(d, f), workdir)] = fh.read()
    return out


def assert_run_files_unchanged(before: dict[str, bytes], workdir) -> None:
    """Every file the run had is still there, byte for byte (new files may sit beside them)."""
    after = snapshot(workdir)
    changed = sorted(k for k, v in before.items() if after.get(k) != v)
    assert not changed, f"the run's files were changed: {changed}"


def test_cli_threshold_writes_beside_the_runs_files(tiny_run, capsys):
    """`report WORKDIR --threshold 0.6` on a finished run writes WORKDIR/report-threshold-0.6/
    and leaves the run's own report (label_issues.csv, figures/) byte-identical."""
    before = snapshot(tiny_run)
    assert "label_issues.csv" in before and "figures/loss_histogram.png" in before
    assert report.main([tiny_run, "--threshold", "0.6"]) == 0
    assert_run_files_unchanged(before, tiny_run)
    out_dir = os.path.join(tiny_run, "report-threshold-0.6")
    assert out_dir in capsys.readouterr().out
    _, rows = read_csv(os.path.join(out_dir, "label_issues.csv"))
    p = np.load(os.path.join(tiny_run, "per_sample.npz"))["p_noisy"]
    assert len(rows) == int((p > 0.6).sum())
    assert os.path.exists(os.path.join(out_dir, "figures", "loss_histogram.png"))


def test_workdir_files_share_one_permission_mode(bootstrap_run):
    """config.json, metrics.jsonl, per_sample.npz (written atomically), the report and orbax's
    checkpoint files all get the same mode (no 0600 files beside 0644 ones)."""
    modes = {}
    for d, _, files in os.walk(bootstrap_run[1]):
        for f in files:
            modes.setdefault(oct(os.stat(os.path.join(d, f)).st_mode & 0o777), []).append(f)
    assert len(modes) == 1, {m: fs[:3] for m, fs in modes.items()}


@pytest.mark.slow
def test_notebook_executes(tiny_run, monkeypatch):
    """notebooks/mixture_fits.ipynb runs top to bottom on the tiny run (JAXNOISE_WORKDIR),
    writing into WORKDIR/notebook/ and leaving the run's own files byte-identical."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "outputs stored"
    monkeypatch.setenv("JAXNOISE_WORKDIR", tiny_run)
    before = snapshot(tiny_run)
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": os.path.dirname(NOTEBOOK)}},
    )
    client.execute()
    images = sum(
        "image/png" in o.get("data", {})
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    assert images >= 5
    assert_run_files_unchanged(before, tiny_run)
    assert os.path.exists(os.path.join(tiny_run, "notebook", "label_issues.csv"))
    assert os.path.exists(os.path.join(tiny_run, "notebook", "figures", "loss_histogram.png"))
