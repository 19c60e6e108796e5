"""One process of a 2-process jax.distributed job on this machine (CPU collectives over gloo).

    python tests/_multiprocess_check.py PROCESS_ID PORT WORKDIR [bootstrap|dividemix]

Each process has 2 local CPU devices (4 in all); both train the same tiny run (the tiny M-DYR-H
run of tests/_parallel_check.py, or the tiny DivideMix run of tests/test_dividemix_loop.py), and
process 0 prints the metrics as JSON.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from jaxnoise import loops  # noqa: E402

KEYS = {
    "bootstrap": ("train_loss", "test_loss", "test_acc", "auroc", "mixture"),
    "dividemix": ("train_loss", "test_loss", "test_acc", "auroc"),
}

if __name__ == "__main__":
    pid, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    method = sys.argv[4] if len(sys.argv) > 4 else "bootstrap"
    if method == "dividemix":
        from tests.test_dividemix_loop import tiny_config

        c = tiny_config()
    else:
        from tests._parallel_check import tiny

        c = tiny(0)
    c.distributed.coordinator_address = f"127.0.0.1:{port}"
    c.distributed.num_processes = 2
    c.distributed.process_id = pid
    s = loops.train_and_evaluate(c, workdir)
    assert jax.process_count() == 2 and len(jax.devices()) == 4
    if pid == 0:
        hist = [
            {
                **{k: r[k] for k in KEYS[method]},
                "labelled": [v["labelled"] for v in r.get("division", {}).values()],
            }
            for r in s["history"]
        ]
        print("RESULT " + json.dumps(hist))
