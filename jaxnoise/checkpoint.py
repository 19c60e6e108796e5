"""Checkpoints (orbax), config checks on resume, and clean stops on SIGTERM/SIGINT.

A checkpoint holds every array of the train state (params, optimizer, batch statistics, mixture
state, step), the per-sample posteriors/predictions used by the next epoch, the noisy labels,
and JSON metadata (epoch, best accuracy, metric history). Randomness is derived from
``fold_in(seed, epoch, step)``, so nothing else is needed for an exact resume. orbax writes each
checkpoint to a temporary directory and renames it when complete, so a process killed while
writing leaves the previous checkpoint restorable.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

# Fields that do not change results: a resumed run may differ in these.
_NON_RESULT_FIELDS = {"log_every_steps", "keep_checkpoints", "data.cache_dir", "data.data_dir"}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def check_workdir_config(workdir: str, resolved: dict, *, fresh: bool) -> None:
    """Refuse to resume a workdir that holds a run with a different config (unless fresh)."""
    path = os.path.join(workdir, "config.json")
    if fresh:
        for name in ("checkpoints", "metrics.jsonl", "config.json", "per_sample.npz"):
            p = os.path.join(workdir, name)
            if os.path.isdir(p):
                shutil.rmtree(p)
            elif os.path.exists(p):
                os.remove(p)
        return
    if not os.path.exists(path):
        return
    with open(path) as f:
        old = _flat(json.load(f))
    new = _flat(resolved)
    diff = sorted(
        k for k in set(old) | set(new) if k not in _NON_RESULT_FIELDS and old.get(k) != new.get(k)
    )
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:8])
        raise ValueError(
            f"workdir {workdir!r} holds a run with a different config ({shown}); use another "
            "--workdir, or pass --fresh to discard that run and start again"
        )


class Checkpointer:
    """Epoch checkpoints of an arbitrary pytree of arrays plus JSON metadata."""

    def __init__(self, workdir: str, *, keep: int = 2):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    @staticmethod
    def _leaves(tree: Any) -> tuple[dict, Any]:
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        return {f"leaf_{i:05d}": leaf for i, leaf in enumerate(leaves)}, treedef

    def save(self, epoch: int, tree: Any, meta: dict) -> None:
        """Save the pytree of (possibly sharded, multi-host) arrays; collective on all hosts.

        The arrays are copied on device first, so the caller may donate its buffers to the next
        step while orbax writes in the background.
        """
        flat, _ = self._leaves(tree)
        flat = {k: jnp.array(v, copy=True) for k, v in flat.items()}
        self.manager.save(
            epoch,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(flat), meta=ocp.args.JsonSave(meta)
            ),
        )

    def restore_latest(self, template: Any) -> tuple[Any, dict] | None:
        """Restore the newest checkpoint into the structure and shardings of ``template``."""
        step = self.manager.latest_step()
        if step is None:
            return None
        flat, treedef = self._leaves(template)
        target = {
            k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding) for k, v in flat.items()
        }
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
            ),
        )
        leaves = [restored.state[k] for k in sorted(restored.state)]
        if len(leaves) != treedef.num_leaves:
            raise RuntimeError(f"checkpoint {step} in {self.directory} has a different structure")
        return jax.tree_util.tree_unflatten(treedef, leaves), dict(restored.meta)

    def wait(self) -> None:
        """Block until asynchronous saves are on disk."""
        self.manager.wait_until_finished()


class PreemptionGuard:
    """Turn SIGTERM/SIGINT into a request to stop at the next safe point (a second SIGINT
    interrupts at once)."""

    def __init__(self):
        self.stop_requested = False
        self._old: dict = {}

    def _handler(self, signum, frame):
        if self.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop_requested = True

    def __enter__(self) -> PreemptionGuard:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
