"""The command line: config resolution, early errors, fit, resume, export, DDP."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from lit_distill.cli import main, run_cli

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def quickstart_args(tmp_path, text_dir, tokenizer_dir, teacher_dir, *extra: str) -> list[str]:
    """``fit`` on configs/text/kd/quickstart-student_from_quickstart-teacher.yaml pointed at tiny test assets, a few steps."""
    return [
        "fit", "--config", str(REPO / "configs/text/kd/quickstart-student_from_quickstart-teacher.yaml"),
        f"--data.init_args.tokenizer={tokenizer_dir}",
        f"--data.init_args.train_path={text_dir / 'train.txt'}",
        f"--data.init_args.val_path={text_dir / 'val.txt'}",
        "--data.init_args.max_length=32", "--data.init_args.batch_size=4",
        f"--model.init_args.teacher.init_args.model.init_args.path={teacher_dir}",
        "--trainer.max_steps=4", "--trainer.val_check_interval=2", "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
        *extra,
    ]


def newest(root: Path, name: str = "last.ckpt") -> Path:
    """The most recently written checkpoint called ``name`` under ``root``."""
    return max(root.rglob(name), key=lambda p: p.stat().st_mtime_ns)


def student_state(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("student.")}


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(REPO)) for c in CONFIGS])
def test_every_config_resolves_with_print_config(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path: lit_distill.DistillationModule" in printed
    assert "data:" in printed and "trainer:" in printed


def test_help_comes_from_docstrings(capsys):
    with pytest.raises(SystemExit):
        run_cli(["fit", "--model.help", "lit_distill.DistillationModule"])
    printed = capsys.readouterr().out
    assert "frozen teacher" in printed  # from DistillationModule's Args docstring


def test_unknown_class_path_fails_naming_the_field(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(REPO / "configs/text/kd/quickstart-student_from_quickstart-teacher.yaml"),
              "--model.init_args.losses.kd.class_path=lit_distill.losses.NoSuchLoss"])
    assert exit_info.value.code == 2
    assert "NoSuchLoss" in capsys.readouterr().err


def test_semantic_config_error_is_one_line_before_training(capsys, tmp_path, text_dir, tokenizer_dir, teacher_dir):
    args = quickstart_args(tmp_path, text_dir, tokenizer_dir, teacher_dir, "--model.init_args.teacher=null")
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: model.init_args.losses.kd")
    assert "teacher is null" in err[-1]
    assert not list(tmp_path.rglob("*.ckpt"))


def test_missing_teacher_path_names_it(capsys, tmp_path, text_dir, tokenizer_dir):
    missing = tmp_path / "no_teacher_here"
    with pytest.raises(SystemExit) as exit_info:
        main(quickstart_args(tmp_path, text_dir, tokenizer_dir, missing))
    assert exit_info.value.code == 2
    assert str(missing) in capsys.readouterr().err


def test_fit_quickstart_writes_last_and_best_and_logs_terms(tmp_path, text_dir, tokenizer_dir, teacher_dir):
    cli = run_cli(quickstart_args(tmp_path, text_dir, tokenizer_dir, teacher_dir))
    metrics = cli.trainer.callback_metrics
    for key in ("train/kd", "train/ce", "val/kd", "val/ce", "val/loss", "val/student_ce", "val/teacher_ce"):
        assert torch.isfinite(metrics[key]), key
    checkpoints = {p.name for p in tmp_path.rglob("*.ckpt")}
    assert "last.ckpt" in checkpoints
    assert any(name.startswith("best") for name in checkpoints)
    # vocab size reached the student through the datamodule link
    assert cli.model.student.output_size == cli.datamodule.vocab_size


def test_fit_prints_no_warning_a_user_cannot_act_on(tmp_path, text_dir, tokenizer_dir, teacher_dir, monkeypatch):
    # sys.argv holding another command, as when the quickstart runs fit
    monkeypatch.setattr(sys, "argv", ["python -m lit_distill", "quickstart"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(quickstart_args(tmp_path, text_dir, tokenizer_dir, teacher_dir, "--trainer.max_steps=2"))
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "args parameter" in m or "LeafSpec" in m or "srun" in m], messages
    assert list(tmp_path.rglob("last.ckpt"))


def test_resume_two_plus_two_steps_equals_four(tmp_path, text_dir, tokenizer_dir, teacher_dir):
    common = ("--trainer.max_steps=-1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
              "--trainer.val_check_interval=null", "--trainer.check_val_every_n_epoch=1")
    straight = tmp_path / "straight"
    run_cli(quickstart_args(straight, text_dir, tokenizer_dir, teacher_dir, *common, "--trainer.max_epochs=2"))
    resumed = tmp_path / "resumed"
    run_cli(quickstart_args(resumed, text_dir, tokenizer_dir, teacher_dir, *common, "--trainer.max_epochs=1"))
    last = newest(resumed)
    run_cli(quickstart_args(resumed, text_dir, tokenizer_dir, teacher_dir, *common, "--trainer.max_epochs=2",
                            f"--ckpt_path={last}"))
    a = student_state(newest(straight))
    b = student_state(newest(resumed))
    assert torch.load(newest(resumed), weights_only=False)["global_step"] == 4
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_export_round_trip_loads_with_from_pretrained(tmp_path, text_dir, tokenizer_dir, teacher_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cli = run_cli(quickstart_args(tmp_path, text_dir, tokenizer_dir, teacher_dir))
    out = tmp_path / "exported"
    main(["export", "--ckpt", str(newest(tmp_path)), "--out", str(out)])
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("The teacher model produces soft targets.", return_tensors="pt")["input_ids"]
    student = cli.model.student.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, student(input_ids=ids).logits)


def test_stacked_configs_override_in_order(tmp_path, capsys):
    override = tmp_path / "override.yaml"
    override.write_text("trainer:\n  max_steps: 7\nmodel:\n  init_args:\n    losses:\n      kd:\n"
                        "        class_path: lit_distill.losses.ReverseKL\n        init_args: {temperature: 2.0}\n")
    with pytest.raises(SystemExit):
        run_cli(["fit", "--config", str(REPO / "configs/text/kd/quickstart-student_from_quickstart-teacher.yaml"), "--config", str(override),
                 "--print_config"])
    printed = capsys.readouterr().out
    assert "max_steps: 7" in printed and "temperature: 2.0" in printed
    assert "class_path: lit_distill.losses.ReverseKL" in printed
    assert "hidden_size: 64" in printed  # untouched sections stay
    # A later config's `losses` mapping replaces the earlier one as a whole (documented).
    assert "CrossEntropy" not in printed


def test_command_line_flag_changes_one_term_and_keeps_the_others(capsys):
    with pytest.raises(SystemExit):
        run_cli(["fit", "--config", str(REPO / "configs/text/kd/quickstart-student_from_quickstart-teacher.yaml"),
                 "--model.init_args.losses.kd.init_args.temperature=3.0", "--print_config"])
    printed = capsys.readouterr().out
    assert "temperature: 3.0" in printed and "class_path: lit_distill.losses.CrossEntropy" in printed


def test_validate_test_and_predict_from_a_checkpoint(tmp_path, text_dir, tokenizer_dir, teacher_dir):
    run_cli(quickstart_args(tmp_path, text_dir, tokenizer_dir, teacher_dir))
    last = str(newest(tmp_path))
    for stage in ("validate", "test"):
        args = quickstart_args(tmp_path, text_dir, tokenizer_dir, teacher_dir)
        args[0] = stage
        args = [a for a in args if not a.startswith(("--trainer.max_steps", "--trainer.val_check"))]
        cli = run_cli([*args, f"--ckpt_path={last}"])
        prefix = "val" if stage == "validate" else "test"
        assert torch.isfinite(cli.trainer.callback_metrics[f"{prefix}/student_ce"])
    args = [a for a in quickstart_args(tmp_path, text_dir, tokenizer_dir, teacher_dir)
            if not a.startswith(("--trainer.max_steps", "--trainer.val_check", "--trainer.log_every"))]
    args[0] = "predict"
    cli = run_cli([*args, f"--ckpt_path={last}", "--trainer.limit_predict_batches=1"])
    logits = cli.trainer.predict_loop.predictions[0]
    assert logits.ndim == 3 and logits.shape[-1] == cli.datamodule.vocab_size


def test_export_rejects_missing_checkpoint(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--ckpt", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "nope.ckpt" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_two_processes_matches_one_process_same_global_batch(tmp_path, text_dir, tokenizer_dir, teacher_dir):
    """2 CPU processes (gloo) x batch 2 == 1 process x batch 4 (shuffled), after 3 optimizer steps."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # SGD: Adam's m/sqrt(v) turns float rounding in near-zero gradients into lr-sized steps.
    common = ("--trainer.max_steps=3", "--trainer.val_check_interval=null", "--trainer.limit_val_batches=0",
              "--model.init_args.scheduler=null",
              "--model.init_args.optimizer.class_path=torch.optim.SGD",
              "--model.init_args.optimizer.init_args.lr=0.5")

    def fit(root: Path, *extra: str) -> Path:
        args = quickstart_args(root, text_dir, tokenizer_dir, teacher_dir, *common, *extra)
        args = [a for a in args if a not in ("--trainer.val_check_interval=2",)]
        subprocess.run([sys.executable, "-m", "lit_distill", *args], check=True, cwd=REPO, env=env,
                       timeout=600, capture_output=True)
        return newest(root)

    single = student_state(fit(tmp_path / "one", "--data.init_args.batch_size=4"))
    double = student_state(fit(tmp_path / "two", "--data.init_args.batch_size=2", "--trainer.devices=2",
                               "--trainer.strategy=ddp"))
    for key in single:
        torch.testing.assert_close(double[key], single[key], rtol=1e-4, atol=1e-5)


# each method's local config (the kd/ ones, cache / DDP / FSDP2 / fused variants, have tests of their own)
LOCAL_METHOD_CONFIGS = sorted(c for c in (REPO / "configs" / "text").glob("*/quickstart-*.yaml")
                              if c.parent.name != "kd")


@pytest.fixture(scope="module")
def unigram_dir(tmp_path_factory, text_dir):
    from datamodules.tokenizer_training import train_tokenizer

    return train_tokenizer([text_dir / "train.txt"], tmp_path_factory.mktemp("unigram"), 350, "unigram")


@pytest.mark.parametrize("config", LOCAL_METHOD_CONFIGS, ids=[c.parent.name for c in LOCAL_METHOD_CONFIGS])
def test_local_method_configs_train(config, tmp_path, text_dir, tokenizer_dir, teacher_dir, unigram_dir):
    """Each method's local config trains for two steps on tiny assets (ULD, ALM across tokenizers)."""
    if "CrossTokenizerDataModule" in config.read_text():
        data = [f"--data.init_args.student_tokenizer={unigram_dir}",
                f"--data.init_args.teacher_tokenizer={tokenizer_dir}"]
    else:
        data = [f"--data.init_args.tokenizer={tokenizer_dir}"]
    cli = run_cli([
        "fit", "--config", str(config), *data,
        f"--data.init_args.train_path={text_dir / 'train.txt'}", f"--data.init_args.val_path={text_dir / 'val.txt'}",
        "--data.init_args.max_length=32", "--data.init_args.batch_size=4",
        f"--model.init_args.teacher.init_args.model.init_args.path={teacher_dir}",
        "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
    ])
    metrics = cli.trainer.callback_metrics
    for name in cli.model.losses:
        assert torch.isfinite(metrics[f"val/{name}"]), name
    assert cli.trainer.global_step == 2
