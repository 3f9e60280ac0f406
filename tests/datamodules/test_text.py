"""Tests of TextDataModule (batch contract, packing, pairs, splits, errors) and tokenizer training."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from datamodules.text import IGNORE_INDEX, TextDataModule, encode_records
from datamodules.tokenizer_training import train_tokenizer

WORDS = (
    "the a model teacher student learns predicts token sequence data loss gradient batch "
    "distillation knowledge small large network layer attention output input probability "
    "every each some many quickly slowly carefully because although while when"
).split()


def make_docs(n: int, seed: int = 0, min_words: int = 5, max_words: int = 40) -> list[str]:
    """``n`` distinct pseudo-English documents (distinct thanks to a numbered opening)."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))]
        docs.append(f"Document {i}: " + " ".join(words) + ".")
    return docs


def write_txt(path: Path, docs: list[str]) -> str:
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return str(path)


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("tok")
    corpus = write_txt(root / "corpus.txt", make_docs(400, seed=1) + ["Prompt: Answer: 0123456789"])
    return str(train_tokenizer([corpus], root / "bpe", vocab_size=400))


@pytest.fixture(scope="module")
def tok(tok_dir):
    return AutoTokenizer.from_pretrained(tok_dir)


def make_dm(tok_dir: str, train_path: str, **kwargs) -> TextDataModule:
    dm = TextDataModule(tokenizer=tok_dir, train_path=train_path, **kwargs)
    dm.setup("fit")
    return dm


def all_batches(loader) -> list[dict]:
    return list(loader)


def check_contract(batch: dict, pad_id: int, max_length: int) -> None:
    """Every invariant of the documented batch format."""
    assert set(batch) == {"inputs", "labels", "loss_mask"}
    assert set(batch["inputs"]) == {"input_ids", "attention_mask"}
    ids, att = batch["inputs"]["input_ids"], batch["inputs"]["attention_mask"]
    labels, mask = batch["labels"], batch["loss_mask"]
    assert ids.dtype == att.dtype == labels.dtype == torch.long
    assert mask.dtype == torch.bool
    assert ids.ndim == 2 and ids.shape == att.shape == labels.shape == mask.shape
    assert ids.shape[1] <= max_length
    assert torch.equal(mask, labels != IGNORE_INDEX)
    # shifted labels: where counted, the label is the next input token
    b, t = torch.nonzero(mask[:, :-1], as_tuple=True)
    assert torch.equal(labels[b, t], ids[b, t + 1])
    assert not mask[:, -1].any(), "the last position has no next token"
    # right padding: attention is a prefix of ones; pads carry the pad id and no loss
    lengths = att.sum(1)
    assert torch.equal(att, (torch.arange(ids.shape[1]) < lengths[:, None]).long())
    assert (ids[att == 0] == pad_id).all()
    assert not mask[att == 0].any()
    assert (mask.sum(1) > 0).all(), "no sample without loss tokens"
    # the last real token of every sample predicts nothing inside the sample
    assert not mask[torch.arange(len(ids)), lengths - 1].any()


# ---------------------------------------------------------------- batch contract / plain text


def test_batch_contract_train_val_test(tok_dir, tmp_path):
    path = write_txt(tmp_path / "d.txt", make_docs(30))
    dm = make_dm(tok_dir, path, max_length=24, batch_size=4)
    assert dm.vocab_size == len(dm.tokenizer) == 400
    assert dm.pad_token_id == dm.tokenizer.convert_tokens_to_ids("<pad>") == 0
    n_batches = 0
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        for batch in loader:
            check_contract(batch, dm.pad_token_id, 24)
            n_batches += 1
    assert n_batches >= 3
    # dynamic padding: batches are as long as their longest sample, so some are shorter than 24
    widths = {b["labels"].shape[1] for b in dm.val_dataloader()} | {
        b["labels"].shape[1] for b in dm.train_dataloader()
    }
    assert max(widths) == 24


def test_samples_are_documents_plus_eos(tok_dir, tok, tmp_path):
    docs = make_docs(6, max_words=10)
    path = write_txt(tmp_path / "d.txt", docs)
    dm = make_dm(tok_dir, path, val_path=path, max_length=64, batch_size=6)
    batch = next(iter(dm.val_dataloader()))
    ids, att = batch["inputs"]["input_ids"], batch["inputs"]["attention_mask"]
    for i, doc in enumerate(docs):  # val order = file order
        real = ids[i][att[i] == 1].tolist()
        assert real == tok(doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        # every token but the first is a target, including the final EOS
        assert batch["labels"][i][batch["loss_mask"][i]].tolist() == real[1:]


def test_add_eos_false(tok_dir, tok, tmp_path):
    docs = make_docs(4, max_words=8)
    path = write_txt(tmp_path / "d.txt", docs)
    dm = make_dm(tok_dir, path, val_path=path, max_length=64, add_eos=False, batch_size=4)
    batch = next(iter(dm.val_dataloader()))
    assert (
        tok.eos_token_id not in batch["inputs"]["input_ids"][batch["inputs"]["attention_mask"] == 1]
    )


def test_long_documents_are_split_not_truncated(tok_dir, tok, tmp_path):
    docs = make_docs(3, min_words=150, max_words=200)
    path = write_txt(tmp_path / "long.txt", docs)
    dm = make_dm(tok_dir, path, val_path=path, max_length=16, batch_size=5)
    targets = []
    for batch in dm.val_dataloader():
        check_contract(batch, dm.pad_token_id, 16)
        targets += batch["labels"][batch["loss_mask"]].tolist()
    expected = []
    for doc in docs:
        expected += (tok(doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])[1:]
    assert len(expected) > 3 * 16 * 5  # many windows per document
    assert targets == expected  # every next-token target once, in order


def test_directory_of_txt_and_jsonl(tok_dir, tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    write_txt(data / "a.txt", make_docs(3, seed=1))
    write_jsonl(data / "sub" / "b.jsonl", [{"text": d} for d in make_docs(4, seed=2)])
    (data / "ignored.md").write_text("not data")
    dm = make_dm(tok_dir, str(data), val_path=str(data), max_length=128)
    assert len(dm.val_dataset) == 7


# ---------------------------------------------------------------- prompt / response pairs


def test_loss_only_on_response_tokens(tok_dir, tok, tmp_path):
    records = [
        {
            "prompt": f"Question {i}: what does the teacher do?",
            "response": f" It predicts {i} tokens.",
        }
        for i in range(5)
    ] + [{"text": "A plain document mixed in."}]
    path = write_jsonl(tmp_path / "pairs.jsonl", records)
    dm = make_dm(tok_dir, path, val_path=path, max_length=64, batch_size=8)
    batch = next(iter(dm.val_dataloader()))
    check_contract(batch, dm.pad_token_id, 64)
    ids = batch["inputs"]["input_ids"]
    for i, rec in enumerate(records):
        targets = batch["labels"][i][batch["loss_mask"][i]].tolist()
        if "response" in rec:
            assert tok.decode(targets) == rec["response"] + tok.eos_token
            first = int(batch["loss_mask"][i].nonzero()[0])  # position predicting the response
            assert tok.decode(ids[i][: first + 1]) == rec["prompt"]
        else:
            text_ids = tok(rec["text"], add_special_tokens=False)["input_ids"]
            assert targets == text_ids[1:] + [tok.eos_token_id]


def test_truncated_pair_is_skipped_with_one_warning(tok_dir, tmp_path):
    long_prompt = " ".join(["teacher"] * 100)
    records = [
        {"prompt": long_prompt, "response": "cut off"},
        {"prompt": long_prompt, "response": "x"},
    ]
    records += [{"prompt": "Short?", "response": " Yes, it fits."}] * 3
    train = write_jsonl(tmp_path / "train.jsonl", records)
    val = write_jsonl(tmp_path / "val.jsonl", records[2:])
    with pytest.warns(UserWarning, match=r"skipped 2 prompt/response pair") as rec:
        dm = make_dm(tok_dir, train, val_path=val, max_length=32)
    assert len([w for w in rec if "skipped" in str(w.message)]) == 1
    assert dm.num_skipped == {"train": 2, "val": 0}
    assert len(dm.train_dataset) == 3
    for batch in dm.train_dataloader():
        assert (batch["loss_mask"].sum(1) > 0).all()


def test_pair_truncated_but_with_response_left_is_kept(tok_dir, tmp_path):
    path = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": "Short prompt.", "response": " word" * 100}] * 2
    )
    dm = make_dm(tok_dir, path, val_path=path, max_length=20)
    batch = next(iter(dm.val_dataloader()))
    assert batch["labels"].shape == (2, 20)
    assert dm.num_skipped == {"train": 0, "val": 0}


def test_all_pairs_skipped_is_an_error(tok_dir, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "teacher " * 50, "response": "x"}] * 3)
    with pytest.raises(ValueError, match="p.jsonl"):
        make_dm(tok_dir, path, val_path=path, max_length=8)


# ---------------------------------------------------------------- packing


def test_packing_gives_full_blocks_and_masks_boundaries(tok_dir, tok, tmp_path):
    docs = make_docs(40)
    path = write_txt(tmp_path / "d.txt", docs)
    dm = make_dm(tok_dir, path, val_path=path, max_length=32, pack=True, batch_size=4)
    n_targets, eos = 0, tok.eos_token_id
    for batch in dm.val_dataloader():
        check_contract(batch, dm.pad_token_id, 32)
        ids, mask = batch["inputs"]["input_ids"], batch["loss_mask"]
        assert ids.shape[1] == 32 and bool(batch["inputs"]["attention_mask"].all())
        # a document's EOS never predicts the next document's first token; all else counts
        expected = ids != eos
        expected[:, -1] = False
        assert torch.equal(mask, expected)
        n_targets += int(mask.sum())
    total = sum(len(tok(d, add_special_tokens=False)["input_ids"]) for d in docs) + len(docs)
    # every within-document target is counted once, except those in the dropped tail (< 1 block)
    assert total - len(docs) - 32 < n_targets <= total - len(docs)


def test_packing_tiny_split_keeps_one_padded_block(tok_dir, tmp_path):
    path = write_txt(tmp_path / "d.txt", ["Tiny document."])
    dm = make_dm(tok_dir, path, val_path=path, max_length=64, pack=True)
    batch = next(iter(dm.val_dataloader()))
    check_contract(batch, dm.pad_token_id, 64)
    assert batch["labels"].shape == (1, 64)  # padded to max_length
    assert int(batch["loss_mask"].sum()) > 0


# ---------------------------------------------------------------- shuffling / splitting


def first_epoch_order(dm: TextDataModule) -> list[list[int]]:
    return [b["inputs"]["input_ids"][:, :4].tolist() for b in dm.train_dataloader()]


def test_seeded_shuffle_is_reproducible(tok_dir, tmp_path):
    path = write_txt(tmp_path / "d.txt", make_docs(40))
    a = first_epoch_order(make_dm(tok_dir, path, seed=3, batch_size=4))
    b = first_epoch_order(make_dm(tok_dir, path, seed=3, batch_size=4))
    c = first_epoch_order(make_dm(tok_dir, path, seed=4, batch_size=4))
    assert a == b
    assert a != c
    dm = make_dm(tok_dir, path, seed=3, batch_size=4)
    val1 = [b["labels"].tolist() for b in dm.val_dataloader()]
    val2 = [b["labels"].tolist() for b in dm.val_dataloader()]
    assert val1 == val2  # validation is not shuffled


def test_shuffle_false_keeps_file_order(tok_dir, tmp_path):
    path = write_txt(tmp_path / "d.txt", make_docs(12))
    dm = make_dm(tok_dir, path, val_path=path, shuffle=False, batch_size=4)
    train = [b["labels"].tolist() for b in dm.train_dataloader()]
    assert train == [b["labels"].tolist() for b in dm.val_dataloader()]


def test_dataloaders_are_resumable_and_ddp_friendly(tok_dir, tmp_path):
    from lit_distill.checkpointing import ResumableDataLoader

    path = write_txt(tmp_path / "d.txt", make_docs(10))
    dm = make_dm(tok_dir, path)
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert type(train) is ResumableDataLoader and train.resumable  # its epoch position is checkpointed
    # A DistributedSampler Lightning keeps as it is (no re-wrapping under DDP).
    assert isinstance(train.sampler, torch.utils.data.DistributedSampler) and train.sampler.shuffle
    assert train.sampler.num_replicas == 1 and not val.sampler.shuffle
    assert not train.persistent_workers and train.num_workers == 0


def test_order_is_a_function_of_seed_and_epoch(tok_dir, tmp_path):
    path = write_txt(tmp_path / "d.txt", make_docs(40))
    dm = make_dm(tok_dir, path, seed=3, batch_size=4)
    loader = dm.train_dataloader()
    epoch0 = [b["inputs"]["input_ids"].tolist() for b in loader]
    loader.sampler.set_epoch(1)
    epoch1 = [b["inputs"]["input_ids"].tolist() for b in loader]
    assert epoch0 != epoch1  # reshuffled every epoch
    resumed = make_dm(tok_dir, path, seed=3, batch_size=4).train_dataloader()
    resumed.sampler.set_epoch(1)  # what Lightning does after --ckpt_path
    assert [b["inputs"]["input_ids"].tolist() for b in resumed] == epoch1


def test_two_ranks_split_one_permutation_into_the_same_global_batches():
    dataset = list(range(16))
    one = list(torch.utils.data.DistributedSampler(dataset, num_replicas=1, rank=0, seed=5))
    ranks = [list(torch.utils.data.DistributedSampler(dataset, num_replicas=2, rank=r, seed=5)) for r in (0, 1)]
    for step in range(4):  # rank batch 2 x 2 ranks == one batch of 4
        global_batch = set(ranks[0][2 * step:2 * step + 2] + ranks[1][2 * step:2 * step + 2])
        assert global_batch == set(one[4 * step:4 * step + 4])


def test_val_split_is_disjoint_and_complete(tok_dir, tok, tmp_path):
    docs = make_docs(40)
    path = write_txt(tmp_path / "d.txt", docs)
    dm = make_dm(tok_dir, path, val_fraction=0.25, max_length=128, batch_size=64)

    def texts(loader):
        out = []
        for batch in loader:
            for ids, att in zip(*batch["inputs"].values(), strict=True):
                out.append(tok.decode(ids[att == 1], skip_special_tokens=True))
        return out

    train, val = texts(dm.train_dataloader()), texts(dm.val_dataloader())
    assert len(val) == 10 and len(train) == 30
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(docs)
    # the split is seeded
    dm2 = make_dm(tok_dir, path, val_fraction=0.25, max_length=128, batch_size=64)
    assert texts(dm2.val_dataloader()) == val


# ---------------------------------------------------------------- errors


def test_missing_pad_token_error_names_path_and_option(tok_dir, tok, tmp_path):
    no_pad = tmp_path / "no_pad"
    tok2 = AutoTokenizer.from_pretrained(tok_dir)
    tok2.pad_token = None
    tok2.save_pretrained(no_pad)
    path = write_txt(tmp_path / "d.txt", make_docs(5))
    with pytest.raises(ValueError, match=r"no_pad.*data\.init_args\.pad_token.*'</s>'"):
        TextDataModule(str(no_pad), path)
    dm = make_dm(str(no_pad), path, pad_token="</s>")
    assert dm.pad_token_id == tok.eos_token_id and dm.vocab_size == len(tok)
    dm = make_dm(str(no_pad), path, pad_token="<newpad>")
    assert dm.vocab_size == len(tok) + 1 and dm.pad_token_id == len(tok)


def test_bare_tokenizer_json_file(tok_dir, tmp_path):
    path = write_txt(tmp_path / "d.txt", make_docs(5))
    tok_file = str(Path(tok_dir) / "tokenizer.json")
    with pytest.raises(ValueError, match="tokenizer.json.*pad_token"):
        TextDataModule(tok_file, path)
    dm = make_dm(tok_file, path, pad_token="<pad>", add_eos=False)
    assert dm.pad_token_id == 0
    check_contract(next(iter(dm.train_dataloader())), 0, 256)


def test_missing_paths(tok_dir, tmp_path):
    path = write_txt(tmp_path / "d.txt", make_docs(5))
    with pytest.raises(FileNotFoundError, match="nowhere_tok"):
        TextDataModule(str(tmp_path / "nowhere_tok"), path)
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        TextDataModule(tok_dir, str(tmp_path / "nowhere.txt"))
    with pytest.raises(FileNotFoundError, match="nowhere_val"):
        TextDataModule(tok_dir, path, val_path=str(tmp_path / "nowhere_val"))


def test_unloadable_tokenizer_directory_and_uncached_hub_id(tok_dir, tmp_path):
    path = write_txt(tmp_path / "d.txt", make_docs(5))
    (tmp_path / "empty_tok").mkdir()
    with pytest.raises(ValueError, match="empty_tok.*AutoTokenizer"):
        TextDataModule(str(tmp_path / "empty_tok"), path)
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE, "tests/conftest.py sets HF_HUB_OFFLINE=1 so this fails fast"
    with pytest.raises(FileNotFoundError, match="no-such-org/no-such-tokenizer.*hub id"):
        TextDataModule("no-such-org/no-such-tokenizer", path)


@pytest.mark.parametrize("content", ["", "\n\n   \n\n"])
def test_empty_file_is_an_error(tok_dir, tmp_path, content):
    empty = tmp_path / "empty.txt"
    empty.write_text(content)
    dm = TextDataModule(tok_dir, str(empty))
    with pytest.raises(ValueError, match="empty.txt"):
        dm.setup("fit")


def test_bad_jsonl_record_names_line(tok_dir, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, {"other": "field"}])
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        make_dm(tok_dir, path, val_path=path)


def test_invalid_arguments(tok_dir, tmp_path):
    path = write_txt(tmp_path / "d.txt", make_docs(5))
    with pytest.raises(ValueError, match="max_length"):
        TextDataModule(tok_dir, path, max_length=1)
    with pytest.raises(ValueError, match="val_fraction"):
        TextDataModule(tok_dir, path, val_fraction=0.0)
    with pytest.raises(RuntimeError, match="setup"):
        TextDataModule(tok_dir, path).train_dataloader()


# ---------------------------------------------------------------- CLI help / property test


def test_every_argument_is_documented_for_the_cli():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(TextDataModule, "data")
    help_text = " ".join(parser.format_help().split())
    import inspect

    for name in inspect.signature(TextDataModule.__init__).parameters:
        if name != "self":
            assert f"--data.{name}" in help_text
    assert "Concatenate documents (EOS-separated)" in help_text
    assert "{auto,text,jsonl}" in help_text


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    texts=st.lists(st.text(alphabet="abc de.\n", min_size=1, max_size=60), min_size=1, max_size=5),
    max_length=st.integers(2, 12),
    pack=st.booleans(),
)
def test_every_target_is_predicted_once(tok, texts, max_length, pack):
    texts = [t for t in texts if t.strip()] or ["x"]
    samples, skipped = encode_records(texts, tok, max_length, pack=pack, add_eos=True)
    got = [int(x) for s in samples for x in s["labels"] if x != IGNORE_INDEX]
    want = [
        x
        for t in texts
        for x in (tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])[1:]
    ]
    assert skipped == 0
    assert all(len(s["input_ids"]) == len(s["labels"]) <= max_length for s in samples)
    if pack:  # full blocks only; the dropped tail is shorter than one block
        assert got == want[: len(got)] and len(want) - len(got) < max_length
        assert len(samples) == 1 or all(len(s["input_ids"]) == max_length for s in samples)
    else:
        assert got == want


# ---------------------------------------------------------------- tokenizer training


def test_trained_tokenizer_loads_with_fixed_special_tokens(tok):
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == (
        "<pad>",
        "<s>",
        "</s>",
        "<unk>",
    )
    assert [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    text = "The teacher predicts 42 tokens.\nNew line, üñíçødé!"
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: lossless, no added specials


@pytest.mark.parametrize("algorithm", ["bpe", "wordpiece", "unigram"])
def test_tokenizer_training_is_deterministic(tmp_path, algorithm):
    corpus = write_txt(tmp_path / "c.txt", make_docs(300, seed=5))
    a = train_tokenizer([corpus], tmp_path / "a", vocab_size=300, algorithm=algorithm)
    b = train_tokenizer([corpus], tmp_path / "b", vocab_size=300, algorithm=algorithm)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    loaded = AutoTokenizer.from_pretrained(a)
    # unigram stops early when the corpus has fewer useful pieces than requested
    assert len(loaded) == 300 or (algorithm == "unigram" and 100 < len(loaded) < 300)
    assert loaded.eos_token_id == 2 and loaded.pad_token_id == 0
    ids = loaded("the teacher learns", add_special_tokens=False)["input_ids"]
    assert loaded.unk_token_id not in ids and "teacher" in loaded.decode(ids)


def test_tokenizer_training_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        train_tokenizer([tmp_path / "missing.txt"], tmp_path / "out")
