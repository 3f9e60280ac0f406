"""Cross-tokenizer distillation from a teacher cache written in the teacher's own tokens: the
cached rows line up with the teacher positions of cross-tokenizer batches, and ALM / ULD read
through a CachedTopK member give the online teacher's losses when the cache holds the whole vocab."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from datamodules.cross_tokenizer import CrossTokenizerDataModule
from datamodules.teacher_cache import CachedTeacherDataModule
from datamodules.tokenizer_training import train_tokenizer
from lit_distill.cache_teacher import cache_teacher
from lit_distill.contracts import ModelOutput
from lit_distill.losses import ALM, ULD
from lit_distill.models import CachedTopK, HFCausalLM, MultiModel

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[2]
ONLINE = REPO / "configs/text/alm/quickstart-student-unigram_from_quickstart-teacher.yaml"
CACHED = REPO / "configs/text/alm/unigram-student_from_cached-quickstart-teacher.yaml"
PAIRS = [{"prompt": f"Question {i}: what does the {w} learn?", "response": f" The {w} learns à 東京, naïve {i}."}
         for i, w in enumerate(["student", "teacher", "model", "network", "café", "résumé"] * 2)]
ROWS = {"topk_ids": "cached_topk_ids", "topk_logprobs": "cached_topk_logprobs", "tail_mass": "cached_tail_mass",
        "temperature": "cached_temperature"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("xtok_cache")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(p["prompt"] + p["response"] for p in PAIRS) * 3, encoding="utf-8")
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in PAIRS), encoding="utf-8")
    student = train_tokenizer([corpus], root / "student", vocab_size=300, algorithm="unigram")
    teacher_tok = AutoTokenizer.from_pretrained(train_tokenizer([corpus], root / "t", vocab_size=280, algorithm="bpe"))
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(LlamaConfig(vocab_size=len(teacher_tok), hidden_size=16, intermediate_size=32,
                                           num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    teacher.save_pretrained(root / "teacher")
    teacher_tok.save_pretrained(root / "teacher")
    return {"root": root, "data": str(data), "student": str(student), "teacher": str(root / "teacher"),
            "vocab": len(teacher_tok)}


def data_args(assets, prefix: str) -> list[str]:
    return [f"--{prefix}.student_tokenizer={assets['student']}", f"--{prefix}.teacher_tokenizer={assets['teacher']}",
            f"--{prefix}.train_path={assets['data']}", f"--{prefix}.val_path={assets['data']}",
            f"--{prefix}.max_length=64", f"--{prefix}.batch_size=4"]


def write_cache(assets, top_k: int) -> Path:
    out = assets["root"] / f"cache_k{top_k}"
    if not out.exists():
        done = cache_teacher(["--config", str(ONLINE), "--out", str(out), "--top-k", str(top_k), "--no-progress",
                              *data_args(assets, "data.init_args"),
                              f"--model.init_args.teacher.init_args.model.init_args.path={assets['teacher']}",
                              f"--trainer.default_root_dir={out}/runs"])
        assert done == {"train": True, "val": True}
    return out


def val_batch(assets, cache: Path) -> dict:
    data = CrossTokenizerDataModule(student_tokenizer=assets["student"], teacher_tokenizer=assets["teacher"],
                                    train_path=assets["data"], val_path=assets["data"], max_length=64, batch_size=4)
    wrapped = CachedTeacherDataModule(data, caches={"cached": str(cache)})
    wrapped.setup("fit")
    return next(iter(wrapped.val_dataloader()))


def test_alm_and_uld_from_a_full_vocab_cache_equal_the_online_teacher(assets):
    batch = val_batch(assets, write_cache(assets, assets["vocab"]))
    inputs = batch["teacher_inputs"]
    assert inputs["cached_topk_ids"].shape[:2] == inputs["input_ids"].shape  # teacher positions, teacher length
    with torch.no_grad():
        online = HFCausalLM(path=assets["teacher"]).eval()(input_ids=inputs["input_ids"],
                                                           attention_mask=inputs["attention_mask"]).logits
    cached = MultiModel({"cached": CachedTopK(assets["vocab"])}, {"cached": ROWS})(**inputs)
    mask = batch["teacher_loss_mask"]
    torch.testing.assert_close(torch.log_softmax(cached.features["cached.logits"], -1)[mask],
                               torch.log_softmax(online, -1)[mask], rtol=2**-10, atol=1e-4)  # float16: 1 ulp
    g = torch.Generator().manual_seed(0)
    student = ModelOutput(logits=torch.randn(*batch["labels"].shape, 300, generator=g))
    read_cache = {"teacher_logits": "teachers.cached.logits"}
    for online_term, cached_term in ((ALM(), ALM(sources=read_cache)),
                                     (ULD(alignment="bytes"), ULD(alignment="bytes", sources=read_cache))):
        want = online_term(**online_term.gather(student, ModelOutput(logits=online), batch))
        got = cached_term(**cached_term.gather(student, cached, batch))
        torch.testing.assert_close(got, want, rtol=2e-3, atol=1e-4)


def test_a_truncated_cache_gives_finite_normalised_teacher_distributions(assets):
    """At k < V the tail mass is spread evenly over the other ids: a label outside the top k gets
    that share (an approximation, exact only at k = V); the distribution still sums to one."""
    batch = val_batch(assets, write_cache(assets, 16))
    assert batch["teacher_inputs"]["cached_topk_ids"].shape[-1] == 16
    cached = MultiModel({"cached": CachedTopK(assets["vocab"])}, {"cached": ROWS})(**batch["teacher_inputs"])
    logits = cached.features["cached.logits"]
    assert torch.isfinite(logits).all()
    probs = torch.softmax(logits, -1)[batch["teacher_loss_mask"]]
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[0]), rtol=0, atol=5e-3)


@pytest.mark.slow
def test_the_cached_alm_config_trains_two_steps_without_a_teacher_model(assets, tmp_path):
    from lit_distill.cli import run_cli

    cache = write_cache(assets, assets["vocab"])
    cli = run_cli(["fit", "--config", str(CACHED), f"--data.init_args.caches={{cached: {cache}}}",
                   *data_args(assets, "data.init_args.data.init_args"),
                   f"--model.init_args.teacher.init_args.model.init_args.members.cached.init_args.vocab_size={assets['vocab']}",
                   "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.enable_progress_bar=false",
                   "--trainer.logger=false", "--checkpoint.save_top_k=0", "--checkpoint.save_last=false",
                   f"--trainer.default_root_dir={tmp_path}"])
    assert cli.trainer.global_step == 2
    assert torch.isfinite(cli.trainer.callback_metrics["val/alm"]) and cli.trainer.callback_metrics["val/alm"] > 0
