"""Train with noisy labels in a clone of the repository: ``jaxnoise train`` (jaxnoise/cli/train.py).

    python main.py --config configs/cifar10_m_dyr_h.py --config.noise=0.5
    python main.py --config quickstart               # a preset by name

``python main.py --help`` lists the presets and every config field; the exit codes are
``jaxnoise train``'s: 0 finished; 2 the command line was refused; 1 failed later; 143 / 130
stopped by SIGTERM / SIGINT (with a checkpoint saved once training had started).
"""

import signal
import sys

from jaxnoise.cli import interrupted_while_starting as _interrupted_while_starting

if __name__ == "__main__":  # Ctrl-C during the imports below (and until the run installs its
    signal.signal(signal.SIGINT, _interrupted_while_starting)  # own handlers): one line, 130

from jaxnoise.cli.train import done_line, main, parse_flags, run  # noqa: E402, F401

if __name__ == "__main__":
    run(sys.argv[1:], prog="python main.py")
