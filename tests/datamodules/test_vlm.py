"""Digit-scene VQA builder and the VLM datamodule's batch contracts."""

from __future__ import annotations

import json
import random

import pytest
import torch

from datamodules.digit_scenes import SceneObject
from datamodules.vlm import IMAGE_TOKEN_ID, VLMDataModule, scene_questions, write_digit_vqa
from lit_distill.errors import ConfigError


@pytest.fixture(scope="module")
def vqa(tmp_path_factory):
    return write_digit_vqa(tmp_path_factory.mktemp("vqa"), num_train=12, num_val=6, seed=0)


def datamodule(vqa, kind="", **kwargs):
    args = {"num_image_tokens": 4, "image_size": 32, "batch_size": 3, **kwargs}
    return VLMDataModule(str(vqa["tokenizer"]), str(vqa[f"train{kind}"]), str(vqa[f"val{kind}"]), **args)


def test_questions_are_correct_and_presence_is_balanced_with_absent_digits():
    objects = [SceneObject(7, 0, 40, 16), SceneObject(2, 30, 2, 20), SceneObject(7, 40, 30, 18)]
    for seed in range(20):
        qs = scene_questions(objects, random.Random(seed))
        by_type = {}
        for q in qs:
            by_type.setdefault(q["type"], []).append(q)
        assert by_type["count"][0]["answer"] == "3" and by_type["count"][0]["wrong"] != "3"
        presence = by_type["presence"]
        assert sorted(q["answer"] for q in presence) == ["no", "yes"]
        for q in presence:
            assert (q["digit"] in (2, 7)) == (q["answer"] == "yes")
            assert q["wrong"] != q["answer"]
        pos = by_type["position"][0]
        expected = "2" if "left" in pos["question"] else "7"  # centres: col 12 (the 2), 39 and 48
        assert pos["answer"] == expected and pos["wrong"] != pos["answer"]


def test_write_digit_vqa_files_and_held_out_split(vqa):
    train = json.loads(vqa["train"].read_text())
    val = json.loads(vqa["val"].read_text())
    pairs = json.loads(vqa["train_pairs"].read_text())
    assert len(pairs) == len(train)
    assert {r["image"].split("/")[1].split("_")[0] for r in val} == {"val"}
    presence = [r["meta"]["answer"] for r in train if r["meta"]["type"] == "presence"]
    assert presence.count("yes") == presence.count("no") == 12
    for rec, pair in zip(train, pairs, strict=True):
        assert rec["conversations"][1]["value"] == pair["chosen"] != pair["rejected"]
        assert (vqa["train"].parent / rec["image"]).is_file()
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(vqa["tokenizer"])
    assert tok.convert_tokens_to_ids("<image>") == IMAGE_TOKEN_ID
    assert tok("a<image>b", add_special_tokens=False)["input_ids"].count(IMAGE_TOKEN_ID) == 1


def test_supervised_batch_contract(vqa):
    dm = datamodule(vqa)
    dm.setup()
    batch = dm.collate(dm.train_dataset[:3])
    ids, labels, mask = batch["inputs"]["input_ids"], batch["labels"], batch["loss_mask"]
    assert batch["inputs"]["pixel_values"].shape == (3, 3, 32, 32)
    assert ((ids == dm.image_token_id).sum(1) == 4).all()
    assert torch.equal(mask, labels != -100)
    records = json.loads(vqa["train"].read_text())[:3]
    for row, rec in enumerate(records):
        n = int(batch["inputs"]["attention_mask"][row].sum())
        # shifted: position t predicts input t + 1; only the answer and EOS are targets
        targets = [int(ids[row, t + 1]) for t in range(n - 1) if mask[row, t]]
        assert targets == [int(labels[row, t]) for t in range(n - 1) if mask[row, t]]
        answer = dm.tokenizer(rec["conversations"][1]["value"], add_special_tokens=False)["input_ids"]
        assert targets == answer + [dm.tokenizer.eos_token_id]
        assert not mask[row, n - 1:].any()


def test_preference_batch_contract(vqa):
    dm = datamodule(vqa, "_pairs")
    dm.setup()
    assert dm.preference
    batch = dm.collate(dm.train_dataset[:3])
    assert "loss_mask" not in batch and batch["labels"].shape[0] == 6
    pairs = json.loads(vqa["train_pairs"].read_text())[:3]
    tok = dm.tokenizer
    for i, pair in enumerate(pairs):
        for row, key in ((i, "chosen"), (i + 3, "rejected")):
            got = batch["labels"][row][batch["response_mask"][row]].tolist()
            assert got == tok(pair[key], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        torch.testing.assert_close(batch["inputs"]["pixel_values"][i], batch["inputs"]["pixel_values"][i + 3])
        first = int(batch["response_mask"][i].float().argmax())
        assert torch.equal(batch["inputs"]["input_ids"][i, :first + 1], batch["inputs"]["input_ids"][i + 3, :first + 1])


def test_bad_records_fail_with_the_field(vqa, tmp_path):
    bad = [{"image": str(vqa["train"].parent / "images/train_00000.png"),
            "conversations": [{"from": "human", "value": "no tag here"}, {"from": "gpt", "value": "1"}]}]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    dm = VLMDataModule(str(vqa["tokenizer"]), str(path), str(path))
    with pytest.raises(ConfigError, match="exactly one '<image>'"):
        dm.setup()
    with pytest.raises(ConfigError, match="max_length"):
        datamodule(vqa, max_length=8).setup()
    with pytest.raises(ConfigError, match="image_token"):
        datamodule(vqa, image_token="<nope>")
    with pytest.raises(FileNotFoundError, match="train_path"):
        VLMDataModule(str(vqa["tokenizer"]), str(tmp_path / "missing.json"), str(path))
