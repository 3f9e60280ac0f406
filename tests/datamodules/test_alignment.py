"""Tests of the byte alignment helpers (byte offsets from char offsets, ALM chunks, chunk tensors)."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from datamodules.alignment import (
    byte_chunks,
    char_to_byte_offsets,
    chunk_matrices,
    is_byte_level,
    starts_with_space,
    token_byte_lengths,
    unicode_to_byte,
)
from datamodules.tokenizer_training import train_tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A naïve café — 東京 is in Japan; the résumé was long.",
    "Students learn from teachers, and teachers from students.",
    "Knowledge distillation trains a small model to imitate a large one.",
]
TRICKY = "  Hello naïve café — 東京 日本\n x  y…ß"


@pytest.fixture(scope="module")
def toks(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("align_tok")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 30) + "\n", encoding="utf-8")
    out = {}
    for algo, vocab in (("bpe", 300), ("unigram", 400), ("wordpiece", 400)):
        out[algo] = AutoTokenizer.from_pretrained(str(train_tokenizer([corpus], root / algo, vocab, algo)))
    return out


def byte_offsets(tok, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    return ids, char_to_byte_offsets(text, enc["offset_mapping"], token_byte_lengths(tok, ids))


def piece_bytes(tok, algo: str, token_id: int) -> bytes | None:
    """The bytes a vocabulary piece stands for (None for <unk>)."""
    piece = tok.convert_ids_to_tokens(token_id)
    if piece == tok.unk_token:
        return None
    if algo == "bpe":
        return bytes(unicode_to_byte()[c] for c in piece)
    if algo == "unigram":
        return piece.replace("▁", " ").encode()
    return piece.removeprefix("##").encode()


@pytest.mark.parametrize("algo", ["bpe", "unigram", "wordpiece"])
def test_byte_offsets_point_at_each_tokens_own_bytes(toks, algo):
    tok = toks[algo]
    assert is_byte_level(tok) == (algo == "bpe")
    data = TRICKY.encode()
    ids, offs = byte_offsets(tok, TRICKY)
    checked = 0
    for i, (s, e) in zip(ids, offs, strict=True):
        want = piece_bytes(tok, algo, i)
        if want is None:  # <unk>: its span is a non-empty run of whole characters
            assert e > s and data[s:e].decode()
        elif s == e:  # Metaspace's prepended "▁": stands for no text
            assert algo == "unigram" and want == b" "
        else:
            assert data[s:e] == want
            checked += 1
    assert checked >= len(ids) // 2
    if algo != "wordpiece":  # lossless: the tokens tile the bytes exactly
        real = [(s, e) for s, e in offs if e > s]
        assert real[0][0] == 0 and real[-1][1] == len(data)
        assert all(a[1] == b[0] for a, b in pairwise(real))


def test_byte_level_partial_characters_are_split_by_byte_length(toks):
    tok = toks["bpe"]
    ids, offs = byte_offsets(tok, "日")  # unseen: three single-byte tokens sharing one char span
    assert tok(["日"], return_offsets_mapping=True)["offset_mapping"][0] == [(0, 1)] * 3
    assert offs == [(0, 1), (1, 2), (2, 3)]


def test_trimmed_byte_level_offsets_are_recovered():
    # offsets that exclude a token's leading space ("Ġcat" reported as (1, 4) in " cat")
    assert char_to_byte_offsets(" cat", [(1, 4)], [4]) == [(0, 4)]
    assert char_to_byte_offsets("é", [(0, 1)], [None]) == [(0, 2)]


def test_byte_chunks_by_hand():
    # text "abcd": student "ab"|"cd", teacher "a"|"bc"|"d" -> one chunk; "a"|"b"|"cd" -> two
    student = [(0, 2), (2, 4)]
    assert byte_chunks(student, [(0, 1), (1, 3), (3, 4)]) == [((0, 2), (0, 3))]
    assert byte_chunks(student, [(0, 1), (1, 2), (2, 4)]) == [((0, 1), (0, 2)), ((1, 2), (2, 3))]
    assert byte_chunks([], [(0, 1)]) == []
    # teacher drops a trailing space: the leftover student token joins the last chunk
    assert byte_chunks([(0, 1), (1, 2)], [(0, 1)]) == [((0, 2), (0, 1))]
    # space variant: "a b": student "a"|" b", teacher "a"|" "|"b" -> boundary at 1 kept
    s, t = [(0, 1), (1, 3)], [(0, 1), (1, 2), (2, 3)]
    data = b"a b"
    fs, ft = starts_with_space(data, s), starts_with_space(data, t)
    assert fs == [False, True] and ft == [False, True, False]
    assert byte_chunks(s, t, fs, ft, "space") == [((0, 1), (0, 1)), ((1, 2), (1, 3))]
    assert byte_chunks(s, t, [False, False], ft, "space") == [((0, 2), (0, 3))]
    with pytest.raises(ValueError, match="variant"):
        byte_chunks(s, t, variant="bogus")


def test_byte_chunks_by_hand_with_multibyte_characters():
    # "é東" is 2 + 3 UTF-8 bytes. Student: é split into its two bytes, then 東 whole;
    # teacher: é whole, then 東 split into its three bytes. Common ends: bytes 2 and 5.
    assert "é東".encode() == b"\xc3\xa9\xe6\x9d\xb1"
    student = [(0, 1), (1, 2), (2, 5)]
    teacher = [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert byte_chunks(student, teacher) == [((0, 2), (0, 1)), ((2, 3), (1, 4))]


def running_ends(spans):
    out, run = [], -1
    for _, e in spans:
        run = max(run, e)
        out.append(run)
    return out


def check_chunks(chunks, s_offs, t_offs, data):
    # contiguous, complete tiling of both sequences
    assert chunks[0][0][0] == 0 and chunks[0][1][0] == 0
    assert chunks[-1][0][1] == len(s_offs) and chunks[-1][1][1] == len(t_offs)
    for (a, b) in pairwise(chunks):
        assert a[0][1] == b[0][0] and a[1][1] == b[1][0]
    run_s, run_t = running_ends(s_offs), running_ends(t_offs)
    for (j0, j1), (i0, i1) in chunks:
        assert j1 > j0 and i1 > i0
        s_real = [o for o in s_offs[j0:j1] if o[1] > o[0]]
        t_real = [o for o in t_offs[i0:i1] if o[1] > o[0]]
        # same bytes on both sides (both tokenizers are lossless)
        assert b"".join(data[s:e] for s, e in s_real) == b"".join(data[s:e] for s, e in t_real)
        assert run_s[j1 - 1] == run_t[i1 - 1]
    return run_s, run_t


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.lists(st.sampled_from([*"abc xyz.,\n\té—東京ïß…", "the ", "fox "]), min_size=1,
                    max_size=30).map("".join))
def test_chunks_cover_the_same_bytes_and_are_minimal(toks, text):
    data = text.encode()
    _, s_offs = byte_offsets(toks["bpe"], text)
    _, t_offs = byte_offsets(toks["unigram"], text)
    chunks = byte_chunks(s_offs, t_offs)
    run_s, run_t = check_chunks(chunks, s_offs, t_offs, data)
    # minimal: no common running end strictly inside a chunk (a finer split was possible)
    common = set(run_s) & set(run_t)
    for (j0, j1), (i0, i1) in chunks:
        inner_s = {run_s[j] for j in range(j0, j1 - 1)} - {run_s[j1 - 1]}
        inner_t = {run_t[i] for i in range(i0, i1 - 1)} - {run_t[i1 - 1]}
        assert not (inner_s & inner_t & common)
    # space chunks are unions of consecutive unconstrained chunks
    fs, ft = starts_with_space(data, s_offs), starts_with_space(data, t_offs)
    space = byte_chunks(s_offs, t_offs, fs, ft, "space")
    check_chunks(space, s_offs, t_offs, data)
    fine_ends = {(js[1], jt[1]) for js, jt in chunks}
    assert {(js[1], jt[1]) for js, jt in space} <= fine_ends
    for js, jt in space[1:]:  # every kept boundary is before word-initial tokens on both sides
        assert fs[js[0]] and ft[jt[0]]


def test_chunk_matrices_use_the_shifted_convention():
    chunks = [([0, 1], [0]), ([2, 3], [1, 2, 3])]
    a_s, a_t, mask = chunk_matrices([(chunks, [False, True]), ([], [])], 5, 4)
    assert a_s.shape == (2, 5, 2) and a_t.shape == (2, 4, 2) and mask.shape == (2, 2)
    # token 1 (in chunk 0) is predicted at position 0; token 0 at no position
    assert a_s[0, :, 0].tolist() == [True, False, False, False, False]
    assert a_s[0, :, 1].tolist() == [False, True, True, False, False]
    assert a_t[0, :, 1].tolist() == [True, True, True, False]
    assert not a_t[0, :, 0].any()
    assert mask.tolist() == [[False, True], [False, False]]
    assert not a_s[1].any() and not a_t[1].any()


def test_token_byte_lengths_know_byte_fallback_and_added_tokens(toks):
    tok = toks["bpe"]
    ids = tok("</s> the", add_special_tokens=False)["input_ids"]
    lengths = token_byte_lengths(tok, ids)
    assert ids[0] == tok.eos_token_id and lengths[0] is None
    assert all(n is not None for n in lengths[1:])
    assert token_byte_lengths(toks["unigram"], [tok.unk_token_id]) == [None]



def test_chunk_start_mask_marks_the_first_position_of_each_counted_chunk():
    import torch

    from datamodules.alignment import chunk_start_mask

    chunks = torch.zeros(1, 6, 3, dtype=torch.bool)
    chunks[0, 0:2, 0] = True  # chunk 0: positions 0-1 (not counted)
    chunks[0, 2:3, 1] = True  # chunk 1: position 2
    chunks[0, 3:6, 2] = True  # chunk 2: positions 3-5
    counted = torch.tensor([[False, True, True]])
    assert chunk_start_mask(chunks, counted).tolist() == [[False, False, True, True, False, False]]
    assert not chunk_start_mask(chunks, torch.zeros(1, 3, dtype=torch.bool)).any()


WORD_BREAKS = (" ", "\t", "\n", "\r")  # tokenkit's space+tab+newline (a vertical tab is not one)


def test_space_token_mask_marks_word_initial_and_special_tokens(tmp_path):
    from transformers import AutoTokenizer

    from datamodules.alignment import space_token_mask
    from datamodules.tokenizer_training import train_tokenizer

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the teacher learns\n\tnaïve café — 東京 the student\n" * 50, encoding="utf-8")
    for algorithm in ("bpe", "unigram"):
        tok = AutoTokenizer.from_pretrained(train_tokenizer([corpus], tmp_path / algorithm, 300, algorithm))
        mask = space_token_mask(tok)
        assert len(mask) == len(tok)
        for token_id in tok.all_special_ids:
            assert mask[token_id]
        for token_id in range(len(tok)):
            if token_id in tok.all_special_ids:
                continue
            text = tok.convert_tokens_to_string([tok.convert_ids_to_tokens(token_id)])
            # in context (after "x"), a word-initial token decodes with its leading whitespace
            in_context = tok.decode(tok("x", add_special_tokens=False)["input_ids"] + [token_id])
            piece = tok.convert_ids_to_tokens(token_id)
            if algorithm == "unigram":  # SentencePiece pieces spell the word break as "▁" (alone: a space)
                starts = piece[:1] in ("▁", *WORD_BREAKS)
            else:  # byte-level: decoded after another token, the text starts with the break
                starts = (in_context[1:2] or text[:1]) in WORD_BREAKS
            assert mask[token_id] == starts, (algorithm, token_id, text)
