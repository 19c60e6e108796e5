"""Run a small DivideMix training (tests/_tiny.py ``dividemix_config`` on 500 digits: warm-up
epoch 0, semi-supervised epochs 1 and 2) on each given number of (forced CPU) devices and print
each run's metrics as JSON.

Used by tests/test_dividemix_loop.py (with "1 2") in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=2.
"""

import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxnoise import train  # noqa: E402
from tests._tiny import dividemix_config  # noqa: E402

KEYS = ("train_loss", "test_loss", "test_acc", "auroc")


def small_config(num_devices: int):
    """500 digits, epochs 0..2 (warm-up 0), on ``num_devices`` devices."""
    c = dividemix_config(epochs=2, lr_milestones=(2,), dividemix_warm_up=1)
    c.data.subset_per_class = 50
    c.mesh.num_devices = num_devices
    return c


if __name__ == "__main__":
    out = {}
    for d in [int(a) for a in sys.argv[1:]]:
        with tempfile.TemporaryDirectory() as wd:
            s = train.train_and_evaluate(small_config(d), wd)
        out[d] = [{**{k: r[k] for k in KEYS},
                   "labelled": [v["labelled"] for v in r.get("division", {}).values()]}
                  for r in s["history"]]  # fmt: skip
    print("RESULT " + json.dumps(out))
