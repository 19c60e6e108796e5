"""Session set-up: one XLA compilation cache shared by every test and the subprocesses they start,
and the tiny training runs that several tests read.

Most tests train the same tiny configs, and each run builds its own jitted functions, so
without the cache every run compiles the same programs again. The cache lives in a temporary
folder of this session only; it is removed at exit. A variable set by the caller wins.

The shared runs (``bootstrap_run``, ``dividemix_run``) are trained once, the first time a test
asks for one; tests read their workdirs and must not change them (a test that writes into a
run's workdir works on a copy, ``tests/_tiny.py`` ``copy_run``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

import pytest

_cache_dir = tempfile.mkdtemp(prefix="jaxnoise-tests-xla-cache-")
atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
_SETTINGS = {  # every program is cached, however fast it compiled or small it is
    "JAX_COMPILATION_CACHE_DIR": (_cache_dir, str),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": ("0", float),
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": ("0", int),
}
for _name, (_value, _type) in _SETTINGS.items():
    os.environ.setdefault(_name, _value)
    if "jax" in sys.modules:  # imported before this file (by a plugin): set the live config
        sys.modules["jax"].config.update(_name.lower(), _type(os.environ[_name]))


@pytest.fixture(scope="session")
def bootstrap_run(tmp_path_factory):
    """The tiny M-DYR-H run (``tests/_signal_run.py``'s config: the quickstart's digits at 50%
    noise, a width-8 CNN, 3 epochs of 24 steps, bootstrapping from epoch 2) through
    ``loops.train_and_evaluate``: (summary, workdir, (its ``runkit.Run``, its bootstrap
    ``Pieces``, whose compiled steps later calls reuse))."""
    from jaxnoise import loops, runkit
    from jaxnoise.bootstrap import loop as bootstrap_loop
    from tests import _signal_run, _tiny

    workdir = tmp_path_factory.mktemp("bootstrap_run") / "run"
    with pytest.MonkeyPatch.context() as mp:
        runs = _tiny.record_returns(mp, runkit, "open_run")
        built = _tiny.record_returns(mp, bootstrap_loop, "build")
        summary = loops.train_and_evaluate(_signal_run.get_config(), str(workdir))
    return summary, workdir, (runs[-1], built[-1][0])


@pytest.fixture(scope="session")
def dividemix_run(tmp_path_factory):
    """The tiny DivideMix run (``tests/_tiny.py`` ``dividemix_config``) through
    ``loops.train_and_evaluate``: (summary, workdir, its ``Pieces``: the compiled functions)."""
    from jaxnoise import loops
    from jaxnoise.dividemix import loop as dm_loop
    from tests import _tiny

    workdir = str(tmp_path_factory.mktemp("dividemix_run") / "run")
    with pytest.MonkeyPatch.context() as mp:
        built = _tiny.record_returns(mp, dm_loop, "build")
        summary = loops.train_and_evaluate(_tiny.dividemix_config(), workdir)
    return summary, workdir, built[-1][0]
