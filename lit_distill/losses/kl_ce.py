"""Forward KL and cross-entropy from one student softmax: the usual ``α·CE + β·KL`` step, fused.

Hinton-style distillation at T = 1 reads the student's softmax twice: the forward KL for
``q − p`` and the cross-entropy for ``q − onehot``. Computed as two losses, that is two
log-softmaxes over ``[tokens, V]``, two gradient tensors and a pass to add them.
:func:`forward_kl_and_cross_entropy` computes both values from one log-softmax per side and, in
backward, writes the combined gradient in one pass, holding as much memory as the two separate
losses do (two ``[N, V]`` float32 buffers: ``q`` and ``q − p``).

:func:`paired_values` is how :class:`~lit_distill.module.DistillationModule` uses it: when a
``ForwardKL`` and a ``CrossEntropy`` term read the same student logits at T = 1, their values come
from this kernel; every other term, and the same terms in other settings, are evaluated as before.
The values (and gradients) are those of the two terms up to float32 rounding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lit_distill.contracts import LossTerm
from lit_distill.losses.divergence_rows import _kl_value_grad
from lit_distill.losses.divergences import (
    _LOGIT_FLOOR,
    _check,
    _fast_log_probs,
    _fill_rows,
    forward_kl,
)
from lit_distill.losses.terms import CrossEntropy, ForwardKL, cross_entropy

__all__ = ["forward_kl_and_cross_entropy", "paired_values"]


class _KLAndCrossEntropy(torch.autograd.Function):
    """Sums of forward KL over ``mask`` rows and of CE over label rows, with closed-form gradients.

    Forward keeps ``q`` (the student's probabilities, every row) and ``q − p`` (zero on masked-out
    rows); backward combines them with the two incoming gradients in one pass.
    """

    @staticmethod
    def forward(ctx, s, t, labels, mask, ignore_index):
        log_q = torch.log_softmax(s.float(), dim=-1)  # [N, V]
        valid = labels != ignore_index
        safe_labels = torch.where(valid, labels, 0)
        ce_rows = -log_q.gather(1, safe_labels.unsqueeze(1)).squeeze(1)  # before the floor, as F.cross_entropy
        ce_sum = torch.where(valid, ce_rows, 0.0).sum()
        log_q.clamp_min_(_LOGIT_FLOOR)
        log_p = _fast_log_probs(t, mask, 1.0, torch.float32)
        q_minus_p = torch.empty_like(log_p)
        kl_rows = _kl_value_grad(log_p, log_q, q_minus_p)  # log_q now holds q
        if mask is not None:
            kl_rows = torch.where(mask, kl_rows, 0.0)
            _fill_rows(q_minus_p, ~mask, 0.0)
        ctx.save_for_backward(log_q, q_minus_p, valid, safe_labels)
        ctx.student_dtype = s.dtype
        return kl_rows.sum(), ce_sum

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_kl, grad_ce):
        q, q_minus_p, valid, safe_labels = ctx.saved_tensors
        row_ce = valid.float().mul_(grad_ce).unsqueeze(1)  # [N, 1]: d(CE sum)/d(row) scale
        grad = q * row_ce  # CE: q − onehot on label rows
        grad.scatter_add_(1, safe_labels.unsqueeze(1), -row_ce)
        grad.addcmul_(q_minus_p, grad_kl)  # KL: q − p on mask rows
        return grad.to(ctx.student_dtype), None, None, None, None


def forward_kl_and_cross_entropy(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor,
                                 mask: Tensor | None = None, ignore_index: int = -100) -> tuple[Tensor, Tensor]:
    """``(forward_kl(s, t, mask), cross_entropy(s, labels, ignore_index))`` from one student softmax.

    Same values and gradients as the two functions (temperature 1, no label smoothing) up to
    float32 rounding; faster when the student needs a gradient and the teacher does not (the
    distillation step), otherwise it calls the two functions.

    Args:
        student_logits: ``[..., V]``, float32 / bfloat16 / float16 (float64 calls the two
            functions, which keep their own output dtypes).
        teacher_logits: ``[..., V]``, same shape.
        labels: ``[...]`` (the logits' leading shape) integer class ids; ``ignore_index`` entries do
            not count in the CE.
        mask: optional bool ``[...]``, True where a position counts in the KL.
        ignore_index: label value the CE ignores.

    Returns:
        ``(kl, ce)``, 0-dim float32 tensors: the KL averaged over mask positions (0 if none), the
        CE averaged over labelled positions (0 if none).

    Raises:
        ValueError: as :func:`~lit_distill.losses.divergences.forward_kl` for the logits and mask.
    """
    _check(student_logits, teacher_logits, mask, 1.0, None)
    fused = (torch.is_grad_enabled() and student_logits.requires_grad and not teacher_logits.requires_grad
             and torch.float64 not in (student_logits.dtype, teacher_logits.dtype)
             and labels.shape == student_logits.shape[:-1])
    if not fused:
        return forward_kl(student_logits, teacher_logits, mask), cross_entropy(student_logits, labels, ignore_index)
    vocab = student_logits.shape[-1]
    flat_mask = None if mask is None else mask.reshape(-1)
    kl_sum, ce_sum = _KLAndCrossEntropy.apply(student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab),
                                              labels.reshape(-1), flat_mask, ignore_index)
    kl_count = max(labels.numel(), 1) if flat_mask is None else flat_mask.sum().clamp_min(1)
    ce_count = (labels != ignore_index).sum().clamp_min(1)
    return kl_sum / kl_count, ce_sum / ce_count.to(torch.float32)


def _unhooked(term: LossTerm) -> bool:
    # A paired term's forward is not called: hooks (GradientShare records values through one)
    # must see it run, so a hooked term is evaluated alone.
    return not (term._forward_hooks or term._forward_pre_hooks)


def _pairable_kl(term: LossTerm) -> bool:
    return (type(term) is ForwardKL and float(term.temperature) == 1.0 and term.chunk_size is None
            and not term.padded_vocab and _unhooked(term))


def _pairable_ce(term: LossTerm, inputs: dict[str, Any]) -> bool:
    return (type(term) is CrossEntropy and not term.label_smoothing and inputs.get("soft_labels") is None
            and _unhooked(term))


def paired_values(terms: Mapping[str, LossTerm], inputs: Mapping[str, dict[str, Any]]) -> dict[str, Tensor]:
    """The values of one ``ForwardKL`` + ``CrossEntropy`` pair that read the same student logits.

    Args:
        terms: the module's loss terms by name.
        inputs: each term's gathered ``forward`` arguments (``LossTerm.gather``).

    Returns:
        ``{kl_name: kl, ce_name: ce}`` computed by :func:`forward_kl_and_cross_entropy` for the
        first such pair (temperature 1, no chunking, no padded vocab, no label smoothing, no soft
        labels, equal logit shapes, no forward hooks on either term), or ``{}``: the caller
        evaluates the remaining terms itself.
    """
    for kl_name, kl_term in terms.items():
        if not _pairable_kl(kl_term):
            continue
        kl_in = inputs[kl_name]
        student, teacher = kl_in["student_logits"], kl_in["teacher_logits"]
        if student.shape != teacher.shape:
            continue  # the KL term raises its own error
        for ce_name, ce_term in terms.items():
            if _pairable_ce(ce_term, inputs[ce_name]) and inputs[ce_name]["logits"] is student:
                kl, ce = forward_kl_and_cross_entropy(student, teacher, inputs[ce_name]["labels"],
                                                      kl_in.get("mask"), ce_term.ignore_index)
                return {kl_name: kl, ce_name: ce}
    return {}
