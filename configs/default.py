"""Shared base config: CIFAR-10, PreAct ResNet-18, the published mixup schedule.

Every other config imports this and says only what differs. Usage:

    python main.py --config configs/cifar10_m_dyr_h.py --config.noise=0.5 --workdir runs/x
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """The base config; fields are documented inline."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # one seed drives init, noise injection, shuffling, augmentation and mixup

    # --- data -------------------------------------------------------------------------------
    c.data = ml_collections.ConfigDict()
    c.data.source = "tfds"  # "tfds" | "folder" (ROOT/{train,test}/<class>/<img>) | "digits"
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

    # --- label noise ------------------------------------------------------------------------
    c.noise = 0.0  # noise level r in [0, 1]
    c.noise_kind = "symmetric"  # "none"|"symmetric"|"symmetric_exclusive"|"asymmetric"|"human"
    c.label_file = ""  # noise_kind="human": a label file (.pt of the CIFAR-N release, .npz,
    # .npy, .csv); "" with label_key: a label set the data source carries (tfds cifar10_n)
    c.label_key = ""  # the label set to use, e.g. "worse_label", "aggre_label", "random_label1"
    # (CIFAR-10N), "noisy_label" (CIFAR-100N); a file holding several sets needs it
    c.label_order = "auto"  # how the file's rows map to samples: "cifar" (original CIFAR order,
    # the CIFAR-N files; mapped through the tfds id) | "dataset" (the dataset's own order) |
    # "id" (its id/path column) | "auto" (see jaxnoise/human_labels.py; ambiguity is refused)
    c.noise_seed = 42  # seed of the noise injection (independent of `seed`, like the original)

    # --- model ------------------------------------------------------------------------------
    c.model = "preact_resnet18"  # "preact_resnet18" | "small_cnn" | "resnet50"
    c.width = 64  # base width (64 = published PreAct ResNet-18; smaller for reduced compute)
    c.compute_dtype = "float32"  # or "bfloat16": bf16 activations, float32 params/BN stats/losses
    c.shortcut = "preactivated"  # PreAct blocks' identity shortcut: "preactivated" = relu(bn1(x))
    # as the published code's PreResNet.PreActBlock | "input" = x (He et al., pytorch-cifar)
    c.weights = ""  # local .npz of pretrained weights (resnet50, torchvision names)
    c.freeze_backbone = False  # train only the linear head (published TinyImageNet setting)

    # --- method -----------------------------------------------------------------------------
    c.method = "M-DYR-H"  # "CE" | "M" | "M-DYR-H" | "M-DYR-S" | "MD-DYR-SH" | "DivideMix"
    c.noise_model = "bmm"  # "bmm" | "gmm": the mixture fitted to the per-sample losses
    c.noisy_component = "initial"  # "initial" (original code) | "max_mean" (extension)
    c.em_iters = 10  # EM iterations of the mixture fit
    c.mixture_scope = "global"  # "global": one mixture over all samples (published) | "class":
    # one per (noisy) class, fitted together (instance-dependent / asymmetric noise)
    c.loss_signal = "epoch"  # what the mixture fits: "epoch" (this epoch's loss, published) |
    # "ema" (moving average over epochs) | "mean_k" (mean of the last signal_k epochs, as
    # DivideMix at 90% noise); accumulated signals need posterior_source="epoch"
    c.signal_k = 5  # loss_signal="mean_k": epochs averaged
    c.signal_momentum = 0.9  # loss_signal="ema": s = m * s + (1 - m) * loss
    c.posterior_lookup = True  # batch posteriors from the original's 100-bin lookup table
    c.posterior_source = "batch"  # "batch": per-step eval forward (published) | "epoch": from
    # the end-of-epoch tracking pass (one forward fewer per step)
    c.track_augment = True  # augment the tracking pass (crop + flip) as the published code
    # does (its tracking loader uses the training transform); False: losses of the clean images
    c.mixup_alpha = 32.0  # static mixup: delta ~ Beta(alpha, alpha)
    c.mixup_draw = "none"  # dynamic mixup weight: "none" | "beta" | "binomial" (extensions)
    c.binomial_n = 10000  # n of the Binomial draw
    c.reg_weight = 1.0  # eta, weight of the class-balance regulariser
    c.reg_prior_classes = 0  # prior 1/K per class in the regulariser; 0: K = number of classes
    # (the original's M-DYR-S always passes K = 10, also on CIFAR-100; cifar100_m_dyr_s.py does)
    c.loss_pair_weight = "published"  # "published": as the original code (plain mixup,
    # M-DYR-H and M-DYR-S weight the two targets by delta; MD-DYR-SH by 0.5, and by a fresh
    # Beta(32, 32) draw in its dynamic-mixup-only epochs) | "mix": by the mixing weight (eq. 8)

    # --- schedule (epochs are 1-based, as in the paper) -------------------------------------
    c.epochs = 300  # total epochs
    c.batch_size = 128
    c.drop_last = False  # False: the last, smaller batch of an epoch is trained too, as the
    # published code does (391 steps per CIFAR-10 epoch, the last of 80 images); True: dropped
    c.optimizer = "sgd"  # "sgd" (momentum) | "adam"
    c.lr = 0.1
    c.momentum = 0.9
    c.weight_decay = 1e-4
    c.lr_milestones = (100, 250)  # lr is multiplied by lr_gamma *from* each of these epochs
    # on (the published code steps MultiStepLR at every epoch's start: epoch 100 runs at 0.01)
    c.lr_gamma = 0.1
    c.bootstrap_start_epoch = 0  # M-DYR-H/S: bootstrapping from this epoch (mixup before);
    # 0: lr_milestones[0] + 6 as the published code (106 for milestones (100, 250))
    c.dynamic_start_epoch = 106  # MD-DYR-SH: dynamic mixup from this epoch (a constant in the
    # published code, not derived from the milestones)
    c.soft_to_hard_start_epoch = 111  # MD-DYR-SH: soft-to-hard bootstrapping from this epoch
    c.temperature_epochs = 89  # temperature goes linearly 1 -> final over this many epochs
    c.final_temperature = 0.001

    # --- devices ----------------------------------------------------------------------------
    c.mesh = ml_collections.ConfigDict()
    c.mesh.num_devices = 0  # data-parallel devices (0 = all devices of all processes)
    c.distributed = ml_collections.ConfigDict()
    c.distributed.auto = False  # jax.distributed.initialize() from the cluster (SLURM, TPU, ...)
    c.distributed.coordinator_address = ""  # or explicit: "host:port" of process 0 ...
    c.distributed.num_processes = 1  # ... the number of processes ...
    c.distributed.process_id = 0  # ... and this process's id

    # --- evaluation, logging, checkpoints ---------------------------------------------------
    c.steps_per_call = 1  # K train steps per dispatch (jax.lax.scan); results equal K = 1
    c.eval_batch_size = 1000  # chunk size of the tracking pass and the test evaluation
    c.log_every_steps = 20  # progress-bar refresh of the running loss (one host sync)
    c.log_every_seconds = 60.0  # without a terminal: a progress line this often (0 = off)
    c.keep_checkpoints = 2  # how many checkpoints to keep (epoch ends and preemption saves)
    c.compilation_cache = "auto"  # jax's persistent compilation cache, so that a restarted
    # (resumed) run loads its compiled programs instead of compiling them again (minutes on a
    # CPU): "auto" = $XDG_CACHE_HOME/jaxnoise/xla or ~/.cache/jaxnoise/xla | "" or "none" = off |
    # a folder; the environment variable JAX_COMPILATION_CACHE_DIR, if set, wins over this

    # --- features (jaxnoise/features.py: embeddings source, cached frozen extractors) --------
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
    c.mlp_hidden = (512,)  # model="mlp": hidden layer sizes (model="linear": none)

    # --- DivideMix (method="DivideMix"; Li, Socher & Hoi 2020; jaxnoise/dividemix_loop.py) ---
    # Two networks; DivideMix counts epochs from 0 as the official code and runs epochs
    # 0 .. epochs (epochs + 1 in all: official num_epochs=300 is epochs = 300), lr from
    # lr / lr_milestones / lr_gamma per epoch, optimizer / momentum / weight_decay as above.
    # batch_size, noise_model, posterior_* and the mixup fields are not used by it.
    c.dividemix_warm_up = 10  # cross-entropy warm-up of both networks in epochs 0..warm_up-1
    # (official: 10 on CIFAR-10, 30 on CIFAR-100)
    c.p_threshold = 0.5  # clean probability above which a sample is labelled (official
    # default; -1: the paper's, 0.6 at 90% noise and 0.5 otherwise)
    c.lambda_u = 25.0  # weight of the unlabelled loss after its ramp-up (official default;
    # -1: the paper's table for the dataset, noise kind and level, jaxnoise/config.py)
    c.lambda_u_rampup = 16.0  # lambda_u ramps up linearly over this many epochs after warm-up
    c.sharpen_temperature = 0.5  # T of co-guessing / co-refinement sharpening
    c.mixmatch_alpha = 4.0  # MixMatch lam ~ Beta(alpha, alpha), lam = max(lam, 1 - lam)
    c.dividemix_batch = 64  # B labelled + B unlabelled samples per step; warm-up batch 2B
    c.dividemix_loss_history = 5  # at noise >= 0.9 the GMM fits the mean of the last this
    # many epochs' min-max-normalised losses (official: at r = 0.9, 5 epochs)
    c.dividemix_views = "weak"  # "augdesc-ws" (Nishi et al. 2021): targets from weak views,
    # MixMatch of strong views (crop, flip, AutoAugment's CIFAR-10 policy on the device)
    c.dividemix_warmup_strong = 0.0  # probability of a strong warm-up view (AugDesc's SAW: 1)
    return c
