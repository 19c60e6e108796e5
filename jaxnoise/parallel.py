"""Data parallelism over all devices and hosts with standard JAX machinery.

A 1-D mesh with axis ``"data"`` spans every device of every process. Parameters, optimizer state
and the mixture state are replicated; the device-resident training set and every per-sample
array (noisy labels, losses, posteriors, clean logits) are sharded along the sample axis, and
each train batch along the batch axis. The step is one ``jax.jit`` program that XLA's SPMD
partitioner splits over the mesh (GSPMD):

- gathering a batch from the sharded training set is a local masked gather plus an all-reduce
  of the batch itself (the table never moves);
- BatchNorm's mean/variance over the batch axis become all-reduces, so batch statistics are
  over the *global* batch, exactly as on one device with the same batch size (the published
  setting: 128 samples); gradients are all-reduced likewise;
- the mixture fit needs only reductions over the sharded loss array: one global fit, no gather.

Multi-host: ``initialize`` calls ``jax.distributed.initialize`` (explicit coordinator flags, or
auto-detection on SLURM / TPU / other supported clusters); each process places only its own
shard of the data on its devices (``host_shard`` + ``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

_initialized = False


def initialize(config) -> None:
    """Join a multi-process job if configured (idempotent); no-op for single-process runs."""
    global _initialized
    d = config.distributed
    if _initialized or not (d.coordinator_address or d.auto):
        return
    # Must run before anything touches the backend. CPU collectives (used only by CPU devices,
    # e.g. tests on one machine) go over gloo.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if d.coordinator_address:
        jax.distributed.initialize(
            coordinator_address=d.coordinator_address,
            num_processes=d.num_processes,
            process_id=d.process_id,
        )
    else:  # SLURM, TPU pods, Open MPI, ... detected by jax
        jax.distributed.initialize()
    _initialized = True


def make_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D ("data",) mesh over ``num_devices`` devices (0 = all devices of all processes)."""
    devices = jax.devices()
    n = num_devices or len(devices)
    if n > len(devices):
        raise ValueError(
            f"config.mesh.num_devices = {num_devices} but only {len(devices)} devices are visible"
        )
    if jax.process_count() > 1 and n != len(devices):
        raise ValueError("multi-process runs use every device: set config.mesh.num_devices = 0")
    return jax.make_mesh((n,), ("data",), axis_types=(AxisType.Auto,), devices=devices[:n])


def sample_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Sharding of a per-sample array: first axis over "data", the rest whole."""
    return NamedSharding(mesh, P("data", *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of a replicated array."""
    return NamedSharding(mesh, P())


def usable_samples(n: int, mesh: Mesh) -> int:
    """The largest sample count <= n that the mesh divides evenly."""
    return n - n % mesh.size


def host_shard(n: int, mesh: Mesh) -> slice:
    """The contiguous range of samples whose shards live on this process's devices."""
    sharding = sample_sharding(mesh)
    starts = sorted(
        idx[0].start or 0
        for d, idx in sharding.devices_indices_map((n,)).items()
        if d.process_index == jax.process_index()
    )
    per = n // mesh.size
    lo = starts[0]
    hi = starts[-1] + per
    if hi - lo != per * len(starts):
        raise RuntimeError("this process's devices do not hold a contiguous block of samples")
    return slice(lo, hi)


def put_samples(mesh: Mesh, array: np.ndarray) -> jax.Array:
    """Place a host per-sample array (the full array, on every host) sharded over the mesh;
    each process transfers only its own block."""
    array = np.asarray(array)
    sharding = sample_sharding(mesh, array.ndim)
    local = array[host_shard(array.shape[0], mesh)]
    return jax.make_array_from_process_local_data(sharding, local, array.shape)


def put_replicated(mesh: Mesh, tree):
    """Replicate a pytree of arrays over the mesh."""
    sharding = replicated(mesh)
    return jax.tree_util.tree_map(
        lambda a: (
            jax.make_array_from_process_local_data(sharding, np.asarray(a), np.shape(a))
            if jax.process_count() > 1
            else jax.device_put(a, sharding)
        ),
        tree,
    )


def gather_to_host(x: jax.Array) -> np.ndarray:
    """The full value of a (possibly multi-host sharded) array on every host (collective)."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def constrain_batch(x: jax.Array, mesh: Mesh | None) -> jax.Array:
    """Inside jit: shard a batch along its first axis over the mesh."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, sample_sharding(mesh, x.ndim))


def zeros_like_sharded(mesh: Mesh, shape: tuple, dtype, fill=0.0) -> jax.Array:
    """A per-sample array filled with a constant, created sharded (no host copy)."""
    return jax.jit(
        lambda: jnp.full(shape, fill, dtype), out_shardings=sample_sharding(mesh, len(shape))
    )()
