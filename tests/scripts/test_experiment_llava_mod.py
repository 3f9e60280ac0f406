"""scripts/experiment_llava_mod.py: the teacher check, equal budgets for the continuations, the tower through fit."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "experiment_llava_mod.py"



def test_a_teacher_that_beats_every_student_baseline_passes(exp):
    assert exp.teacher_check({"acc_all": 0.55}, [{"acc_all": 0.37}, {"acc_all": 0.41}]) is None
    assert exp.teacher_check({"acc_all": 0.55}, [{"acc_all": 0.52}], margin=0.02) is None


def test_a_teacher_within_the_margin_of_a_baseline_fails(exp):
    message = exp.teacher_check({"acc_all": 0.53}, [{"acc_all": 0.40}, {"acc_all": 0.52}], margin=0.02)
    assert message is not None and "\n" not in message and "0.530" in message and "0.520" in message


@pytest.mark.parametrize("teacher", [0.37, 0.30])
def test_a_teacher_not_above_a_student_baseline_fails_with_one_line(exp, teacher):
    message = exp.teacher_check({"acc_all": teacher}, [{"acc_all": 0.2}, {"acc_all": 0.37}])
    assert message is not None and "\n" not in message
    assert f"{teacher:.3f}" in message and "0.370" in message


def test_every_continuation_has_the_same_budget_and_constant_schedule(exp, tmp_path):
    """The fairness the experiment rests on: same steps, LR, weight decay and no scheduler in every arm."""
    ns = SimpleNamespace(work=tmp_path, seeds=[0, 1, 2], cont_steps=100, cont_lr=1e-4, evals=4, tower=tmp_path / "v.pt",
                         clip=None)
    starts = {seed: tmp_path / f"s{seed}" for seed in ns.seeds}
    arms = [*exp.ARMS, (exp.SFT_ONLY, "ce")]
    runs = [run for name, loss in arms for run in exp.continuation(ns, name, loss, starts, tmp_path / "teacher")]
    assert len(runs) == 4 * 3 and {run.seed for run in runs} == {0, 1, 2}

    def flag(run, prefix):
        (value,) = [o.split("=", 1)[1] for o in run.overrides if o.startswith(prefix + "=")]
        return value

    for prefix in ("--trainer.max_steps", "--model.init_args.optimizer.init_args.lr", "--model.init_args.scheduler",
                   "--model.init_args.optimizer.init_args.weight_decay", "--trainer.val_check_interval"):
        assert len({flag(run, prefix) for run in runs}) == 1, prefix
    assert flag(runs[0], "--model.init_args.scheduler") == "null"
    assert {flag(run, "--model.init_args.student.init_args.init_from") for run in runs if run.seed == 1} == {str(starts[1])}
    dpo = [run for run in runs if run.name == "mimic → DPO"]
    assert all("train_pairs.json" in flag(run, "--data.init_args.train_path") for run in dpo)
    assert all(any("DigitVQAMetrics" in o for o in run.overrides if o.startswith("--trainer.callbacks+=")) for run in runs)


def test_the_vision_tower_is_a_fit_run_of_its_config_exported(exp, tmp_path):
    ns = SimpleNamespace(vision_steps=1000, vision_scenes=6000)
    run = exp.vision_run(ns)
    assert run.configs == (exp.VISION,) and run.export and run.group == "vision"
    assert "--trainer.max_steps=1000" in run.overrides and "--data.init_args.train_scenes=6000" in run.overrides
    assert "--model.init_args.scheduler.init_args.total_steps=1000" in run.overrides


def test_mimic_runs_log_the_kl_gradient_share_and_ce_runs_have_no_teacher(exp, tmp_path):
    ns = SimpleNamespace(work=tmp_path, seeds=[0], mimic_steps=150, lr=1e-3, evals=4, tower=tmp_path / "v.pt",
                         cont_steps=100, cont_lr=1e-4, clip=None)
    mimic, ce = exp.stage_n(ns, "mimic", tmp_path / "t"), exp.stage_n(ns, "ce", tmp_path / "t")
    assert exp.GRADIENT_SHARE in mimic.overrides and exp.NO_TEACHER not in mimic.overrides
    assert exp.NO_TEACHER in ce.overrides and exp.GRADIENT_SHARE not in ce.overrides
    (cont,) = exp.continuation(ns, "mimic (→ mimic)", "mimic", {0: tmp_path / "s0"}, tmp_path / "t")
    assert exp.GRADIENT_SHARE in cont.overrides
    assert not any(o.startswith("--trainer.gradient_clip_val") for o in [*mimic.overrides, *ce.overrides, *cont.overrides])


def test_clip_reaches_every_stage_n_and_continuation_run_alike(exp, tmp_path):
    """--clip is part of the shared schedule: every arm of both stages gets the same flag, the
    tower, teacher and dense runs (the common start) none."""
    ns = SimpleNamespace(work=tmp_path, seeds=[0, 1], mimic_steps=150, lr=1e-3, evals=4, tower=tmp_path / "v.pt",
                         cont_steps=100, cont_lr=1e-4, clip=1.0, dense_steps=200, teacher_steps=3000,
                         teacher_lr=1e-3, teacher_evals=6)
    starts = {seed: tmp_path / f"s{seed}" for seed in ns.seeds}
    runs = [exp.stage_n(ns, "mimic", tmp_path / "t"), exp.stage_n(ns, "ce", tmp_path / "t"),
            *[run for name, loss in [*exp.ARMS, (exp.SFT_ONLY, "ce")]
              for run in exp.continuation(ns, name, loss, starts, tmp_path / "t")]]
    assert all(run.overrides.count("--trainer.gradient_clip_val=1.0") == 1 for run in runs)
    common = [exp.dense_run(ns), exp.teacher_run(ns)]
    assert not any(o.startswith("--trainer.gradient_clip_val") for run in common for o in run.overrides)
