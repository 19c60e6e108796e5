"""The command line as a new user meets it: --help, one-line refusals (exit code 2), an offline
tfds run that fails in seconds without leaving a workdir, and progress lines without a terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from jaxnoise import progress
from tests import _signal_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = os.path.join(ROOT, "configs", "quickstart.py")

# main.py with every outgoing TCP connection refused, as on a machine without network.
BLOCKED_MAIN = """
import os, runpy, socket, sys
def blocked(*args, **kwargs):
    raise OSError("network blocked by the test")
socket.create_connection = blocked
sys.argv = [MAIN, *sys.argv[1:]]
sys.path.insert(0, os.path.dirname(MAIN))  # as `python main.py` does
runpy.run_path(MAIN, run_name="__main__")
"""


def run_main(*args: str, cwd: str = ROOT, blocked: bool = False, timeout: int = 600):
    """Run main.py (optionally with the network blocked) with its output captured (no TTY)."""
    main = os.path.join(ROOT, "main.py")
    blocked_main = f"MAIN = {main!r}\n" + BLOCKED_MAIN
    cmd = [sys.executable, "-c", blocked_main] if blocked else [sys.executable, main]
    return subprocess.run(
        [*cmd, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )


def assert_one_line_refusal(r, code: int, *texts: str) -> None:
    """rc == code, stderr is exactly one line starting with 'error: ', holding every text."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, r.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-3000:]
    for t in texts:
        assert t in lines[0], lines[0]


# ------------------------------------------------------------------------------------------------
# --help and refusals


def test_help_lists_fields_sources_and_report():
    """--help exits 0 and lists the presets, the config fields with their comments from
    jaxnoise/configs/default.py, the data sources and the report command."""
    r = run_main("--help")
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "  noise = 0.0  # noise level r in [0, 1]" in out
    assert "  data.source = " in out and "log_every_seconds" in out
    for source in ("tfds", "folder", "digits"):
        assert f"\n  {source} " in out
    assert "python -m jaxnoise.report WORKDIR" in out
    assert "\n    cifar10_m_dyr_h " in out  # the presets by name (jaxnoise/configs/NAME.py)
    # a continuation comment line is joined to its field; each method's block is its own group
    assert "bootstrap.posterior_source = " in out and "the end-of-epoch tracking pass" in out
    assert "\nconfig.bootstrap: CE, M, M-DYR-H, M-DYR-S, MD-DYR-SH" in out
    assert "\nconfig.dividemix: DivideMix" in out and "  dividemix.lambda_u = 25.0" in out


@pytest.mark.parametrize(
    ("args", "texts"),
    [
        (["--config.nosie=0.5"], ["--config.nosie", 'did you mean "noise"']),
        (["--config.data.sorce=x"], ['did you mean "data.source"']),
        (["--config.noise=abc"], ["--config.noise=abc"]),
        (["--config.noise=1.5"], ["config.noise = 1.5", "[0, 1]"]),
        (["--bogus"], ["bogus"]),
        (["--config.dividemix.lambda_u=0"], ["belongs to DivideMix (config.dividemix)"]),
        (["--config.mixup_alpha=8"], ["config.mixup_alpha is now config.bootstrap.mixup_alpha"]),
        (["stray"], ["unexpected argument 'stray'"]),
    ],
)
def test_refusals_are_one_line_with_exit_code_2(args, texts, tmp_path):
    """Misspelt fields (with the suggestion), bad values, unknown flags, stray arguments."""
    wd = tmp_path / "wd"
    r = run_main("--config", QUICK, *args, "--workdir", str(wd))
    assert_one_line_refusal(r, 2, *texts)
    assert "Traceback" not in r.stderr and not wd.exists()


def test_missing_or_absent_config_is_one_line_with_exit_code_2(tmp_path):
    r = run_main()
    assert_one_line_refusal(r, 2, "--config CONFIG is required")
    r = run_main("--config", str(tmp_path / "nope.py"))
    assert_one_line_refusal(r, 2, "nope.py: no such file")


def test_offline_tfds_fails_fast_in_one_line_and_leaves_no_workdir(tmp_path):
    """The README's headline command on a machine without network: one line that names the
    unreachable host and what to run instead; exit 1; no workdir; nothing downloaded."""
    data_dir = tmp_path / "tfds"
    r = run_main(
        "--config",
        os.path.join(ROOT, "configs", "cifar10_m_dyr_h.py"),
        "--config.noise=0.5",
        f"--config.data.data_dir={data_dir}",
        cwd=str(tmp_path),
        blocked=True,
    )
    assert_one_line_refusal(
        r,
        1,
        "tfds dataset 'cifar10' is not prepared",
        "www.cs.toronto.edu",
        "network blocked by the test",
        "pip install -e '.[prepare]'",
        "--config.data.source=digits",
    )
    assert not (tmp_path / "runs").exists()  # no empty runs/cifar10_m_dyr_h-tfds left behind
    written = [p for p in data_dir.rglob("*") if p.is_file()] if data_dir.exists() else []
    assert written == []  # nothing was downloaded


# ------------------------------------------------------------------------------------------------
# Progress without a terminal


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_progress_lines_every_n_seconds_with_rates_of_this_run_only(capsys):
    """A line only after log_every_seconds; after a resume at step 40 the bar starts there and
    s/step, images/s and the ETA count only the steps done since."""
    clock = FakeClock()
    bar = progress.Progress(
        100,
        "epoch 3/9 mixup",
        initial=40,
        items_per_step=128,
        log_every_seconds=10,
        clock=clock,
        bar=False,
        lines=True,
    )
    assert bar.n == 40 and bar._bar.n == 40  # the (disabled here) tqdm bar starts at 40 too
    clock.t += 5
    bar.update(10, loss=1.5)
    assert capsys.readouterr().out == ""  # 5 s < 10 s: no line yet
    clock.t += 5
    bar.update(10, loss=1.25, images_per_s=1.0)
    line = capsys.readouterr().out.strip()
    # 20 steps in 10 s since the resume: 0.5 s/step, 256 images/s, 40 steps left: 20 s
    assert line.endswith(
        "epoch 3/9 mixup: step 60/100, 0.5 s/step, 256 images/s, ETA 20s, loss 1.25"
    ), line
    clock.t += 30
    bar.update(10)
    line = capsys.readouterr().out.strip()
    assert "step 70/100, 3 s/step" in line and "ETA 1m30s" in line, line  # since the last line
    bar.close()


def test_progress_no_lines_when_off_or_on_a_terminal(capsys):
    clock = FakeClock()
    for kw in (dict(log_every_seconds=0, lines=True), dict(log_every_seconds=1, lines=False)):
        bar = progress.Progress(10, "x", clock=clock, bar=False, **kw)
        clock.t += 100
        bar.update(5)
        bar.close()
    assert capsys.readouterr().out == ""


def test_format_duration():
    assert [progress.format_duration(s) for s in (0.4, 59, 61, 3600 * 3 + 125)] == [
        "0s",
        "59s",
        "1m01s",
        "3h02m",
    ]


# The quickstart shrunk to the shared tiny run's config (tests/_signal_run.py) by overrides, so
# that the command line's run can be compared with the in-process one (and reuses its compiled
# programs from the session's compilation cache).
TINY_OVERRIDES = _signal_run.flags(_signal_run.SHRUNK)


def test_run_without_terminal_or_workdir(bootstrap_run, tmp_path):
    """The README's newcomer command (no --workdir), piped (no TTY), on the tiny run: the run goes
    to runs/<config name>-<data source> and gives the in-process run's metrics exactly;
    'compiling ...' before the first call of each jitted step and evaluation pass, and progress
    lines with step, s/step, images/s, ETA; every file of the workdir has one permission mode."""
    r = run_main(
        "--config", QUICK, *TINY_OVERRIDES, "--config.log_every_seconds=1e-9", cwd=str(tmp_path)
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "done: M-DYR-H" in out
    wd = tmp_path / "runs" / "quickstart-digits"  # runs/<config name>-<data source>
    assert (wd / "label_issues.csv").exists()
    assert _metrics(wd) == _metrics(bootstrap_run[1])
    assert "compiling the mixup train step" in out
    assert "compiling the mixup+hard-bootstrap train step" in out
    assert "compiling the evaluation pass" in out
    assert out.index("compiling the mixup train step") < out.index("epoch 1/3 mixup: step 5/")
    line = next(x for x in out.splitlines() if "epoch 1/3 mixup: step 5/" in x)
    assert "s/step" in line and "images/s" in line and "ETA " in line and "loss " in line
    # every file of the workdir shares one permission mode
    modes = {os.stat(os.path.join(d, f)).st_mode & 0o777 for d, _, fs in os.walk(wd) for f in fs}
    assert len(modes) == 1, {oct(m) for m in modes}


def _metrics(workdir) -> list[dict]:
    """metrics.jsonl without the timing fields."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [
            {k: v for k, v in json.loads(x).items() if k not in ("seconds", "images_per_s")}
            for x in f
        ]
