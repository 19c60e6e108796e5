"""Checkpoints (orbax): named items, checksums, fall-back past damaged ones (stops on signals:
:mod:`jaxnoise.stops`).

A checkpoint holds every array of the train state (params, optimizer, batch statistics, mixture
state, step, the running loss sum), the per-sample posteriors/predictions used by the next epoch,
the noisy labels, and JSON metadata (last completed epoch, steps done in the current epoch, best
accuracy, metric history). Randomness is derived from ``fold_in(seed, epoch, step)``, so nothing
else is needed for an exact resume, also from the middle of an epoch. The orbax step number of a
checkpoint is the number of train steps done, so checkpoints order correctly whether they were
taken at the end of an epoch or by a preemption in the middle of one.

On disk, checkpoint N of a tree ``{"state": ..., "aux": ..., "labels": ...}`` is
``checkpoints/N/{state,aux,labels,meta}``: one orbax item per top-level key, each array stored
under its key path (``params.convs.0.kernel.value``; a bare array under the item's name), and the
JSON item ``meta``, which also records the item names and the number of devices the run used.
A restore compares names, shapes and dtypes with the template first: a checkpoint of another
structure is refused naming the first difference (:class:`CheckpointMismatch`).

Integrity: the metadata item also holds a 64-bit checksum of every saved array
(``meta["checkpoint"]["checksums"]``: ``{item: {array name: 16 hex digits}}``, see
:func:`array_checksums`) and one of the JSON metadata itself
(``meta["checkpoint"]["meta_checksum"]``, see :func:`meta_checksum`). A restore verifies both;
a mismatch is handled as an unreadable checkpoint (below). The checksums detect accidental
damage (bit rot, torn or overwritten files, a faulty disk or network filesystem), not
tampering: whoever edits a checkpoint can recompute them. A checkpoint written before checksums
existed restores without the check.

orbax writes each checkpoint to a temporary directory and renames it when complete, so a process
killed while writing leaves the previous checkpoint restorable; the unfinished temporary
directory is removed when the next run opens the workdir. A committed checkpoint that cannot be
read (damaged files, a checksum mismatch) is set aside as ``N.unreadable`` and the previous one
is restored, with a warning.

The run files (config.json, dataset.json, atomic writes) are :mod:`jaxnoise.workdir`; their
names are re-exported here.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax import lax

from jaxnoise.progress import log
from jaxnoise.workdir import (  # noqa: F401  (re-exported: train.py, main.py and tests use them)
    FILE_MODE,
    WorkdirConflict,
    atomic_write,
    atomic_write_text,
    check_workdir_config,
    dropping_unraisable,
)

META = "meta"  # the JSON item; the other items are named by the tree's top-level keys
INFO = "checkpoint"  # reserved key of the JSON item: {"items": [...], "num_devices": N}
_ITEM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_OLD_LEAF = re.compile(r"leaf_\d{5}")  # the anonymous arrays of checkpoints before names
_FRESH = "use another --workdir, or pass --fresh to discard that run and start again"


class CheckpointMismatch(ValueError):
    """A checkpoint whose structure differs from this run's (another code version or config)."""


@contextlib.contextmanager
def _quiet_failed_reads() -> Iterator[None]:
    """Orbax's reads of a damaged checkpoint leave coroutines whose error Python prints with a
    traceback when they are collected (``Exception ignored in: <coroutine ...
    _read_array_index_and_device_put>``). The damage is reported in one warning line instead;
    any other unraisable error is printed as usual."""
    previous = sys.unraisablehook
    sys.unraisablehook = dropping_unraisable(
        previous, lambda unraisable: "_read_array_index" in repr(unraisable.object)
    )
    try:
        yield
    finally:
        gc.collect()  # collect the failed reads' coroutines while the hook is in place
        sys.unraisablehook = previous


class _Unreadable(Exception):
    """A checkpoint whose files are damaged or incomplete."""


def _key_name(key: Any) -> str:
    """A key path entry as orbax names it (DictKey, GetAttrKey, SequenceKey, FlattenedIndexKey)."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _is_bare(subtree: Any) -> bool:
    """Whether a top-level entry is a single array (or scalar), not a tree of them."""
    return subtree is not None and jax.tree_util.treedef_is_leaf(
        jax.tree_util.tree_structure(subtree)
    )


def _item(name: str, subtree: Any) -> Any:
    """What one top-level entry is stored as (orbax stores trees): a bare array as
    ``{name: array}``."""
    return {name: subtree} if _is_bare(subtree) else subtree


def _named(item: Any) -> dict[str, Any]:
    """``{orbax name, e.g. 'params.convs.0.kernel.value': leaf}`` in flatten order."""
    flat = jax.tree_util.tree_flatten_with_path(item)[0]
    named = {".".join(_key_name(k) for k in path): leaf for path, leaf in flat}
    if len(named) != len(flat):
        raise ValueError("two arrays of the checkpointed tree have the same key path")
    return named


def _spec(x: Any) -> str:
    """Shape and dtype of an array, a scalar or orbax's metadata of one: '(32, 10) float32'."""
    if not hasattr(x, "dtype"):  # a Python scalar
        x = np.asarray(x)
    return f"{tuple(x.shape)} {np.dtype(x.dtype).name}"


def _target(x: Any) -> Any:
    """The restore target of a template leaf: its shape, dtype and sharding."""
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x


def device_count(tree: Any) -> int:
    """The number of devices the arrays of ``tree`` live on (the mesh size of a sharded run)."""
    counts = [
        len(x.sharding.device_set)
        for x in jax.tree_util.tree_leaves(tree)
        if isinstance(x, jax.Array)
    ]
    return max(counts) if counts else jax.device_count()


def tree_nbytes(tree: Any) -> int:
    """The bytes of every array of ``tree`` (global, not per host): about what one checkpoint
    of it takes on disk (orbax compresses, so usually less), for :func:`workdir.check_space`."""
    return sum(
        int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize
        for x in jax.tree_util.tree_leaves(tree)
        if hasattr(x, "dtype")
    )


def _leaves(metadata_tree: Any) -> list:
    """The array metadata of an orbax item (name, shape, dtype), in its order."""
    return jax.tree_util.tree_leaves(metadata_tree)


def _differences(item: str, subtree: Any, disk: dict[str, Any]) -> list[str]:
    """How the arrays of one item on disk (``{name: metadata}``) differ from ``subtree``'s."""
    want = _named(_item(item, subtree))

    def shown(name: str) -> str:  # the key path in the whole tree
        return item if _is_bare(subtree) else f"{item}.{name}"

    out = []
    for n, x in want.items():
        if n not in disk:
            out.append(f"{shown(n)} is missing from the checkpoint")
        elif _spec(disk[n]) != _spec(x):
            out.append(f"{shown(n)} is {_spec(disk[n])} in the checkpoint, {_spec(x)} in this run")
    out += [
        f"{item}.{n} is in the checkpoint but not in this run"
        for n in sorted(set(disk) - set(want))
    ]
    return out


def _unreadable(failed: list[tuple[int, str]], directory: str) -> str:
    if len(failed) == 1:
        return f"checkpoint {failed[0][0]} in {directory} is unreadable ({failed[0][1]})"
    steps, reasons = ", ".join(str(s) for s, _ in failed), "; ".join(f"{s}: {r}" for s, r in failed)
    return f"checkpoints {steps} in {directory} are unreadable ({reasons})"


def _reason(e: BaseException) -> str:
    """One short line describing why a checkpoint could not be read."""
    text = " ".join(str(e).split())
    if not isinstance(e, _Unreadable):
        text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# The array checksum (see array_checksums): per sum, an odd multiplier and an offset that turn a
# word's position into its key (Weyl sequences with the golden ratio and murmur3's constants).
_SUMS = ((0x9E3779B9, 0x7F4A7C15), (0x85EBCA77, 0xC2B2AE3D))


def _fmix32(h: jax.Array) -> jax.Array:
    """murmur3's 32-bit finalizer: a bijection of uint32 whose output bits each depend on all
    input bits."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def _words(x: jax.Array) -> jax.Array:
    """The bits of an array as uint32 words: one per element (two, in a trailing axis, per 64-bit
    element); narrower elements are widened so that distinct values stay distinct."""
    dt = jnp.dtype(x.dtype)
    if jnp.issubdtype(dt, jnp.complexfloating):
        return _words(jnp.stack([x.real, x.imag], axis=-1))
    if dt.itemsize < 4 and jnp.issubdtype(dt, jnp.floating):
        if dt.itemsize == 1:  # float8 (and float4) values are exact in float32
            return lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
        return lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    if dt.itemsize < 4:  # bool and narrow integers, by value
        wide = jnp.int32 if jnp.issubdtype(dt, jnp.signedinteger) else jnp.uint32
        return lax.bitcast_convert_type(x.astype(wide), jnp.uint32)
    return lax.bitcast_convert_type(x, jnp.uint32)


def _checksum(x: jax.Array) -> jax.Array:
    """(2,) uint32: for each of _SUMS, sum mod 2**32 over the words w_i (i: the word's position
    in C order, mod 2**32) of fmix32(w_i ^ (i * multiplier + offset))."""
    w = _words(x)
    pos = jnp.zeros(w.shape, jnp.uint32)
    stride = 1
    for d in reversed(range(w.ndim)):  # from iotas, so a sharded array is never gathered
        pos = pos + lax.broadcasted_iota(jnp.uint32, w.shape, d) * jnp.uint32(stride % 2**32)
        stride *= w.shape[d]
    keys = [pos * jnp.uint32(a) + jnp.uint32(b) for a, b in _SUMS]
    return jnp.stack([jnp.sum(_fmix32(w ^ k), dtype=jnp.uint32) for k in keys])


_checksum_jit = jax.jit(_checksum)


def _to_host(x: jax.Array) -> np.ndarray:
    """A small result of a (possibly multi-host) computation, on every host."""
    if x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def array_checksums(items: dict[str, Any]) -> dict[str, dict[str, str]]:
    """``{item: {array name: 16 hex digits}}`` of a dict of trees as stored; collective.

    Each array's 32-bit words w_i (its bits: float32 bitcast to uint32, narrower types widened,
    64-bit types split in two) are mixed with their position i by murmur3's finalizer (a
    bijection of uint32), fmix32(w_i ^ (i * m + c)), and summed mod 2**32, for two pairs of odd
    multiplier m and offset c: 64 bits. Computed on the arrays' devices in jit, as reductions over
    the (sharded, possibly multi-host) arrays: only the sums leave the devices, and they do not
    depend on the sharding. Any change of one word changes both sums (the mix is a bijection);
    any other damage changes each mixed word by a pseudo-random amount, so the two sums both
    stay the same with probability about 2**-64. (Sums of the raw words, even weighted by odd
    a_i, miss structured damage: flipping bit 31 of two words adds 2**31 * (+-a_i +- a_j), which
    is 0 mod 2**32.)
    This detects accidental damage, not tampering: anyone can recompute a checksum.
    """
    named = [(k, n, x) for k, item in items.items() for n, x in _named(item).items()]
    # One small program per shape, dtype and sharding (params and momentum share theirs). On one
    # process all are dispatched before the first result is read. On several, each program is a
    # collective across the processes, and XLA:CPU may run programs in flight concurrently, so
    # two processes could enter their collectives in different orders and wait on each other
    # for ever (seen: a two-process DivideMix run hung at a save): one at a time there.
    arrays = [x if isinstance(x, jax.Array) else jnp.asarray(x) for _, _, x in named]
    if jax.process_count() > 1:
        sums = [_to_host(_checksum_jit(x)) for x in arrays]
    else:
        sums = [_to_host(s) for s in [_checksum_jit(x) for x in arrays]]
    out: dict[str, dict[str, str]] = {k: {} for k in items}
    for (k, n, _), (a, b) in zip(named, sums):
        out[k][n] = f"{int(a):08x}{int(b):08x}"
    return out


def meta_checksum(meta: dict) -> str:
    """16 hex digits (blake2b) of the JSON metadata as stored, with sorted keys, less the
    checksum itself (``meta["checkpoint"]["meta_checksum"]``)."""
    info = {k: v for k, v in meta.get(INFO, {}).items() if k != "meta_checksum"}
    stored = json.loads(json.dumps({**meta, INFO: info}))  # as it reads back: str keys, lists
    text = json.dumps(stored, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _verify_meta(meta: dict) -> None:
    """_Unreadable if the metadata has checksums (it has both or neither) and does not match its
    own."""
    info = meta.get(INFO)
    if isinstance(info, dict) and ("checksums" in info or "meta_checksum" in info):
        if info.get("meta_checksum") != meta_checksum(meta) or "checksums" not in info:
            raise _Unreadable("its metadata does not match its checksum")


def _verify_arrays(info: dict, restored: dict[str, Any], items: dict[str, Any]) -> None:
    """_Unreadable naming the first restored array that does not match its stored checksum (a
    checkpoint of before checksums is not checked)."""
    stored = info.get("checksums")
    if stored is None:
        return
    for k, arrays in array_checksums(restored).items():
        for n, h in arrays.items():
            if stored.get(k, {}).get(n) != h:
                shown = k if _is_bare(items[k]) else f"{k}.{n}"
                raise _Unreadable(f"its array {shown} does not match its checksum")


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


class Checkpointer:
    """Checkpoints of a dict of pytrees of arrays plus JSON metadata, numbered by train step.

    Each top-level key of the tree is one orbax item named by it (letters, digits, ``_.-``;
    not ``meta``); the JSON metadata may not use the key ``checkpoint``.
    """

    def __init__(self, workdir: str, *, keep: int = 2):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=True,
                # Remove temporary directories of saves that a killed process never finished.
                cleanup_tmp_directories=True,
            ),
        )

    @staticmethod
    def _items(tree: Any) -> dict[str, Any]:
        """The top-level entries that hold arrays (entries without any leaf are not stored)."""
        if not isinstance(tree, dict):
            raise TypeError(f"a checkpointed tree is a dict of named entries, not {type(tree)}")
        for k in tree:
            if not isinstance(k, str) or not _ITEM_NAME.fullmatch(k) or k == META:
                raise ValueError(f"{k!r} cannot name a checkpoint item")
        return {k: v for k, v in tree.items() if jax.tree_util.tree_leaves(v)}

    def save(self, step: int, tree: dict, meta: dict, *, num_devices: int | None = None) -> None:
        """Save the tree of (possibly sharded, multi-host) arrays; collective on all hosts.

        ``num_devices`` (default: the devices the arrays live on) is recorded for the restore.
        The arrays are copied on device first, so the caller may donate its buffers to the next
        step while orbax writes in the background; the checksums of the copies are stored in the
        metadata (:func:`array_checksums`, :func:`meta_checksum`).
        """
        if INFO in meta:
            raise ValueError(f"{INFO!r} is a reserved key of the checkpoint metadata")
        items = self._items(tree)
        items = jax.tree_util.tree_map(
            lambda x: jnp.array(x, copy=True) if isinstance(x, jax.Array) else x, items
        )
        stored = {k: _item(k, v) for k, v in items.items()}
        info = {
            "items": sorted(items),
            "num_devices": num_devices or device_count(tree),
            "checksums": array_checksums(stored),  # of the copies, which are what is written
        }
        info["meta_checksum"] = meta_checksum({**meta, INFO: info})
        args = {k: ocp.args.StandardSave(v) for k, v in stored.items()}
        self.manager.save(
            step, args=ocp.args.Composite(**args, **{META: ocp.args.JsonSave({**meta, INFO: info})})
        )

    def restore_latest(
        self, template: dict, *, num_devices: int | None = None
    ) -> tuple[dict, dict] | None:
        """Restore the newest readable checkpoint into the structure and shardings of
        ``template``: ``(tree, meta)``, or None if there is no checkpoint.

        An unreadable newest checkpoint (damaged files, or arrays or metadata that do not match
        their checksums) is set aside (``N.unreadable``) and the one before is restored, with a
        warning; if none is readable, ValueError. A checkpoint written before checksums existed
        is restored without the check. A checkpoint of another structure raises
        :class:`CheckpointMismatch`. A checkpoint written on another number of devices than
        ``num_devices`` (default: the template's) restores resharded, with a warning.
        """
        self._items(template)
        here = num_devices or device_count(template)
        failed: list[tuple[int, str]] = []
        restored = None
        with _quiet_failed_reads():
            for step in sorted(self.manager.all_steps(), reverse=True):
                try:
                    restored = self._restore(step, template, here)
                    break
                except CheckpointMismatch:
                    raise
                except Exception as e:  # damaged files: orbax/tensorstore/JSON errors of any type
                    failed.append((step, _reason(e)))
        if restored is None and not failed:
            return None
        if restored is None:
            reasons = "; ".join(f"{s}: {r}" for s, r in failed)
            raise ValueError(f"no checkpoint in {self.directory} is readable ({reasons}); {_FRESH}")
        tree, meta, written = restored
        if jax.process_count() > 1:  # every process must resume from the same checkpoint
            from jax.experimental import multihost_utils

            steps = multihost_utils.process_allgather(np.int64(step))
            if np.any(steps != step):
                raise RuntimeError(f"processes restored different checkpoints: {steps.tolist()}")
        if failed:
            self._set_aside([s for s, _ in failed])
            aside = ", ".join(f"{s}.unreadable" for s, _ in failed)
            log(
                f"warning: {_unreadable(failed, self.directory)}; resuming from checkpoint {step} "
                f"instead (set aside as {aside})"
            )
        if written is not None and written != here:
            log(
                f"warning: checkpoint {step} in {self.directory} was written with {written} "
                f"devices, resuming on {here}: the arrays are resharded, so the run continues "
                "but need not match an uninterrupted run exactly"
            )
        return tree, meta

    def _set_aside(self, steps: list[int]) -> None:
        """Rename unreadable checkpoints to ``N.unreadable`` (orbax then ignores them), so the
        run can save new checkpoints with lower step numbers."""
        _sync("jaxnoise:checkpoint-restored")
        if jax.process_index() == 0:
            for s in steps:
                src = os.path.join(self.directory, str(s))
                dst = f"{src}.unreadable"
                if os.path.isdir(dst):
                    shutil.rmtree(dst)
                os.replace(src, dst)
        _sync("jaxnoise:checkpoint-set-aside")
        self.manager.reload()

    def _mismatch(self, step: int, difference: str, written: int | None, here: int):
        devices = ""
        if written is not None and written != here:
            devices = f" (the checkpoint was written with {written} devices, this run has {here})"
        return CheckpointMismatch(
            f"checkpoint {step} in {self.directory} does not match this run: {difference}"
            f"{devices}; {_FRESH}"
        )

    def _restore(self, step: int, template: dict, here: int) -> tuple[dict, dict, int | None]:
        """(tree, meta, number of devices written with) of one checkpoint; _Unreadable or an
        orbax error if its files are damaged, CheckpointMismatch if its structure differs."""
        path = epath.Path(self.directory) / str(step)
        on_disk = {p.name for p in path.iterdir() if p.is_dir()}
        if META not in on_disk:
            raise _Unreadable("its metadata item is missing")
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        meta = meta[META]
        if not isinstance(meta, dict):
            raise _Unreadable("its metadata is not a JSON object")
        _verify_meta(meta)
        info = meta.pop(INFO, None)
        if info is None:
            return self._restore_unnamed(step, path, on_disk, template, meta)
        written, stored = int(info["num_devices"]), list(info["items"])
        for k in stored:
            if k not in on_disk:
                raise _Unreadable(f"its item {k!r} is missing")
        items = self._items(template)
        differences = [f"{k} is missing from the checkpoint" for k in items if k not in stored]
        differences += [
            f"{k} is in the checkpoint but not in this run" for k in stored if k not in items
        ]
        for k in (k for k in items if k in stored):
            disk = ocp.StandardCheckpointHandler().metadata(path / k).tree
            differences += _differences(k, items[k], {m.name: m for m in _leaves(disk)})
        if differences:
            n = len(differences) - 1
            more = f" (and {n} more difference{'s' * (n > 1)})" if n else ""
            raise self._mismatch(step, differences[0] + more, written, here)
        args = {
            k: ocp.args.StandardRestore(jax.tree_util.tree_map(_target, _item(k, v)))
            for k, v in items.items()
        }
        out = self.manager.restore(step, args=ocp.args.Composite(**args))
        _verify_arrays(info, {k: out[k] for k in items}, items)
        tree = dict(template)
        for k, subtree in items.items():
            got = _named(out[k])
            wrapped = _item(k, subtree)
            value = jax.tree_util.tree_unflatten(
                jax.tree_util.tree_structure(wrapped), [got[n] for n in _named(wrapped)]
            )
            tree[k] = value[k] if _is_bare(subtree) else value
        return tree, meta, written

    def _restore_unnamed(
        self, step: int, path: epath.Path, on_disk: set[str], template: dict, meta: dict
    ) -> tuple[dict, dict, None]:
        """A checkpoint of the earlier format (before names): its arrays ``state/leaf_NNNNN``
        are the template's leaves in flatten order; restored if every shape and dtype fits."""
        disk = {}
        if on_disk == {"state", META}:
            state = ocp.StandardCheckpointHandler().metadata(path / "state").tree
            disk = {m.name: m for m in _leaves(state)}
        if not disk or not all(_OLD_LEAF.fullmatch(n) for n in disk):
            raise _Unreadable(f"its metadata lacks the {INFO!r} entry")
        leaves, treedef = jax.tree_util.tree_flatten(template)
        names = [f"leaf_{i:05d}" for i in range(len(leaves))]
        differences = [
            f"array {i} is {_spec(disk[n])} in the checkpoint, {_spec(x)} in this run"
            for i, (n, x) in enumerate(zip(names, leaves))
            if n in disk and _spec(disk[n]) != _spec(x)
        ]
        if len(disk) != len(leaves):
            differences.insert(0, f"it holds {len(disk)} arrays, this run has {len(leaves)}")
        if differences:
            difference = differences[0]
            raise CheckpointMismatch(
                f"checkpoint {step} in {self.directory} was written by an earlier jaxnoise "
                f"(arrays by position, not by name) and does not match this run: {difference}; "
                f"{_FRESH}"
            )
        target = {n: _target(x) for n, x in zip(names, leaves)}
        out = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        )
        restored = [out["state"][n] for n in names]
        return jax.tree_util.tree_unflatten(treedef, restored), meta, None

    def wait(self) -> None:
        """Block until asynchronous saves are on disk (raises a failed save's error)."""
        self.manager.wait_until_finished()

    def check_for_errors(self) -> None:
        """Raise the error of an asynchronous save that failed (does not block)."""
        self.manager.check_for_errors()

    def committed(self) -> int | None:
        """The newest committed checkpoint (its step, read from disk), or None."""
        steps = [int(n) for n in os.listdir(self.directory) if n.isdigit()]
        return max(steps) if steps else None


# ------------------------------------------------------------------------------------------------
# Reading a checkpoint from outside its run (jaxnoise.inference): no manager, nothing changes.


def committed_steps(workdir: str) -> list[int]:
    """The committed checkpoints of a workdir (orbax steps), newest first."""
    folder = os.path.join(workdir, "checkpoints")
    steps = [int(n) for n in os.listdir(folder) if n.isdigit()] if os.path.isdir(folder) else []
    return sorted(steps, reverse=True)


def read_meta(workdir: str, step: int) -> dict:
    """The JSON metadata of checkpoint ``step`` (its checksum verified; ``checkpoint`` entry
    kept); ValueError when it is damaged."""
    path = epath.Path(os.path.abspath(os.path.join(workdir, "checkpoints", str(step))))
    try:
        meta = ocp.JsonCheckpointHandler().restore(path / META)
        _verify_meta(meta)
    except Exception as e:
        raise ValueError(f"checkpoint {step} in {path.parent} is unreadable ({_reason(e)})") from e
    return meta


def read_item(workdir: str, step: int, item: str, meta: dict) -> dict[str, jax.Array]:
    """``{array name: array}`` of one item of checkpoint ``step`` (e.g. ``state``), on the
    default device, read without a checkpoint manager (a run writing in the workdir meanwhile
    is not disturbed) and verified against the checksums of its metadata ``meta``
    (:func:`read_meta`); ValueError when it is damaged."""
    path = epath.Path(os.path.abspath(os.path.join(workdir, "checkpoints", str(step), item)))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    try:
        handler = ocp.StandardCheckpointHandler()
        target = jax.tree_util.tree_map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            handler.metadata(path).tree,
        )
        out = handler.restore(path, args=ocp.args.StandardRestore(target))
        _verify_arrays(meta.get(INFO, {}), {item: out}, {item: out})
    except Exception as e:
        raise ValueError(
            f"checkpoint {step} in {path.parent.parent} is unreadable ({_reason(e)})"
        ) from e
    return _named(out)
