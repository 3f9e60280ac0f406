"""Tests of CrossTokenizerDataModule: batch contract, per-side targets, offsets, ALM chunks, errors."""

from __future__ import annotations

import json
import random
import warnings
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from datamodules.alignment import unicode_to_byte
from datamodules.cross_tokenizer import CrossTokenizerDataModule
from datamodules.text import IGNORE_INDEX
from datamodules.tokenizer_training import train_tokenizer
from lit_distill.errors import ConfigError

WORDS = (
    "the a model teacher student learns predicts token sequence data loss gradient batch "
    "distillation knowledge small large network naïve café — 東京 résumé because while"
).split()
# cut at whitespace, then (a 60-character word) inside a word
LONG_DOC = "naïve café — 東京 " * 12 + "東京" * 30 + " end"
KEYS = {
    "student_inputs", "teacher_inputs", "labels", "loss_mask", "teacher_labels",
    "teacher_loss_mask", "student_byte_offsets", "teacher_byte_offsets", "alm_student_chunks",
    "alm_teacher_chunks", "alm_chunk_mask", "student_chunk_start_mask", "teacher_chunk_start_mask", "prompts",
    "student_space_mask", "teacher_space_mask",
}
PAIRS = [
    {"prompt": "Question: what does the student learn?", "response": " The student learns the data."},
    {"prompt": "Où est le café?", "response": " À 東京, naïve friend."},
    {"prompt": "Say it", "response": " knowledge distillation"},
    {"prompt": "Q: ", "response": "a small model predicts a token"},
]


def make_docs(n: int, seed: int = 0, lo: int = 4, hi: int = 30) -> list[str]:
    rng = random.Random(seed)
    return [f"Doc {i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) + "."
            for i in range(n)]


def write_txt(path: Path, docs: list[str]) -> str:
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return str(path)


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def tok_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("xtok")
    corpus = write_txt(root / "corpus.txt", make_docs(300, seed=1) + [p["prompt"] + p["response"] for p in PAIRS])
    student = train_tokenizer([corpus], root / "bpe", vocab_size=300, algorithm="bpe")
    teacher = train_tokenizer([corpus], root / "unigram", vocab_size=400, algorithm="unigram")
    chat = AutoTokenizer.from_pretrained(str(teacher))
    chat.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    )
    chat.save_pretrained(str(root / "unigram_chat"))
    nopad = AutoTokenizer.from_pretrained(str(student))
    nopad.pad_token = None
    nopad.save_pretrained(str(root / "bpe_nopad"))
    return {"student": str(student), "teacher": str(teacher), "chat": str(root / "unigram_chat"),
            "nopad": str(root / "bpe_nopad")}


@pytest.fixture(scope="module")
def toks(tok_dirs) -> dict:
    return {k: AutoTokenizer.from_pretrained(v) for k, v in tok_dirs.items() if k != "nopad"}


def make_dm(tok_dirs, train_path: str, teacher: str = "teacher", **kwargs) -> CrossTokenizerDataModule:
    kwargs.setdefault("val_path", train_path)
    kwargs.setdefault("shuffle", False)
    dm = CrossTokenizerDataModule(tok_dirs["student"], tok_dirs[teacher], train_path, **kwargs)
    dm.setup("fit")
    return dm


def side(batch: dict, name: str) -> tuple[torch.Tensor, ...]:
    prefix = "" if name == "student" else "teacher_"
    return (batch[f"{name}_inputs"]["input_ids"], batch[f"{name}_inputs"]["attention_mask"],
            batch[f"{prefix}labels"], batch[f"{prefix}loss_mask"], batch[f"{name}_byte_offsets"],
            batch[f"alm_{name}_chunks"])


def check_contract(batch: dict, max_length: int) -> None:
    assert set(batch) == KEYS
    n_chunks = batch["alm_chunk_mask"].shape[1]
    assert batch["alm_chunk_mask"].dtype == torch.bool and n_chunks >= 1
    for name in ("student", "teacher"):
        assert set(batch[f"{name}_inputs"]) == {"input_ids", "attention_mask"}
        ids, att, labels, mask, offs, chunks = side(batch, name)
        b, n = ids.shape
        assert n <= max_length and b == batch["alm_chunk_mask"].shape[0]
        assert ids.dtype == att.dtype == labels.dtype == offs.dtype == torch.long
        assert mask.dtype == chunks.dtype == torch.bool
        assert att.shape == labels.shape == mask.shape == (b, n)
        assert offs.shape == (b, n, 2) and chunks.shape == (b, n, n_chunks)
        assert torch.equal(mask, labels != IGNORE_INDEX)
        # labels shifted exactly: a counted label is the next real input token
        rows, cols = torch.nonzero(mask, as_tuple=True)
        assert (cols < n - 1).all()
        assert torch.equal(labels[rows, cols], ids[rows, cols + 1])
        assert att[rows, cols + 1].all()
        # padding: attention 0, no label, offsets -1, no chunk
        pad = att == 0
        assert not mask[pad].any() and (offs[pad] == -1).all()
        assert not chunks[:, 1:][pad[:, 1:]].any()


def token_bytes(tok, token_id: int) -> bytes | None:
    piece = tok.convert_ids_to_tokens(token_id)
    if piece == tok.unk_token:
        return None
    if "Ġ" in tok.get_vocab():  # byte-level BPE
        return bytes(unicode_to_byte()[c] for c in piece)
    return piece.replace("▁", " ").encode()


def iter_samples(dm, batches):
    """(batch, row, sample text bytes) for every sample of the (unshuffled) loader."""
    texts = iter(s["text"] for s in dm.val_dataset)
    for batch in batches:
        for b in range(batch["labels"].shape[0]):
            yield batch, b, next(texts).encode()


@pytest.fixture(scope="module")
def text_path(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("xdata")
    return write_txt(root / "docs.txt", make_docs(30, seed=2) + [LONG_DOC])


@pytest.fixture(scope="module")
def pairs_path(tmp_path_factory) -> str:
    return write_jsonl(tmp_path_factory.mktemp("xpairs") / "pairs.jsonl", PAIRS * 3)


@pytest.mark.parametrize("alignment", ["unconstrained", "space"])
def test_plain_text_batches_follow_the_contract(tok_dirs, toks, text_path, alignment):
    dm = make_dm(tok_dirs, text_path, max_length=24, batch_size=4, alignment=alignment)
    batches = list(dm.val_dataloader())
    for batch in batches:
        check_contract(batch, 24)
    # long documents were cut into pieces: more samples than documents, concatenation intact
    docs = make_docs(30, seed=2)
    assert len(dm.val_dataset) > len(docs) + 1
    assert "".join(s["text"] for s in dm.val_dataset) == "".join(docs) + LONG_DOC
    # plain text: every next token of a piece is a target (EOS included on the last piece)
    for batch, b, _ in iter_samples(dm, batches):
        for name in ("student", "teacher"):
            _, att, _, mask, _, _ = side(batch, name)
            n = int(att[b].sum())
            assert mask[b, : n - 1].all() and not mask[b, n - 1 :].any()


def test_byte_offsets_map_each_token_to_its_bytes(tok_dirs, toks, text_path, pairs_path):
    for path in (text_path, pairs_path):
        dm = make_dm(tok_dirs, path, max_length=96, batch_size=3)
        checked = 0
        for batch, b, data in iter_samples(dm, dm.val_dataloader()):
            for name in ("student", "teacher"):
                ids, att, _, _, offs, _ = side(batch, name)
                tok = toks[name]
                covered = []
                for t in range(int(att[b].sum())):
                    s, e = offs[b, t].tolist()
                    tid = int(ids[b, t])
                    if tid in (tok.eos_token_id, tok.bos_token_id, tok.pad_token_id):
                        assert (s, e) == (-1, -1)
                        continue
                    want = token_bytes(tok, tid)
                    if s == e:  # Metaspace's prepended "▁"
                        assert want == b" "
                        continue
                    if want is not None and data[s:e] != want:
                        # Metaspace's virtual space at the start of an encoded text part
                        assert name == "teacher" and want == b" " + data[s:e]
                        assert data[s - 1 : s] != b" "
                    elif want is not None:
                        checked += 1
                    covered.append((s, e))
                # both tokenizers are lossless: real tokens tile the sample text
                assert covered[0][0] == 0 and covered[-1][1] == len(data)
                assert all(x[1] == y[0] for x, y in pairwise(covered))
        assert checked > 100


def test_pairs_have_loss_on_the_response_only_on_both_sides(tok_dirs, toks, pairs_path):
    dm = make_dm(tok_dirs, pairs_path, max_length=96, batch_size=4)
    assert dm.num_skipped == {"train": 0, "val": 0}
    batches = list(dm.val_dataloader())
    records = iter(PAIRS * 3)
    for batch in batches:
        check_contract(batch, 96)
        for b in range(batch["labels"].shape[0]):
            rec = next(records)
            for name in ("student", "teacher"):
                _, _, labels, mask, _, _ = side(batch, name)
                tok = toks[name]
                targets = labels[b][mask[b]].tolist()
                assert targets[-1] == tok.eos_token_id
                got = tok.decode(targets[:-1])
                want = tok.decode(tok(rec["response"], add_special_tokens=False)["input_ids"])
                assert got == want and rec["response"].strip() in got.replace("<unk>", "東京")


def test_batches_carry_the_prompt_text_of_each_pair(tok_dirs, pairs_path, text_path):
    pairs = list(make_dm(tok_dirs, pairs_path, max_length=96, batch_size=4).val_dataloader())
    assert [p for batch in pairs for p in batch["prompts"]] == [r["prompt"] for r in PAIRS * 3]
    docs = next(iter(make_dm(tok_dirs, text_path, max_length=96, batch_size=4).val_dataloader()))
    assert docs["prompts"] == [None] * 4


def test_retokenize_encodes_generated_answers_like_data_pairs(tok_dirs, toks, pairs_path, tmp_path):
    """Multi-byte answers: both sides' targets are exactly the answer's bytes (and EOS only if it ended)."""
    dm = make_dm(tok_dirs, pairs_path, max_length=96, batch_size=4)
    prompts = ["Où est le café?", "Q: ", "Say it"]
    answers = [" À 東京, naïve — résumé.", "naïve café", " the teacher"]
    ended = [True, False, True]
    batch = dm.retokenize(prompts, answers, ended)
    check_contract(batch, 96)
    assert batch["prompts"] == prompts
    # the same pairs read from a file as data give the same batch (ended rows only: data pairs end)
    path = write_jsonl(tmp_path / "answers.jsonl", [{"prompt": p, "response": r} for p, r in zip(prompts, answers, strict=True)])
    data = next(iter(make_dm(tok_dirs, path, max_length=96, batch_size=3).val_dataloader()))
    for b in (0, 2):
        for name in ("student", "teacher"):
            got, want = side(batch, name), side(data, name)
            n = int(want[1][b].sum())
            for x, y in zip(got[:5], want[:5], strict=True):
                assert torch.equal(x[b, :n], y[b, :n])
    for b, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        text = (prompt + answer).encode()
        for name in ("student", "teacher"):
            ids, _, labels, mask, offs, _ = side(batch, name)
            tok = toks[name]
            targets = labels[b][mask[b]].tolist()
            assert (targets[-1] == tok.eos_token_id) == ended[b]
            # the counted targets' byte spans cover exactly the answer's bytes
            pos = torch.nonzero(mask[b]).flatten() + 1
            spans = [tuple(o) for o in offs[b, pos].tolist() if o[1] > o[0]]
            assert b"".join(text[s:e] for s, e in spans) == answer.encode()
            assert spans[0][0] == len(prompt.encode())
        # ALM chunks of the answer are counted; none of the prompt
        assert batch["alm_chunk_mask"][b].any()


def test_retokenize_cuts_an_answer_that_does_not_fit_and_drops_its_eos(tok_dirs, toks, text_path):
    dm = make_dm(tok_dirs, text_path, max_length=24, batch_size=4)
    answer = " naïve café 東京 résumé" * 8
    batch = dm.retokenize(["Say it"], [answer], [True])
    check_contract(batch, 24)
    for name in ("student", "teacher"):
        labels, mask, offs = side(batch, name)[2:5]
        assert mask[0].any() and labels[0][mask[0]][-1] != toks[name].eos_token_id
        kept = [o for o in offs[0].tolist() if o[1] > o[0]]
        assert kept[-1][1] < len(("Say it" + answer).encode())  # cut from the end
    for name in ("student", "teacher"):  # an empty answer that ended: its only target is EOS
        labels, mask = side(dm.retokenize(["Say it"], [""], [True]), name)[2:4]
        assert labels[0][mask[0]].tolist() == [toks[name].eos_token_id]


def test_chunk_tensors_reassemble_the_same_bytes_on_both_sides(tok_dirs, text_path, pairs_path):
    for path in (text_path, pairs_path):
        dm = make_dm(tok_dirs, path, max_length=96, batch_size=4)
        n_counted = 0
        for batch, b, data in iter_samples(dm, dm.val_dataloader()):
            chunk_mask = batch["alm_chunk_mask"][b]
            for c in torch.nonzero(chunk_mask).flatten().tolist():
                spans = {}
                for name in ("student", "teacher"):
                    ids, _, labels, mask, offs, chunks = side(batch, name)
                    pos = torch.nonzero(chunks[b, :, c]).flatten()
                    assert len(pos) > 0 and mask[b, pos].all()  # every member is a counted target
                    assert torch.equal(labels[b, pos], ids[b, pos + 1])
                    tgt = offs[b, pos + 1].tolist()  # byte spans of the predicted tokens
                    assert all(x[1] == y[0] or y[0] == y[1] for x, y in pairwise(tgt))
                    real = [(s, e) for s, e in tgt if e > s]
                    spans[name] = (real[0][0], real[-1][1])
                    joined = b"".join(data[s:e] for s, e in real)
                    assert joined == data[real[0][0] : real[-1][1]] and joined.decode()
                assert spans["student"] == spans["teacher"]
                n_counted += 1
            # chunks partition the targets of real text: no position is in two chunks
            for name in ("student", "teacher"):
                assert (side(batch, name)[5][b].sum(-1) <= 1).all()
        assert n_counted > 20


def test_space_chunks_are_unions_of_unconstrained_chunks(tok_dirs, text_path):
    fine = make_dm(tok_dirs, text_path, max_length=32)
    coarse = make_dm(tok_dirs, text_path, max_length=32, alignment="space")
    fewer = 0
    for a, b in zip(fine.val_dataset, coarse.val_dataset, strict=True):
        assert a["text"] == b["text"]
        fine_ends = {(s[-1], t[-1]) for s, t in a["chunks"]}
        assert {(s[-1], t[-1]) for s, t in b["chunks"]} <= fine_ends
        assert [p for s, _ in b["chunks"] for p in s] == [p for s, _ in a["chunks"] for p in s]
        fewer += len(b["chunks"]) < len(a["chunks"])
    assert fewer > 0


def test_response_cut_off_on_one_side_is_skipped_with_one_warning(tok_dirs, toks, tmp_path):
    long_student = " " + "日本" * 20  # unseen characters: 3 byte tokens each (BPE), one <unk> run
    n_s = len(toks["student"](long_student, add_special_tokens=False)["input_ids"])
    n_t = len(toks["teacher"](long_student, add_special_tokens=False)["input_ids"])
    assert n_s > 100 and n_t < 6  # the premise: only the student side overflows
    records = [{"prompt": "Q", "response": long_student}, {"prompt": "Q", "response": ""}] + PAIRS
    path = write_jsonl(tmp_path / "p.jsonl", records)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm = make_dm(tok_dirs, path, max_length=96)
    assert dm.num_skipped == {"train": 2, "val": 2}
    assert len(dm.train_dataset) == len(PAIRS)
    msgs = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert len(msgs) == 1 and "max_length=96" in msgs[0] and "4 prompt/response" in msgs[0]
    for s in dm.train_dataset:  # all batches are finite: every sample has counted targets
        assert (s["student"]["labels"] != IGNORE_INDEX).any()
        assert (s["teacher"]["labels"] != IGNORE_INDEX).any()


def test_teacher_chat_template_keeps_loss_on_the_response(tok_dirs, toks, pairs_path):
    dm = make_dm(tok_dirs, pairs_path, teacher="chat", max_length=128, teacher_chat_template=True)
    assert dm.num_skipped == {"train": 0, "val": 0}
    batch = next(iter(dm.val_dataloader()))
    check_contract(batch, 128)
    tok = toks["chat"]
    ids, att, labels, mask, offs, _ = side(batch, "teacher")
    rec = PAIRS[0]
    head = tok("<|user|>", add_special_tokens=False)["input_ids"]
    middle = tok("</s><|assistant|>", add_special_tokens=False)["input_ids"]
    prompt = tok(rec["prompt"], add_special_tokens=False)["input_ids"]
    assert ids[0, : len(head) + len(prompt) + len(middle)].tolist() == head + prompt + middle
    targets = labels[0][mask[0]].tolist()
    want = tok(rec["response"], add_special_tokens=False)["input_ids"] + tok("</s>")["input_ids"]
    assert targets == want
    # template text has no offsets; the student side is untouched (no template)
    assert (offs[0, : len(head)] == -1).all() and (offs[0, len(head)] >= 0).all()
    assert (offs[0, len(head) + len(prompt) : len(head) + len(prompt) + len(middle)] == -1).all()
    assert not mask[0, : len(head) + len(prompt) + len(middle) - 1].any()
    s_ids = batch["student_inputs"]["input_ids"][0]
    assert toks["student"].decode(s_ids[batch["student_inputs"]["attention_mask"][0].bool()]) == (
        rec["prompt"] + rec["response"] + "</s>"
    )
    assert batch["alm_chunk_mask"][0].any()


def test_errors_are_config_errors(tok_dirs, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    dm = CrossTokenizerDataModule(tok_dirs["student"], tok_dirs["teacher"], str(empty))
    with pytest.raises(ConfigError, match="empty.txt"):
        dm.setup("fit")
    with pytest.raises(ConfigError, match="missing.txt"):
        CrossTokenizerDataModule(tok_dirs["student"], tok_dirs["teacher"], str(tmp_path / "missing.txt"))
    path = write_txt(tmp_path / "d.txt", make_docs(4))
    with pytest.raises(ConfigError, match="student_pad_token"):
        CrossTokenizerDataModule(tok_dirs["nopad"], tok_dirs["teacher"], path)
    dm = CrossTokenizerDataModule(tok_dirs["nopad"], tok_dirs["teacher"], path, student_pad_token="</s>")
    assert dm.pad_token_id == AutoTokenizer.from_pretrained(tok_dirs["student"]).eos_token_id
    with pytest.raises(ConfigError, match="max_length"):
        CrossTokenizerDataModule(tok_dirs["student"], tok_dirs["teacher"], path, max_length=3)
    with pytest.raises(RuntimeError, match="setup"):
        CrossTokenizerDataModule(tok_dirs["student"], tok_dirs["teacher"], path).train_dataloader()


def test_seeded_shuffle_is_reproducible(tok_dirs, text_path):
    def order(seed: int) -> list[list[int]]:
        dm = make_dm(tok_dirs, text_path, max_length=32, shuffle=True, seed=seed, val_path=None)
        return [b["labels"][:, 0].tolist() for b in dm.train_dataloader()]

    first = order(3)
    assert first == order(3)
    assert first != order(4)


def test_cli_links_the_student_vocab_size(tok_dirs, text_path, toks):
    from jsonargparse import ArgumentParser

    class Student:
        def __init__(self, vocab_size: int = 0, pad_token_id: int = -1):
            self.vocab_size, self.pad_token_id = vocab_size, pad_token_id

    parser = ArgumentParser()
    parser.add_class_arguments(CrossTokenizerDataModule, "data")
    parser.add_class_arguments(Student, "student")
    for name in ("vocab_size", "pad_token_id"):
        parser.link_arguments(f"data.{name}", f"student.{name}", apply_on="instantiate")
    cfg = parser.parse_args([
        f"--data.student_tokenizer={tok_dirs['student']}", f"--data.teacher_tokenizer={tok_dirs['teacher']}",
        f"--data.train_path={text_path}", "--data.alignment=space",
    ])
    init = parser.instantiate_classes(cfg)
    assert init.student.vocab_size == len(toks["student"]) == init.data.vocab_size
    assert init.data.teacher_vocab_size == len(toks["teacher"]) != init.student.vocab_size
    assert init.student.pad_token_id == toks["student"].pad_token_id
    assert init.data.hparams.alignment == "space"
    help_text = " ".join(parser.format_help().split())
    assert "--data.teacher_chat_template" in help_text and "{unconstrained,space}" in help_text


def test_chunk_start_masks_pair_positions_that_read_the_same_bytes(tok_dirs, text_path, pairs_path):
    for path in (text_path, pairs_path):
        dm = make_dm(tok_dirs, path, max_length=96, batch_size=4)
        pairs = 0
        for batch in dm.val_dataloader():
            counts = [batch[f"{s}_chunk_start_mask"].sum(1) for s in ("student", "teacher")]
            assert torch.equal(counts[0], counts[1])
            assert torch.equal(counts[0], batch["alm_chunk_mask"].sum(1))  # one start per counted chunk
            for b in range(counts[0].shape[0]):
                starts = {}
                for s in ("student", "teacher"):
                    pos = torch.nonzero(batch[f"{s}_chunk_start_mask"][b]).flatten()
                    # the predicted token (t + 1) starts at the same byte on both sides
                    starts[s] = batch[f"{s}_byte_offsets"][b, pos + 1, 0].tolist()
                    labels = batch["labels" if s == "student" else "teacher_labels"][b]
                    assert (labels[pos] != -100).all()
                assert starts["student"] == starts["teacher"]
                pairs += len(starts["student"])
        assert pairs > 50
