"""AdaptiveOffPolicyStep (DistiLLM): the source of each batch, the threshold's growth, fit and resume."""

from __future__ import annotations

import json

import pytest
import torch

from lit_distill.cli import run_cli
from lit_distill.errors import ConfigError
from lit_distill.on_policy import Answer
from lit_distill.replay import AdaptiveOffPolicyStep
from tests.lit_distill.test_cli import newest, quickstart_args, student_state

STEP = ("--model.init_args.step={class_path: lit_distill.AdaptiveOffPolicyStep, init_args: "
        "{initial_threshold: %s, capacity: %d, max_new_tokens: 5}}")


def test_the_fresh_share_follows_the_replay_ratio():
    step = AdaptiveOffPolicyStep(initial_threshold=0.8)
    assert step.fresh_share(0, 100) == pytest.approx(0.8) and step.fresh_share(75, 100) == pytest.approx(0.2)
    assert AdaptiveOffPolicyStep(0.8, replay_ratio="increasing").fresh_share(75, 100) == pytest.approx(0.6)
    assert AdaptiveOffPolicyStep(0.8, replay_ratio="constant").fresh_share(75, 100) == pytest.approx(0.4)


def test_sources_mix_data_fresh_and_replayed_answers_at_the_threshold():
    assert {AdaptiveOffPolicyStep(0.0).source(k, 100, 0, 0) for k in range(100)} == {"data"}
    step = AdaptiveOffPolicyStep(0.6, capacity=2)
    assert {step.source(k, 100, 0, 0) for k in range(100)} <= {"data", "fresh"}  # not full: no replay
    step.buffer.extend([Answer([1], [2], True)] * 2)
    sources = [step.source(k, 1000, 0, 0) for k in range(1000)]
    assert abs(sources.count("data") / 1000 - 0.4) < 0.05  # P(student answers) = τ
    # fresh when r < τ·(1 − k/total): on average τ/2 of the steps; the rest of τ replays
    assert abs(sources.count("fresh") / 1000 - 0.3) < 0.05
    assert sources == [step.source(k, 1000, 0, 0) for k in range(1000)]  # seeded


def test_the_threshold_grows_when_the_validation_loss_rises_by_the_tolerance():
    step = AdaptiveOffPolicyStep(0.0, threshold_step=0.1, tolerance=0.1)
    for loss, threshold, reference in ((2.0, 0.0, 2.0), (2.05, 0.0, 2.0), (2.15, 0.1, 2.15), (1.5, 0.1, 2.15),
                                       (2.3, 0.2, 2.3)):
        step.after_validation(None, {"val/student_ce": torch.tensor(loss)})
        assert step.threshold == pytest.approx(threshold) and step.reference_loss == pytest.approx(reference)
    with pytest.raises(ConfigError, match="monitor"):
        step.after_validation(None, {"val/loss": torch.tensor(1.0)})


def test_bad_options_are_refused_in_one_line():
    for kwargs in ({"initial_threshold": 1.5}, {"replay_ratio": "sometimes"}, {"capacity": 0}):
        with pytest.raises(ConfigError, match="AdaptiveOffPolicyStep"):
            AdaptiveOffPolicyStep(**kwargs)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    rows = [{"prompt": f"Question {i}: what does a teacher give?", "response": "Soft targets."} for i in range(12)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _args(root, pairs_file, tokenizer_dir, teacher_dir, threshold, capacity, *extra):
    args = quickstart_args(root, pairs_file.parent, tokenizer_dir, teacher_dir, STEP % (threshold, capacity), *extra)
    return [a.replace("train.txt", pairs_file.name).replace("val.txt", pairs_file.name) for a in args]


def test_fit_fills_the_buffer_and_replays_it(tmp_path, pairs_file, tokenizer_dir, teacher_dir):
    cli = run_cli(_args(tmp_path, pairs_file, tokenizer_dir, teacher_dir, 1.0, 4, "--trainer.max_steps=6"))
    step = cli.model.step
    assert len(step.buffer) == 4 and all(isinstance(a, Answer) for a in step.buffer)
    assert step.reference_loss is not None  # set by the first validation (every 2 steps here)
    assert cli.trainer.callback_metrics["train/data"] == 0.0  # τ = 1: every step trains on student answers
    state = torch.load(newest(tmp_path), map_location="cpu", weights_only=False)["training_step_state"]
    assert len(state["buffer"]) == 4 and state["threshold"] == step.threshold


def test_resume_continues_with_the_same_buffer_and_threshold(tmp_path, pairs_file, tokenizer_dir, teacher_dir):
    common = ("--trainer.max_steps=-1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
              "--trainer.val_check_interval=null", "--trainer.check_val_every_n_epoch=1")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = (pairs_file, tokenizer_dir, teacher_dir, 0.7, 3)
    run_cli(_args(straight, *args, *common, "--trainer.max_epochs=3"))
    run_cli(_args(resumed, *args, *common, "--trainer.max_epochs=1"))
    run_cli(_args(resumed, *args, *common, "--trainer.max_epochs=3", f"--ckpt_path={newest(resumed)}"))
    states = [torch.load(newest(run), map_location="cpu", weights_only=False)["training_step_state"]
              for run in (straight, resumed)]
    assert states[0]["buffer"] and states[0] == states[1]  # the same answers in the same order
    a, b = student_state(newest(straight)), student_state(newest(resumed))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)
