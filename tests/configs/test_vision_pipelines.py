"""The vision configs end to end: train and export the CNN teacher, then each student config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lit_distill.cli import main, run_cli

REPO = Path(__file__).resolve().parents[2]
VISION = REPO / "configs" / "vision"
CONFIGS = VISION / "deit_lt"
SHORT = ["--trainer.max_epochs=2", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2",
         "--trainer.enable_progress_bar=false", "--data.init_args.batch_size=16"]


@pytest.fixture(scope="module")
def exported_teacher(tmp_path_factory) -> Path:
    """The SAM-trained ResNet-18 teacher config, trained for 4 steps and exported."""
    tmp_path = tmp_path_factory.mktemp("vision_teacher")
    teacher_run = run_cli(["fit", "--config", str(CONFIGS / "resnet18-sam_teacher_digits-lt100.yaml"), *SHORT,
                           f"--trainer.default_root_dir={tmp_path / 'teacher_run'}"])
    assert teacher_run.trainer.global_step == 4
    exported = tmp_path / "teacher"
    main(["export", "--ckpt", teacher_run.trainer.checkpoint_callback.last_model_path, "--out", str(exported)])
    assert (exported / "model_state_dict.pt").exists()
    return exported / "model_state_dict.pt"


def test_teacher_then_deit_lt_student(tmp_path, exported_teacher):
    drw_early = tmp_path / "drw_early.yaml"  # a stacked config replaces the callbacks list
    drw_early.write_text(
        "trainer:\n  callbacks:\n"
        "    - {class_path: lit_distill.callbacks.DeferredReweighting, init_args: {term: dist, start_epoch: 1}}\n"
        "    - {class_path: lit_distill.callbacks.ClassGroupAccuracy}\n")
    student_run = run_cli([
        "fit", "--config", str(CONFIGS / "deit-tiny_from_resnet18_digits-lt100.yaml"), "--config", str(drw_early),
        *SHORT,
        f"--trainer.default_root_dir={tmp_path / 'student_run'}",
        f"--model.init_args.teacher.init_args.model.init_args.checkpoint={exported_teacher}",
    ])
    metrics = student_run.trainer.callback_metrics
    for key in ("val/ce", "val/dist", "val/acc_cls", "val/acc_dist_tail", "val/acc_avg_head"):
        assert torch.isfinite(metrics[key]), key
    assert student_run.model.losses["dist"].class_weight is not None  # DRW switched on at epoch 1
    teacher_weights = torch.load(exported_teacher, weights_only=True)
    for name, value in student_run.model.teacher.model.module.state_dict().items():
        torch.testing.assert_close(value, teacher_weights[name])


@pytest.mark.parametrize("config, terms", [
    ("baseline/deit-tiny_digits-lt100.yaml", ["ce"]),
    ("deit/deit-tiny_from_resnet18_digits-lt100.yaml", ["ce", "dist"]),
    ("trg/deit-tiny_from_resnet18_digits-lt100.yaml", ["ce", "kd", "trg"]),
])
def test_student_configs_train_from_the_exported_teacher(config, terms, tmp_path, exported_teacher):
    args = ["fit", "--config", str(VISION / config), *SHORT, f"--trainer.default_root_dir={tmp_path}",
            # a narrow ViT keeps the test fast; the configs' DeiT-tiny is checked by --print_config
            "--model.init_args.student.init_args.model_kwargs={img_size: 32, patch_size: 4, embed_dim: 48, "
            "depth: 2, num_heads: 3}"]
    if "trg" in terms:
        args.append("--model.init_args.losses.trg.init_args.student_dim=48")
    if not config.startswith("baseline"):
        args.append(f"--model.init_args.teacher.init_args.model.init_args.checkpoint={exported_teacher}")
    run = run_cli(args)
    assert run.trainer.global_step == 4
    metrics = run.trainer.callback_metrics
    for term in terms:
        assert torch.isfinite(metrics[f"val/{term}"]), term
    assert torch.isfinite(metrics["val/acc_cls"])
    if "trg" in terms:  # the schedule moved the InfoNCE temperature off its start value
        assert run.model.losses["trg"].temperature < 0.5
