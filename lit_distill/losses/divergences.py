"""Logit divergences between a teacher and a student distribution (functional API).

Definitions. For teacher logits ``z_t`` and student logits ``z_s`` of shape
``[..., V]`` and a temperature ``T``, ``p = softmax(z_t / T)`` (teacher) and
``q = softmax(z_s / T)`` (student) over the last dim. Per position:

- :func:`forward_kl`:      KL(p ‖ q) = Σ_v p_v (log p_v − log q_v)
- :func:`reverse_kl`:      KL(q ‖ p)
- :func:`generalized_jsd`: β·KL(p ‖ M) + (1−β)·KL(q ‖ M), M = β·p + (1−β)·q, 0 < β < 1
- :func:`skew_kl`:         KL(p ‖ α·p + (1−α)·q), α ∈ [0, 1)
- :func:`skew_reverse_kl`: KL(q ‖ α·q + (1−α)·p), α ∈ [0, 1)
- :func:`total_variation`: ½ Σ_v |p_v − q_v| (no temperature)

These are the full divergences (the teacher entropy is included), not the
"cross-entropy form" −Σ p log q, which has the same gradient but another value.

Reduction: the sum of the per-position divergence over the positions where
``mask`` is True, divided by the number of such positions (computed on device,
no host sync), times ``T**2`` (except total variation). No True position gives
0 with a zero gradient.

Numerics: float32 whatever the input dtype (bf16/fp16 are upcast); float64
inputs are computed and returned in float64 (e.g. for gradcheck). Masked-out
rows are replaced by zeros before the softmax: their content (NaN, inf) reaches
neither value nor gradient. Logits are clamped to ``-1e30`` (its probability is
exactly 0), so a vocab entry that is ``-inf`` in both logits contributes
0·finite = 0 in forward and backward. One that is ``-inf`` on one side only, where
the other side has mass, makes forward/reverse KL infinite: a huge finite value
(≈ 1e30 × that mass) is returned instead; mask such entries on both sides.
Log-mixtures use logaddexp. A valid row with all logits ``-inf`` gives NaN.

Chunking (``chunk_size``): see :class:`_ChunkedSum` for the memory-lean path. The per-row
formulas and their closed-form gradients are in :mod:`lit_distill.losses.divergence_rows`; this
module prepares the log-probs and reduces the rows.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lit_distill.losses.divergence_rows import (
    _EXACT_ON_EQUAL_ROWS,
    DivFn,
    ValueAndGrad,
    _jsd,
    _jsd_value_grad,
    _kl,
    _kl_value_grad,
    _reverse_kl_value_grad,
    _skew_kl,
    _skew_kl_value_grad,
    _skew_reverse_kl_value_grad,
    _swap,
    _tvd,
    _tvd_value_grad,
)

__all__ = ["forward_kl", "reverse_kl", "generalized_jsd", "skew_kl", "skew_reverse_kl",
           "total_variation"]

# Logits are clamped to this finite floor: a -inf entry then gets a finite log-prob
# whose exp is exactly 0 (float32 and float64), so no 0 * inf can occur.
_LOGIT_FLOOR = -1.0e30


def _fill_rows(x: Tensor, rows: Tensor, value: float) -> None:
    """Set the rows of ``x`` ``[n, V]`` where the bool ``rows`` ``[n]`` is True to ``value``, in place.

    On the CPU a broadcast ``masked_fill_`` walks all of ``[n, V]``, slowly (2–4 ms for
    ``[1024, 4096]`` at two threads); filling the selected rows by index takes 0.06 ms. On an
    accelerator the index would need a host sync (``nonzero``), so the broadcast fill stays.
    """
    if x.device.type == "cpu":
        x.index_fill_(0, rows.nonzero().squeeze(1), value)
    else:
        x.masked_fill_(rows.unsqueeze(-1), value)


def _fast_log_probs(logits: Tensor, mask: Tensor | None, temperature: float, dtype: torch.dtype) -> Tensor:
    """:func:`_log_probs` without autograd, allocating only its ``[n, V]`` output (plus ``logits / T``
    when ``T != 1``): the floor and the mask are applied to the log-probs in place.

    Same values where it matters: a ``-inf`` logit's log-prob becomes the floor (its probability is
    exactly 0 either way), and a masked-out row becomes ``-log V``, the log-probs of the zero row
    :func:`_log_probs` gives it, whatever it held (NaN, inf).
    """
    x = logits.to(dtype)
    if temperature != 1.0:
        x = x / temperature
    out = torch.log_softmax(x, dim=-1).clamp_min_(_LOGIT_FLOOR)
    if mask is not None:
        _fill_rows(out, ~mask, -math.log(out.shape[-1]))
    return out


def _log_probs(logits: Tensor, mask: Tensor | None, temperature: float,
               dtype: torch.dtype) -> Tensor:
    """``[n, V]`` logits -> ``log_softmax(max(logits, floor) / T)`` in ``dtype``, finite.

    Masked-out rows are zeroed with ``torch.where`` (no NaN/inf leaks, their gradient
    is exactly 0). Clamping first keeps autograd from saving another ``[n, V]`` tensor
    (the clamp saves its input, the logits themselves for float32); the floor is
    scaled by ``min(T, 1)`` so that dividing by ``T`` cannot overflow to ``-inf``.
    """
    x = logits.to(dtype).clamp_min(_LOGIT_FLOOR * min(temperature, 1.0))
    if mask is not None:
        x = torch.where(mask.unsqueeze(-1), x, 0.0)
    if temperature != 1.0:
        x = x / temperature
    return torch.log_softmax(x, dim=-1)


def _block_sum(div: DivFn, s: Tensor, t: Tensor, mask: Tensor | None, temperature: float,
               dtype: torch.dtype) -> Tensor:
    """Sum over valid rows of ``div`` for a block of rows ``s, t: [n, V]``, ``mask: [n]``."""
    per_row = div(_log_probs(t, mask, temperature, dtype), _log_probs(s, mask, temperature, dtype))
    if mask is not None:
        per_row = torch.where(mask, per_row, 0.0)
    return per_row.sum()


def _chunk_loop(div: DivFn, s: Tensor, t: Tensor, mask: Tensor | None, temperature: float,
                dtype: torch.dtype, chunk_size: int, grad_s: Tensor | None,
                grad_t: Tensor | None) -> Tensor:
    """Sum of ``div`` over all rows, ``chunk_size`` rows at a time; when ``[N, V]`` buffers
    ``grad_s`` / ``grad_t`` are given, each chunk's gradient of the sum is written into them.
    Only one chunk's graph and intermediates are alive at any time."""
    total = torch.zeros((), dtype=dtype, device=s.device)
    need = (grad_s is not None, grad_t is not None)
    for start in range(0, s.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        s_c = s[rows].detach().requires_grad_(need[0])
        t_c = t[rows].detach().requires_grad_(need[1])
        m_c = None if mask is None else mask[rows]
        with torch.set_grad_enabled(any(need)):
            value = _block_sum(div, s_c, t_c, m_c, temperature, dtype)
        if any(need):
            leaves = [x for x, n in zip((s_c, t_c), need, strict=True) if n]
            buffers = [b for b in (grad_s, grad_t) if b is not None]
            for buf, grad in zip(buffers, torch.autograd.grad(value, leaves), strict=True):
                buf[rows].copy_(grad)
            del leaves, grad
        total = total + value.detach()
        del value, s_c, t_c
    return total


def _analytic_loop(value_grad: ValueAndGrad, s: Tensor, t: Tensor, mask: Tensor | None,
                   temperature: float, dtype: torch.dtype, chunk_size: int, grad_s: Tensor) -> Tensor:
    """Sum of a divergence over all rows, ``chunk_size`` rows at a time, writing each chunk's
    gradient with respect to ``s / temperature`` into ``grad_s`` ``[N, V]`` from its closed form
    (no autograd graph). Masked-out rows get a zero gradient and add nothing."""
    total = torch.zeros((), dtype=dtype, device=s.device)
    for start in range(0, s.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        m_c = None if mask is None else mask[rows]
        lp = _fast_log_probs(t[rows], m_c, temperature, dtype)
        lq = _fast_log_probs(s[rows], m_c, temperature, dtype)
        out = grad_s[rows]
        per_row = value_grad(lp, lq, out)
        if m_c is not None:  # their rows were zeroed: equal distributions
            per_row = torch.where(m_c, per_row, 0.0)
            if value_grad not in _EXACT_ON_EQUAL_ROWS:  # rounding of log-mixtures: mask the gradient
                _fill_rows(out, ~m_c, 0.0)
        total = total + per_row.sum()
        del lp, lq, out, per_row
    return total


class _AnalyticSum(torch.autograd.Function):
    """Sum of a divergence over rows whose student gradient is its closed form (teacher without
    gradient). Forward computes the value and the gradient chunk by chunk into one ``[N, V]``
    buffer; backward scales it. Faster than autograd through log-softmax (fewer passes, no
    saved graph) and lean: one chunk of float32 intermediates plus the gradient buffer. No
    double backward (``once_differentiable``)."""

    @staticmethod
    def forward(ctx, s, t, mask, value_grad, temperature, dtype, chunk_size):
        grad_s = torch.empty_like(s)
        total = _analytic_loop(value_grad, s, t, mask, temperature, dtype, chunk_size, grad_s)
        ctx.grad_s, ctx.temperature = grad_s, temperature
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total):
        # d(s / T)/ds = 1 / T, applied with the incoming scalar in one pass. Not in place: a graph
        # may be differentiated more than once (retain_graph, gradcheck, GradientShare).
        return ctx.grad_s * (grad_total / ctx.temperature), None, None, None, None, None, None


class _ChunkedSum(torch.autograd.Function):
    """Chunked sum of a divergence whose gradient is computed chunk by chunk in forward.

    Design: for each chunk of rows, forward builds the chunk's graph, takes its
    gradient at once with ``torch.autograd.grad`` and writes it into a
    preallocated ``[N, V]`` buffer (in the input dtype), then drops the graph.
    Peak memory is one chunk of float32 ``[chunk, V]`` intermediates per side
    plus the gradient buffer, which the logits' ``.grad`` needs anyway; backward
    only scales that buffer in place by the incoming scalar gradient. Unlike
    per-chunk ``torch.utils.checkpoint`` this needs no second forward pass and
    no concatenation of per-chunk gradients. Limits: one backward per graph (no
    ``retain_graph`` re-use) and no double backward; both raise.
    """

    @staticmethod
    def forward(ctx, s, t, mask, div, temperature, dtype, chunk_size, need_s, need_t):
        grad_s = torch.empty_like(s) if need_s else None
        grad_t = torch.empty_like(t) if need_t else None
        total = _chunk_loop(div, s, t, mask, temperature, dtype, chunk_size, grad_s, grad_t)
        ctx.grads = (grad_s, grad_t)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total):
        if ctx.grads is None:
            raise RuntimeError("a chunked divergence (chunk_size=...) supports one backward pass "
                               "per forward; retain_graph re-use is not supported")
        grad_s, grad_t = ctx.grads
        ctx.grads = None
        grad_s = None if grad_s is None else grad_s.mul_(grad_total)
        grad_t = None if grad_t is None else grad_t.mul_(grad_total)
        return grad_s, grad_t, None, None, None, None, None, None, None


def _check(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None, temperature: float,
           chunk_size: int | None) -> None:
    s_shape, t_shape = tuple(student_logits.shape), tuple(teacher_logits.shape)
    if s_shape != t_shape or not s_shape:
        if s_shape and t_shape and s_shape[:-1] == t_shape[:-1]:
            raise ValueError(
                f"the vocabularies differ: student_logits have {s_shape[-1]} entries but "
                f"teacher_logits have {t_shape[-1]} (shapes {s_shape} vs {t_shape}). Models with "
                "different tokenizers need a cross-tokenizer loss (lit_distill.losses.uld or "
                "lit_distill.losses.alm); if both models share one tokenizer and only the vocab "
                "padding differs, truncate both to the shared prefix (logits[..., :V_shared]).")
        raise ValueError(f"student_logits {s_shape} and teacher_logits {t_shape} must have one "
                         "shape [..., V] (at least 1-D)")
    floats = student_logits.is_floating_point() and teacher_logits.is_floating_point()
    if not floats or not s_shape[-1]:
        raise ValueError(f"logits must be floating point with V > 0, got {student_logits.dtype} "
                         f"and {teacher_logits.dtype}, shape {s_shape}")
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor (True = position counts), got "
                             f"{mask.dtype}; e.g. pass labels != -100 or attention_mask.bool()")
        if tuple(mask.shape) != s_shape[:-1]:
            raise ValueError(f"mask shape {tuple(mask.shape)} must equal the logits' leading shape "
                             f"{s_shape[:-1]} (logits {s_shape})")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size <= 0):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")


def _reduce(div: DivFn, value_grad: ValueAndGrad, student_logits: Tensor, teacher_logits: Tensor,
            mask: Tensor | None, temperature: float, chunk_size: int | None,
            scale_by_t2: bool = True) -> Tensor:
    """Validate, flatten to ``[N, V]``, sum ``div`` over valid rows (chunked or not), mean, T².

    When only the student needs a gradient (the usual distillation step) the sum runs through
    :class:`_AnalyticSum` (closed-form gradient); with a teacher gradient, through autograd.
    """
    temperature = float(temperature)
    _check(student_logits, teacher_logits, mask, temperature, chunk_size)
    wide = torch.float64 in (student_logits.dtype, teacher_logits.dtype)
    dtype = torch.float64 if wide else torch.float32
    s, t = (x.reshape(-1, x.shape[-1]) for x in (student_logits, teacher_logits))  # [N, V]
    m = None if mask is None else mask.reshape(-1)
    need_s, need_t = (torch.is_grad_enabled() and x.requires_grad for x in (s, t))
    if need_s and not need_t:
        total = _AnalyticSum.apply(s, t.detach(), m, value_grad, temperature, dtype,
                                   chunk_size or max(s.shape[0], 1))
    elif chunk_size is None:
        total = _block_sum(div, s, t, m, temperature, dtype)
    else:
        if need_s or need_t:
            total = _ChunkedSum.apply(s, t, m, div, temperature, dtype, chunk_size, need_s, need_t)
        else:
            total = _chunk_loop(div, s, t, m, temperature, dtype, chunk_size, None, None)
    count = max(s.shape[0], 1) if m is None else m.sum().clamp_min(1)
    loss = total / count
    return loss * temperature**2 if scale_by_t2 else loss


def forward_kl(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None,
               temperature: float = 1.0, chunk_size: int | None = None) -> Tensor:
    """Forward KL, KL(p ‖ q) = Σ_v p (log p − log q), with p = teacher and q = student.

    The full divergence (teacher entropy included), not the cross-entropy form.

    Args:
        student_logits: ``[..., V]`` student logits, any float dtype (gradients flow here).
        teacher_logits: ``[..., V]`` teacher logits, same shape (gradients flow here too
            if it requires grad).
        mask: optional bool ``[...]`` (``= logits.shape[:-1]``), True where a position
            counts; None: all positions count.
        temperature: divides both logits; the result is multiplied by ``temperature**2``.
        chunk_size: if set, process this many flattened positions at a time: same value
            and gradient, peak memory of one ``[chunk_size, V]`` chunk. None: one shot.

    Returns:
        0-dim tensor, float32 (float64 for float64 inputs): the per-position divergence
        averaged over valid positions, times ``temperature**2``; 0 if none is valid.

    Raises:
        ValueError: shapes differ (different vocab sizes are reported as such), the mask
            is not bool ``[...]``, temperature <= 0, or chunk_size is not a positive int.
    """
    return _reduce(_kl, _kl_value_grad, student_logits, teacher_logits, mask, temperature, chunk_size)


def reverse_kl(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None,
               temperature: float = 1.0, chunk_size: int | None = None) -> Tensor:
    """Reverse KL, KL(q ‖ p) = Σ_v q (log q − log p), with p = teacher and q = student.

    Args:
        student_logits: ``[..., V]`` student logits.
        teacher_logits: ``[..., V]`` teacher logits, same shape.
        mask: optional bool ``[...]``, True where a position counts.
        temperature: divides both logits; the result is multiplied by ``temperature**2``.
        chunk_size: positions per chunk (None: one shot).

    Returns:
        0-dim tensor: mean over valid positions times ``temperature**2``.

    Raises:
        ValueError: as :func:`forward_kl`.
    """
    return _reduce(_swap(_kl), _reverse_kl_value_grad, student_logits, teacher_logits, mask, temperature, chunk_size)


def generalized_jsd(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None,
                    temperature: float = 1.0, beta: float = 0.5,
                    chunk_size: int | None = None) -> Tensor:
    """Generalized Jensen-Shannon divergence (GKD), β·KL(p ‖ M) + (1−β)·KL(q ‖ M).

    M = β·p + (1−β)·q with p = teacher and q = student; log M is computed with
    logaddexp. β = 0.5 is the symmetric JSD, bounded by log 2. β must lie
    strictly in (0, 1): TRL's ``generalized_jsd_loss`` special-cases β = 0 as
    KL(p ‖ q) and β = 1 as KL(q ‖ p), but this formula does not tend to those
    values (it is ≈ β·KL(p ‖ q) near β → 0, ≈ (1−β)·KL(q ‖ p) near β → 1, so 0
    at both ends); call :func:`forward_kl` / :func:`reverse_kl` for them instead.

    Args:
        student_logits: ``[..., V]`` student logits.
        teacher_logits: ``[..., V]`` teacher logits, same shape.
        mask: optional bool ``[...]``, True where a position counts.
        temperature: divides both logits; the result is multiplied by ``temperature**2``.
        beta: weight of the teacher in the mixture M, strictly in (0, 1).
        chunk_size: positions per chunk (None: one shot).

    Returns:
        0-dim tensor: mean over valid positions times ``temperature**2``.

    Raises:
        ValueError: beta outside (0, 1), or as :func:`forward_kl`.
    """
    beta = float(beta)
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta must be strictly in (0, 1), got {beta}; for beta=0 / beta=1 "
                         "(TRL's special cases) call forward_kl / reverse_kl instead")
    div = functools.partial(_jsd, beta=beta)
    grad = functools.partial(_jsd_value_grad, beta=beta)
    return _reduce(div, grad, student_logits, teacher_logits, mask, temperature, chunk_size)


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    return alpha


def skew_kl(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None,
            temperature: float = 1.0, alpha: float = 0.1, chunk_size: int | None = None) -> Tensor:
    """Skew KL (DistiLLM), KL(p ‖ α·p + (1−α)·q), with p = teacher and q = student.

    α = 0 gives :func:`forward_kl`; for α > 0 the value is at most log(1/α).

    Args:
        student_logits: ``[..., V]`` student logits.
        teacher_logits: ``[..., V]`` teacher logits, same shape.
        mask: optional bool ``[...]``, True where a position counts.
        temperature: divides both logits; the result is multiplied by ``temperature**2``.
        alpha: weight of the teacher in the mixture, in [0, 1).
        chunk_size: positions per chunk (None: one shot).

    Returns:
        0-dim tensor: mean over valid positions times ``temperature**2``.

    Raises:
        ValueError: alpha outside [0, 1), or as :func:`forward_kl`.
    """
    alpha = _check_alpha(alpha)
    div = functools.partial(_skew_kl, alpha=alpha)
    grad = functools.partial(_skew_kl_value_grad, alpha=alpha)
    return _reduce(div, grad, student_logits, teacher_logits, mask, temperature, chunk_size)


def skew_reverse_kl(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None,
                    temperature: float = 1.0, alpha: float = 0.1,
                    chunk_size: int | None = None) -> Tensor:
    """Skew reverse KL (DistiLLM), KL(q ‖ α·q + (1−α)·p), with p = teacher and q = student.

    α = 0 gives :func:`reverse_kl`; for α > 0 the value is at most log(1/α).

    Args:
        student_logits: ``[..., V]`` student logits.
        teacher_logits: ``[..., V]`` teacher logits, same shape.
        mask: optional bool ``[...]``, True where a position counts.
        temperature: divides both logits; the result is multiplied by ``temperature**2``.
        alpha: weight of the student in the mixture, in [0, 1).
        chunk_size: positions per chunk (None: one shot).

    Returns:
        0-dim tensor: mean over valid positions times ``temperature**2``.

    Raises:
        ValueError: alpha outside [0, 1), or as :func:`forward_kl`.
    """
    alpha = _check_alpha(alpha)
    div = _swap(functools.partial(_skew_kl, alpha=alpha))
    grad = functools.partial(_skew_reverse_kl_value_grad, alpha=alpha)
    return _reduce(div, grad, student_logits, teacher_logits, mask, temperature, chunk_size)


def total_variation(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None,
                    chunk_size: int | None = None) -> Tensor:
    """Total variation distance, ½ Σ_v |p − q|, at temperature 1 (no T² factor).

    Lies in [0, 1]; 1 − TVD is the speculative-decoding acceptance rate of a
    draft q under target p.

    Args:
        student_logits: ``[..., V]`` student logits (q = softmax).
        teacher_logits: ``[..., V]`` teacher logits (p = softmax), same shape.
        mask: optional bool ``[...]``, True where a position counts.
        chunk_size: positions per chunk (None: one shot).

    Returns:
        0-dim tensor: mean over valid positions.

    Raises:
        ValueError: as :func:`forward_kl`.
    """
    return _reduce(_tvd, _tvd_value_grad, student_logits, teacher_logits, mask, 1.0, chunk_size, scale_by_t2=False)
