"""A compact codec for one shard of cached top-k teacher log-probs: cache version 2, written by
``cache-teacher --logprob-dtype compact``.

Per position (``k`` entries, vocabulary ``V``) it stores

- the ids bit-packed with ``b = ceil(log2 V)`` bits each: ``ceil(k * b / 8)`` bytes;
- the top-1 log-prob as float32 (exact) and a per-position step ``s`` as float16;
- the other ``k - 1`` log-probs as uint8 codes ``c`` with ``lp ≈ top1 - c * s``; ``s`` is
  ``(top1 - lp_min) / 255`` rounded up to float16, so every code fits and the error of every
  decoded log-prob is at most ``s / 2`` (plus float32 rounding);
- the tail mass as float32 (exact).

At k = 128: V = 1,024 → 160 + 4 + 2 + 127 + 4 = 297 B/position (today's format: 516 B);
V = 128,256 (17-bit ids) → 272 + 137 = 409 B (today's: 772 B with int32 ids).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

CODE_LEVELS = 255


def id_bits(vocab_size: int) -> int:
    """Bits that hold every id of a ``vocab_size`` vocabulary (at least 1)."""
    return max(1, math.ceil(math.log2(vocab_size)))


def bytes_per_position(top_k: int, vocab_size: int) -> int:
    """Bytes one cached position takes in this codec."""
    return math.ceil(top_k * id_bits(vocab_size) / 8) + 4 + 2 + (top_k - 1) + 4


def pack_ids(ids: Tensor, vocab_size: int) -> Tensor:
    """Bit-pack ids ``[T, k]`` (each in ``[0, V)``) into uint8 ``[T, ceil(k * b / 8)]``."""
    bits = id_bits(vocab_size)
    t, k = ids.shape
    shifts = torch.arange(bits, dtype=torch.int64)
    flat = ((ids.to(torch.int64).unsqueeze(-1) >> shifts) & 1).reshape(t, k * bits)
    pad = (-flat.shape[1]) % 8
    flat = torch.nn.functional.pad(flat, (0, pad)).reshape(t, -1, 8)
    return (flat << torch.arange(8, dtype=torch.int64)).sum(-1).to(torch.uint8)


def unpack_ids(packed: Tensor, top_k: int, vocab_size: int) -> Tensor:
    """Inverse of :func:`pack_ids`: uint8 ``[T, nbytes]`` -> int64 ids ``[T, k]``."""
    bits = id_bits(vocab_size)
    t = packed.shape[0]
    flat = ((packed.to(torch.int64).unsqueeze(-1) >> torch.arange(8, dtype=torch.int64)) & 1).reshape(t, -1)
    flat = flat[:, :top_k * bits].reshape(t, top_k, bits)
    return (flat << torch.arange(bits, dtype=torch.int64)).sum(-1)


def encode_logprobs(logprobs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Quantise sorted (descending) log-probs ``[T, k]``.

    Returns:
        ``top1`` ``[T]`` float32, ``step`` ``[T]`` float16 and ``codes`` ``[T, k - 1]`` uint8.
    """
    lp = logprobs.float()
    top1 = lp[:, 0]
    span = (top1.unsqueeze(-1) - lp[:, 1:]).clamp_min(0)
    raw = (span.amax(-1) if span.shape[1] else torch.zeros_like(top1)) / CODE_LEVELS
    step = raw.to(torch.float16)
    # Round the step up in float16 so the largest delta still fits in CODE_LEVELS codes.
    low = step.float() < raw
    step[low] = torch.nextafter(step[low], torch.full_like(step[low], math.inf))
    s = step.float().clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(-1)
    codes = torch.round(span / s).clamp(0, CODE_LEVELS).to(torch.uint8)
    return top1, step, codes


def decode_logprobs(top1: Tensor, step: Tensor, codes: Tensor) -> Tensor:
    """Inverse of :func:`encode_logprobs`: float32 log-probs ``[T, k]``."""
    rest = top1.unsqueeze(-1) - codes.float() * step.float().unsqueeze(-1)
    return torch.cat([top1.unsqueeze(-1), rest], dim=-1)
