"""CTC: connectionist temporal classification of per-frame scores against label sequences.

Trains a model that emits one distribution over ``C`` classes per frame (class ``blank`` = no
label) to transcribe: the probability of a label sequence is the sum over every frame alignment
that collapses to it (repeats merged, then blanks dropped), Graves et al. (ICML 2006). Used to
train speech teachers on characters (``HFModel(task="speech-ctc")``, or an encoder under
:class:`~lit_distill.models.ctc_head.CTCHead`).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_distill.contracts import LossTerm
from lit_distill.errors import ConfigError


def ctc_loss(logits: Tensor, targets: Tensor, target_lengths: Tensor, frame_mask: Tensor | None = None,
             blank: int = 0, zero_infinity: bool = True, reduction: Literal["sample", "label"] = "sample") -> Tensor:
    """CTC negative log-likelihood per target label.

    With ``p(y_b | x_b)`` summed over the alignments of sample ``b``'s first ``F_b`` frames:
    ``reduction="sample"`` is ``F.ctc_loss``'s ``"mean"``, ``mean_b [-log p(y_b | x_b) / max(1, S_b)]``;
    ``"label"`` is ``Σ_b -log p(y_b | x_b) / max(1, Σ_b S_b)`` (nats per target label over the batch).

    Args:
        logits: ``[B, F, C]`` unnormalised frame scores (log-softmaxed here, in float32 at least).
        targets: long ``[B, S]``, sample ``b``'s labels in ``targets[b, :S_b]`` (ids in ``[0, C)``,
            never ``blank``); what lies past ``S_b`` is ignored.
        target_lengths: long ``[B]``, ``S_b``.
        frame_mask: bool ``[B, F]``, True on the frames that cover real input; it must be a prefix
            per sample (frames ``0 .. F_b - 1``; only its count is read). None: every frame counts.
        blank: the blank class.
        zero_infinity: a sample whose target cannot be aligned to its frames (``F_b`` too short for
            ``S_b`` labels and their repeats) counts 0, without gradient, instead of ``inf``.
        reduction: ``sample`` (each sample's per-label loss weighs the same) or ``label`` (each
            label weighs the same).

    Returns:
        0-dim float32 (float64 for float64 logits) tensor.
    """
    batch, frames, _ = logits.shape
    log_probs = logits.to(torch.promote_types(logits.dtype, torch.float32)).log_softmax(-1)
    if frame_mask is None:
        frame_lengths = torch.full((batch,), frames, dtype=torch.long, device=logits.device)
    else:
        frame_lengths = frame_mask.sum(-1).long()
    args = (log_probs.transpose(0, 1), targets.long(), frame_lengths, target_lengths.long())
    if reduction == "sample":
        return F.ctc_loss(*args, blank=blank, reduction="mean", zero_infinity=zero_infinity)
    total = F.ctc_loss(*args, blank=blank, reduction="sum", zero_infinity=zero_infinity)
    return total / target_lengths.sum().clamp_min(1)


class CTC(LossTerm):
    """:func:`ctc_loss` as a loss term, for supervised CTC training (``teacher: null``).

    Defaults read the student's ``logits`` ``[B, F, C]`` and its ``features.frame_mask``
    ``[B, F]`` (left out when the model gives none: every frame counts), and the batch's
    ``targets`` ``[B, S]`` and ``target_lengths`` ``[B]`` (``datamodules.ASRDataModule``). The
    value is a per-sample mean, so batches carry no ``loss_mask``: the module normalises by the
    number of samples.

    Args:
        blank: the blank class.
        zero_infinity: impossible alignments count 0 instead of ``inf`` (see :func:`ctc_loss`).
        weight: multiplier of this term in the total loss.
        sources: overrides of where the logits, frame mask and targets come from.
    """

    default_sources: ClassVar[dict[str, str]] = {
        "logits": "student.logits", "targets": "batch.targets", "target_lengths": "batch.target_lengths",
        "frame_mask": "student.features.frame_mask"}

    def __init__(self, blank: int = 0, zero_infinity: bool = True, reduction: Literal["sample", "label"] = "sample",
                 weight: float = 1.0, sources: dict[str, str] | None = None) -> None:
        super().__init__(weight, sources)
        if blank < 0:
            raise ConfigError(f"CTC.blank: must be a class id >= 0, got {blank}")
        if reduction not in ("sample", "label"):
            raise ConfigError(f"CTC.reduction: '{reduction}' is not one of ['sample', 'label']")
        self.blank, self.zero_infinity, self.reduction = blank, zero_infinity, reduction

    def forward(self, logits: Tensor, targets: Tensor, target_lengths: Tensor,
                frame_mask: Tensor | None = None) -> Tensor:
        return ctc_loss(logits, targets, target_lengths, frame_mask, self.blank, self.zero_infinity, self.reduction)
