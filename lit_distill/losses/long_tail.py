"""Long-tail-aware supervised losses: logit adjustment (Menon et al., 2021).

A teacher trained with plain cross-entropy on long-tailed data predicts the head classes too
often; DeiT-LT's authors distil from teachers trained for the long tail. Logit adjustment trains
on ``z + τ·log π`` (π the training class prior) and predicts with the raw logits ``z``, which is
Fisher-consistent for the balanced error:

    L(z, y) = −log softmax(z + τ·log π)_y        (soft targets: −Σ_c y_c log softmax(z + τ·log π)_c)

With τ = 1 this is the balanced softmax. The prior comes from the training split's class counts:
give ``class_counts`` or let :class:`~lit_distill.callbacks.ClassPriorFromData` set them from the
datamodule's ``class_counts`` when fit starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from lit_distill.contracts import LossTerm
from lit_distill.errors import ConfigError
from lit_distill.losses.terms import cross_entropy, soft_cross_entropy


def log_prior(class_counts: Sequence[int] | Tensor) -> Tensor:
    """log π ``[C]`` of class counts (every count must be > 0)."""
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.dim() != 1 or (counts <= 0).any():
        raise ConfigError(f"class_counts: need one positive count per class, got {counts.tolist()}")
    return (counts / counts.sum()).log().float()


def logit_adjusted_cross_entropy(logits: Tensor, labels: Tensor, class_counts: Sequence[int] | Tensor,
                                 tau: float = 1.0, soft_labels: Tensor | None = None,
                                 label_smoothing: float = 0.0, ignore_index: int = -100) -> Tensor:
    """Cross-entropy of ``logits + τ·log π`` (see the module docstring), float32.

    Args:
        logits: ``[B, C]``.
        labels: ``[B]`` class ids (ignored when ``soft_labels`` is given).
        class_counts: training images per class, ``C`` positive numbers.
        tau: strength of the adjustment (0 = plain cross-entropy).
        soft_labels: ``[B, C]`` mixed targets, rows summing to 1.
        label_smoothing: ε, as in :class:`~lit_distill.losses.CrossEntropy`.
    """
    adjusted = logits.float() + tau * log_prior(class_counts).to(logits.device)
    if soft_labels is not None:
        return soft_cross_entropy(adjusted, soft_labels, label_smoothing)
    return cross_entropy(adjusted, labels, ignore_index, label_smoothing)


class LogitAdjustedCrossEntropy(LossTerm):
    """Logit-adjusted cross-entropy (balanced softmax at τ = 1), for long-tail-aware teachers.

    Args:
        tau: strength of the adjustment (Menon et al.: 1).
        class_counts: training images per class; None: set by ``ClassPriorFromData`` at fit start.
        label_smoothing: ε on the (mixed) targets.
        ignore_index: label value that does not count.
        weight: multiplier of this term in the total loss.
        sources: overrides of where the logits and labels come from.
    """

    default_sources: ClassVar[dict[str, str]] = {"logits": "student.logits", "labels": "batch.labels",
                                                 "soft_labels": "batch.soft_labels"}

    def __init__(self, tau: float = 1.0, class_counts: list[int] | None = None, label_smoothing: float = 0.0,
                 ignore_index: int = -100, weight: float = 1.0, sources: dict[str, str] | None = None) -> None:
        super().__init__(weight, sources)
        self.tau, self.label_smoothing, self.ignore_index = tau, label_smoothing, ignore_index
        self.class_counts = list(class_counts) if class_counts is not None else None
        if self.class_counts is not None:
            log_prior(self.class_counts)  # refuse bad counts at build time

    def forward(self, logits: Tensor, labels: Tensor, soft_labels: Tensor | None = None) -> Tensor:
        if self.class_counts is None:
            raise ConfigError("LogitAdjustedCrossEntropy.class_counts: unknown; give them, or add the callback "
                              "lit_distill.callbacks.ClassPriorFromData (reads the datamodule's class_counts)")
        if len(self.class_counts) != logits.shape[-1]:
            raise ConfigError(f"LogitAdjustedCrossEntropy.class_counts: {len(self.class_counts)} classes but the "
                              f"logits have {logits.shape[-1]}")
        return logit_adjusted_cross_entropy(logits, labels, self.class_counts, self.tau, soft_labels,
                                            self.label_smoothing, self.ignore_index)
