"""CachedTeacherDataModule: alignment with the wrapped batches, checks, training without a teacher."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from datamodules import CachedTeacherDataModule, TextDataModule
from lit_distill.cache import TeacherCache
from lit_distill.cache_teacher import cache_teacher
from lit_distill.cli import run_cli
from lit_distill.errors import ConfigError, MissingPathError

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


def _data_overrides(prefix, text_dir, tokenizer_dir) -> list[str]:
    return [f"--{prefix}.tokenizer={tokenizer_dir}", f"--{prefix}.train_path={text_dir / 'train.txt'}",
            f"--{prefix}.val_path={text_dir / 'val.txt'}", f"--{prefix}.max_length=32",
            f"--{prefix}.batch_size=4"]


def _write_cache(out, top_k, text_dir, tokenizer_dir, teacher_dir) -> Path:
    done = cache_teacher(["--config", str(REPO / "configs/text/kd/quickstart-student_from_quickstart-teacher.yaml"), "--out", str(out),
                          "--top-k", str(top_k), "--samples-per-shard", "16", "--no-progress",
                          *_data_overrides("data.init_args", text_dir, tokenizer_dir),
                          f"--model.init_args.teacher.init_args.model.init_args.path={teacher_dir}",
                          f"--trainer.default_root_dir={out}/runs"])
    assert done == {"train": True, "val": True}
    return out


@pytest.fixture(scope="module")
def cache_k8(tmp_path_factory, text_dir, tokenizer_dir, teacher_dir) -> Path:
    return _write_cache(tmp_path_factory.mktemp("k8"), 8, text_dir, tokenizer_dir, teacher_dir)


def _text(text_dir, tokenizer_dir, **kw) -> TextDataModule:
    args = {"tokenizer": str(tokenizer_dir), "train_path": str(text_dir / "train.txt"),
            "val_path": str(text_dir / "val.txt"), "max_length": 32, "pack": True, "batch_size": 4, **kw}
    return TextDataModule(**args)


def test_batches_carry_their_samples_cached_rows(cache_k8, text_dir, tokenizer_dir):
    wrapped = CachedTeacherDataModule(_text(text_dir, tokenizer_dir, shuffle=True), str(cache_k8))
    wrapped.setup("fit")
    assert wrapped.vocab_size == wrapped.data.vocab_size and wrapped.pad_token_id == wrapped.data.pad_token_id
    train = TeacherCache(cache_k8 / "train")
    seen = []
    for batch in wrapped.train_dataloader():
        assert {"inputs", "labels", "loss_mask"} <= batch.keys()
        length = batch["labels"].shape[1]
        assert batch["teacher_topk_ids"].shape == (len(batch["sample_index"]), length, 8)
        assert batch["teacher_topk_ids"].dtype == torch.long
        assert batch["teacher_tail_mass"].shape == (len(batch["sample_index"]), length)
        for b, index in enumerate(batch["sample_index"].tolist()):
            sample = wrapped.data.train_dataset[index]["input_ids"]
            n = len(sample)
            assert torch.equal(batch["inputs"]["input_ids"][b, :n], sample)
            ids, logprobs, tail = train[index]
            assert torch.equal(batch["teacher_topk_ids"][b, :n], ids)
            assert torch.equal(batch["teacher_topk_logprobs"][b, :n], logprobs)
            assert torch.equal(batch["teacher_tail_mass"][b, :n], tail)
        seen += batch["sample_index"].tolist()
    assert sorted(seen) == list(range(len(train))) and seen != sorted(seen)  # shuffled, each once
    val_batch = next(iter(wrapped.val_dataloader()))
    assert val_batch["sample_index"].tolist() == list(range(len(val_batch["sample_index"])))


def test_cache_that_does_not_match_the_data_is_refused(cache_k8, text_dir, tokenizer_dir, tmp_path):
    with pytest.raises(ConfigError, match="samples"):
        CachedTeacherDataModule(_text(text_dir, tokenizer_dir, max_length=24), str(cache_k8)).setup("fit")
    changed = _text(text_dir, tokenizer_dir)
    changed.setup("fit")
    changed.train_dataset[3]["input_ids"] = changed.train_dataset[3]["input_ids"].flip(0)  # same count
    with pytest.raises(ConfigError, match="token ids or lengths"):
        CachedTeacherDataModule(changed, str(cache_k8)).setup("fit")
    with pytest.raises(MissingPathError, match="cache_dir"):
        CachedTeacherDataModule(_text(text_dir, tokenizer_dir), str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="no manifest.json"):
        CachedTeacherDataModule(_text(text_dir, tokenizer_dir), str(tmp_path)).setup("fit")


def _cache_config_args(cache_dir, tmp_path, text_dir, tokenizer_dir, *extra) -> list[str]:
    return ["--config", str(REPO / "configs/text/kd/quickstart-student_from_quickstart-teacher_cache.yaml"),
            f"--data.init_args.cache_dir={cache_dir}",
            *_data_overrides("data.init_args.data.init_args", text_dir, tokenizer_dir),
            "--trainer.enable_progress_bar=false", "--trainer.callbacks=[]", "--trainer.logger=false",
            "--checkpoint.save_top_k=0", "--checkpoint.save_last=false",
            f"--trainer.default_root_dir={tmp_path}", *extra]


@pytest.mark.slow
def test_fit_two_steps_from_the_cache_without_a_teacher(cache_k8, tmp_path, text_dir, tokenizer_dir):
    cli = run_cli(["fit", *_cache_config_args(cache_k8, tmp_path, text_dir, tokenizer_dir,
                                              "--trainer.max_steps=2", "--trainer.val_check_interval=2",
                                              "--trainer.log_every_n_steps=1")])
    assert cli.model.teacher is None  # the teacher never exists, so it never runs
    assert cli.trainer.global_step == 2
    metrics = cli.trainer.callback_metrics
    for key in ("train/kd", "val/kd", "val/ce"):
        assert math.isfinite(float(metrics[key])) and float(metrics[key]) > 0, key


@pytest.mark.slow
def test_cache_at_k_equal_v_gives_the_online_forward_kl(tmp_path, text_dir, tokenizer_dir, teacher_dir,
                                                         vocab_size):
    cache = _write_cache(tmp_path / "full", vocab_size, text_dir, tokenizer_dir, teacher_dir)
    cached = run_cli(["validate", *_cache_config_args(cache, tmp_path / "c", text_dir, tokenizer_dir)])
    online = run_cli(["validate", "--config", str(REPO / "configs/text/kd/quickstart-student_from_quickstart-teacher.yaml"),
                      *_data_overrides("data.init_args", text_dir, tokenizer_dir),
                      f"--model.init_args.teacher.init_args.model.init_args.path={teacher_dir}",
                      "--trainer.enable_progress_bar=false", "--trainer.callbacks=[]", "--trainer.logger=false",
                      f"--trainer.default_root_dir={tmp_path / 'o'}"])
    c, o = cached.trainer.callback_metrics, online.trainer.callback_metrics
    torch.testing.assert_close(c["val/ce"], o["val/ce"])  # the same initial student
    # the cached log-probs are float16: agreement to its precision
    torch.testing.assert_close(c["val/kd"], o["val/kd"], rtol=2e-3, atol=1e-3)
