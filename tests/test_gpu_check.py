"""benchmarks/gpu_check.py --smoke runs on CPU and writes every measurement (so the script is
ready the first time a GPU is at hand). The slow tier: it times every method's step, a tracking
pass and mixture fits of up to 50,000 losses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_gpu_check_smoke(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "gpu_check.py"),
            "--smoke",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["smoke"] and {"CE/float32", "M/float32", "M-DYR-H/float32", "M-DYR-H/bfloat16"} <= set(
        r["step_s"]
    )
    assert all(v > 0 for v in r["step_s"].values())
    assert r["tracking_pass_s"] > 0 and set(r["bmm_fit_s"]) == {"5000", "50000"}
    assert len(r["epochs"]["epochs"]) == 1 and r["projected_300_epochs_min"] > 0
    assert "projected 300 epochs" in proc.stdout
