"""LAD recipe: the dual-path wrapper, both stages through the CLI, and the one-command pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lit_distill.cli import run_cli
from lit_distill.errors import ConfigError
from lit_distill.models import TimmSegmentation
from recipes.lad import DualPathModel, main

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "segmentation" / "lad"
TEACHER_CONFIG = CONFIGS / "test-resnet-lad_teacher_digit-scenes.yaml"
STUDENT_CONFIG = CONFIGS / "test-resnet_from_test-resnet-lad_digit-scenes.yaml"
TINY = ["--data.init_args.train_scenes=8", "--data.init_args.val_scenes=4", "--data.init_args.batch_size=4",
        "--data.init_args.image_size=32", "--data.init_args.digit_size=[8, 14]",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def test_dual_path_runs_both_inputs_through_one_model():
    torch.manual_seed(0)
    inner = TimmSegmentation("test_resnet", num_classes=5, head_channels=8, extra_input_channels=1).eval()
    dual = DualPathModel(inner, num_classes=5).eval()
    x1, x2 = torch.randn(2, 4, 32, 32), torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        out = dual(pixel_values=x1, pixel_values_2=x2)
        torch.testing.assert_close(out.logits, inner(pixel_values=x1).logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.features["path2_logits"], inner(pixel_values=x2).logits,
                                   rtol=1e-5, atol=1e-5)
        single = dual(pixel_values=x1)
    assert "path2_logits" not in single.features
    with pytest.raises(ConfigError, match="num_classes"):
        DualPathModel(inner, num_classes=11)


def test_both_stages_with_fast_dev_run(tmp_path):
    stage1 = run_cli(["fit", "--config", str(TEACHER_CONFIG), *TINY, "--trainer.fast_dev_run=true",
                      f"--trainer.default_root_dir={tmp_path / 'teacher'}"])
    assert stage1.trainer.global_step == 1
    metrics = stage1.trainer.callback_metrics
    for key in ("val/ce1", "val/ce2", "val/cwd12", "val/cwd21", "val/miou", "val/miou_label_drop"):
        assert torch.isfinite(metrics[key]), key
    assert metrics["val/cwd12"] > 0  # two independent noisings give different outputs

    teacher = TimmSegmentation("test_resnet", num_classes=11, out_indices=[1, 2, 4], head_channels=32,
                               extra_input_channels=1)
    teacher.export(str(tmp_path / "lad_teacher"))
    stage2 = run_cli(["fit", "--config", str(STUDENT_CONFIG), *TINY, "--trainer.fast_dev_run=true",
                      f"--trainer.default_root_dir={tmp_path / 'student'}",
                      "--model.init_args.teacher.init_args.model.init_args.checkpoint="
                      f"{tmp_path / 'lad_teacher' / 'model_state_dict.pt'}"])
    assert stage2.trainer.global_step == 1
    metrics = stage2.trainer.callback_metrics
    for key in ("val/ce", "val/cwd", "val/miou", "val/teacher_miou"):
        assert torch.isfinite(metrics[key]), key
    loaded = stage2.model.teacher.model.module.state_dict()
    for name, value in teacher.module.state_dict().items():
        torch.testing.assert_close(loaded[name], value)


@pytest.mark.slow
def test_one_command_runs_both_stages_and_exports_the_student(tmp_path, capsys):
    main(["--teacher-config", str(TEACHER_CONFIG), "--student-config", str(STUDENT_CONFIG),
          "--workdir", str(tmp_path), *TINY, "--trainer.max_steps=-1", "--trainer.max_epochs=1"])
    assert "student exported" in capsys.readouterr().out
    teacher_weights = torch.load(tmp_path / "teacher" / "model_state_dict.pt", weights_only=True)
    stem = next(v for k, v in teacher_weights.items() if v.ndim == 4)
    assert stem.shape[1] == 4  # the exported LAD teacher reads RGB + label channel
    student = TimmSegmentation("test_resnet", num_classes=11, out_indices=[1, 2, 4], head_channels=32,
                               checkpoint=str(tmp_path / "student" / "model_state_dict.pt")).eval()
    with torch.no_grad():
        assert student(pixel_values=torch.randn(1, 3, 32, 32)).logits.shape == (1, 11, 32, 32)
    pngs = list((tmp_path / "student_run").rglob("segmentation/epoch_000.png"))
    assert pngs, "the validation figure was not written"


def test_help_lists_the_recipe_options_and_where_the_rest_go(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for option in ("--teacher-config", "--student-config", "--workdir"):
        assert option in out, option
    assert "passed to both `python -m lit_distill fit` runs" in out and "python -m lit_distill fit --help" in out
