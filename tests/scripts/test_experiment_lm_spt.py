"""scripts/experiment_lm_spt.py: the config it trains and the two arms (the pipeline takes minutes)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "experiment_lm_spt.py"


@pytest.fixture(scope="module")
def exp():
    spec = importlib.util.spec_from_file_location("experiment_lm_spt", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_asr_encoder_is_the_trained_teacher_and_the_authors_settings_stay(exp, tmp_path):
    written = yaml.safe_load(exp.config_with_teacher(tmp_path, tmp_path / "whisper").read_text())
    original = yaml.safe_load((REPO / exp.LMSPT).read_text())
    semantic = written["model"]["init_args"]["losses"]["semantic"]["init_args"]
    assert semantic["encoder"]["init_args"]["path"] == str(tmp_path / "whisper")
    assert "config" not in semantic["encoder"]["init_args"]
    assert semantic["weight"] == 500.0  # the authors' weight, as the config has it
    student = written["model"]["init_args"]["student"]["init_args"]
    assert student == original["model"]["init_args"]["student"]["init_args"]  # 12.5 Hz, dropout 0.5, ...


def test_the_two_arms_differ_only_in_the_semantic_weight(exp, tmp_path):
    size = {**exp.dm.sizes(False), "steps": 300, "val_every": 50}
    with_kd, without = exp.arms(tmp_path, size, tmp_path / "lm_spt.yaml")
    assert with_kd.configs == without.configs
    extra = [o for o in without.overrides if o not in with_kd.overrides]
    assert extra == [f"{exp.SEMANTIC}weight=0.0"] and set(with_kd.overrides) <= set(without.overrides)
