"""Label sets from files, for real human label noise: read them, then align them to the samples.

:mod:`jaxnoise.labels.files` reads a named label set from a ``.pt``/``.npz``/``.npy``/``.csv``/
``.txt`` file (:func:`read`, :func:`available_keys`), ``.pt`` files and pickles through the
restricted unpickler of :mod:`jaxnoise.labels.torch_pickle`; :mod:`jaxnoise.labels.human` aligns
the chosen set to a dataset's samples by identity (:func:`resolve`, ``label_order``).
"""

from jaxnoise.labels.files import LabelSet, available_keys, read
from jaxnoise.labels.human import (
    ALIASES,
    KEY,
    ORDERS,
    SHORT_NAMES,
    file_key,
    key_names,
    names_its_samples,
    no_path_column,
    resolve,
)

__all__ = [
    "ALIASES", "KEY", "ORDERS", "SHORT_NAMES", "LabelSet", "available_keys", "file_key",
    "key_names", "names_its_samples", "no_path_column", "read", "resolve",
]  # fmt: skip
