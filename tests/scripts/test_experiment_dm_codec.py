"""scripts/experiment_dm_codec.py: its pure helpers (the whole pipeline takes minutes even in --smoke).

Checked here: the middle teacher layer, the gradient-balanced weight, the teacher check, that every arm
shares one budget and differs only in its distillation term, and the trajectory tables from CSV logs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "experiment_dm_codec.py"



def test_middle_layer_is_a_transformer_layer_not_the_front_end_or_the_ctc_input(exp):
    assert exp.middle_layer(3) == 2 and exp.middle_layer(4) == 2 and exp.middle_layer(12) == 6
    assert exp.middle_layer(1) == 1  # one layer: the only transformer output


def test_balanced_weight_equalises_the_mean_gradient_ratio(exp):
    # distill at 120 pulls 3x (then 5x) as hard as mel: the weight that makes them equal is 120 / 3 and 120 / 5
    assert exp.balanced_weight([1.0], [3.0]) == pytest.approx(40.0)
    assert exp.balanced_weight([1.0, 2.0], [3.0, 10.0]) == pytest.approx(120 * (1 / 3 + 1 / 5) / 2)
    assert exp.balanced_weight([2.0], [1.0], weight=12.0) == pytest.approx(24.0)
    with pytest.raises(ValueError, match="as many"):
        exp.balanced_weight([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        exp.balanced_weight([], [])


def test_teacher_check(exp):
    good = exp.teacher_check(0.3, 0.6, 0.9, 2)
    assert good["passed"] and "hidden_states.2" in good["line"] and "0.600" in good["line"]
    assert not exp.teacher_check(0.95, 0.6, 0.9, 2)["passed"]  # the CTC head never learned to transcribe
    assert not exp.teacher_check(0.3, 0.9, 0.8, 2)["passed"]  # its units read fewer characters than the codec's


def test_callbacks_json(exp):
    size = exp.sizes(smoke=False)
    plain = json.loads(exp.callbacks(size, teacher=False).split("=", 1)[1])
    assert [c["class_path"].rsplit(".", 1)[1] for c in plain] == ["CodecMetrics"]
    assert plain[0]["init_args"]["train_every_n_steps"] == size["usage_every"]
    assert plain[0]["init_args"]["teacher_terms"] == []
    full = json.loads(exp.callbacks(size, teacher=True, share=25, warmup_to=40.0).split("=", 1)[1])
    share, warm = full[1]["init_args"], full[2]["init_args"]
    assert share == {"parameters": ["student.encoder.*"], "every_n_steps": 25, "terms": ["mel", "distill"]}
    assert warm == {"term": "distill", "attribute": "weight", "start": 0.0, "end": 40.0, "shape": "linear",
                    "steps": size["warmup"]}


def test_arms_share_one_budget_and_differ_only_in_the_distillation_term(exp, tmp_path):
    teacher = tmp_path / "teachers" / "hubert_ctc"
    teacher.mkdir(parents=True)
    (teacher / "result.json").write_text(json.dumps({"path": str(teacher), "hidden_size": 96, "layers": 3}))
    size, export = exp.sizes(smoke=False), tmp_path / "export"
    runs = exp.arms(tmp_path, size, export, weight=40.0)
    assert len(runs) == 6 and len({r.name for r in runs}) == 6
    budget = exp.common(tmp_path, size, size["steps"], size["val_every"])
    for run in runs:
        assert list(run.overrides[:len(budget)]) == budget  # same steps, validation, batch, data and seeding
        assert f"--model.init_args.student.init_args.init_from={export}" in run.overrides  # the same start
    no_kd, *distilled = runs
    assert no_kd.configs == (exp.CODEC,) and all(r.configs == (exp.FINETUNE,) for r in distilled)
    assert all("teacher.hidden_states.2" in " ".join(r.overrides) for r in distilled)
    extra = [set(r.overrides) - set(distilled[0].overrides) for r in distilled[1:]]
    assert any(f"{exp.DISTILL}weight=40.000" in e for e in extra)
    assert any(f"{exp.DISTILL}centered=true" in e for e in extra)
    assert any(f"{exp.DISTILL}mode=t_axis" in e for e in extra)
    assert any(f"{exp.DISTILL}weight=12.0" in e for e in extra)


SIZE = {"share_every": 25, "usage_every": 5}


def test_measured_drops_the_stale_copies_of_callback_values(exp):
    points = [(s, float(s // 5)) for s in range(12)]
    assert exp.measured(points, "train/codebook_usage_q0", SIZE) == [(4, 0.0), (9, 1.0)]
    assert exp.measured([(0, 0.9), (1, 0.9), (25, 0.5), (26, 0.5)], "grad_share/distill", SIZE) == [(0, 0.9), (25, 0.5)]
    assert exp.measured(points, "val/codebook_usage_q0", SIZE) == points


@dataclass
class _Run:
    name: str


@dataclass
class _Result:
    run: _Run
    directory: Path


def _log(directory: Path, rows: list[str]) -> None:
    log = directory / "lightning_logs" / "version_0"
    log.mkdir(parents=True)
    (log / "metrics.csv").write_text("\n".join(["step,epoch,val/codebook_usage_q0", *rows]) + "\n")


def test_trajectory_rows_mean_and_std_over_seeds_at_common_steps(exp, tmp_path):
    results = []
    for seed, values in enumerate([(0.5, 0.3, 0.1), (0.7, 0.5, 0.3)]):
        _log(tmp_path / f"a{seed}", [f"{s},0,{v}" for s, v in zip((24, 49, 74), values, strict=True)])
        results.append(_Result(_Run("arm"), tmp_path / f"a{seed}"))
    _log(tmp_path / "b0", ["24,0,0.9", "30,0,0.8"])  # another arm logging other steps
    results.append(_Result(_Run("other"), tmp_path / "b0"))
    header, row, other = exp.trajectory_rows(results, "val/codebook_usage_q0", SIZE)
    assert header == ["arm", "24", "30", "49", "74"]
    assert row == ["arm", "0.600 ± 0.141", "–", "0.400 ± 0.141", "0.200 ± 0.141"]
    assert other == ["other", "0.900 ± 0.000", "0.800 ± 0.000", "–", "–"]
    assert exp.trajectory_rows(results, "val/codebook_usage_q0", SIZE, columns=2)[0] == ["arm", "24", "74"]
    assert exp.trajectory_rows(results, "val/missing", SIZE) == []
