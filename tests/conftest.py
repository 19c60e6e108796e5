"""Session set-up: one XLA compilation cache shared by every test and the subprocesses they start.

Most tests train the same tiny configs, and each run builds its own jitted functions, so
without the cache every run compiles the same programs again. The cache lives in a temporary
folder of this session only; it is removed at exit. A variable set by the caller wins.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

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
