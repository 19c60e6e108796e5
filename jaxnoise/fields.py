"""Field checks for the config validators: each returns None if a value is allowed, else a
description of what is. Imports nothing of jax (the validators run before anything heavy)."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Sequence
from typing import Any

Check = Callable[[Any], "str | None"]
INT_MAX = 2**31 - 1  # epochs, steps and sizes reach jitted code as int32
SEED_MAX = 2**32 - 1
AUTO = -1.0  # "auto": a value resolved from a published table (DivideMix's lambda_u, tau)


class ConfigError(ValueError):
    """A config field's value is refused (the message names the field)."""


def is_int(v: Any) -> bool:
    """A whole number that is not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_real(v: Any) -> bool:
    """A finite number that is not a bool."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def integer(lo: int, hi: int = INT_MAX) -> Check:
    """An integer in [lo, hi]."""

    def check(v):
        if is_int(v) and lo <= v <= hi:
            return None
        if lo == 1 and hi == INT_MAX:
            return "a positive integer (at most 2**31 - 1)"
        return f"an integer in [{lo}, {hi}]"

    return check


def real(lo: float, hi: float = math.inf, *, lo_open: bool = False, hi_open: bool = False) -> Check:
    """A finite number in the interval."""

    def check(v):
        if is_real(v):
            x = float(v)
            if (x > lo if lo_open else x >= lo) and (x < hi if hi_open else x <= hi):
                return None
        if hi == math.inf:
            return "a finite number " + ("> " if lo_open else ">= ") + f"{lo:g}"
        return f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    return check


def boolean(v: Any) -> str | None:
    """True or False."""
    return None if isinstance(v, bool) else "True or False"


def string(v: Any) -> str | None:
    """Any string."""
    return None if isinstance(v, str) else "a string"


def choice(allowed: Sequence[str]) -> Check:
    """One of the names."""

    def check(v):
        if isinstance(v, str) and v in allowed:
            return None
        return "one of " + ", ".join(repr(a) for a in allowed)

    check.allowed = tuple(allowed)  # the names, for --help and tests
    return check


def sizes(v: Any) -> str | None:
    """A tuple of positive layer sizes."""
    if isinstance(v, (tuple, list)) and all(is_int(m) and 1 <= m <= INT_MAX for m in v):
        return None
    return "a tuple of positive layer sizes (e.g. (512,))"


def milestones(v: Any) -> str | None:
    """A tuple of whole epochs >= 1."""
    if isinstance(v, (tuple, list)) and all(is_int(m) and 1 <= m <= INT_MAX for m in v):
        return None
    return "a tuple of whole epochs >= 1"


def auto_or(check: Check) -> Check:
    """``check``, or the sentinel -1 ("auto": the paper's value)."""

    def checked(v):
        if is_real(v) and float(v) == AUTO:
            return None
        allowed = check(v)
        return None if allowed is None else f"{allowed}, or -1 (auto: the paper's value)"

    return checked


def cache_folder(v: Any) -> str | None:
    """'auto', '' / 'none' (off), an existing folder, or one that can be created."""
    allowed = "'auto', '' or 'none' (off), or a folder"
    if not isinstance(v, str) or "\0" in v:
        return allowed
    if v in ("auto", "", "none"):
        return None
    path = os.path.abspath(os.path.expanduser(v))
    if os.path.isdir(path):
        return None
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK):
        return None
    why = "a file of that name exists" if parent == path else f"{parent} is not a writable folder"
    return f"{allowed} ({why})"


def show(value: Any) -> str:
    """A value as the user wrote it (plain Python, at most 120 characters)."""
    if hasattr(value, "tolist"):  # numpy scalars and arrays print as plain values
        value = value.tolist()
    r = repr(value)
    return r if len(r) <= 120 else r[:117] + "..."


def fail(field: str, value: Any, allowed: str) -> None:
    """Raise ConfigError naming the field, its value and what is allowed."""
    raise ConfigError(f"config.{field} = {show(value)} is not allowed: {allowed}")


def check_all(flat: dict[str, Any], checks: dict[str, Check], prefix: str = "") -> None:
    """Apply each field's check to ``flat[prefix + field]``."""
    for field, check in checks.items():
        allowed = check(flat[prefix + field])
        if allowed is not None:
            fail(prefix + field, flat[prefix + field], allowed)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b": value} (the one flatten of configs and config.json)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
