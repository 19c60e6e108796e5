"""benchmarks/reproduce.py and diagnose_reproduce.py: configs, summaries, the scipy cross-check.

No training here: the cells' configs must validate and keep the published schedule's order,
and the diagnosis must catch a logged constant lookup that scipy says is not constant.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from benchmarks import diagnose_reproduce, reproduce
from jaxnoise import config as config_lib
from jaxnoise.bootstrap import schedule as bootstrap_schedule
from tests._signal_run import set_fields


@pytest.mark.parametrize("protocol", ["reduced", "paper"])
@pytest.mark.parametrize("cell", list(reproduce.CELLS))
def test_every_cell_config_validates(cell, protocol, tmp_path):
    c = reproduce.make_config(protocol, cell, str(tmp_path))
    config_lib.validate(c)
    method, noise, over = reproduce.CELLS[cell]
    assert c.method == method and c.noise == noise
    for k, v in over.items():  # dotted: "bootstrap.noise_model"
        assert set_fields(c.copy_and_resolve_references(), **{k: v}) == c


def test_reduced_schedule_is_the_published_one_divided():
    d = reproduce.REDUCED["schedule_divisor"]
    for cell in ("M@0.8", "M-DYR-H@0.8", "CE@0.8", "MD-DYR-SH@0.9"):
        paper = reproduce.make_config("paper", cell, None)
        red = reproduce.make_config("reduced", cell, "/nonexistent")
        assert red.epochs == round(paper.epochs / d)
        assert red.lr_milestones == tuple(round(m / d) for m in paper.lr_milestones)
        assert all(m < red.epochs for m in red.lr_milestones)
        # Bootstrapping follows the (scaled) first milestone, as the original's milestones[0] + 6.
        assert bootstrap_schedule.bootstrap_start_epoch(red) == red.lr_milestones[0] + 6
        assert red.method == "CE" or bootstrap_schedule.bootstrap_start_epoch(red) == 16
        assert red.width == reproduce.REDUCED["width"]
        assert red.data.subset_per_class == reproduce.REDUCED["subset_per_class"]
    md = reproduce.make_config("reduced", "MD-DYR-SH@0.9", "/nonexistent")
    assert md.bootstrap.dynamic_start_epoch < md.bootstrap.soft_to_hard_start_epoch <= md.epochs


def test_unknown_protocol_raises():
    with pytest.raises(ValueError, match="unknown protocol"):
        reproduce.make_config("tiny", "CE@0.8", None)


def _record(epoch, acc, auroc=0.7, auroc_loss=0.72, flagged=0.4, mixture=None):
    return dict(
        epoch=epoch,
        phase="mixup",
        test_acc=acc,
        auroc=auroc,
        auroc_loss=auroc_loss,
        flagged_fraction=flagged,
        mixture=mixture,
    )


def test_summarize_reads_warmup_best_and_last():
    c = reproduce.make_config("reduced", "M-DYR-H@0.8", "/nonexistent")  # bootstrap from 16
    history = [_record(e, acc=float(e), auroc=e / 100) for e in range(1, 31)]
    history[19]["test_acc"] = 99.0
    s = reproduce.summarize("M-DYR-H@0.8", c, history, 12.5)
    assert s["best_acc"] == 99.0 and s["last_acc"] == 30.0
    assert s["auroc_warmup"] == pytest.approx(0.15)  # epoch 15: the fit bootstrapping starts from
    assert s["auroc_final"] == pytest.approx(0.30)
    assert (s["method"], s["noise"], s["mixture"], s["mixup_draw"]) == (
        "M-DYR-H",
        0.8,
        "bmm",
        "none",
    )
    assert s["epochs_done"] == 30 and s["minutes"] == 12.5


# A logged fit whose float64 lookup peaks at the top of the grid (not constant).
_FIT = {
    "valid": True,
    "noisy_component": 1,
    "weights": [0.5646, 0.4354],
    "lo": 1.96,
    "hi": 2.75,
    "alphas": [9.3969, 1.0467],
    "betas": [13.1223, 1.1687],
}


def test_lookup_from_params_matches_scipy_by_hand():
    t = diagnose_reproduce.lookup_from_params(_FIT)
    x = np.linspace(1e-12, 1 - 1e-12, 100)
    d = [
        _FIT["weights"][k] * stats.beta.pdf(x, _FIT["alphas"][k], _FIT["betas"][k])
        for k in range(2)
    ]
    p = d[1] / (d[0] + d[1] + 1e-12)
    i = int(np.argmax(p))
    assert i > 50
    np.testing.assert_allclose(t[:i], p[:i])
    np.testing.assert_allclose(t[i:], p[i])
    g = {
        "valid": True,
        "noisy_component": 1,
        "weights": [0.6, 0.4],
        "lo": 0.0,
        "hi": 1.0,
        "means": [0.3, 0.7],
        "variances": [0.01, 0.02],
    }
    tg = diagnose_reproduce.lookup_from_params(g)
    dn = [
        g["weights"][k] * stats.norm.pdf(x, g["means"][k], math.sqrt(g["variances"][k]))
        for k in range(2)
    ]
    pg = dn[1] / (dn[0] + dn[1] + 1e-12)
    j = int(np.argmax(pg))
    np.testing.assert_allclose(tg[:j], pg[:j])


def test_diagnosis_flags_a_logged_constant_table_that_scipy_says_is_not():
    bad = _record(10, 20.0, auroc=0.5, flagged=1.0, mixture=_FIT)
    good = _record(11, 21.0, auroc=0.61, flagged=0.45, mixture=_FIT)
    rows, fails = diagnose_reproduce.diagnose([bad, good])
    assert len(rows) == 2
    assert len(fails) == 1 and fails[0].startswith("epoch 10")
    _, fails = diagnose_reproduce.diagnose([good])
    assert fails == []


def test_run_cell_keeps_the_minutes_of_a_stopped_run(tmp_path, monkeypatch):
    """A run stopped by a signal (KeyboardInterrupt here) still adds its time to minutes.json,
    and a resumed run adds to it instead of starting again from zero."""
    import json

    from jaxnoise import loops

    ticks = iter([100.0, 160.0, 1000.0, 1030.0])  # start/stop of two runs: 1 min, then 0.5 min
    monkeypatch.setattr(reproduce.time, "time", lambda: next(ticks))

    def stopped(config, workdir):
        raise KeyboardInterrupt

    monkeypatch.setattr(loops, "train_and_evaluate", stopped)
    with pytest.raises(KeyboardInterrupt):
        reproduce.run_cell("reduced", "CE@0.8", str(tmp_path), str(tmp_path))
    timing = tmp_path / "reduced" / "CE_0.8" / "minutes.json"
    assert json.loads(timing.read_text())["minutes"] == pytest.approx(1.0)

    monkeypatch.setattr(loops, "train_and_evaluate", lambda config, workdir: {"history": []})
    monkeypatch.setattr(reproduce, "summarize", lambda cell, c, history, minutes: minutes)
    assert reproduce.run_cell("reduced", "CE@0.8", str(tmp_path), str(tmp_path)) == 1.5
    assert json.loads(timing.read_text())["minutes"] == pytest.approx(1.5)
