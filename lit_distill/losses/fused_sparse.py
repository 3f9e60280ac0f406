"""Sparse forward KL against a cached teacher, from the student's hidden states × LM head.

The offline cache (``python -m lit_distill cache-teacher``) holds the teacher's top-k
log-probs and tail mass, so the teacher never runs; with a student that runs with
``compute_logits: false`` the student never builds its ``[tokens, V]`` logits either.
:func:`fused_sparse_forward_kl` equals
``sparse_forward_kl(student_hidden @ student_weight.T + student_bias, ...)`` (the collapsed
KL of :mod:`lit_distill.losses.sparse`, same mask, temperature and token-mean reduction) in
value and in its gradient with respect to the hidden states, head weight and bias, holding
one ``[chunk_size, V]`` chunk of logits at a time (the chunk loop and its gradient buffers
are those of :mod:`lit_distill.losses.fused`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from lit_distill.contracts import LossTerm
from lit_distill.losses.fused import _check, _fused_sum
from lit_distill.losses.fused_terms import check_chunking
from lit_distill.losses.sparse import _sparse_sum, check_cache_temperature, check_sparse_teacher

__all__ = ["FusedSparseForwardKL", "fused_sparse_forward_kl"]


def fused_sparse_forward_kl(student_hidden: Tensor, student_weight: Tensor, topk_ids: Tensor,
                            topk_logprobs: Tensor, tail_mass: Tensor, mask: Tensor | None = None,
                            temperature: float = 1.0, chunk_size: int = 256,
                            student_bias: Tensor | None = None) -> Tensor:
    """Forward KL from a sparse (cached) teacher to the logits ``h Wᵀ + b``, without full logits.

    Args:
        student_hidden: ``[..., D]`` the student's last hidden states (after its final norm).
        student_weight: ``[V, D]`` the student's LM head weight.
        topk_ids: ``[..., k]`` integer ids of the teacher's top k (distinct per position).
        topk_logprobs: ``[..., k]`` the teacher's log-probs of those ids (at ``temperature``).
        tail_mass: ``[...]`` the teacher's probability outside the top k.
        mask: optional bool ``[...]``, True where a position counts.
        temperature: divides the student's logits; the result is multiplied by its square.
        chunk_size: positions whose logits exist at once (memory ∝ chunk_size · V).
        student_bias: optional ``[V]`` LM head bias.

    Returns:
        0-dim tensor, float32 (float64 if the hidden states, head or log-probs are float64): the
        per-position collapsed KL averaged over valid positions, times ``temperature**2``.

    Raises:
        ValueError: shapes that do not fit, k > V, a non-bool mask, temperature <= 0, or a
            chunk_size that is not a positive int.
    """
    temperature = float(temperature)
    _check(student_hidden, student_weight, student_bias, student_hidden, student_weight, None, None, temperature,
           chunk_size)
    check_sparse_teacher(tuple(student_hidden.shape[:-1]), student_weight.shape[0], topk_ids, topk_logprobs,
                         tail_mass, mask, temperature)
    wide = torch.float64 in (student_hidden.dtype, student_weight.dtype, topk_logprobs.dtype)
    dtype = torch.float64 if wide else torch.float32
    k = topk_ids.shape[-1]
    hs = student_hidden.reshape(-1, student_hidden.shape[-1])  # [N, D]
    ids = topk_ids.reshape(-1, k).long()  # [N, k]
    log_p = topk_logprobs.reshape(-1, k).to(dtype)
    tail = tail_mass.reshape(-1).to(dtype)
    m = None if mask is None else mask.reshape(-1)

    def chunk_value(z_s: Tensor, rows: slice, m_rows: Tensor | None) -> Tensor:
        return _sparse_sum(z_s, ids[rows], log_p[rows], tail[rows], m_rows, temperature, dtype)

    total = _fused_sum(chunk_value, hs, student_weight, student_bias, m, dtype, chunk_size)
    count = max(hs.shape[0], 1) if m is None else m.sum().clamp_min(1)
    return total / count * temperature**2


class FusedSparseForwardKL(LossTerm):
    """Forward KL against the cached teacher from hidden states × LM head (:func:`fused_sparse_forward_kl`).

    The cache's rows come from the batch (``datamodules.CachedTeacherDataModule``), so the
    module's teacher can be null; the student runs with ``compute_logits: false``
    (``HFModel``/``HFCausalLM`` then return ``last_hidden_state`` and ``lm_head.weight``, and
    ``lm_head.bias`` when the head has one; a missing bias source means no bias). Pair it with
    ``FusedCrossEntropy`` for the supervised term.

    Args:
        temperature: divides the student's logits, result times its square; must equal the
            temperature the cache was written at (``cache-teacher --temperature``).
        chunk_size: positions whose logits exist at once (memory ∝ chunk_size × V).
        weight: multiplier of this term in the total loss.
        sources: overrides of where the hidden states, head, cached teacher, mask and the cache's
            temperature come from.
    """

    default_sources: ClassVar[dict[str, str]] = {
        "student_hidden": "student.features.last_hidden_state",
        "student_weight": "student.features.lm_head.weight", "student_bias": "student.features.lm_head.bias",
        "topk_ids": "batch.teacher_topk_ids", "topk_logprobs": "batch.teacher_topk_logprobs",
        "tail_mass": "batch.teacher_tail_mass", "mask": "batch.loss_mask",
        "cache_temperature": "batch.teacher_temperature"}

    def __init__(self, temperature: float = 1.0, chunk_size: int = 256, weight: float = 1.0,
                 sources: dict[str, str] | None = None) -> None:
        super().__init__(weight, sources)
        check_chunking("FusedSparseForwardKL", chunk_size, temperature)
        self.temperature = float(temperature)
        self.chunk_size = chunk_size

    def forward(self, student_hidden: Tensor, student_weight: Tensor, topk_ids: Tensor, topk_logprobs: Tensor,
                tail_mass: Tensor, mask: Tensor | None = None, student_bias: Tensor | None = None,
                cache_temperature: float | None = None) -> Tensor:
        """``cache_temperature``: the temperature the cache was written at (the cached datamodule's
        ``teacher_temperature``); another term temperature is a ConfigError."""
        check_cache_temperature("FusedSparseForwardKL", self.temperature, cache_temperature)
        return fused_sparse_forward_kl(student_hidden, student_weight, topk_ids, topk_logprobs, tail_mass, mask,
                                       self.temperature, self.chunk_size, student_bias)
