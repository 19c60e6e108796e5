"""Data parallelism: the same metrics on 1, 2 and 8 devices, and across 2 processes (slow tier:
``pytest -m slow``; the sharded pieces are also tested on their own in the fast tier, e.g. the
sharded mixture fit of tests/test_mixture.py and the resharded checkpoint of
tests/test_checkpoint.py)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("train_loss", "test_loss", "test_acc", "auroc")


def _result(stdout: str):
    line = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
    assert line, stdout[-3000:]
    return json.loads(line[-1][len("RESULT ") :])


def _assert_same(a, b, what):
    assert len(a) == len(b) == 2, what
    for ra, rb in zip(a, b, strict=True):
        for k in KEYS:
            np.testing.assert_allclose(ra[k], rb[k], rtol=2e-3, atol=1e-3, err_msg=f"{what} {k}")
        for k in ("alphas", "betas", "weights"):
            np.testing.assert_allclose(
                ra["mixture"][k], rb["mixture"][k], rtol=5e-3, err_msg=f"{what} mixture {k}"
            )


@pytest.fixture(scope="module")
def single_and_multi_device():
    """Metrics of the tiny run on 1, 2 and 8 forced CPU devices (one subprocess)."""
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    r = subprocess.run(
        [sys.executable, "tests/_parallel_check.py", "1", "2", "8"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return _result(r.stdout)


def test_same_metrics_on_1_2_and_8_devices(single_and_multi_device):
    """Same global batch and seed: the metrics agree to float tolerance across device counts."""
    res = single_and_multi_device
    _assert_same(res["1"], res["2"], "1 vs 2 devices")
    _assert_same(res["1"], res["8"], "1 vs 8 devices")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_agree_with_one(single_and_multi_device, tmp_path):
    """Two processes joined by jax.distributed (gloo, localhost) match the single-process run."""
    port = str(_free_port())
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "tests/_multiprocess_check.py", str(i), port, str(tmp_path / "wd")],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    multi = _result(outs[0][0])
    _assert_same(single_and_multi_device["1"], multi, "1 process vs 2 processes")
    # Only process 0 wrote the metrics log; the checkpoint was written collectively.
    lines = (tmp_path / "wd" / "metrics.jsonl").read_text().strip().splitlines()
    assert len(lines) == 2
    assert (tmp_path / "wd" / "checkpoints").is_dir()
