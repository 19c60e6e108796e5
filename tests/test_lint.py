"""ruff (lint and format) over the project's tracked Python files, so style problems fail the
test command (a user's own untracked scratch script in the clone does not), ``# fmt: skip`` only
on aligned tables, and the function-length rule."""

import ast
import glob
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def tracked_python_files(root: str = ROOT) -> list[str] | None:
    """`git ls-files '*.py'` of the checkout at ``root`` (relative paths, existing files only);
    None when git is missing or ``root`` is not a git checkout."""
    if shutil.which("git") is None:
        return None
    r = subprocess.run(
        ["git", "ls-files", "-z", "--", "*.py"], cwd=root, capture_output=True, text=True
    )
    if r.returncode != 0:
        return None
    return sorted(f for f in r.stdout.split("\0") if f and os.path.isfile(os.path.join(root, f)))


def ruff_check(root: str, files: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--force-exclude", *files],
        cwd=root,
        capture_output=True,
        text=True,
    )


def _need_ruff_and_git() -> list[str]:
    if shutil.which("ruff") is None and not _has_module("ruff"):
        pytest.skip("ruff is not installed (it is in the dev extra)")
    files = tracked_python_files()
    if files is None:
        pytest.skip(
            f"{ROOT} is not a git checkout (or git is missing): the lint test checks the "
            "files git tracks"
        )
    return files


def test_ruff_check():
    """`ruff check` of the tracked .py files is clean."""
    files = _need_ruff_and_git()
    assert "jaxnoise/loops.py" in files and "tests/test_lint.py" in files
    r = ruff_check(ROOT, files)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format():
    """`ruff format --check` of the tracked .py files: the code is as the formatter writes it."""
    files = _need_ruff_and_git()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "format",
            "--check",
            "--no-cache",
            "--force-exclude",
            *files,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_fmt_skip_only_on_aligned_tables():
    """`# fmt: skip` only ends a module-level statement (an aligned table of rows, e.g. a dict of
    cases or a parametrize list), never inside a function to keep hand-wrapped lines."""
    files = _need_ruff_and_git()
    inside = []
    for path in files:
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.rstrip().endswith("# fmt: skip") and line[:1] in (" ", "\t"):
                    inside.append(f"{path}:{i}")
    assert not inside, "indented # fmt: skip: " + ", ".join(inside)


def test_untracked_scratch_script_is_not_linted(tmp_path):
    """In a checkout holding a tracked clean file and an untracked file with lint errors, only
    the tracked file is listed, and the check passes (while the whole folder would fail)."""
    _need_ruff_and_git()
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "clean.py").write_text('"""A clean module."""\n\nX = 1\n')
    (tmp_path / "scratch.py").write_text("import os, sys\nx=1\n")  # F401 / E401: unused imports
    subprocess.run(["git", "add", "clean.py"], cwd=tmp_path, check=True)
    files = tracked_python_files(str(tmp_path))
    assert files == ["clean.py"]
    assert ruff_check(str(tmp_path), files).returncode == 0
    assert ruff_check(str(tmp_path), ["."]).returncode != 0  # the scratch file would fail


def test_no_library_function_is_longer_than_sixty_lines():
    """The loop and its pieces stay readable in one screen (issue 15: about 60 lines at most).
    The tracked jaxnoise/*.py files (all of them outside a git checkout)."""
    files = tracked_python_files()
    if files is None:
        library = glob.glob(os.path.join(ROOT, "jaxnoise", "*.py"))
        files = [os.path.relpath(p, ROOT) for p in library]
    long = []
    for path in sorted(f for f in files if f.startswith("jaxnoise/")):
        with open(os.path.join(ROOT, path)) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{path}:{node.lineno} {node.name} ({lines})")
    assert len(files) > 20 and not long, "functions over 60 lines: " + ", ".join(long)
