"""TextClassificationDataModule: CSV/JSONL records, labels, sentence pairs, per-teacher tokens."""

from __future__ import annotations

import json

import pytest
import torch

from datamodules.text_classification import TextClassificationDataModule
from lit_distill import ConfigError


@pytest.fixture
def data(tmp_path):
    rows = [("the cat sat on the mat", "a cat", "pos"), ("rain fell all day", "it rained", "neg"),
            ("the sun was warm", "sunny", "pos"), ("a cold wind blew", "wind", "neg")]
    (tmp_path / "train.csv").write_text("text,pair,label\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    (tmp_path / "val.jsonl").write_text("".join(json.dumps({"text": a, "pair": b, "label": c}) + "\n"
                                                for a, b, c in rows[:2]))
    return tmp_path


def test_batches_hold_student_and_teacher_tokens_and_labels(data, tokenizer_dir):
    dm = TextClassificationDataModule(str(data / "train.csv"), str(data / "val.jsonl"), str(tokenizer_dir),
                                      teacher_tokenizers={"a": str(tokenizer_dir)}, text_pair_field="pair",
                                      batch_size=4, shuffle=False)
    assert dm.num_classes == 2 and dm.label_names == ["neg", "pos"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["labels"].tolist() == [1, 0, 1, 0]
    assert batch["inputs"]["input_ids"].shape == batch["inputs"]["attention_mask"].shape
    assert torch.equal(batch["teacher_inputs"]["a_input_ids"], batch["inputs"]["input_ids"])  # same tokenizer
    pair = dm.tokenizer("the cat sat on the mat", "a cat")["input_ids"]
    assert batch["inputs"]["input_ids"][0, :len(pair)].tolist() == pair
    assert len(next(iter(dm.val_dataloader()))["labels"]) == 2


def test_unlabelled_mode_and_given_label_order(data, tokenizer_dir):
    dm = TextClassificationDataModule(str(data / "train.csv"), str(data / "val.jsonl"), str(tokenizer_dir),
                                      unlabelled=True, batch_size=2)
    dm.setup()
    assert dm.num_classes is None and "labels" not in next(iter(dm.train_dataloader()))
    ordered = TextClassificationDataModule(str(data / "train.csv"), str(data / "val.jsonl"), str(tokenizer_dir),
                                           labels=["pos", "neg"], batch_size=4, shuffle=False)
    ordered.setup()
    assert next(iter(ordered.train_dataloader()))["labels"].tolist() == [0, 1, 0, 1]


def test_bad_data_is_one_line(data, tokenizer_dir):
    with pytest.raises(ConfigError, match=r"labels \['neg'\] are not among \['pos'\]"):
        TextClassificationDataModule(str(data / "train.csv"), str(data / "val.jsonl"), str(tokenizer_dir),
                                     labels=["pos"]).setup()
    with pytest.raises(ConfigError, match=r"record 0 has no \['sentence'\]"):
        TextClassificationDataModule(str(data / "train.csv"), str(data / "val.jsonl"), str(tokenizer_dir),
                                     text_field="sentence").setup()
    with pytest.raises(ConfigError, match="does not exist"):
        TextClassificationDataModule(str(data / "nope.csv"), str(data / "val.jsonl"), str(tokenizer_dir)).setup()
    with pytest.raises(ConfigError, match="batch_size"):
        TextClassificationDataModule(str(data / "train.csv"), str(data / "val.jsonl"), str(tokenizer_dir),
                                     batch_size=0)
