"""The training loop: jitted train step, tracking pass, on-device mixture fit, evaluation.

Data flows one way:

    config -> data (uint8 arrays on device) -> noise (noisy labels + mask)
    -> per epoch: train steps (jit) -> tracking pass (per-sample loss, jit)
       -> mixture fit (jit, on device) -> posteriors for the next epoch; test evaluation

One train step serves every method: the config's method and the epoch select a static ``Phase``
(mixup kind, bootstrapping kind, regulariser, pair weighting), and each distinct phase compiles
once. Nothing per-sample crosses to the host inside an epoch; at the end of an epoch a handful of
scalars do (metrics), and the per-sample arrays of the last epoch are written to the workdir.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from jaxnoise import checkpoint as ckpt_lib
from jaxnoise import (
    compile_cache,
    eta,
    human_labels,
    losses,
    mixture,
    models,
    parallel,
    schedule,
    signals,
)
from jaxnoise import config as config_lib
from jaxnoise import data as data_lib
from jaxnoise import metrics as metrics_lib
from jaxnoise import noise as noise_lib
from jaxnoise import step as step_lib
from jaxnoise import workdir as workdir_lib
from jaxnoise.progress import Progress, log
from jaxnoise.schedule import Phase
from jaxnoise.step import (  # noqa: F401  (the step's pieces, also importable from here)
    StepDraws,
    _apply,
    epoch_batch_sizes,
    epoch_keys,
    make_permutation_fn,
    make_train_step,
    make_update,
    regularizer_prior,
    step_draws,
)

# ------------------------------------------------------------------------------------------------
# Data preparation (host, once per run).


def load_data(config: ml_collections.ConfigDict) -> data_lib.Dataset:
    """Load the configured dataset (and subset it), returning host uint8 arrays."""
    d = config.data
    ds = data_lib.load(
        d.source,
        name=d.name,
        root=d.root,
        data_dir=d.data_dir or None,
        cache_dir=d.cache_dir or None,
        features=d.features,
        test_features=d.test_features,
    )
    if config.noise_kind == "human":  # aligned by identity before any subsetting
        ds = human_labels.resolve(ds, label_file=config.label_file, label_key=config.label_key,
                                  label_order=config.label_order)  # fmt: skip
    if d.subset_per_class > 0:
        ds = data_lib.balanced_subset(ds, d.subset_per_class, seed=config.seed)
    if d.extractor != "none":  # frozen features, computed once and cached
        from jaxnoise import extractors, features

        root = d.root if d.source == "folder" else ""
        ds = features.extract_cached(
            ds, d.extractor,
            kmeans=extractors.KMeansSettings(centroids=d.kmeans_centroids,
                                             num_patches=d.kmeans_patches,
                                             iters=d.kmeans_iters),
            weights=d.extractor_weights,
            cache_dir=d.cache_dir or features.default_cache_dir(root),
            batch=d.extractor_batch,
        )  # fmt: skip
    return ds


def inject_noise(config: ml_collections.ConfigDict, ds: data_lib.Dataset):
    """Noisy labels and the noise mask for the training set."""
    dataset = {"cifar10": "cifar10", "cifar100": "cifar100"}.get(ds.name, ds.name)
    noisy, mask = noise_lib.apply(
        config.noise_kind,
        ds.train_labels,
        num_classes=ds.num_classes,
        rate=config.noise,
        seed=config.noise_seed,
        dataset=dataset,
        human_labels=ds.label_sets.get(human_labels.KEY),
    )
    if noisy.size and not (0 <= noisy.min() and noisy.max() < ds.num_classes):  # never trains
        raise ValueError(  # on labels outside the model's classes (jax would not complain)
            f"noise kind {config.noise_kind!r} produced labels outside [0, {ds.num_classes})"
        )
    return noisy, mask


def validate_against_data(
    config: ml_collections.ConfigDict, ds: data_lib.Dataset, num_devices: int = 1
) -> None:
    """Checks that need the dataset's size (still before anything is compiled)."""
    n = ds.train_images.shape[0]
    if ds.num_classes < 2:
        raise ValueError(
            f"dataset {ds.name!r} has {ds.num_classes} class(es) {ds.class_names}; learning "
            "with noisy labels needs at least 2"
        )
    if n < mixture.MIN_SAMPLES:
        raise ValueError(
            f"dataset {ds.name!r} has {n} training samples; the noise model needs at least "
            f"{mixture.MIN_SAMPLES}"
        )
    if config.batch_size % num_devices:
        raise ValueError(
            f"config.batch_size = {config.batch_size} must be divisible by the number of devices "
            f"({num_devices}) for data parallelism"
        )
    if config.batch_size > n:
        raise ValueError(
            f"config.batch_size = {config.batch_size} is larger than the training set ({n} "
            "samples): use a batch size <= the number of training samples"
        )
    if ds.is_features != (config.model in config_lib.FEATURE_MODELS):
        raise ValueError(
            f"config.model = {config.model!r} does not fit dataset {ds.name!r} of "
            f"{'features' if ds.is_features else 'images'} {ds.image_shape}"
        )
    h, w = ds.image_shape[:2] if not ds.is_features else (0, 0)
    if config.data.crop_padding > max(h, w) and not ds.is_features:
        raise ValueError(
            f"config.data.crop_padding = {config.data.crop_padding} exceeds the image size {h}x{w}"
        )


# ------------------------------------------------------------------------------------------------
# Model and optimizer.


def create_model(config: ml_collections.ConfigDict, ds: data_lib.Dataset) -> nnx.Module:
    """Build the configured model (and load local weights if given)."""
    options = {"shortcut": config.shortcut} if config.model == "preact_resnet18" else {}
    if config.model == "mlp":
        options = {"hidden": tuple(config.mlp_hidden)}
    model = models.create_model(
        config.model,
        ds.num_classes,
        width=config.width,
        in_channels=ds.image_shape[-1],
        rngs=nnx.Rngs(config.seed),
        **options,
    )
    if config.weights:
        models.load_resnet50_weights(model, config.weights)
    return models.set_compute_dtype(model, config.compute_dtype)


def create_optimizer(config: ml_collections.ConfigDict,
                     steps_per_epoch: int = 1) -> optax.GradientTransformation:  # fmt: skip
    """SGD with momentum and PyTorch-style (coupled) weight decay, or Adam, with the method's
    learning-rate schedule evaluated in the graph from the optimizer's step count (the state's
    ``count``; ``hyperparams["learning_rate"]`` holds the rate of the last step)."""

    lr = schedule.lr_schedule(config, steps_per_epoch)
    return optax.inject_hyperparams(step_lib.sgd_or_adam(config))(learning_rate=lr)


def split_model(model: nnx.Module, config: ml_collections.ConfigDict):
    """(graphdef, trainable params, frozen params, batch stats)."""
    trainable = models.trainable_filter(config.model, config.freeze_backbone)
    return nnx.split(model, trainable, nnx.Param, nnx.BatchStat)


def init_train_state(config: ml_collections.ConfigDict, ds: data_lib.Dataset, mesh=None):
    """(graphdef, optimizer, train state, per-sample aux) for a fresh run.

    With a mesh, the state is replicated and the per-sample aux arrays are sharded over it.
    """
    model = create_model(config, ds)
    graphdef, params, frozen, stats = split_model(model, config)
    n_train = ds.train_images.shape[0]
    devices = mesh.size if mesh is not None else 1
    spe = len(epoch_batch_sizes(n_train, config.batch_size, config.drop_last, devices))
    tx = create_optimizer(config, spe)
    state = {
        "params": params,
        "frozen": frozen,
        "stats": stats,
        "opt_state": tx.init(params),
        "mixture": mixture.initial_state(
            config.noise_model, ds.num_classes if config.mixture_scope == "class" else 0
        ),
    }
    if mesh is None:
        aux = {  # per-sample posteriors and clean logits from the last tracking pass
            "p_noisy": jnp.full((n_train,), 0.5, jnp.float32),
            "logits": jnp.zeros((n_train, ds.num_classes), jnp.float32),
        }
    else:
        state = parallel.put_replicated(mesh, state)
        aux = {
            "p_noisy": parallel.zeros_like_sharded(mesh, (n_train,), jnp.float32, 0.5),
            "logits": parallel.zeros_like_sharded(mesh, (n_train, ds.num_classes), jnp.float32),
        }
    if config.loss_signal != "epoch":  # the accumulated loss the mixture fits
        signal = signals.init(config.loss_signal, n_train, config.signal_k)
        if mesh is not None:
            signal = signals.SignalState(
                buffer=parallel.zeros_like_sharded(mesh, signal.buffer.shape, jnp.float32),
                count=parallel.put_replicated(mesh, signal.count),
            )
        aux["signal"] = signal
    return graphdef, tx, state, aux


def make_eval_chunk(graphdef, config: ml_collections.ConfigDict, mean, std, mesh=None):
    """Jitted eval-mode forward on one chunk of indices: per-sample loss, logits."""
    mean, std = jnp.asarray(mean), jnp.asarray(std)

    @functools.partial(jax.jit, static_argnames=("augment",))
    def chunk(state, images, labels, idx, epoch, augment: bool = False):
        x = parallel.constrain_batch(images[idx], mesh)
        if augment:  # one key per sample: the same crops on any chunking or device count
            keys = jax.vmap(jax.random.fold_in, (None, 0))(epoch_keys(config.seed, epoch)[1], idx)
            x = jax.vmap(lambda img, k: data_lib.augment(
                img[None], k, padding=config.data.crop_padding, flip=config.data.flip)[0])(x, keys)
        x = data_lib.normalize(x, mean, std)
        logits, _ = _apply(graphdef, state["params"], state["frozen"], state["stats"], x, False)
        return losses.cross_entropy(logits, parallel.constrain_batch(labels[idx], mesh)), logits

    return chunk


_COMPILED_EVAL: set = set()  # (eval function, split shape, chunk, augment) already compiled


def forward_all(chunk_fn, state, images, labels, chunk: int, epoch: int = 0, augment=False,
                progress: str | None = None, mesh=None):  # fmt: skip
    """Eval-mode pass over a whole device-resident split in fixed-size chunks.

    Returns per-sample losses (N,) and logits (N, C), both on device (sharded over the mesh).
    """
    n = images.shape[0]
    d = mesh.size if mesh is not None else 1
    chunk = max(d, min(chunk, n) // d * d)
    steps = -(-n // chunk)
    all_idx = np.arange(steps * chunk, dtype=np.int32) % n  # the tail wraps; trimmed below
    outs_l, outs_z = [], []
    signature = (id(chunk_fn), images.shape, chunk, augment)
    if signature not in _COMPILED_EVAL:  # the first call of this shape compiles
        _COMPILED_EVAL.add(signature)
        log(f"compiling the evaluation pass ({n} samples in chunks of {chunk}; first call)")
    bar = Progress(steps, progress) if progress else None
    for s in range(steps):
        idx = all_idx[s * chunk : (s + 1) * chunk]
        loss, z = chunk_fn(
            state, images, labels, idx, np.int32(epoch), augment=augment
        )
        outs_l.append(loss)
        outs_z.append(z)
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    return _concat(n, mesh)(outs_l, outs_z)


def make_fit_fns(config: ml_collections.ConfigDict, num_classes: int):
    """(fit_signal, fit_mixture): the per-epoch loss signal and the mixture fitted to it (jit).

    ``fit_signal(signal_state, track_loss) -> (signal_state, loss_to_fit)`` (``loss_signal``);
    ``fit_mixture(loss, labels) -> state``: one global mixture, or one per given class
    (``mixture_scope="class"``, a batched state).
    """
    update = jax.jit(functools.partial(signals.update, kind=config.loss_signal,
                                       momentum=config.signal_momentum))  # fmt: skip

    def fit_signal(signal_state, track_loss):
        if config.loss_signal == "epoch":
            return None, track_loss
        return update(signal_state, track_loss)
    opts = dict(max_iters=config.em_iters, noisy=config.noisy_component)

    def fit_mixture(loss, labels):
        if config.mixture_scope == "class":
            return mixture.fit_per_class(config.noise_model, loss, labels, num_classes, **opts)
        return mixture.fit(config.noise_model, loss, **opts)

    return fit_signal, fit_mixture


@functools.cache
def _concat(n: int, mesh):
    """Jitted concatenation of per-chunk outputs into per-sample arrays (sharded on a mesh)."""
    out = None
    if mesh is not None and n % mesh.size == 0:  # the training set; the test set is replicated
        out = (parallel.sample_sharding(mesh, 1), parallel.sample_sharding(mesh, 2))
    elif mesh is not None:
        out = (parallel.replicated(mesh), parallel.replicated(mesh))
    return jax.jit(
        lambda ls, zs: (jnp.concatenate(ls)[:n], jnp.concatenate(zs)[:n]), out_shardings=out
    )


# ------------------------------------------------------------------------------------------------
# The run.


def _config_fingerprint(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort(sort_keys=True))


@jax.jit
def _tree_all_finite(tree) -> jax.Array:
    """Whether every floating-point leaf of ``tree`` is finite (one scalar)."""
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree_util.tree_leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _stop_agreed(guard: ckpt_lib.PreemptionGuard, sync_point: bool) -> bool:
    """Whether to stop now. With several processes, all must stop at the same step (the save
    is collective), so they agree at sync points (log steps, epoch ends) on whether any of them
    was signalled."""
    if jax.process_count() == 1:
        return guard.stop_requested
    if not sync_point:
        return False
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.int32(guard.stop_requested))
    return bool(np.any(flags))


def _position(epoch_done: int, step_in_epoch: int, steps_per_epoch: int) -> str:
    if step_in_epoch:
        return f"step {step_in_epoch}/{steps_per_epoch} of epoch {epoch_done + 1}"
    return f"the end of epoch {epoch_done}"


def _degenerate_reason(track_loss: jax.Array, valid) -> str:
    if isinstance(valid, list):  # mixture_scope="class"
        bad = [c for c, v in enumerate(valid) if not v]
        return f"classes {bad} (fewer than {mixture.MIN_SAMPLES} samples, or equal losses)"
    p5, p95 = (float(v) for v in mixture.percentiles(track_loss, (5.0, 95.0)))
    if p95 <= p5 + 1e-5:
        return f"the 5th and 95th loss percentiles coincide ({p5:.6g}): the losses are ~all equal"
    return "EM ended with non-finite or non-positive parameters"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, fresh: bool = False,
                       stop_after_epoch: int | None = None) -> dict:  # fmt: skip
    """Train and evaluate; resumes from ``workdir`` if it holds a run of the same config.

    ``stop_after_epoch`` ends this call after that epoch's checkpoint; calling again resumes.

    SIGTERM or SIGINT (a preemption, Ctrl-C) lets the current train step finish, saves a
    checkpoint of that exact position (epoch and step) and returns with
    ``summary["interrupted"] = True`` (``summary["signal"]`` names the signal); calling again
    resumes from that step and gives exactly the metrics of an uninterrupted run. A non-finite
    loss (training loss, or any per-sample loss of the tracking pass) raises FloatingPointError
    and keeps the last good checkpoint.
    """
    config_lib.validate(config)
    # After jax.distributed.initialize, which installs its own SIGTERM notifier: ours replaces it.
    parallel.initialize(config)
    compile_cache.configure(config.compilation_cache)  # before the first compile
    with ckpt_lib.PreemptionGuard() as guard:
        if config.method == "DivideMix":  # two networks, co-divide: its own loop
            from jaxnoise import dividemix_loop

            return dividemix_loop.train_dividemix(config, workdir, fresh=fresh,
                                                  stop_after_epoch=stop_after_epoch,
                                                  guard=guard)  # fmt: skip
        return _train_and_evaluate(config, workdir, fresh, stop_after_epoch, guard)


@dataclasses.dataclass
class Run:
    """Everything one run sets up once (data on device, compiled functions, the checkpointer),
    and its progress (history, best accuracy, the newest checkpoint)."""

    config: ml_collections.ConfigDict
    workdir: str
    mesh: Any
    guard: ckpt_lib.PreemptionGuard
    ds: data_lib.Dataset
    noisy_labels: np.ndarray
    noise_mask: np.ndarray
    data: dict  # device-resident training images and noisy labels (sharded)
    mask: jax.Array  # the noise mask on device, for the detection metrics
    test: tuple  # (images, labels), replicated
    graphdef: Any
    tx: Any
    mean_std: tuple
    batch_sizes: list[int]
    manager: ckpt_lib.Checkpointer
    eval_chunk: Any
    fit_signal: Any
    fit_mixture: Any
    permutation: Any
    steps: dict = dataclasses.field(default_factory=dict)  # (phase, batch, k) -> compiled step
    history: list = dataclasses.field(default_factory=list)
    best_acc: float = 0.0
    saved_at: str | None = None  # position of the newest checkpoint, for messages
    metrics_path: str = ""
    clock: eta.RunClock = dataclasses.field(default_factory=eta.RunClock)  # the run's ETA

    @property
    def steps_per_epoch(self) -> int:
        return len(self.batch_sizes)

    @property
    def last_good(self) -> str:
        if self.saved_at is None:
            return "no checkpoint has been saved yet"
        return f"the checkpoint at {self.saved_at} in {self.manager.directory} is kept"

    def step_for(self, phase: Phase, batch: int, k: int = 1):
        """The compiled train step of a phase, batch size and steps per call (built once)."""
        if (phase, batch, k) not in self.steps:
            log(f"compiling the {phase.name} train step (batch {batch}"
                f"{f', {k} steps per call' if k > 1 else ''}; first call)")  # fmt: skip
            self.steps[(phase, batch, k)] = make_train_step(
                self.graphdef, self.tx, self.config, phase, self.ds.num_classes,
                *self.mean_std, self.mesh, batch, steps=k,
            )  # fmt: skip
        return self.steps[(phase, batch, k)]

    def diverged(self, what: str) -> FloatingPointError:
        return FloatingPointError(
            f"{what}: training diverged; {self.last_good}. Training is deterministic, so "
            "re-running the same command resumes from that checkpoint and diverges again unless "
            "the cause was transient; to change the config (e.g. a lower config.lr) pass --fresh "
            "or use another --workdir"
        )


def load_noisy_data(config, mesh):
    """(dataset, noisy labels, noise mask), the training set cut to a multiple of the mesh."""
    t0 = time.time()
    ds = load_data(config)
    validate_against_data(config, ds, mesh.size)
    noisy_labels, noise_mask = inject_noise(config, ds)
    n_use = parallel.usable_samples(ds.train_images.shape[0], mesh)
    if n_use < ds.train_images.shape[0]:  # per-sample arrays shard evenly over the mesh
        log(f"using the first {n_use} of {ds.train_images.shape[0]} training samples "
            f"(divisible by the {mesh.size} devices)")  # fmt: skip
        ds = data_lib.take_train(ds, n_use)
        noisy_labels, noise_mask = noisy_labels[:n_use], noise_mask[:n_use]
    log(f"data: {ds.name} train {ds.train_images.shape} test {ds.test_images.shape} classes "
        f"{ds.num_classes}; noise {config.noise_kind} r={config.noise}: "
        f"{noise_mask.mean():.1%} of labels flipped ({time.time() - t0:.1f}s)")  # fmt: skip
    return ds, noisy_labels, noise_mask


def restore(run: Run, state, aux):
    """(state, aux, metadata) of the newest checkpoint in the run's workdir, or the given
    fresh state and aux with None; the run's history and position follow the checkpoint."""
    restored = run.manager.restore_latest({"state": state, "aux": aux,
                                           "labels": run.data["labels"]})  # fmt: skip
    if restored is None:
        return state, aux, None
    tree, meta = restored
    if not np.array_equal(parallel.gather_to_host(tree["labels"]), run.noisy_labels):
        raise ValueError(
            f"checkpoint in {run.workdir} holds different noisy labels than this config and "
            "dataset produce; use another --workdir, or pass --fresh to start again"
        )
    run.history, run.best_acc = meta["history"], meta["best_acc"]
    run.saved_at = _position(meta["epoch"], int(meta.get("step_in_epoch", 0)),
                             run.steps_per_epoch)  # fmt: skip
    log(f"resumed from {run.workdir} at {run.saved_at}")
    return tree["state"], tree["aux"], meta


def setup(config, workdir: str, fresh: bool, guard) -> tuple[Run, dict, dict, dict | None]:
    """Load and place the data, build the model and the compiled pieces, restore a checkpoint.

    Returns the run, the train state, the per-sample aux arrays and the restored metadata."""
    mesh = parallel.make_mesh(config.mesh.num_devices)
    os.makedirs(workdir, exist_ok=True)
    resolved = _config_fingerprint(config)
    ckpt_lib.check_workdir_config(workdir, resolved, fresh=fresh and jax.process_index() == 0)
    ds, noisy_labels, noise_mask = load_noisy_data(config, mesh)
    workdir_lib.check_same_dataset(workdir, ds)
    n_train = ds.train_images.shape[0]
    # Device-resident data: the training set and per-sample arrays sharded over the mesh (each
    # process places only its block), the (small) test set replicated.
    data = {"images": parallel.put_samples(mesh, ds.train_images),
            "labels": parallel.put_samples(mesh, noisy_labels.astype(np.int32))}  # fmt: skip
    test = parallel.put_replicated(mesh, (ds.test_images, ds.test_labels.astype(np.int32)))
    log(f"devices: {mesh.size} ({jax.devices()[0].platform}, {jax.process_count()} process(es))")
    graphdef, tx, state, aux = init_train_state(config, ds, mesh)
    mean_std = data_lib.normalization_stats(ds, config.data.normalization)
    run = Run(
        config, workdir, mesh, guard, ds, noisy_labels, noise_mask, data,
        parallel.put_samples(mesh, noise_mask), test, graphdef, tx, mean_std,
        step_lib.epoch_batch_sizes(n_train, config.batch_size, config.drop_last, mesh.size),
        ckpt_lib.Checkpointer(workdir, keep=config.keep_checkpoints),
        make_eval_chunk(graphdef, config, *mean_std, mesh), *make_fit_fns(config, ds.num_classes),
        step_lib.make_permutation_fn(config.seed, n_train, mesh),
        metrics_path=os.path.join(workdir, "metrics.jsonl"),
    )  # fmt: skip
    state, aux, meta = restore(run, state, aux)
    if jax.process_index() == 0:
        workdir_lib.write_run_info(workdir, resolved, ds, config)
        # metrics.jsonl mirrors the restored history, so epochs redone after a kill (e.g. one
        # whose checkpoint was being written) or a torn last line never appear twice.
        ckpt_lib.atomic_write_text(run.metrics_path,
                                   "".join(json.dumps(r) + "\n" for r in run.history))  # fmt: skip
    return run, state, aux, meta


def save(run: Run, state, aux, epoch_done: int, step_in_epoch: int, loss_sum: float = 0.0):
    """Checkpoint the run's position (the orbax step is the number of train steps done, so
    end-of-epoch and mid-epoch checkpoints order correctly)."""
    run.manager.save(
        epoch_done * run.steps_per_epoch + step_in_epoch,
        {"state": state, "aux": aux, "labels": run.data["labels"]},
        {"epoch": epoch_done, "step_in_epoch": step_in_epoch, "history": run.history,
         "best_acc": run.best_acc, "loss_sum": loss_sum},
    )  # fmt: skip
    run.saved_at = _position(epoch_done, step_in_epoch, run.steps_per_epoch)


def _calls(run: Run, first: int) -> list[tuple[int, int]]:
    """The epoch's train-step calls from step ``first``: (start step, steps in the call), with
    ``config.steps_per_call`` full batches per call where they fit."""
    k, sizes, out, s = run.config.steps_per_call, run.batch_sizes, [], first
    while s < len(sizes):
        n = k if s + k <= len(sizes) and len(set(sizes[s : s + k])) == 1 else 1
        out.append((s, n))
        s += n
    return out


def train_epoch(run: Run, state, aux, epoch: int, first: int, loss_sum: float):
    """Train steps ``first..`` of an epoch. Returns (state, summed loss, steps done): fewer
    than the epoch's steps when a stop was requested (SIGTERM/SIGINT), acted on at the next
    step boundary. Nothing returns to the host except at log points."""
    c, spe = run.config, run.steps_per_epoch
    phase = schedule.phase_for_epoch(c, epoch)
    with jax.transfer_guard("allow"):  # host <-> device only at the epoch's start and log points
        perm = run.permutation(np.int32(epoch))
        total = parallel.put_replicated(run.mesh, np.float32(loss_sum))
    later = eta.add_work({"track": 1, "eval": 1}, eta.bootstrap_work(c.epochs - epoch, spe))
    bar = Progress(spe, f"epoch {epoch}/{c.epochs} {phase.name}", initial=first,
                   items_per_step=c.batch_size, log_every_seconds=c.log_every_seconds,
                   run=run.clock, later=later)  # fmt: skip
    t0, done, pending = time.time(), first, None
    for s, k in _calls(run, first):
        state, metrics = run.step_for(phase, run.batch_sizes[s], k)(state, run.data, aux, perm)
        total = total + metrics["loss"]
        if pending is not None and jax.process_count() == 1:
            jax.block_until_ready(pending)  # at most one call in flight: a stop acts at once
        pending, done = metrics["loss"], s + k
        sync = done // c.log_every_steps > s // c.log_every_steps or done == spe
        if sync:
            with jax.transfer_guard("allow"):
                running = float(total) / done
            if not np.isfinite(running):
                raise run.diverged(f"non-finite training loss ({running}) after step {done}/"
                                   f"{spe} of epoch {epoch}")  # fmt: skip
            bar.update(done - bar.n, loss=running,
                       images_per_s=sum(run.batch_sizes[first:done]) / (time.time() - t0))
        if done < spe and _stop_agreed(run.guard, sync):
            break
    bar.close()
    return state, total, done


def track_and_fit(run: Run, state, aux, epoch: int):
    """The tracking pass (per-sample losses), the loss signal and the mixture fitted to it;
    returns the state with the new mixture, the next epoch's aux and the fitted arrays."""
    c = run.config
    t0 = time.time()
    track_loss, track_logits = forward_all(
        run.eval_chunk, state, run.data["images"], run.data["labels"], c.eval_batch_size,
        epoch=epoch, augment=c.track_augment, mesh=run.mesh,
    )  # fmt: skip
    n_bad = int(jnp.sum(~jnp.isfinite(track_loss)))
    if n_bad:  # the noise model cannot be fitted to a diverged model's losses
        raise run.diverged(f"{n_bad} of {track_loss.shape[0]} per-sample losses of the "
                           f"tracking pass after epoch {epoch} are NaN or infinite")  # fmt: skip
    t_track, t0 = time.time() - t0, time.time()
    signal_state, fit_loss = run.fit_signal(aux.get("signal"), track_loss)
    mix_state = run.fit_mixture(fit_loss, run.data["labels"])
    labels = run.data["labels"]
    # The posterior the next epoch trains with (the lookup table by default).
    p_noisy = mixture.posterior_noisy(mix_state, fit_loss, lookup=c.posterior_lookup,
                                      classes=labels)  # fmt: skip
    jax.block_until_ready(p_noisy)
    t_fit = time.time() - t0
    aux = {"p_noisy": p_noisy, "logits": track_logits}
    if signal_state is not None:
        aux["signal"] = signal_state
    fitted = {"track_loss": track_loss, "fit_loss": fit_loss, "p_noisy": p_noisy,
              "p_exact": mixture.posterior_noisy(mix_state, fit_loss, classes=labels),
              "logits": track_logits, "mixture": mix_state}  # fmt: skip
    return dict(state, mixture=mix_state), aux, fitted, {"track": t_track, "fit": t_fit}


def evaluate(run: Run, state) -> dict:
    """Test loss and accuracy."""
    images, labels = run.test
    loss, logits = forward_all(run.eval_chunk, state, images, labels,
                               run.config.eval_batch_size, mesh=run.mesh)  # fmt: skip
    acc = 100.0 * float(jnp.mean(jnp.argmax(logits, -1) == labels))
    return {"test_loss": float(jnp.mean(loss)), "test_acc": acc}


def record(run: Run, epoch: int, train_loss: float, fitted: dict, test: dict, seconds: dict,
           images: int) -> dict:  # fmt: skip
    """The epoch's metrics: appended to the history and metrics.jsonl, and logged."""
    c = run.config
    run.best_acc = max(run.best_acc, test["test_acc"])
    det = jax.device_get(metrics_lib.detection_metrics(fitted["p_noisy"], fitted["fit_loss"],
                                                       run.mask))  # fmt: skip
    det["auroc_exact"] = metrics_lib.auroc(fitted["p_exact"], run.mask)
    quant = jax.device_get(metrics_lib.loss_quantiles(fitted["track_loss"], run.mask))
    r = {
        "epoch": epoch, "phase": schedule.phase_for_epoch(c, epoch).name,
        "lr": schedule.lr_for_epoch(c, epoch),
        "temperature": float(np.float32(schedule.temperature_for_epoch(c, epoch))),
        "train_loss": train_loss, **test, "best_acc": run.best_acc,
        **{k: float(v) for k, v in det.items()},
        "loss_quantiles_clean": [float(v) for v in quant["clean"]],
        "loss_quantiles_noisy": [float(v) for v in quant["noisy"]],
        "mixture": mixture.summary(fitted["mixture"]),
        "seconds": seconds, "images_per_s": images / max(seconds["train"], 1e-9),
    }  # fmt: skip
    if not np.all(r["mixture"]["valid"]):
        where = "in those classes" if isinstance(r["mixture"]["valid"], list) else "every"
        log(f"warning: epoch {epoch}: the {c.noise_model} fit was degenerate "
            f"({_degenerate_reason(fitted['fit_loss'], r['mixture']['valid'])}); {where} "
            "p(noisy) is 0.5 for the next epoch (no sample is favoured)")  # fmt: skip
    run.history.append(r)
    if jax.process_index() == 0:
        with open(run.metrics_path, "a") as f:
            f.write(json.dumps(r) + "\n")
    log(f"epoch {epoch}: train loss {train_loss:.4f}  test acc {r['test_acc']:.2f}% (best "
        f"{run.best_acc:.2f}%)  noise AUROC {r['auroc']:.4f}  P/R@0.5 {r['precision']:.3f}/"
        f"{r['recall']:.3f}  [{seconds['train']:.1f}s train, {seconds['track']:.1f}s track, "
        f"{seconds['fit'] * 1e3:.0f}ms fit]")  # fmt: skip
    return r


def faster_hint(config: ml_collections.ConfigDict) -> str:
    """What would make a run take a fraction of its time (shown past a day)."""
    features = config.data.source == "features" or config.data.extractor != "none"
    return eta.faster_hint(jax.default_backend(), features)


def _train_and_evaluate(config, workdir, fresh, stop_after_epoch, guard) -> dict:
    run, state, aux, meta = setup(config, workdir, fresh, guard)
    start_epoch = meta["epoch"] + 1 if meta else 1
    first, loss_sum = (int(meta.get("step_in_epoch", 0)), meta.get("loss_sum", 0.0)) if meta \
        else (0, 0.0)  # fmt: skip
    spe, last, interrupted = run.steps_per_epoch, None, False
    try:
        for epoch in range(start_epoch, config.epochs + 1):
            if epoch == start_epoch and _stop_agreed(guard, True):
                interrupted = True  # signalled while loading or restoring: nothing new to save
                log(f"{guard.signal_name} before training resumed; {run.last_good}")
                break
            t0 = time.time()
            state, total, done = train_epoch(run, state, aux, epoch, first, loss_sum)
            t_train, images = time.time() - t0, sum(run.batch_sizes[first:done])
            if done < spe:  # preempted: save this exact position and stop
                if not bool(_tree_all_finite(state)):
                    raise run.diverged(f"non-finite train state at step {done} of epoch {epoch}")
                save(run, state, aux, epoch - 1, done, float(total))
                interrupted = True
                log(f"{guard.signal_name} during epoch {epoch}: saved a checkpoint after step "
                    f"{done}/{spe}; re-run the same command to resume from there")  # fmt: skip
                break
            train_loss = float(total) / spe
            if not np.isfinite(train_loss):
                raise run.diverged(f"non-finite training loss ({train_loss}) in epoch {epoch}")
            w_track = eta.work_clock()  # the passes' times for the ETA, compiling left out
            state, aux, last, seconds = track_and_fit(run, state, aux, epoch)
            t0, w_eval = time.time(), eta.work_clock()
            test = evaluate(run, state)
            seconds = {"train": t_train, **seconds, "eval": time.time() - t0}
            record(run, epoch, train_loss, last, test, seconds, images)
            save(run, state, aux, epoch, 0)
            run.clock.add("track", 1, w_eval - w_track)
            run.clock.add("eval", 1, eta.work_clock() - w_eval)
            if epoch == start_epoch:  # the first epoch trained in this process
                log(eta.bootstrap_projection(run.clock, config.epochs, spe,
                                             eta.bootstrap_work(config.epochs - epoch, spe),
                                             faster_hint(config)))
            first, loss_sum = 0, 0.0
            if epoch < config.epochs and _stop_agreed(guard, True):
                interrupted = True
                log(f"{guard.signal_name}: saved the checkpoint of epoch {epoch}; re-run the "
                    "same command to resume")  # fmt: skip
                break
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                break
    finally:
        run.manager.wait()  # an asynchronous save in flight is completed, also when raising
    return finish(run, last, interrupted)


def finish(run: Run, last: dict | None, interrupted: bool) -> dict:
    """per_sample.npz of the last epoch, the report (figures, label_issues.csv), the summary."""
    workdir, main_process = run.workdir, jax.process_index() == 0
    if last is not None:  # the gather is collective: every process takes part
        loss, p_noisy, logits = (parallel.gather_to_host(last[k])
                                 for k in ("track_loss", "p_noisy", "logits"))  # fmt: skip
    if last is not None and main_process:
        arrays = dict(loss=loss, p_noisy=p_noisy, prediction=np.argmax(logits, -1).astype(np.int32),
                      logits=logits.astype(np.float32), noisy_label=run.noisy_labels,
                      true_label=run.ds.train_labels.astype(np.int32),
                      noise_mask=run.noise_mask)  # fmt: skip
        ckpt_lib.atomic_write(os.path.join(workdir, "per_sample.npz"),
                              lambda f: np.savez(f, **arrays))  # fmt: skip
    h, guard = run.history, run.guard
    summary = {
        "best_acc": run.best_acc,
        "last_acc": h[-1]["test_acc"] if h else float("nan"),
        "epochs_done": h[-1]["epoch"] if h else 0,
        "auroc": h[-1]["auroc"] if h else float("nan"),
        "history": h,
        "interrupted": interrupted,
        "signal": guard.signal_name if interrupted and guard.signum else None,
        "checkpoint_at": run.saved_at,  # e.g. "step 5/23 of epoch 2" or "the end of epoch 3"
    }
    if main_process and not interrupted and os.path.exists(os.path.join(workdir, "per_sample.npz")):
        from jaxnoise import report  # matplotlib is imported only here

        try:
            out = report.write_report(workdir)
            log(f"figures and label_issues.csv written to {workdir} ({out.get('num_flagged', '?')} "
                "samples flagged as probably mislabeled)")  # fmt: skip
        except Exception as e:  # the run's results are saved; a plotting failure must not hide it
            log(f"warning: the report could not be written ({type(e).__name__}: {e}); "
                f"retry with: python -m jaxnoise.report {workdir}")  # fmt: skip
    return summary
