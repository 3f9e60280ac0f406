"""Loss terms usable from YAML: thin ``LossTerm`` wrappers around the functional losses.

Each term reads its inputs through ``sources`` (see :mod:`lit_distill.contracts`);
by default the logit divergences compare ``student.logits`` with
``teacher.logits`` over ``batch.loss_mask``, and :class:`CrossEntropy` reads
``student.logits`` and ``batch.labels``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_distill.contracts import LossTerm, ModelOutput
from lit_distill.errors import ConfigError
from lit_distill.losses import divergences
from lit_distill.losses.cache_check import check_cached_teacher

_LOGIT_SOURCES = {"student_logits": "student.logits", "teacher_logits": "teacher.logits",
                  "mask": "batch.loss_mask"}


class LogitDivergence(LossTerm):
    """Base of the logit-divergence terms (one subclass per divergence).

    Every hyperparameter is a plain attribute read at ``forward`` time, so a
    :class:`~lit_distill.callbacks.ParameterSchedule` can anneal it (e.g. ``temperature``).

    Args:
        temperature: divides both sides' logits; the result is scaled by its square.
        chunk_size: positions per chunk for the memory-lean path (None = one shot).
        padded_vocab: teacher and student share one tokenizer but their logit
            dimensions are padded differently (e.g. Qwen2.5-0.5B has 151,936
            and -7B 152,064): compare the shared prefix. Never set this for
            different tokenizers — use a cross-tokenizer loss instead.
        weight: multiplier of this term in the total loss.
        sources: overrides of where the logits and mask come from.
    """

    default_sources: ClassVar[dict[str, str]] = _LOGIT_SOURCES
    divergence: ClassVar[Callable[..., Tensor]]
    # The attributes passed to ``divergence`` as keyword arguments, read at every forward.
    hyperparameters: ClassVar[tuple[str, ...]] = ("temperature", "chunk_size")

    def __init__(self, temperature: float = 1.0, chunk_size: int | None = None, padded_vocab: bool = False,
                 weight: float = 1.0, sources: dict[str, str] | None = None) -> None:
        super().__init__(weight, sources)
        name = type(self).__name__
        if temperature is not None and not temperature > 0:
            raise ConfigError(f"{name}.temperature: must be > 0 (it divides the logits), got {temperature}")
        if chunk_size is not None and chunk_size < 1:
            raise ConfigError(f"{name}.chunk_size: must be a positive number of positions or null, got {chunk_size}")
        self.padded_vocab = padded_vocab
        self.chunk_size = chunk_size
        if "temperature" in self.hyperparameters:
            self.temperature = 1.0 if temperature is None else temperature

    def gather(self, student: ModelOutput, teacher: ModelOutput | None, batch: dict) -> dict[str, Any]:
        """``LossTerm.gather``, refusing a truncated cached teacher read at another temperature."""
        inputs = super().gather(student, teacher, batch)
        source, logits = self.sources.get("teacher_logits"), inputs.get("teacher_logits")
        if teacher is None or source is None or source.root != "teacher" or not isinstance(logits, Tensor):
            return inputs
        if source.field == "logits":  # a CachedTopK teacher itself
            member = ""
        elif source.field == "features" and isinstance(source.key, str) and source.key.endswith(".logits"):
            member = source.key.removesuffix(".logits")  # teachers.<member>.logits of a MultiModel
        else:
            return inputs
        check_cached_teacher(type(self).__name__, getattr(self, "temperature", 1.0), teacher.features, member,
                             logits.shape[-1])
        return inputs

    def check_vocab(self, student_size: int | None, teacher_size: int | None, field: str) -> None:
        """Fail early (before training) when the two vocabularies cannot be compared."""
        check_vocab_sizes(student_size, teacher_size, self.padded_vocab, field)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.padded_vocab:
            student_logits, teacher_logits = shared_vocab_prefix(student_logits, teacher_logits)
        options = {name: getattr(self, name) for name in self.hyperparameters}
        return type(self).divergence(student_logits, teacher_logits, mask, **options)


def check_vocab_sizes(student_size: int | None, teacher_size: int | None, padded_vocab: bool,
                      field: str) -> None:
    """Raise a ConfigError when same-vocabulary logits of these sizes cannot be compared."""
    if student_size is None or teacher_size is None or student_size == teacher_size or padded_vocab:
        return
    raise ConfigError(
        f"{field}: student logits have {student_size} entries but teacher logits have "
        f"{teacher_size}. Different tokenizers need a cross-tokenizer loss "
        "(lit_distill.losses ULD or ALM); if both models share one tokenizer and only "
        "the vocab padding differs, set padded_vocab: true on this term.")


def shared_vocab_prefix(student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
    """Views of both ``[..., V]`` logits cut to the shorter vocabulary (same tokenizer, padded vocab)."""
    shared = min(student_logits.shape[-1], teacher_logits.shape[-1])
    return student_logits[..., :shared], teacher_logits[..., :shared]


class ForwardKL(LogitDivergence):
    """KL(teacher ‖ student), token mean over ``mask``, times T²."""

    divergence = staticmethod(divergences.forward_kl)


class ReverseKL(LogitDivergence):
    """KL(student ‖ teacher), token mean over ``mask``, times T²."""

    divergence = staticmethod(divergences.reverse_kl)


class GeneralizedJSD(LogitDivergence):
    """Generalised Jensen–Shannon divergence with mixture M = β·p + (1−β)·q (GKD).

    Args:
        beta: mixture weight of the teacher, strictly between 0 and 1 (0.5 = symmetric JSD).
        temperature: divides both sides' logits; the result is scaled by its square.
        chunk_size: positions per chunk for the memory-lean path (None = one shot).
        padded_vocab: compare the shared vocab prefix (same tokenizer, padded vocab).
        weight: multiplier of this term in the total loss.
        sources: overrides of where the logits and mask come from.
    """

    divergence = staticmethod(divergences.generalized_jsd)
    hyperparameters = ("beta", "temperature", "chunk_size")

    def __init__(self, beta: float = 0.5, temperature: float = 1.0, chunk_size: int | None = None,
                 padded_vocab: bool = False, weight: float = 1.0, sources: dict[str, str] | None = None):
        super().__init__(temperature, chunk_size, padded_vocab, weight, sources)
        self.beta = beta


class SkewKL(LogitDivergence):
    """Skew KL: KL(p ‖ α·p + (1−α)·q) (DistiLLM).

    Args:
        alpha: skew towards the teacher, in [0, 1) (0 = forward KL; DistiLLM uses 0.1).
        temperature: divides both sides' logits; the result is scaled by its square.
        chunk_size: positions per chunk for the memory-lean path (None = one shot).
        padded_vocab: compare the shared vocab prefix (same tokenizer, padded vocab).
        weight: multiplier of this term in the total loss.
        sources: overrides of where the logits and mask come from.
    """

    divergence = staticmethod(divergences.skew_kl)
    hyperparameters = ("alpha", "temperature", "chunk_size")

    def __init__(self, alpha: float = 0.1, temperature: float = 1.0, chunk_size: int | None = None,
                 padded_vocab: bool = False, weight: float = 1.0, sources: dict[str, str] | None = None):
        super().__init__(temperature, chunk_size, padded_vocab, weight, sources)
        self.alpha = alpha


class SkewReverseKL(SkewKL):
    """Skew reverse KL: KL(q ‖ α·q + (1−α)·p) (DistiLLM); arguments as :class:`SkewKL`."""

    divergence = staticmethod(divergences.skew_reverse_kl)


class TotalVariation(LogitDivergence):
    """Total variation distance ½·Σ|p − q| (1 − TVD is a draft's acceptance rate).

    Args:
        chunk_size: positions per chunk for the memory-lean path (None = one shot).
        padded_vocab: compare the shared vocab prefix (same tokenizer, padded vocab).
        weight: multiplier of this term in the total loss.
        sources: overrides of where the logits and mask come from.
    """

    divergence = staticmethod(divergences.total_variation)
    hyperparameters = ("chunk_size",)  # no temperature: TVD compares the distributions as they are

    def __init__(self, chunk_size: int | None = None, padded_vocab: bool = False, weight: float = 1.0,
                 sources: dict[str, str] | None = None):
        super().__init__(None, chunk_size, padded_vocab, weight, sources)


class CrossEntropy(LossTerm):
    """Supervised cross-entropy of the student against ``batch.labels``, mean over valid labels.

    When the batch carries ``soft_labels`` (mixup/cutmix targets ``[B, C]``, rows summing to 1),
    the cross-entropy is taken against them instead: mean over samples of −Σ_c y_c log q_c, with
    ``label_smoothing`` ε applied to the mixed targets as timm's mixup does for DeiT:
    y ← (1 − ε)·y + ε/C.

    Args:
        ignore_index: label value that does not count.
        label_smoothing: as in ``torch.nn.functional.cross_entropy``.
        weight: multiplier of this term in the total loss.
        sources: overrides of where the logits and labels come from.
    """

    default_sources: ClassVar[dict[str, str]] = {"logits": "student.logits", "labels": "batch.labels",
                                                 "soft_labels": "batch.soft_labels"}

    def __init__(self, ignore_index: int = -100, label_smoothing: float = 0.0, weight: float = 1.0,
                 sources: dict[str, str] | None = None) -> None:
        super().__init__(weight, sources)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, labels: Tensor, soft_labels: Tensor | None = None) -> Tensor:
        """Args: logits ``[..., C]``; labels ``[...]`` integer; soft_labels ``[..., C]`` (optional,
        used instead of ``labels``). Returns a 0-dim float32 tensor."""
        if soft_labels is not None:
            return soft_cross_entropy(logits, soft_labels, self.label_smoothing)
        return cross_entropy(logits, labels, self.ignore_index, self.label_smoothing)


def soft_cross_entropy(logits: Tensor, soft_labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean over samples of −Σ_c y_c log softmax(logits)_c, y smoothed by ε = ``label_smoothing``.

    Args:
        logits: ``[..., C]``.
        soft_labels: ``[..., C]``, rows summing to 1 (e.g. mixup targets).
    """
    targets = soft_labels.float()
    if label_smoothing:
        targets = (1 - label_smoothing) * targets + label_smoothing / targets.shape[-1]
    return -(targets * torch.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = -100,
                  label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy over labels != ``ignore_index`` (0 when none counts), in float32.

    Args:
        logits: ``[..., C]``.
        labels: ``[...]``, integer class ids.
    """
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()
    flat_labels = labels.reshape(-1)
    total = F.cross_entropy(flat_logits, flat_labels, ignore_index=ignore_index,
                            label_smoothing=label_smoothing, reduction="sum")
    count = (flat_labels != ignore_index).sum().clamp_min(1)
    return total / count.to(torch.float32)
