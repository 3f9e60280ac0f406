"""Divergences against a sparse teacher: its top-k log-probabilities plus the tail mass.

This is the form an offline teacher cache stores (``python -m lit_distill cache-teacher``,
served by ``datamodules.CachedTeacherDataModule``): per position the ids ``I`` of the
teacher's ``k`` most probable tokens, their log-probabilities ``log p_i`` and the
tail mass ``p_tail = 1 − Σ_{i∈I} p_i``.

Sparse forward KL. Both distributions are collapsed onto the same ``k + 1`` bins: the
``k`` cached tokens one by one, and everything else as one "tail" bin. With the student
``q = softmax(z / T)``, ``q_i`` for ``i ∈ I`` and ``q_tail = Σ_{v∉I} q_v`` (computed as
``exp(logsumexp_{v∉I} log q_v)``, so a tiny tail keeps its precision), per position::

    KL_k = Σ_{i∈I} p_i (log p_i − log q_i) + p_tail (log p_tail − log q_tail)

with ``0 · log 0 = 0``. Reduction as in :mod:`lit_distill.losses.divergences`: the sum
over positions where ``mask`` is True divided by their number, times ``T²``.

Properties:

- ``k = V`` (``I`` is a permutation of the vocabulary): ``p_tail = 0`` and the tail term
  vanishes, and the first sum runs over every token once, so ``KL_k`` equals the dense
  ``forward_kl`` exactly (tested).
- For ``k < V`` it is the KL divergence between the collapsed distributions, so by the
  data-processing inequality ``0 ≤ KL_k ≤ KL(p ‖ q)``; the gap is the tail-restricted
  divergence ``p_tail · KL(p(·|tail) ‖ q(·|tail))``, small when the tail is light.
- Its gradient w.r.t. the student's (temperature-scaled) logits is ``q_v − p_v`` for
  ``v ∈ I`` and ``q_v (1 − p_tail / q_tail)`` outside ``I``: the student is pushed to put
  the tail's total mass outside ``I``, spread like its own current distribution.

The teacher's log-probs are taken as given (they come from the cache, computed at the
cache's temperature; use the same ``temperature`` here). Stored in float16/bfloat16,
``Σ p_i + p_tail`` is 1 only up to that rounding; the formula does not renormalise.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lit_distill.contracts import LossTerm
from lit_distill.errors import ConfigError

__all__ = ["sparse_forward_kl", "SparseForwardKL"]

_LOG_FLOOR = -1.0e30


def check_sparse_teacher(lead: tuple[int, ...], vocab_size: int, topk_ids: Tensor, topk_logprobs: Tensor,
                         tail_mass: Tensor, mask: Tensor | None, temperature: float) -> None:
    """ValueError unless the sparse teacher fits student positions of shape ``lead`` over ``vocab_size`` ids."""
    if topk_ids.is_floating_point() or tuple(topk_ids.shape[:-1]) != lead:
        raise ValueError(f"topk_ids must be integer [..., k] with the logits' leading shape {lead}, got "
                         f"{topk_ids.dtype} {tuple(topk_ids.shape)}")
    if tuple(topk_logprobs.shape) != tuple(topk_ids.shape) or not topk_logprobs.is_floating_point():
        raise ValueError(f"topk_logprobs must be floating point with topk_ids' shape {tuple(topk_ids.shape)}, "
                         f"got {topk_logprobs.dtype} {tuple(topk_logprobs.shape)}")
    if topk_ids.shape[-1] > vocab_size:
        raise ValueError(f"k = {topk_ids.shape[-1]} exceeds the student's vocabulary V = {vocab_size}")
    if tuple(tail_mass.shape) != lead:
        raise ValueError(f"tail_mass must have the logits' leading shape {lead}, got {tuple(tail_mass.shape)}")
    if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != lead):
        raise ValueError(f"mask must be a bool tensor of shape {lead}, got {mask.dtype} {tuple(mask.shape)}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")


def sparse_forward_kl(student_logits: Tensor, topk_ids: Tensor, topk_logprobs: Tensor, tail_mass: Tensor,
                      mask: Tensor | None = None, temperature: float = 1.0,
                      chunk_size: int | None = None) -> Tensor:
    """Forward KL from a sparse teacher (top-k log-probs + tail mass), tail as one extra bin.

    See the module docstring for the formula, its relation to the dense forward KL
    (equal at k = V, a lower bound below) and its gradient.

    Args:
        student_logits: ``[..., V]`` student logits (any float dtype; computed in float32,
            float64 for float64 inputs).
        topk_ids: ``[..., k]`` integer token ids of the teacher's top k (any integer dtype,
            e.g. the cache's uint16); distinct within a position.
        topk_logprobs: ``[..., k]`` the teacher's log-probabilities of those ids.
        tail_mass: ``[...]`` the teacher's probability outside the top k, in [0, 1].
        mask: optional bool ``[...]``, True where a position counts; masked-out rows (their
            ids, log-probs and logits included) reach neither value nor gradient.
        temperature: divides the student's logits (the teacher's log-probs must come from
            the same temperature); the result is multiplied by ``temperature**2``.
        chunk_size: if set, process this many positions at a time (same value and
            gradient; the float32 intermediates are ``[chunk_size, V]`` instead of ``[N, V]``).

    Returns:
        0-dim tensor: the per-position divergence averaged over valid positions, times
        ``temperature**2``; 0 if no position is valid.

    Raises:
        ValueError: shapes that do not fit, k > V, a non-bool mask, temperature <= 0, or a
            chunk_size that is not a positive int.
    """
    temperature = float(temperature)
    if student_logits.dim() < 1 or not student_logits.is_floating_point() or not student_logits.shape[-1]:
        raise ValueError(f"student_logits must be floating point [..., V] with V > 0, got "
                         f"{student_logits.dtype} {tuple(student_logits.shape)}")
    check_sparse_teacher(tuple(student_logits.shape[:-1]), student_logits.shape[-1], topk_ids, topk_logprobs,
                         tail_mass, mask, temperature)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size <= 0):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    wide = torch.float64 in (student_logits.dtype, topk_logprobs.dtype)
    dtype = torch.float64 if wide else torch.float32
    v, k = student_logits.shape[-1], topk_ids.shape[-1]
    z = student_logits.reshape(-1, v)
    ids = topk_ids.reshape(-1, k).long()
    log_p = topk_logprobs.reshape(-1, k).to(dtype)
    tail = tail_mass.reshape(-1).to(dtype)
    m = None if mask is None else mask.reshape(-1)
    if chunk_size is None:
        total = _sparse_sum(z, ids, log_p, tail, m, temperature, dtype)
    elif torch.is_grad_enabled() and z.requires_grad:
        total = _SparseChunkedSum.apply(z, ids, log_p, tail, m, temperature, dtype, chunk_size)
    else:
        total = _chunk_loop(z, ids, log_p, tail, m, temperature, dtype, chunk_size, None)
    count = max(z.shape[0], 1) if m is None else m.sum().clamp_min(1)
    return total / count * temperature**2


def _sparse_sum(z: Tensor, ids: Tensor, log_p: Tensor, tail: Tensor, m: Tensor | None, temperature: float,
                dtype: torch.dtype) -> Tensor:
    """Sum over the valid rows of the per-row sparse KL; ``z [n, V]``, ``ids, log_p [n, k]``, ``tail [n]``."""
    k = ids.shape[-1]
    z = z.to(dtype)
    if m is not None:
        z = torch.where(m.unsqueeze(-1), z, 0.0)
        ids = torch.where(m.unsqueeze(-1), ids, torch.arange(k, device=ids.device))
        log_p = torch.where(m.unsqueeze(-1), log_p, 0.0)
        tail = torch.where(m, tail, 0.0)
    z = z.clamp_min(_LOG_FLOOR * min(temperature, 1.0))
    if temperature != 1.0:
        z = z / temperature
    log_q = torch.log_softmax(z, dim=-1)  # [n, V]
    log_p = log_p.clamp_min(_LOG_FLOOR)  # a -inf (probability 0) entry contributes 0·finite = 0
    top = torch.einsum("nk,nk->n", log_p.exp(), log_p - log_q.gather(1, ids))
    # the floor (not -inf) keeps logsumexp's gradient finite when every token is in the top k
    log_q_tail = log_q.scatter(1, ids, _LOG_FLOOR).logsumexp(-1)
    has_tail = tail > 0
    safe_tail = torch.where(has_tail, tail, 1.0)
    tail_term = torch.where(has_tail, safe_tail * (safe_tail.log() - log_q_tail), 0.0)
    per_row = top + tail_term
    if m is not None:
        per_row = torch.where(m, per_row, 0.0)
    return per_row.sum()


def _chunk_loop(z: Tensor, ids: Tensor, log_p: Tensor, tail: Tensor, m: Tensor | None, temperature: float,
                dtype: torch.dtype, chunk_size: int, grad: Tensor | None) -> Tensor:
    """:func:`_sparse_sum` over ``chunk_size`` rows at a time; writes each chunk's gradient into
    ``grad`` (``[N, V]``) when given, so only one chunk's graph is alive at any time."""
    total = torch.zeros((), dtype=dtype, device=z.device)
    for start in range(0, z.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        z_c = z[rows].detach().requires_grad_(grad is not None)
        with torch.set_grad_enabled(grad is not None):
            value = _sparse_sum(z_c, ids[rows], log_p[rows], tail[rows], None if m is None else m[rows],
                                temperature, dtype)
        if grad is not None:
            grad[rows].copy_(torch.autograd.grad(value, z_c)[0])
        total = total + value.detach()
    return total


class _SparseChunkedSum(torch.autograd.Function):
    """Chunked :func:`_sparse_sum` whose gradient is built chunk by chunk in forward into one
    ``[N, V]`` buffer (what the logits' ``.grad`` needs anyway); backward scales it in place.
    One backward per forward (as ``divergences``' chunked path): a second one raises."""

    @staticmethod
    def forward(ctx, z, ids, log_p, tail, m, temperature, dtype, chunk_size):
        grad = torch.empty_like(z)
        total = _chunk_loop(z, ids, log_p, tail, m, temperature, dtype, chunk_size, grad)
        ctx.grad = grad
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total):
        if ctx.grad is None:
            raise RuntimeError("a chunked sparse divergence (chunk_size=...) supports one backward pass "
                               "per forward; retain_graph re-use is not supported")
        grad, ctx.grad = ctx.grad.mul_(grad_total.to(ctx.grad.dtype)), None
        return grad, None, None, None, None, None, None, None


def check_cache_temperature(term: str, temperature: float, cache_temperature: float | None) -> None:
    """The cached log-probs are the teacher's at the cache's temperature; a term at another one
    would compare the student with the wrong distribution (at any k), so refuse it in one line."""
    if cache_temperature is not None and not math.isclose(float(cache_temperature), temperature, rel_tol=1e-6):
        raise ConfigError(f"{term}.temperature: {temperature:g}, but the cache was written at "
                          f"{float(cache_temperature):g}; set the term's temperature to the cache's or rewrite "
                          "the cache (cache-teacher --temperature)")


class SparseForwardKL(LossTerm):
    """Forward KL against cached sparse teacher outputs (:func:`sparse_forward_kl`).

    Reads the teacher from the batch (``datamodules.CachedTeacherDataModule`` adds
    ``teacher_topk_ids``, ``teacher_topk_logprobs`` and ``teacher_tail_mass``), so the
    module's ``teacher`` can be null: training from the cache never runs the teacher.

    Args:
        temperature: divides the student's logits, result times its square; must equal the
            temperature the cache was written at (``cache-teacher --temperature``).
        chunk_size: positions per chunk for the memory-lean path (None = one shot).
        weight: multiplier of this term in the total loss.
        sources: overrides of where the logits, cached teacher tensors, mask and the cache's
            temperature come from.
    """

    default_sources: ClassVar[dict[str, str]] = {
        "student_logits": "student.logits", "topk_ids": "batch.teacher_topk_ids",
        "topk_logprobs": "batch.teacher_topk_logprobs", "tail_mass": "batch.teacher_tail_mass",
        "mask": "batch.loss_mask", "cache_temperature": "batch.teacher_temperature"}

    def __init__(self, temperature: float = 1.0, chunk_size: int | None = None, weight: float = 1.0,
                 sources: dict[str, str] | None = None) -> None:
        super().__init__(weight, sources)
        self.temperature = float(temperature)
        self.chunk_size = chunk_size

    def forward(self, student_logits: Tensor, topk_ids: Tensor, topk_logprobs: Tensor, tail_mass: Tensor,
                mask: Tensor | None = None, cache_temperature: float | None = None) -> Tensor:
        """``cache_temperature``: the temperature the cache was written at (the cached datamodule's
        ``teacher_temperature``); another term temperature is a ConfigError."""
        check_cache_temperature("SparseForwardKL", self.temperature, cache_temperature)
        return sparse_forward_kl(student_logits, topk_ids, topk_logprobs, tail_mass, mask, self.temperature,
                                 self.chunk_size)
