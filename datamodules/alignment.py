"""Byte-level alignment of two tokenizations of the same text (for cross-tokenizer distillation).

Pure Python helpers (torch is imported only by :func:`chunk_matrices`):

* :func:`token_byte_lengths` / :func:`char_to_byte_offsets`: UTF-8 byte offsets of every token
  from a fast tokenizer's *character* ``offset_mapping``. Hugging Face fast tokenizers report
  character offsets for every model, byte-level BPE included: a byte-level token that holds only
  part of a multi-byte character gets the offsets of the whole character (e.g. the three byte
  tokens of ``"東"`` all get ``(k, k + 1)``), and two neighbouring tokens can share a character.
  Those tokens are placed with their exact byte length (from the byte-to-unicode table, or
  ``<0xNN>`` byte-fallback pieces) after the previous token. Any other token whose span starts
  where the next token's span starts stands for no text of its own (the ``"▁"`` that Metaspace
  prepends gets the span of the first character): it gets an empty span at that start.
* :func:`byte_chunks`: ALM chunks (tokenkit's ``unconstrained`` and ``space`` variants).
* :func:`chunk_matrices`: the boolean chunk tensors of a batch, in the shifted-label convention.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

Span = tuple[int, int]
Chunk = tuple[Span, Span]  # ((student j0, j1), (teacher i0, i1)), token index ranges
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_ASCII_SPACE = re.compile(rb"[ \t\n\r\x0b\x0c]")


@lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode`` table used by byte-level BPE vocabularies."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    extra = (b for b in range(256) if b not in keep)
    table = {chr(b): b for b in keep}
    table.update({chr(256 + n): b for n, b in enumerate(extra)})
    return table


def is_byte_level(tok) -> bool:
    """Whether a fast tokenizer's pipeline uses a ``ByteLevel`` pre-tokenizer or decoder."""
    spec = json.loads(tok.backend_tokenizer.to_str())
    parts = json.dumps([spec.get("pre_tokenizer"), spec.get("decoder")]).replace(" ", "")
    return '"type":"ByteLevel"' in parts


def token_byte_lengths(
    tok, ids: Sequence[int], byte_level: bool | None = None, added_ids: set[int] | None = None
) -> list[int | None]:
    """Exact UTF-8 length of tokens whose bytes are known from the vocabulary, else None.

    Known: every piece of a byte-level vocabulary and ``<0xNN>`` byte-fallback pieces. Added
    tokens (special tokens included) are None, so their character offsets are used.

    Args:
        tok: A Hugging Face fast tokenizer.
        ids: Token ids.
        byte_level: Whether ``tok`` is byte-level (:func:`is_byte_level` if None).
        added_ids: Ids of the added tokens (from ``tok.get_added_vocab()`` if None).
    """
    if byte_level is None:
        byte_level = is_byte_level(tok)
    if added_ids is None:
        added_ids = set(tok.get_added_vocab().values())
    chars = _byte_chars()
    out: list[int | None] = []
    for i, piece in zip(ids, tok.convert_ids_to_tokens(list(ids)), strict=True):
        if i in added_ids:
            out.append(None)
        elif byte_level and chars.issuperset(piece):
            out.append(len(piece))
        elif len(piece) == 6 and _BYTE_FALLBACK.fullmatch(piece):
            out.append(1)
        else:
            out.append(None)
    return out


_SPACE_BYTES = frozenset(b" \t\n\r")


def space_token_mask(tok) -> list[bool]:
    """Per token id of ``tok`` (``len(tok)`` ids): whether it starts a new word.

    True for a token whose text starts with a space, tab or newline (byte-level ``Ġ``/``Ċ``,
    SentencePiece ``▁``, a ``<0x20>``-style byte-fallback piece) and for added/special tokens
    (EOS ends a word as well): tokenkit's ``space+tab+newline+special`` mask, which ALM's
    debiasing sums the next-token probability over.
    """
    added = set(tok.get_added_vocab().values()) | set(tok.all_special_ids)
    byte_level = is_byte_level(tok)
    to_byte = unicode_to_byte()
    mask = []
    for i, piece in enumerate(tok.convert_ids_to_tokens(list(range(len(tok))))):
        if i in added or piece is None:
            mask.append(i in added)
        elif len(piece) == 6 and _BYTE_FALLBACK.fullmatch(piece):
            mask.append(int(piece[3:5], 16) in _SPACE_BYTES)
        elif byte_level:
            mask.append(bool(piece) and to_byte.get(piece[0]) in _SPACE_BYTES)
        else:
            mask.append(piece[:1] in ("▁", " ", "\t", "\n", "\r"))
    return mask


@lru_cache(maxsize=1)
def _byte_chars() -> frozenset[str]:
    return frozenset(unicode_to_byte())


def char_to_byte_offsets(
    text: str, offsets: Sequence[Span], byte_lengths: Sequence[int | None] | None = None
) -> list[Span]:
    """UTF-8 byte ``(start, end)`` of each token from character offsets into ``text``.

    Args:
        text: The string that was encoded.
        offsets: The tokenizer's ``offset_mapping`` (character offsets), one per token.
        byte_lengths: Exact byte length per token, or None where unknown
            (see :func:`token_byte_lengths`); None for all tokens if omitted.

    Returns:
        Byte offsets into ``text.encode("utf-8")``; tokens that stand for no text of their own
        (e.g. a prepended ``"▁"``) get an empty span.
    """
    pos = [0] * (len(text) + 1)
    for k, ch in enumerate(text):
        pos[k + 1] = pos[k] + len(ch.encode("utf-8"))
    lengths = byte_lengths if byte_lengths is not None else [None] * len(offsets)
    out: list[Span] = []
    cursor = 0
    for k, ((s, e), n) in enumerate(zip(offsets, lengths, strict=True)):
        bs, be = pos[s], pos[e]
        if n is not None:
            start = max(cursor, bs)
            if start + n > be:  # offsets trimmed of a leading space (trim_offsets)
                start = max(be - n, 0)
            out.append((start, start + n))
            cursor = start + n
            continue
        following = offsets[k + 1] if k + 1 < len(offsets) else None
        if following is not None and following[0] == s and e > s:
            out.append((bs, bs))  # e.g. Metaspace's prepended "▁" gets the next token's start
        else:
            out.append((bs, be))
            cursor = be
    return out


def _closing(spans: Sequence[Span], boundaries: set[int]) -> dict[int, int]:
    """Boundary position -> index of the first token whose running byte end reaches it."""
    closes: dict[int, int] = {}
    run = -1
    for j, (_, e) in enumerate(spans):
        run = max(run, e)
        if run in boundaries and run not in closes:
            closes[run] = j
    return closes


def _running_ends(spans: Sequence[Span]) -> set[int]:
    ends, run = set(), -1
    for _, e in spans:
        run = max(run, e)
        ends.add(run)
    return ends


def byte_chunks(
    student_offsets: Sequence[Span],
    teacher_offsets: Sequence[Span],
    student_starts_with_space: Sequence[bool] | None = None,
    teacher_starts_with_space: Sequence[bool] | None = None,
    variant: Literal["unconstrained", "space"] = "unconstrained",
) -> list[Chunk]:
    """ALM chunks: token ranges of both sides that end at the same byte.

    Walking both sequences, a chunk is closed at every byte position where the running end of
    the student tokens equals the running end of the teacher tokens (``unconstrained``: the
    minimal chunks). A token that does not move the running end past a boundary (an empty span)
    starts the next chunk. Tokens after the last common boundary form the last chunk (they are
    merged into the previous chunk when only one side has such tokens). ``space`` merges
    consecutive unconstrained chunks, keeping a boundary only where the next token starts with
    whitespace on *both* sides, so its chunks are unions of unconstrained chunks.

    Args:
        student_offsets: Byte ``(start, end)`` of each student token, in order (no special tokens).
        teacher_offsets: The same for the teacher; both over the same text.
        student_starts_with_space: Per student token, whether it starts a whitespace-separated
            word (needed by ``space`` only).
        teacher_starts_with_space: The same for the teacher.
        variant: ``"unconstrained"`` or ``"space"``.

    Returns:
        ``[((j0, j1), (i0, i1)), ...]``: student tokens ``j0:j1`` and teacher tokens ``i0:i1``
        per chunk, covering both sequences contiguously; ``[]`` if a side has no tokens.
    """
    if variant not in ("unconstrained", "space"):
        raise ValueError(f"unknown alignment variant {variant!r}; expected 'unconstrained' or 'space'")
    if not student_offsets or not teacher_offsets:
        return []
    first = max(student_offsets[0][0], teacher_offsets[0][0])
    common = {p for p in _running_ends(student_offsets) & _running_ends(teacher_offsets) if p > first}
    close_s, close_t = _closing(student_offsets, common), _closing(teacher_offsets, common)
    chunks: list[Chunk] = []
    j0 = i0 = 0
    for p in sorted(common):
        j1, i1 = close_s[p] + 1, close_t[p] + 1
        chunks.append(((j0, j1), (i0, i1)))
        j0, i0 = j1, i1
    ns, nt = len(student_offsets), len(teacher_offsets)
    if j0 < ns or i0 < nt:  # leftovers after the last common boundary
        if chunks and (j0 == ns or i0 == nt):
            (a, _), (b, _) = chunks.pop()
            chunks.append(((a, ns), (b, nt)))
        else:
            chunks.append(((j0, ns), (i0, nt)))
    if variant == "unconstrained":
        return chunks
    if student_starts_with_space is None or teacher_starts_with_space is None:
        raise ValueError("the 'space' variant needs student/teacher_starts_with_space")
    merged = [chunks[0]]
    for (js, jt) in chunks[1:]:
        if student_starts_with_space[js[0]] and teacher_starts_with_space[jt[0]]:
            merged.append((js, jt))
        else:
            (a, _), (b, _) = merged.pop()
            merged.append(((a, js[1]), (b, jt[1])))
    return merged


def starts_with_space(data: bytes, spans: Sequence[Span]) -> list[bool]:
    """Whether each token starts a word: ASCII whitespace between the previous token's end and its start.

    Looks at ``data[prev_end : start + 1]`` (``prev_end`` = running end of the earlier tokens),
    so a token that begins with a space (``"Ġcat"``, ``"▁cat"``) and a token preceded by
    whitespace that the tokenizer dropped (WordPiece's ``"cat"``) both count.
    """
    out, run = [], 0
    for s, e in spans:
        out.append(e > s and _ASCII_SPACE.search(data, min(run, s), s + 1) is not None)
        run = max(run, e)
    return out


def chunk_matrices(
    samples: Sequence[tuple[Sequence[tuple[Sequence[int], Sequence[int]]], Sequence[bool]]],
    student_len: int,
    teacher_len: int,
):
    """Boolean chunk tensors of a batch in the shifted convention.

    Args:
        samples: Per sample, its chunks as ``(student input positions, teacher input positions)``
            and whether each chunk counts.
        student_len: ``Ls`` (padded student length).
        teacher_len: ``Lt`` (padded teacher length).

    Returns:
        ``(student [B, Ls, C], teacher [B, Lt, C], mask [B, C])`` with ``C`` the most chunks of a
        sample (at least 1). ``student[b, t, c]`` is True when input token ``t + 1`` (the target
        of position ``t``) is in chunk ``c``; an input token at position 0 predicts nothing and is
        marked nowhere.
    """
    import torch

    n_chunks = max([len(ch) for ch, _ in samples] + [1])
    a_s = torch.zeros(len(samples), student_len, n_chunks, dtype=torch.bool)
    a_t = torch.zeros(len(samples), teacher_len, n_chunks, dtype=torch.bool)
    mask = torch.zeros(len(samples), n_chunks, dtype=torch.bool)
    for b, (chunks, counted) in enumerate(samples):
        for c, (s_pos, t_pos) in enumerate(chunks):
            a_s[b, [p - 1 for p in s_pos if p > 0], c] = True
            a_t[b, [p - 1 for p in t_pos if p > 0], c] = True
            mask[b, c] = bool(counted[c])
    return a_s, a_t, mask


__all__ = [
    "byte_chunks",
    "char_to_byte_offsets",
    "chunk_matrices",
    "is_byte_level",
    "starts_with_space",
    "token_byte_lengths",
    "unicode_to_byte",
]


def chunk_start_mask(chunks, chunk_mask):
    """Positions that predict the first token of each counted chunk, ``[B, L]`` bool.

    Both models have read exactly the same bytes before a chunk starts, so these
    positions are the ones whose next-token distributions are conditioned on the same
    text: the i-th True student position and the i-th True teacher position belong to
    the same chunk (chunks are numbered left to right). Used for ULD's byte alignment.

    Args:
        chunks: ``[B, L, C]`` bool, shifted convention (position t predicts a token of chunk c).
        chunk_mask: ``[B, C]`` bool, which chunks count.
    """
    import torch

    batch, length, _ = chunks.shape
    positions = torch.arange(length).view(1, length, 1).expand_as(chunks)
    first = torch.where(chunks, positions, length).amin(dim=1)  # [B, C]; length = empty chunk
    first = torch.where(chunk_mask & (first < length), first, length)
    mask = torch.zeros(batch, length + 1, dtype=torch.bool)
    mask.scatter_(1, first, True)
    return mask[:, :length]
