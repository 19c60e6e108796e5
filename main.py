"""Train with noisy labels.

    python main.py --config configs/cifar10_m_dyr_h.py --config.noise=0.5

The workdir (default ``runs/<config name>``) holds the resolved config, metrics.jsonl, the
checkpoints and the last epoch's per-sample arrays; re-running the same command resumes.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to an ml_collections config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>).")
_FRESH = flags.DEFINE_bool("fresh", False, "Discard a previous run in the workdir and start again.")
flags.mark_flags_as_required(["config"])


def main(argv):
    """Validate the config, then train and evaluate."""
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    from jaxnoise import config as config_lib

    config = _CONFIG.value
    try:
        config_lib.validate(config)  # before any data is loaded or anything is compiled
    except ValueError as e:
        sys.exit(f"error: {e}")

    from jaxnoise import train

    workdir = _WORKDIR.value
    if workdir is None:
        name = os.path.splitext(os.path.basename(config_flags.get_config_filename(_CONFIG)))[0]
        workdir = os.path.join("runs", name)
    try:
        summary = train.train_and_evaluate(config, workdir, fresh=_FRESH.value)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(
        f"done: {config.method} noise={config.noise} best test acc {summary['best_acc']:.2f}% "
        f"last {summary['last_acc']:.2f}%  noise-detection AUROC {summary['auroc']:.4f}  "
        f"workdir {workdir}"
    )


if __name__ == "__main__":
    app.run(main)
