"""The local encoder and multi-teacher configs train for two steps on tiny assets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lit_distill.build import fit
from lit_distill.models import HFModel

REPO = Path(__file__).resolve().parents[2]
BERT = {"model_type": "bert", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "max_position_embeddings": 128}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory, tokenizer_dir, vocab_size):
    root = tmp_path_factory.mktemp("encoder")
    rows = ["the cat sat,pos", "rain fell all day,neg", "the sun was warm,pos", "a cold wind blew,neg"] * 4
    (root / "train.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    (root / "val.csv").write_text("text,label\n" + "\n".join(rows[:4]) + "\n")
    torch.manual_seed(0)
    for name in ("teacher", "teacher_b"):
        HFModel(task="sequence-classification", config=BERT, vocab_size=vocab_size, num_classes=2).export(
            str(root / name))
    return root


def common(root: Path, tokenizer_dir: Path, tmp_path: Path) -> list[str]:
    return [f"--data.init_args.train_path={root / 'train.csv'}", f"--data.init_args.val_path={root / 'val.csv'}",
            f"--data.init_args.tokenizer={tokenizer_dir}", "--data.init_args.batch_size=4",
            "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}"]


def test_encoder_config_trains(assets, tokenizer_dir, tmp_path):
    built = fit(REPO / "configs/text/encoder/tiny-bert-student_from_tiny-bert-teacher_local.yaml",
                [*common(assets, tokenizer_dir, tmp_path),
                 f"--model.init_args.teacher.init_args.model.init_args.path={assets / 'teacher'}"])
    metrics = built.trainer.callback_metrics
    assert built.trainer.global_step == 2
    for name in ("ce", "kd", "hidden", "attention"):
        assert torch.isfinite(metrics[f"val/{name}"]), name


def test_multi_teacher_config_trains(assets, tokenizer_dir, tmp_path):
    members = "--model.init_args.teacher.init_args.model.init_args.members"
    built = fit(REPO / "configs/text/multi_teacher/tiny-bert-student_from_two-tiny-bert-teachers_local.yaml",
                [*common(assets, tokenizer_dir, tmp_path),
                 f"{members}.a.init_args.path={assets / 'teacher'}", f"{members}.b.init_args.path={assets / 'teacher_b'}",
                 f"--data.init_args.teacher_tokenizers={{a: {tokenizer_dir}, b: {tokenizer_dir}}}"])
    assert built.trainer.global_step == 2 and torch.isfinite(built.trainer.callback_metrics["val/ensemble"])


def test_live_plus_cached_classifier_config_trains(assets, tokenizer_dir, tmp_path):
    """Teacher b cached once (one row per sample, all C classes), then read beside the live teacher a."""
    from lit_distill.cache_teacher import cache_teacher

    cache = tmp_path / "teacher_b_cache"
    assert cache_teacher([
        "--config", str(REPO / "configs/text/encoder/tiny-bert-student_from_tiny-bert-teacher_local.yaml"),
        "--out", str(cache), "--no-progress", *common(assets, tokenizer_dir, tmp_path)[:3],
        f"--model.init_args.teacher.init_args.model.init_args.path={assets / 'teacher_b'}"]) == {"train": True,
                                                                                               "val": True}
    inner = "--data.init_args.data.init_args"
    members = "--model.init_args.teacher.init_args.model.init_args.members"
    args = [arg.replace("--data.init_args", inner) for arg in common(assets, tokenizer_dir, tmp_path)]
    built = fit(REPO / "configs/text/multi_teacher/tiny-bert-student_from_live+cached-bert-teachers_local.yaml",
                [*args, f"--data.init_args.caches={{b: {cache}}}", f"{members}.a.init_args.path={assets / 'teacher'}",
                 f"{inner}.teacher_tokenizers={{a: {tokenizer_dir}}}"])
    assert built.trainer.global_step == 2 and torch.isfinite(built.trainer.callback_metrics["val/ensemble"])
