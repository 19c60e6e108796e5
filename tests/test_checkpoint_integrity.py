"""Checkpoint integrity: the stored checksums match a numpy reference of their definition, damage
to a committed array file or to the JSON metadata is caught on restore (the checkpoint before is
restored, the damaged one set aside), intact checkpoints restore bit for bit, checkpoints of
before checksums still restore, and sharded arrays on two processes are checked alike."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

from jaxnoise import checkpoint as ckpt_lib
from tests.test_parallel import _free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRESH = "use another --workdir, or pass --fresh to discard that run and start again"

# ------------------------------------------------------------------------------------------------
# The reference: the checksum as the format defines it, in numpy.

SUMS = ((0x9E3779B9, 0x7F4A7C15), (0x85EBCA77, 0xC2B2AE3D))  # (multiplier, offset) of each sum


def fmix32(h: np.ndarray) -> np.ndarray:
    """murmur3's finalizer (Appleby, MurmurHash3.cpp), on uint32 arrays."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def words(x: np.ndarray) -> np.ndarray:
    """An array's elements as uint32 words, in C order."""
    x = np.ascontiguousarray(x)
    if x.dtype == np.bool_ or (x.dtype.kind in "iu" and x.dtype.itemsize < 4):
        wide = np.int32 if x.dtype.kind == "i" else np.uint32
        return x.astype(wide).view(np.uint32).ravel()
    if x.dtype.itemsize == 2:  # float16, bfloat16: their 16 bits
        return x.view(np.uint16).astype(np.uint32).ravel()
    return x.view(np.uint32).ravel()


def reference(x) -> str:
    """16 hex digits: for each (m, c), sum over words w_i of fmix32(w_i ^ (i*m + c)) mod 2**32."""
    w = words(np.asarray(x))
    i = np.arange(w.size, dtype=np.uint64)
    out = ""
    for m, c in SUMS:
        key = ((i * m + c) % 2**32).astype(np.uint32)
        out += f"{int(np.sum(fmix32(w ^ key).astype(np.uint64)) % 2**32):08x}"
    return out


def reference_meta(meta: dict) -> str:
    """blake2b-64 of the metadata as stored (sorted keys, compact), less its own checksum."""
    info = {k: v for k, v in meta["checkpoint"].items() if k != "meta_checksum"}
    text = json.dumps({**meta, "checkpoint": info}, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


# ------------------------------------------------------------------------------------------------
# Trees and damage.

META = {"epoch": 2, "history": [{"epoch": 1, "acc": 50.0}], "best_acc": 50.0}


def noise_bits(shape, seed: int) -> np.ndarray:
    """float32 from random bits (|x| < 2, never NaN): incompressible, so orbax's zstd stores
    them verbatim and the array's bytes can be found in its data file."""
    bits = np.random.default_rng(seed).integers(0, 2**32, shape, dtype=np.uint32)
    return (bits & np.uint32(0xBFFFFFFF)).view(np.float32)


def make_tree(v: int) -> dict:
    """A tiny train-like tree: one 16 KiB weight of random bits, a few small arrays."""
    return {
        "state": {
            "params": {"w": jnp.asarray(noise_bits((64, 64), v)), "b": jnp.full((3,), v / 3)},
            "step": jnp.int32(v),
        },
        "labels": jnp.arange(8, dtype=jnp.int32) + v,
    }


def assert_bits_equal(a, b) -> None:
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def saved(tmp_path, *steps: int) -> ckpt_lib.Checkpointer:
    ck = ckpt_lib.Checkpointer(str(tmp_path), keep=3)
    for s in steps:
        ck.save(s, make_tree(s), {**META, "epoch": s})
    ck.wait()
    return ck


def find_bytes(step_dir: str, item: str, data: bytes) -> tuple[str, int]:
    """The data file of ``item`` that holds ``data`` verbatim, and its offset there."""
    for f in glob.glob(os.path.join(step_dir, item, "**", "d", "*"), recursive=True):
        with open(f, "rb") as fh:
            at = fh.read().find(data)
        if at >= 0:
            return f, at
    raise AssertionError(f"no data file of {step_dir}/{item} holds the array's bytes")


def raw_restore(step_dir: str, item: str) -> dict:
    """An item read by orbax alone, without jaxnoise's checks."""
    return ocp.StandardCheckpointHandler().restore(epath.Path(step_dir) / item)


def flip_byte(f: str, at: int) -> None:
    with open(f, "r+b") as fh:
        fh.seek(at)
        b = fh.read(1)
        fh.seek(at)
        fh.write(bytes([b[0] ^ 0x10]))


def write_random(f: str, at: int, n: int) -> None:
    with open(f, "r+b") as fh:
        fh.seek(at)
        fh.write(np.random.default_rng(7).bytes(n))


def read_meta(step_dir: str) -> dict:
    with open(os.path.join(step_dir, "meta", "metadata")) as f:
        return json.load(f)


# ------------------------------------------------------------------------------------------------
# Tests.


def test_stored_checksums_match_the_reference_and_intact_checkpoints_restore_bit_for_bit(
    tmp_path,
):
    """Every dtype a train state holds, odd values included (NaN payloads, -0.0, inf)."""
    rng = np.random.default_rng(3)
    odd = np.array([np.nan, -0.0, np.inf, -np.inf, 1e-45], np.float32)
    odd = np.concatenate([odd, np.array([0x7FC01234], np.uint32).view(np.float32)])
    tree = {
        "state": {
            "f32": jnp.asarray(rng.standard_normal((5, 7), dtype=np.float32)),
            "odd": jnp.asarray(odd),
            "bf16": jnp.asarray(rng.standard_normal(9), dtype=jnp.bfloat16),
            "f16": jnp.asarray(rng.standard_normal(4), dtype=jnp.float16),
            "i8": jnp.asarray(np.array([-128, -1, 0, 5, 127], np.int8)),
            "u8": jnp.asarray(np.array([0, 1, 255], np.uint8)),
            "mask": jnp.asarray(np.array([True, False, True])),
            "u32": jnp.asarray(rng.integers(0, 2**32, (3, 2), dtype=np.uint32)),
            "count": jnp.int32(-3),
        },
        "labels": jnp.arange(8, dtype=jnp.int32),
    }
    ck = ckpt_lib.Checkpointer(str(tmp_path))
    ck.save(4, tree, {"epoch": 4, "acc": float("nan"), 3: "int key"})
    ck.wait()
    meta = read_meta(os.path.join(ck.directory, "4"))
    sums = meta["checkpoint"]["checksums"]
    assert sums["labels"] == {"labels": reference(tree["labels"])}
    assert sums["state"] == {k: reference(v) for k, v in tree["state"].items()}
    assert len(set(sums["state"].values())) == len(tree["state"])
    assert meta["checkpoint"]["meta_checksum"] == reference_meta(meta)

    restored, got = ckpt_lib.Checkpointer(str(tmp_path)).restore_latest(
        jax.tree_util.tree_map(jnp.zeros_like, tree)
    )
    assert_bits_equal(restored, tree)
    assert got["epoch"] == 4 and np.isnan(got["acc"]) and got["3"] == "int key"


def test_checksum_changes_with_any_word_and_with_the_order():
    x = noise_bits((32, 16), 1)
    base = ckpt_lib.array_checksums({"a": {"x": jnp.asarray(x)}})["a"]["x"]
    assert base == reference(x)
    for i, bit in [(0, 31), (100, 0), (511, 31), (256, 23)]:
        y = x.copy().view(np.uint32)
        y.ravel()[i] ^= np.uint32(1 << bit)
        got = ckpt_lib.array_checksums({"a": {"x": jnp.asarray(y.view(np.float32))}})
        assert got["a"]["x"][:8] != base[:8] and got["a"]["x"][8:] != base[8:]
    # Two sign flips: a plain sum of words (or of odd multiples of them) mod 2**32 misses these.
    y = x.copy().view(np.uint32)
    y.ravel()[[3, 400]] ^= np.uint32(1 << 31)
    assert ckpt_lib.array_checksums({"a": {"x": jnp.asarray(y.view(np.float32))}}) != {
        "a": {"x": base}
    }
    swapped = x.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert ckpt_lib.array_checksums({"a": {"x": jnp.asarray(swapped)}})["a"]["x"] != base


# orbax may report "Event loop is closed" from a thread of a failed restore after it returned.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["one-byte", "4KiB-random"])
def test_damaged_array_data_is_detected_and_the_previous_checkpoint_restored(
    tmp_path, capsys, damage
):
    ck = saved(tmp_path, 10, 20)
    step_dir = os.path.join(ck.directory, "20")
    w = np.asarray(make_tree(20)["state"]["params"]["w"])
    f, at = find_bytes(step_dir, "state", w.tobytes()[4096:4160])  # rows 16.. of w
    if damage == "one-byte":
        flip_byte(f, at + 2)
    else:
        write_random(f, at - 2048, 4096)
    # The damage reaches the values, with no error from orbax: what went unnoticed before.
    raw = np.asarray(raw_restore(step_dir, "state")["params"]["w"])
    changed = np.flatnonzero(raw.view(np.uint32) != w.view(np.uint32))
    assert (changed.tolist() == [1024]) if damage == "one-byte" else (1000 <= changed.size <= 1024)

    tree, meta = ckpt_lib.Checkpointer(str(tmp_path)).restore_latest(make_tree(0))
    assert_bits_equal(tree, make_tree(10))
    assert meta["epoch"] == 10
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out
    assert (
        f"warning: checkpoint 20 in {ck.directory} is unreadable (its array state.params.w does "
        "not match its checksum); resuming from checkpoint 10 instead (set aside as "
        "20.unreadable)"
    ) in out, out
    assert sorted(os.listdir(ck.directory)) == ["10", "20.unreadable"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_damage_to_a_bare_array_and_none_readable(tmp_path, capsys):
    """A bare item is named by itself; when every checkpoint is damaged, the usual error."""
    ck = ckpt_lib.Checkpointer(str(tmp_path))
    big = {"labels": jnp.asarray(noise_bits((4096,), 5).view(np.int32))}
    ck.save(1, big, {})
    ck.wait()
    step_dir = os.path.join(ck.directory, "1")
    f, at = find_bytes(step_dir, "labels", np.asarray(big["labels"]).tobytes()[800:864])
    flip_byte(f, at + 5)
    with pytest.raises(ValueError) as e:
        ckpt_lib.Checkpointer(str(tmp_path)).restore_latest(big)
    assert str(e.value) == (
        f"no checkpoint in {ck.directory} is readable (1: its array labels does not match its "
        f"checksum); {FRESH}"
    )
    assert os.path.isdir(step_dir)  # nothing set aside without a restore


def _edit_meta(step_dir: str, edit) -> None:
    meta = read_meta(step_dir)
    edit(meta)
    with open(os.path.join(step_dir, "meta", "metadata"), "w") as f:
        json.dump(meta, f)


META_EDITS = {
    "epoch": lambda m: m.update(epoch=21),
    "history": lambda m: m["history"][0].update(acc=51.0),
    "array-checksum": lambda m: m["checkpoint"]["checksums"]["labels"].update(labels="0" * 16),
    "devices": lambda m: m["checkpoint"].update(num_devices=2),
    "checksum-lost": lambda m: m["checkpoint"].pop("meta_checksum"),
    "array-checksums-lost": lambda m: m["checkpoint"].pop("checksums"),
}


@pytest.mark.parametrize("edit", META_EDITS)
def test_edited_metadata_is_detected(tmp_path, capsys, edit):
    ck = saved(tmp_path, 10, 20)
    _edit_meta(os.path.join(ck.directory, "20"), META_EDITS[edit])
    tree, meta = ckpt_lib.Checkpointer(str(tmp_path)).restore_latest(make_tree(0))
    assert_bits_equal(tree, make_tree(10))
    assert meta["epoch"] == 10
    out = capsys.readouterr().out
    assert (
        f"warning: checkpoint 20 in {ck.directory} is unreadable (its metadata does not match its "
        "checksum); resuming from checkpoint 10 instead (set aside as 20.unreadable)"
    ) in out, out


def _save_without_checksums(tmp_path, step: int, tree: dict, meta: dict) -> str:
    """A checkpoint as jaxnoise wrote them before checksums: named items, metadata without."""
    directory = os.path.join(str(tmp_path), "checkpoints")
    items = {"state": tree["state"], "labels": {"labels": tree["labels"]}}
    info = {"items": ["labels", "state"], "num_devices": 1}
    with ocp.CheckpointManager(directory) as manager:
        manager.save(
            step,
            args=ocp.args.Composite(
                **{k: ocp.args.StandardSave(v) for k, v in items.items()},
                meta=ocp.args.JsonSave({**meta, "checkpoint": info}),
            ),
        )
        manager.wait_until_finished()
    return os.path.join(directory, str(step))


def test_checkpoint_without_checksums_restores_unchecked(tmp_path, capsys):
    step_dir = _save_without_checksums(tmp_path, 30, make_tree(30), {**META, "epoch": 30})
    tree, meta = ckpt_lib.Checkpointer(str(tmp_path)).restore_latest(make_tree(0))
    assert_bits_equal(tree, make_tree(30))
    assert meta == {**META, "epoch": 30}
    # Without checksums damage goes unseen (as before them): the docstring's caveat.
    w = np.asarray(make_tree(30)["state"]["params"]["w"])
    f, at = find_bytes(step_dir, "state", w.tobytes()[4096:4160])
    flip_byte(f, at)
    tree, _ = ckpt_lib.Checkpointer(str(tmp_path)).restore_latest(make_tree(0))
    assert np.asarray(tree["state"]["params"]["w"]).ravel()[1024] != w.ravel()[1024]
    assert capsys.readouterr().out == ""


# ------------------------------------------------------------------------------------------------
# Sharded arrays on two processes (jax.distributed over gloo, one CPU device each).

_TWO_PROCESSES = """
import glob, os, sys
os.environ["JAX_PLATFORMS"] = "cpu"
import jax, numpy as np
jax.config.update("jax_cpu_collectives_implementation", "gloo")
pid, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from jaxnoise import checkpoint as ckpt_lib
from tests.test_parallel import _free_port
from tests.test_checkpoint_integrity import noise_bits

mesh = jax.make_mesh((2,), ("data",))
def tree(v):
    w = noise_bits((64, 64), v)
    put = lambda a, spec: jax.make_array_from_callback(
        a.shape, NamedSharding(mesh, spec), lambda i: a[i])
    return {"state": {"w": put(w, P("data")), "b": put(np.full(3, v, np.float32), P())}}

ck = ckpt_lib.Checkpointer(workdir)
for step in (1, 2):
    ck.save(step, tree(step), {"epoch": step})
ck.wait()
multihost_utils.sync_global_devices("saved")
if pid == 0:  # damage a row that process 1 wrote
    row = noise_bits((64, 64), 2)[50].tobytes()
    for f in glob.glob(os.path.join(workdir, "checkpoints", "2", "state", "**", "d", "*"),
                       recursive=True):
        data = open(f, "rb").read()
        if row in data:
            with open(f, "r+b") as fh:
                fh.seek(data.find(row) + 9)
                fh.write(bytes([data[data.find(row) + 9] ^ 1]))
            print("DAMAGED", os.path.relpath(f, workdir), flush=True)
multihost_utils.sync_global_devices("damaged")
t, meta = ckpt_lib.Checkpointer(workdir).restore_latest(tree(0))
w = multihost_utils.process_allgather(t["state"]["w"], tiled=True)
print("RESTORED", meta["epoch"], bool(np.array_equal(w, noise_bits((64, 64), 1))), flush=True)
"""


def test_two_processes_checksum_sharded_arrays_and_detect_damage_to_one_shard(tmp_path):
    port, workdir = str(_free_port()), str(tmp_path / "wd")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _TWO_PROCESSES, str(i), port, workdir],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    damaged = [line for line in outs[0][0].splitlines() if line.startswith("DAMAGED")]
    assert damaged == ["DAMAGED checkpoints/2/state/ocdbt.process_1/d/" + damaged[0][-32:]]
    for out, _ in outs:  # both processes restored checkpoint 1; process 0 logged why
        assert "RESTORED 1 True" in out.splitlines(), out
    assert (
        f"warning: checkpoint 2 in {workdir}/checkpoints is unreadable (its array state.w does "
        "not match its checksum); resuming from checkpoint 1 instead"
    ) in outs[0][0], outs[0][0]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2.unreadable"]
    meta = read_meta(os.path.join(workdir, "checkpoints", "1"))
    assert meta["checkpoint"]["checksums"]["state"] == {
        "w": reference(noise_bits((64, 64), 1)),
        "b": reference(np.full(3, 1, np.float32)),
    }
