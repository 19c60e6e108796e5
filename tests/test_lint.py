"""ruff (lint) over the whole project, so style problems fail the test command."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ruff_check():
    """`ruff check .` is clean."""
    if shutil.which("ruff") is None and not _has_module("ruff"):
        pytest.skip("ruff is not installed (it is in the dev extra)")
    r = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", ROOT],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_no_library_function_is_longer_than_sixty_lines():
    """The loop and its pieces stay readable in one screen (issue 15: about 60 lines at most)."""
    import ast
    import glob

    long = []
    for path in sorted(glob.glob(os.path.join(ROOT, "jaxnoise", "**", "*.py"), recursive=True)):
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{os.path.basename(path)}:{node.lineno} {node.name} ({lines})")
    assert not long, "functions over 60 lines: " + ", ".join(long)
