"""scripts/experiment_lad.py: the teacher check, and the whole pipeline on tiny scenes through the toolkit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "experiment_lad.py"



def check(fed: float, zeroed: float) -> dict[str, float]:
    return {"miou_label_fed": fed, "miou_label_zeroed": zeroed, "miou_label_drop": fed - zeroed}


def test_a_teacher_that_beats_ce_and_uses_its_label_passes(exp):
    assert exp.check_failure(check(0.80, 0.50), ce_mean=0.70, min_drop=0.02) is None


@pytest.mark.parametrize(("teacher", "reason"), [
    (check(0.65, 0.40), "0.6500 (label fed) vs CE students 0.7000"),  # weaker than the CE students
    (check(0.80, 0.79), "+0.0100 when its label channel is zeroed"),  # ignores its label
])
def test_a_teacher_failing_either_condition_stops_with_one_line(exp, teacher, reason):
    message = exp.check_failure(teacher, ce_mean=0.70, min_drop=0.02)
    assert message.startswith("teacher check failed") and reason in message and "\n" not in message


def test_overrides_name_the_optimiser_and_a_schedule_that_validates_at_the_end(exp):
    assert "torch.optim.SGD" in exp.optimizer("sgd", 1e-3) and "momentum: 0.9" in exp.optimizer("sgd", 1e-3)
    assert "torch.optim.AdamW" in exp.optimizer("adamw", 3e-4)
    assert "--trainer.val_check_interval=4" in exp.schedule(4, 100)


@pytest.mark.slow
def test_the_pipeline_runs_every_stage_through_fit_and_writes_the_report(tmp_path):
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--baseline-steps", "2", "--teacher-steps", "2", "--steps", "2", "--seeds", "0",
         "--min-label-drop", "-1", "--out", str(tmp_path), "--work", str(tmp_path / "work"), "--tiny"],
        cwd=REPO, capture_output=True, text=True, check=False)
    assert out.returncode in (0, 1), out.stderr[-2000:]
    result = json.loads((tmp_path / "lad.json").read_text())
    assert {"miou_label_fed", "miou_label_zeroed", "miou_label_drop"} <= set(result["teacher"])
    assert "ce" in result["arms"]
    if out.returncode == 0:  # a tiny teacher may fail the "beats CE" half; then the script stops there
        assert set(result["arms"]) == {"ce", "lad", "lad_label_zeroed"}
        zeroed = next((tmp_path / "work").glob("students_*/lad_label_zeroed/seed0/run.json")).read_text()
        assert zeroed.rfind("label_scale=0") > zeroed.rfind("label_scale=1")  # the last override wins
    else:
        assert "teacher check failed" in out.stderr
    assert (tmp_path / "lad.md").exists()
    for run in (tmp_path / "work").glob("*/*/seed0"):
        assert (run / "done.json").exists(), run
