"""The preset configs, installed with the package: one ``NAME.py`` per preset, each with a
``get_config()`` (some take an argument, ``NAME:ARG`` on the command line).

    jaxnoise train --config quickstart              # = jaxnoise/configs/quickstart.py
    jaxnoise train --config cifar10n_ce:aggre       # get_config("aggre")

    from jaxnoise import configs
    config = configs.get("quickstart")              # the ConfigDict

A config of your own imports the one it changes: ``from jaxnoise.configs import default``. In a
clone of the repository ``configs/`` is a link to this folder, so ``python main.py --config
configs/quickstart.py`` and ``from configs import quickstart`` work as they always did.
"""

from __future__ import annotations

import ast
import importlib
import os

import ml_collections

DIR = os.path.dirname(os.path.abspath(__file__))


def names() -> list[str]:
    """The presets' names, sorted (``default`` is the base the others change)."""
    return sorted(f[:-3] for f in os.listdir(DIR) if f.endswith(".py") and f[0] != "_")


def path(name: str) -> str | None:
    """The file of preset ``name`` (``NAME`` or ``NAME.py``), or None if there is none."""
    stem = name[:-3] if name.endswith(".py") else name
    return os.path.join(DIR, stem + ".py") if stem in names() else None


def summary(name: str) -> str:
    """The first line of a preset's docstring (read without importing it)."""
    with open(os.path.join(DIR, name + ".py")) as f:
        doc = ast.get_docstring(ast.parse(f.read())) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def get(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The ConfigDict of preset ``name`` (``"NAME"`` or ``"NAME:ARG"``)."""
    stem, _, given = name.partition(":")
    arg = arg if arg is not None else (given or None)
    if path(stem) is None:
        raise ValueError(f"no preset config {stem!r}; the presets: {', '.join(names())}")
    module = importlib.import_module(f"jaxnoise.configs.{stem.removesuffix('.py')}")
    return module.get_config(arg) if arg else module.get_config()
