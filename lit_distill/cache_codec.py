"""Compact codecs for one shard of cached top-k teacher log-probs (``cache-teacher --logprob-dtype``).

Both bit-pack the ids with ``b = ceil(log2 V)`` bits each: ``ceil(k * b / 8)`` bytes per position
(bit ``j`` of id ``i`` is bit ``i * b + j`` of the row, least significant bit first in each byte).

``compact`` (cache version 2) stores the top-1 log-prob as float32 (exact), a per-position step
``s`` as float16 and the other ``k - 1`` log-probs as uint8 codes ``c`` with ``lp ≈ top1 - c * s``;
``s`` is ``(top1 - lp_k) / 255`` rounded up to float16, so every code fits and the error of every
decoded log-prob is at most ``s / 2`` (plus float32 rounding); the tail mass is float32 (exact).
At k = 128: 297 B/position at V = 1,024, 409 B at V = 128,256 (17-bit ids: 272 B alone).

``knots`` (cache version 4) fits LLM vocabularies in ≤ 300 B/position at k = 128. It stores the
top-1 log-prob, the step and the tail mass as float16, and uint8 codes (as above, relative to the
stored float16 top-1) only at ``K`` knot ranks spaced geometrically from 2 to k
(:func:`knot_ranks`; ``K = min(k - 1, max(16, ceil(k / 6)))``, 22 at k = 128). The log-probs of
the other ranks are linear in ``log(rank)`` between their two neighbouring knots. Sorted
log-probs of a language model fall roughly linearly in log-rank (Zipf), and the head ranks,
which carry most of the mass, are knots themselves (ranks 2-12 at k = 128). Per position:
``ceil(k * b / 8) + 2 + 2 + 2 + K`` bytes: 300 at k = 128, V = 128,256; 188 at V = 1,024.

Error bound of ``knots`` (derived; tested): with ``t`` the stored top-1 (``|t - lp_1| ≤
2^-11 |lp_1| + 2^-25``, float16 rounding), a knot rank's decoded value is within ``s / 2`` of its log-prob, or equals ``t``
when the log-prob lies above ``t``. A rank ``r`` strictly between knots ``a < r < b`` lies, as do
the data, between its knots' values, so its error is at most ``lp_a - lp_b + s / 2 + |t - lp_1|``:
the drop of the true curve across that knot interval plus the quantisation. Every decoded
log-prob is ≤ the decoded top-1, and each row is sorted descending (non-increasing).
The tail mass is rounded to float16 (relative error ≤ 2^-11 above 2^-14, absolute ≤ 2^-25
below); the decoded ``Σ p + tail`` differs from 1 by at most what these bounds allow (no
renormalisation, as for float16 caches: the sparse loss's gradient targets ``p / Σ``).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

CODE_LEVELS = 255
COMPACT = "compact"
KNOTS = "knots"
# A log-prob more than this far below the top-1 (e.g. -inf: a token the teacher never emits)
# is stored as this far below it: float16's largest step times the code range, exp() = 0.
_MAX_SPAN = CODE_LEVELS * 65504.0


def id_bits(vocab_size: int) -> int:
    """Bits that hold every id of a ``vocab_size`` vocabulary (at least 1)."""
    return max(1, math.ceil(math.log2(vocab_size)))


def num_knots(top_k: int) -> int:
    """How many ranks after the first the ``knots`` codec stores: ``min(k - 1, max(16, ceil(k / 6)))``."""
    return min(top_k - 1, max(16, math.ceil(top_k / 6)))


@functools.lru_cache(maxsize=64)
def knot_ranks(top_k: int) -> tuple[int, ...]:
    """The 1-based ranks the ``knots`` codec stores codes for: geometric from 2 to ``top_k``
    (rounded, strictly increasing; every rank from 2 when ``K = k - 1``); empty at k = 1."""
    count = num_knots(top_k)
    ranks, previous = [], 1
    for j in range(1, count + 1):
        rank = round(math.exp(math.log(top_k) * j / count))
        rank = min(max(rank, previous + 1), top_k - (count - j))
        ranks.append(rank)
        previous = rank
    return tuple(ranks)


def bytes_per_position(top_k: int, vocab_size: int, encoding: str = COMPACT) -> int:
    """Bytes one cached position takes in ``encoding`` (``compact`` or ``knots``), tail mass included."""
    ids = math.ceil(top_k * id_bits(vocab_size) / 8)
    if encoding == KNOTS:
        return ids + 2 + 2 + num_knots(top_k) + 2
    if encoding == COMPACT:
        return ids + 4 + 2 + (top_k - 1) + 4
    raise ValueError(f"encoding must be '{COMPACT}' or '{KNOTS}', got {encoding!r}")


def pack_ids(ids: Tensor, vocab_size: int) -> Tensor:
    """Bit-pack ids ``[T, k]`` (each in ``[0, V)``) into uint8 ``[T, ceil(k * b / 8)]``."""
    bits = id_bits(vocab_size)
    t, k = ids.shape
    little = ids.numpy().astype("<u4").reshape(t, k, 1).view(np.uint8)  # [T, k, 4], low byte first
    flat = np.unpackbits(little, axis=-1, bitorder="little")[..., :bits].reshape(t, k * bits)
    return torch.from_numpy(np.packbits(flat, axis=-1, bitorder="little"))


def unpack_ids(packed: Tensor, top_k: int, vocab_size: int) -> Tensor:
    """Inverse of :func:`pack_ids`: uint8 ``[T, nbytes]`` -> int64 ids ``[T, k]``."""
    bits = id_bits(vocab_size)
    t = packed.shape[0]
    flat = np.unpackbits(packed.numpy(), axis=-1, count=top_k * bits, bitorder="little").reshape(t, top_k, bits)
    wide = np.zeros((t, top_k, 32), dtype=np.uint8)
    wide[..., :bits] = flat
    words = np.packbits(wide, axis=-1, bitorder="little").view("<u4")[..., 0]
    return torch.from_numpy(words.astype(np.int64))


def _codes(top1: Tensor, values: Tensor, span: Tensor) -> tuple[Tensor, Tensor]:
    """The float16 step (``span / 255`` rounded up) ``[T]`` and uint8 codes of ``values`` ``[T, m]``
    below ``top1`` ``[T]`` (float64 arithmetic, so only the step's float16 rounding is lossy)."""
    raw = span.clamp(0, _MAX_SPAN) / CODE_LEVELS
    step = raw.to(torch.float16)
    # Round the step up in float16 so the largest delta still fits in CODE_LEVELS codes.
    low = step.double() < raw
    step[low] = torch.nextafter(step[low], torch.full_like(step[low], math.inf))
    s = step.double().clamp_min(torch.finfo(torch.float64).tiny).unsqueeze(-1)
    delta = (top1.unsqueeze(-1) - values).clamp(0, _MAX_SPAN)
    return step, torch.round(delta / s).clamp(0, CODE_LEVELS).to(torch.uint8)


def encode_logprobs(logprobs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``compact``: quantise sorted (descending) log-probs ``[T, k]``.

    Returns:
        ``top1`` ``[T]`` float32, ``step`` ``[T]`` float16 and ``codes`` ``[T, k - 1]`` uint8.
    """
    lp = logprobs.float()
    top1 = lp[:, 0]
    wide = lp.double()
    span = (top1.double() - wide[:, -1]) if lp.shape[1] > 1 else torch.zeros_like(top1, dtype=torch.float64)
    step, codes = _codes(top1.double(), wide[:, 1:], span)
    return top1, step, codes


def decode_logprobs(top1: Tensor, step: Tensor, codes: Tensor) -> Tensor:
    """Inverse of :func:`encode_logprobs`: float32 log-probs ``[T, k]``."""
    rest = top1.unsqueeze(-1) - codes.float() * step.float().unsqueeze(-1)
    return torch.cat([top1.unsqueeze(-1), rest], dim=-1)


def encode_knots(logprobs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``knots``: sorted (descending) log-probs ``[T, k]`` -> the stored float16 top-1 ``[T]``, the
    float16 step ``[T]`` and the uint8 codes ``[T, K]`` of the ranks :func:`knot_ranks` names."""
    lp = logprobs.double()
    top1 = lp[:, 0].to(torch.float16)
    ranks = torch.tensor(knot_ranks(lp.shape[1]), dtype=torch.long) - 1
    if not len(ranks):
        return top1, torch.zeros_like(top1), torch.zeros(lp.shape[0], 0, dtype=torch.uint8)
    stored = top1.double()
    step, codes = _codes(stored, lp[:, ranks], stored - lp[:, -1])
    return top1, step, codes


@functools.lru_cache(maxsize=64)
def _interpolation(top_k: int, ranks: tuple[int, ...]) -> Tensor:
    """``W`` ``[1 + K, k]`` float32: decoded log-probs = knot values ``[T, 1 + K]`` @ ``W``,
    linear in log(rank) between neighbouring knots (rank 1 and ``ranks``)."""
    knots = torch.tensor([1, *ranks], dtype=torch.float64)
    weights = torch.zeros(len(knots), top_k, dtype=torch.float64)
    if len(knots) == 1:
        weights[0] = 1.0
        return weights.float()
    x = torch.arange(1, top_k + 1, dtype=torch.float64).log()
    right = torch.searchsorted(knots.log(), x, right=False).clamp(1, len(knots) - 1)
    left = right - 1
    frac = ((x - knots.log()[left]) / (knots.log()[right] - knots.log()[left])).clamp(0, 1)
    columns = torch.arange(top_k)
    weights[left, columns] += 1 - frac
    weights[right, columns] += frac
    return weights.float()


def decode_knots(top1: Tensor, step: Tensor, codes: Tensor, top_k: int, ranks: tuple[int, ...] | None = None
                 ) -> Tensor:
    """Inverse of :func:`encode_knots`: float32 log-probs ``[T, k]``, sorted descending.

    Args:
        top1: ``[T]`` the stored top-1 log-probs.
        step: ``[T]`` float16 steps.
        codes: ``[T, K]`` uint8 codes of the knot ranks.
        top_k: k.
        ranks: the knot ranks the shard was written with (default :func:`knot_ranks`).
    """
    ranks = knot_ranks(top_k) if ranks is None else tuple(ranks)
    head = top1.float().unsqueeze(-1)
    values = torch.cat([head, head - codes.float() * step.float().unsqueeze(-1)], dim=-1)
    decoded = values @ _interpolation(top_k, ranks)
    # A convex combination of sorted values is sorted; cummin removes float32 rounding's last-ulp wiggles.
    return decoded.cummin(dim=-1).values.minimum(head)


def encode_shard(ids: Tensor, log_p: Tensor, tail: Tensor, encoding: str, vocab_size: int) -> dict[str, Tensor]:
    """A shard's tensors in ``compact`` or ``knots``: ids ``[T, k]``, sorted log-probs ``[T, k]``, tail ``[T]``."""
    packed = pack_ids(ids, vocab_size).contiguous()
    if encoding == COMPACT:
        top1, step, codes = encode_logprobs(log_p)
        tail = tail.float()
        extra = {}
    elif encoding == KNOTS:
        top1, step, codes = encode_knots(log_p)
        tail = tail.to(torch.float16)
        extra = {"knot_ranks": torch.tensor(knot_ranks(log_p.shape[1]), dtype=torch.int32)}
    else:
        raise ValueError(f"encoding must be '{COMPACT}' or '{KNOTS}', got {encoding!r}")
    return {"packed_ids": packed, "top1_logprob": top1.contiguous(), "logprob_step": step.contiguous(),
            "logprob_codes": codes.contiguous(), "tail_mass": tail.contiguous(), **extra}


def decode_rows(handle, rows: slice, encoding: str, top_k: int, vocab_size: int) -> tuple[Tensor, Tensor]:
    """Ids ``[n, k]`` int64 and float32 log-probs ``[n, k]`` of ``rows`` of an open shard (safetensors
    ``safe_open``) written by :func:`encode_shard`."""
    ids = unpack_ids(handle.get_slice("packed_ids")[rows], top_k, vocab_size)
    coded = [handle.get_slice(name)[rows] for name in ("top1_logprob", "logprob_step", "logprob_codes")]
    if encoding == COMPACT:
        return ids, decode_logprobs(*coded)
    return ids, decode_knots(*coded, top_k, tuple(handle.get_tensor("knot_ranks").tolist()))
