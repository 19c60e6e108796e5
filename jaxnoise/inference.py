"""Predict with a trained run: the model of its newest checkpoint on new data.

    from jaxnoise import inference
    run = inference.load_run("runs/quickstart-digits")
    out = run.predict(images)     # uint8 (M, H, W, C) like the training images, float (M, D)
                                  # features, a .npy / .npz file or an image folder
    out["prediction"], out["probs"], out["logits"]     # (M,) int32, (M, K), (M, K) float32

The model is the one the run evaluates its test set with: the bootstrap methods' network;
DivideMix's two networks, their logits summed. Inputs are normalised as the run's were (the
mean / std its ``dataset.json`` records) and run through the same jitted eval-mode forward
pass as the run's own evaluation (:mod:`jaxnoise.forward`), in chunks. Reading the workdir
changes nothing in it, also while a run trains there. Problems (no finished epoch, a workdir
of an earlier jaxnoise, inputs of the wrong shape or dtype) raise :class:`PredictError`, one
line naming the workdir or the inputs, before anything is computed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from jaxnoise import checkpoint as ckpt_lib
from jaxnoise.data import folder as folder_lib

BLOCK_CHUNKS = 8  # chunks of eval_batch_size per call of the forward pass (one compile)


class PredictError(ValueError):
    """A workdir that cannot predict, or inputs that do not fit its model."""


@dataclasses.dataclass
class LoadedRun:
    """A run's model restored from its newest checkpoint, ready to predict."""

    workdir: str
    config: ml_collections.ConfigDict
    class_names: list[str]
    checkpoint: int  # the orbax step of the checkpoint restored
    position: str  # where training was then, e.g. "the end of epoch 60"
    input_shape: tuple[int, ...]  # one input: (H, W, C) image or (D,) features
    input_dtype: str  # "uint8" images or "float32" features
    logits_fn: Callable[[np.ndarray], np.ndarray]  # (B, ...) inputs -> (B, K) float32 logits

    def predict(self, inputs: np.ndarray | str) -> dict[str, np.ndarray]:
        """``logits`` (M, K) float32, ``probs`` (M, K) float32 and ``prediction`` (M,) int32 of
        an array of inputs, a .npy / .npz file or an image folder."""
        if isinstance(inputs, (str, os.PathLike)):
            inputs = read_inputs(str(inputs), self)[0]
        x = check_inputs(self, inputs)
        logits = self.logits_fn(x)
        z = logits.astype(np.float64)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        probs = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        return {
            "logits": logits,
            "probs": probs,
            "prediction": np.argmax(logits, axis=1).astype(np.int32),
        }


# ------------------------------------------------------------------------------------------------
# The run.


def _read_json(workdir: str, name: str) -> Any:
    path = os.path.join(workdir, name)
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise PredictError(
            f"workdir {workdir!r} holds no jaxnoise run ({name} is missing); "
            "train first: jaxnoise train --config CONFIG --workdir "
            "WORKDIR"
        ) from None
    except (OSError, ValueError) as e:
        raise PredictError(f"{path} is unreadable ({e})") from None


def _newest_finished(workdir: str) -> tuple[int, dict]:
    """(step, metadata) of the newest committed checkpoint, which must follow a whole epoch."""
    steps = ckpt_lib.committed_steps(workdir)
    if not steps:
        raise PredictError(
            f"workdir {workdir!r} holds no checkpoint: no epoch has finished "
            "(train first, or let the run finish an epoch)"
        )
    try:
        meta = ckpt_lib.read_meta(workdir, steps[0])
    except ValueError as e:
        raise PredictError(str(e)) from None
    if int(meta.get("epoch", 0)) < 1:
        raise PredictError(
            f"workdir {workdir!r} holds no finished epoch yet (its newest "
            f"checkpoint {steps[0]} is in the middle of epoch 1)"
        )
    return steps[0], meta


def _inputs_info(workdir: str, dataset: dict) -> dict:
    """The model's inputs as dataset.json records them (runs of an earlier jaxnoise: refused)."""
    info = dataset.get("inputs")
    if not isinstance(info, dict) or not {"shape", "dtype", "mean", "std"} <= set(info):
        raise PredictError(
            f"workdir {workdir!r} was trained by an earlier jaxnoise, whose dataset.json does "
            "not record the input normalisation; re-run its training command once (a finished "
            "run resumes, records it and ends) and predict again"
        )
    return info


def _position(meta: dict) -> str:
    step = int(meta.get("step_in_epoch", 0))
    if step:
        return f"step {step} of epoch {int(meta['epoch']) + 1}"
    return f"the end of epoch {int(meta['epoch'])}"


def load_run(workdir: str) -> LoadedRun:
    """The model of a run's newest checkpoint (which must follow at least one whole epoch),
    with its config, class names and input normalisation; PredictError otherwise."""
    if not os.path.isdir(workdir):
        raise PredictError(f"workdir {workdir!r} is not a directory")
    config = ml_collections.ConfigDict(_read_json(workdir, "config.json"))
    dataset = _read_json(workdir, "dataset.json")
    info = _inputs_info(workdir, dataset)
    step, meta = _newest_finished(workdir)
    try:
        state = ckpt_lib.read_item(workdir, step, "state", meta)
    except ValueError as e:
        raise PredictError(str(e)) from None
    names = list(dataset["class_names"])
    logits_fn = _model(
        config,
        len(names),
        tuple(info["shape"]),
        state,
        (np.asarray(info["mean"], np.float32), np.asarray(info["std"], np.float32)),
    )
    return LoadedRun(
        os.path.abspath(workdir),
        config,
        names,
        step,
        _position(meta),
        tuple(info["shape"]),
        info["dtype"],
        logits_fn,
    )


def _model(config, num_classes: int, shape: tuple, state: dict, mean_std: tuple) -> Callable:
    """``logits(x)`` of the restored network(s): the run's eval-mode forward pass, DivideMix's
    two networks summed, over blocks of inputs (the last one padded: one compiled shape)."""
    import jax.numpy as jnp

    from jaxnoise import forward as forward_lib
    from jaxnoise import network

    build = ml_collections.ConfigDict(config.to_dict())
    build.weights = ""  # the checkpoint holds the weights (the file may not be here)
    graphdef, *arrays = network.split(network.create(build, num_classes, shape[-1]), build)
    nets = ["net1.", "net2."] if "dividemix" in config else [""]
    states = [_restored(arrays, state, prefix) for prefix in nets]
    forward = forward_lib.make_forward(graphdef, config, *mean_std)

    def logits(x: np.ndarray) -> np.ndarray:
        block = min(
            len(x), forward_lib.chunk_size(len(x), config.eval_batch_size, 1) * BLOCK_CHUNKS
        )
        out = []
        for start in range(0, len(x), block):
            rows = np.arange(start, start + block) % len(x)  # the last block wraps: trimmed
            labels = jnp.zeros((block,), jnp.int32)
            z = sum(forward(s, jnp.asarray(x[rows]), labels)[1] for s in states)
            out.append(np.asarray(z)[: min(block, len(x) - start)])
        return np.concatenate(out).astype(np.float32)

    return logits


def _restored(arrays: list, state: dict, prefix: str) -> dict:
    """``{"params", "frozen", "stats"}`` of a fresh network filled from the checkpoint's
    ``state`` item (``{name: array}``), the network's arrays named ``prefix + name``."""
    import jax

    template = dict(zip(("params", "frozen", "stats"), arrays))
    named = ckpt_lib._named(template)
    missing = [prefix + n for n in named if prefix + n not in state]
    if missing:
        raise PredictError(
            f"the checkpoint does not hold this run's network ({missing[0]} is "
            "missing): was the workdir written by another jaxnoise?"
        )
    for n, x in named.items():
        if tuple(state[prefix + n].shape) != tuple(np.shape(x)):
            raise PredictError(
                f"the checkpoint's {prefix + n} is {tuple(state[prefix + n].shape)}"
                f", the network built from config.json expects "
                f"{tuple(np.shape(x))}"
            )
    leaves = [state[prefix + n] for n in named]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves)


# ------------------------------------------------------------------------------------------------
# The inputs.


def _describe(x: np.ndarray) -> str:
    return f"{x.dtype} {tuple(x.shape)}"


def _wanted(run: LoadedRun) -> str:
    """The inputs a run's model takes, in words."""
    if len(run.input_shape) == 1:
        return f"float (M, {run.input_shape[0]}) features"
    return f"uint8 (M, {', '.join(map(str, run.input_shape))}) images like its training images"


def check_inputs(run: LoadedRun, x: Any) -> np.ndarray:
    """The inputs as the model takes them (features as float32), or PredictError: another
    shape, dtype, NaN / inf features, none at all."""
    x = np.asarray(x)
    fits = x.ndim == len(run.input_shape) + 1 and tuple(x.shape[1:]) == run.input_shape
    if len(run.input_shape) == 1:
        fits = fits and np.issubdtype(x.dtype, np.floating)
    else:
        fits = fits and x.dtype == np.uint8
    if not fits:
        raise PredictError(
            f"inputs {_describe(x)} do not fit the model of {run.workdir}, "
            f"which takes {_wanted(run)}"
        )
    if x.shape[0] == 0:
        raise PredictError("no inputs to predict (0 rows)")
    if x.dtype != np.uint8:
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        if bad.size:
            raise PredictError(f"{bad.size} input row(s) hold NaN or inf (first: row {bad[0]})")
        x = np.ascontiguousarray(x, np.float32)
    return x


def read_inputs(path: str, run: LoadedRun | None = None) -> tuple[np.ndarray, list[str] | None]:
    """(inputs, their names) of a .npy file, an .npz (its one array, or ``inputs``, ``images``
    or ``features``), or an image folder (its image files, also in subfolders, sorted; the
    names are their paths relative to it); PredictError naming the file."""
    if os.path.isdir(path):
        files = folder_lib.list_images(path)
        if not files:
            raise PredictError(
                f"image folder {path} holds no images (extensions "
                f"{', '.join(sorted(folder_lib.IMAGE_EXTENSIONS))})"
            )
        try:
            images = folder_lib.decode_images(path, files)
        except folder_lib.ImageFolderError as e:
            raise PredictError(str(e)) from None
        if run is not None and images.shape[-1] == 1 and run.input_shape[-1:] == (3,):
            images = np.repeat(images, 3, axis=-1)  # grayscale files, colour model: as PIL's RGB
        return images, files
    return _read_array(path), None


def _read_array(path: str) -> np.ndarray:
    """The array of a .npy, or the one array of an .npz (else ``inputs``/``images``/
    ``features``)."""
    if not os.path.isfile(path):
        raise PredictError(f"inputs {path}: no such file or folder")
    try:
        if path.endswith(".npy"):
            return np.load(path, allow_pickle=False)
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.files)
                key = (
                    keys[0]
                    if len(keys) == 1
                    else next((k for k in ("inputs", "images", "features") if k in keys), None)
                )
                if key is None:
                    raise PredictError(
                        f"inputs {path}: holds {keys}; pass an .npz of one array, "
                        "or name it inputs, images or features"
                    )
                return z[key]
    except PredictError:
        raise
    except Exception as e:
        raise PredictError(f"inputs {path}: cannot be read ({type(e).__name__}: {e})") from None
    raise PredictError(f"inputs {path}: expected a .npy or .npz file, or an image folder")
