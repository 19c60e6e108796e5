"""Where decoded images and extracted features are cached, and how a cache file is written.

A cache file is an uncompressed ``.npz`` written atomically (a temporary file, then
``os.replace``), so a run killed mid-write leaves no torn file; writing it removes the older files
of the same family (same name up to the last ``-``), and failing to write only warns.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def default_dir(root: Path) -> Path:
    """ROOT/.jaxnoise_cache if writable, else ~/.cache/jaxnoise/<hash of root>."""
    local = root / ".jaxnoise_cache"
    try:
        local.mkdir(exist_ok=True)
        if os.access(local, os.W_OK):
            return local
    except OSError:
        pass
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "jaxnoise" / digest


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays to path atomically (temp file + os.replace); warn instead of failing."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as err:
        logger.warning("could not write cache %s: %s", path, err)
        return
    for stale in path.parent.glob(path.name.rsplit("-", 1)[0] + "-*.npz"):
        if stale != path:
            stale.unlink(missing_ok=True)
