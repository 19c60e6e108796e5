"""One process of a 2-process jax.distributed job on this machine (CPU collectives over gloo).

    python tests/_multiprocess_check.py PROCESS_ID PORT WORKDIR

Each process has 2 local CPU devices (4 in all); both train the same tiny run, and process 0
prints the metrics as JSON.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from jaxnoise import train  # noqa: E402
from tests._parallel_check import tiny  # noqa: E402

if __name__ == "__main__":
    pid, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    c = tiny(0)
    c.distributed.coordinator_address = f"127.0.0.1:{port}"
    c.distributed.num_processes = 2
    c.distributed.process_id = pid
    s = train.train_and_evaluate(c, workdir)
    assert jax.process_count() == 2 and len(jax.devices()) == 4
    if pid == 0:
        hist = [
            {k: r[k] for k in ("train_loss", "test_loss", "test_acc", "auroc", "mixture")}
            for r in s["history"]
        ]
        print("RESULT " + json.dumps(hist))
