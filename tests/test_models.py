"""Tests of jaxnoise.models: shapes, parameter counts, BatchNorm semantics, weight files, filters.

References are plain numpy or literal numbers from PyTorch/torchvision (never imported from here).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxnoise import models
from jaxnoise.models import (
    PreActResNet18,
    ResNet50,
    SmallCNN,
    create_model,
    load_resnet50_weights,
    save_resnet50_weights,
    trainable_filter,
)


def _n_params(module: nnx.Module) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def _np_conv(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Reference NHWC x HWIO convolution with PyTorch's symmetric zero padding."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = w.shape[:2]
    ho = (x.shape[1] - kh) // stride + 1
    wo = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, w.shape[3]))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i : i + stride * ho : stride, j : j + stride * wo : stride, :]
            out += patch @ w[i, j]
    return out


# XLA:CPU's default (LLVM -O2) compile of threefry init programs and conv nets costs ~1 s per
# program on a 2-core machine; these tests are compile-bound, so they compile at -O0 (10x faster
# to compile, same results for what is checked here).
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _fast_jit(f: Callable[..., Any], *args: Any) -> Callable[..., Any]:
    """jax.jit(f) compiled for `args` at -O0."""
    return jax.jit(f).lower(*args).compile(compiler_options=_FAST_COMPILE)


@functools.cache
def _compiled_init(make: Callable[[nnx.Rngs], nnx.Module]) -> tuple[nnx.GraphDef, Any]:
    key = jax.random.key(0)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda k: make(rngs=nnx.Rngs(k)), key))
    return graphdef, _fast_jit(lambda k: nnx.state(make(rngs=nnx.Rngs(k))), key)


def _init(make: Callable[..., nnx.Module], seed: int = 0) -> nnx.Module:
    """`make(rngs=nnx.Rngs(seed))`, initialised by one jitted program (cached per `make`)."""
    graphdef, init = _compiled_init(make)
    return nnx.merge(graphdef, init(jax.random.key(seed)))


_make_r50 = functools.partial(ResNet50, 10, width=8)


def _forward(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array, *, train: bool) -> jax.Array:
    return nnx.merge(graphdef, state, copy=True)(x, train=train)


def _states_equal(a: nnx.Module | nnx.State, b: nnx.Module | nnx.State) -> bool:
    sa = a if isinstance(a, nnx.State) else nnx.state(a)
    sb = b if isinstance(b, nnx.State) else nnx.state(b)
    eq = jax.tree.map(lambda u, v: bool(np.array_equal(np.asarray(u), np.asarray(v))), sa, sb)
    return all(jax.tree.leaves(eq))


def _random_images(shape: tuple[int, ...], seed: int = 0) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@pytest.fixture(scope="module")
def tiny_r50() -> ResNet50:
    """A width-8, 10-class ResNet50, built once per test session (init is the costly part)."""
    return _init(_make_r50, seed=0)


# ------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize(
    "name,width,shape",
    [
        ("small_cnn", 4, (2, 8, 8, 1)),
        ("small_cnn", 4, (2, 32, 32, 3)),
        ("preact_resnet18", 4, (2, 32, 32, 3)),
        ("preact_resnet18", 4, (2, 8, 8, 1)),
        ("resnet50", 8, (2, 32, 32, 3)),
    ],
)
def test_output_shapes(name: str, width: int, shape: tuple[int, ...]) -> None:
    # Abstract evaluation (no compute); the jitted numeric runs are in the functional tests below.
    model = nnx.eval_shape(
        lambda: create_model(name, 7, width=width, in_channels=shape[-1], rngs=nnx.Rngs(0))
    )
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    for train in (True, False):
        fwd = functools.partial(_forward, graphdef, train=train)
        y = jax.eval_shape(fwd, state, x)
        assert y.shape == (shape[0], 7)
        assert y.dtype == jnp.float32


def test_unknown_model_name() -> None:
    with pytest.raises(ValueError, match="wide_resnet.*preact_resnet18.*small_cnn.*resnet50"):
        create_model("wide_resnet", 10, width=4, in_channels=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="allowed"):
        trainable_filter("wide_resnet", freeze_backbone=True)


# ------------------------------------------------------------------------- parameter counts


def test_preact_resnet18_param_count_matches_pytorch() -> None:
    # Formula for the published PreActResNet18 (w = 64, bias-free convs, 2 BN params per channel).
    w, c = 64, 10
    stem = 3 * 3 * 3 * w
    total, cin = stem, w
    for i in range(4):
        planes = w * 2**i
        for b in range(2):
            total += (
                2 * cin + 9 * cin * planes + 2 * planes + 9 * planes * planes
            )  # bn1 conv1 bn2 conv2
            if b == 0 and cin != planes:
                total += cin * planes  # 1x1 shortcut
            cin = planes
    total += cin * c + c
    # Kuang Liu's pytorch-cifar PreActResNet18: sum(p.numel()) on torch 2.13 is 11,171,146.
    assert total == 11_171_146
    model = nnx.eval_shape(lambda: PreActResNet18(10, stem_bn=False, rngs=nnx.Rngs(0)))
    assert _n_params(model) == 11_171_146
    # LabelNoiseCorrection's PreResNet.ResNet18 adds bn1 after the stem: 11,171,274 on torch 2.13.
    assert total + 2 * w == 11_171_274
    model = nnx.eval_shape(lambda: PreActResNet18(10, rngs=nnx.Rngs(0)))
    assert _n_params(model) == 11_171_274


def test_resnet34_param_count_and_names_match_the_cifar_n_code() -> None:
    """The CIFAR-N paper's ResNet34 (its models/resnet.py): sum(p.numel()) on torch 2.13 is
    21,282,122; its projection shortcuts are nn.Sequential(conv, BN) in layer2..4's first block."""
    from jaxnoise.models import torch_port

    model = nnx.eval_shape(
        lambda: create_model("resnet34", 10, width=64, in_channels=3, rngs=nnx.Rngs(0))
    )
    assert _n_params(model) == 21_282_122
    keys = set(torch_port._torch_keyed_state(model))
    assert {
        "layer2.0.shortcut.0.weight",
        "layer2.0.shortcut.1.running_var",
        "layer4.2.bn2.weight",
        "linear.bias",
    } <= keys
    assert not any(k.startswith("layer1.0.shortcut") for k in keys)  # identity in layer1


def test_resnet50_param_count_matches_torchvision() -> None:
    model = nnx.eval_shape(lambda: ResNet50(1000, rngs=nnx.Rngs(0)))
    assert _n_params(model) == 25_557_032  # torchvision.models.resnet50()


# ------------------------------------------------------------------------------- structure


@pytest.mark.parametrize("stem_bn", [True, False])
def test_preact_resnet18_structure_matches_published_code(stem_bn: bool) -> None:
    model = nnx.eval_shape(lambda: PreActResNet18(10, width=4, stem_bn=stem_bn, rngs=nnx.Rngs(0)))
    mods = [m for _, m in nnx.iter_graph(model)]
    # 2 per block, one after the stem in Arazo et al.'s code, none before the pool.
    assert sum(isinstance(m, nnx.BatchNorm) for m in mods) == 16 + stem_bn
    assert (model.bn1 is not None) == stem_bn
    assert sum(isinstance(m, nnx.Conv) for m in mods) == 1 + 16 + 3  # stem, blocks, 3 shortcuts
    assert all(not m.use_bias for m in mods if isinstance(m, nnx.Conv))
    # Projection shortcuts exactly where shape changes: first block of stages 2-4.
    has_sc = [
        [b.shortcut is not None for b in layer]
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4)
    ]
    assert has_sc == [[False, False], [True, False], [True, False], [True, False]]
    assert model.linear.in_features == 32 and model.linear.use_bias
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    assert jax.eval_shape(functools.partial(_forward, graphdef, train=True), state, x).shape == (
        2,
        10,
    )


def test_convs_pad_like_pytorch() -> None:
    # Stride-2 3x3 conv, padding=1 on both sides (XLA 'SAME' would pad (0, 1) on even inputs).
    conv = _init(functools.partial(models.PreActBlock, 4, 8, stride=2)).conv1
    x = np.asarray(_random_images((2, 8, 8, 4)))
    want = _np_conv(x, np.asarray(conv.kernel[...]), stride=2, pad=1)
    np.testing.assert_allclose(np.asarray(conv(jnp.asarray(x))), want, rtol=1e-4, atol=1e-5)


def test_init_matches_pytorch_defaults() -> None:
    # PyTorch default conv/linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), std = bound / sqrt(3).
    block = _init(functools.partial(models.PreActBlock, 64, 64))
    k = np.asarray(block.conv1.kernel[...])  # (3, 3, 64, 64), fan_in 576
    bound = 1 / np.sqrt(9 * 64)
    assert np.abs(k).max() <= bound
    assert abs(k.std() - bound / np.sqrt(3)) < 0.03 * bound
    b = np.asarray(models.torch_default_bias_init(128)(jax.random.key(0), (1000,)))
    assert np.abs(b).max() <= 1 / np.sqrt(128) and np.abs(b).max() > 0.95 / np.sqrt(128)


def test_resnet50_init_matches_torchvision(tiny_r50: ResNet50) -> None:
    # torchvision ResNet convs: kaiming_normal_(fan_out, relu): N(0, 2 / (out * kh * kw)).
    w = np.asarray(tiny_r50.layer4[0].conv2.kernel[...])  # (3, 3, 64, 64)
    std = np.sqrt(2 / (64 * 9))
    assert abs(w.std() - std) < 0.03 * std
    assert abs(w.mean()) < 0.05 * std and np.abs(w).max() > 3.5 * std  # a normal, not truncated
    np.testing.assert_array_equal(tiny_r50.bn1.scale[...], 1.0)
    np.testing.assert_array_equal(tiny_r50.bn1.bias[...], 0.0)


def test_batchnorm_settings_and_running_average() -> None:
    # torch.nn.BatchNorm2d: running = 0.9 * running + 0.1 * batch stat, eps 1e-5, and the running
    # variance takes the *unbiased* batch variance (flax's own BatchNorm takes the biased one).
    model = _init(functools.partial(SmallCNN, 3, width=4, in_channels=1))
    bn = model.bns[0]
    assert bn.momentum == pytest.approx(0.9) and bn.epsilon == pytest.approx(1e-5)
    x = np.asarray(_random_images((4, 8, 8, 1)))
    h = _np_conv(x, np.asarray(model.convs[0].kernel[...]), stride=1, pad=1)  # (4, 8, 8, 4)
    graphdef, state = nnx.split(model)

    def run(state: nnx.State, x: jax.Array, *, train: bool) -> nnx.State:
        m = nnx.merge(graphdef, state, copy=True)
        m(x, train=train)
        return nnx.state(m, nnx.BatchStat)

    x = jnp.asarray(x)
    nnx.update(model, _fast_jit(functools.partial(run, train=True), state, x)(state, x))
    np.testing.assert_allclose(bn.mean[...], 0.1 * h.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
    n = h.shape[0] * h.shape[1] * h.shape[2]
    unbiased = h.reshape(n, -1).var(0, ddof=1)
    np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * unbiased, rtol=2e-5)
    assert not np.allclose(bn.var[...], 0.9 + 0.1 * h.var((0, 1, 2)), rtol=2e-5)
    state = nnx.state(model)
    after_eval = _fast_jit(functools.partial(run, train=False), state, x)(state, x)
    assert _states_equal(after_eval, nnx.state(model, nnx.BatchStat))


# --------------------------------------------------------------- functional train step (jit)


@pytest.mark.parametrize(
    "name,width,shape",
    [
        ("small_cnn", 4, (4, 8, 8, 1)),
        ("preact_resnet18", 4, (4, 16, 16, 3)),
        pytest.param("resnet50", 8, (4, 32, 32, 3), marks=pytest.mark.slow),  # compiles ~15 s
    ],
)
def test_functional_split_merge_train_and_eval(
    name: str, width: int, shape: tuple[int, ...], request: pytest.FixtureRequest
) -> None:
    # Exactly what the train step does: merge(copy=True) inside value_and_grad, return BatchStat.
    if name == "resnet50":
        model = request.getfixturevalue("tiny_r50")
    else:
        make = functools.partial(create_model, name, 10, width=width, in_channels=shape[-1])
        model = _init(make)
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    x = _random_images(shape, seed=1)
    labels = jnp.arange(shape[0]) % 10

    def step(params, stats):
        def loss_fn(params):
            m = nnx.merge(graphdef, params, stats, copy=True)
            logits = m(x, train=True)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            eval_logits = m(x, train=False)  # same merged model, no mode toggling
            return loss, (nnx.state(m, nnx.BatchStat), logits, eval_logits)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, aux, grads

    def eval_step(params, stats):
        m = nnx.merge(graphdef, params, stats, copy=True)
        return m(x, train=False), nnx.state(m, nnx.BatchStat)

    step = _fast_jit(step, params, stats)
    eval_step = _fast_jit(eval_step, params, stats)

    loss, (new_stats, train_logits, eval_logits), grads = step(params, stats)
    assert np.isfinite(float(loss))
    # Train mode moved every running average; grads have the structure of params.
    old_leaves = jax.tree.leaves(stats)
    new_leaves = jax.tree.leaves(new_stats)
    assert len(old_leaves) == len(new_leaves) > 0
    assert all(not np.allclose(a, b) for a, b in zip(old_leaves, new_leaves))
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    # Train mode (batch stats) and eval mode (running stats) differ.
    assert not np.allclose(train_logits, eval_logits)
    # Eval mode leaves BatchStat untouched, and uses the stats it is given.
    y0, same_stats = eval_step(params, stats)
    jax.tree.map(np.testing.assert_array_equal, stats, same_stats)
    y1, _ = eval_step(params, new_stats)
    assert not np.allclose(y0, y1)
    # The original (stateful) model was not mutated by the functional step.
    jax.tree.map(np.testing.assert_array_equal, stats, nnx.state(model, nnx.BatchStat))


# ------------------------------------------------------------------- ResNet-50 weight files


@pytest.fixture(scope="module")
def tiny_r50_file(
    tiny_r50: ResNet50, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, ResNet50]:
    """A copy of `tiny_r50` with random running stats, saved in torchvision format."""
    graphdef, state = nnx.split(tiny_r50)
    model = nnx.merge(graphdef, state, copy=True)
    rng = np.random.default_rng(0)
    flat = [
        (p, v.replace(jnp.asarray(rng.uniform(0.5, 1.5, v.shape), jnp.float32)))
        for p, v in nnx.to_flat_state(nnx.state(model, nnx.BatchStat))
    ]
    nnx.update(model, nnx.from_flat_state(flat))
    path = str(tmp_path_factory.mktemp("r50") / "tiny_resnet50.npz")
    save_resnet50_weights(model, path)
    return path, model


def test_save_uses_torchvision_names_and_layouts(tiny_r50_file) -> None:
    path, model = tiny_r50_file
    with np.load(path) as f:
        ckpt = {k: f[k] for k in f.files}
    assert len(ckpt) == 320  # len(torchvision.models.resnet50().state_dict())
    assert sum(k.endswith("num_batches_tracked") for k in ckpt) == 53
    assert ckpt["conv1.weight"].shape == (8, 3, 7, 7)  # OIHW
    assert ckpt["layer1.0.downsample.0.weight"].shape == (32, 8, 1, 1)
    assert ckpt["layer4.2.conv2.weight"].shape == (64, 64, 3, 3)
    assert ckpt["fc.weight"].shape == (10, 256) and ckpt["fc.bias"].shape == (10,)
    np.testing.assert_array_equal(
        ckpt["layer2.0.conv2.weight"],
        np.asarray(model.layer2[0].conv2.kernel[...]).transpose(3, 2, 0, 1),
    )
    np.testing.assert_array_equal(ckpt["bn1.running_var"], np.asarray(model.bn1.var[...]))
    np.testing.assert_array_equal(
        ckpt["layer3.1.bn2.weight"], np.asarray(model.layer3[1].bn2.scale[...])
    )
    np.testing.assert_array_equal(ckpt["fc.weight"], np.asarray(model.fc.kernel[...]).T)


def test_resnet50_weights_round_trip(tiny_r50_file) -> None:
    path, model = tiny_r50_file
    other = _init(_make_r50, seed=1)
    x = _random_images((2, 32, 32, 3), seed=3)
    graphdef, _ = nnx.split(model)
    fwd = _fast_jit(functools.partial(_forward, graphdef, train=False), nnx.state(model), x)
    y_model = fwd(nnx.state(model), x)
    assert not np.allclose(fwd(nnx.state(other), x), y_model)
    load_resnet50_weights(other, path)
    assert _states_equal(other, model)
    np.testing.assert_array_equal(fwd(nnx.state(other), x), y_model)


def test_resnet50_head_mismatch_keeps_head_at_init(tiny_r50_file, tmp_path, caplog) -> None:
    path, model = tiny_r50_file
    with np.load(path) as f:
        ckpt = {k: f[k] for k in f.files}
    ckpt["fc.weight"], ckpt["fc.bias"] = ckpt["fc.weight"][:5], ckpt["fc.bias"][:5]  # 5 classes
    path = str(tmp_path / "five_classes.npz")
    with open(path, "wb") as f:
        np.savez(f, **ckpt)
    other = _init(_make_r50, seed=2)  # 10 classes
    head_before = jax.tree.map(np.asarray, nnx.state(other.fc))
    with caplog.at_level(logging.INFO, logger="jaxnoise.models"):
        load_resnet50_weights(other, path)
    assert "head (fc) left at init" in caplog.text
    assert _states_equal(nnx.state(other.fc), head_before)
    backbone = nnx.All(nnx.Not(nnx.PathContains("fc")))
    assert _states_equal(nnx.state(other, backbone), nnx.state(model, backbone))


def test_resnet50_bad_files_raise(tiny_r50_file, tmp_path) -> None:
    path, _ = tiny_r50_file
    with np.load(path) as f:
        ckpt = {k: f[k] for k in f.files}
    target = _init(_make_r50, seed=3)
    before = jax.tree.map(np.asarray, nnx.state(target))

    def write(d: dict[str, np.ndarray]) -> str:
        p = str(tmp_path / "bad.npz")
        with open(p, "wb") as f:
            np.savez(f, **d)
        return p

    extra = dict(ckpt, **{"layer5.0.conv1.weight": np.zeros((1,))})
    with pytest.raises(ValueError, match=r"unexpected keys: \['layer5.0.conv1.weight'\]"):
        load_resnet50_weights(target, write(extra))
    missing = {k: v for k, v in ckpt.items() if k != "layer2.1.bn1.running_mean"}
    with pytest.raises(ValueError, match=r"missing keys: \['layer2.1.bn1.running_mean'\]"):
        load_resnet50_weights(target, write(missing))
    wrong = dict(ckpt, **{"layer1.0.conv2.weight": np.zeros((8, 8, 1, 1), np.float32)})
    with pytest.raises(ValueError, match="shape mismatch.*layer1.0.conv2.weight"):
        load_resnet50_weights(target, write(wrong))
    with pytest.raises(ValueError, match="shape mismatch"):  # a whole file of another width
        load_resnet50_weights(nnx.eval_shape(lambda: ResNet50(10, width=4, rngs=nnx.Rngs(0))), path)
    # Nothing was written into the model by the failed loads.
    assert _states_equal(nnx.state(target), before)


# ---------------------------------------------------------------------------- optimizer filter


@pytest.mark.parametrize(
    "name,head", [("resnet50", "fc"), ("preact_resnet18", "linear"), ("small_cnn", "head")]
)
def test_trainable_filter_selects_head_when_frozen(name: str, head: str) -> None:
    model = nnx.eval_shape(lambda: create_model(name, 10, width=8, in_channels=3, rngs=nnx.Rngs(0)))
    frozen = nnx.to_flat_state(nnx.state(model, trainable_filter(name, freeze_backbone=True)))
    assert sorted(p for p, _ in frozen) == [(head, "bias"), (head, "kernel")]
    full = nnx.state(model, trainable_filter(name, freeze_backbone=False))
    assert jax.tree.structure(full) == jax.tree.structure(nnx.state(model, nnx.Param))
    # The functional form documented in trainable_filter: trainable / frozen params / stats.
    _, trainable, rest, stats = nnx.split(
        model, trainable_filter(name, freeze_backbone=True), nnx.Param, nnx.BatchStat
    )
    n_head = sum(x.size for x in jax.tree.leaves(trainable))
    features = {"small_cnn": 4 * 8, "preact_resnet18": 8 * 8, "resnet50": 32 * 8}[name]
    assert n_head == features * 10 + 10
    assert n_head + sum(x.size for x in jax.tree.leaves(rest)) == _n_params(model)
    assert len(jax.tree.leaves(stats)) > 0


def test_optimizer_with_frozen_backbone_updates_only_head() -> None:
    model = _init(functools.partial(SmallCNN, 4, width=4, in_channels=1))
    wrt = trainable_filter("small_cnn", freeze_backbone=True)
    optimizer = nnx.Optimizer(model, optax.sgd(0.5), wrt=wrt)
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    x, y = _random_images((4, 8, 8, 1)), jnp.arange(4)

    def loss_fn(m):
        return optax.softmax_cross_entropy_with_integer_labels(m(x, train=True), y).mean()

    grads = nnx.grad(loss_fn, argnums=nnx.DiffState(0, wrt))(model)
    optimizer.update(model, grads)
    after = nnx.state(model, nnx.Param)
    for (path, a), (_, b) in zip(nnx.to_flat_state(before), nnx.to_flat_state(after)):
        changed = not np.array_equal(np.asarray(a), np.asarray(b))
        assert changed == (path[0] == "head"), path
