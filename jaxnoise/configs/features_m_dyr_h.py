"""M-DYR-H on your own embeddings (data.source="features"): a head trained on frozen features.

    python main.py --config configs/features_m_dyr_h.py --config.data.features=emb.npz \
        --config.noise_kind=none --workdir runs/emb

`emb.npz` holds train_features (N, D) float, train_labels (N,) int, test_features, test_labels
and optionally class_names (or pass a train/test pair: data.features + data.test_features; see
jaxnoise/data/embeddings.py). `noise_kind=none` takes your labels as given; the run's
label_issues.csv then lists the samples the noise model finds probably mislabeled. The
published schedule (300 epochs, lr /10 from 100 and 250, bootstrapping from 106); the head,
learning rate and k-means extractor of the `features` protocol of benchmarks/reproduce.py
(benchmarks/results/features_notes.md). Its M-DYR-H cell is this config on images, e.g. with
real human labels (tests/test_user_fixes.py checks that they are equal):

    python main.py --config configs/features_m_dyr_h.py --config.data.source=folder \
        --config.data.root=CIFAR10_JPEG --config.data.extractor=kmeans \
        --config.data.name=cifar10 --config.noise_kind=human \
        --config.label_file=labels.csv --config.label_key=worse

(or: python benchmarks/reproduce.py --protocol features --label-file labels.csv ...).
"""

from jaxnoise.configs import default


def get_config():
    """M-DYR-H with a 1-hidden-layer MLP head on standardised features, no augmentation."""
    c = default.get_config()
    c.method = "M-DYR-H"
    c.data.source = "features"
    c.data.name = "features"  # names the run; "cifar10"/"cifar100" select asymmetric-noise pairs
    c.data.crop_padding, c.data.flip = 0, False  # feature vectors are not augmented
    c.bootstrap.track_augment = False
    c.data.normalization = "dataset"  # per-feature mean / std of the training features
    c.model, c.mlp_hidden = "mlp", (128,)
    c.lr = 0.02  # lr 0.1 diverged on standardised k-means features (features_notes.md)
    # data.extractor="kmeans" (images): the protocol's 400 centroids (1,600 features), not the
    # default's 1,600; patches, iterations and kmeans_eps are the default's, as the protocol's
    c.data.kmeans_centroids = 400
    return c
