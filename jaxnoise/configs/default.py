"""Shared base config: CIFAR-10, PreAct ResNet-18, the published schedule of Arazo et al.

Every other config imports this and says only what differs. Usage:

    jaxnoise train --config cifar10_m_dyr_h --config.noise=0.5 --workdir runs/x
    python main.py --config configs/cifar10_m_dyr_h.py --config.noise=0.5   # in a clone

The shared fields are set here; a method's own fields are in its block, ``config.bootstrap``
(CE, M, M-DYR-H, M-DYR-S, MD-DYR-SH) or ``config.dividemix``, whose defaults and comments are in
``jaxnoise/bootstrap/config.py`` and ``jaxnoise/dividemix/config.py``.
"""

import ml_collections

from jaxnoise.bootstrap import config as bootstrap_config
from jaxnoise.choices import METHODS_BOOTSTRAP as BOOTSTRAP_METHODS
from jaxnoise.dividemix import config as dividemix_config


def get_config(method: str = "M-DYR-H") -> ml_collections.ConfigDict:
    """The base config of ``method``: the shared fields (documented inline) and the method's
    block (``config.bootstrap`` or ``config.dividemix``, documented in its module)."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # one seed drives init, noise injection, shuffling, augmentation and mixup
    _data(c)
    _label_noise(c)
    _model(c)
    c.method = method  # "CE" | "M" | "M-DYR-H" | "M-DYR-S" | "MD-DYR-SH" | "DivideMix"
    _schedule(c)
    _devices(c)
    _runtime(c)
    _features(c)
    if method in BOOTSTRAP_METHODS:
        c.bootstrap = bootstrap_config.defaults()  # jaxnoise/bootstrap/config.py
    else:
        c.dividemix = dividemix_config.defaults()  # jaxnoise/dividemix/config.py
    return c


def _data(c: ml_collections.ConfigDict) -> None:
    """The shared fields: data."""
    c.data = ml_collections.ConfigDict()
    c.data.source = "tfds"  # "tfds" | "folder" (ROOT/{train,test}/<class>/<img>) | "digits"
    # | "features" (your own embeddings: data.features below)
    c.data.name = "cifar10"  # tfds dataset name (source="tfds")
    c.data.root = ""  # image-folder root (source="folder")
    c.data.data_dir = ""  # tfds data_dir ("" = tfds default)
    c.data.cache_dir = ""  # decoded-array cache for image folders ("" = beside the images)
    c.data.subset_per_class = 0  # >0: class-balanced subset of the training set (reduced runs)
    c.data.crop_padding = 4  # random crop of the original size after this much zero padding
    c.data.flip = True  # random horizontal flips
    c.data.normalization = "published"  # "published": the original code's fixed CIFAR-10 mean
    # (0.4914, 0.4822, 0.4465) / std (0.2023, 0.1994, 0.2010), also used for CIFAR-100 there;
    # "dataset": per-channel mean / std of the training images


def _label_noise(c: ml_collections.ConfigDict) -> None:
    """The shared fields: label noise."""
    c.noise = 0.0  # noise level r in [0, 1]
    c.noise_kind = "symmetric"  # "none"|"symmetric"|"symmetric_exclusive"|"asymmetric"|"human"
    c.label_file = ""  # noise_kind="human": a label file (.pt of the CIFAR-N release, .npz,
    # .npy, .csv); "" with label_key: a label set the data source carries (tfds cifar10_n)
    c.label_key = ""  # the label set to use, e.g. "worse_label", "aggre_label", "random_label1"
    # (CIFAR-10N), "noisy_label" (CIFAR-100N), or their short names "worse", "aggre",
    # "random1".."random3", "noisy" (file or data source alike); a file holding several needs it
    c.label_order = "auto"  # how the file's rows map to samples: "cifar" (original CIFAR order,
    # the CIFAR-N files; mapped through the tfds id) | "dataset" (the dataset's own order) |
    # "id" (its id/path column) | "auto" (see jaxnoise/labels/human.py; ambiguity is refused)
    c.noise_seed = 42  # seed of the noise injection (independent of `seed`, like the original)


def _model(c: ml_collections.ConfigDict) -> None:
    """The shared fields: model."""
    c.model = "preact_resnet18"  # images: "preact_resnet18" | "resnet34" | "small_cnn" |
    # "resnet50"; features (data.source="features" or a data.extractor): "mlp" | "linear"
    c.width = 64  # base width (64 = published PreAct ResNet-18; smaller for reduced compute)
    c.compute_dtype = "float32"  # or "bfloat16": bf16 activations, float32 params/BN stats/losses
    c.shortcut = "preactivated"  # PreAct blocks' identity shortcut: "preactivated" = relu(bn1(x))
    # as the published code's PreResNet.PreActBlock | "input" = x (He et al., pytorch-cifar)
    c.weights = ""  # local .npz of pretrained weights (resnet50, torchvision names)
    c.freeze_backbone = False  # train only the linear head (published TinyImageNet setting)


def _schedule(c: ml_collections.ConfigDict) -> None:
    """The shared fields: optimizer and schedule (epochs are 1-based for every method)."""
    c.epochs = 300  # total epochs
    c.optimizer = "sgd"  # "sgd" (momentum) | "adam"
    c.lr = 0.1
    c.momentum = 0.9
    c.weight_decay = 1e-4
    c.lr_milestones = (100, 250)  # lr is multiplied by lr_gamma *from* each of these epochs
    # on (the published code steps MultiStepLR at every epoch's start: epoch 100 runs at 0.01)
    c.lr_gamma = 0.1


def _devices(c: ml_collections.ConfigDict) -> None:
    """The shared fields: devices."""
    c.mesh = ml_collections.ConfigDict()
    c.mesh.num_devices = 0  # data-parallel devices (0 = all devices of all processes)
    c.distributed = ml_collections.ConfigDict()
    c.distributed.auto = False  # jax.distributed.initialize() from the cluster (SLURM, TPU, ...)
    c.distributed.coordinator_address = ""  # or explicit: "host:port" of process 0 ...
    c.distributed.num_processes = 1  # ... the number of processes ...
    c.distributed.process_id = 0  # ... and this process's id


def _runtime(c: ml_collections.ConfigDict) -> None:
    """The shared fields: evaluation, logging, checkpoints."""
    c.eval_batch_size = 1000  # chunk size of the tracking pass and the test evaluation
    c.log_every_steps = 20  # progress-bar refresh of the running loss (one host sync)
    c.log_every_seconds = 60.0  # without a terminal: a progress line this often (0 = off)
    c.keep_checkpoints = 2  # how many checkpoints to keep (epoch ends and preemption saves)
    c.compilation_cache = "auto"  # jax's persistent compilation cache, so that a restarted
    # (resumed) run loads its compiled programs instead of compiling them again (minutes on a
    # CPU): "auto" = $XDG_CACHE_HOME/jaxnoise/xla or ~/.cache/jaxnoise/xla | "" or "none" = off |
    # a folder; the environment variable JAX_COMPILATION_CACHE_DIR, if set, wins over this
    c.tensorboard = "auto"  # TensorBoard event files of every epoch's metrics in
    # WORKDIR/tensorboard/ (the numbers of metrics.jsonl, nested names joined with "/"): "auto" =
    # when tensorboardX is installed (pip install 'jaxnoise[tensorboard]') | "on" = required |
    # "off"; view them with: tensorboard --logdir WORKDIR (or a folder of workdirs)


def _features(c: ml_collections.ConfigDict) -> None:
    """The shared fields: features (jaxnoise/data/: the embeddings source, cached extractors)."""
    c.data.features = ""  # source="features": one .npz (train_features, train_labels,
    # test_features, test_labels[, class_names]) or the train side of a pair (.npz with
    # features, labels[, class_names]; or .npy with its labels in <stem>_labels.npy)
    c.data.test_features = ""  # the test side of a pair ("" = the single-.npz layout)
    c.data.extractor = "none"  # "kmeans" (Coates et al. 2011) | "resnet50": turn the images of
    # any image source into frozen features once, cached beside the data (or data.cache_dir)
    c.data.extractor_weights = ""  # extractor="resnet50": local torchvision resnet50 .npz
    c.data.extractor_batch = 64  # images per extraction batch (speed / memory only)
    c.data.kmeans_centroids = 1600  # K: 4K features after 4-quadrant pooling
    c.data.kmeans_patches = 400000  # random 6x6 patches the whitening and k-means learn from
    c.data.kmeans_iters = 20  # k-means (Lloyd) iterations
    c.data.kmeans_eps = 10.0  # contrast normalisation of each patch, (x - mean) / sqrt(var + eps)
    # on 0..255 pixel values (10: Coates et al.'s code); part of the features cache key, so a
    # changed eps extracts again (benchmarks/results/features_notes.md)
    c.mlp_hidden = (512,)  # model="mlp": hidden layer sizes (model="linear": none); quoted
    # on the command line: '--config.mlp_hidden=(512,)' (a bare (512,) is a shell syntax error)
