"""Preference distillation (DPO with the teacher as reference) and the MoE auxiliary loss.

DPO (Rafailov et al.) with a *teacher* reference, as in LLaVA-MoD's stage 2::

    L = −log σ( β · [ (log π_s(y_w|x) − log π_T(y_w|x)) − (log π_s(y_l|x) − log π_T(y_l|x)) ] )

``log π(y|x)`` is the sum of the response tokens' log-probabilities (labels
already shifted, see :mod:`lit_distill.contracts`), ``y_w`` the chosen and
``y_l`` the rejected response; the loss is averaged over pairs.

Batch layout read by :class:`DPO` (written by :mod:`datamodules.vlm` in
preference mode): ``2P`` sequences, rows ``0..P-1`` the chosen responses and
rows ``P..2P-1`` the rejected responses of the same ``P`` prompts, in the same
order; ``labels`` ``[2P, L]`` shifted, ``-100`` off the response, and
``response_mask`` ``[2P, L]`` bool. The batch deliberately has no
``loss_mask``: ``DistillationModule`` then weights each micro-batch by its
number of sequences (``2P``), so under gradient accumulation and data
parallelism the objective stays the mean over all pairs of the step.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_distill.contracts import LossTerm
from lit_distill.errors import ConfigError

IGNORE_INDEX = -100


def sequence_logprobs(logits: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
    """Summed log-probability of each sequence's target tokens.

    Args:
        logits: ``[B, L, V]``; position ``t`` predicts ``labels[:, t]``.
        labels: ``[B, L]`` integer, already shifted; ``-100`` where nothing counts.
        mask: ``[B, L]`` bool positions that count (default: ``labels != -100``).

    Returns:
        ``[B]`` float32 (float64 for float64 logits): ``Σ_t mask · log softmax(logits_t)[labels_t]``.
    """
    if mask is None:
        mask = labels != IGNORE_INDEX
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    safe = labels.clamp_min(0).masked_fill(~mask, 0)
    logp = torch.log_softmax(logits.to(dtype), dim=-1).gather(-1, safe[..., None])[..., 0]
    return (logp * mask).sum(dim=-1)


def dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, reference_chosen_logps: Tensor,
             reference_rejected_logps: Tensor, beta: float = 0.1) -> Tensor:
    """Mean DPO loss over pairs.

    Args:
        policy_chosen_logps: ``[P]`` log π_s(y_w|x) (student).
        policy_rejected_logps: ``[P]`` log π_s(y_l|x).
        reference_chosen_logps: ``[P]`` log π_ref(y_w|x) (the teacher; no gradient needed).
        reference_rejected_logps: ``[P]`` log π_ref(y_l|x).
        beta: inverse temperature of the implicit reward.

    Returns:
        0-dim tensor: ``mean(−log σ(β·((π_w − ref_w) − (π_l − ref_l))))``.
    """
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * margin).mean()


def split_pairs(values: Tensor) -> tuple[Tensor, Tensor]:
    """``[2P, ...]`` → (chosen ``[P, ...]``, rejected ``[P, ...]``): first half, second half."""
    if values.shape[0] % 2:
        raise ConfigError(f"DPO: a preference batch holds chosen then rejected rows (an even number); "
                          f"got {values.shape[0]} rows (use datamodules.VLMDataModule with preference data)")
    half = values.shape[0] // 2
    return values[:half], values[half:]


class DPO(LossTerm):
    """DPO of the student against the teacher as the frozen reference (LLaVA-MoD stage 2).

    Reads ``student.logits``, ``teacher.logits`` (computed without gradients by
    ``Teacher``), ``batch.labels`` and ``batch.response_mask`` of a preference
    batch (first half chosen, second half rejected; see the module docstring).

    Args:
        beta: DPO inverse temperature (LLaVA-MoD: 0.1).
        weight: multiplier of this term in the total loss.
        sources: overrides of where the logits, labels and mask come from.
    """

    default_sources: ClassVar[dict[str, str]] = {
        "student_logits": "student.logits", "teacher_logits": "teacher.logits",
        "labels": "batch.labels", "mask": "batch.response_mask"}

    def __init__(self, beta: float = 0.1, weight: float = 1.0, sources: dict[str, str] | None = None) -> None:
        super().__init__(weight, sources)
        if beta <= 0:
            raise ConfigError(f"DPO.beta: must be > 0, got {beta}")
        self.beta = beta

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, labels: Tensor,
                mask: Tensor | None = None) -> Tensor:
        """Args: logits ``[2P, L, V]``; labels/mask ``[2P, L]``. Returns a 0-dim float32 tensor."""
        policy = sequence_logprobs(student_logits, labels, mask)
        with torch.no_grad():
            reference = sequence_logprobs(teacher_logits.detach(), labels, mask)
        return dpo_loss(*split_pairs(policy), *split_pairs(reference), beta=self.beta)


class MoEAuxLoss(LossTerm):
    """The student's MoE load-balancing loss (``student.features.moe_aux_loss``), as is.

    Args:
        weight: multiplier (LLaVA-MoD: 0.01).
        sources: override of where the value comes from.
    """

    default_sources: ClassVar[dict[str, str]] = {"aux": "student.features.moe_aux_loss"}

    def __init__(self, weight: float = 0.01, sources: dict[str, str] | None = None) -> None:
        super().__init__(weight, sources)

    def forward(self, aux: Tensor) -> Tensor:
        """Args: aux 0-dim. Returns it (float32)."""
        return aux.float()
