"""The per-sample forward pass: eval-mode losses and logits of a whole device-resident split.

One jitted function per network and split shape: the split is cut into fixed-size chunks of
indices (the tail wraps to the start and is trimmed), and ``jax.lax.map`` runs the network on
one chunk after the other inside the compiled program, so nothing returns to the host between
chunks and memory stays at one chunk's activations. On a mesh each chunk is sharded over the
devices; the outputs of a split the mesh divides (the training set) are sharded by sample, the
others (the test set) replicated.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxnoise import data as data_lib
from jaxnoise import losses, network, parallel
from jaxnoise.progress import log


def chunk_size(n: int, chunk: int, devices: int) -> int:
    """The chunk a split of ``n`` samples runs in: at most ``chunk`` and ``n``, whole devices."""
    return max(devices, min(chunk, n) // devices * devices)


def make_forward(graphdef, config: Any, mean, std, mesh=None):
    """``forward(state, images, labels, key=None) -> (losses (N,), logits (N, C))``, jitted.

    ``state`` holds ``params``, ``frozen``, ``stats``. With a ``key``, every sample is augmented
    (crop + flip of ``config.data``) with its own key ``fold_in(key, index)``: the same views on
    any chunking or device count (the published tracking pass augments)."""
    mean, std = jnp.asarray(mean), jnp.asarray(std)
    devices = mesh.size if mesh is not None else 1
    compiled: set = set()

    def run(state, images, labels, key):
        n = images.shape[0]
        c = chunk_size(n, config.eval_batch_size, devices)
        steps = -(-n // c)
        chunks = (jnp.arange(steps * c, dtype=jnp.int32) % n).reshape(steps, c)

        def one(idx):
            x = parallel.constrain_batch(images[idx], mesh)
            if key is not None:
                keys = jax.vmap(jax.random.fold_in, (None, 0))(key, idx)
                x = jax.vmap(
                    lambda img, k: data_lib.augment(
                        img[None], k, padding=config.data.crop_padding, flip=config.data.flip
                    )[0]
                )(x, keys)
            x = data_lib.normalize(x, mean, std)
            logits, _ = network.apply(
                graphdef, state["params"], state["frozen"], state["stats"], x, False
            )
            return losses.cross_entropy(logits, parallel.constrain_batch(labels[idx], mesh)), logits

        loss, logits = jax.lax.map(one, chunks)
        loss, logits = loss.reshape(-1)[:n], logits.reshape(steps * c, -1)[:n]
        if mesh is not None:  # the training set sharded by sample, the test set replicated
            whole = parallel.replicated(mesh)
            loss, logits = (
                jax.lax.with_sharding_constraint(
                    a, parallel.sample_sharding(mesh, a.ndim) if n % devices == 0 else whole
                )
                for a in (loss, logits)
            )
        return loss, logits

    jitted = jax.jit(run)

    def forward(state, images, labels, key=None):
        signature = (images.shape, key is None)
        if signature not in compiled:  # the first call of a split's shape compiles
            compiled.add(signature)
            log(
                f"compiling the evaluation pass ({images.shape[0]} samples in chunks of "
                f"{chunk_size(images.shape[0], config.eval_batch_size, devices)}; first call)"
            )
        return jitted(state, images, labels, key)

    return forward


def accuracy(logits: jax.Array, labels: jax.Array) -> float:
    """Top-1 accuracy in percent (a host float)."""
    return 100.0 * float(jnp.mean(jnp.argmax(logits, -1) == labels))
