"""The builder makes, from a config, what ``python -m lit_distill`` makes from it."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

from datamodules import TextDataModule
from lit_distill import DistillationModule
from lit_distill.build import build, config_args, fit
from lit_distill.checkpointing import DistillationCheckpoint
from lit_distill.cli import run_cli

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs/text/kd/quickstart-student_from_quickstart-teacher.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(root: Path, text_dir: Path, tokenizer_dir: Path, teacher_dir: Path) -> list[str]:
    """Flags that point configs/text/kd/quickstart-student_from_quickstart-teacher.yaml at the tiny test assets, two steps."""
    return [f"--data.init_args.tokenizer={tokenizer_dir}",
            f"--data.init_args.train_path={text_dir / 'train.txt'}",
            f"--data.init_args.val_path={text_dir / 'val.txt'}",
            "--data.init_args.max_length=32", "--data.init_args.batch_size=4",
            f"--model.init_args.teacher.init_args.model.init_args.path={teacher_dir}",
            "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={root}"]


def test_config_args_stack_files_and_dicts_in_order():
    assert config_args(["a.yaml", {"trainer": {"max_steps": 3}}], ["--seed_everything=1"]) == \
        ["--config", "a.yaml", "--config", '{"trainer": {"max_steps": 3}}', "--seed_everything=1"]
    assert config_args(Path("a.yaml")) == ["--config", "a.yaml"]


def test_build_makes_what_the_command_line_makes(tmp_path, text_dir, tokenizer_dir, teacher_dir):
    flags = tiny(tmp_path, text_dir, tokenizer_dir, teacher_dir)
    built = build(QUICKSTART, flags)
    cli = run_cli(["--config", str(QUICKSTART), *flags], run=False)
    assert isinstance(built.model, DistillationModule) and isinstance(built.datamodule, TextDataModule)
    # the data-to-student links: the student's vocabulary is the tokenizer's
    assert built.model.student.model.config.vocab_size == built.datamodule.vocab_size
    checkpoint = built.trainer.checkpoint_callback
    assert isinstance(checkpoint, DistillationCheckpoint)
    assert (checkpoint.monitor, checkpoint.save_last, checkpoint.save_top_k) == ("val/loss", True, 1)
    assert built.config.seed_everything == 0
    ours, theirs = built.model.state_dict(), cli.model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_dicts_override_files_and_flags_override_dicts(tmp_path, text_dir, tokenizer_dir, teacher_dir):
    flags = tiny(tmp_path, text_dir, tokenizer_dir, teacher_dir)
    built = build([QUICKSTART, {"trainer": {"max_steps": 7, "log_every_n_steps": 3}}], flags)
    assert built.trainer.max_steps == 2  # the flag, after the dict
    assert built.trainer.log_every_n_steps == 3  # the dict, after the file (which says 10)


def test_fit_trains_as_the_command_line_does(tmp_path, text_dir, tokenizer_dir, teacher_dir):
    ours = fit(QUICKSTART, tiny(tmp_path / "built", text_dir, tokenizer_dir, teacher_dir))
    cli = run_cli(["fit", "--config", str(QUICKSTART), *tiny(tmp_path / "cli", text_dir, tokenizer_dir, teacher_dir)])
    assert ours.trainer.global_step == 2
    assert ours.metrics() and ours.metrics() == {k: float(v) for k, v in cli.trainer.callback_metrics.items()
                                                 if k.startswith("val/")}
    assert Path(ours.trainer.checkpoint_callback.last_model_path).name == "last.ckpt"


def test_no_lightning_args_warning_inside_another_command(tmp_path, text_dir, tokenizer_dir, teacher_dir,
                                                          monkeypatch):
    monkeypatch.setattr(sys, "argv", ["python -m lit_distill", "quickstart"])  # as inside the quickstart
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build(QUICKSTART, tiny(tmp_path, text_dir, tokenizer_dir, teacher_dir))
    assert not [w for w in caught if "args parameter" in str(w.message)]


def test_the_step_progress_bar_is_the_default_unless_turned_off(tmp_path, text_dir, tokenizer_dir, teacher_dir):
    from lightning.pytorch.callbacks import TQDMProgressBar

    from lit_distill.callbacks.progress import StepProgressBar

    flags = [f for f in tiny(tmp_path, text_dir, tokenizer_dir, teacher_dir) if "enable_progress_bar" not in f]
    assert isinstance(build(QUICKSTART, flags).trainer.progress_bar_callback, StepProgressBar)
    own = build(QUICKSTART, [*flags, "--trainer.callbacks=lightning.pytorch.callbacks.TQDMProgressBar"])
    assert type(own.trainer.progress_bar_callback) is TQDMProgressBar
    off = build(QUICKSTART, [*flags, "--trainer.enable_progress_bar=false"])
    assert off.trainer.progress_bar_callback is None
