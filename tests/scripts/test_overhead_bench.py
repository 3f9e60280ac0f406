"""bench/overhead.py: the step-by-step interleaved measurement times the same work as whole runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench/overhead.py"
SMALL = ["--steps", "3", "--warmup", "1", "--repeats", "1", "--batch", "2", "--seq", "16", "--vocab", "256"]


def test_interleaved_hand_loops_train_like_whole_runs(exp):
    """Inside the Trainer each hand loop sees every batch once, in order: the same last loss as alone."""
    torch.manual_seed(0)
    student, teacher = exp.llama(32, 1, 256), exp.llama(32, 1, 256)
    batches = exp.make_batches(5, 2, 16, 256)
    with tempfile.TemporaryDirectory() as root:
        timer = exp.run_interleaved(student, teacher, batches, warmup=1, root=root)
    assert {name: len(t) for name, t in timer.times.items()} == {"lit_distill": 3, "hand": 3,
                                                                 "hand_with_lit_kernel": 3, "module_without_trainer": 3}
    assert all(t.wall > 0 and t.cpu >= 0 for ts in timer.times.values() for t in ts)
    for name, loss_fn in (("hand", exp.plain_kd_loss), ("hand_with_lit_kernel", exp.lit_kernel_loss)):
        _, whole_run_last, _ = exp.run_loop(student, teacher, batches, 1, loss_fn)
        assert timer.last_loss[name] == pytest.approx(whole_run_last, rel=1e-5)
    assert timer.last_loss["hand"] == pytest.approx(timer.last_loss["hand_with_lit_kernel"], rel=1e-4)
    assert timer.last_loss["module_without_trainer"] == pytest.approx(timer.last_loss["hand_with_lit_kernel"], rel=1e-5)


def test_step_ratios_pair_the_same_batches(exp):
    s = exp.Seconds
    times = {"lit_distill": [s(2.0, 1.0), s(3.0, 3.0), s(4.0, 2.0), s(1.0, 1.0), s(6.0, 3.0)],
             "hand": [s(1.0, 1.0), s(1.0, 1.0), s(2.0, 1.0), s(1.0, 1.0), s(2.0, 1.0)]}
    ratios = exp.step_ratios(times, "lit_distill", "hand")
    assert ratios["median"] == 2.0  # per-step ratios 2, 3, 2, 1, 3
    assert ratios["cpu_median"] == 2.0 and ratios["q1"] <= ratios["median"] <= ratios["q3"]


@pytest.mark.slow
def test_overhead_bench_prints_both_measurements():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(SCRIPT), *SMALL, "--interleaved-repeats", "1"],
                          env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(done.stdout[done.stdout.index("{"):])
    inter = result["interleaved"]
    assert inter["steps_paired"] == 2  # batches after warm-up, the first one's lit interval excluded
    for key in ("time_ratio", "kernel_time_ratio", "framework_time_ratio", "module_time_ratio", "trainer_time_ratio"):
        assert inter[key]["q1"] <= inter[key]["median"] <= inter[key]["q3"] and inter[key]["cpu_median"] > 0
    assert result["time_ratio"] > 0 and len(result["repeats"]["hand"]) == 1
