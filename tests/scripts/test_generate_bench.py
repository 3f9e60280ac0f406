"""bench/generate.py runs at its smallest size and both paths generate the same tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_generate_bench_prints_both_throughputs():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(REPO / "bench/generate.py"), "--prompts", "4", "--new-tokens", "4",
                           "--batch", "2", "--repeats", "1", "--layers", "1", "--hidden", "32"],
                          env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout[done.stdout.index("{"):])
    assert result["generated_tokens"] > 0  # the bench exits non-zero when the two paths' counts differ
    assert result["plain_tokens_per_s"] > 0 and result["lit_distill_tokens_per_s"] > 0
