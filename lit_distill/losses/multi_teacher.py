"""Multi-teacher distillation: one target from several teachers that share the label space.

The teachers are members of a ``lit_distill.models.MultiModel`` teacher (each on its own inputs,
so with its own tokenizer where positions still line up, e.g. sequence classification), and
:class:`EnsembleKD` reads their logits ``teachers.<name>.logits``. For teachers ``k`` with logits
``z_k`` and weights ``w_k`` (Σ_k w_k = 1, per position, from detached teacher outputs):

- ``combine: probabilities``: p̄ = Σ_k w_k softmax(z_k / T) (a mixture: keeps every teacher's modes);
- ``combine: logits``: p̄ = softmax(Σ_k w_k z_k / T) (TextBrewer's average, a normalised
  geometric mean of the p_k; the teacher with the largest logit scale dominates);

and the loss is KL(p̄ ‖ q) × T², the mean over valid positions (as :func:`forward_kl`). Weights:

- ``uniform``: w_k = 1/K;
- ``entropy``: w_k ∝ exp(−H(p_k) / τ_w) (confident teachers count more);
- ``gold``: w_k ∝ exp(log p_k(y) / τ_w) = p_k(y)^(1/τ_w) (teachers right on the gold label count
  more; needs ``labels``).

A teacher may come from the offline cache instead of running (token-level teachers): a
``lit_distill.models.CachedTopK`` member gives logits ``T_c · log p_c`` from its cached top-k
log-probs and tail mass (written at temperature ``T_c``). Written with ``k = V`` they equal the
teacher's logits up to a constant per position, so every ``T`` here is exact; with ``k < V``
only ``T = T_c`` reproduces the cached distribution (the tail's mass is known at ``T_c`` only),
and :class:`EnsembleKD` refuses another ``T`` (it reads the member's ``cache_temperature`` and
``cache_top_k`` features).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from lit_distill.contracts import LossTerm
from lit_distill.errors import ConfigError
from lit_distill.losses.cache_check import check_cached_teacher
from lit_distill.losses.divergences import forward_kl


def teacher_weights(teacher_logits: Tensor, weighting: str, temperature: float, weight_temperature: float,
                    labels: Tensor | None = None, ignore_index: int = -100) -> Tensor:
    """Per-position weights ``[K, ...]`` of ``K`` teachers from their logits ``[K, ..., V]`` (sum 1 over K)."""
    k = teacher_logits.shape[0]
    if weighting == "uniform":
        return torch.full(teacher_logits.shape[:-1], 1.0 / k, device=teacher_logits.device)
    log_p = torch.log_softmax(teacher_logits.detach().float() / temperature, -1)
    if weighting == "entropy":
        score = (log_p.exp() * log_p).sum(-1)  # −H(p_k)
    elif weighting == "gold":
        if labels is None:
            raise ConfigError("EnsembleKD.weighting: 'gold' needs labels (sources.labels)")
        safe = labels.clamp_min(0)
        score = log_p.gather(-1, safe.expand(k, *safe.shape).unsqueeze(-1)).squeeze(-1)  # log p_k(y)
        score = torch.where(labels == ignore_index, 0.0, score)
    else:
        raise ConfigError(f"EnsembleKD.weighting: '{weighting}' is not uniform, entropy or gold")
    return torch.softmax(score / weight_temperature, dim=0)


def ensemble_log_target(teacher_logits: Tensor, weights: Tensor, combine: str, temperature: float) -> Tensor:
    """log p̄ ``[..., V]`` of the combined target at ``temperature`` (see the module docstring)."""
    if combine == "probabilities":
        log_p = torch.log_softmax(teacher_logits.float() / temperature, -1)
        return torch.logsumexp(log_p + weights.unsqueeze(-1).clamp_min(1e-30).log(), dim=0)
    if combine == "logits":
        return torch.log_softmax((weights.unsqueeze(-1) * teacher_logits.float()).sum(0) / temperature, -1)
    raise ConfigError(f"EnsembleKD.combine: '{combine}' is not 'probabilities' or 'logits'")


def ensemble_kd(student_logits: Tensor, teacher_logits: Sequence[Tensor], mask: Tensor | None = None,
                temperature: float = 1.0, combine: str = "probabilities", weighting: str = "uniform",
                weight_temperature: float = 1.0, labels: Tensor | None = None) -> Tensor:
    """KL(p̄ ‖ q) × T² of the student against the teachers' combined target, mean over valid positions.

    Args:
        student_logits: ``[..., V]``.
        teacher_logits: K tensors ``[..., V]`` (one label space).
        mask: bool ``[...]``, True where a position counts.
        temperature: T for the teachers and the student.
        combine: ``probabilities`` or ``logits``.
        weighting: ``uniform``, ``entropy`` or ``gold``.
        weight_temperature: τ_w of the confidence weights.
        labels: ``[...]`` gold labels (``gold`` weighting).
    """
    stacked = torch.stack([t.detach() for t in teacher_logits])
    weights = teacher_weights(stacked, weighting, temperature, weight_temperature, labels)
    # the target's log-probabilities at T are logits whose softmax at T is p̄: scale back by T
    target = ensemble_log_target(stacked, weights, combine, temperature) * temperature
    return forward_kl(student_logits, target, mask, temperature=temperature)


class EnsembleKD(LossTerm):
    """Distils several teachers at once: KL to their combined (weighted) distribution.

    The teacher is a ``MultiModel`` whose members are the teachers; ``teachers`` names them (their
    logits ``teachers.<name>.logits`` must share the label space).

    Args:
        teachers: member names of the ``MultiModel`` teacher, at least two.
        combine: ``probabilities`` (mixture) or ``logits`` (average of logits).
        weighting: ``uniform``, ``entropy`` or ``gold`` (see the module docstring).
        temperature: T of teachers and student; the loss is scaled by T².
        weight_temperature: τ_w of the confidence weights.
        weight: multiplier of this term in the total loss.
        sources: overrides of ``student_logits``, ``teacher_features``, ``mask``, ``labels``.
    """

    default_sources: ClassVar[dict[str, str]] = {"student_logits": "student.logits",
                                                 "teacher_features": "teacher.features",
                                                 "mask": "batch.loss_mask", "labels": "batch.labels"}

    def __init__(self, teachers: list[str], combine: Literal["probabilities", "logits"] = "probabilities",
                 weighting: Literal["uniform", "entropy", "gold"] = "uniform", temperature: float = 1.0,
                 weight_temperature: float = 1.0, weight: float = 1.0, sources: dict[str, str] | None = None) -> None:
        super().__init__(weight, sources)
        if len(teachers) < 2:
            raise ConfigError(f"EnsembleKD.teachers: give at least two member names, got {teachers}")
        if combine not in ("probabilities", "logits") or weighting not in ("uniform", "entropy", "gold"):
            raise ConfigError(f"EnsembleKD: combine '{combine}' / weighting '{weighting}' not known "
                              "(probabilities|logits, uniform|entropy|gold)")
        if not temperature > 0 or not weight_temperature > 0:
            raise ConfigError("EnsembleKD: temperature and weight_temperature must be > 0")
        self.teachers, self.combine, self.weighting = list(teachers), combine, weighting
        self.temperature, self.weight_temperature = float(temperature), float(weight_temperature)

    def forward(self, student_logits: Tensor, teacher_features: dict[str, Any], mask: Tensor | None = None,
                labels: Tensor | None = None) -> Tensor:
        missing = [name for name in self.teachers if f"{name}.logits" not in teacher_features]
        if missing:
            raise ConfigError(f"EnsembleKD.teachers: {missing} give no logits (teacher features: "
                              f"{sorted(k for k in teacher_features if k.endswith('.logits'))})")
        logits = [teacher_features[f"{name}.logits"] for name in self.teachers]
        for name, member_logits in zip(self.teachers, logits, strict=True):
            check_cached_teacher("EnsembleKD", self.temperature, teacher_features, name, member_logits.shape[-1])
        return ensemble_kd(student_logits, logits, mask, self.temperature, self.combine, self.weighting,
                           self.weight_temperature, labels if self.weighting == "gold" else None)
