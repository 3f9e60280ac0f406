"""``python -m lit_distill generate``: prompts in, resumable JSONL shards out, readable as training data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lit_distill.cli import main
from lit_distill.generate import generate

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "configs/text/kd/quickstart-student_from_quickstart-teacher.yaml"
PROMPTS = ["What does a teacher give?", "Name a lazy animal.", "Why soften distributions?", "Who runs on GPUs?",
           "What is knowledge distillation?"]


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "response": "gold"}) + "\n" for p in PROMPTS))
    return path


def generate_args(out: Path, prompt_file: Path, tokenizer_dir, teacher_dir, *extra: str) -> list[str]:
    return ["--config", str(QUICKSTART), "--out", str(out), f"--data.init_args.tokenizer={tokenizer_dir}",
            f"--data.init_args.train_path={prompt_file}", f"--data.init_args.val_path={prompt_file}",
            f"--model.init_args.teacher.init_args.model.init_args.path={teacher_dir}",
            "--trainer.enable_progress_bar=false", "--max-new-tokens=6", "--no-progress", *extra]


def records(split_dir: Path) -> list[dict]:
    return [json.loads(line) for shard in sorted(split_dir.glob("shard-*.jsonl")) for line in shard.read_text().splitlines()]


def test_every_prompt_gets_its_samples_as_prompt_response_records(tmp_path, prompt_file, tokenizer_dir, teacher_dir):
    result = generate(generate_args(tmp_path, prompt_file, tokenizer_dir, teacher_dir, "--num-samples=2",
                                    "--prompts-per-shard=2", "--batch-size=2"))
    assert result["train"]["complete"] == result["val"]["complete"] == 1
    written = records(tmp_path / "train")
    assert len(list((tmp_path / "train").glob("shard-*.jsonl"))) == 3
    assert [(r["index"], r["sample"]) for r in written] == [(i, j) for i in range(5) for j in range(2)]
    assert [r["prompt"] for r in written] == [p for p in PROMPTS for _ in range(2)]
    assert all(isinstance(r["response"], str) for r in written)
    assert result["train"]["tokens"] > 0


def test_an_interrupted_run_resumes_to_the_same_records(tmp_path, prompt_file, tokenizer_dir, teacher_dir):
    whole = generate_args(tmp_path / "whole", prompt_file, tokenizer_dir, teacher_dir, "--prompts-per-shard=2",
                          "--splits=train", "--temperature=1.5")
    generate(whole)
    parts = generate_args(tmp_path / "parts", prompt_file, tokenizer_dir, teacher_dir, "--prompts-per-shard=2",
                          "--splits=train", "--temperature=1.5")
    assert generate([*parts, "--max-new-shards=1"])["train"]["complete"] == 0
    assert generate(parts)["train"]["complete"] == 1
    assert records(tmp_path / "parts" / "train") == records(tmp_path / "whole" / "train")
    assert len({r["response"] for r in records(tmp_path / "whole" / "train")}) > 1


def test_the_output_trains_a_student_as_it_is(tmp_path, prompt_file, tokenizer_dir, teacher_dir):
    generate(generate_args(tmp_path / "gen", prompt_file, tokenizer_dir, teacher_dir))
    main(["fit", "--config", str(QUICKSTART), f"--data.init_args.tokenizer={tokenizer_dir}",
          f"--data.init_args.train_path={tmp_path / 'gen' / 'train'}",
          f"--data.init_args.val_path={tmp_path / 'gen' / 'val'}", "--model.init_args.teacher=null",
          "--model.init_args.losses={ce: {class_path: lit_distill.losses.CrossEntropy}}",
          "--trainer.max_steps=2", "--trainer.enable_progress_bar=false",
          f"--trainer.default_root_dir={tmp_path / 'run'}"])
    assert list((tmp_path / "run").rglob("last.ckpt"))


def test_plain_documents_need_prefix_tokens(tmp_path, capsys, text_dir, tokenizer_dir, teacher_dir):
    args = ["generate", "--config", str(QUICKSTART), "--out", str(tmp_path), f"--data.init_args.tokenizer={tokenizer_dir}",
            f"--data.init_args.train_path={text_dir / 'train.txt'}", f"--data.init_args.val_path={text_dir / 'val.txt'}",
            f"--model.init_args.teacher.init_args.model.init_args.path={teacher_dir}", "--max-new-tokens=3",
            "--no-progress", "--splits=val"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert "--prefix-tokens" in capsys.readouterr().err.strip().splitlines()[-1]
    main([*args, "--prefix-tokens=4"])
    assert records(tmp_path / "val") and "val: complete" in capsys.readouterr().out


def test_a_rerun_with_other_settings_is_refused(tmp_path, capsys, prompt_file, tokenizer_dir, teacher_dir):
    generate(generate_args(tmp_path, prompt_file, tokenizer_dir, teacher_dir, "--splits=val"))
    with pytest.raises(SystemExit):
        main(["generate", *generate_args(tmp_path, prompt_file, tokenizer_dir, teacher_dir, "--splits=val",
                                         "--temperature=0.5")])
    assert "options differ" in capsys.readouterr().err


def test_the_student_of_a_checkpoint_answers(tmp_path, prompt_file, tokenizer_dir, teacher_dir):
    main(["fit", "--config", str(QUICKSTART), f"--data.init_args.tokenizer={tokenizer_dir}",
          f"--data.init_args.train_path={prompt_file}", f"--data.init_args.val_path={prompt_file}",
          f"--model.init_args.teacher.init_args.model.init_args.path={teacher_dir}",
          "--trainer.max_steps=1", "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path / 'run'}"])
    ckpt = next((tmp_path / "run").rglob("last.ckpt"))
    result = generate(generate_args(tmp_path / "gen", prompt_file, tokenizer_dir, teacher_dir, "--splits=val",
                                    f"--ckpt={ckpt}", "--temperature=0"))
    assert result["val"]["responses"] == len(PROMPTS)
