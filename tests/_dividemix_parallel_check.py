"""Run the tiny DivideMix training of tests/test_dividemix_loop.py on each given number of
(forced CPU) devices and print each run's metrics as JSON.

Used by tests/test_dividemix_loop.py (with "2") in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=2.
"""

import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxnoise import loops  # noqa: E402
from tests.test_dividemix_loop import tiny_config  # noqa: E402

KEYS = ("train_loss", "test_loss", "test_acc", "auroc")

if __name__ == "__main__":
    out = {}
    for d in [int(a) for a in sys.argv[1:]]:
        c = tiny_config()
        c.mesh.num_devices = d
        with tempfile.TemporaryDirectory() as wd:
            s = loops.train_and_evaluate(c, wd)
        out[d] = [
            {
                **{k: r[k] for k in KEYS},
                "labelled": [v["labelled"] for v in r.get("division", {}).values()],
            }
            for r in s["history"]
        ]
    print("RESULT " + json.dumps(out))
