"""Feature distillation: match intermediate representations, through a learned projector.

The student's features ``[..., Ds]`` are mapped to the teacher's width ``Dt`` by a linear
projector that belongs to the student side (optimised and checkpointed with it) whenever
``student_dim`` and ``teacher_dim`` are given; without one the widths must already agree.
"""

from __future__ import annotations

from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor, nn

from lit_distill.contracts import LossTerm
from lit_distill.errors import ConfigError


def feature_mse(student: Tensor, teacher: Tensor, mask: Tensor | None = None, normalize: bool = False) -> Tensor:
    """Mean squared error between features, averaged over the feature width and valid positions.

    Args:
        student: ``[..., D]`` (already in the teacher's width).
        teacher: ``[..., D]`` (no gradient flows into it).
        mask: bool ``[...]``, True where a position counts (None: all count).
        normalize: L2-normalise both sides over ``D`` first (a scale-free comparison).

    Returns:
        0-dim float32 tensor: Σ_valid mean_D (s − t)² / #valid (0 when nothing is valid).
    """
    s, t = student.float(), teacher.detach().float()
    if normalize:
        s, t = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
    per_position = (s - t).pow(2).mean(-1)
    if mask is None:
        return per_position.mean()
    mask = mask.to(per_position.dtype)
    return (per_position * mask).sum() / mask.sum().clamp_min(1)


def make_projector(owner: str, student_dim: int | None, teacher_dim: int | None) -> nn.Linear | None:
    """A bias-free linear map from the student's width to the teacher's, or None when not asked for.

    Raises:
        ConfigError: naming ``owner`` when only one width is given or a width is not positive.
    """
    if (student_dim is None) != (teacher_dim is None):
        raise ConfigError(f"{owner}: give both student_dim and teacher_dim (for a projector) or neither")
    if student_dim is None:
        return None
    if min(student_dim, teacher_dim) < 1:
        raise ConfigError(f"{owner}: widths must be positive, got student_dim={student_dim}, "
                          f"teacher_dim={teacher_dim}")
    return nn.Linear(student_dim, teacher_dim, bias=False)


def to_teacher_width(projector: nn.Linear | None, student: Tensor, teacher_width: int, owner: str,
                     sources: tuple[str, str]) -> Tensor:
    """``student`` ``[..., Ds]`` mapped by ``projector`` to ``[..., Dt]`` (checked against the teacher).

    Args:
        projector: from :func:`make_projector`; None means the widths must already agree.
        student: ``[..., Ds]`` features.
        teacher_width: ``Dt``.
        owner: the loss term's name, for messages.
        sources: the student's and the teacher's source paths, for messages.

    Raises:
        ConfigError: on widths the projector (or its absence) cannot handle, saying what to set.
    """
    ds, dt = student.shape[-1], teacher_width
    fix = f"set student_dim: {ds} and teacher_dim: {dt}"
    if projector is None:
        if ds != dt:
            raise ConfigError(f"{owner}: student width {ds} ({sources[0]}) != teacher width {dt} ({sources[1]}) "
                              f"and there is no projector; {fix} to learn one")
        return student
    if ds != projector.in_features or dt != projector.out_features:
        raise ConfigError(f"{owner}: the projector maps {projector.in_features} -> {projector.out_features} but "
                          f"the features are {ds} (student, {sources[0]}) and {dt} (teacher); {fix}")
    return projector(student.to(projector.weight.dtype))


class FeatureMSE(LossTerm):
    """MSE between a student and a teacher feature, e.g. last hidden states of two LMs.

    Args:
        student_dim: width of the student's feature; with ``teacher_dim``, a learned linear
            projector maps the student to the teacher's width.
        teacher_dim: width of the teacher's feature.
        normalize: compare L2-normalised features.
        weight: multiplier of this term in the total loss.
        sources: where the features come from, e.g.
            ``{student_features: student.hidden_states.6, teacher_features: teacher.hidden_states.12}``.
    """

    default_sources: ClassVar[dict[str, str]] = {
        "student_features": "student.hidden_states.-1", "teacher_features": "teacher.hidden_states.-1",
        "mask": "batch.loss_mask"}

    def __init__(self, student_dim: int | None = None, teacher_dim: int | None = None, normalize: bool = False,
                 weight: float = 1.0, sources: dict[str, str] | None = None) -> None:
        super().__init__(weight, sources)
        self.projector = make_projector("FeatureMSE", student_dim, teacher_dim)
        self.normalize = normalize

    def forward(self, student_features: Tensor, teacher_features: Tensor, mask: Tensor | None = None) -> Tensor:
        """Args: ``[..., Ds]`` and ``[..., Dt]`` features, mask ``[...]``. Returns a 0-dim tensor."""
        student_features = to_teacher_width(self.projector, student_features, teacher_features.shape[-1],
                                            "FeatureMSE", (self.sources["student_features"],
                                                           self.sources["teacher_features"]))
        if student_features.shape[:-1] != teacher_features.shape[:-1]:
            raise ConfigError(f"FeatureMSE: student positions {tuple(student_features.shape[:-1])} != teacher "
                              f"positions {tuple(teacher_features.shape[:-1])}; compare features of one layout")
        return feature_mse(student_features, teacher_features, mask, self.normalize)


__all__ = ["FeatureMSE", "feature_mse", "make_projector", "to_teacher_width"]
