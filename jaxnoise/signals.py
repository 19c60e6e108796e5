"""Per-sample loss signals accumulated over epochs, for the noise model to fit.

``loss_signal`` selects what the mixture is fitted to each epoch:

- ``"epoch"`` (default, as published): this epoch's per-sample loss, unchanged.
- ``"ema"``: exponential moving average over epochs with momentum ``m`` (``signal_momentum``):
  ``s_1 = l_1``, ``s_t = m s_(t-1) + (1 - m) l_t`` (bias-free start).
- ``"mean_k"``: the mean of the last ``k`` epochs' losses (``signal_k``; DivideMix uses k = 5
  at 90% noise); before ``k`` epochs, the mean of those seen so far.

``init`` and ``update`` are pure and jittable (``kind`` static); every array is per-sample along
its first axis, so the state shards over the sample axis like the losses and ``update`` is
elementwise (no communication). Non-finite losses propagate into the signal (the mixture then
marks its fit invalid): for ``"ema"`` a non-finite loss stays in that sample's average for
good, for ``"mean_k"`` until it leaves the window.
"""

from __future__ import annotations

import operator
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxnoise import choices

KINDS = choices.LOSS_SIGNALS


class SignalState(NamedTuple):
    """Accumulated losses (a pytree). ``count``: epochs seen so far (int32 scalar)."""

    buffer: jax.Array  # epoch: (0,); ema: (N,) running average; mean_k: (N, k) ring buffer
    count: jax.Array


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"loss_signal must be one of {KINDS}, got {kind!r}")


def _check_momentum(momentum) -> None:
    try:
        m = float(momentum)
    except jax.errors.ConcretizationTypeError:  # traced: cannot be checked here
        return
    except (TypeError, ValueError):
        m = float("nan")
    if not 0.0 <= m < 1.0:
        raise ValueError(f"signal_momentum must be in [0, 1), got {momentum!r}")


def _check_k(k) -> int:
    try:
        ki = operator.index(k)
    except TypeError:
        ki = 0
    if isinstance(k, bool) or ki < 1:
        raise ValueError(f"signal_k must be an integer >= 1, got {k!r}")
    return ki


def init(kind: str, n: int, k: int = 5) -> SignalState:
    """The empty state for ``n`` samples (``k``: window of ``"mean_k"``, ignored otherwise)."""
    _check_kind(kind)
    k = _check_k(k)
    shape = {"epoch": (0,), "ema": (n,), "mean_k": (n, k)}[kind]
    return SignalState(buffer=jnp.zeros(shape, jnp.float32), count=jnp.zeros((), jnp.int32))


def update(
    state: SignalState, losses: jax.Array, *, kind: str, momentum: float = 0.9
) -> tuple[SignalState, jax.Array]:
    """Add this epoch's per-sample ``losses``; return the new state and the signal to fit."""
    _check_kind(kind)
    _check_momentum(momentum)
    count = state.count + 1
    if kind == "epoch":
        return SignalState(state.buffer, count), losses
    losses = jnp.asarray(losses, jnp.float32)
    shape = state.buffer.shape
    if kind == "ema":
        ok = shape == losses.shape
    else:
        ok = len(shape) == losses.ndim + 1 and shape[:-1] == losses.shape and shape[-1] >= 1
    if not ok:
        raise ValueError(
            f"a {kind!r} signal state has buffer shape {shape}, which does not fit losses of"
            f" shape {losses.shape} (was it made by init({kind!r}, ...)?)"
        )
    if kind == "ema":
        m = jnp.asarray(momentum, jnp.float32)
        ema = m * state.buffer + (1.0 - m) * losses
        signal = jnp.where(state.count == 0, losses, ema)  # where: no NaN from the empty buffer
        return SignalState(signal, count), signal
    k = state.buffer.shape[-1]
    buffer = state.buffer.at[..., state.count % k].set(losses)  # epoch t: slot (t - 1) % k
    filled = jnp.minimum(count, k)  # slots 0 .. filled - 1 hold the last `filled` epochs
    slots = jnp.arange(k) < filled
    signal = jnp.sum(jnp.where(slots, buffer, 0.0), axis=-1) / filled.astype(jnp.float32)
    return SignalState(buffer, count), signal
