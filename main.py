"""Train with noisy labels.

    python main.py --config configs/cifar10_m_dyr_h.py --config.noise=0.5

The workdir (default ``runs/<config name>``) holds the resolved config, metrics.jsonl, the
checkpoints and the last epoch's per-sample arrays; re-running the same command resumes.
"""

import os
import signal
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
        config_path = config_flags.get_config_filename(flags.FLAGS["config"])
        name = os.path.splitext(os.path.basename(config_path))[0]
        workdir = os.path.join("runs", name)
    try:
        summary = train.train_and_evaluate(config, workdir, fresh=_FRESH.value)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:  # a second Ctrl-C: no new checkpoint, the last committed one stays
        print(f"interrupted: the last saved checkpoint in {workdir} is kept", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    if summary["interrupted"]:
        # Preempted (SIGTERM) or Ctrl-C: a checkpoint of the exact position was saved. Exit with
        # the shell's code for that signal (143 / 130), so schedulers and scripts can tell an
        # interrupted run (re-run the same command to resume) from a finished one (0).
        name = summary["signal"]  # None: another process of a multi-process job was signalled
        at = summary["checkpoint_at"]
        saved = f"the checkpoint at {at} is saved in {workdir}" if at else "nothing to save yet"
        print(
            f"stopped by {name or 'a signal to another process of the job'}: {saved}; re-run "
            "the same command to resume",
            file=sys.stderr,
        )
        sys.exit(128 + signal.Signals[name or "SIGTERM"].value)
    print(
        f"done: {config.method} noise={config.noise} best test acc {summary['best_acc']:.2f}% "
        f"last {summary['last_acc']:.2f}%  noise-detection AUROC {summary['auroc']:.4f}  "
        f"workdir {workdir}"
    )


if __name__ == "__main__":
    app.run(main)
