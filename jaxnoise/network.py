"""A run's network from its config: build it, split it into the arrays a step trains, apply it.

``apply`` is the one forward pass every step and evaluation uses: the model merged from its
graph definition and arrays, called in train or eval mode, logits cast to float32 (the losses,
posteriors and mixture fits are float32 also under bfloat16 compute).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxnoise import models


def create(config: Any, num_classes: int, in_channels: int, seed: int | None = None) -> nnx.Module:
    """The configured model (local weights loaded if given), initialised from ``seed``
    (default ``config.seed``), in ``config.compute_dtype``."""
    options = {"shortcut": config.shortcut} if config.model == "preact_resnet18" else {}
    if config.model == "mlp":
        options = {"hidden": tuple(config.mlp_hidden)}
    model = models.create_model(
        config.model,
        num_classes,
        width=config.width,
        in_channels=in_channels,
        rngs=nnx.Rngs(config.seed if seed is None else seed),
        **options,
    )
    if config.weights:
        models.load_resnet50_weights(model, config.weights)
    return models.set_compute_dtype(model, config.compute_dtype)


def split(model: nnx.Module, config: Any) -> tuple:
    """(graphdef, trainable params, frozen params, batch stats)."""
    trainable = models.trainable_filter(config.model, config.freeze_backbone)
    return nnx.split(model, trainable, nnx.Param, nnx.BatchStat)


def apply(graphdef, params, frozen, stats, x: jax.Array, train: bool):
    """Forward pass of the merged model; returns (float32 logits, new batch stats)."""
    model = nnx.merge(graphdef, params, frozen, stats, copy=True)
    logits = model(x, train=train).astype(jnp.float32)  # losses in float32 under bf16 compute
    return logits, nnx.state(model, nnx.BatchStat)
