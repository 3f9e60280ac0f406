"""``cache-teacher``: shards, contents against the teacher itself, interruption and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lit_distill.cache import MANIFEST, TeacherCache, id_dtype, shard_name
from lit_distill.cache_teacher import cache_teacher
from lit_distill.cli import main
from lit_distill.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")


def cache_args(out, text_dir, tokenizer_dir, teacher_dir, *extra: str) -> list[str]:
    """cache-teacher on configs/text/kd/quickstart-student_from_quickstart-teacher.yaml pointed at the tiny test assets."""
    return ["--config", str(REPO / "configs/text/kd/quickstart-student_from_quickstart-teacher.yaml"), "--out", str(out), "--top-k", "8",
            "--samples-per-shard", "16", "--batch-size", "5", "--no-progress",
            f"--data.init_args.tokenizer={tokenizer_dir}",
            f"--data.init_args.train_path={text_dir / 'train.txt'}",
            f"--data.init_args.val_path={text_dir / 'val.txt'}", "--data.init_args.max_length=32",
            f"--model.init_args.teacher.init_args.model.init_args.path={teacher_dir}",
            f"--trainer.default_root_dir={out}/runs", *extra]


def _shards(split_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: load_file(p) for p in sorted(split_dir.glob("shard-*.safetensors"))}


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
    for split in ("train", "val"):
        resumed, reference = _shards(out / split), _shards(one_shot / split)
        assert resumed.keys() == reference.keys()
        for name, tensors in reference.items():
            for key, value in tensors.items():
                assert torch.equal(resumed[name][key], value), (split, name, key)


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
