"""The official DivideMix code (LiJunnan1992/DivideMix), read from a checkout, and torch glue.

Nothing of the official code is copied here. ``Train_cifar.py`` runs a whole training when it is
imported, so its function and class definitions (``train``, ``warmup``, ``linear_rampup``,
``SemiLoss``, ``NegEntropy``, ``eval_train``) are taken from its source with ``ast`` and executed
in a namespace that provides the module globals they read (``args``, ``criterion``, ``CEloss``,
``conf_penalty``, ``warm_up``, ``eval_loader``, ...). ``PreResNet.py`` is imported as it is.

The additions, all in memory, leave the official code unchanged:

- stand-in loaders that yield given batches in the official tuple layouts (the augmented views
  come from jaxnoise, so that both codes see the same tensors);
- an SGD optimizer that records the official loop's local losses (``Lx``, ``Lu``, ``lamb``,
  ``penalty``, ``loss``; ``loss``, ``penalty``, ``L`` in ``warmup``) when the loop calls
  ``optimizer.step()``, read from the loop's frame: the numbers the official code computed;
- ``Tensor.cuda`` as the identity (the loop moves every tensor to the GPU; CPU here).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import os
import sys
from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TRAIN_CIFAR_DEFS = ("train", "warmup", "eval_train", "linear_rampup", "SemiLoss", "NegEntropy")


def import_preresnet(orig_dir: str):
    """The official ``PreResNet`` module of the checkout at ``orig_dir``."""
    sys.path.insert(0, orig_dir)
    try:
        sys.modules.pop("PreResNet", None)  # LabelNoiseCorrection has a module of the same name
        return importlib.import_module("PreResNet")
    finally:
        sys.path.remove(orig_dir)
        sys.modules.pop("PreResNet", None)


def official_args(**overrides) -> SimpleNamespace:
    """``Train_cifar.py``'s argparse defaults (the fields its functions read), overridden."""
    args = SimpleNamespace(
        batch_size=64,
        lr=0.02,
        noise_mode="sym",
        alpha=4.0,
        lambda_u=25.0,
        p_threshold=0.5,
        T=0.5,
        num_epochs=300,
        r=0.5,
        num_class=10,
        dataset="cifar10",
    )
    for k, v in overrides.items():
        setattr(args, k, v)
    return args


def load_train_cifar(orig_dir: str, args: SimpleNamespace, warm_up: int = 10) -> dict:
    """The definitions ``TRAIN_CIFAR_DEFS`` of the checkout's ``Train_cifar.py``, executed in a
    namespace with the module globals they use; returns that namespace."""
    path = os.path.join(orig_dir, "Train_cifar.py")
    with open(path) as f:
        tree = ast.parse(f.read(), filename=path)
    nodes = [
        n
        for n in tree.body
        if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in TRAIN_CIFAR_DEFS
    ]
    missing = set(TRAIN_CIFAR_DEFS) - {n.name for n in nodes}
    if missing:
        raise ValueError(f"{path} has no definition of {sorted(missing)}")
    from sklearn.mixture import GaussianMixture

    ns = {
        "__name__": "Train_cifar_defs",
        "torch": torch,
        "nn": nn,
        "F": F,
        "np": np,
        "sys": sys,
        "GaussianMixture": GaussianMixture,
        "args": args,
        "warm_up": warm_up,
        "CE": nn.CrossEntropyLoss(reduction="none"),
        "CEloss": nn.CrossEntropyLoss(),
    }
    exec(compile(ast.Module(body=nodes, type_ignores=[]), path, "exec"), ns)
    ns["criterion"] = ns["SemiLoss"]()
    ns["conf_penalty"] = ns["NegEntropy"]()
    ns["path"] = path
    return ns


class _Iterator:
    """An iterator with the Python 2 ``.next()`` the official loop calls."""

    def __init__(self, items):
        self._it = iter(items)

    def __next__(self):
        return next(self._it)

    next = __next__


class Loader:
    """The part of a DataLoader the official loops use: iteration, ``.dataset``, ``.batch_size``."""

    def __init__(self, batches: Sequence[tuple], dataset_size: int, batch_size: int):
        self.batches = list(batches)
        self.dataset = [None] * dataset_size
        self.batch_size = batch_size

    def __iter__(self):
        return _Iterator(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class RecordingSGD(torch.optim.SGD):
    """torch SGD that records, at every ``step()``, the scalar locals ``names`` of the calling
    official function (``train`` or ``warmup`` of ``Train_cifar.py``)."""

    def __init__(self, params, names: Sequence[str], source: str, **kw):
        super().__init__(params, **kw)
        self.names, self.source, self.records = tuple(names), source, []

    def step(self, closure=None):
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename != self.source:
            frame = frame.f_back
        if frame is None:
            raise RuntimeError("optimizer.step() not called from the official code")
        loc = frame.f_locals
        self.records.append(
            {k: float(torch.as_tensor(loc[k]).detach()) for k in self.names if k in loc}
        )
        return super().step(closure)


@contextlib.contextmanager
def on_cpu(dtype: torch.dtype = torch.float32):
    """``Tensor.cuda`` as the identity, ``dtype`` the default (float64: the exact reference),
    the loops' progress output swallowed."""
    old_cuda, old_dtype = torch.Tensor.cuda, torch.get_default_dtype()
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.set_default_dtype(dtype)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        torch.Tensor.cuda = old_cuda
        torch.set_default_dtype(old_dtype)


def nchw(views: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """jaxnoise's normalised NHWC float32 views as contiguous NCHW tensors."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(views).transpose(0, 3, 1, 2))).to(dtype)


def sgd(ns: dict, net: nn.Module, names: Sequence[str], lr: float) -> RecordingSGD:
    """The official optimizer (``optim.SGD(lr, momentum=0.9, weight_decay=5e-4)``), recording."""
    return RecordingSGD(net.parameters(), names, ns["path"], lr=lr, momentum=0.9, weight_decay=5e-4)


def run_train(
    ns: dict,
    epoch: int,
    net,
    net2,
    lr: float,
    labelled: Sequence[tuple],
    unlabelled: Sequence[tuple],
    n_labelled: int,
    lams,
    perms,
) -> list[dict]:
    """The official ``train(epoch, net, net2, optimizer, ...)`` over the given batches
    ``(inputs_x, inputs_x2, labels_x, w_x)`` and ``(inputs_u, inputs_u2)``; the MixMatch
    ``l`` and permutations given. Returns the recorded losses of every step."""
    from benchmarks.equivalence.original import given_draws

    B = ns["args"].batch_size
    opt = sgd(ns, net, ("Lx", "Lu", "lamb", "penalty", "loss"), lr)
    dtype = next(net.parameters()).dtype
    with on_cpu(dtype), given_draws(lams, perms):
        ns["train"](
            epoch, net, net2, opt, Loader(labelled, n_labelled, B), Loader(unlabelled, 10**6, B)
        )
    return opt.records


def run_warmup(
    ns: dict, epoch: int, net, lr: float, batches: Sequence[tuple], n: int
) -> list[dict]:
    """The official ``warmup(epoch, net, optimizer, dataloader)`` over ``(inputs, labels, path)``
    batches (``args.noise_mode`` chooses the confidence penalty); the recorded losses."""
    opt = sgd(ns, net, ("loss", "penalty", "L"), lr)
    dtype = next(net.parameters()).dtype
    with on_cpu(dtype):
        ns["warmup"](epoch, net, opt, Loader(batches, n, 2 * ns["args"].batch_size))
    return opt.records


class LossModel(nn.Module):
    """A stand-in network whose logits give the stored per-sample CE losses (indexed by input):
    target logit ``log((C - 1) / expm1(loss))``, the others 0."""

    def __init__(self, losses: np.ndarray, labels: np.ndarray, num_classes: int):
        super().__init__()
        a = np.log((num_classes - 1) / np.expm1(np.maximum(losses, 1e-6)))
        logits = np.zeros((len(losses), num_classes), np.float64)
        logits[np.arange(len(losses)), labels] = a
        self.logits = torch.from_numpy(logits.astype(np.float32))

    def forward(self, idx):
        return self.logits[idx.long()]


def run_eval_train(ns: dict, losses: np.ndarray, labels: np.ndarray, seed: int, chunk=5000):
    """The official ``eval_train(model, all_loss)`` (50,000 samples: its loss buffer's size) on a
    stand-in model with these per-sample losses, ``np.random.seed(seed)`` before its GMM (whose
    k-means start draws from numpy's global state). Returns (prob, the normalised losses, gmm)."""
    n = len(losses)
    model = LossModel(losses, labels, ns["args"].num_class)
    idx = torch.arange(n)
    ns["eval_loader"] = [
        (idx[i : i + chunk], torch.from_numpy(labels[i : i + chunk]), idx[i : i + chunk])
        for i in range(0, n, chunk)
    ]
    fits = []
    gmm_cls = ns["GaussianMixture"]

    class Recorded(gmm_cls):  # the official estimator, kept for its fitted parameters
        def fit(self, X, y=None):
            fits.append(self)
            return super().fit(X, y)

    ns["GaussianMixture"] = Recorded
    np.random.seed(seed)
    try:
        with on_cpu():
            prob, all_loss = ns["eval_train"](model, [])
    finally:
        ns["GaussianMixture"] = gmm_cls
    return np.asarray(prob), all_loss[-1].numpy(), fits[-1]
