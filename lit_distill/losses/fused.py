"""Logit divergences computed from last hidden states × LM head, never materialising full logits.

For student hidden states ``h_s [N, Ds]`` with LM head ``W_s [V, Ds]`` (bias ``b_s [V]``)
and teacher ``h_t [N, Dt]``, ``W_t [V, Dt]`` (``b_t``), the logits are
``z_s = h_s W_sᵀ + b_s`` and ``z_t = h_t W_tᵀ + b_t``. :func:`fused_forward_kl` returns
``forward_kl(z_s, z_t, mask, temperature)`` (to float rounding) (same definition, temperature,
masking and token-mean reduction as :mod:`lit_distill.losses.divergences`), and its
gradient with respect to ``h_s``, ``W_s`` and ``b_s``, but only ever holds one chunk of
``chunk_size`` rows of logits per side.

How: a custom autograd function walks the tokens chunk by chunk. Per chunk it computes
both chunks of logits, the divergence's sum over the chunk's valid rows and the gradient
``g = ∂sum/∂z_s [chunk, V]`` of that chunk alone (forward KL: in closed form, ``(q − p)/T``;
the other divergences: the very per-row code of :mod:`lit_distill.losses.divergences`,
differentiated per chunk by autograd); then it writes ``g W_s`` into the gradient of
``h_s`` and accumulates ``gᵀ h_s`` into the gradient of ``W_s`` (and ``Σ_rows g`` into
``b_s``'s). Backward only scales those buffers by the incoming gradient: it never needs
``[N, V]`` logits or their gradient, and there is no second pass over the head. Peak
memory beyond the inputs and the gradients autograd returns anyway is a handful of
float32 ``[chunk_size, V]`` tensors (three for forward KL).

No gradient flows to the teacher side (its hidden states and head are constants, as a
frozen teacher's are). Masked-out rows of both hidden states are replaced by zeros before
the head, so their content (NaN, inf) reaches neither the value nor any gradient.
The head must be a plain linear map: models that rescale or soft-cap logits after the
head (Gemma-2's soft-capping, Cohere's logit scale) are rejected by the adapter.
The YAML terms (``FusedForwardKL``, ``FusedReverseKL``, ``FusedCrossEntropy``) live in
:mod:`lit_distill.losses.fused_terms`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from lit_distill.losses.divergence_rows import DivFn, _jsd, _kl, _skew_kl, _swap
from lit_distill.losses.divergences import _block_sum, _log_probs

__all__ = ["fused_forward_kl", "fused_reverse_kl", "fused_generalized_jsd", "fused_skew_kl",
           "fused_skew_reverse_kl", "fused_cross_entropy", "fused_divergence"]


def _chunk_inputs(h: Tensor, mask: Tensor | None, dtype: torch.dtype) -> Tensor:
    h = h.to(dtype)
    return h if mask is None else torch.where(mask.unsqueeze(-1), h, 0.0)


# Per chunk: (student logits [n, V] in the compute dtype, the chunk's rows, its mask [n] or None)
# -> 0-dim sum of the loss over the chunk's valid rows. It may read other tensors (the teacher's).
ChunkValue = Callable[[Tensor, slice, "Tensor | None"], Tensor]


def _fused_loop(chunk_value: ChunkValue, hs: Tensor, ws: Tensor, bs: Tensor | None, mask: Tensor | None,
                dtype: torch.dtype, chunk_size: int,
                grads: tuple[Tensor | None, Tensor | None, Tensor | None]) -> Tensor:
    """Sum of ``chunk_value`` over all chunks; fills the given gradient buffers (of the sum)."""
    grad_hs, grad_ws, grad_bs = grads
    need = any(g is not None for g in grads)
    ws = ws.to(dtype)
    bs = None if bs is None else bs.to(dtype)
    total = torch.zeros((), dtype=dtype, device=hs.device)
    for start in range(0, hs.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        m = None if mask is None else mask[rows]
        h_s = _chunk_inputs(hs[rows], m, dtype)
        with torch.no_grad():
            z_s = F.linear(h_s, ws, bs)
        explicit = getattr(chunk_value, "with_grad", None)
        if explicit is not None:  # value and ∂value/∂z_s from a closed form (no autograd graph)
            value, g = explicit(z_s, rows, m, need)
        else:
            z_s.requires_grad_(need)
            with torch.set_grad_enabled(need):
                value = chunk_value(z_s, rows, m)
            g = torch.autograd.grad(value, z_s)[0] if need else None
        del z_s
        if g is not None:  # [chunk, V], zero on masked rows
            if grad_hs is not None:
                grad_hs[rows].copy_(g @ ws)
            if grad_ws is not None:
                grad_ws.addmm_(g.t(), h_s)
            if grad_bs is not None:
                grad_bs.add_(g.sum(0))
            del g
        total = total + value.detach()
        del value
    return total


def _divergence_chunks(div: DivFn, ht: Tensor, wt: Tensor, bt: Tensor | None, temperature: float,
                       dtype: torch.dtype) -> ChunkValue:
    """Chunk values of a logit divergence against the teacher's head (a constant)."""
    wt = wt.detach().to(dtype)
    bt = None if bt is None else bt.detach().to(dtype)

    def teacher_logits(rows: slice, m: Tensor | None) -> Tensor:
        with torch.no_grad():
            return F.linear(_chunk_inputs(ht[rows].detach(), m, dtype), wt, bt)

    def value(z_s: Tensor, rows: slice, m: Tensor | None) -> Tensor:
        return _block_sum(div, z_s, teacher_logits(rows, m), m, temperature, dtype)

    if div is _kl:
        value.with_grad = functools.partial(_forward_kl_with_grad, teacher_logits=teacher_logits,
                                            temperature=temperature)
    return value


@torch.no_grad()
def _forward_kl_with_grad(z_s: Tensor, rows: slice, m: Tensor | None, need: bool, *,
                          teacher_logits: Callable[[slice, Tensor | None], Tensor],
                          temperature: float) -> tuple[Tensor, Tensor | None]:
    """Σ_valid KL(p ‖ q) of a chunk and its gradient ``(q − p) / T`` w.r.t. ``z_s``, in closed form.

    The value is computed as ``divergences._block_sum(_kl, ...)`` computes it; masked rows
    are zeroed, so both sides are uniform there and ``q − p`` is exactly 0. The gradient of
    Σ_v p (log p − log softmax(z/T)) is (q − p)/T. Logits from a finite head are finite, so
    the ``-inf`` clamp of ``divergences`` never binds here. Three ``[chunk, V]`` buffers.
    """
    log_p = _log_probs(teacher_logits(rows, m), m, temperature, z_s.dtype)
    log_q = _log_probs(z_s, m, temperature, z_s.dtype)
    p = log_p.exp()
    # one dot product of p with (log p − log q), as divergence_rows._kl: the two separate sums
    # Σ p log p and Σ p log q are ~log V each and would cancel to a less accurate value
    per_row = torch.einsum("nv,nv->n", p, log_p.sub_(log_q))
    if m is not None:
        per_row = torch.where(m, per_row, 0.0)
    del log_p
    grad = None
    if need:
        grad = log_q.exp_().sub_(p)
        if temperature != 1.0:
            grad.div_(temperature)
    return per_row.sum(), grad


class _FusedHeadSum(torch.autograd.Function):
    """Chunked sum of a divergence from hidden states × heads; gradients built in forward.

    Gradient buffers: ``h_s``'s in its dtype, ``W_s``'s and ``b_s``'s accumulated in the
    compute dtype and cast once at the end; backward scales them in place (no copy).
    Limits: no double backward; a second backward of a retained graph gets copies
    rescaled by the ratio of the incoming gradients (exact when they are equal), and
    raises if the first incoming gradient was 0.
    """

    @staticmethod
    def forward(ctx, hs, ws, bs, chunk_value, mask, dtype, chunk_size, need):
        need_hs, need_ws, need_bs = need
        grad_hs = torch.empty_like(hs) if need_hs else None
        grad_ws = torch.zeros(ws.shape, dtype=dtype, device=ws.device) if need_ws else None
        grad_bs = torch.zeros(bs.shape, dtype=dtype, device=bs.device) if need_bs else None
        total = _fused_loop(chunk_value, hs, ws, bs, mask, dtype, chunk_size, (grad_hs, grad_ws, grad_bs))
        ctx.grads = (grad_hs,
                     None if grad_ws is None else grad_ws.to(ws.dtype),
                     None if grad_bs is None else grad_bs.to(bs.dtype))
        ctx.scaled_by = None
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total):
        if ctx.scaled_by is None:  # first backward: scale the buffers in place (no copy)
            ctx.grads = tuple(None if g is None else g.mul_(grad_total.to(g.dtype)) for g in ctx.grads)
            ctx.scaled_by = grad_total.detach().clone()
            grads = ctx.grads
        elif bool(ctx.scaled_by != 0):  # retain_graph re-use: rescale copies (exact for the same scale)
            ratio = grad_total / ctx.scaled_by
            grads = tuple(None if g is None else g * ratio.to(g.dtype) for g in ctx.grads)
        else:
            raise RuntimeError("a fused divergence cannot reuse a retained graph whose first backward "
                               "came with a zero incoming gradient")
        grad_hs, grad_ws, grad_bs = grads
        return grad_hs, grad_ws, grad_bs, None, None, None, None, None


def _fused_sum(chunk_value: ChunkValue, hs: Tensor, ws: Tensor, bs: Tensor | None, mask: Tensor | None,
               dtype: torch.dtype, chunk_size: int) -> Tensor:
    """Differentiable (w.r.t. ``hs``, ``ws``, ``bs``) chunked sum of ``chunk_value``."""
    grad_on = torch.is_grad_enabled()
    need = tuple(bool(grad_on and x is not None and x.requires_grad) for x in (hs, ws, bs))
    if any(need):
        return _FusedHeadSum.apply(hs, ws, bs, chunk_value, mask, dtype, chunk_size, need)
    return _fused_loop(chunk_value, hs, ws, bs, mask, dtype, chunk_size, (None, None, None))


def _check(hs: Tensor, ws: Tensor, bs: Tensor | None, ht: Tensor, wt: Tensor, bt: Tensor | None,
           mask: Tensor | None, temperature: float, chunk_size: int) -> None:
    tensors = {"student_hidden": hs, "student_weight": ws, "teacher_hidden": ht,
               "teacher_weight": wt, "student_bias": bs, "teacher_bias": bt}
    for name, x in tensors.items():
        if x is not None and not x.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if ws.dim() != 2 or wt.dim() != 2 or not ws.shape[0]:
        raise ValueError(f"student_weight and teacher_weight must be LM heads [V, D] with V > 0, got "
                         f"{tuple(ws.shape)} and {tuple(wt.shape)}")
    if ws.shape[0] != wt.shape[0]:
        raise ValueError(
            f"the vocabularies differ: the student head has {ws.shape[0]} rows but the teacher head "
            f"{wt.shape[0]}. Models with different tokenizers need a cross-tokenizer loss "
            "(lit_distill.losses.uld or lit_distill.losses.alm)")
    if hs.dim() < 1 or hs.shape[-1] != ws.shape[1]:
        raise ValueError(f"student_hidden {tuple(hs.shape)} must be [..., Ds] with Ds = "
                         f"student_weight.shape[1] = {ws.shape[1]}")
    if ht.shape[:-1] != hs.shape[:-1] or ht.shape[-1] != wt.shape[1]:
        raise ValueError(f"teacher_hidden {tuple(ht.shape)} must be [..., Dt] with the student's leading "
                         f"shape {tuple(hs.shape[:-1])} and Dt = teacher_weight.shape[1] = {wt.shape[1]}")
    for name, bias in (("student_bias", bs), ("teacher_bias", bt)):
        if bias is not None and tuple(bias.shape) != (ws.shape[0],):
            raise ValueError(f"{name} must be [V] = [{ws.shape[0]}], got {tuple(bias.shape)}")
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor (True = position counts), got {mask.dtype}")
        if tuple(mask.shape) != tuple(hs.shape[:-1]):
            raise ValueError(f"mask shape {tuple(mask.shape)} must equal the hidden states' leading shape "
                             f"{tuple(hs.shape[:-1])}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def fused_divergence(div: DivFn, student_hidden: Tensor, student_weight: Tensor, teacher_hidden: Tensor,
                     teacher_weight: Tensor, mask: Tensor | None = None, temperature: float = 1.0,
                     chunk_size: int = 256, student_bias: Tensor | None = None,
                     teacher_bias: Tensor | None = None) -> Tensor:
    """Token mean (times T²) of a per-position divergence ``div(log p, log q)`` of the heads' logits.

    ``div`` takes finite teacher and student log-probs ``[n, V]`` and returns ``[n]``
    (the private per-row functions of :mod:`lit_distill.losses.divergences`). The public
    ``fused_*`` functions bind it; arguments and return as :func:`fused_forward_kl`.
    """
    temperature = float(temperature)
    _check(student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight, teacher_bias,
           mask, temperature, chunk_size)
    inputs = (student_hidden, student_weight, student_bias, teacher_hidden, teacher_weight, teacher_bias)
    dtype = torch.float64 if any(x is not None and x.dtype == torch.float64 for x in inputs) \
        else torch.float32
    hs = student_hidden.reshape(-1, student_hidden.shape[-1])  # [N, Ds]
    ht = teacher_hidden.reshape(-1, teacher_hidden.shape[-1])  # [N, Dt]
    m = None if mask is None else mask.reshape(-1)
    chunk_value = _divergence_chunks(div, ht, teacher_weight, teacher_bias, temperature, dtype)
    total = _fused_sum(chunk_value, hs, student_weight, student_bias, m, dtype, chunk_size)
    count = max(hs.shape[0], 1) if m is None else m.sum().clamp_min(1)
    return total / count * temperature**2


def fused_forward_kl(student_hidden: Tensor, student_weight: Tensor, teacher_hidden: Tensor,
                     teacher_weight: Tensor, mask: Tensor | None = None, temperature: float = 1.0,
                     chunk_size: int = 256, student_bias: Tensor | None = None,
                     teacher_bias: Tensor | None = None) -> Tensor:
    """Forward KL(p ‖ q) of the logits ``h W_ᵀ + b`` of both sides, without full logits.

    Equals ``forward_kl(student_hidden @ student_weight.T + student_bias, teacher_hidden @
    teacher_weight.T + teacher_bias, mask, temperature)`` in value and in its gradient with
    respect to the student's hidden states, head weight and head bias.

    Args:
        student_hidden: ``[..., Ds]`` the student's last hidden states (after its final norm).
        student_weight: ``[V, Ds]`` the student's LM head (output embedding) weight.
        teacher_hidden: ``[..., Dt]`` the teacher's last hidden states, same leading shape.
        teacher_weight: ``[V, Dt]`` the teacher's LM head weight (same V).
        mask: optional bool ``[...]``, True where a position counts; None: all count.
        temperature: divides both logits; the result is multiplied by ``temperature**2``.
        chunk_size: positions whose logits are computed at once (peak memory ∝ chunk_size·V).
        student_bias: optional ``[V]`` LM head bias of the student.
        teacher_bias: optional ``[V]`` LM head bias of the teacher.

    Returns:
        0-dim tensor, float32 (float64 if any input is float64): the per-position
        divergence averaged over valid positions, times ``temperature**2``; 0 if none is valid.

    Raises:
        ValueError: shapes that do not fit (different V reported as a vocabulary mismatch),
            a non-bool mask, temperature <= 0, or chunk_size not a positive int.
    """
    return fused_divergence(_kl, student_hidden, student_weight, teacher_hidden, teacher_weight, mask,
                            temperature, chunk_size, student_bias, teacher_bias)


def fused_reverse_kl(student_hidden: Tensor, student_weight: Tensor, teacher_hidden: Tensor,
                     teacher_weight: Tensor, mask: Tensor | None = None, temperature: float = 1.0,
                     chunk_size: int = 256, student_bias: Tensor | None = None,
                     teacher_bias: Tensor | None = None) -> Tensor:
    """Reverse KL(q ‖ p) from hidden states × heads; arguments and return as :func:`fused_forward_kl`."""
    return fused_divergence(_swap(_kl), student_hidden, student_weight, teacher_hidden, teacher_weight,
                            mask, temperature, chunk_size, student_bias, teacher_bias)


def fused_generalized_jsd(student_hidden: Tensor, student_weight: Tensor, teacher_hidden: Tensor,
                          teacher_weight: Tensor, mask: Tensor | None = None, temperature: float = 1.0,
                          beta: float = 0.5, chunk_size: int = 256, student_bias: Tensor | None = None,
                          teacher_bias: Tensor | None = None) -> Tensor:
    """Generalised JSD (see ``divergences.generalized_jsd``) from hidden states × heads.

    Args:
        beta: teacher weight of the mixture, strictly in (0, 1); others as :func:`fused_forward_kl`.
        student_hidden: ``[..., Ds]``. student_weight: ``[V, Ds]``. teacher_hidden: ``[..., Dt]``.
        teacher_weight: ``[V, Dt]``. mask: bool ``[...]``. temperature: divides both logits.
        chunk_size: positions per chunk. student_bias, teacher_bias: optional ``[V]``.

    Returns:
        0-dim tensor: mean over valid positions times ``temperature**2``.
    """
    beta = float(beta)
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta must be strictly in (0, 1), got {beta}")
    return fused_divergence(functools.partial(_jsd, beta=beta), student_hidden, student_weight,
                            teacher_hidden, teacher_weight, mask, temperature, chunk_size,
                            student_bias, teacher_bias)


def _alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    return alpha


def fused_skew_kl(student_hidden: Tensor, student_weight: Tensor, teacher_hidden: Tensor,
                  teacher_weight: Tensor, mask: Tensor | None = None, temperature: float = 1.0,
                  alpha: float = 0.1, chunk_size: int = 256, student_bias: Tensor | None = None,
                  teacher_bias: Tensor | None = None) -> Tensor:
    """Skew KL(p ‖ α·p + (1−α)·q) from hidden states × heads (see ``divergences.skew_kl``).

    Args:
        alpha: teacher weight of the mixture, in [0, 1); others as :func:`fused_forward_kl`.
        student_hidden: ``[..., Ds]``. student_weight: ``[V, Ds]``. teacher_hidden: ``[..., Dt]``.
        teacher_weight: ``[V, Dt]``. mask: bool ``[...]``. temperature: divides both logits.
        chunk_size: positions per chunk. student_bias, teacher_bias: optional ``[V]``.

    Returns:
        0-dim tensor: mean over valid positions times ``temperature**2``.
    """
    return fused_divergence(functools.partial(_skew_kl, alpha=_alpha(alpha)), student_hidden,
                            student_weight, teacher_hidden, teacher_weight, mask, temperature,
                            chunk_size, student_bias, teacher_bias)


def fused_skew_reverse_kl(student_hidden: Tensor, student_weight: Tensor, teacher_hidden: Tensor,
                          teacher_weight: Tensor, mask: Tensor | None = None, temperature: float = 1.0,
                          alpha: float = 0.1, chunk_size: int = 256, student_bias: Tensor | None = None,
                          teacher_bias: Tensor | None = None) -> Tensor:
    """Skew reverse KL(q ‖ α·q + (1−α)·p) from hidden states × heads (see ``divergences.skew_reverse_kl``).

    Args:
        alpha: student weight of the mixture, in [0, 1); others as :func:`fused_forward_kl`.
        student_hidden: ``[..., Ds]``. student_weight: ``[V, Ds]``. teacher_hidden: ``[..., Dt]``.
        teacher_weight: ``[V, Dt]``. mask: bool ``[...]``. temperature: divides both logits.
        chunk_size: positions per chunk. student_bias, teacher_bias: optional ``[V]``.

    Returns:
        0-dim tensor: mean over valid positions times ``temperature**2``.
    """
    return fused_divergence(_swap(functools.partial(_skew_kl, alpha=_alpha(alpha))), student_hidden,
                            student_weight, teacher_hidden, teacher_weight, mask, temperature,
                            chunk_size, student_bias, teacher_bias)


def fused_cross_entropy(hidden: Tensor, weight: Tensor, labels: Tensor, bias: Tensor | None = None,
                        ignore_index: int = -100, chunk_size: int = 256) -> Tensor:
    """Cross-entropy of the logits ``hidden @ weight.T + bias`` without full logits.

    Equals ``lit_distill.losses.cross_entropy(hidden @ weight.T + bias, labels)`` (mean over
    labels != ``ignore_index``, 0 when none counts) in value and gradient, with one
    ``[chunk_size, V]`` chunk of logits at a time.

    Args:
        hidden: ``[..., D]`` last hidden states.
        weight: ``[V, D]`` LM head weight.
        labels: ``[...]`` integer targets (already shifted for causal LMs).
        bias: optional ``[V]`` LM head bias.
        ignore_index: label value that does not count.
        chunk_size: positions whose logits are computed at once.

    Returns:
        0-dim tensor, float32 (float64 for float64 inputs).
    """
    _check(hidden, weight, bias, hidden, weight, None, None, 1.0, chunk_size)
    if tuple(labels.shape) != tuple(hidden.shape[:-1]) or labels.is_floating_point():
        raise ValueError(f"labels must be integer with the hidden states' leading shape "
                         f"{tuple(hidden.shape[:-1])}, got {labels.dtype} {tuple(labels.shape)}")
    dtype = torch.float64 if torch.float64 in (hidden.dtype, weight.dtype) else torch.float32
    h = hidden.reshape(-1, hidden.shape[-1])
    flat = labels.reshape(-1)
    mask = flat != ignore_index

    def value(z_s: Tensor, rows: slice, m: Tensor | None) -> Tensor:
        return F.cross_entropy(z_s, flat[rows], ignore_index=ignore_index, reduction="sum")

    total = _fused_sum(value, h, weight, bias, mask, dtype, chunk_size)
    return total / mask.sum().clamp_min(1).to(total.dtype)
