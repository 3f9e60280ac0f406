"""Sequence-classifier caches (one row per sample) in CachedTeacherDataModule: cached classifier teachers
alone and beside live ones, against the live teachers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from datamodules import CachedTeacherDataModule, TextClassificationDataModule
from lit_distill.cache import TeacherCache, tokenizer_fingerprint
from lit_distill.cache_teacher import cache_teacher
from lit_distill.cli import main, run_cli
from lit_distill.contracts import side_inputs
from lit_distill.errors import ConfigError
from lit_distill.losses import EnsembleKD, ForwardKL
from lit_distill.models import CachedTopK, HFModel, MultiModel
from tests.lit_distill.test_cache import (
    CLASSES,
    classifier_cache_args,
    classifier_data,
    peaked_classifier,
)

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs/text/multi_teacher/tiny-bert-student_from_live+cached-bert-teachers_local.yaml"
CACHED_INPUTS = ("topk_ids", "topk_logprobs", "tail_mass", "temperature", "vocab_size")
TOKENS = {"input_ids": "input_ids", "attention_mask": "attention_mask"}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return classifier_data(tmp_path_factory.mktemp("class_data"))


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, vocab_size) -> dict[str, Path]:
    """Two peaked 3-class BERT classifiers that disagree (their argmax differs on most samples)."""
    return {name: peaked_classifier(tmp_path_factory.mktemp(f"teacher_{name}"), vocab_size, seed)
            for name, seed in (("a", 4), ("b", 3))}


def _write_cache(out: Path, data_dir, tokenizer_dir, teacher: Path, *extra: str) -> Path:
    assert cache_teacher(classifier_cache_args(out, data_dir, tokenizer_dir, teacher, *extra)) == {"train": True,
                                                                                                  "val": True}
    return out


@pytest.fixture(scope="module")
def full_caches(tmp_path_factory, data_dir, tokenizer_dir, teachers) -> dict[str, Path]:
    """Both teachers with every class (k = C = 3), a at T_c = 1 and b at T_c = 2: exact at any loss temperature."""
    return {name: _write_cache(tmp_path_factory.mktemp(f"{name}_full"), data_dir, tokenizer_dir, teachers[name],
                               "--temperature", str(t_cache))
            for name, t_cache in (("a", 1.0), ("b", 2.0))}


@pytest.fixture(scope="module")
def cache_b_k2(tmp_path_factory, data_dir, tokenizer_dir, teachers) -> Path:
    return _write_cache(tmp_path_factory.mktemp("b_k2"), data_dir, tokenizer_dir, teachers["b"], "--top-k", "2")


def _data(data_dir, tokenizer_dir, **kw) -> TextClassificationDataModule:
    args = {"train_path": str(data_dir / "train.csv"), "val_path": str(data_dir / "val.csv"),
            "tokenizer": str(tokenizer_dir), "max_length": 32, "batch_size": 4, **kw}
    return TextClassificationDataModule(**args)


def _rows(name: str) -> dict[str, str]:
    return {key: f"{name}_{key}" for key in CACHED_INPUTS}


def _val_batch(wrapped: CachedTeacherDataModule) -> dict:
    wrapped.setup("fit")
    return next(iter(wrapped.val_dataloader()))


def test_a_classifier_cache_serves_one_row_per_sample(cache_b_k2, data_dir, tokenizer_dir):
    wrapped = CachedTeacherDataModule(_data(data_dir, tokenizer_dir, shuffle=True), caches={"b": str(cache_b_k2)})
    wrapped.setup("fit")
    assert wrapped.num_classes == 3  # linked into the student by the CLI
    train = TeacherCache(cache_b_k2 / "train")
    seen = []
    for batch in wrapped.train_dataloader():
        teacher, n = side_inputs(batch, "teacher"), len(batch["sample_index"])
        assert torch.equal(teacher["input_ids"], batch["inputs"]["input_ids"])  # a live member's tokens
        assert teacher["b_topk_ids"].shape == teacher["b_topk_logprobs"].shape == (n, 2)
        assert teacher["b_tail_mass"].shape == (n,)
        assert teacher["b_temperature"] == 1.0 and teacher["b_vocab_size"] == 3
        for row, index in enumerate(batch["sample_index"].tolist()):
            ids, logprobs, tail = train[index]
            assert torch.equal(teacher["b_topk_ids"][row], ids[0])
            assert torch.equal(teacher["b_topk_logprobs"][row], logprobs[0])
            assert torch.equal(teacher["b_tail_mass"][row], tail[0])
        assert (teacher["b_tail_mass"] > 0).all()  # k = 2 < C: a tail
        seen += batch["sample_index"].tolist()
    assert sorted(seen) == list(range(len(train)))


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.7])
def test_a_cache_only_classifier_teacher_gives_the_live_teachers_forward_kl(full_caches, data_dir, tokenizer_dir,
                                                                           teachers, temperature):
    """A teacher with no live member: b read from its cache (k = C, written at T_c = 2) vs b run."""
    batch = _val_batch(CachedTeacherDataModule(_data(data_dir, tokenizer_dir), caches={"b": str(full_caches["b"])}))
    cached = MultiModel({"b": CachedTopK(vocab_size=3)}, inputs={"b": _rows("b")})
    live = HFModel(task="sequence-classification", path=str(teachers["b"])).eval()
    term = ForwardKL(temperature=temperature, sources={"teacher_logits": "teachers.b.logits"})
    student = torch.randn(len(batch["labels"]), 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = cached(**side_inputs(batch, "teacher")).features["b.logits"]
        want = live(**batch["inputs"]).logits
    assert logits.shape == want.shape == (len(batch["labels"]), 3)
    got, want = term(student, logits), term(student, want)
    # float16 log-probs in the cache (measured over every batch and these temperatures: at most 1.8e-4 relative)
    torch.testing.assert_close(got, want, rtol=5e-4, atol=1e-6)
    assert want > 0.05  # the teacher is far from the random student: the agreement is not trivial


@pytest.mark.parametrize("cached", ["b", "ab"], ids=["live a + cached b", "cached a + cached b"])
@pytest.mark.parametrize(("combine", "weighting", "temperature"),
                         [("probabilities", "entropy", 1.0), ("logits", "gold", 2.0), ("probabilities", "uniform", 0.7)])
def test_cached_classifiers_at_k_equal_c_equal_live_ones(full_caches, data_dir, tokenizer_dir, teachers, cached,
                                                         combine, weighting, temperature):
    wrapped = CachedTeacherDataModule(_data(data_dir, tokenizer_dir),
                                      caches={name: str(full_caches[name]) for name in cached})
    batch = _val_batch(wrapped)
    live = {name: HFModel(task="sequence-classification", path=str(teachers[name])).eval() for name in "ab"}
    both_live = MultiModel(live, inputs={"a": TOKENS, "b": TOKENS})
    mixed = MultiModel({name: CachedTopK(vocab_size=3) if name in cached else live[name] for name in "ab"},
                       inputs={name: _rows(name) if name in cached else TOKENS for name in "ab"})
    term = EnsembleKD(teachers=["a", "b"], combine=combine, weighting=weighting, temperature=temperature)
    student = torch.randn(len(batch["labels"]), 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = term(student, mixed(**side_inputs(batch, "teacher")).features, None, batch["labels"])
        want = term(student, both_live(**side_inputs(batch, "teacher")).features, None, batch["labels"])
    # float16 log-probs in the cache (measured over every train batch: at most 1.5e-4 relative)
    torch.testing.assert_close(got, want, rtol=5e-4, atol=1e-6)


def test_classifier_caches_are_checked_against_the_data_in_one_line(cache_b_k2, data_dir, tokenizer_dir, text_dir,
                                                                    tmp_path):
    field = r"data.init_args.caches.b \('[^']*'\)"
    with pytest.raises(ConfigError, match=rf"^{field}: a classifier cache of 3 classes, but the data has 4 [^\n]*$"):
        CachedTeacherDataModule(_data(data_dir, tokenizer_dir, labels=[*CLASSES, "other"]),
                                caches={"b": str(cache_b_k2)}).setup("fit")
    changed = tmp_path / "changed"
    changed.mkdir()
    (changed / "train.csv").write_text((data_dir / "train.csv").read_text().replace("The", "A", 1))
    (changed / "val.csv").write_text((data_dir / "val.csv").read_text())
    with pytest.raises(ConfigError, match=rf"^{field}: the train samples \(texts, labels, order\) differ [^\n]*$"):
        CachedTeacherDataModule(_data(changed, tokenizer_dir), caches={"b": str(cache_b_k2)}).setup("fit")
    # another tokenizer for the student (and the live teachers) is fine: the rows line up with samples, not tokens
    from datamodules.tokenizer_training import train_tokenizer

    other = CachedTeacherDataModule(_data(data_dir, train_tokenizer([text_dir / "train.txt"], tmp_path / "tok",
                                                                    vocab_size=280)), caches={"b": str(cache_b_k2)})
    assert tokenizer_fingerprint(other.data.tokenizer) != TeacherCache(cache_b_k2 / "val").manifest[
        "tokenizer_fingerprint"]
    assert _val_batch(other)["teacher_inputs"]["b_topk_ids"].shape == (4, 2)


def _config_args(cache: Path, tmp_path, data_dir, tokenizer_dir, teacher_a: Path, *extra: str) -> list[str]:
    inner = "--data.init_args.data.init_args"
    return ["fit", "--config", str(CONFIG), f"--data.init_args.caches={{b: {cache}}}",
            f"{inner}.train_path={data_dir / 'train.csv'}", f"{inner}.val_path={data_dir / 'val.csv'}",
            f"{inner}.tokenizer={tokenizer_dir}", f"{inner}.teacher_tokenizers={{a: {tokenizer_dir}}}",
            f"{inner}.batch_size=4", f"{inner}.max_length=32",
            f"--model.init_args.teacher.init_args.model.init_args.members.a.init_args.path={teacher_a}",
            "--model.init_args.teacher.init_args.model.init_args.members.b.init_args.vocab_size=3",
            "--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false", "--trainer.logger=false", "--checkpoint.save_top_k=0",
            "--checkpoint.save_last=false", f"--trainer.default_root_dir={tmp_path}", *extra]


def test_the_live_plus_cached_classifier_config_trains_two_steps_on_a_truncated_cache(cache_b_k2, tmp_path, data_dir,
                                                                                      tokenizer_dir, teachers):
    """k = 2 < C = 3 at the cache's temperature; the config's own k = C run is in tests/configs."""
    cli = run_cli(_config_args(cache_b_k2, tmp_path, data_dir, tokenizer_dir, teachers["a"],
                               "--model.init_args.losses.ensemble.init_args.temperature=1.0"))
    assert cli.trainer.global_step == 2 and isinstance(cli.model.teacher.model.module["b"], CachedTopK)
    assert cli.model.student.output_size == 3  # the data's classes, linked through the wrapper
    for key in ("val/ensemble", "val/ce", "train/ensemble"):
        value = float(cli.trainer.callback_metrics[key])
        assert math.isfinite(value) and value > 0, key


@pytest.mark.parametrize(("extra", "expected"), [
    (["--model.init_args.losses.ensemble.init_args.temperature=2.0"],
     ["teacher 'b' is a top-2 cache", "written at temperature 1.0"]),
    (["--model.init_args.teacher.init_args.model.init_args.members.b.init_args.vocab_size=4"],
     ["CachedTopK.vocab_size: 4, but the cache was written with V = 3"]),
    ([f"--data.init_args.data.init_args.labels=[{', '.join(CLASSES)}, other]"],
     ["a classifier cache of 3 classes, but the data has 4"]),
], ids=["truncated cache at another temperature", "CachedTopK classes", "data classes"])
def test_mistakes_with_a_cached_classifier_fail_in_one_line(cache_b_k2, tmp_path, data_dir, tokenizer_dir, teachers,
                                                            capsys, extra, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(_config_args(cache_b_k2, tmp_path, data_dir, tokenizer_dir, teachers["a"], *extra))
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: ") and all(text in line for text in expected), line


def test_live_plus_cached_classifiers_under_a_bfloat16_teacher(full_caches, data_dir, tokenizer_dir, teachers):
    """Teacher(dtype: bfloat16) runs a in bfloat16 and casts b's cached rows: the loss stays close to float32."""
    from lit_distill import Teacher

    batch = _val_batch(CachedTeacherDataModule(_data(data_dir, tokenizer_dir), caches={"b": str(full_caches["b"])}))

    def teacher(dtype):
        members = {"a": HFModel(task="sequence-classification", path=str(teachers["a"])), "b": CachedTopK(vocab_size=3)}
        return Teacher(MultiModel(members, inputs={"a": TOKENS, "b": _rows("b")}), dtype=dtype)

    term = EnsembleKD(teachers=["a", "b"], weighting="entropy", temperature=2.0)
    student = torch.randn(len(batch["labels"]), 3, generator=torch.Generator().manual_seed(0))
    low = teacher("bfloat16")(**side_inputs(batch, "teacher")).features
    assert low["a.logits"].dtype == torch.bfloat16 and low["b.logits"].shape == (len(batch["labels"]), 3)
    full = teacher(None)(**side_inputs(batch, "teacher")).features
    got, want = (term(student, f, None, batch["labels"]) for f in (low, full))
    torch.testing.assert_close(got, want, rtol=1e-2, atol=0.0)  # measured over every train batch: 6.1e-3 at most


def test_teacher_null_trains_from_a_classifier_cache_with_sparse_forward_kl(full_caches, data_dir, tokenizer_dir,
                                                                            teachers, tmp_path):
    """The unnamed cache_dir: top-level [B, k] rows, SparseForwardKL at k = C equals the live ForwardKL."""
    from lit_distill.losses import SparseForwardKL

    batch = _val_batch(CachedTeacherDataModule(_data(data_dir, tokenizer_dir), str(full_caches["a"])))
    assert batch["teacher_topk_ids"].shape == (len(batch["labels"]), 3) and "teacher_inputs" not in batch
    live = HFModel(task="sequence-classification", path=str(teachers["a"])).eval()
    student = torch.randn(len(batch["labels"]), 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ForwardKL()(student, live(**batch["inputs"]).logits)
    got = SparseForwardKL()(student, batch["teacher_topk_ids"], batch["teacher_topk_logprobs"],
                            batch["teacher_tail_mass"])
    torch.testing.assert_close(got, want, rtol=5e-4, atol=1e-6)
    overlay = tmp_path / "teacher_null.yaml"
    overlay.write_text(f"""
model:
  init_args:
    teacher: null
    losses:
      ce: {{class_path: lit_distill.losses.CrossEntropy}}
      kd: {{class_path: lit_distill.losses.SparseForwardKL, init_args: {{temperature: 1.0}}}}  # the cache's T
data:
  class_path: datamodules.CachedTeacherDataModule
  init_args:
    cache_dir: {full_caches["a"]}
    data:
      class_path: datamodules.TextClassificationDataModule
      init_args: {{train_path: {data_dir / "train.csv"}, val_path: {data_dir / "val.csv"}, tokenizer: {tokenizer_dir},
                  max_length: 32, batch_size: 4}}
""")
    encoder = REPO / "configs/text/encoder/tiny-bert-student_from_tiny-bert-teacher_local.yaml"
    cli = run_cli(["fit", "--config", str(encoder), "--config", str(overlay), "--trainer.max_steps=2",
                   "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1",
                   "--trainer.enable_progress_bar=false", "--trainer.logger=false", "--checkpoint.save_top_k=0",
                   "--checkpoint.save_last=false", f"--trainer.default_root_dir={tmp_path}"])
    assert cli.trainer.global_step == 2 and cli.model.teacher is None and cli.model.student.output_size == 3
    kd = float(cli.trainer.callback_metrics["val/kd"])
    assert math.isfinite(kd) and kd > 0
