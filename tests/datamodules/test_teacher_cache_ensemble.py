"""Named caches in CachedTeacherDataModule: cached members of a multi-teacher ensemble beside live ones."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from datamodules import CachedTeacherDataModule, TextDataModule
from lit_distill.cache import TeacherCache
from lit_distill.cache_teacher import cache_teacher
from lit_distill.cli import run_cli
from lit_distill.contracts import side_inputs
from lit_distill.errors import ConfigError, MissingPathError
from lit_distill.losses import EnsembleKD
from lit_distill.models import CachedTopK, HFCausalLM, MultiModel

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs/text/multi_teacher/tiny-llama-student_from_live+cached-teachers_local.yaml"
CACHED_INPUTS = ("topk_ids", "topk_logprobs", "tail_mass", "temperature")  # CachedTopK's arguments: <name>_<argument>

pytestmark = pytest.mark.usefixtures("one_thread")


def _data_overrides(prefix, text_dir, tokenizer_dir) -> list[str]:
    return [f"--{prefix}.tokenizer={tokenizer_dir}", f"--{prefix}.train_path={text_dir / 'train.txt'}",
            f"--{prefix}.val_path={text_dir / 'val.txt'}", f"--{prefix}.max_length=32",
            f"--{prefix}.batch_size=4"]


def _peaked_teacher(root: Path, vocab_size: int, seed: int, hidden: int) -> Path:
    """A tiny Llama saved with save_pretrained, its output layer scaled up so that its distributions are
    peaked (about 2 nats of entropy, ln V = 5.7) rather than the near-uniform ones of a random init,
    which any two teachers would agree on."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from tests.conftest import tiny_llama_config

    torch.manual_seed(seed)
    fields = tiny_llama_config(vocab_size, hidden=hidden, layers=1)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(fields.pop("model_type"), **fields))
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    model.save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def teacher_a(tmp_path_factory, vocab_size) -> Path:
    return _peaked_teacher(tmp_path_factory.mktemp("teacher_a"), vocab_size, seed=2, hidden=48)


@pytest.fixture(scope="module")
def teacher_b(tmp_path_factory, vocab_size) -> Path:
    return _peaked_teacher(tmp_path_factory.mktemp("teacher_b"), vocab_size, seed=1, hidden=32)


def _write_cache(out: Path, top_k: int, text_dir, tokenizer_dir, teacher: Path, temperature: float = 1.0) -> Path:
    done = cache_teacher(["--config", str(REPO / "configs/text/kd/quickstart-student_from_quickstart-teacher.yaml"),
                          "--out", str(out), "--top-k", str(top_k), "--temperature", str(temperature),
                          "--samples-per-shard", "16", "--no-progress",
                          *_data_overrides("data.init_args", text_dir, tokenizer_dir),
                          f"--model.init_args.teacher.init_args.model.init_args.path={teacher}",
                          f"--trainer.default_root_dir={out}/runs"])
    assert done == {"train": True, "val": True}
    return out


@pytest.fixture(scope="module")
def cache_b_k8(tmp_path_factory, text_dir, tokenizer_dir, teacher_b) -> Path:
    return _write_cache(tmp_path_factory.mktemp("b_k8"), 8, text_dir, tokenizer_dir, teacher_b)


@pytest.fixture(scope="module")
def full_caches(tmp_path_factory, text_dir, tokenizer_dir, teacher_a, teacher_b, vocab_size) -> dict[str, str]:
    """Teachers a and b at k = V, written at temperatures 1 and 2 (exact at any loss temperature)."""
    return {name: str(_write_cache(tmp_path_factory.mktemp(f"{name}_full"), vocab_size, text_dir, tokenizer_dir,
                                   teacher, t_cache))
            for name, teacher, t_cache in (("a", teacher_a, 1.0), ("b", teacher_b, 2.0))}


def _text(text_dir, tokenizer_dir, **kw) -> TextDataModule:
    args = {"tokenizer": str(tokenizer_dir), "train_path": str(text_dir / "train.txt"),
            "val_path": str(text_dir / "val.txt"), "max_length": 32, "pack": True, "batch_size": 4, **kw}
    return TextDataModule(**args)


def test_a_named_cache_puts_exactly_the_written_rows_into_the_teacher_inputs(cache_b_k8, text_dir, tokenizer_dir):
    # the same cache both ways: unnamed (top-level keys, as before) and named b (teacher_inputs)
    wrapped = CachedTeacherDataModule(_text(text_dir, tokenizer_dir, shuffle=True), str(cache_b_k8),
                                      caches={"b": str(cache_b_k8)})
    wrapped.setup("fit")
    train = TeacherCache(cache_b_k8 / "train")
    seen = []
    for batch in wrapped.train_dataloader():
        teacher = side_inputs(batch, "teacher")
        length = batch["labels"].shape[1]
        assert torch.equal(teacher["input_ids"], batch["inputs"]["input_ids"])  # a live member's inputs
        assert teacher["b_topk_ids"].shape == (len(batch["sample_index"]), length, 8)
        assert teacher["b_tail_mass"].shape == (len(batch["sample_index"]), length)
        assert teacher["b_temperature"] == 1.0 and isinstance(teacher["b_temperature"], float)
        for key in ("topk_ids", "topk_logprobs", "tail_mass"):
            assert torch.equal(teacher[f"b_{key}"], batch[f"teacher_{key}"]), key
        for b, index in enumerate(batch["sample_index"].tolist()):
            n = len(wrapped.data.train_dataset[index]["input_ids"])
            ids, logprobs, tail = train[index]
            assert torch.equal(teacher["b_topk_ids"][b, :n], ids)
            assert torch.equal(teacher["b_topk_logprobs"][b, :n], logprobs)
            assert torch.equal(teacher["b_tail_mass"][b, :n], tail)
            assert torch.equal(teacher["b_tail_mass"][b, n:], torch.zeros(length - n))  # padding
        seen += batch["sample_index"].tolist()
    assert sorted(seen) == list(range(len(train)))
    val = next(iter(wrapped.val_dataloader()))
    assert torch.equal(val["teacher_inputs"]["b_topk_ids"][0, :3], TeacherCache(cache_b_k8 / "val")[0][0][:3])


def test_named_caches_are_checked_like_the_unnamed_one(cache_b_k8, text_dir, tokenizer_dir, tmp_path):
    with pytest.raises(ConfigError, match="give cache_dir"):
        CachedTeacherDataModule(_text(text_dir, tokenizer_dir))
    with pytest.raises(ConfigError, match="without dots"):
        CachedTeacherDataModule(_text(text_dir, tokenizer_dir), caches={"b.x": str(cache_b_k8)})
    with pytest.raises(MissingPathError, match=r"data.init_args.caches.b: no directory"):
        CachedTeacherDataModule(_text(text_dir, tokenizer_dir), caches={"b": str(tmp_path / "none")})
    with pytest.raises(ConfigError, match=r"data.init_args.caches.b .*token ids or lengths"):
        changed = _text(text_dir, tokenizer_dir)
        changed.setup("fit")
        changed.train_dataset[3]["input_ids"] = changed.train_dataset[3]["input_ids"].flip(0)
        CachedTeacherDataModule(changed, caches={"b": str(cache_b_k8)}).setup("fit")


@pytest.mark.parametrize("cached", ["b", "ab"], ids=["live a + cached b", "cached a + cached b"])
@pytest.mark.parametrize(("combine", "weighting", "temperature"),
                         [("probabilities", "entropy", 1.0), ("logits", "gold", 2.0), ("probabilities", "uniform", 0.7)])
def test_cached_members_at_k_equal_v_equal_live_ones(full_caches, text_dir, tokenizer_dir, teacher_a, teacher_b,
                                                      vocab_size, cached, combine, weighting, temperature):
    wrapped = CachedTeacherDataModule(_text(text_dir, tokenizer_dir),
                                      caches={name: full_caches[name] for name in cached})
    wrapped.setup("fit")
    batch = next(iter(wrapped.val_dataloader()))
    live = {"a": HFCausalLM(path=str(teacher_a)).eval(), "b": HFCausalLM(path=str(teacher_b)).eval()}
    tokens = ["input_ids", "attention_mask"]
    both_live = MultiModel(live, inputs={"a": tokens, "b": tokens})
    mixed = MultiModel({name: CachedTopK(vocab_size=vocab_size) if name in cached else live[name] for name in "ab"},
                       inputs={name: {key: f"{name}_{key}" for key in CACHED_INPUTS} if name in cached else tokens
                               for name in "ab"})
    term = EnsembleKD(teachers=["a", "b"], combine=combine, weighting=weighting, temperature=temperature)
    student = torch.randn(*batch["labels"].shape, vocab_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = term(student, mixed(**side_inputs(batch, "teacher")).features, batch["loss_mask"], batch["labels"])
        want = term(student, both_live(**side_inputs(batch, "teacher")).features, batch["loss_mask"], batch["labels"])
    # the cached log-probs are float16 (written at T_c = 1 and 2, read at T): agreement to its precision
    # (measured: at most 4.5e-5 relative)
    torch.testing.assert_close(got, want, rtol=5e-4, atol=1e-5)


def _config_args(cache_dir, tmp_path, text_dir, tokenizer_dir, teacher_dir, vocab_size, *extra) -> list[str]:
    members = "--model.init_args.teacher.init_args.model.init_args.members"
    return ["fit", "--config", str(CONFIG), f"--data.init_args.caches={{b: {cache_dir}}}",
            *_data_overrides("data.init_args.data.init_args", text_dir, tokenizer_dir),
            f"{members}.a.init_args.path={teacher_dir}", f"{members}.b.init_args.vocab_size={vocab_size}",
            "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false", "--trainer.logger=false", "--checkpoint.save_top_k=0",
            "--checkpoint.save_last=false", f"--trainer.default_root_dir={tmp_path}", *extra]


def test_the_live_plus_cached_config_trains_two_steps(cache_b_k8, tmp_path, text_dir, tokenizer_dir, teacher_dir,
                                                       vocab_size):
    cli = run_cli(_config_args(cache_b_k8, tmp_path, text_dir, tokenizer_dir, teacher_dir, vocab_size))
    assert cli.trainer.global_step == 2
    assert isinstance(cli.model.teacher.model.module["b"], CachedTopK)
    for key in ("val/ensemble", "val/ce", "train/ensemble"):
        value = float(cli.trainer.callback_metrics[key])
        assert math.isfinite(value) and value > 0, key


def test_a_truncated_cache_at_another_temperature_fails_in_one_line(cache_b_k8, tmp_path, text_dir, tokenizer_dir,
                                                                     teacher_dir, vocab_size, capsys):
    from lit_distill.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(_config_args(cache_b_k8, tmp_path, text_dir, tokenizer_dir, teacher_dir, vocab_size,
                          "--model.init_args.losses.ensemble.init_args.temperature=2.0"))
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "teacher 'b' is a top-8 cache" in line and "temperature 1.0" in line


def test_live_plus_cached_under_a_bfloat16_teacher(full_caches, text_dir, tokenizer_dir, teacher_a, vocab_size):
    """Teacher(dtype: bfloat16) casts the cached rows with the other inputs: the loss stays close to float32."""
    from lit_distill import Teacher

    wrapped = CachedTeacherDataModule(_text(text_dir, tokenizer_dir), caches={"b": full_caches["b"]})
    wrapped.setup("fit")
    batch = next(iter(wrapped.val_dataloader()))

    def teacher(dtype):
        return Teacher(MultiModel({"a": HFCausalLM(path=str(teacher_a)), "b": CachedTopK(vocab_size=vocab_size)},
                                  inputs={"a": ["input_ids", "attention_mask"],
                                          "b": {key: f"b_{key}" for key in CACHED_INPUTS}}), dtype=dtype)

    term = EnsembleKD(teachers=["a", "b"], weighting="entropy", temperature=2.0)
    student = torch.randn(*batch["labels"].shape, vocab_size, generator=torch.Generator().manual_seed(0))
    low = teacher("bfloat16")(**side_inputs(batch, "teacher")).features
    assert low["a.logits"].dtype == torch.bfloat16 and low["b.logits"].dtype == torch.float32
    full = teacher(None)(**side_inputs(batch, "teacher")).features
    got, want = (term(student, f, batch["loss_mask"], batch["labels"]) for f in (low, full))
    torch.testing.assert_close(got, want, rtol=2e-3, atol=0.0)


def test_the_config_with_both_teachers_cached_trains_two_steps(full_caches, cache_b_k8, tmp_path, text_dir,
                                                                tokenizer_dir, teacher_dir, vocab_size):
    """No live teacher at all: a from its k = V cache, b from its top-8 cache (an overlay on the same config)."""
    rows = ", ".join(f"{key}: a_{key}" for key in CACHED_INPUTS)
    overlay = tmp_path / "both_cached.yaml"
    overlay.write_text(f"""
model:
  init_args:
    teacher:
      init_args:
        model:
          init_args:
            members:
              a: {{class_path: lit_distill.models.CachedTopK, init_args: {{vocab_size: {vocab_size}}}}}
              b: {{class_path: lit_distill.models.CachedTopK, init_args: {{vocab_size: {vocab_size}}}}}
            inputs:
              a: {{{rows}}}
              b: {{{rows.replace("a_", "b_")}}}
data:
  init_args:
    caches: {{a: {full_caches["a"]}, b: {cache_b_k8}}}
""")
    args = _config_args(cache_b_k8, tmp_path, text_dir, tokenizer_dir, teacher_dir, vocab_size)
    args = [a for a in args if ".members.a." not in a and not a.startswith("--data.init_args.caches=")]
    cli = run_cli([*args[:3], "--config", str(overlay), *args[3:]])
    assert all(isinstance(member, CachedTopK) for member in cli.model.teacher.model.module.values())
    assert cli.trainer.global_step == 2
    for key in ("val/ensemble", "train/ensemble"):
        value = float(cli.trainer.callback_metrics[key])
        assert math.isfinite(value) and value > 0, key
