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
