"""The installed command: ``jaxnoise VERB`` (``python -m jaxnoise.cli``), the presets by name,
the configs in the package (``configs/`` a link to them in a clone), the console script in the
wheel, Ctrl-C while the command starts."""

from __future__ import annotations

import ast
import csv
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from jaxnoise import configs
from jaxnoise.cli import train as train_cli
from tests import _tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = os.path.join(ROOT, "jaxnoise", "configs")


def cli(*args: str, cwd: str = ROOT, timeout: int = 300):
    """``python -m jaxnoise.cli ARGS`` (the console script's entry point), output captured."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    return subprocess.run(
        [sys.executable, "-m", "jaxnoise.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def one_line_refusal(r, *texts: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, (r.returncode, r.stderr[-3000:])
    assert lines[0].startswith("error: ") and "Traceback" not in r.stderr, lines[0]
    for t in texts:
        assert t in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------------------
# The presets in the package.


def test_configs_is_a_link_to_the_packages_presets():
    """``configs/`` of a clone is the package's folder (a git symlink), so both imports give the
    same configs."""
    link = os.path.join(ROOT, "configs")
    assert os.path.islink(link) and os.path.realpath(link) == os.path.realpath(PRESETS)
    from configs import quickstart as by_link
    from jaxnoise.configs import quickstart as by_package

    assert by_link.get_config().to_json() == by_package.get_config().to_json()


def test_presets_by_name_are_the_files_of_the_package():
    """names(): every .py of jaxnoise/configs (not __init__); get(NAME) and get(NAME:ARG) are
    the module's get_config() and get_config(ARG); summary(): its docstring's first line."""
    files = sorted(f[:-3] for f in os.listdir(PRESETS) if f.endswith(".py") and f != "__init__.py")
    assert configs.names() == files and {"quickstart", "default", "cifar10n_ce"} <= set(files)
    from jaxnoise.configs import cifar10n_ce, quickstart

    assert configs.get("quickstart").to_json() == quickstart.get_config().to_json()
    assert configs.get("cifar10n_ce:aggre").to_json() == cifar10n_ce.get_config("aggre").to_json()
    assert configs.get("cifar10n_ce:aggre").label_key == "aggre_label"
    with open(os.path.join(PRESETS, "quickstart.py")) as f:
        doc = ast.get_docstring(ast.parse(f.read()))
    assert configs.summary("quickstart") == doc.splitlines()[0]
    with pytest.raises(ValueError, match="no preset config 'nope'"):
        configs.get("nope")


def test_config_takes_a_preset_name_a_name_with_an_argument_or_a_file(tmp_path, monkeypatch):
    """--config NAME / NAME:ARG / --config=NAME resolve to the package's file (the argument
    kept); a file wins over a preset of the same name; neither: None."""
    monkeypatch.chdir(tmp_path)
    quick = os.path.join(PRESETS, "quickstart.py")
    assert train_cli.resolve_config("quickstart") == quick
    assert train_cli.resolve_config("quickstart.py") == quick
    assert train_cli.resolve_config("cifar10n_ce:aggre") == (
        os.path.join(PRESETS, "cifar10n_ce.py") + ":aggre"
    )
    assert train_cli.resolve_config("nope") is None
    assert train_cli.resolve_config("sub/quickstart") is None  # a path, not a name
    (tmp_path / "quickstart").write_text("")
    assert train_cli.resolve_config("quickstart") == "quickstart"  # the file beside
    argv, path = train_cli._config_argv(["prog", "--config=cifar10n_ce:worse", "--fresh"])
    assert argv == ["prog", f"--config={PRESETS}/cifar10n_ce.py:worse", "--fresh"]
    assert train_cli._load_config(path).label_key == "worse_label"


def test_a_preset_name_on_the_command_line(tmp_path):
    """``train --config quickstart`` loads the preset (its fields are checked: a misspelt one is
    refused with the suggestion); an unknown name is one line naming the presets."""
    wd = tmp_path / "wd"
    r = cli("train", "--config", "quickstart", "--config.nosie=0.5", "--workdir", str(wd))
    one_line_refusal(r, "--config.nosie", 'did you mean "noise"', "jaxnoise train --help")
    r = cli("train", "--config", "cifar10n_ce:aggre", "--config.noise=1.5", "--workdir", str(wd))
    one_line_refusal(r, "config.noise = 1.5")
    r = cli("train", "--config", "quickstrat", "--workdir", str(wd))
    one_line_refusal(
        r, "--config quickstrat: no such file, and no preset of that name", "quickstart"
    )
    r = cli("train", "--workdir", str(wd))
    one_line_refusal(r, "--config CONFIG is required, e.g. jaxnoise train --config quickstart")
    assert not wd.exists()


# ------------------------------------------------------------------------------------------------
# --help of the command and of each verb.


def test_help_lists_the_verbs():
    for args in (["--help"], ["-h"]):
        r = cli(*args)
        assert r.returncode == 0, r.stderr[-3000:]
        assert r.stdout.startswith("usage: jaxnoise VERB")
        for verb in ("train", "report", "predict", "find-issues"):
            assert f"\n  {verb} " in r.stdout, r.stdout
    r = cli()
    assert r.returncode == 2 and "usage: jaxnoise VERB" in r.stdout


def test_each_verb_has_its_help():
    r = cli("train", "--help")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("usage: jaxnoise train --config CONFIG")
    for name in configs.names():  # every preset, with its docstring's first line
        assert f"    {name} " in r.stdout and configs.summary(name) in r.stdout, name
    assert "  noise = 0.0  # noise level r in [0, 1]" in r.stdout
    assert "shared fields (jaxnoise/configs/default.py):" in r.stdout
    assert "jaxnoise predict WORKDIR --inputs PATH" in r.stdout
    r = cli("report", "--help")
    assert (
        r.returncode == 0
        and r.stdout.startswith("usage: jaxnoise report")
        and ("--threshold" in r.stdout)
    )
    r = cli("predict", "--help")
    assert (
        r.returncode == 0
        and r.stdout.startswith("usage: jaxnoise predict")
        and ("--inputs" in r.stdout and "--out" in r.stdout)
    )


def test_an_unknown_verb_is_one_line_with_a_suggestion():
    one_line_refusal(cli("trian"), "unknown verb 'trian'", 'did you mean "train"')
    one_line_refusal(
        cli("report", "/no/such/workdir"), "is not a directory", "jaxnoise report --help"
    )


def test_main_py_is_the_train_verb():
    """``python main.py --help`` is the train verb's help under main.py's name."""
    r = subprocess.run(
        [sys.executable, "main.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0 and r.stdout.startswith("usage: python main.py --config CONFIG")
    assert "    quickstart " in r.stdout


# ------------------------------------------------------------------------------------------------
# Packaging.


def test_pyproject_declares_the_console_script():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["scripts"] == {"jaxnoise": "jaxnoise.cli:main"}
    from jaxnoise.cli import main

    assert main(["--help"]) == 0


def test_the_package_list_holds_the_presets_and_the_command():
    """What the wheel packs: setuptools' find_packages with pyproject's include finds
    jaxnoise.configs and jaxnoise.cli (each has an __init__.py), and no top-level configs."""
    setuptools = pytest.importorskip("setuptools")
    found = setuptools.find_packages(ROOT, include=["jaxnoise*"])
    assert {"jaxnoise.configs", "jaxnoise.cli"} <= set(found) and "configs" not in found


@pytest.mark.slow
def test_a_wheel_holds_the_presets_and_the_command(tmp_path):
    """``pip wheel . --no-deps`` (no build isolation, so no network: it needs setuptools >= 68
    and wheel installed): the wheel holds jaxnoise/configs/*.py and jaxnoise/cli, no top-level
    configs, and the console script."""
    setuptools = pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    if int(setuptools.__version__.split(".")[0]) < 68:
        pytest.skip(f"setuptools {setuptools.__version__} < 68 (pyproject's build requirement)")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            ROOT,
            "-w",
            str(tmp_path),
            "--no-deps",
            "--no-build-isolation",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = tmp_path.glob("jaxnoise-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    presets = {n.split("/")[-1][:-3] for n in names if n.startswith("jaxnoise/configs/")}
    assert presets == {*configs.names(), "__init__"}
    assert "jaxnoise/cli/__main__.py" in names and "jaxnoise/inference.py" in names
    assert not [n for n in names if n.startswith("configs/")]
    (entry,) = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry).decode()
    assert "[console_scripts]" in text and "jaxnoise = jaxnoise.cli:main" in text


# ------------------------------------------------------------------------------------------------
# Ctrl-C while the command starts.


@pytest.mark.skipif(shutil.which("true") is None, reason="needs a POSIX system")
def test_sigint_while_the_command_starts_is_one_line_and_130(tmp_path):
    """``jaxnoise train`` keeps main.py's handler: Ctrl-C during the imports (and until the run
    installs its own) is one line and exit 130, no traceback."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jaxnoise.cli",
            "train",
            "--config",
            "quickstart",
            "--workdir",
            str(tmp_path / "wd"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT},
    )
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert any(
        t in out
        for t in (
            "interrupted (SIGINT while starting): nothing to save",
            "stopped by SIGINT: nothing to save yet",
        )
    ), out[-3000:]


# ------------------------------------------------------------------------------------------------
# find-issues: the wrong labels from arrays on disk, no training.


def _digits_probs(tmp_path):
    """Digits at 40% symmetric noise and 3-fold out-of-sample probabilities of a logistic
    regression (scikit-learn): labels.npy, arrays.npz (labels, pred_probs, ids); the mask."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    flip = rng.random(y.size) < 0.4
    noisy = np.where(flip, (y + rng.integers(1, 10, y.size)) % 10, y)
    probs = cross_val_predict(
        LogisticRegression(max_iter=300), x / 16.0, noisy, cv=3, method="predict_proba"
    )
    np.save(tmp_path / "labels.npy", noisy)
    ids = np.array([f"img{i}" for i in range(y.size)])
    np.savez(tmp_path / "arrays.npz", labels=noisy, pred_probs=probs, ids=ids)
    return noisy, probs, noisy != y


def test_find_issues_writes_the_libraries_list(tmp_path):
    """jaxnoise find-issues on .npy / .npz:KEY files: the CSV lists find_label_issues' indices in
    its order (the same function from Python), and most of them are the flipped labels."""
    import jaxnoise

    labels, probs, mask = _digits_probs(tmp_path)
    out = tmp_path / "issues.csv"
    r = cli(
        "find-issues",
        "--labels",
        str(tmp_path / "labels.npy"),
        "--pred-probs",
        f"{tmp_path / 'arrays.npz'}:pred_probs",
        "--ids",
        f"{tmp_path / 'arrays.npz'}:ids",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    expected = jaxnoise.find_label_issues(labels, pred_probs=probs)
    assert [row["id"] for row in rows] == [f"img{i}" for i in expected]
    assert (
        f"({len(expected)} of {labels.size} samples: as many as the noise model estimates"
        in r.stdout
    ), r.stdout
    assert mask[expected].mean() > 0.8 and mask[expected].sum() > 0.6 * mask.sum()
    r = cli(
        "find-issues",
        "--labels",
        f"{tmp_path / 'arrays.npz'}:labels",
        "--pred-probs",
        f"{tmp_path / 'arrays.npz'}:pred_probs",
        "--count",
        "7",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out, newline="") as f:
        assert [int(row["index"]) for row in csv.DictReader(f)] == expected[:7].tolist()


def test_find_issues_refuses_in_one_line(tmp_path, capsys):
    """A missing file, an .npz without the key, two sources, mismatched lengths: one line each
    (the command called in this process)."""

    def cli(*args):
        return _tiny.cli_in_process(capsys, *args)

    _digits_probs(tmp_path)
    labels, arrays = str(tmp_path / "labels.npy"), str(tmp_path / "arrays.npz")
    one_line_refusal(
        cli("find-issues", "--labels", str(tmp_path / "nope.npy"), "--losses", labels),
        "--labels",
        "no such file",
    )
    one_line_refusal(
        cli("find-issues", "--labels", labels, "--pred-probs", f"{arrays}:probs"),
        "no array 'probs'",
    )
    one_line_refusal(cli("find-issues", "--labels", labels, "--pred-probs", arrays), "name one")
    one_line_refusal(
        cli("find-issues", "--labels", labels, "--losses", labels, "--features", labels),
        "not allowed with",
    )
    np.save(tmp_path / "short.npy", np.ones(5, np.float32))
    one_line_refusal(
        cli("find-issues", "--labels", labels, "--losses", str(tmp_path / "short.npy")), "losses"
    )
