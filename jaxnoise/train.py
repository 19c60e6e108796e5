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

import functools
import json
import os
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from jaxnoise import checkpoint as ckpt_lib
from jaxnoise import config as config_lib
from jaxnoise import data as data_lib
from jaxnoise import human_labels, losses, mixture, models, parallel, signals
from jaxnoise import metrics as metrics_lib
from jaxnoise import noise as noise_lib
from jaxnoise.progress import Progress, log

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
    return model


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """SGD with momentum and PyTorch-style (coupled) weight decay, or Adam; lr set per epoch."""

    def make(learning_rate):
        decay = optax.add_decayed_weights(config.weight_decay)
        if config.optimizer == "sgd":
            return optax.chain(decay, optax.sgd(learning_rate, momentum=config.momentum))
        return optax.chain(decay, optax.adam(learning_rate))

    return optax.inject_hyperparams(make)(learning_rate=config.lr)


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
    tx = create_optimizer(config)
    n_train = ds.train_images.shape[0]
    state = {
        "params": params,
        "frozen": frozen,
        "stats": stats,
        "opt_state": tx.init(params),
        "mixture": mixture.initial_state(
            config.noise_model, ds.num_classes if config.mixture_scope == "class" else 0
        ),
        "loss_sum": jnp.zeros((), jnp.float32),
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


# ------------------------------------------------------------------------------------------------
# Randomness: every key derives from (seed, epoch, step) inside jit, so nothing random needs
# checkpointing and every process of a multi-host job draws the same values.


def epoch_keys(seed: int, epoch) -> jax.Array:
    """(permutation key, tracking key, step key) of an epoch."""
    return jax.random.split(jax.random.fold_in(jax.random.key(seed), epoch), 3)


def make_permutation_fn(seed: int, n: int, mesh=None):
    """Jitted epoch -> permutation of the training set (replicated over the mesh)."""
    out = parallel.replicated(mesh) if mesh is not None else None
    return jax.jit(lambda epoch: jax.random.permutation(epoch_keys(seed, epoch)[0], n),
                   out_shardings=out)  # fmt: skip


# ------------------------------------------------------------------------------------------------
# The train step.


def _apply(graphdef, params, frozen, stats, x, train: bool):
    """Forward pass of the merged model; returns (logits, new batch stats)."""
    model = nnx.merge(graphdef, params, frozen, stats, copy=True)
    logits = model(x, train=train)
    return logits, nnx.state(model, nnx.BatchStat)


class StepDraws(NamedTuple):
    """The random draws of one train step (besides augmentation)."""

    pair: jax.Array  # (B,) int32: sample p is mixed with sample pair[p]
    lam: jax.Array  # () static mixup weight delta ~ Beta(alpha, alpha)
    pair_weight: jax.Array  # () a second Beta(alpha, alpha) draw (the "beta" pair weight)
    key: jax.Array  # key of the dynamic-mixup weight draws (the Beta / Binomial extensions)


def step_draws(key: jax.Array, batch_size: int, alpha: float) -> StepDraws:
    """Every random draw a train step makes after augmentation, from one key."""
    k_pair, k_lam, k_weight, k_dyn = jax.random.split(key, 4)
    return StepDraws(
        pair=losses.mixup_pairs(k_pair, batch_size),
        lam=losses.sample_mixup_lambda(k_lam, alpha),
        pair_weight=losses.sample_mixup_lambda(k_weight, alpha),
        key=k_dyn,
    )


def regularizer_prior(config: ml_collections.ConfigDict, num_classes: int) -> jax.Array:
    """The regulariser's class prior: 1/K per class (K = reg_prior_classes, or the classes)."""
    k = config.reg_prior_classes or num_classes
    return jnp.full((num_classes,), 1.0 / k, jnp.float32)


def make_update(graphdef, tx, config: ml_collections.ConfigDict, phase: config_lib.Phase,
                num_classes: int):  # fmt: skip
    """The optimizer step of one phase on a prepared batch (the core of the train step).

    ``update(state, x, y, epoch_rows, draws, temperature) -> (state, loss)``: ``x`` the
    normalised (augmented) inputs, ``y`` their labels, ``epoch_rows`` the batch's rows of the
    per-sample arrays of the last tracking pass (used with ``posterior_source="epoch"``).
    """
    prior = regularizer_prior(config, num_classes)

    def update(state, x, y, epoch_rows, draws: StepDraws, temperature):
        params, frozen, stats = state["params"], state["frozen"], state["stats"]

        def batch_posteriors(p, batch_stats):  # the eval-mode forward of the published code
            logits_eval, _ = _apply(graphdef, p, frozen, batch_stats, x, False)
            batch_loss = losses.cross_entropy(logits_eval, y)
            w = mixture.posterior_noisy(
                state["mixture"], batch_loss, lookup=config.posterior_lookup, classes=y
            )
            return losses.clip_posteriors(jax.lax.stop_gradient(w))

        from_epoch = config.posterior_source == "epoch"
        # Clean predictions z (train mode, as the published code) and noisy-posteriors w.
        logits_clean = w = None
        if phase.needs_clean_logits:
            if from_epoch:
                logits_clean = epoch_rows["logits"]
            else:
                logits_clean, stats = _apply(graphdef, params, frozen, stats, x, True)
                logits_clean = jax.lax.stop_gradient(logits_clean)
        late_w = phase.posteriors_after_mixed and not from_epoch
        if phase.needs_posteriors and not late_w:
            w = (losses.clip_posteriors(epoch_rows["p_noisy"]) if from_epoch
                 else batch_posteriors(params, stats))  # fmt: skip

        # Mixing.
        if phase.mixup == "static":
            lam, x_in = draws.lam, losses.mix(x, draws.pair, draws.lam)
        elif phase.mixup == "dynamic":
            lam = losses.dynamic_mixup_lambda(
                draws.key, w, draws.pair, draw=config.mixup_draw, n=config.binomial_n
            )
            x_in = losses.mix(x, draws.pair, lam)
        else:
            lam, x_in = jnp.ones((), jnp.float32), x
        pair_w = {"half": jnp.full((), 0.5, jnp.float32), "beta": draws.pair_weight,
                  "mix": lam}[phase.pair_weight]  # fmt: skip

        def loss_fn(p):
            logits, new_stats = _apply(graphdef, p, frozen, stats, x_in, True)
            w_ = batch_posteriors(jax.lax.stop_gradient(p), new_stats) if late_w else w
            if phase.mixup == "none":
                loss = jnp.mean(losses.cross_entropy(logits, y))
            elif phase.bootstrap == "none":
                loss = losses.mixup_ce_loss(logits, y, draws.pair, pair_w)
            else:
                loss = losses.mixup_bootstrap_loss(
                    logits, y, w_, logits_clean, draws.pair, pair_w, num_classes=num_classes,
                    mode=phase.bootstrap, temperature=temperature,
                )  # fmt: skip
            if phase.regularize:
                reg = losses.class_balance_regularizer(logits, prior=prior)
                loss = loss + config.reg_weight * reg
            return loss, new_stats

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        return dict(state, params=new_params, stats=new_stats, opt_state=opt_state), loss

    return update


def make_train_step(graphdef, tx, config: ml_collections.ConfigDict, phase: config_lib.Phase,
                    num_classes: int, mean: np.ndarray, std: np.ndarray,
                    mesh=None, batch_size: int | None = None):  # fmt: skip
    """Build the jitted train step for one phase (and one batch size: the last batch of an
    epoch may be smaller, see ``config.drop_last``).

    The step gathers its batch from the device-resident training set, augments, normalises and
    calls the phase's ``update`` (posteriors, clean predictions, mixing, one optimizer step).
    """
    mean, std = jnp.asarray(mean), jnp.asarray(std)
    B = batch_size or config.batch_size
    update = make_update(graphdef, tx, config, phase, num_classes)

    def step(state, data, aux, perm, step_idx, epoch, temperature):
        key = jax.random.fold_in(epoch_keys(config.seed, epoch)[2], step_idx)
        k_aug, k_draws = jax.random.split(key)
        idx = jax.lax.dynamic_slice_in_dim(perm, step_idx * config.batch_size, B)
        # On a mesh: a local masked gather + all-reduce of the batch, then split over devices.
        x = parallel.constrain_batch(data["images"][idx], mesh)
        y = parallel.constrain_batch(data["labels"][idx], mesh)
        x = data_lib.augment(x, k_aug, padding=config.data.crop_padding, flip=config.data.flip)
        x = data_lib.normalize(x, mean, std)
        rows = None
        if config.posterior_source == "epoch":
            rows = {k: parallel.constrain_batch(aux[k][idx], mesh) for k in ("p_noisy", "logits")}
        state, loss = update(state, x, y, rows, step_draws(k_draws, B, config.mixup_alpha),
                             temperature)  # fmt: skip
        state["loss_sum"] = state["loss_sum"] + loss
        return state

    return jax.jit(step, donate_argnums=(0,))


def epoch_batch_sizes(n: int, batch_size: int, drop_last: bool, num_devices: int = 1) -> list[int]:
    """Batch size of every step of an epoch over n samples.

    Full batches, then (unless ``drop_last``) the remaining samples as one smaller batch, as a
    PyTorch DataLoader does; on several devices it is rounded down to a multiple of their count
    (at most num_devices - 1 samples of a shuffled epoch are left out).
    """
    sizes = [batch_size] * (n // batch_size)
    tail = 0 if drop_last else (n % batch_size) // num_devices * num_devices
    return sizes + [tail] * (tail > 0)


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


def _write_run_info(workdir: str, resolved: dict, ds: data_lib.Dataset, config) -> None:
    """config.json and dataset.json (class names, image paths, whether the noise is known).

    Written atomically: a process killed meanwhile leaves the previous files, never torn ones.
    """
    ckpt_lib.atomic_write_text(
        os.path.join(workdir, "config.json"), json.dumps(resolved, indent=2, sort_keys=True)
    )
    info = {
        "name": ds.name,
        "class_names": list(ds.class_names),
        "num_train": int(ds.train_images.shape[0]),
        # With noise_kind="none" the labels are taken as given: which are wrong is unknown.
        "noise_known": config.noise_kind != "none",
        "train_paths": list(ds.train_paths) if ds.train_paths else None,
        # the samples' own identifiers (tfds id, folder-relative path, features train_ids)
        "train_ids": ds.train_ids.tolist() if ds.train_ids is not None else None,
    }
    ckpt_lib.atomic_write_text(os.path.join(workdir, "dataset.json"), json.dumps(info))


def _check_same_dataset(workdir: str, ds: data_lib.Dataset) -> None:
    """Refuse to resume checkpoints of a run whose dataset had other samples or classes."""
    path = os.path.join(workdir, "dataset.json")
    if not (os.path.exists(path) and os.path.isdir(os.path.join(workdir, "checkpoints"))):
        return
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return  # written atomically, so unreadable only if edited by hand: the restore decides
    now = {"num_train": int(ds.train_images.shape[0]), "class_names": list(ds.class_names)}
    diff = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in now.items() if old.get(k) != v]
    if diff:
        raise ValueError(
            f"workdir {workdir!r} holds a run on a different dataset ({'; '.join(diff)[:300]}); "
            "use another --workdir, or pass --fresh to discard that run and start again"
        )


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
    with ckpt_lib.PreemptionGuard() as guard:
        return _train_and_evaluate(config, workdir, fresh, stop_after_epoch, guard)


def _train_and_evaluate(config, workdir, fresh, stop_after_epoch, guard) -> dict:
    mesh = parallel.make_mesh(config.mesh.num_devices)
    main_process = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    resolved = _config_fingerprint(config)
    ckpt_lib.check_workdir_config(workdir, resolved, fresh=fresh and main_process)

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
    _check_same_dataset(workdir, ds)
    log(
        f"data: {ds.name} train {ds.train_images.shape} test {ds.test_images.shape} "
        f"classes {ds.num_classes}; noise {config.noise_kind} r={config.noise}: "
        f"{noise_mask.mean():.1%} of labels flipped ({time.time() - t0:.1f}s)"
    )
    mean, std = data_lib.normalization_stats(ds, config.data.normalization)
    n_train, num_classes = ds.train_images.shape[0], ds.num_classes
    batch_sizes = epoch_batch_sizes(n_train, config.batch_size, config.drop_last, mesh.size)
    steps_per_epoch = len(batch_sizes)

    # Device-resident data: the training set and per-sample arrays sharded over the mesh (each
    # process places only its block), the (small) test set replicated.
    data = {
        "images": parallel.put_samples(mesh, ds.train_images),
        "labels": parallel.put_samples(mesh, noisy_labels.astype(np.int32)),
    }
    mask_dev = parallel.put_samples(mesh, noise_mask)
    test_images, test_labels = parallel.put_replicated(
        mesh, (ds.test_images, ds.test_labels.astype(np.int32))
    )
    log(f"devices: {mesh.size} ({jax.devices()[0].platform}, {jax.process_count()} process(es))")

    graphdef, tx, state, aux = init_train_state(config, ds, mesh)
    manager = ckpt_lib.Checkpointer(workdir, keep=config.keep_checkpoints)
    history: list[dict] = []
    best_acc, start_epoch, start_step = 0.0, 1, 0
    last_good = "no checkpoint has been saved yet"
    saved_at = None  # position of the newest checkpoint, for messages
    restored = manager.restore_latest({"state": state, "aux": aux, "labels": data["labels"]})
    if restored is not None:
        tree, meta = restored
        state, aux = tree["state"], tree["aux"]
        if not np.array_equal(parallel.gather_to_host(tree["labels"]), noisy_labels):
            raise ValueError(
                f"checkpoint in {workdir} holds different noisy labels than this config and "
                "dataset produce; use another --workdir, or pass --fresh to start again"
            )
        history, best_acc = meta["history"], meta["best_acc"]
        start_epoch = meta["epoch"] + 1
        start_step = int(meta.get("step_in_epoch", 0))
        saved_at = _position(meta["epoch"], start_step, steps_per_epoch)
        last_good = f"the checkpoint at {saved_at} in {manager.directory} is kept"
        log(f"resumed from {workdir} at {saved_at}")
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if main_process:
        _write_run_info(workdir, resolved, ds, config)
        # metrics.jsonl mirrors the restored history, so epochs redone after a kill (e.g. one
        # whose checkpoint was being written) or a torn last line never appear twice.
        ckpt_lib.atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in history))

    eval_chunk = make_eval_chunk(graphdef, config, mean, std, mesh)
    fit_signal, fit_mixture = make_fit_fns(config, num_classes)
    steps_cache: dict[tuple[config_lib.Phase, int], Any] = {}

    def step_for(phase: config_lib.Phase, batch: int):
        """The compiled train step of a phase and batch size (built on first use)."""
        if (phase, batch) not in steps_cache:
            log(f"compiling the {phase.name} train step (batch {batch}; first call)")
            steps_cache[(phase, batch)] = make_train_step(
                graphdef, tx, config, phase, num_classes, mean, std, mesh, batch
            )
        return steps_cache[(phase, batch)]
    permutation = make_permutation_fn(config.seed, n_train, mesh)
    last_arrays = None
    interrupted = False

    def save(epoch_done: int, step_in_epoch: int) -> None:
        # The orbax step is the number of train steps done: end-of-epoch and mid-epoch
        # checkpoints order correctly.
        nonlocal saved_at, last_good
        manager.save(
            epoch_done * steps_per_epoch + step_in_epoch,
            {"state": state, "aux": aux, "labels": data["labels"]},
            {"epoch": epoch_done, "step_in_epoch": step_in_epoch, "history": history,
             "best_acc": best_acc},
        )  # fmt: skip
        saved_at = _position(epoch_done, step_in_epoch, steps_per_epoch)
        last_good = f"the checkpoint at {saved_at} in {manager.directory} is kept"

    def diverged(what: str) -> FloatingPointError:
        return FloatingPointError(
            f"{what}: training diverged; {last_good}. Training is deterministic, so re-running "
            "the same command resumes from that checkpoint and diverges again unless the cause "
            "was transient; to change the config (e.g. a lower config.lr) pass --fresh or use "
            "another --workdir"
        )

    try:
        for epoch in range(start_epoch, config.epochs + 1):
            phase = config_lib.phase_for_epoch(config, epoch)
            lr = config_lib.lr_for_epoch(config, epoch)
            state["opt_state"].hyperparams["learning_rate"] = parallel.put_replicated(
                mesh, np.float32(lr)
            )
            temperature = np.float32(config_lib.temperature_for_epoch(config, epoch))
            perm = permutation(np.int32(epoch))
            # A run resumed in the middle of this epoch continues its running loss sum.
            first = start_step if epoch == start_epoch else 0
            if first == 0:
                state["loss_sum"] = parallel.put_replicated(mesh, np.float32(0.0))
            if epoch == start_epoch and _stop_agreed(guard, True):
                interrupted = True  # signalled while loading or restoring: nothing new to save
                log(f"{guard.signal_name} before training resumed; {last_good}")
                break

            # --- train epoch -------------------------------------------------------------
            t_train = time.time()
            bar = Progress(steps_per_epoch, f"epoch {epoch}/{config.epochs} {phase.name}",
                           initial=first, items_per_step=config.batch_size,
                           log_every_seconds=config.log_every_seconds)  # fmt: skip
            done = first
            for s in range(first, steps_per_epoch):
                state = step_for(phase, batch_sizes[s])(
                    state, data, aux, perm, np.int32(s), np.int32(epoch), temperature,
                )  # fmt: skip
                done = s + 1
                sync = done % config.log_every_steps == 0 or done == steps_per_epoch
                if sync:
                    running = float(state["loss_sum"]) / done
                    if not np.isfinite(running):
                        raise diverged(
                            f"non-finite training loss ({running}) after step {done}/"
                            f"{steps_per_epoch} of epoch {epoch}"
                        )
                    bar.update(
                        done - bar.n,
                        loss=running,
                        images_per_s=(done - first) * config.batch_size / (time.time() - t_train),
                    )
                if done < steps_per_epoch and _stop_agreed(guard, sync):
                    break
            bar.close()
            t_train = time.time() - t_train
            if done < steps_per_epoch:  # preempted: save this exact position and stop
                if not bool(_tree_all_finite(state)):
                    raise diverged(f"non-finite train state at step {done} of epoch {epoch}")
                save(epoch - 1, done)
                interrupted = True
                log(
                    f"{guard.signal_name} during epoch {epoch}: saved a checkpoint after step "
                    f"{done}/{steps_per_epoch}; re-run the same command to resume from there"
                )
                break
            train_loss = float(state["loss_sum"]) / steps_per_epoch
            if not np.isfinite(train_loss):
                raise diverged(f"non-finite training loss ({train_loss}) in epoch {epoch}")

            # --- tracking pass + mixture fit ---------------------------------------------
            t_track = time.time()
            track_loss, track_logits = forward_all(
                eval_chunk, state, data["images"], data["labels"], config.eval_batch_size,
                epoch=epoch, augment=config.track_augment, mesh=mesh,
            )  # fmt: skip
            n_bad = int(jnp.sum(~jnp.isfinite(track_loss)))
            if n_bad:  # the noise model cannot be fitted to a diverged model's losses
                raise diverged(
                    f"{n_bad} of {n_train} per-sample losses of the tracking pass after epoch "
                    f"{epoch} are NaN or infinite"
                )
            t_track = time.time() - t_track
            t_fit = time.time()
            signal_state, fit_loss = fit_signal(aux.get("signal"), track_loss)
            mix_state = fit_mixture(fit_loss, data["labels"])
            # The posterior the next epoch trains with (the lookup table by default).
            p_noisy = mixture.posterior_noisy(mix_state, fit_loss, lookup=config.posterior_lookup,
                                              classes=data["labels"])  # fmt: skip
            jax.block_until_ready(p_noisy)
            t_fit = time.time() - t_fit
            state["mixture"] = mix_state
            aux = {"p_noisy": p_noisy, "logits": track_logits}
            if signal_state is not None:
                aux["signal"] = signal_state
            p_exact = mixture.posterior_noisy(mix_state, fit_loss, classes=data["labels"])

            # --- evaluation ----------------------------------------------------------------
            t_eval = time.time()
            test_loss, test_logits = forward_all(
                eval_chunk, state, test_images, test_labels, config.eval_batch_size, mesh=mesh
            )
            test_acc = 100.0 * float(jnp.mean(jnp.argmax(test_logits, -1) == test_labels))
            t_eval = time.time() - t_eval
            best_acc = max(best_acc, test_acc)
            det = jax.device_get(metrics_lib.detection_metrics(p_noisy, fit_loss, mask_dev))
            det["auroc_exact"] = metrics_lib.auroc(p_exact, mask_dev)
            quant = jax.device_get(metrics_lib.loss_quantiles(track_loss, mask_dev))
            record = {
                "epoch": epoch,
                "phase": phase.name,
                "lr": lr,
                "temperature": float(temperature),
                "train_loss": train_loss,
                "test_loss": float(jnp.mean(test_loss)),
                "test_acc": test_acc,
                "best_acc": best_acc,
                **{k: float(v) for k, v in det.items()},
                "loss_quantiles_clean": [float(v) for v in quant["clean"]],
                "loss_quantiles_noisy": [float(v) for v in quant["noisy"]],
                "mixture": mixture.summary(mix_state),
                "seconds": {
                    "train": t_train,
                    "track": t_track,
                    "fit": t_fit,
                    "eval": t_eval,
                },  # fmt: skip
                "images_per_s": sum(batch_sizes[first:]) / max(t_train, 1e-9),
            }
            if not np.all(record["mixture"]["valid"]):
                log(f"warning: epoch {epoch}: the {config.noise_model} fit was degenerate "
                    f"({_degenerate_reason(fit_loss, record['mixture']['valid'])}); p(noisy) "
                    "is 0.5 there for the next epoch (no sample is favoured)")  # fmt: skip
            history.append(record)
            if main_process:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            log(
                f"epoch {epoch}: train loss {train_loss:.4f}  test acc {test_acc:.2f}% "
                f"(best {best_acc:.2f}%)  noise AUROC {record['auroc']:.4f}  "
                f"P/R@0.5 {record['precision']:.3f}/{record['recall']:.3f}  "
                f"[{t_train:.1f}s train, {t_track:.1f}s track, {t_fit * 1e3:.0f}ms fit]"
            )
            save(epoch, 0)
            last_arrays = (track_loss, p_noisy, track_logits)
            if epoch < config.epochs and _stop_agreed(guard, True):
                interrupted = True
                log(f"{guard.signal_name}: saved the checkpoint of epoch {epoch}; re-run the "
                    "same command to resume")  # fmt: skip
                break
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                break
    finally:
        manager.wait()  # an asynchronous save in flight is completed, also when raising

    if last_arrays is not None:
        track_loss, p_noisy, track_logits = (parallel.gather_to_host(a) for a in last_arrays)
    if last_arrays is not None and main_process:
        arrays = dict(
            loss=track_loss,
            p_noisy=p_noisy,
            prediction=np.argmax(track_logits, -1).astype(np.int32),
            logits=track_logits.astype(np.float32),
            noisy_label=noisy_labels,
            true_label=ds.train_labels.astype(np.int32),
            noise_mask=noise_mask,
        )
        ckpt_lib.atomic_write(
            os.path.join(workdir, "per_sample.npz"), lambda f: np.savez(f, **arrays)
        )
    summary = {
        "best_acc": best_acc,
        "last_acc": history[-1]["test_acc"] if history else float("nan"),
        "epochs_done": history[-1]["epoch"] if history else 0,
        "auroc": history[-1]["auroc"] if history else float("nan"),
        "history": history,
        "interrupted": interrupted,
        "signal": guard.signal_name if interrupted and guard.signum else None,
        "checkpoint_at": saved_at,  # e.g. "step 5/23 of epoch 2" or "the end of epoch 3"
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
