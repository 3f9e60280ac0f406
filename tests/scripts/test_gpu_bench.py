"""bench/gpu.sh runs end to end on a CPU with --smoke (the way it is checked before a GPU is lent)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_bench_smoke_writes_every_part(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(REPO / "bench/gpu.sh"), str(tmp_path), "--smoke"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["smoke"] and result["kd_step"]["tokens_per_s"] > 0 and result["kd_step"]["teacher_params"] > 0
    for loss in ("forward_kl", "jsd"):
        values = [result["fused_loss"][loss][path]["value"] for path in ("naive", "chunked", "fused")]
        assert max(values) - min(values) < 1e-5 * max(abs(values[0]), 1e-3), values  # one loss, three paths
    assert result["ddp"]["ok"] and result["fsdp2"]["ok"]


def test_gpu_bench_needs_an_output_directory():
    done = subprocess.run(["bash", str(REPO / "bench/gpu.sh")], capture_output=True, text=True)
    assert done.returncode == 2 and "usage" in done.stderr
