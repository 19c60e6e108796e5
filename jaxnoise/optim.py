"""The optimizer of every method: a direction without a rate, times the rate of the step's position.

``direction(config)`` is SGD with momentum and PyTorch's coupled weight decay (``grad + wd *
param``, then the momentum trace) or Adam (``config.optimizer``), without a learning rate;
``apply`` scales the direction by ``-lr`` and adds it to the parameters. A step computes ``lr``
from its own position (``schedule.lr(config, epoch)``), so one mechanism serves loops whose
position comes from a step counter (the bootstrap methods) and loops whose epochs have varying
numbers of steps (DivideMix). ``apply(direction(config), ...)`` with the rate ``lr`` equals
``optax.sgd(lr, momentum)`` / ``optax.adam(lr)`` after ``optax.add_decayed_weights`` bit for bit.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def direction(config: Any) -> optax.GradientTransformation:
    """The update direction of ``config.optimizer`` (no learning rate): SGD or Adam."""
    decay = optax.add_decayed_weights(config.weight_decay)
    if config.optimizer == "sgd":
        return optax.chain(decay, optax.trace(decay=config.momentum))
    return optax.chain(decay, optax.scale_by_adam())


def apply(tx: optax.GradientTransformation, grads, opt_state, params, lr) -> tuple[Any, Any]:
    """One update at rate ``lr`` (a scalar, traced or not): ``(new params, new opt_state)``."""
    updates, opt_state = tx.update(grads, opt_state, params)
    updates = jax.tree.map(lambda u: jnp.asarray(-lr, u.dtype) * u, updates)
    return optax.apply_updates(params, updates), opt_state
