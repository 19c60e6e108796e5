"""The names a config may choose from, defined once, in a module that imports nothing.

The validator (``jaxnoise.config``) checks configs without importing jax; the modules that act
on a choice (``models``, ``data``, ``noise``, ``losses``, ...) take their names from here.
"""

METHODS_BOOTSTRAP = ("CE", "M", "M-DYR-H", "M-DYR-S", "MD-DYR-SH")  # config.bootstrap
METHODS_DIVIDEMIX = ("DivideMix",)  # config.dividemix
METHODS = METHODS_BOOTSTRAP + METHODS_DIVIDEMIX

DATA_SOURCES = ("tfds", "folder", "digits", "features")
NORMALIZATIONS = ("published", "dataset")
EXTRACTORS = ("none", "kmeans", "resnet50")
NOISE_KINDS = ("none", "symmetric", "symmetric_exclusive", "asymmetric", "human")
LABEL_ORDERS = ("auto", "dataset", "cifar", "id")  # jaxnoise/human_labels.py

MODELS = ("preact_resnet18", "resnet34", "small_cnn", "resnet50", "linear", "mlp")
FEATURE_MODELS = ("linear", "mlp")  # heads for feature vectors; the others take images
SHORTCUTS = ("preactivated", "input")
COMPUTE_DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("sgd", "adam")
TENSORBOARD = ("auto", "on", "off")  # jaxnoise/writers.py

# The bootstrap methods (config.bootstrap).
NOISE_MODELS = ("bmm", "gmm")
NOISY_COMPONENTS = ("initial", "max_mean")
MIXTURE_SCOPES = ("global", "class")
LOSS_SIGNALS = ("epoch", "ema", "mean_k")
POSTERIOR_SOURCES = ("batch", "epoch")
MIXUP_DRAWS = ("none", "beta", "binomial")
PAIR_WEIGHTS = ("published", "mix")

# DivideMix (config.dividemix).
DIVIDEMIX_VIEWS = ("weak", "augdesc-ws")
