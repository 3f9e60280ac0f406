"""bench/peers.py runs at its smallest size, prints every contender and the losses agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--steps", "2", "--warmup", "1", "--repeats", "1", "--batch", "2", "--seq", "16", "--vocab", "256",
         "--hidden", "32", "--interleaved-repeats", "1"]
KEYS = {"s_per_step", "cpu_s_per_step", "cpu_time_ratio_to_hand", "peak_mb", "time_ratio_to_hand", "peak_ratio_to_hand", "final_loss", "loss_rel_diff_to_hand"}


def _run(*extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(REPO / "bench/peers.py"), *SMALL, *extra],
                          env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]  # exit 1 = losses disagree
    return json.loads(done.stdout[done.stdout.index("{"):])


@pytest.mark.slow
def test_peers_bench_lit_distill_and_hand_agree():
    result = _run("--no-peers")
    for objective in ("fkl_ce", "jsd"):
        assert set(result[objective]) == {"hand", "lit_distill", "interleaved"}
        inter = result[objective].pop("interleaved")
        assert inter["steps_paired"] == 1  # --steps 2: the first timed batch has no lit interval to pair
        assert set(inter["s_per_step"]) == {"hand", "lit_distill"}
        assert inter["lit_distill_over"]["hand"]["median"] > 0 and "fastest_peer" not in inter
        for entry in result[objective].values():
            assert KEYS <= set(entry) and entry["s_per_step"] > 0 and entry["cpu_s_per_step"] > 0
            assert entry["loss_rel_diff_to_hand"] <= 1e-4
    assert result["losses_agree"]


@pytest.mark.slow
def test_peers_bench_with_trl_and_torchtune():
    pytest.importorskip("trl", reason="TRL is in the bench extra, not dev: pip install -e .[bench]")
    pytest.importorskip("torchtune.modules.loss", reason="torchtune (bench extra) is missing or cannot import")
    result = _run()
    assert set(result["fkl_ce"]) == {"hand", "lit_distill", "trl", "torchtune", "interleaved"}
    assert set(result["jsd"]) == {"hand", "lit_distill", "trl", "interleaved"}  # torchtune has no JSD
    for objective in ("fkl_ce", "jsd", "fkl"):  # the peers' loops, stepped inside lit_distill's run
        inter = result[objective]["interleaved"]
        assert inter["fastest_peer"] in inter["s_per_step"] and inter["lit_distill_over_fastest_peer"] > 0
        assert inter["last_loss"]["trl"] == pytest.approx(inter["last_loss"]["hand"], rel=1e-4)
        assert set(inter["loss_rel_diff_to_hand"]) == {"trl"}
    # torchtune's term is the teacher cross-entropy: it equals our KL once 0.5·H(teacher) is removed
    tune = result["fkl_ce"]["torchtune"]
    assert tune["final_loss"] - tune["final_loss_as_kl"] == pytest.approx(0.5 * tune["teacher_entropy_last_batch"])
    assert result["max_loss_rel_diff_to_hand"] <= 1e-4 and result["losses_agree"]
