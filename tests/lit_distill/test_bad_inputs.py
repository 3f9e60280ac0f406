"""Bad configs and inputs: each fails before or at the first step, with one line naming the field.

Every case runs the real command line (``python -m lit_distill fit ...`` in-process) and checks:
exit code 2, a single ``error: ...`` line that names the offending field, and no checkpoint.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from lit_distill.cli import main

REPO = Path(__file__).resolve().parents[2]
VISION = REPO / "configs" / "vision" / "baseline" / "deit-tiny_digits-lt100.yaml"


def text_args(root: Path, assets: dict, *extra: str) -> list[str]:
    """The quickstart config on the tiny test assets (two steps)."""
    return ["fit", "--config", str(REPO / "configs/text/kd/quickstart-student_from_quickstart-teacher.yaml"),
            f"--data.init_args.tokenizer={assets['tokenizer']}",
            f"--data.init_args.train_path={assets['text'] / 'train.txt'}",
            f"--data.init_args.val_path={assets['text'] / 'val.txt'}",
            "--data.init_args.max_length=16", "--data.init_args.batch_size=2",
            f"--model.init_args.teacher.init_args.model.init_args.path={assets['teacher']}",
            "--trainer.max_steps=2", "--trainer.val_check_interval=null", "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={root}", *extra]


def vision_args(root: Path, *extra: str) -> list[str]:
    """The ViT baseline config, narrowed to a one-block ViT (two steps)."""
    return ["fit", "--config", str(VISION), "--trainer.max_steps=2", "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={root}",
            "--data.init_args.batch_size=8",
            "--model.init_args.student.init_args.model_kwargs={img_size: 32, patch_size: 8, embed_dim: 24, "
            "depth: 1, num_heads: 2}", *extra]


@pytest.fixture(scope="module")
def assets(text_dir, tokenizer_dir, teacher_dir, vocab_size, tmp_path_factory) -> dict:
    """Test assets plus deliberately broken ones."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("bad_assets")
    (root / "empty.txt").write_text("\n")
    (root / "latin1.txt").write_bytes("A first document.\n\nCaf\u00e9 au lait, cr\u00e8me br\u00fbl\u00e9e.\n".encode("latin-1"))
    (root / "no_text_files").mkdir()
    (root / "corrupt.ckpt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    (root / "truncated.ckpt").write_bytes(b"\x80\x02}q\x00(X")

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.pad_token = None
    tok.save_pretrained(root / "no_pad_tokenizer")
    config = json.loads((root / "no_pad_tokenizer" / "tokenizer_config.json").read_text())
    config.pop("pad_token", None)
    (root / "no_pad_tokenizer" / "tokenizer_config.json").write_text(json.dumps(config))

    torch.manual_seed(0)
    fields = {"vocab_size": vocab_size + 37, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}
    AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **fields)).save_pretrained(root / "big_vocab")
    nan_teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    with torch.no_grad():
        nan_teacher.lm_head.weight.fill_(float("nan"))
    nan_teacher.save_pretrained(root / "nan_teacher")

    # a datamodule whose masks leave nothing to train on (e.g. a broken preprocessing step)
    (root / "maskless.py").write_text(textwrap.dedent("""
        from datamodules import TextDataModule

        class NoValidTokens(TextDataModule):
            def collate_fn(self):
                inner = super().collate_fn()
                def collate(samples):
                    batch = inner(samples)
                    batch["loss_mask"] = batch["loss_mask"] & False
                    return batch
                return collate
    """))
    (root / "hidden.yaml").write_text(textwrap.dedent("""
        model:
          init_args:
            losses:
              hidden:
                class_path: lit_distill.losses.FeatureMSE
            student:
              init_args: {output_hidden_states: true}
            teacher:
              init_args:
                model:
                  init_args: {output_hidden_states: true}
    """))
    return {"text": text_dir, "tokenizer": tokenizer_dir, "teacher": teacher_dir, "bad": root}


def expect_one_line_error(capsys, argv: list[str], root: Path, *needles: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    line = err[-1]
    assert line.startswith("error: "), err[-5:]
    for needle in needles:
        assert needle in line, line
    assert not list(root.rglob("*.ckpt")), "a failed run must not leave a checkpoint"
    return line


TEXT_CASES = {
    # id: (extra CLI args (formatted with the assets), words the message must contain)
    "missing_model_path": (["--model.init_args.teacher.init_args.model.init_args.path={bad}/no_such_model"],
                           ["no_such_model"]),
    "unknown_class_path": (["--model.init_args.losses.kd.class_path=lit_distill.losses.NoSuchLoss"],
                           ["NoSuchLoss"]),
    "vocab_mismatch_without_cross_tokenizer_loss": (
        ["--model.init_args.teacher.init_args.model.init_args.path={bad}/big_vocab"],
        ["model.init_args.losses.kd", "vocab"]),
    "empty_dataset": (["--data.init_args.train_path={bad}/empty.txt"], ["train_path", "no documents"]),
    "nan_teacher_outputs": (["--model.init_args.teacher.init_args.model.init_args.path={bad}/nan_teacher",
                             "--trainer.limit_val_batches=0"], ["teacher", "NaN"]),
    "missing_pad_token": (["--data.init_args.tokenizer={bad}/no_pad_tokenizer"], ["pad token", "pad_token"]),
    "corrupted_checkpoint": (["--ckpt_path={bad}/corrupt.ckpt"], ["ckpt_path", "not a readable checkpoint"]),
    "truncated_checkpoint": (["--ckpt_path={bad}/truncated.ckpt"], ["ckpt_path", "truncated"]),
    "missing_checkpoint": (["--ckpt_path={bad}/nowhere.ckpt"], ["ckpt_path", "no file"]),
    "negative_temperature": (["--model.init_args.losses.kd.init_args.temperature=-2.0"],
                             ["ForwardKL.temperature", "> 0"]),
    "mask_with_nothing_to_compare": (["--data.class_path=maskless.NoValidTokens"], ["loss_mask", "all False"]),
    "mismatched_hidden_sizes_without_projector": (["--config={bad}/hidden.yaml"],
                                                  ["FeatureMSE", "student_dim: 64 and teacher_dim: 48"]),
    "teacher_missing_for_a_teacher_term": (["--model.init_args.teacher=null"],
                                          ["model.init_args.losses.kd", "teacher is null"]),
    "reserved_term_name": (["--model.init_args.losses.loss.class_path=lit_distill.losses.CrossEntropy"],
                           ["losses.loss", "reserved"]),
    "malformed_source_path": (["--model.init_args.losses.kd.init_args.sources={{student_logits: student.logit}}"],
                              ["sources.student_logits", "student.logit"]),
    "unknown_dtype": (["--model.init_args.teacher.init_args.dtype=float8"], ["dtype", "float8"]),
    "max_length_too_small": (["--data.init_args.max_length=1"], ["max_length"]),
    "missing_data_path": (["--data.init_args.train_path={bad}/no_such.txt"], ["train_path", "no_such.txt"]),
    "bad_chunk_size": (["--model.init_args.losses.kd.init_args.chunk_size=0"], ["chunk_size"]),
    "source_names_a_feature_the_model_lacks": (
        ["--model.init_args.losses.kd.init_args.sources={{teacher_logits: teacher.features.logitz}}"],
        ["losses.kd.init_args.sources.teacher_logits", "teacher.features.logitz", "gives logits"]),
    "source_reads_hidden_states_not_returned": (
        ["--model.init_args.losses.kd.init_args.sources={{student_logits: student.hidden_states.-1}}"],
        ["sources.student_logits", "output_hidden_states"]),
    "source_names_a_missing_batch_key": (
        ["--model.init_args.losses.kd.init_args.sources={{mask: batch.loss_mask_typo}}"],
        ["losses.kd.init_args.sources", "no key 'loss_mask_typo'"]),
    "negative_loss_weight": (["--model.init_args.losses.kd.init_args.weight=-0.5"], ["ForwardKL.weight", ">= 0"]),
    "zero_batch_size": (["--data.init_args.batch_size=0"], ["batch_size", ">= 1", "got 0"]),
    "negative_batch_size": (["--data.init_args.batch_size=-4"], ["batch_size", ">= 1", "got -4"]),
    "negative_num_workers": (["--data.init_args.num_workers=-1"], ["num_workers", ">= 0"]),
    "non_utf8_training_text": (["--data.init_args.train_path={bad}/latin1.txt"],
                               ["train_path", "latin1.txt", "not UTF-8", "offset 22", "line 3"]),
    "empty_train_path": (["--data.init_args.train_path="], ["train_path", "empty"]),
    "directory_without_text_files": (["--data.init_args.train_path={bad}/no_text_files"],
                                     ["no_text_files", "no .txt/.jsonl files"]),
}


@pytest.mark.parametrize("case", sorted(TEXT_CASES))
def test_bad_text_input(case, assets, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(assets["bad"]))
    extra, needles = TEXT_CASES[case]
    argv = text_args(tmp_path, assets, *[arg.format(bad=assets["bad"]) for arg in extra])
    if any(a.startswith("--config=") for a in argv):  # stacked configs go right after the base config
        stacked = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
        argv = [a for a in argv if not a.startswith("--config=")]
        argv[3:3] = [x for path in stacked for x in ("--config", path)]
    expect_one_line_error(capsys, argv, tmp_path, *needles)


VISION_CASES = {
    "image_size_the_model_cannot_take": (["--data.init_args.image_size=24"],
                                         ["data.init_args.image_size", "32x32"]),
    "unknown_timm_model": (["--model.init_args.student.init_args.name=deit_tinyy_patch16_224"],
                           ["TimmModel.name", "deit_tinyy"]),
    "bad_randaugment": (["--data.init_args.augment=strong", "--data.init_args.randaugment=random-m9"],
                        ["randaugment"]),
    "imbalance_factor_below_one": (["--data.init_args.imbalance_factor=0.5"], ["imbalance_factor"]),
    "unknown_data_source": (["--data.init_args.source=mnist"], ["source", "mnist"]),
    "zero_batch_size": (["--data.init_args.batch_size=0"], ["batch_size", ">= 1", "got 0"]),
}


@pytest.mark.parametrize("case", sorted(VISION_CASES))
def test_bad_vision_input(case, tmp_path, capsys):
    extra, needles = VISION_CASES[case]
    expect_one_line_error(capsys, vision_args(tmp_path, *extra), tmp_path, *needles)


def test_there_are_at_least_fifteen_distinct_cases():
    assert len(TEXT_CASES) + len(VISION_CASES) >= 15


def test_checkpoints_load_with_weights_only(assets, tmp_path):
    main(text_args(tmp_path, assets))
    last = next(tmp_path.rglob("last.ckpt"))
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 2 and any(k.startswith("student.") for k in checkpoint["state_dict"])


def test_remote_code_stays_off_unless_asked():
    import inspect

    from lit_distill.models import HFCausalLM

    assert inspect.signature(HFCausalLM).parameters["trust_remote_code"].default is False


MALFORMED_YAML = {
    # id: (file text, the line the error names, words of yaml's reason)
    "tab_indentation": ("model:\n  class_path: lit_distill.DistillationModule\n\tinit_args: {}\n", 3, "tab"),
    "unclosed_bracket": ("trainer:\n  callbacks: [a, b\nmodel: {}\n", 3, "']'"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_YAML))
def test_malformed_yaml_names_the_file_and_line(case, tmp_path, capsys):
    text, line, reason = MALFORMED_YAML[case]
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    message = expect_one_line_error(capsys, ["fit", "--config", str(REPO / "configs/text/kd/quickstart-student_from_quickstart-teacher.yaml"),
                                             "--config", str(bad)], tmp_path, reason)
    assert message.startswith(f"error: {bad}:{line}: "), message
