"""README.md and docs/*.md: links resolve, no machine-only paths, commands name real things.

Every relative link must point at a file of the repository (and an `#anchor` at a heading of
that file, with GitHub's heading slugs); the README must name no path that exists only on the
project's machines (`../shared/...`, `/work/...`); every ```bash block must parse (`bash -n`);
every `--config.FIELD` must be a field of configs/default.py (a bootstrap or a DivideMix config)
and every `configs/X.py` a file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
IDS = [str(p.relative_to(ROOT)) for p in DOCS]

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# Deliberately misspelt fields: the docs show how a misspelling is refused.
MISSPELT_EXAMPLES = {"nosie"}


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _prose(text: str) -> str:
    """The text without fenced code blocks (links there are not links)."""
    return FENCE.sub("", text)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    s = re.sub(r"[`*_]|\[|\]\([^)]*\)", "", heading).strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file (duplicates get -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for line in _prose(_text(path)).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if not m:
            continue
        base = _slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_slug_matches_github_examples():
    """The slug rule on headings whose GitHub anchors are known."""
    assert _slug("GPU, cloud and many hosts") == "gpu-cloud-and-many-hosts"
    assert (
        _slug("CIFAR-10N / CIFAR-100N (real human noise)")
        == "cifar-10n--cifar-100n-real-human-noise"
    )
    assert _slug("The `prepare` extra") == "the-prepare-extra"


@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_relative_links_resolve(path):
    """Every relative link names an existing file; every anchor names a heading of its file."""
    broken = []
    for target in LINK.findall(_prose(_text(path))):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.is_file() or ROOT not in dest.parents:
            broken.append(f"{target} (no file {dest})")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{path.name}: broken links: {broken}"


@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_no_machine_only_paths(path):
    """No ../shared or /work path: users (and docs readers) do not have them."""
    text = _text(path)
    found = re.findall(r"\.\./shared\S*|(?<![\w.~-])/work\b\S*", text)
    assert not found, f"{path.name} names machine-only paths: {found}"


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_bash_blocks_parse(path):
    """Every ```bash block is valid shell as written (e.g. `(512,)` must be quoted)."""
    blocks = re.findall(r"^```bash\n(.*?)^```", _text(path), re.S | re.M)
    for block in blocks:
        r = subprocess.run(["bash", "-n"], input=block, text=True, capture_output=True)
        assert r.returncode == 0, f"{path.name}: bash -n fails on:\n{block}\n{r.stderr}"


def _config_fields() -> set[str]:
    from configs import default

    def walk(d, prefix=""):
        for k, v in d.items():
            if hasattr(v, "items"):
                yield from walk(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    return set(walk(default.get_config())) | set(walk(default.get_config("DivideMix")))


@pytest.mark.parametrize("path", DOCS, ids=IDS)
def test_config_fields_and_files_exist(path):
    """Each --config.field named is a field of configs/default.py; each configs/X.py exists."""
    text = _text(path)
    fields = _config_fields()
    named = set(re.findall(r"--config\.([a-z_][a-z0-9_.]*[a-z0-9_])", text))
    unknown = sorted(named - fields - MISSPELT_EXAMPLES)
    assert not unknown, f"{path.name} names fields configs/default.py lacks: {unknown}"
    files = set(re.findall(r"\bconfigs/([a-z0-9_]+\.py)", text))
    missing = sorted(f for f in files if not (ROOT / "configs" / f).is_file())
    assert not missing, f"{path.name} names config files that do not exist: {missing}"


def _python_blocks() -> list[str]:
    """The README's ```python blocks that import jaxnoise (the examples a user copies whole)."""
    text = _text(ROOT / "README.md")
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
    return [b for b in blocks if "import jaxnoise" in b]


def test_readme_python_examples_run_and_do_what_they_say(tmp_path, bootstrap_run):
    """Each of the README's Python examples runs as written (the run's workdir moved to a
    temporary folder) and does what its text says: the in-memory list finds the wrong labels,
    the loss pieces' loop learns and its p(noisy) ranks the flipped labels, the run from Python
    trains and predicts. (``bootstrap_run``: its compiled programs are in the session's cache.)"""
    from sklearn.metrics import roc_auc_score

    issues, loop, run = _python_blocks()
    ns: dict = {}
    exec(compile(issues, "README.md (wrong labels in memory)", "exec"), ns)
    found = ns["issues"]
    assert 200 <= len(found) <= 300 and (found < 200).mean() > 0.75 and (found < 200).sum() > 190
    assert ns["scores"].shape == (1000,) and ns["table"]["is_label_issue"].sum() == len(found)
    ns = {}
    exec(compile(loop, "README.md (your own loop)", "exec"), ns)
    assert roc_auc_score(ns["flip"], ns["w"]) > 0.95
    accuracy = (ns["np"].argmax(ns["apply"](ns["params"], ns["x"]), 1) == ns["true"]).mean()
    assert accuracy > 0.9, accuracy
    workdir = str(tmp_path / "run")
    assert run.count('"/tmp/jaxnoise_readme_run"') == 2
    ns = {}
    exec(
        compile(
            run.replace('"/tmp/jaxnoise_readme_run"', repr(workdir)), "README.md (a run)", "exec"
        ),
        ns,
    )
    assert ns["summary"]["epochs_done"] == 3 and not ns["summary"]["interrupted"]
    assert ns["out"]["prediction"].shape == (5,) and ns["out"]["probs"].shape == (5, 10)
