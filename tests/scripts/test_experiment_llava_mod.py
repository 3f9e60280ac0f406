"""scripts/experiment_llava_mod.py: the teacher check that stops the run before distilling."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "experiment_llava_mod.py"


@pytest.fixture(scope="module")
def exp():
    spec = importlib.util.spec_from_file_location("experiment_llava_mod", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_teacher_that_beats_the_student_baseline_passes(exp):
    assert exp.teacher_check({"acc_all": 0.55}, {"acc_all": 0.37}) is None


@pytest.mark.parametrize("teacher", [0.37, 0.30])
def test_a_teacher_not_above_the_student_baseline_fails_with_one_line(exp, teacher):
    message = exp.teacher_check({"acc_all": teacher}, {"acc_all": 0.37})
    assert message is not None and "\n" not in message
    assert f"{teacher:.3f}" in message and "0.370" in message
