"""OnPolicyStep: prompts split from batches, student-answer batches, the seeded coin, fit and resume."""

from __future__ import annotations

import json

import pytest
import torch

from lit_distill.cli import run_cli
from lit_distill.errors import ConfigError
from lit_distill.on_policy import OnPolicyStep, response_batch, split_prompts
from tests.lit_distill.test_cli import REPO, newest, quickstart_args, student_state

STEP = "--model.init_args.step={class_path: lit_distill.on_policy.OnPolicyStep, init_args: {student_fraction: %s, max_new_tokens: 5}}"


def test_prompts_end_at_the_token_that_predicts_the_first_target():
    # row 0: prompt [5, 6, 7], response [8, 9]; row 1: prompt [4], response [3] then padding
    input_ids = torch.tensor([[5, 6, 7, 8, 9], [4, 3, 0, 0, 0]])
    labels = torch.tensor([[-100, -100, 8, 9, -100], [3, -100, -100, -100, -100]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    assert split_prompts(input_ids, labels, mask) == [[5, 6, 7], [4]]


def test_an_answer_batch_counts_the_response_and_its_eos_only():
    batch = response_batch([[5, 6, 7], [4]], [([8, 9], True), ([3, 3, 3], False)], pad_token_id=0, eos_token_id=2,
                           device=torch.device("cpu"))
    assert batch["inputs"]["input_ids"].tolist() == [[5, 6, 7, 8, 9, 2], [4, 3, 3, 3, 0, 0]]
    assert batch["inputs"]["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 8, 9, 2, -100], [3, 3, 3, -100, -100, -100]]
    assert torch.equal(batch["loss_mask"], batch["labels"] != -100)
    # the round trip: the answer batch's prompts are the prompts
    assert split_prompts(batch["inputs"]["input_ids"], batch["labels"], batch["inputs"]["attention_mask"]) == [[5, 6, 7], [4]]


def test_the_coin_is_seeded_per_step_and_lands_at_the_fraction():
    step = OnPolicyStep(student_fraction=0.3, seed=1)
    draws = [step.on_policy(k) for k in range(2000)]
    assert draws == [OnPolicyStep(student_fraction=0.3, seed=1).on_policy(k) for k in range(2000)]
    assert abs(sum(draws) / 2000 - 0.3) < 0.04
    assert not any(OnPolicyStep(student_fraction=0.0).on_policy(k) for k in range(50))
    assert all(OnPolicyStep(student_fraction=1.0).on_policy(k) for k in range(50))


def test_a_fraction_outside_0_1_is_refused():
    with pytest.raises(ConfigError, match="student_fraction"):
        OnPolicyStep(student_fraction=1.5)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    rows = [{"prompt": f"Question {i}: what does a teacher give?", "response": "Soft targets."} for i in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _args(root, pairs_file, tokenizer_dir, teacher_dir, fraction, *extra):
    args = quickstart_args(root, pairs_file.parent, tokenizer_dir, teacher_dir, STEP % fraction, *extra)
    return [a.replace("train.txt", pairs_file.name).replace("val.txt", pairs_file.name) for a in args]


def test_fit_on_policy_trains_on_the_students_answers(tmp_path, pairs_file, tokenizer_dir, teacher_dir):
    cli = run_cli(_args(tmp_path, pairs_file, tokenizer_dir, teacher_dir, 1.0))
    assert cli.trainer.callback_metrics["train/on_policy"] == 1.0
    assert torch.isfinite(cli.trainer.callback_metrics["train/kd"])


def test_resume_draws_the_same_answers(tmp_path, pairs_file, tokenizer_dir, teacher_dir):
    common = ("--trainer.max_steps=-1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
              "--trainer.val_check_interval=null", "--trainer.check_val_every_n_epoch=1")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_cli(_args(straight, pairs_file, tokenizer_dir, teacher_dir, 0.5, *common, "--trainer.max_epochs=2"))
    run_cli(_args(resumed, pairs_file, tokenizer_dir, teacher_dir, 0.5, *common, "--trainer.max_epochs=1"))
    run_cli(_args(resumed, pairs_file, tokenizer_dir, teacher_dir, 0.5, *common, "--trainer.max_epochs=2",
                  f"--ckpt_path={newest(resumed)}"))
    coins = [OnPolicyStep(0.5).on_policy(k) for k in range(4)]
    assert coins[2] and not all(coins)  # the resumed part samples, and the run mixes both kinds of step
    a, b = student_state(newest(straight)), student_state(newest(resumed))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


ULD_CONFIG = REPO / "configs/text/uld/quickstart-student-unigram_from_quickstart-teacher.yaml"
ULD_AND_ALM = ('--model.init_args.losses={ce: {class_path: lit_distill.losses.CrossEntropy}, '
               'uld: {class_path: lit_distill.losses.ULD}, alm: {class_path: lit_distill.losses.ALM, init_args: {debias: true}}}')


@pytest.fixture(scope="module")
def student_unigram_dir(tmp_path_factory, text_dir):
    from datamodules.tokenizer_training import train_tokenizer

    return train_tokenizer([text_dir / "train.txt"], tmp_path_factory.mktemp("unigram"), 350, "unigram")


def _cross_args(root, pairs_file, student_tokenizer, teacher_tokenizer, teacher_dir, fraction, *extra):
    return ["fit", "--config", str(ULD_CONFIG), f"--data.init_args.student_tokenizer={student_tokenizer}",
            f"--data.init_args.teacher_tokenizer={teacher_tokenizer}", f"--data.init_args.train_path={pairs_file}",
            f"--data.init_args.val_path={pairs_file}", "--data.init_args.max_length=48",
            "--data.init_args.batch_size=4", f"--model.init_args.teacher.init_args.model.init_args.path={teacher_dir}",
            ULD_AND_ALM, STEP % fraction, "--trainer.max_steps=2", "--trainer.limit_val_batches=1",
            "--trainer.val_check_interval=2", "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={root}", *extra]


def test_on_policy_across_tokenizers_scores_the_students_answers_with_uld_and_alm(
        tmp_path, pairs_file, student_unigram_dir, tokenizer_dir, teacher_dir, monkeypatch):
    seen = []
    original = OnPolicyStep.student_batch

    def spy(self, module, batch, batch_idx=0):
        new = original(self, module, batch, batch_idx)
        seen.append((module.trainer.datamodule, batch, new))
        return new

    monkeypatch.setattr(OnPolicyStep, "student_batch", spy)
    cli = run_cli(_cross_args(tmp_path, pairs_file, student_unigram_dir, tokenizer_dir, teacher_dir, 1.0))
    metrics = cli.trainer.callback_metrics
    assert metrics["train/on_policy"] == 1.0
    for name in ("ce", "uld", "alm"):
        assert torch.isfinite(metrics[f"train/{name}"]), name
    data, old, new = seen[0]
    assert new["prompts"] == old["prompts"]
    # the new batch is what the datamodule makes of the decoded answers: the same prompts, targets
    # on both sides that cover the same answer bytes
    for row, prompt in enumerate(new["prompts"]):
        text_bytes = {}
        for side, prefix in (("student", ""), ("teacher", "teacher_")):
            mask, offsets = new[f"{prefix}loss_mask"][row], new[f"{side}_byte_offsets"][row]
            spans = [o for o in offsets[torch.nonzero(mask).flatten() + 1].tolist() if o[1] > o[0]]
            text_bytes[side] = (spans[0][0], spans[-1][1]) if spans else None
        assert text_bytes["student"] == text_bytes["teacher"]
        assert text_bytes["student"] is None or text_bytes["student"][0] == len(prompt.encode())


def test_on_policy_across_tokenizers_resumes_with_the_same_answers(
        tmp_path, pairs_file, student_unigram_dir, tokenizer_dir, teacher_dir):
    common = ("--trainer.max_steps=-1", "--trainer.limit_train_batches=2", "--trainer.val_check_interval=null",
              "--trainer.check_val_every_n_epoch=1")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = (pairs_file, student_unigram_dir, tokenizer_dir, teacher_dir, 0.5)
    run_cli(_cross_args(straight, *args, *common, "--trainer.max_epochs=2"))
    run_cli(_cross_args(resumed, *args, *common, "--trainer.max_epochs=1"))
    run_cli(_cross_args(resumed, *args, *common, "--trainer.max_epochs=2", f"--ckpt_path={newest(resumed)}"))
    a, b = student_state(newest(straight)), student_state(newest(resumed))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_answer_text_keeps_what_the_answer_adds_after_its_prompt(student_unigram_dir):
    from transformers import AutoTokenizer

    from lit_distill.on_policy import answer_text

    tokenizer = AutoTokenizer.from_pretrained(student_unigram_dir)
    prompt = tokenizer("Question: what does", add_special_tokens=False)["input_ids"]
    answer = tokenizer(" the teacher give", add_special_tokens=False)["input_ids"]
    # SentencePiece decodes an answer alone without its first word's space; in context it keeps it
    assert tokenizer.decode(answer).startswith("the")
    assert answer_text(tokenizer, prompt, answer) == " the teacher give"


@pytest.mark.slow
def test_on_policy_steps_run_under_ddp(tmp_path, pairs_file, tokenizer_dir, teacher_dir):
    """2 CPU processes (gloo): every step samples the answers on each rank and the fit finishes with finite weights."""
    import csv
    import os
    import subprocess
    import sys

    args = _args(tmp_path, pairs_file, tokenizer_dir, teacher_dir, 1.0, "--trainer.devices=2",
                 "--trainer.strategy=ddp", "--trainer.max_steps=2", "--trainer.val_check_interval=null",
                 "--trainer.limit_val_batches=0",
                 f'--trainer.logger={{class_path: lightning.pytorch.loggers.CSVLogger, init_args: {{save_dir: {tmp_path}}}}}')
    subprocess.run([sys.executable, "-m", "lit_distill", *args], check=True, cwd=REPO, timeout=600,
                   capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    rows = list(csv.DictReader(open(max(tmp_path.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime_ns))))
    assert [float(r["train/on_policy"]) for r in rows if r.get("train/on_policy")] == [1.0, 1.0]
    state = student_state(newest(tmp_path))
    assert all(torch.isfinite(v).all() for v in state.values())
