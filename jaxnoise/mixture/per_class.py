"""Fitting by the model's name, and one mixture per given (noisy) class.

``fit(kind, ...)`` is ``fit_bmm`` or ``fit_gmm``. ``fit_per_class`` fits one mixture per class
as one ``jax.vmap`` of the masked fit (``where``, see ``normalize``) over the classes; its state
has a leading class axis on every leaf (``state.is_per_class``) and ``posterior_noisy(...,
classes=...)`` evaluates each sample under its class's mixture.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxnoise.mixture.bmm import fit_bmm
from jaxnoise.mixture.gmm import fit_gmm
from jaxnoise.mixture.state import MixtureState, Noisy


def fit(
    kind: str,
    losses: jax.Array,
    *,
    max_iters: int = 10,
    noisy: Noisy = "initial",
    where: jax.Array | None = None,
):
    """Fit the named noise model ('bmm' or 'gmm'); ``where`` as in ``fit_bmm``."""
    if kind == "bmm":
        return fit_bmm(losses, max_iters=max_iters, noisy=noisy, where=where)
    if kind == "gmm":
        return fit_gmm(losses, max_iters=max_iters, noisy=noisy, where=where)
    raise ValueError(f"unknown noise model {kind!r}; allowed: 'bmm', 'gmm'")


@functools.partial(jax.jit, static_argnames=("kind", "num_classes", "max_iters", "noisy"))
def fit_per_class(
    kind: str,
    losses: jax.Array,
    classes: jax.Array,
    num_classes: int,
    *,
    max_iters: int = 10,
    noisy: Noisy = "initial",
) -> MixtureState:
    """One mixture per given class: class c is ``fit(kind, losses[classes == c])``.

    One jitted ``jax.vmap`` over the classes of the masked fit (mask ``classes == c``): only
    reductions over the sample axis, so a sharded ``losses``/``classes`` pair needs no gather.
    Every leaf of the result has a leading class axis (C, ...). A class with fewer than
    ``MIN_SAMPLES`` samples (or degenerate losses) gets ``valid == False``. Cost: C masked fits
    over all N samples, ~3 (C, N) float32 arrays live through EM (60 MB for C = 100, N = 50k).
    Samples whose class is outside ``[0, C)`` are in no fit.
    """
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    losses = jnp.asarray(losses, jnp.float32).reshape(-1)
    classes = jnp.asarray(classes).reshape(-1)
    if classes.shape != losses.shape:
        raise ValueError(f"{classes.shape[0]} classes for {losses.shape[0]} losses")

    def one(c):
        return fit(kind, losses, max_iters=max_iters, noisy=noisy, where=classes == c)

    return jax.vmap(one)(jnp.arange(num_classes, dtype=classes.dtype))
