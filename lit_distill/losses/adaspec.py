"""AdaSPEC: distil a speculative-decoding draft on the tokens it can learn (Hu et al., 2025).

A small draft cannot match its target everywhere; AdaSPEC spends its capacity where matching is
possible. A *reference* model (a copy of the draft's initialisation, already distilled into the
target with forward KL) shows how far a draft-sized model gets on each token. Per counted token,

    kl_d = KL(p_target ‖ q_draft),   kl_r = KL(p_target ‖ q_reference),   Δ = kl_d − kl_r

(no gradient through ``Δ``), and the draft trains on the tokens with ``Δ ≥ quantile(Δ, 1 − k)``
over the batch's counted tokens (``k = 0.4``: the 40 % with the largest gap, the ones the
reference shows to be learnable and the draft has not learnt yet):

    loss = mean of kl_d over the kept tokens.

The authors scale the epochs by ``1 / k`` to train on as many tokens as plain distillation; here
the budget is the config's. Target, draft and reference share one vocabulary. The target and the
reference are the members ``target`` and ``reference`` of a ``lit_distill.models.MultiModel``
teacher (both on the batch's inputs), read as ``teachers.target.logits`` and
``teachers.reference.logits``. The module weights a term's mean by the batch's valid count; this
term's mean is over its kept tokens, as the authors' is (a fraction ``k`` of them).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from lit_distill.contracts import LossTerm
from lit_distill.errors import ConfigError
from lit_distill.losses.divergences import forward_kl


def token_kl(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """``KL(softmax(teacher) ‖ softmax(student))`` per position, float32 (float64 stays): ``[..., V]`` -> ``[...]``."""
    dtype = torch.float64 if torch.float64 in (student_logits.dtype, teacher_logits.dtype) else torch.float32
    log_p = teacher_logits.to(dtype).log_softmax(-1)
    log_q = student_logits.to(dtype).log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def selected_tokens(student_logits: Tensor, target_logits: Tensor, reference_logits: Tensor, mask: Tensor,
                    keep: float) -> Tensor:
    """Bool ``[...]``: the counted tokens whose gap ``KL(p‖q_draft) − KL(p‖q_reference)`` is in the top ``keep``."""
    with torch.no_grad():
        gap = (token_kl(student_logits.detach(), target_logits) - token_kl(reference_logits, target_logits)).double()
        # NaN outside the mask: nanquantile needs no boolean indexing, so no host sync in the step
        # (no counted token: the threshold is NaN and nothing is kept)
        threshold = torch.nanquantile(torch.where(mask, gap, torch.nan).flatten(), 1.0 - keep)
        return mask & (gap >= threshold)


class AdaSPEC(LossTerm):
    """AdaSPEC's selective forward KL from the target into the draft (see the module docstring).

    Args:
        keep: ``k``, the fraction of counted tokens trained on (those with the largest gap to
            the reference model), in (0, 1].
        weight: multiplier of this term in the total loss.
        sources: overrides of where the draft, target and reference logits and the mask come from.
    """

    default_sources: ClassVar[dict[str, str]] = {
        "student_logits": "student.logits",
        "teacher_logits": "teachers.target.logits",
        "reference_logits": "teachers.reference.logits",
        "mask": "batch.loss_mask",
    }

    def __init__(self, keep: float = 0.4, weight: float = 1.0, sources: dict[str, str] | None = None) -> None:
        super().__init__(weight, sources)
        if not 0 < keep <= 1:
            raise ConfigError(f"AdaSPEC.keep: the fraction of tokens kept must be in (0, 1], got {keep!r}")
        self.keep = float(keep)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, reference_logits: Tensor,
                mask: Tensor | None = None) -> Tensor:
        """Logits ``[B, L, V]`` each (one vocabulary), mask bool ``[B, L]``. Returns a 0-dim tensor."""
        if mask is None:
            mask = torch.ones(student_logits.shape[:-1], dtype=torch.bool, device=student_logits.device)
        kept = selected_tokens(student_logits, teacher_logits, reference_logits, mask, self.keep)
        return forward_kl(student_logits, teacher_logits.detach(), kept)
