"""jax's persistent compilation cache, on by default: a restarted run loads its compiled programs.

Without it every process compiles its train steps, tracking pass and evaluation again (minutes
on a CPU before a resumed run's first step). ``config.compilation_cache`` picks the folder:

    "auto"          $XDG_CACHE_HOME/jaxnoise/xla, or ~/.cache/jaxnoise/xla
    "" or "none"    off
    any other       that folder (created if missing)

The variable JAX_COMPILATION_CACHE_DIR, when the caller sets it, wins over the config (the test
suite points it at a temporary folder), as do JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS and
JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES. jax keys each entry by the program, the jax and XLA
versions, the backend and the compile options, so a stale entry is never used; the folder only
grows (delete it to reclaim the space). Like any jax compilation cache it is trusted code: keep
it where only you can write.
"""

from __future__ import annotations

import os

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

ENV = "JAX_COMPILATION_CACHE_DIR"
OFF = ("", "none")
# Cache every program that took at least this long to compile (jax's default, 1 s, leaves out
# the many smaller programs of a run: the evaluation chunk, the mixture fit, the metrics).
MIN_COMPILE_SECONDS = 0.0
_MIN_COMPILE_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"


def default_dir(environ: dict | None = None) -> str:
    """$XDG_CACHE_HOME/jaxnoise/xla (an absolute XDG_CACHE_HOME), else ~/.cache/jaxnoise/xla."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxnoise", "xla")


def resolve(setting: str, environ: dict | None = None) -> str | None:
    """The cache folder for ``config.compilation_cache`` (None: off); the caller's
    JAX_COMPILATION_CACHE_DIR wins."""
    environ = os.environ if environ is None else environ
    if environ.get(ENV):
        return environ[ENV]
    if setting in OFF:
        return None
    if setting == "auto":
        return default_dir(environ)
    return os.path.abspath(os.path.expanduser(setting))


def configure(setting: str) -> str | None:
    """Point jax's persistent compilation cache at the configured folder (call before the first
    compile); returns the folder, or None when off. A folder that cannot be created is an error
    when the config names it, a warning (and no cache) for "auto"."""
    path = resolve(setting)
    if path is not None:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            if setting not in ("auto", *OFF) and not os.environ.get(ENV):
                raise ValueError(
                    f"config.compilation_cache = {setting!r}: cannot create the "
                    f"folder {path} ({e.strerror})"
                ) from None
            from jaxnoise.progress import log

            log(
                f"warning: no compilation cache: cannot create {path} ({e.strerror}); set "
                "config.compilation_cache to a writable folder, or '' to silence this"
            )
            path = None
    if path != jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", path)
        jax_cache.reset_cache()  # the next compile opens the new folder
    if path is not None and not os.environ.get(_MIN_COMPILE_ENV):
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return path
