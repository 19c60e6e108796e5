"""Checkpoints by name: exact round trips into the template's structure and shardings, refusals
of another structure naming the key, fallback from a damaged newest checkpoint, the device count,
retention, checkpoints of the earlier unnamed format, and the workdir module."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath
from flax import struct
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxnoise import checkpoint as ckpt_lib
from jaxnoise import data as data_lib
from jaxnoise import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
META = {"epoch": 2, "step_in_epoch": 3, "history": [{"epoch": 1, "acc": 50.0}], "best_acc": 50.0}
FRESH = "use another --workdir, or pass --fresh to discard that run and start again"


@struct.dataclass
class Mixture:
    alphas: jax.Array
    valid: jax.Array


class Signal(NamedTuple):
    buffer: jax.Array
    count: jax.Array


def make_tree(value: float = 0.0, n: int = 8, extra: bool = False) -> dict:
    """A train-like tree: nested dicts, a struct dataclass, a NamedTuple, an empty node, and
    per-sample arrays sharded over a 1-device mesh named "data"."""
    mesh = jax.make_mesh((1,), ("data",))
    rows = NamedSharding(mesh, P("data"))
    state = {
        "params": {"w": jnp.full((3, 2), value), "b": jnp.arange(2.0) + value},
        "mixture": Mixture(alphas=jnp.full((2,), value + 1), valid=jnp.asarray(value > 0)),
        "loss_sum": jnp.float32(value),
        "empty": (),
    }
    if extra:
        state["params"]["extra"] = jnp.zeros(1)
    aux = {
        "p_noisy": jax.device_put(jnp.full((n,), value / 10, jnp.float32), rows),
        "signal": Signal(buffer=jax.device_put(jnp.full((n,), value), rows), count=jnp.int32(2)),
    }
    labels = jax.device_put(jnp.arange(n, dtype=jnp.int32) + int(value), rows)
    return {"state": state, "aux": aux, "labels": labels}


def assert_same(a, b) -> None:
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def saved(tmp_path, *steps: int, keep: int = 3) -> ckpt_lib.Checkpointer:
    """A workdir with checkpoints of make_tree(step) at the given steps."""
    ck = ckpt_lib.Checkpointer(str(tmp_path), keep=keep)
    for s in steps:
        ck.save(s, make_tree(float(s)), {**META, "epoch": s})
    ck.wait()
    return ck


def names(item_dir: str) -> list[str]:
    md = ocp.StandardCheckpointHandler().metadata(epath.Path(item_dir))
    return sorted(m.name for m in jax.tree_util.tree_leaves(md.tree))


def test_round_trip_is_exact_by_name_into_the_templates_shardings(tmp_path):
    ck = saved(tmp_path, 7)
    step_dir = os.path.join(ck.directory, "7")
    assert sorted(n for n in os.listdir(step_dir) if os.path.isdir(os.path.join(step_dir, n))) == [
        "aux",
        "labels",
        "meta",
        "state",
    ]
    assert names(os.path.join(step_dir, "state")) == [
        "loss_sum",
        "mixture.alphas",
        "mixture.valid",
        "params.b",
        "params.w",
    ]
    assert names(os.path.join(step_dir, "aux")) == ["p_noisy", "signal.buffer", "signal.count"]
    assert names(os.path.join(step_dir, "labels")) == ["labels"]
    with open(os.path.join(step_dir, "meta", "metadata")) as f:
        on_disk = json.load(f)
    info = {k: v for k, v in on_disk["checkpoint"].items() if "checksum" not in k}
    assert info == {"items": ["aux", "labels", "state"], "num_devices": 1}

    template = make_tree(0.0)
    tree, meta = ckpt_lib.Checkpointer(str(tmp_path)).restore_latest(template)
    assert_same(tree, make_tree(7.0))
    assert meta == {**META, "epoch": 7}
    assert isinstance(tree["state"]["mixture"], Mixture)
    assert isinstance(tree["aux"]["signal"], Signal)
    for got, want in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(template)):
        assert got.sharding.is_equivalent_to(want.sharding, got.ndim)


def test_no_checkpoint_restores_none_and_reserved_names_are_refused(tmp_path):
    ck = ckpt_lib.Checkpointer(str(tmp_path))
    assert ck.restore_latest(make_tree()) is None
    with pytest.raises(ValueError, match="'meta' cannot name a checkpoint item"):
        ck.save(1, {"meta": jnp.zeros(2)}, {})
    with pytest.raises(ValueError, match="'checkpoint' is a reserved key"):
        ck.save(1, make_tree(), {"checkpoint": 1})


def _without(key: str) -> dict:
    return {k: v for k, v in make_tree().items() if k != key}


MISMATCHES = {
    "extra-key": (lambda: make_tree(extra=True),
                  "state.params.extra is missing from the checkpoint"),
    "missing-key": (
        lambda: {**make_tree(), "aux": {"p_noisy": make_tree()["aux"]["p_noisy"]}},
        r"aux.signal.buffer is in the checkpoint but not in this run \(and 1 more difference\)",
    ),
    "shape": (lambda: make_tree(n=4), r"aux.p_noisy is \(8,\) float32 in the checkpoint, \(4,\) "
              r"float32 in this run \(and 2 more differences\)"),
    "extra-item": (lambda: {**make_tree(), "ema": {"w": jnp.zeros(2)}},
                   "ema is missing from the checkpoint"),
    "missing-item": (lambda: _without("labels"), "labels is in the checkpoint but not in this run"),
    "dtype": (lambda: {**make_tree(), "labels": make_tree()["labels"].astype(jnp.float32)},
              r"labels is \(8,\) int32 in the checkpoint, \(8,\) float32 in this run"),
}  # fmt: skip


@pytest.mark.parametrize("case", MISMATCHES)
def test_structure_mismatch_names_the_first_differing_key(tmp_path, case):
    template, difference = MISMATCHES[case]
    template = template()
    ck = saved(tmp_path, 5)
    with pytest.raises(ckpt_lib.CheckpointMismatch) as e:
        ck.restore_latest(template)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"checkpoint 5 in {ck.directory} does not match this run: ")
    assert msg.endswith(f"; {FRESH}")
    assert re.search(f": {difference}; ", msg), msg
    assert os.path.isdir(os.path.join(ck.directory, "5"))  # a mismatch is not set aside


def _truncate(path: str) -> None:
    for f in glob.glob(os.path.join(path, "state", "**", "d", "*"), recursive=True):
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)


def _garble(path: str) -> None:
    for f in glob.glob(os.path.join(path, "aux", "**", "d", "*"), recursive=True):
        with open(f, "r+b") as fh:
            fh.seek(os.path.getsize(f) // 2)
            fh.write(b"\xff" * 16)


CORRUPTIONS = {
    "truncated-data": (_truncate, "ValueError: "),
    "garbled-data": (_garble, "ValueError: "),
    "no-metadata": (lambda p: os.remove(os.path.join(p, "meta", "metadata")),
                    "FileNotFoundError: "),
    "garbled-tree-metadata": (
        lambda p: open(os.path.join(p, "state", "_METADATA"), "w").write("{not json"),
        "JSONDecodeError: ",
    ),
    "missing-item": (lambda p: shutil.rmtree(os.path.join(p, "labels")),
                     "its item 'labels' is missing"),
    "empty": (lambda p: [shutil.rmtree(os.path.join(p, n)) for n in os.listdir(p)
                         if os.path.isdir(os.path.join(p, n))], "its metadata item is missing"),
}  # fmt: skip


# orbax may report "Event loop is closed" from a thread of a failed restore after it returned.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_unreadable_newest_checkpoint_falls_back_to_the_previous(tmp_path, capsys, corruption):
    ck = saved(tmp_path, 10, 20)
    corrupt, reason = CORRUPTIONS[corruption]
    corrupt(os.path.join(ck.directory, "20"))
    ck = ckpt_lib.Checkpointer(str(tmp_path))
    tree, meta = ck.restore_latest(make_tree())
    assert_same(tree, make_tree(10.0))
    assert meta["epoch"] == 10
    out = capsys.readouterr().out
    assert f"warning: checkpoint 20 in {ck.directory} is unreadable ({reason}" in out, out
    assert "); resuming from checkpoint 10 instead (set aside as 20.unreadable)" in out, out
    assert len(out.strip().splitlines()) == 1
    # The damaged checkpoint is kept aside, and the run can save lower steps again.
    assert sorted(os.listdir(ck.directory)) == ["10", "20.unreadable"]
    ck.save(15, make_tree(15.0), META)
    ck.wait()
    tree, _ = ckpt_lib.Checkpointer(str(tmp_path)).restore_latest(make_tree())
    assert_same(tree, make_tree(15.0))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_several_unreadable_and_none_readable(tmp_path, capsys):
    ck = saved(tmp_path, 10, 20, 30)
    _truncate(os.path.join(ck.directory, "30"))
    os.remove(os.path.join(ck.directory, "20", "meta", "metadata"))
    tree, _ = ckpt_lib.Checkpointer(str(tmp_path)).restore_latest(make_tree())
    assert_same(tree, make_tree(10.0))
    out = capsys.readouterr().out
    assert f"warning: checkpoints 30, 20 in {ck.directory} are unreadable (30: ValueError: " in out
    assert "resuming from checkpoint 10 instead (set aside as 30.unreadable, 20.unreadable)" in out

    _garble(os.path.join(ck.directory, "10"))
    with pytest.raises(ValueError) as e:
        ckpt_lib.Checkpointer(str(tmp_path)).restore_latest(make_tree())
    msg = str(e.value)
    assert msg.startswith(f"no checkpoint in {ck.directory} is readable (10: ValueError: ")
    assert msg.endswith(f"; {FRESH}") and "\n" not in msg
    assert os.path.isdir(os.path.join(ck.directory, "10"))  # nothing set aside without a restore


def _set_devices(ck: ckpt_lib.Checkpointer, step: int, num_devices: int) -> None:
    """Rewrite a checkpoint's metadata as a run on another number of devices would have."""
    path = os.path.join(ck.directory, str(step), "meta", "metadata")
    with open(path) as f:
        meta = json.load(f)
    meta["checkpoint"]["num_devices"] = num_devices
    info = meta["checkpoint"]
    del info["meta_checksum"]  # as that run would have written it: the checksum of the rest
    text = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    info["meta_checksum"] = hashlib.blake2b(text, digest_size=8).hexdigest()
    with open(path, "w") as f:
        json.dump(meta, f)


def test_device_count_change_is_reported(tmp_path, capsys):
    ck = saved(tmp_path, 10)
    ckpt_lib.Checkpointer(str(tmp_path)).restore_latest(make_tree())
    assert capsys.readouterr().out == ""  # the same count: nothing to report
    _set_devices(ck, 10, 4)
    tree, _ = ckpt_lib.Checkpointer(str(tmp_path)).restore_latest(make_tree())
    assert_same(tree, make_tree(10.0))
    out = capsys.readouterr().out.strip()
    assert out.endswith(
        f"warning: checkpoint 10 in {ck.directory} was written with 4 devices, resuming on 1: "
        "the arrays are resharded, so the run continues but need not match an uninterrupted "
        "run exactly"
    ), out
    # The count given explicitly, and noted in a structure mismatch.
    ckpt_lib.Checkpointer(str(tmp_path)).restore_latest(make_tree(), num_devices=4)
    assert capsys.readouterr().out == ""
    with pytest.raises(
        ckpt_lib.CheckpointMismatch,
        match=r"in this run \(and 2 more differences"
        r"\) \(the checkpoint was written with 4 devices, this run has 1\); use",
    ):
        ckpt_lib.Checkpointer(str(tmp_path)).restore_latest(make_tree(n=4))


_RESHARD = """
import sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from jaxnoise import checkpoint as ckpt_lib

def tree(mesh, v):
    rows, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    return {"state": {"w": jax.device_put(jnp.full((3,), v), rep)},
            "labels": jax.device_put(jnp.arange(8, dtype=jnp.int32) + int(v), rows)}

mesh2 = jax.make_mesh((2,), ("data",))
ck = ckpt_lib.Checkpointer(sys.argv[1])
ck.save(1, tree(mesh2, 5.0), {})
ck.wait()
for mesh in (mesh2, jax.make_mesh((1,), ("data",), devices=jax.devices()[:1])):
    t, _ = ckpt_lib.Checkpointer(sys.argv[1]).restore_latest(tree(mesh, 0.0))
    labels = t["labels"]
    assert labels.sharding == NamedSharding(mesh, P("data")) and float(t["state"]["w"][1]) == 5
    print("RESTORED", mesh.size, [s.data.tolist() for s in labels.addressable_shards], flush=True)
"""


def test_sharded_checkpoint_restores_on_the_same_and_another_device_count(tmp_path):
    """Two CPU devices in a child process: per-sample arrays come back sharded as the template's;
    resuming on one device restores the same values and reports the change."""
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2"
    )
    r = subprocess.run(
        [sys.executable, "-c", _RESHARD, str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    assert lines[0] == "RESTORED 2 [[5, 6, 7, 8], [9, 10, 11, 12]]"
    assert lines[1].endswith(
        f"warning: checkpoint 1 in {tmp_path / 'checkpoints'} was written with 2 devices, "
        "resuming on 1: the arrays are resharded, so the run continues but need not match an "
        "uninterrupted run exactly"
    )
    assert lines[2] == "RESTORED 1 [[5, 6, 7, 8, 9, 10, 11, 12]]"


def test_keep_n_retains_the_newest(tmp_path):
    ck = saved(tmp_path, 1, 2, 3, 4, keep=2)
    assert sorted(os.listdir(ck.directory)) == ["3", "4"]
    assert ck.manager.all_steps() == [3, 4]


def _save_unnamed(tmp_path, step: int, tree: dict) -> str:
    """A checkpoint as jaxnoise wrote them before names: anonymous leaves plus the metadata."""
    directory = os.path.join(str(tmp_path), "checkpoints")
    leaves = jax.tree_util.tree_leaves(tree)
    with ocp.CheckpointManager(directory) as manager:
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave({f"leaf_{i:05d}": x for i, x in enumerate(leaves)}),
                meta=ocp.args.JsonSave(META),
            ),
        )
        manager.wait_until_finished()
    return directory


def test_checkpoint_of_the_unnamed_format_restores_or_is_refused(tmp_path):
    directory = _save_unnamed(tmp_path, 3, make_tree(3.0))
    tree, meta = ckpt_lib.Checkpointer(str(tmp_path)).restore_latest(make_tree())
    assert_same(tree, make_tree(3.0))
    assert meta == META
    for template, difference in [
        (
            make_tree(n=4),
            r"array 0 is \(8,\) float32 in the checkpoint, \(4,\) float32 in this "
            "run",
        ),
        (make_tree(extra=True), "it holds 9 arrays, this run has 10"),
    ]:
        with pytest.raises(ckpt_lib.CheckpointMismatch) as e:
            ckpt_lib.Checkpointer(str(tmp_path)).restore_latest(template)
        msg = str(e.value)
        assert msg.startswith(f"checkpoint 3 in {directory} was written by an earlier jaxnoise ")
        assert re.search(f"does not match this run: {difference}; {FRESH}$", msg)


# ------------------------------------------------------------------------------------------------
# The workdir module.


def test_checkpoint_module_does_not_import_config_and_reexports_workdir():
    code = "import sys, jaxnoise.checkpoint; print('jaxnoise.config' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.stdout.strip() == "False", r.stderr[-2000:]
    for name in (
        "atomic_write",
        "atomic_write_text",
        "check_workdir_config",
        "WorkdirConflict",
        "FILE_MODE",
    ):
        assert getattr(ckpt_lib, name) is getattr(workdir_lib, name)


def test_write_run_info_and_check_same_dataset(tmp_path):
    img = np.zeros((6, 4, 4, 1), np.uint8)
    labels = np.arange(6) % 2
    ds = data_lib.Dataset(img, labels, img, labels, ["a", "b"], "x")
    config = type("Config", (), {"noise_kind": "symmetric"})()
    workdir_lib.write_run_info(str(tmp_path), {"noise": 0.5}, ds, config)
    assert json.loads((tmp_path / "config.json").read_text()) == {"noise": 0.5}
    info = json.loads((tmp_path / "dataset.json").read_text())
    assert info["num_train"] == 6 and info["class_names"] == ["a", "b"] and info["noise_known"]
    workdir_lib.check_same_dataset(str(tmp_path), ds)  # no checkpoints yet: nothing to compare
    (tmp_path / "checkpoints").mkdir()
    workdir_lib.check_same_dataset(str(tmp_path), ds)
    other = data_lib.Dataset(img[:4], labels[:4], img, labels, ["a", "b"], "x")
    with pytest.raises(ValueError, match=r"different dataset \(num_train: 6 -> 4\); .*--fresh"):
        workdir_lib.check_same_dataset(str(tmp_path), other)
    workdir_lib.check_workdir_config(str(tmp_path), {"noise": 0.5}, fresh=False)
    with pytest.raises(workdir_lib.WorkdirConflict, match=r"\(noise: 0\.5 -> 0\.2\)"):
        workdir_lib.check_workdir_config(str(tmp_path), {"noise": 0.2}, fresh=False)
    workdir_lib.check_workdir_config(str(tmp_path), {"noise": 0.2}, fresh=True)
    assert os.listdir(tmp_path) == []
