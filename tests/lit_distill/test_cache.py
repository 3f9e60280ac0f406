"""``cache-teacher``: shards, contents against the teacher itself, interruption and resume."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lit_distill.cache import (
    MANIFEST,
    TeacherCache,
    id_dtype,
    sample_ids,
    samples_fingerprint,
    shard_name,
    sparse_teacher,
    write_split,
)
from lit_distill.cache_teacher import cache_teacher
from lit_distill.cli import main
from lit_distill.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


def cache_args(out, text_dir, tokenizer_dir, teacher_dir, *extra: str) -> list[str]:
    """cache-teacher on configs/text/kd/quickstart-student_from_quickstart-teacher.yaml pointed at the tiny test assets.

    The teacher runs in float32 (the config's ``dtype: auto`` is bfloat16 on CPUs with bf16
    instructions): the tests compare the cache with the float32 teacher run on its own.
    """
    return ["--config", str(REPO / "configs/text/kd/quickstart-student_from_quickstart-teacher.yaml"), "--out", str(out), "--top-k", "8",
            "--model.init_args.teacher.init_args.dtype=float32",
            "--samples-per-shard", "16", "--batch-size", "5", "--no-progress",
            f"--data.init_args.tokenizer={tokenizer_dir}",
            f"--data.init_args.train_path={text_dir / 'train.txt'}",
            f"--data.init_args.val_path={text_dir / 'val.txt'}", "--data.init_args.max_length=32",
            f"--model.init_args.teacher.init_args.model.init_args.path={teacher_dir}",
            f"--trainer.default_root_dir={out}/runs", *extra]


def _shards(split_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: load_file(p) for p in sorted(split_dir.glob("shard-*.safetensors"))}


def _assert_same_shards(out: Path, reference_dir: Path) -> None:
    """Every split of the cache at ``out`` holds the same shards, tensor for tensor, as ``reference_dir``."""
    for split in ("train", "val"):
        resumed, reference = _shards(out / split), _shards(reference_dir / split)
        assert resumed.keys() == reference.keys()
        for name, tensors in reference.items():
            for key, value in tensors.items():
                assert torch.equal(resumed[name][key], value), (split, name, key)


@pytest.fixture(scope="module")
def one_shot(tmp_path_factory, text_dir, tokenizer_dir, teacher_dir) -> Path:
    out = tmp_path_factory.mktemp("cache") / "one_shot"
    assert cache_teacher(cache_args(out, text_dir, tokenizer_dir, teacher_dir)) == {"train": True, "val": True}
    return out


def _text_data(text_dir, tokenizer_dir, **kw):
    from datamodules.text import TextDataModule

    args = {"tokenizer": str(tokenizer_dir), "train_path": str(text_dir / "train.txt"),
            "val_path": str(text_dir / "val.txt"), "max_length": 32, "pack": True, "batch_size": 16, **kw}
    data = TextDataModule(**args)
    data.setup("fit")
    return data


def test_shards_hold_the_teachers_top_k_in_compact_dtypes(one_shot, text_dir, teacher_dir, tokenizer_dir,
                                                          vocab_size):
    from transformers import AutoModelForCausalLM

    manifest = json.loads((one_shot / "train" / MANIFEST).read_text())
    assert manifest["complete"] and manifest["top_k"] == 8 and manifest["vocab_size"] == vocab_size
    assert manifest["num_shards"] == -(-manifest["num_samples"] // 16) >= 2
    shard = load_file(one_shot / "train" / shard_name(0))
    assert shard["topk_ids"].dtype == id_dtype(vocab_size) == torch.uint16
    assert shard["topk_logprobs"].dtype == torch.float16 and shard["tail_mass"].dtype == torch.float32
    assert shard["topk_ids"].shape == (int(shard["lengths"].sum()), 8)
    data = _text_data(text_dir, tokenizer_dir)
    assert manifest["num_samples"] == len(data.train_dataset)
    # The last sample of shard 1, against the teacher run on it alone (no batch, no padding).
    cache = TeacherCache(one_shot / "train")
    index = 31
    ids, logprobs, tail = cache[index]
    input_ids = data.train_dataset[index]["input_ids"]
    assert ids.shape == (len(input_ids), 8)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    with torch.no_grad():
        log_p = torch.log_softmax(teacher(input_ids=input_ids[None]).logits[0].float(), -1)
    values, expected_ids = log_p.topk(8, -1)
    assert torch.equal(ids, expected_ids)
    torch.testing.assert_close(logprobs.float(), values, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(tail, (1 - values.exp().sum(-1)).clamp_min(0), rtol=1e-4, atol=1e-5)
    # bytes per cached position: k ids (2 B) + k log-probs (2 B) + the tail (4 B), plus headers
    size = sum(p.stat().st_size for p in (one_shot / "train").glob("shard-*"))
    per_position = size / manifest["num_positions"]
    assert 8 * 4 + 4 <= per_position < 8 * 4 + 4 + 8


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_one_shot_shards(one_shot, tmp_path, text_dir, tokenizer_dir,
                                                        teacher_dir):
    out = tmp_path / "resumed"
    args = cache_args(out, text_dir, tokenizer_dir, teacher_dir)
    assert cache_teacher([*args, "--max-new-shards", "1"]) == {"train": False, "val": False}
    assert len(list((out / "train").glob("shard-*.safetensors"))) == 1
    assert not json.loads((out / "train" / MANIFEST).read_text())["complete"]
    with pytest.raises(ConfigError, match="incomplete"):
        TeacherCache(out / "train")
    # a shard whose writing was cut short exists only as its temporary file
    (out / "train" / (shard_name(1) + ".tmp")).write_bytes(b"half a shard")
    first = (out / "train" / shard_name(0)).stat().st_mtime_ns
    assert cache_teacher(args) == {"train": True, "val": True}
    assert (out / "train" / shard_name(0)).stat().st_mtime_ns == first  # finished shards are skipped
    assert not list(out.rglob("*.tmp"))
    _assert_same_shards(out, one_shot)


def test_other_settings_in_an_existing_cache_are_refused(tmp_path, text_dir, tokenizer_dir, teacher_dir, capsys):
    out = tmp_path / "c"
    args = cache_args(out, text_dir, tokenizer_dir, teacher_dir, "--splits", "val")
    assert cache_teacher(args) == {"val": True}
    with pytest.raises(SystemExit) as exit_info:
        main(["cache-teacher", *args, "--top-k", "4"])
    assert exit_info.value.code == 2
    assert "top_k" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="needs a teacher"):
        cache_teacher([*args, "--model.init_args.teacher=null",
                       '--model.init_args.losses={"ce": {"class_path": "lit_distill.losses.CrossEntropy"}}'])


def test_compact_encoding_reads_back_the_float16_cache_within_half_a_step(one_shot, tmp_path, text_dir,
                                                                         tokenizer_dir, teacher_dir):
    out = tmp_path / "compact"
    args = cache_args(out, text_dir, tokenizer_dir, teacher_dir, "--logprob-dtype", "compact")
    assert cache_teacher(args) == {"train": True, "val": True}
    manifest = json.loads((out / "train" / MANIFEST).read_text())
    assert manifest["version"] == 2 and manifest["logprob_dtype"] == "compact"
    assert json.loads((one_shot / "train" / MANIFEST).read_text())["version"] == 1
    old, new = TeacherCache(one_shot / "train"), TeacherCache(out / "train")
    step = torch.cat([s["logprob_step"] for s in _shards(out / "train").values()]).float()
    offset = 0
    for i in range(len(old)):
        (ids_a, lp_a, tail_a), (ids_b, lp_b, tail_b) = old[i], new[i]
        n = len(ids_a)
        # Ties between equal float32 log-probs may order ids differently only if values tie exactly.
        assert torch.equal(ids_a, ids_b)
        assert torch.equal(tail_a, tail_b)
        # old is float16 (rel. error 2**-11); the compact error is at most half its own step.
        bound = step[offset:offset + n, None] / 2 + lp_a.float().abs() * 2.0**-11 + 1e-6
        assert ((lp_b - lp_a.float()).abs() <= bound).all()
        offset += n


def test_an_unknown_cache_version_is_refused_with_its_version(one_shot, tmp_path):
    split = tmp_path / "train"
    split.mkdir()
    manifest = json.loads((one_shot / "train" / MANIFEST).read_text())
    (split / MANIFEST).write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(ConfigError, match="version 99"):
        TeacherCache(split)


# --- A sequence classifier's cache: one row per sample with its [C] class log-probs -------------------------

BERT = {"model_type": "bert", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "max_position_embeddings": 128}
ENCODER_CONFIG = REPO / "configs/text/encoder/tiny-bert-student_from_tiny-bert-teacher_local.yaml"
CLASSES = ("neg", "neu", "pos")


def classifier_data(root: Path) -> Path:
    """``train.csv`` (24 rows) and ``val.csv`` (6 rows): short texts, each with one of 3 labels."""
    import csv

    from tests.conftest import SENTENCES

    words = " ".join(SENTENCES).replace(".", "").split()
    rows = [(" ".join(words[i:i + 3 + i % 5]), CLASSES[i % 3]) for i in range(30)]
    for name, part in (("train.csv", rows[:24]), ("val.csv", rows[24:])):
        with open(root / name, "w", newline="") as f:
            csv.writer(f).writerows([("text", "label"), *part])
    return root


def peaked_classifier(root: Path, vocab_size: int, seed: int, num_classes: int = len(CLASSES)) -> Path:
    """A tiny BERT classifier saved with save_pretrained, its pooler and head scaled up so that its
    class distributions are peaked (measured on classifier_data: mean entropy 0.2-0.4 nats, ln 3 =
    1.1) rather than the near-uniform ones of a random init."""
    from lit_distill.models import HFModel

    torch.manual_seed(seed)
    model = HFModel(task="sequence-classification", config=BERT, vocab_size=vocab_size, num_classes=num_classes)
    with torch.no_grad():
        model.module.bert.pooler.dense.weight.mul_(10.0)
        model.module.classifier.weight.mul_(30.0)
    model.export(str(root))
    return root


def classifier_cache_args(out, data_dir, tokenizer_dir, teacher, *extra: str) -> list[str]:
    """cache-teacher on the encoder config (a sequence classifier on CSV records) pointed at the test assets."""
    return ["--config", str(ENCODER_CONFIG), "--out", str(out), "--samples-per-shard", "8", "--batch-size", "3",
            "--no-progress", f"--data.init_args.train_path={data_dir / 'train.csv'}",
            f"--data.init_args.val_path={data_dir / 'val.csv'}", f"--data.init_args.tokenizer={tokenizer_dir}",
            f"--model.init_args.teacher.init_args.model.init_args.path={teacher}",
            f"--trainer.default_root_dir={out}/runs", *extra]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, vocab_size) -> Path:
    return peaked_classifier(tmp_path_factory.mktemp("classifier"), vocab_size, seed=3)


@pytest.fixture(scope="module")
def class_data(tmp_path_factory) -> Path:
    return classifier_data(tmp_path_factory.mktemp("class_data"))


@pytest.fixture(scope="module")
def classifier_cache(tmp_path_factory, class_data, tokenizer_dir, classifier) -> Path:
    out = tmp_path_factory.mktemp("classifier_cache") / "one_shot"
    assert cache_teacher(classifier_cache_args(out, class_data, tokenizer_dir, classifier)) == {"train": True,
                                                                                               "val": True}
    return out


def test_a_classifier_teacher_is_cached_one_row_per_sample_with_every_class(classifier_cache, class_data,
                                                                           tokenizer_dir, classifier):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    manifest = json.loads((classifier_cache / "train" / MANIFEST).read_text())
    assert manifest["rows"] == "sample" and manifest["version"] == 3 and manifest["complete"]
    assert manifest["num_samples"] == manifest["num_positions"] == 24 and manifest["num_shards"] == 3
    # detected from the teacher's [B, C] logits: --top-k defaults to every class (exact); classes are no tokens
    assert manifest["top_k"] == manifest["vocab_size"] == 3 and manifest["data_vocab_size"] is None
    shard = load_file(classifier_cache / "train" / shard_name(1))
    assert shard["topk_ids"].shape == (8, 3) and torch.equal(shard["lengths"], torch.ones(8, dtype=torch.int32))
    # every sample against the teacher run on its text alone (no batch, no padding)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    teacher = AutoModelForSequenceClassification.from_pretrained(classifier).eval()
    texts = [line.split(",")[0] for line in (class_data / "train.csv").read_text().splitlines()[1:]]
    cache = TeacherCache(classifier_cache / "train")
    assert cache.per_sample and len(cache) == len(texts)
    entropies = []
    for index, text in enumerate(texts):
        ids, logprobs, tail = cache[index]
        with torch.no_grad():
            log_p = torch.log_softmax(teacher(**tokenizer(text, return_tensors="pt")).logits.float(), -1)
        values, expected_ids = log_p.topk(3, -1)
        assert torch.equal(ids, expected_ids), index
        torch.testing.assert_close(logprobs.float(), values, rtol=1e-3, atol=1e-3)
        assert torch.equal(tail, torch.zeros(1))  # k = C: nothing outside the top k
        entropies.append(float(-(values.exp() * values).sum()))
    assert sum(entropies) / len(entropies) < 0.5 * math.log(3)  # peaked: the comparisons above are not trivial


@pytest.mark.slow
def test_an_interrupted_classifier_cache_resumes_to_the_one_shot_shards(classifier_cache, tmp_path, class_data,
                                                                        tokenizer_dir, classifier):
    out = tmp_path / "resumed"
    args = classifier_cache_args(out, class_data, tokenizer_dir, classifier)
    assert cache_teacher([*args, "--max-new-shards", "1"]) == {"train": False, "val": True}
    (out / "train" / (shard_name(2) + ".tmp")).write_bytes(b"half a shard")
    first = (out / "train" / shard_name(0)).stat().st_mtime_ns
    assert cache_teacher(args) == {"train": True, "val": True}
    assert (out / "train" / shard_name(0)).stat().st_mtime_ns == first
    assert not list(out.rglob("*.tmp"))
    _assert_same_shards(out, classifier_cache)
    # other settings on the same directory: refused, naming the field
    with pytest.raises(ConfigError, match="top_k: 3 in the cache vs 2 now"):
        cache_teacher([*args, "--top-k", "2"])


def test_classifier_cache_options_are_checked_in_one_line(tmp_path, class_data, tokenizer_dir, classifier, capsys):
    args = classifier_cache_args(tmp_path / "c", class_data, tokenizer_dir, classifier, "--splits", "val")
    with pytest.raises(SystemExit) as exit_info:
        main(["cache-teacher", *args, "--top-k", "4"])
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "must be in [1, 3] (the number of classes), got 4" in line
    # a token classifier on text-classification records: per-token rows would line up with nothing
    with pytest.raises(SystemExit) as exit_info:
        main(["cache-teacher", *args, "--model.init_args.teacher.init_args.model.init_args.task=token-classification"])
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "per-token logits" in line and "carry no token ids" in line
    assert not (tmp_path / "c" / "val" / MANIFEST).exists()


def _fake_teacher(batch: dict) -> torch.Tensor:
    """Deterministic logits from a batch of token ids: ``[B, L, 5]``."""
    ids = batch["input_ids"].float()
    return torch.stack([ids * c % 7 for c in range(1, 6)], dim=-1)


def _collate(samples: list) -> dict:
    return {"input_ids": torch.nn.utils.rnn.pad_sequence([s["input_ids"] for s in samples], batch_first=True)}


def _write(split_dir: Path, dataset: list, teacher=_fake_teacher, **kw) -> bool:
    options = {"top_k": 3, "samples_per_shard": 2, "batch_size": 2, "vocab_size": 5, "data_vocab_size": 5,
               "tokenizer_fp": None, "teacher": "fake", "progress": False, **kw}
    return write_split(teacher, dataset, _collate, split_dir, **options)


def test_a_version_1_cache_without_rows_still_resumes_and_other_rows_are_refused(tmp_path):
    dataset = [{"input_ids": torch.arange(i, i + 3 + i % 2)} for i in range(5)]
    split = tmp_path / "train"
    assert not _write(split, dataset, max_new_shards=1)
    manifest = json.loads((split / MANIFEST).read_text())
    assert manifest["version"] == 1 and manifest["rows"] == "position"
    del manifest["rows"]  # as an older lit_distill wrote it
    (split / MANIFEST).write_text(json.dumps(manifest))
    assert _write(split, dataset)
    assert TeacherCache(split)[3][0].shape == (4, 3) and not TeacherCache(split).per_sample

    def first_position(batch: dict) -> torch.Tensor:  # a "classifier": [B, 5]
        return _fake_teacher(batch)[:, 0]

    # the same directory as sample rows: another cache, refused
    with pytest.raises(ConfigError, match="rows: 'position' in the cache vs 'sample' now"):
        _write(split, dataset, first_position, data_vocab_size=None, rows="sample")
    # logits of the wrong shape for the rows: one line
    with pytest.raises(ConfigError, match=r"logits of shape \(2, 5\) .*\[B, L, V\]"):
        _write(tmp_path / "other", dataset, first_position)
    with pytest.raises(ConfigError, match=r"logits of shape \(2, 4, 5\) .*\[B, C\]"):
        _write(tmp_path / "other_samples", dataset, data_vocab_size=None, rows="sample")
    assert _write(tmp_path / "samples", dataset, first_position, data_vocab_size=None, rows="sample")
    cache = TeacherCache(tmp_path / "samples")
    assert cache.per_sample and cache.manifest["num_positions"] == 5
    ids, logprobs, tail = cache[4]
    want_ids, want_lp, want_tail = sparse_teacher(first_position(_collate([dataset[4]])), 3, 1.0)
    assert torch.equal(ids, want_ids) and torch.equal(tail, want_tail)
    torch.testing.assert_close(logprobs.float(), want_lp, rtol=1e-3, atol=1e-3)
    # the compact encoding holds sample rows too: exact top-1, the rest within half a step
    assert _write(tmp_path / "compact", dataset, first_position, data_vocab_size=None, rows="sample",
                  logprob_dtype="compact")
    compact = TeacherCache(tmp_path / "compact")
    assert compact.manifest["version"] == 3 and compact.manifest["logprob_dtype"] == "compact"
    ids, logprobs, tail = compact[4]
    assert torch.equal(ids, want_ids) and torch.equal(tail, want_tail) and logprobs[0, 0] == want_lp[0, 0]
    half_step = 1.01 * (want_lp[0, 0] - want_lp[0, -1]) / 255 / 2
    assert ((logprobs - want_lp).abs() <= half_step + 1e-6).all()


def test_an_unknown_kind_of_rows_is_refused(one_shot, tmp_path):
    split = tmp_path / "train"
    split.mkdir()
    manifest = json.loads((one_shot / "train" / MANIFEST).read_text())
    (split / MANIFEST).write_text(json.dumps({**manifest, "rows": "token"}))
    with pytest.raises(ConfigError, match="rows 'token'"):
        TeacherCache(split)


def test_token_samples_keep_the_fingerprint_existing_caches_were_written_with():
    samples = [{"input_ids": torch.tensor([5, 1, 9])}, {"teacher": {"input_ids": torch.tensor([2])}},
               {"inputs": {"input_ids": torch.tensor([7, 7])}}]
    digest = hashlib.sha256()  # the formula of version-1/2 caches: length, then int64 ids, per sample
    for ids in ([5, 1, 9], [2], [7, 7]):
        digest.update(len(ids).to_bytes(8, "little") + torch.tensor(ids, dtype=torch.int64).numpy().tobytes())
    assert samples_fingerprint(samples) == digest.hexdigest()


def test_records_without_token_ids_are_fingerprinted_by_content():
    rows = [{"text": "a b", "label": "pos", "_label": 1}, {"text": "c", "label": "neg", "_label": 0}]
    same = [{"_label": 1, "label": "pos", "text": "a b"}, dict(rows[1])]
    assert samples_fingerprint(rows) == samples_fingerprint(same)  # key order is no content
    for changed in ([rows[1], rows[0]], [{**rows[0], "text": "a  b"}, rows[1]], [{**rows[0], "_label": 2}, rows[1]]):
        assert samples_fingerprint(changed) != samples_fingerprint(rows)
    assert samples_fingerprint([{"text": "x", "ids": torch.arange(3)}]) \
        == samples_fingerprint([{"text": "x", "ids": [0, 1, 2]}])  # tensors by value, never a truncated repr
    with pytest.raises(ConfigError, match="cannot be fingerprinted"):
        samples_fingerprint([{"text": object()}])
    with pytest.raises(ConfigError, match="must be dicts with 'input_ids'"):
        samples_fingerprint(["a plain string"])
    with pytest.raises(ConfigError, match=r"with keys \['label', 'text'\]"):
        sample_ids({"text": "a", "label": "pos"})


def test_a_token_classifier_on_token_data_is_cached_per_position(tmp_path, text_dir, tokenizer_dir, vocab_size):
    """[B, L, C] logits on samples with token ids: the per-position path, V = C classes."""
    from lit_distill.models import HFModel

    torch.manual_seed(0)
    HFModel(task="token-classification", config=BERT, vocab_size=vocab_size, num_classes=5).export(str(tmp_path / "tc"))
    model = json.dumps({"class_path": "lit_distill.models.HFModel",
                        "init_args": {"task": "token-classification", "path": str(tmp_path / "tc")}})
    args = [a for a in cache_args(tmp_path / "cache", text_dir, tokenizer_dir, tmp_path / "unused", "--splits", "val")
            if ".teacher.init_args.model.init_args.path=" not in a]
    assert cache_teacher([*args, f"--model.init_args.teacher.init_args.model={model}", "--top-k", "5",
                          '--model.init_args.losses={"ce": {"class_path": "lit_distill.losses.CrossEntropy"}}']) \
        == {"val": True}
    cache = TeacherCache(tmp_path / "cache" / "val")
    assert cache.manifest["rows"] == "position" and cache.manifest["vocab_size"] == 5 and not cache.per_sample
    data = _text_data(text_dir, tokenizer_dir)
    assert cache[0][0].shape == (len(data.val_dataset[0]["input_ids"]), 5)
    assert torch.equal(cache[0][2], torch.zeros(len(data.val_dataset[0]["input_ids"])))  # k = C: no tail
