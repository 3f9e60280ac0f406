"""Several teachers with their own tokenizers: each named teacher's batch entries equal what a
one-teacher datamodule gives for it, ULD/ALM(teacher: name) read them, and a config trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from datamodules.cross_tokenizer import CrossTokenizerDataModule
from datamodules.tokenizer_training import train_tokenizer
from lit_distill.contracts import ModelOutput
from lit_distill.errors import ConfigError
from lit_distill.losses import ALM, ULD
from lit_distill.sources import TEACHER_PAIR_KEYS

REPO = Path(__file__).resolve().parents[2]
PAIRS = [{"prompt": f"Question {i}: what does the {w} learn?", "response": f" The {w} learns à 東京, naïve {i}."}
         for i, w in enumerate(["student", "teacher", "model", "network", "café", "résumé"] * 3)]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("two_teachers")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(p["prompt"] + p["response"] for p in PAIRS) * 3, encoding="utf-8")
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in PAIRS), encoding="utf-8")
    return {"data": str(data),
            "student": str(train_tokenizer([corpus], root / "s", vocab_size=300, algorithm="unigram")),
            "a": str(train_tokenizer([corpus], root / "a", vocab_size=400, algorithm="bpe")),
            "b": str(train_tokenizer([corpus], root / "b", vocab_size=290, algorithm="bpe"))}


def make_dm(assets, teacher, **kwargs) -> CrossTokenizerDataModule:
    dm = CrossTokenizerDataModule(student_tokenizer=assets["student"], teacher_tokenizer=teacher,
                                  train_path=assets["data"], val_path=assets["data"], max_length=64,
                                  batch_size=5, **kwargs)
    dm.setup("fit")
    return dm


def first_val_batch(dm) -> dict:
    return next(iter(dm.val_dataloader()))


def test_each_named_teacher_gets_what_its_own_datamodule_gives(assets):
    both = first_val_batch(make_dm(assets, {"a": assets["a"], "b": assets["b"]}))
    assert not TEACHER_PAIR_KEYS & set(both)  # no unnamed teacher: every pair key is per teacher
    assert set(both["teachers"]) == {"a", "b"}
    for name in ("a", "b"):
        alone = first_val_batch(make_dm(assets, assets[name]))
        for key in ("labels", "loss_mask", "student_byte_offsets", "student_space_mask"):
            assert torch.equal(both[key], alone[key]), key
        assert torch.equal(both["student_inputs"]["input_ids"], alone["student_inputs"]["input_ids"])
        for key in ("input_ids", "attention_mask"):
            assert torch.equal(both["teacher_inputs"][f"{name}_{key}"], alone["teacher_inputs"][key])
        assert set(both["teachers"][name]) == TEACHER_PAIR_KEYS
        for key in TEACHER_PAIR_KEYS:
            assert torch.equal(both["teachers"][name][key], alone[key]), (name, key)
    a, b = both["teachers"]["a"], both["teachers"]["b"]
    assert a["teacher_labels"].shape != b["teacher_labels"].shape or not torch.equal(a["teacher_labels"],
                                                                                     b["teacher_labels"])


def test_retokenized_answers_get_every_named_teachers_entries(assets):
    dm = make_dm(assets, {"a": assets["a"], "b": assets["b"]})
    batch = dm.retokenize(["Question 1: what?"], [" The café learns."], [True])
    assert set(batch["teachers"]) == {"a", "b"} and {"a_input_ids", "b_input_ids"} <= set(batch["teacher_inputs"])
    for name in ("a", "b"):
        assert batch["teachers"][name]["alm_chunk_mask"].any()


def test_uld_and_alm_read_the_named_teacher(assets):
    both = first_val_batch(make_dm(assets, {"a": assets["a"], "b": assets["b"]}))
    alone = first_val_batch(make_dm(assets, assets["b"]))
    g = torch.Generator().manual_seed(0)
    student = ModelOutput(logits=torch.randn(*both["labels"].shape, 300, generator=g))
    t_logits = torch.randn(*alone["teacher_inputs"]["input_ids"].shape, 290, generator=g)
    a_logits = torch.randn(*both["teacher_inputs"]["a_input_ids"].shape, 400, generator=g)
    members = ModelOutput(features={"a.logits": a_logits, "b.logits": t_logits})
    for named, plain in ((ULD(teacher="b", alignment="bytes"), ULD(alignment="bytes")),
                         (ALM(teacher="b", debias=True), ALM(debias=True))):
        value = named(**named.gather(student, members, both))
        torch.testing.assert_close(value, plain(**plain.gather(student, ModelOutput(logits=t_logits), alone)))
    assert ULD(teacher="b").sources["teacher_logits"] == "teacher.features.b.logits"  # teachers.b.logits


def test_named_teacher_options_are_one_line_errors(assets):
    with pytest.raises(ConfigError, match="without dots"):
        make_dm(assets, {"a.b": assets["a"]})
    with pytest.raises(ConfigError, match=r"teacher_pad_token: \['c'\] are not teachers"):
        make_dm(assets, {"a": assets["a"]}, teacher_pad_token={"c": "<pad>"})
    with pytest.raises(ConfigError, match="without dots"):
        ULD(teacher="a.b")


@pytest.mark.slow
def test_the_two_tokenizer_config_trains_two_steps(assets, tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lit_distill.cli import run_cli

    dirs = {}
    for name in ("a", "b"):
        tok = AutoTokenizer.from_pretrained(assets[name])
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
        dirs[name] = tmp_path / name
        model.save_pretrained(dirs[name])
        tok.save_pretrained(dirs[name])
    members = "model.init_args.teacher.init_args.model.init_args.members"
    cli = run_cli(["fit", "--config",
                   str(REPO / "configs/text/multi_teacher/tiny-llama-student-unigram_from_two-tokenizer-teachers_local.yaml"),
                   f"--{members}.a.init_args.path={dirs['a']}", f"--{members}.b.init_args.path={dirs['b']}",
                   f"--data.init_args.teacher_tokenizer={{a: {dirs['a']}, b: {dirs['b']}}}",
                   f"--data.init_args.student_tokenizer={assets['student']}",
                   f"--data.init_args.train_path={assets['data']}", f"--data.init_args.val_path={assets['data']}",
                   "--data.init_args.max_length=64", "--data.init_args.batch_size=4", "--trainer.max_steps=2",
                   "--trainer.val_check_interval=2", "--trainer.enable_progress_bar=false", "--trainer.logger=false",
                   "--checkpoint.save_top_k=0", "--checkpoint.save_last=false", f"--trainer.default_root_dir={tmp_path}"])
    assert cli.trainer.global_step == 2
    metrics = cli.trainer.callback_metrics
    for key in ("val/alm_a", "val/alm_b"):
        assert torch.isfinite(metrics[key]) and metrics[key] > 0, key
