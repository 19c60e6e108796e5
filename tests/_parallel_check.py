"""Run a tiny M-DYR-H training on 1, 2 and 8 (forced CPU) devices and print the metrics as JSON.

Used by tests/test_parallel.py in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8.
"""

import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import quickstart  # noqa: E402
from jaxnoise import loops  # noqa: E402


def tiny(num_devices: int):
    """Shrunk quickstart: 640 samples (10 full batches of 64, divisible by 8: one compiled step
    per phase), 2 epochs."""
    c = quickstart.get_config()
    c.width, c.epochs, c.lr_milestones = 8, 2, (1,)
    c.bootstrap.start_epoch = 2
    c.data.subset_per_class = 64
    c.mesh.num_devices = num_devices
    return c


if __name__ == "__main__":
    out = {}
    for d in [int(a) for a in sys.argv[1:]]:
        with tempfile.TemporaryDirectory() as wd:
            s = loops.train_and_evaluate(tiny(d), wd)
        out[d] = [
            {k: r[k] for k in ("train_loss", "test_loss", "test_acc", "auroc", "mixture")}
            for r in s["history"]
        ]
    print("RESULT " + json.dumps(out))
