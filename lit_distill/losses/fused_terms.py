"""YAML terms for the fused logit losses of :mod:`lit_distill.losses.fused`.

They read last hidden states and LM-head weights that ``HFCausalLM(compute_logits: false)``
returns as features, so neither side's full ``[tokens, vocab]`` logits are ever built.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

from torch import Tensor

from lit_distill.contracts import LossTerm
from lit_distill.errors import ConfigError
from lit_distill.losses.fused import (
    fused_cross_entropy,
    fused_forward_kl,
    fused_reverse_kl,
)

_FUSED_SOURCES = {
    "student_hidden": "student.features.last_hidden_state",
    "student_weight": "student.features.lm_head.weight",
    "student_bias": "student.features.lm_head.bias",
    "teacher_hidden": "teacher.features.last_hidden_state",
    "teacher_weight": "teacher.features.lm_head.weight",
    "teacher_bias": "teacher.features.lm_head.bias",
    "mask": "batch.loss_mask",
}


def check_chunking(owner: str, chunk_size: int, temperature: float) -> None:
    """One-line ConfigErrors for a fused term's ``chunk_size`` (a positive int) and ``temperature`` (finite, > 0)."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ConfigError(f"{owner}.chunk_size: must be a positive int, got {chunk_size!r}")
    if not (float(temperature) > 0 and math.isfinite(float(temperature))):
        raise ConfigError(f"{owner}.temperature: must be a finite number > 0, got {temperature!r}")


class FusedLogitDivergence(LossTerm):
    """Base of the fused logit-divergence terms: hidden states × LM heads, no full logits.

    Both adapters must return their last hidden states and LM head in ``features``
    instead of logits: ``HFCausalLM(..., compute_logits: false)`` does (features
    ``last_hidden_state``, ``lm_head.weight`` and, when the head has one,
    ``lm_head.bias``). A bias source missing from the outputs is left out (no bias).

    Args:
        temperature: divides both sides' logits; the result is scaled by its square.
        chunk_size: positions whose logits exist at once (memory ∝ chunk_size × V).
        weight: multiplier of this term in the total loss.
        sources: overrides of where hidden states, heads and mask come from.
    """

    default_sources: ClassVar[dict[str, str]] = _FUSED_SOURCES
    divergence: ClassVar[Callable[..., Tensor]]

    def __init__(self, temperature: float = 1.0, chunk_size: int = 256, weight: float = 1.0,
                 sources: dict[str, str] | None = None) -> None:
        super().__init__(weight, sources)
        check_chunking(type(self).__name__, chunk_size, temperature)
        self.temperature = float(temperature)
        self.chunk_size = chunk_size

    def forward(self, student_hidden: Tensor, student_weight: Tensor, teacher_hidden: Tensor,
                teacher_weight: Tensor, mask: Tensor | None = None, student_bias: Tensor | None = None,
                teacher_bias: Tensor | None = None) -> Tensor:
        return type(self).divergence(student_hidden, student_weight, teacher_hidden, teacher_weight, mask,
                                     student_bias=student_bias, teacher_bias=teacher_bias,
                                     temperature=self.temperature, chunk_size=self.chunk_size)


class FusedCrossEntropy(LossTerm):
    """Supervised cross-entropy from hidden states × LM head (:func:`fused_cross_entropy`).

    The companion of the fused divergences when the student runs with
    ``compute_logits: false`` (the plain ``CrossEntropy`` term needs logits).

    Args:
        chunk_size: positions whose logits exist at once.
        ignore_index: label value that does not count.
        weight: multiplier of this term in the total loss.
        sources: overrides of where hidden states, head and labels come from.
    """

    default_sources: ClassVar[dict[str, str]] = {
        "hidden": "student.features.last_hidden_state", "head_weight": "student.features.lm_head.weight",
        "head_bias": "student.features.lm_head.bias", "labels": "batch.labels"}

    def __init__(self, chunk_size: int = 256, ignore_index: int = -100, weight: float = 1.0,
                 sources: dict[str, str] | None = None) -> None:
        super().__init__(weight, sources)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
            raise ConfigError(f"FusedCrossEntropy.chunk_size: must be a positive int, got {chunk_size!r}")
        self.chunk_size = chunk_size
        self.ignore_index = ignore_index

    def forward(self, hidden: Tensor, head_weight: Tensor, labels: Tensor,
                head_bias: Tensor | None = None) -> Tensor:
        return fused_cross_entropy(hidden, head_weight, labels, head_bias, self.ignore_index, self.chunk_size)


class FusedForwardKL(FusedLogitDivergence):
    """KL(teacher ‖ student) from hidden states × LM heads (:func:`fused_forward_kl`), token mean, T²."""

    divergence = staticmethod(fused_forward_kl)


class FusedReverseKL(FusedLogitDivergence):
    """KL(student ‖ teacher) from hidden states × LM heads (:func:`fused_reverse_kl`), token mean, T²."""

    divergence = staticmethod(fused_reverse_kl)


__all__ = ["FusedCrossEntropy", "FusedForwardKL", "FusedLogitDivergence", "FusedReverseKL"]
