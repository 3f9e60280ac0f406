"""Per-row divergence formulas and their closed-form student gradients (internal to lit_distill.losses).

Every function takes finite log-probabilities ``[n, V]`` (teacher ``lp``, student ``lq``) and
works row by row; :mod:`lit_distill.losses.divergences` prepares the log-probs (temperature,
floor, mask) and reduces the rows (mean over valid positions, chunking, autograd), and
:mod:`lit_distill.losses.fused` and :mod:`lit_distill.losses.kl_ce` reuse the same rows.

- ``_kl``, ``_jsd``, ``_skew_kl``, ``_tvd`` (and ``_swap`` for the reverse forms): the value per
  row, differentiable by autograd (used when the teacher needs a gradient too);
- ``_*_value_grad``: the value per row and, written into ``out``, the gradient with respect to
  the student's temperature-scaled logits, for a teacher without gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

# A per-position divergence: (teacher log-probs, student log-probs), both [n, V] -> [n].
DivFn = Callable[[Tensor, Tensor], Tensor]


def _kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """KL(a ‖ b) per row from finite log-probs ``[n, V]`` -> ``[n]``."""
    # a row-wise dot product (bmm) does not materialise the [n, V] product
    return torch.einsum("nv,nv->n", log_a.exp(), log_a - log_b)


def _log_mix(log_a: Tensor, log_b: Tensor, w: float) -> Tensor:
    """log(w·a + (1−w)·b) for w ∈ [0, 1), via logaddexp (never log of a sum of probs)."""
    if w == 0.0:
        return log_b
    return torch.logaddexp(log_a + math.log(w), log_b + math.log1p(-w))


def _skew_kl(lp: Tensor, lq: Tensor, alpha: float) -> Tensor:
    return _kl(lp, _log_mix(lp, lq, alpha))


def _swap(div: DivFn) -> DivFn:
    """The same divergence with the roles of teacher and student exchanged (reverse forms)."""
    return lambda lp, lq: div(lq, lp)


def _jsd(lp: Tensor, lq: Tensor, beta: float) -> Tensor:
    lm = _log_mix(lp, lq, beta)
    return beta * _kl(lp, lm) + (1.0 - beta) * _kl(lq, lm)


def _tvd(lp: Tensor, lq: Tensor) -> Tensor:
    return 0.5 * (lp.exp() - lq.exp()).abs().sum(-1)


# Closed-form gradients with respect to the student's temperature-scaled logits x, for a
# teacher without gradient. For a divergence D(p, q) of q = softmax(x):
#   ∂D/∂x = q ⊙ g − q · Σ_v q_v g_v  with  g = ∂D/∂q.
# Each function below takes finite log-probs lp, lq [n, V] (it may overwrite them), writes
# ∂D/∂x into ``out`` [n, V] and returns the per-row divergence [n]. Products with q are formed
# in log space where g alone could be infinite (entries with q = 0).
ValueAndGrad = Callable[[Tensor, Tensor, Tensor], Tensor]


def _kl_value_grad(lp: Tensor, lq: Tensor, out: Tensor) -> Tensor:
    # No new [n, V] buffer where ``out`` can hold log p − log q until the gradient overwrites it
    # (on the CPU each fresh buffer costs a pass of page faults).
    diff = torch.sub(lp, lq, out=out) if out.dtype == lp.dtype else lp - lq
    p = lp.exp_()
    per_row = torch.einsum("nv,nv->n", p, diff)
    torch.sub(lq.exp_(), p, out=out)  # g = −p / q: q ⊙ g − q Σ q g = q − p
    return per_row


def _reverse_kl_value_grad(lp: Tensor, lq: Tensor, out: Tensor) -> Tensor:
    q = lq.exp()
    d = lq.sub_(lp)  # log q − log p
    per_row = torch.einsum("nv,nv->n", q, d)
    torch.sub(d, per_row.unsqueeze(-1), out=out).mul_(q)  # g = d + 1: q ⊙ (d − KL(q ‖ p))
    return per_row


def _finish(q_g: Tensor, q: Tensor, out: Tensor) -> None:
    """``out = q ⊙ g − q · Σ_v q_v g_v`` from ``q ⊙ g`` and ``q`` (``q`` is overwritten)."""
    torch.sub(q_g, q.mul_(q_g.sum(-1, keepdim=True)), out=out)


def _jsd_value_grad(lp: Tensor, lq: Tensor, out: Tensor, beta: float) -> Tensor:
    lm = _log_mix(lp, lq, beta)
    q = lq.exp()
    d_q = lq.sub_(lm)  # log q − log M
    per_row = beta * torch.einsum("nv,nv->n", lp.exp(), lp - lm) + (1.0 - beta) * torch.einsum("nv,nv->n", q, d_q)
    _finish(d_q.mul_(q).mul_(1.0 - beta), q, out)  # g = (1−β)(log q − log M)
    return per_row


def _skew_kl_value_grad(lp: Tensor, lq: Tensor, out: Tensor, alpha: float) -> Tensor:
    # D = KL(p ‖ m), m = αp + (1−α)q: g = −(1−α) p / m
    d = lp - _log_mix(lp, lq, alpha)  # log p − log m
    per_row = torch.einsum("nv,nv->n", lp.exp(), d)
    q = lq.exp_()
    _finish(d.exp_().mul_(q).mul_(alpha - 1.0), q, out)
    return per_row


def _skew_reverse_kl_value_grad(lp: Tensor, lq: Tensor, out: Tensor, alpha: float) -> Tensor:
    # D = KL(q ‖ m), m = αq + (1−α)p: g = log q − log m + 1 − α q / m (the 1 cancels)
    d = lq - _log_mix(lq, lp, alpha)  # log q − log m
    q = lq.exp_()
    per_row = torch.einsum("nv,nv->n", q, d)
    _finish(d.sub_(d.exp().mul_(alpha)).mul_(q), q, out)
    return per_row


def _tvd_value_grad(lp: Tensor, lq: Tensor, out: Tensor) -> Tensor:
    q = lq.exp_()
    diff = q - lp.exp_()
    per_row = 0.5 * diff.abs().sum(-1)
    _finish(diff.sign_().mul_(q).mul_(0.5), q, out)  # g = ½ sign(q − p)
    return per_row


# Value-and-gradient functions whose masked-out rows (both sides zeroed: equal distributions)
# give exactly zero without masking; the others are masked explicitly.
_EXACT_ON_EQUAL_ROWS = (_kl_value_grad, _reverse_kl_value_grad, _tvd_value_grad)
