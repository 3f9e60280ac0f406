"""Dense (per-pixel) losses for semantic segmentation, and their YAML terms.

All functions take logits ``[B, C, H, W]`` (``C`` classes, one map per class) and
labels ``[B, H, W]``.

Normalisation (per-image means). Every loss here is the mean over the ``B`` images of
a per-image value. With no ``loss_mask`` in the batch, ``DistillationModule`` weighs
each micro-batch by its batch size and divides by the step's total number of images,
so gradient accumulation and data parallelism give exactly the loss of one big batch.

- :func:`pixel_cross_entropy`: per image, the mean cross-entropy over its pixels whose
  label is not ``ignore_index`` (an image without such a pixel contributes 0).
- :func:`channel_wise_distillation` (CWD, Shu et al. 2021): for each image and class
  channel, ``softmax(z / T)`` over the ``H·W`` positions turns the channel into a spatial
  distribution; per image ``T² / C · Σ_c KL(p_teacher,c ‖ p_student,c)``. Its mean over
  images is the paper's ``T² / (N·C) · Σ_n Σ_c KL``.
- :func:`pixel_kd`: per pixel, ``KL(softmax(z_t / T) ‖ softmax(z_s / T))`` over the
  classes; per image the mean over its pixels (or the pixels where ``mask`` is True),
  times ``T²``.

Computed in float32 (float64 inputs stay float64).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_distill.contracts import LossTerm
from lit_distill.errors import ConfigError

__all__ = ["channel_wise_distillation", "pixel_cross_entropy", "pixel_kd",
           "ChannelWiseDistillation", "PixelCrossEntropy", "PixelKD"]


def _float(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()


def _check_dense(student: Tensor, teacher: Tensor, name: str) -> None:
    if student.ndim != 4 or student.shape != teacher.shape:
        raise ValueError(f"{name}: expects student and teacher logits of one shape [B, C, H, W], got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")


def pixel_cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = 255) -> Tensor:
    """Per-image mean pixel cross-entropy, averaged over images.

    Args:
        logits: ``[B, C, H, W]`` class scores.
        labels: ``[B, H, W]`` integer class ids; ``ignore_index`` does not count.
        ignore_index: label value that does not count.

    Returns:
        0-dim tensor: ``mean_b [ Σ_{valid p} CE(b, p) / max(1, #valid(b)) ]``.
    """
    if logits.ndim != 4 or labels.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"pixel_cross_entropy: logits [B, C, H, W] and labels [B, H, W] expected, got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    per_pixel = F.cross_entropy(_float(logits), labels, ignore_index=ignore_index, reduction="none")
    valid = (labels != ignore_index).flatten(1).sum(1).clamp_min(1)
    return (per_pixel.flatten(1).sum(1) / valid.to(per_pixel.dtype)).mean()


def channel_wise_distillation(student_logits: Tensor, teacher_logits: Tensor,
                              temperature: float = 4.0) -> Tensor:
    """Channel-wise distillation: KL between per-channel spatial distributions.

    Args:
        student_logits: ``[B, C, H, W]``.
        teacher_logits: ``[B, C, H, W]`` (a target: detach it if it must not get gradients).
        temperature: softens both sides' spatial softmax; the result is scaled by ``T²``.

    Returns:
        0-dim tensor: ``T² / (B·C) · Σ_b Σ_c KL(softmax_HW(z_t[b,c]/T) ‖ softmax_HW(z_s[b,c]/T))``.
    """
    _check_dense(student_logits, teacher_logits, "channel_wise_distillation")
    s = _float(student_logits).flatten(2) / temperature  # [B, C, HW]
    t = _float(teacher_logits).flatten(2).to(s.dtype) / temperature
    log_p_t = t.log_softmax(-1)
    kl = (log_p_t.exp() * (log_p_t - s.log_softmax(-1))).sum(-1)  # [B, C]
    return kl.mean() * temperature ** 2


def pixel_kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0,
             mask: Tensor | None = None) -> Tensor:
    """Pixel-wise KD: per-pixel KL over classes, per-image mean over pixels, mean over images.

    Args:
        student_logits: ``[B, C, H, W]``.
        teacher_logits: ``[B, C, H, W]``.
        temperature: divides both sides' logits; the result is scaled by ``T²``.
        mask: optional bool ``[B, H, W]``: the pixels that count (an image with none gives 0).

    Returns:
        0-dim tensor: ``T² · mean_b [ Σ_{p∈mask_b} KL(p_t ‖ p_s) / max(1, |mask_b|) ]``.
    """
    _check_dense(student_logits, teacher_logits, "pixel_kd")
    s = _float(student_logits) / temperature
    t = _float(teacher_logits).to(s.dtype) / temperature
    log_p_t = t.log_softmax(1)
    kl = (log_p_t.exp() * (log_p_t - s.log_softmax(1))).sum(1)  # [B, H, W]
    if mask is None:
        per_image = kl.flatten(1).mean(1)
    else:
        weights = mask.to(kl.dtype).flatten(1)
        per_image = (kl.flatten(1) * weights).sum(1) / weights.sum(1).clamp_min(1)
    return per_image.mean() * temperature ** 2


def _check_temperature(temperature: float, name: str) -> float:
    if not temperature > 0:
        raise ConfigError(f"{name}.temperature: must be > 0, got {temperature}")
    return float(temperature)


class PixelCrossEntropy(LossTerm):
    """Supervised per-pixel cross-entropy (:func:`pixel_cross_entropy`) against ``batch.labels``.

    Args:
        ignore_index: label value that does not count (the datamodule's, e.g. 255).
        weight: multiplier of this term in the total loss.
        sources: overrides, e.g. ``{logits: student.features.path2_logits}`` for LAD's second path.
    """

    default_sources: ClassVar[dict[str, str]] = {"logits": "student.logits", "labels": "batch.labels"}

    def __init__(self, ignore_index: int = 255, weight: float = 1.0,
                 sources: dict[str, str] | None = None) -> None:
        super().__init__(weight, sources)
        self.ignore_index = ignore_index

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Args: logits ``[B, C, H, W]``; labels ``[B, H, W]``. Returns a 0-dim tensor."""
        return pixel_cross_entropy(logits, labels, self.ignore_index)


class ChannelWiseDistillation(LossTerm):
    """CWD (:func:`channel_wise_distillation`) of ``student.logits`` towards ``teacher.logits``.

    The target side is always detached (``sg``), so the same term also serves LAD's
    dual-path consistency, where both sides are outputs of the model being trained
    (e.g. ``sources: {teacher_logits: student.features.path2_logits}``).

    Args:
        temperature: of the spatial softmax (LAD and CWD use 4).
        weight: multiplier of this term in the total loss.
        sources: overrides of where the two logits come from.
    """

    default_sources: ClassVar[dict[str, str]] = {"student_logits": "student.logits",
                                                 "teacher_logits": "teacher.logits"}

    def __init__(self, temperature: float = 4.0, weight: float = 1.0,
                 sources: dict[str, str] | None = None) -> None:
        super().__init__(weight, sources)
        self.temperature = _check_temperature(temperature, type(self).__name__)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        """Args: both ``[B, C, H, W]``. Returns a 0-dim tensor."""
        return channel_wise_distillation(student_logits, teacher_logits.detach(), self.temperature)


class PixelKD(LossTerm):
    """Pixel-wise KD (:func:`pixel_kd`) of ``student.logits`` towards ``teacher.logits``.

    Args:
        temperature: divides both sides' logits; the result is scaled by its square.
        weight: multiplier of this term in the total loss.
        sources: overrides of where the logits (and an optional bool ``mask`` [B, H, W]) come from.
    """

    default_sources: ClassVar[dict[str, str]] = {"student_logits": "student.logits",
                                                 "teacher_logits": "teacher.logits"}

    def __init__(self, temperature: float = 1.0, weight: float = 1.0,
                 sources: dict[str, str] | None = None) -> None:
        super().__init__(weight, sources)
        self.temperature = _check_temperature(temperature, type(self).__name__)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None) -> Tensor:
        """Args: logits ``[B, C, H, W]``; mask bool ``[B, H, W]`` or None. Returns a 0-dim tensor."""
        return pixel_kd(student_logits, teacher_logits.detach(), self.temperature, mask)
