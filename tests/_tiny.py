"""Helpers for tests that read the session's shared tiny run (tests/conftest.py
``bootstrap_run``, whose config is ``tests/_signal_run.py``'s ``get_config``)."""

from __future__ import annotations

import shutil


def copy_run(workdir, destination):
    """A copy of a shared run's workdir (for a test that writes into it)."""
    shutil.copytree(workdir, destination)
    return destination
