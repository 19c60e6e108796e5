"""The run kit: what every method's loop does the same way.

A method is its pieces, its step(s) and an epoch function; the kit does the rest::

    run = open_run(config, workdir, fresh=fresh, guard=guard)  # mesh, checks, data on the mesh
    tree, meta = restore(run, fresh_tree)        # the newest checkpoint, or the fresh tree
    tree, interrupted = run_epochs(run, tree, meta, epoch_fn, stop_after_epoch=...)
    return finish(run, tree, outputs_fn, interrupted)   # per_sample.npz, the report, the summary

``epoch_fn(tree, epoch, first_step, partial) -> Epoch | Stopped`` trains one (1-based) epoch
from step ``first_step`` and evaluates it; ``run_epochs`` records its metrics (``metrics.jsonl``,
process 0), saves a checkpoint after it, and applies the stop policy: a SIGTERM / SIGINT is
acted on at the next step boundary (agreed by every process); an epoch stopped in the middle is
saved at that exact step when the method can resume there (``Stopped.step``), else redone from
its start; a signal before the first epoch starts exits without a save. A checkpoint holds the
method's tree (``state``, ``aux``) and the noisy labels; the orbax step is ``epochs done x
run.steps_per_epoch + steps done``, so mid-epoch and epoch-end checkpoints order correctly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxnoise import checkpoint as ckpt_lib
from jaxnoise import data as data_lib
from jaxnoise import eta, inputs, parallel, stops
from jaxnoise import metrics as metrics_lib
from jaxnoise import workdir as workdir_lib
from jaxnoise import writers as writers_lib
from jaxnoise.progress import log


@dataclasses.dataclass
class Run:
    """Everything a run sets up once (data on the devices, the checkpointer) and its progress
    (the metric history, the best accuracy, the newest checkpoint)."""

    config: ml_collections.ConfigDict
    workdir: str
    mesh: Any
    guard: stops.PreemptionGuard
    ds: data_lib.Dataset
    noisy_labels: np.ndarray  # (N,) int32 on the host
    noise_mask: np.ndarray  # (N,) bool: which labels the noise changed (all False if unknown)
    data: dict  # {"images", "labels"} of the training set on the devices, sharded by sample
    mask: jax.Array  # the noise mask on the devices, for the detection metrics
    test: tuple  # (images, labels) of the test set, replicated
    mean_std: tuple  # the input normalisation
    manager: ckpt_lib.Checkpointer
    steps_per_epoch: int = 1  # set by the method: positions in messages and checkpoint steps
    noise_known: bool = True  # some labels are known wrong and some right (detection metrics)
    history: list = dataclasses.field(default_factory=list)
    best_acc: float = 0.0
    saved_at: str | None = None  # position of the newest checkpoint, for messages
    metrics_path: str = ""
    lock: Any = None  # the workdir's lock (process 0), released by close()
    trained: bool = False  # whether this process trained an epoch (or part of one)
    clock: eta.RunClock = dataclasses.field(default_factory=eta.RunClock)  # the run's ETA
    writers: writers_lib.Writers = dataclasses.field(default_factory=writers_lib.Writers)

    @property
    def has_test(self) -> bool:
        """Whether the run has a test set (embeddings may come without one: no evaluation)."""
        return len(self.ds.test_labels) > 0

    @property
    def last_good(self) -> str:
        """Which checkpoint a stop or failure leaves, for messages."""
        if self.saved_at is None:
            return "no checkpoint has been saved yet"
        return f"the checkpoint at {self.saved_at} in {self.manager.directory} is kept"

    def diverged(self, what: str) -> FloatingPointError:
        """The error of a diverged run (NaN or infinite losses or parameters)."""
        return FloatingPointError(
            f"{what}: training diverged; {self.last_good}. Training is deterministic, so "
            "re-running the same command resumes from that checkpoint and diverges again unless "
            "the cause was transient; to change the config (e.g. a lower config.lr) pass --fresh "
            "or use another --workdir"
        )


def fingerprint(config: ml_collections.ConfigDict) -> dict:
    """The resolved config as JSON (config.json; a resumed run must match it)."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


def open_workdir(config, workdir: str, *, fresh: bool):
    """Before any data is loaded: the workdir writable (process 0: else one-line errors), its
    lock taken (process 0; a second run on it is refused), the config checked against the run
    it holds (or the run discarded with ``fresh``). Returns the lock (None elsewhere)."""
    if jax.process_index() != 0:
        os.makedirs(workdir, exist_ok=True)
        return None
    workdir_lib.check_writable(workdir)
    workdir_lib.quiet_named_save_errors()  # a failed save is one line, not orbax's tracebacks
    lock = workdir_lib.lock(workdir)
    try:
        ckpt_lib.check_workdir_config(workdir, fingerprint(config), fresh=fresh)
    except BaseException:
        lock.release()
        raise
    return lock


def open_run(config, workdir: str, *, fresh: bool, guard) -> Run:
    """The mesh, the workdir checks and lock, the data loaded, checked and placed on the mesh."""
    mesh = parallel.make_mesh(config.mesh.num_devices)
    lock = open_workdir(config, workdir, fresh=fresh)
    try:
        return _place(config, workdir, mesh, guard, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def close(run: Run) -> None:
    """Close the run's metric writers; release its workdir lock (also done by the kernel when
    the process ends)."""
    run.writers.close()
    if run.lock is not None:
        run.lock.release()


def _place(config, workdir: str, mesh, guard, lock) -> Run:
    """The run's data loaded and placed on the mesh."""
    ds, noisy_labels, noise_mask = inputs.load_noisy_data(config, mesh.size)
    workdir_lib.check_same_dataset(workdir, ds)
    # Device-resident data: the training set and per-sample arrays sharded over the mesh (each
    # process places only its block), the (small) test set replicated.
    data = {
        "images": parallel.put_samples(mesh, ds.train_images),
        "labels": parallel.put_samples(mesh, noisy_labels.astype(np.int32)),
    }
    test = parallel.put_replicated(mesh, (ds.test_images, ds.test_labels.astype(np.int32)))
    log(f"devices: {mesh.size} ({jax.devices()[0].platform}, {jax.process_count()} process(es))")
    return Run(
        config,
        workdir,
        mesh,
        guard,
        ds,
        noisy_labels,
        noise_mask,
        data,
        parallel.put_samples(mesh, noise_mask),
        test,
        data_lib.normalization_stats(ds, config.data.normalization),
        ckpt_lib.Checkpointer(workdir, keep=config.keep_checkpoints),
        noise_known=metrics_lib.noise_known(noise_mask),
        metrics_path=os.path.join(workdir, "metrics.jsonl"),
        lock=lock,
    )


# ------------------------------------------------------------------------------------------------
# Checkpoints.


def position(run: Run, epoch_done: int, step_in_epoch: int = 0) -> str:
    """A position in words: "step 5/23 of epoch 2" or "the end of epoch 3"."""
    if step_in_epoch:
        return f"step {step_in_epoch}/{run.steps_per_epoch} of epoch {epoch_done + 1}"
    return f"the end of epoch {epoch_done}"


def placed_like(tree, like):
    """``tree`` (restored) with the shardings of ``like`` (fresh): a fresh and a restored run
    call the compiled functions with the same input placements (no recompile on resume)."""
    return jax.tree.map(lambda a, b: jax.device_put(a, b.sharding), tree, like)


def restore(run: Run, fresh: dict) -> tuple[dict, dict | None]:
    """(tree, metadata) of the newest checkpoint in the workdir, placed as ``fresh``, or
    ``(fresh, None)``; the run's history and position follow the checkpoint. Then the run's
    files are written (process 0): config.json, dataset.json, metrics.jsonl as restored."""
    template = {**fresh, "labels": run.data["labels"]}
    if jax.process_index() == 0:  # room for one more checkpoint, before anything is trained
        workdir_lib.check_space(run.workdir, ckpt_lib.tree_nbytes(template))
    restored = run.manager.restore_latest(template)
    tree, meta = fresh, None
    if restored is not None:
        tree, meta = restored
        if not np.array_equal(parallel.gather_to_host(tree.pop("labels")), run.noisy_labels):
            raise ValueError(
                f"checkpoint in {run.workdir} holds different noisy labels than this config and "
                "dataset produce; use another --workdir, or pass --fresh to start again"
            )
        tree = placed_like(tree, fresh)
        run.history, run.best_acc = meta["history"], meta["best_acc"]
        run.saved_at = position(run, meta["epoch"], int(meta.get("step_in_epoch", 0)))
        log(f"resumed from {run.workdir} at {run.saved_at}")
    run.guard.idle_message = (
        "nothing to save yet" if run.saved_at is None else f"nothing new to save; {run.last_good}"
    )
    if jax.process_index() == 0:
        workdir_lib.write_run_info(
            run.workdir, fingerprint(run.config), run.ds, run.config, run.noise_known, run.mean_std
        )
        # metrics.jsonl mirrors the restored history, so epochs redone after a kill (e.g. one
        # whose checkpoint was being written) or a torn last line never appear twice.
        ckpt_lib.atomic_write_text(
            run.metrics_path, "".join(json.dumps(r) + "\n" for r in run.history)
        )
        run.writers = writers_lib.open_writers(run.config, run.workdir, run.history)  # TensorBoard
    return tree, meta


def _named(run: Run, action: Callable[[], Any]) -> Any:
    """``action()`` (a save, or a wait for one), its OS errors (a full disk, a quota, a
    read-only filesystem, I/O) turned into one line naming the checkpoint folder and the last
    committed checkpoint (:class:`workdir.SaveFailed`)."""
    try:
        return action()
    except Exception as e:
        failed = workdir_lib.save_failed(e, run.manager.directory, run.manager.committed())
        if failed is None:
            raise
        raise failed from None


def save(run: Run, tree: dict, epoch_done: int, step_in_epoch: int = 0, **partial) -> None:
    """Checkpoint ``tree`` and the noisy labels at a position (``partial``: what a mid-epoch
    position needs besides the tree, e.g. the running loss sum). Asynchronous: a failure is
    raised at the next :func:`stop_agreed` or :func:`wait`."""
    _named(
        run,
        lambda: run.manager.save(
            epoch_done * run.steps_per_epoch + step_in_epoch,
            {**tree, "labels": run.data["labels"]},
            {
                "epoch": epoch_done,
                "step_in_epoch": step_in_epoch,
                "history": run.history,
                "best_acc": run.best_acc,
                **partial,
            },
        ),
    )
    run.saved_at = position(run, epoch_done, step_in_epoch)


def wait(run: Run) -> None:
    """Until the checkpoints being written are committed (a second signal meanwhile waits)."""
    with run.guard.saving_checkpoint():
        _named(run, run.manager.wait)


# ------------------------------------------------------------------------------------------------
# Metrics and the stop policy.


def record(run: Run, r: dict, describe: Callable[[dict], str]) -> dict:
    """An epoch's metrics ``r`` (with ``test_acc``, absent without a test set): the best
    accuracy added, appended to the history and metrics.jsonl (process 0), and ``describe(r)``
    logged."""
    if "test_acc" in r:
        run.best_acc = max(run.best_acc, r["test_acc"])
        r["best_acc"] = run.best_acc
    run.history.append(r)
    if jax.process_index() == 0:
        with open(run.metrics_path, "a") as f:
            f.write(json.dumps(r) + "\n")
        run.writers.write(r)  # TensorBoard (process 0); a failure is a warning
    log(describe(r))
    return r


def accuracy_text(r: dict) -> str:
    """An epoch line's accuracy part: "test acc 91.20% (best 91.50%)", or "no test set"."""
    if "test_acc" not in r:
        return "no test set"
    return f"test acc {r['test_acc']:.2f}% (best {r['best_acc']:.2f}%)"


def detection_text(run: Run, r: dict, auroc: str = "auroc") -> str:
    """An epoch line's detection part: AUROC (and P/R@0.5) against the known noise, else (no
    label known wrong) the noise model's estimate of the wrong labels' fraction."""
    if run.noise_known:
        text = f"{'division AUROC' if auroc == 'division' else 'noise AUROC'} {r['auroc']:.4f}"
        if "precision" in r and auroc != "division":
            text += f"  P/R@0.5 {r['precision']:.3f}/{r['recall']:.3f}"
        return text
    return f"est. noisy {r['est_noisy']:.1%}" if "est_noisy" in r else ""


def warn_degenerate(epoch: int, what: str, why: str, consequence: str) -> None:
    """The one warning of a mixture fit that failed (EM gave no usable two-component model)."""
    log(f"warning: epoch {epoch}: {what} was degenerate ({why}); {consequence}")


def stop_agreed(run: Run, sync_point: bool) -> bool:
    """Whether to stop now. With several processes, all must stop at the same step (the save is
    collective), so they agree at sync points (log steps, epoch ends) on whether any of them
    was signalled."""
    run.guard.busy()  # called after a train step: something new to save from now on
    run.trained = True
    _named(run, run.manager.check_for_errors)  # a failed save is named here, not an epoch later
    return _signalled(run, sync_point)


def _signalled(run: Run, sync_point: bool) -> bool:
    """Whether a stop was requested (agreed by every process at sync points)."""
    if jax.process_count() == 1:
        return run.guard.stop_requested
    if not sync_point:
        return False
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.int32(run.guard.stop_requested))
    return bool(np.any(flags))


@jax.jit
def all_finite(tree) -> jax.Array:
    """Whether every floating-point leaf of ``tree`` is finite (one scalar)."""
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree_util.tree_leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


# ------------------------------------------------------------------------------------------------
# The epochs.


@dataclasses.dataclass
class Epoch:
    """A finished epoch: the new tree, its metrics and how to log them."""

    tree: dict
    record: dict
    describe: Callable[[dict], str]


@dataclasses.dataclass
class Stopped:
    """An epoch stopped by a signal after ``step`` steps: saved there if ``step`` is not None
    (with ``partial`` in the metadata), else redone from its start by the next run."""

    tree: dict
    step: int | None = None
    partial: dict = dataclasses.field(default_factory=dict)


def resume_point(meta: dict | None) -> tuple[int, int, dict]:
    """(first epoch to run, its first step, the partial metadata of a mid-epoch checkpoint)."""
    if meta is None:
        return 1, 0, {}
    step = int(meta.get("step_in_epoch", 0))
    partial = {
        k: v for k, v in meta.items() if k not in ("epoch", "step_in_epoch", "history", "best_acc")
    }
    return meta["epoch"] + 1, step, partial if step else {}


def _stopped(run: Run, out: Stopped, epoch: int) -> None:
    """Save (or not) the position of an epoch stopped in the middle, and say so."""
    name = run.guard.signal_name
    if out.step is None:
        log(
            f"{name} during epoch {epoch}: not saved; {run.last_good}; re-run the same command "
            "to redo that epoch"
        )
        return
    if not bool(all_finite(out.tree)):
        raise run.diverged(f"non-finite train state at step {out.step} of epoch {epoch}")
    save(run, out.tree, epoch - 1, out.step, **out.partial)
    wait(run)  # "saved" only once committed
    log(
        f"{name} during epoch {epoch}: saved a checkpoint after step {out.step}/"
        f"{run.steps_per_epoch}; re-run the same command to resume from there"
    )


def faster_hint(config) -> str:
    """What would make a run take a fraction of its time (shown when it would take a day)."""
    features = config.data.source == "features" or config.data.extractor != "none"
    return eta.faster_hint(jax.default_backend(), features)


def run_epochs(
    run: Run,
    tree: dict,
    meta: dict | None,
    epoch_fn: Callable[..., Epoch | Stopped],
    *,
    stop_after_epoch: int | None = None,
    projection: Callable[[int, int], str | None] | None = None,
) -> tuple[dict, bool]:
    """Epochs from the restored position to ``config.epochs``: each recorded and saved; stops on
    a signal (see the module docstring) or after ``stop_after_epoch``; after each epoch
    ``projection(epoch, first epoch of this process)`` may return a line on the whole run's
    time (the method's, from ``run.clock``), logged. Returns the tree and whether a signal
    stopped the run."""
    start, first, partial = resume_point(meta)
    try:
        for epoch in range(start, run.config.epochs + 1):
            if epoch == start and _signalled(run, True):
                log(f"{run.guard.signal_name} before training resumed; {run.last_good}")
                return tree, True
            out = epoch_fn(tree, epoch, first, partial)
            if isinstance(out, Stopped):
                _stopped(run, out, epoch)
                return out.tree, True
            tree = out.tree
            record(run, out.record, out.describe)
            save(run, tree, epoch)
            line = projection(epoch, start) if projection is not None else None
            if line:
                log(line)
            first, partial = 0, {}
            if epoch < run.config.epochs and stop_agreed(run, True):
                wait(run)  # "saved" only once committed
                log(
                    f"{run.guard.signal_name}: saved the checkpoint of epoch {epoch}; re-run the "
                    "same command to resume"
                )
                return tree, True
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                break
    finally:
        wait(run)  # an asynchronous save in flight is completed, also when raising
    return tree, False


# ------------------------------------------------------------------------------------------------
# The end of a run.


OUTPUTS = "outputs.json"  # which checkpoint the run's outputs were made from (written last)
OUTPUT_FILES = ("per_sample.npz", "label_issues.csv", "label_issues_summary.json")


def made_from(workdir: str) -> tuple[int | None, list[str]]:
    """(the checkpoint the workdir's outputs were made from, the outputs missing): from
    ``outputs.json``, written after them; (None, [outputs.json]) without it."""
    try:
        with open(os.path.join(workdir, OUTPUTS)) as f:
            made = json.load(f)
        files, step = list(made["files"]), made["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, [OUTPUTS]
    return step, [name for name in files if not os.path.exists(os.path.join(workdir, name))]


def _stale(run: Run, step: int | None) -> str | None:
    """Why the workdir's outputs are not those of checkpoint ``step`` (None: they are)."""
    made, missing = made_from(run.workdir)
    if missing == [OUTPUTS]:
        return "" if run.trained else f"{OUTPUTS} is missing"
    if made != step:
        return f"they were made from checkpoint {made}"
    return f"{', '.join(missing)} missing" if missing else None


def finish(run: Run, tree: dict, outputs: Callable[[dict], dict], interrupted: bool) -> dict:
    """The run's outputs, a function of its newest checkpoint (``tree``): per_sample.npz of
    ``outputs(tree)`` (per-sample ``loss``, ``p_noisy``, ``logits`` on the devices), the report
    and ``outputs.json`` naming the checkpoint, each written atomically; made unless a signal
    stopped the run, and rebuilt (saying so) when missing or made from another checkpoint.
    Returns the summary."""
    step = run.manager.committed()
    why = _stale(run, step) if run.history and not interrupted else None
    if jax.process_count() > 1:  # process 0's files decide, for every process (a collective)
        from jax.experimental import multihost_utils

        rebuild = multihost_utils.broadcast_one_to_all(np.int32(why is not None))
        why = (why or "") if bool(rebuild) else None
    if why is not None:
        if why and not run.trained:  # a finished run whose outputs a kill left stale or missing
            log(
                f"rebuilding the outputs of checkpoint {step} ({run.saved_at}) in {run.workdir}: "
                f"{why}"
            )
        arrays = {k: parallel.gather_to_host(v) for k, v in outputs(tree).items()}  # collective
        if jax.process_index() == 0:
            try:
                write_outputs(run, arrays, step)
            except OSError as e:  # e.g. the disk filled after the final checkpoint committed
                failed = workdir_lib.outputs_failed(e, run.workdir, step)
                if failed is None:
                    raise
                raise failed from None
    return summary(run, interrupted)


def summary(run: Run, interrupted: bool) -> dict:
    """The run's summary: accuracies, detection (or the noise estimate), history, position."""
    h, nan = run.history, float("nan")
    return {
        "best_acc": run.best_acc if run.has_test else nan,  # NaN: no test set
        "last_acc": h[-1].get("test_acc", nan) if h else nan,
        "has_test": run.has_test,
        "epochs_done": h[-1]["epoch"] if h else 0,
        "auroc": h[-1]["auroc"] if h else float("nan"),
        "noise_known": run.noise_known,
        "est_noisy": h[-1].get("est_noisy", float("nan")) if h else float("nan"),
        "history": h,
        "interrupted": interrupted,
        "signal": run.guard.signal_name if interrupted and run.guard.signum else None,
        "checkpoint_at": run.saved_at,  # e.g. "step 5/23 of epoch 2" or "the end of epoch 3"
    }


def write_outputs(run: Run, arrays: dict, step: int | None) -> None:
    """per_sample.npz of the final per-sample arrays, then the report (figures, label_issues),
    then ``outputs.json`` naming the checkpoint ``step`` they were made from."""
    logits = arrays["logits"].astype(np.float32)
    per_sample = dict(
        loss=arrays["loss"],
        p_noisy=arrays["p_noisy"],
        prediction=np.argmax(logits, -1).astype(np.int32),
        logits=logits,
        noisy_label=run.noisy_labels,
        true_label=run.ds.train_labels.astype(np.int32),
        noise_mask=run.noise_mask,
        checkpoint=np.int64(-1 if step is None else step),
    )
    ckpt_lib.atomic_write(
        os.path.join(run.workdir, "per_sample.npz"), lambda f: np.savez(f, **per_sample)
    )
    from jaxnoise import report  # matplotlib is imported only here

    t0 = time.time()
    try:
        out = report.write_report(run.workdir)
    except Exception as e:  # the run's results are saved; a plotting failure must not hide it
        log(
            f"warning: the report could not be written ({type(e).__name__}: {e}); "
            f"retry with: jaxnoise report {run.workdir}"
        )
        return
    log(
        f"figures and label_issues.csv written to {run.workdir} ({out.get('num_flagged', '?')} "
        f"samples flagged as probably mislabeled; {time.time() - t0:.1f}s)"
    )
    if out.get("nothing_flagged"):
        log(out["nothing_flagged"])
    made = {"checkpoint": step, "position": run.saved_at, "files": [*OUTPUT_FILES, "figures"]}
    ckpt_lib.atomic_write_text(os.path.join(run.workdir, OUTPUTS), json.dumps(made, indent=2))
