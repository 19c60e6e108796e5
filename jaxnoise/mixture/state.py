"""The fitted states of the two noise models, their initial parameters, and the neutral state.

``BMMState`` and ``GMMState`` hold a fitted two-component mixture over normalised losses with
its normalisation bounds, the noisy component, the 100-bin posterior lookup table and a
``valid`` flag; ``MixtureState`` is either. The initial parameters are defined once, in
``initial_params``, which both EM starts (``fit_bmm``, ``fit_gmm`` with ``init="fixed"``) and
``initial_state`` use: BMM ``alpha = (1, 2)``, ``beta = (2, 1)``, ``pi = (0.5, 0.5)``; GMM
means ``(1/3, 2/3)`` and variances ``1/18`` (the moments of the BMM's initial components),
``pi = (0.5, 0.5)``. The noisy component is component 1 (``noisy="initial"``, the original
code) or the one with the larger fitted mean (``noisy="max_mean"``: ``a / (a + b)`` for the
BMM, the published extension; the GMM's default).

Degenerate input. When the losses contain NaN/inf, when the 5th and 95th percentiles coincide
(e.g. all losses equal), or when EM produces non-finite parameters, the fitted state has
``valid == False``, its parameters are the initial ones, and ``posterior_noisy`` returns exactly
0.5 for every sample (no sample is favoured). ``initial_state`` is such a state, for the epochs
before the first fit. The training loop reads ``valid`` once per epoch to report it, and logs
``summary``, the host-side dict of a state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

LOOKUP_RESOLUTION = 100

Noisy = Literal["initial", "max_mean"]


@struct.dataclass
class BMMState:
    """A fitted two-component beta mixture over normalised losses, plus its normalisation."""

    alphas: jax.Array  # (2,) float32
    betas: jax.Array  # (2,) float32
    weights: jax.Array  # (2,) float32 mixing proportions
    lo: jax.Array  # () float32: 5th percentile + 1e-5
    hi: jax.Array  # () float32: 95th percentile
    noisy_component: jax.Array  # () int32
    lookup: jax.Array  # (100,) float32 monotone posterior table of the noisy component
    valid: jax.Array  # () bool; False => posteriors are 0.5
    normalize: ClassVar[str] = "percentile"  # the BMM always uses the percentile mapping

    @property
    def means(self) -> jax.Array:
        """Component means a / (a + b) on the normalised scale."""
        return self.alphas / (self.alphas + self.betas)


@struct.dataclass
class GMMState:
    """A fitted two-component Gaussian mixture over normalised losses, plus its normalisation."""

    means: jax.Array  # (2,) float32
    variances: jax.Array  # (2,) float32
    weights: jax.Array  # (2,) float32
    lo: jax.Array
    hi: jax.Array
    noisy_component: jax.Array
    lookup: jax.Array
    valid: jax.Array
    # How raw losses map to x (static): "percentile" (normalize_losses) or "minmax" / "none"
    # (minmax_normalize; lo, hi = the fitted min, max or 0, 1).
    normalize: str = struct.field(pytree_node=False, default="percentile")


MixtureState = BMMState | GMMState


Pair = jax.Array | Sequence[jax.Array]  # the two components' values, p[0] and p[1]


def initial_params(kind: str) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The initial parameters of model ``kind``, (2,) float32 each: THE one definition.

    ``(alphas, betas, weights)`` of the BMM, ``(means, variances, weights)`` of the GMM: the EM
    start, and what an invalid fit or ``initial_state`` holds.
    """
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    if kind == "bmm":
        return f32([1.0, 2.0]), f32([2.0, 1.0]), f32([0.5, 0.5])
    if kind == "gmm":
        return f32([1 / 3, 2 / 3]), f32([1 / 18, 1 / 18]), f32([0.5, 0.5])
    raise ValueError(f"unknown noise model {kind!r}; allowed: 'bmm', 'gmm'")


def initial_state(kind: str, num_classes: int = 0) -> MixtureState:
    """An invalid (uninformative) state: posteriors 0.5 until the first fit.

    ``num_classes > 0``: a per-class state, every leaf with a leading axis of that size.
    """
    first, second, weights = initial_params(kind)
    common = dict(
        weights=weights,
        lo=jnp.asarray(0.0, jnp.float32),
        hi=jnp.asarray(1.0, jnp.float32),
        noisy_component=jnp.asarray(1, jnp.int32),
        lookup=jnp.full((LOOKUP_RESOLUTION,), 0.5, jnp.float32),
        valid=jnp.asarray(False),
    )
    if kind == "bmm":
        state = BMMState(alphas=first, betas=second, **common)
    else:
        state = GMMState(means=first, variances=second, **common)
    if int(num_classes) < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    if num_classes:
        state = jax.tree.map(lambda v: jnp.broadcast_to(v, (num_classes, *v.shape)), state)
    return state


def is_per_class(state: MixtureState) -> bool:
    """Whether ``state`` holds one mixture per class (every leaf has a leading class axis)."""
    return state.weights.ndim == 2


def _params(state: MixtureState, ndim: int = 0) -> tuple[Pair, Pair, Pair]:
    """A state's (alphas, betas, weights) or (means, variances, weights).

    An ordinary state gives its (2,) leaves. A per-class state gives pairs ``leaf[..., k]`` with
    ``ndim - 1`` trailing unit axes after the class axis, to broadcast against ``x``.
    """
    if isinstance(state, BMMState):
        leaves = (state.alphas, state.betas, state.weights)
    elif isinstance(state, GMMState):
        leaves = (state.means, state.variances, state.weights)
    else:
        raise TypeError(f"expected a BMMState or GMMState, got {type(state).__name__}")
    if state.weights.ndim == 1:
        return leaves
    batch = state.weights.shape[:-1]
    pad = (1,) * max(ndim - len(batch), 0)
    return tuple([v[..., k].reshape(batch + pad) for k in range(2)] for v in leaves)


def _choose_noisy(means: jax.Array, noisy: str) -> jax.Array:
    if noisy == "initial":
        return jnp.asarray(1, jnp.int32)
    return jnp.argmax(means).astype(jnp.int32)


def _check_noisy(noisy: str) -> None:
    if noisy not in ("initial", "max_mean"):
        raise ValueError(f"noisy must be 'initial' or 'max_mean', got {noisy!r}")


def _check_iters(max_iters: int) -> None:
    if int(max_iters) < 1:
        raise ValueError(f"max_iters must be >= 1, got {max_iters}")


def summary(state: MixtureState) -> dict:
    """Host-side dict of the fitted parameters, for logging (one small transfer).

    A per-class state gives ``scope: "class"`` and one list entry per class for every field; a
    GMM fitted with ``normalize="minmax"`` or ``"none"`` adds ``normalize``.
    """
    s = jax.device_get(state)
    tolist = lambda v: np.asarray(v).tolist()  # noqa: E731
    if is_per_class(s):
        out = {
            "scope": "class",
            "valid": tolist(s.valid),
            "noisy_component": tolist(s.noisy_component),
            "weights": tolist(s.weights),
            "lo": tolist(s.lo),
            "hi": tolist(s.hi),
        }
    else:
        out = {
            "valid": bool(s.valid),
            "noisy_component": int(s.noisy_component),
            "weights": np.asarray(s.weights).tolist(),
            "lo": float(s.lo),
            "hi": float(s.hi),
        }
    if isinstance(s, BMMState):
        out.update(alphas=np.asarray(s.alphas).tolist(), betas=np.asarray(s.betas).tolist())
    else:
        out.update(means=np.asarray(s.means).tolist(), variances=np.asarray(s.variances).tolist())
    if s.normalize != "percentile":  # absent for the default mapping
        out["normalize"] = s.normalize
    return out
