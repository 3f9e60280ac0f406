"""Multi-label binary cross-entropy: every class is its own yes/no question.

For logits ``z`` and targets ``y`` in [0, 1] (multi-hot, or soft), element by element::

    ℓ(z, y) = −y·log σ(z) − (1 − y)·log(1 − σ(z)) = max(z, 0) − z·y + log(1 + exp(−|z|))

(the stable form ``torch.nn.functional.binary_cross_entropy_with_logits`` uses), averaged over the
valid elements: every element without a mask, else the elements where the mask is True (a mask
``[...]`` without the class dimension masks whole samples, every class of them). Computed in
float32 (float64 inputs stay float64).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_distill.contracts import LossTerm

__all__ = ["MultiLabelBCE", "multilabel_bce"]


def multilabel_bce(logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean binary cross-entropy of ``logits`` against ``targets`` over the valid elements.

    Args:
        logits: ``[..., C]`` one score per class (e.g. ``[B, C]`` for an image classifier).
        targets: ``[..., C]`` in [0, 1], the same shape (1 = the class is present).
        mask: bool ``[...]`` (per sample: all its ``C`` labels count or none) or ``[..., C]`` (per
            label); False elements do not count. None: every element counts.

    Returns:
        0-dim tensor: ``Σ_valid ℓ / #valid`` (0 when nothing is valid).
    """
    if logits.shape != targets.shape:
        raise ValueError(f"multilabel_bce: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} "
                         "must have one shape [..., C] (one multi-hot target per class score)")
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    per_element = F.binary_cross_entropy_with_logits(logits.to(dtype), targets.to(dtype), reduction="none")
    if mask is None:
        return per_element.mean()
    if mask.shape == logits.shape[:-1]:
        mask = mask.unsqueeze(-1)
    if mask.shape[:-1] != logits.shape[:-1] or mask.shape[-1] not in (1, logits.shape[-1]):
        raise ValueError(f"multilabel_bce: mask {tuple(mask.shape)} fits neither the samples "
                         f"{tuple(logits.shape[:-1])} nor the labels {tuple(logits.shape)}")
    valid = mask.bool().expand_as(per_element)
    return torch.where(valid, per_element, 0.0).sum() / valid.sum().clamp_min(1)


class MultiLabelBCE(LossTerm):
    """Multi-label BCE of the student's logits against multi-hot ``batch.labels`` (float ``[B, C]``).

    Args:
        weight: multiplier of this term in the total loss.
        sources: overrides of where the logits, targets and mask come from (the default mask,
            ``batch.loss_mask``, is skipped when the batch has none).
    """

    default_sources: ClassVar[dict[str, str]] = {"logits": "student.logits", "targets": "batch.labels",
                                                 "mask": "batch.loss_mask"}

    def forward(self, logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
        """Args: logits, targets ``[..., C]``; mask bool ``[...]`` or ``[..., C]``. Returns a 0-dim tensor."""
        return multilabel_bce(logits, targets, mask)
