"""ASRDataModule: character targets, the speech split, and length-bucketed, resumable batch order."""

from __future__ import annotations

import json
import random

import pytest
import torch

from datamodules.asr import (
    ENGLISH_LETTERS,
    ASRDataModule,
    LengthBucketSampler,
    ids_to_text,
    text_to_ids,
)
from datamodules.speech import SpeechDataModule, write_wav
from lit_distill.errors import ConfigError

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "fox", "golf", "hotel", "india", "juliet", "kilo", "lima"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """13 short noise 'utterances' of distinct lengths (in a shuffled file order) with transcripts."""
    out = tmp_path_factory.mktemp("asr")
    g = torch.Generator().manual_seed(0)
    lengths = [800 * (i + 1) for i in range(13)]
    random.Random(0).shuffle(lengths)
    lines = []
    for i, n in enumerate(lengths):
        write_wav(out / f"u{i}.wav", 0.1 * torch.randn(1, n, generator=g), 16000)
        text = f"{WORDS[i % len(WORDS)].title()}, don't  stop {i}!"
        lines.append(json.dumps({"path": f"u{i}.wav", "text": text, "duration": n / 16000}))
    path = out / "manifest.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_characters_roundtrip():
    ids = text_to_ids("Don't  STOP, now 42.")
    assert ids_to_text(ids) == "don't stop now"
    assert min(ids) >= 1 and max(ids) <= len(ENGLISH_LETTERS)
    assert text_to_ids("ab ba", alphabet="ab") == [1, 2, 2, 1]  # no space in the alphabet: spaces dropped


def test_batches_hold_whole_utterances_and_their_characters(manifest):
    dm = ASRDataModule(manifest=str(manifest), val_fraction=0.25, batch_size=3, bucket_by_length=False,
                       shuffle=False)
    dm.setup("fit")
    assert dm.num_classes == len(ENGLISH_LETTERS) + 1
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["inputs"]) == {"waveform", "waveform_mask"}
    assert batch["inputs"]["waveform_mask"] is batch["waveform_mask"]
    for b, text in enumerate(batch["texts"]):
        n = int(batch["target_lengths"][b])
        assert batch["targets"][b, :n].tolist() == text_to_ids(text)
        assert not batch["targets"][b, n:].any()
        item = dm.train_dataset.items[b]
        assert int(batch["lengths"][b]) == json.loads(next(
            line for line in manifest.read_text().splitlines() if item.path.name in line))["duration"] * 16000


def test_split_is_the_speech_datamodules(manifest):
    asr = ASRDataModule(manifest=str(manifest), val_fraction=0.25, split_seed=3)
    speech = SpeechDataModule(manifest=str(manifest), val_fraction=0.25, split_seed=3, val_crop="full")
    asr.setup("fit")
    speech.setup("fit")
    assert asr.train_dataset.items == speech.train_dataset.items and asr.val_dataset.items == speech.val_dataset.items
    assert asr.train_dataset.crop_samples is None and asr.val_dataset.crop_samples is None


def sampler_batches(lengths, batch_size, epoch, shuffle=True, replicas=1, rank=0, seed=0):
    sampler = LengthBucketSampler(list(range(len(lengths))), lengths, batch_size, num_replicas=replicas, rank=rank,
                                  shuffle=shuffle, seed=seed)
    sampler.set_epoch(epoch)
    order = list(sampler)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def test_bucketed_batches_are_contiguous_in_length_and_reshuffled_per_epoch():
    lengths = [random.Random(1).randint(100, 10_000) for _ in range(23)]
    by_length = sorted(range(23), key=lambda i: (lengths[i], i))
    rank_of = {index: position for position, index in enumerate(by_length)}
    epochs = [sampler_batches(lengths, 4, epoch) for epoch in range(3)]
    for batches in epochs:
        assert sorted(i for b in batches for i in b) == list(range(23))  # each utterance once
        assert batches[-1] == by_length[:3]  # the incomplete batch: the shortest, last
        for batch in batches[:-1]:
            positions = sorted(rank_of[i] for i in batch)
            assert len(batch) == 4 and positions == list(range(positions[0], positions[0] + 4))
            assert positions[0] % 4 == 3  # cut after the 3 shortest
    assert epochs[0] != epochs[1] != epochs[2]
    assert sampler_batches(lengths, 4, 1) == epochs[1]  # a pure function of seed and epoch
    assert sampler_batches(lengths, 4, 0, shuffle=False)[:-1] == [by_length[i:i + 4] for i in range(3, 23, 4)]


def test_two_ranks_split_each_global_batch():
    lengths = list(range(100, 2100, 100))  # 20 items, global batches of 2 x 3
    ranks = [sampler_batches(lengths, 3, 2, replicas=2, rank=r) for r in (0, 1)]
    assert sorted(i for batches in ranks for b in batches for i in b) == list(range(20))
    for left, right in zip(ranks[0][:-1], ranks[1][:-1], strict=True):  # step by step: one global batch
        positions = sorted(left + right)
        assert positions == list(range(positions[0], positions[0] + 6))


def test_bucketed_loader_resumes_mid_epoch(manifest):
    def loader():
        dm = ASRDataModule(manifest=str(manifest), val_fraction=0.25, batch_size=2, seed=5)
        dm.setup("fit")
        return dm.train_dataloader()

    full = [b["texts"] for b in loader()]
    first = loader()
    it = iter(first)
    seen = [next(it)["texts"] for _ in range(2)]
    state = first.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    assert seen + [b["texts"] for b in resumed] == full
    # each batch: neighbours in the training split's length order
    batches = [sorted(b["lengths"].tolist()) for b in loader()]
    everything = sorted(n for b in batches for n in b)
    for lengths in batches:
        start = everything.index(lengths[0])
        assert everything[start:start + len(lengths)] == lengths


def test_bad_alphabet_fails_early(manifest):
    with pytest.raises(ConfigError, match="alphabet"):
        ASRDataModule(manifest=str(manifest), alphabet="aab")
    with pytest.raises(ConfigError, match="alphabet"):
        ASRDataModule(manifest=str(manifest), alphabet="")


def test_token_batches_mark_real_tokens_and_the_target_labels(tmp_path):
    from datamodules.asr import TokenCTCDataModule

    data = {"vocab_size": 8, "num_classes": 5,
            "train": {"tokens": [torch.tensor([1, 2, 3]), torch.tensor([7]), torch.tensor([4, 4])],
                      "targets": [[1, 2], [4], []]},
            "val": {"tokens": [torch.tensor([0, 1])], "targets": [[3, 3, 3]]}}
    torch.save(data, tmp_path / "tokens.pt")
    dm = TokenCTCDataModule(str(tmp_path / "tokens.pt"), shuffle=False)
    dm.setup("fit")
    assert (dm.vocab_size, dm.num_classes) == (8, 5)
    batches = list(dm.train_dataloader())
    assert len(batches) == 1  # batch_size null: the whole split
    batch = batches[0]
    assert batch["inputs"]["input_ids"].tolist() == [[1, 2, 3], [7, 0, 0], [4, 4, 0]]
    assert batch["inputs"]["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert batch["targets"].tolist() == [[1, 2], [4, 0], [0, 0]] and batch["target_lengths"].tolist() == [2, 1, 0]
    assert batch["loss_mask"].tolist() == [[True, True], [True, False], [False, False]]
    two = TokenCTCDataModule(str(tmp_path / "tokens.pt"), batch_size=2)
    two.setup("fit")
    assert [len(b["target_lengths"]) for b in two.train_dataloader()] == [2, 1]


def test_token_data_errors_name_what_is_wrong(tmp_path):
    from datamodules.asr import TokenCTCDataModule
    from lit_distill.errors import MissingPathError

    with pytest.raises(MissingPathError, match="path: no file"):
        TokenCTCDataModule(str(tmp_path / "missing.pt"))
    good = {"tokens": [torch.tensor([1])], "targets": [[1]]}
    for bad, message in (({"tokens": [torch.tensor([9])], "targets": [[1]]}, "token ids outside"),
                         ({"tokens": [torch.tensor([1])], "targets": [[0]]}, "target ids outside"),
                         ({"tokens": [torch.tensor([1])], "targets": []}, "1 token sequences and 0 targets")):
        torch.save({"vocab_size": 8, "num_classes": 5, "train": bad, "val": good}, tmp_path / "bad.pt")
        with pytest.raises(ConfigError, match=message):
            TokenCTCDataModule(str(tmp_path / "bad.pt"))
