"""The three contracts every recipe, datamodule and model adapter plugs into.

**Batch** — a ``dict``. Shared entries live at the top level:

- ``inputs``: ``dict`` of keyword arguments for the models (e.g. ``input_ids``
  ``[B, L]`` and ``attention_mask`` ``[B, L]`` for text, ``pixel_values`` for
  images). Used by both sides unless a per-side entry exists.
- ``student_inputs`` / ``teacher_inputs`` (optional): per-side keyword arguments,
  when the two models need different inputs (two tokenizations, two views).
- ``labels`` (optional): targets. For causal LMs they are *already shifted*:
  ``labels[b, t]`` is the token position ``t`` must predict, ``-100`` where
  nothing counts.
- ``loss_mask`` (optional): bool ``[B, L]``, True where a token-level loss
  counts (``labels != -100`` for text). Its count is the number of *valid
  tokens* that token-mean losses are normalised by.

**Model outputs** — :class:`ModelOutput`, returned by every adapter whatever
library built the model.

**Loss terms** — :class:`LossTerm`: a weight, a loss computed from tensors, and
``sources`` naming which outputs and batch entries feed which argument of the
loss. Source paths:

- ``student.logits`` / ``teacher.logits``
- ``student.hidden_states.<i>`` (negative indices allowed)
- ``student.features.<name>`` (``<name>`` may contain dots, e.g. a module path)
- ``batch.<key>`` (a top-level batch entry such as ``labels`` or ``loss_mask``)

They are parsed once into :class:`~lit_distill.sources.Source` values when a term is built, and
checked against what each model adapter declares it can output
(:meth:`~lit_distill.models.base.ModelAdapter.output_spec`) before training.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lit_distill.errors import ConfigError
from lit_distill.sources import Source, SourceError, parse_sources

SIDES = ("student", "teacher")
__all__ = ["SIDES", "LossTerm", "ModelOutput", "Source", "SourceError", "batch_size", "resolve_source",
           "side_inputs", "valid_count"]


@dataclass
class ModelOutput:
    """What a model adapter returns.

    Attributes:
        logits: ``[..., C]`` unnormalised scores (``[B, L, V]`` for LMs,
            ``[B, C]`` for classifiers), or None for feature-only models.
        hidden_states: per-layer hidden states, each ``[B, L, D]``, when asked for.
        features: named intermediate outputs (from the model itself or captured by
            forward hooks, keyed by module path).
    """

    logits: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    features: dict[str, Tensor] = field(default_factory=dict)


def side_inputs(batch: dict[str, Any], side: str) -> dict[str, Any]:
    """Keyword arguments for one side's model: ``<side>_inputs`` if present, else ``inputs``.

    Args:
        batch: a batch following the contract above.
        side: ``"student"`` or ``"teacher"``.
    """
    per_side = batch.get(f"{side}_inputs")
    if per_side is not None:
        return per_side
    if "inputs" not in batch:
        raise KeyError(f"batch has neither '{side}_inputs' nor 'inputs' (keys: {sorted(batch)})")
    return batch["inputs"]


def _reference_tensor(batch: dict[str, Any]) -> Tensor:
    labels = batch.get("labels")
    if isinstance(labels, Tensor):
        return labels
    return next(v for v in side_inputs(batch, "student").values() if isinstance(v, Tensor))


def batch_size(batch: dict[str, Any]) -> int:
    """Number of samples in a batch (from ``labels`` or the student's first input tensor)."""
    return _reference_tensor(batch).shape[0]


def valid_count(batch: dict[str, Any]) -> Tensor:
    """Number of valid elements in a batch, on the batch's device (no host sync).

    ``loss_mask.sum()`` when the batch has a ``loss_mask``; otherwise the batch size.
    """
    mask = batch.get("loss_mask")
    if mask is not None:
        return mask.sum()
    reference = _reference_tensor(batch)
    return torch.tensor(reference.shape[0], device=reference.device)


def resolve_source(path: str | Source, student: ModelOutput, teacher: ModelOutput | None, batch: dict) -> Any:
    """Look up one source path (see the module docstring) in outputs or batch.

    Raises:
        SourceError: (a ``KeyError`` and a ``ConfigError``) the value is not there.
    """
    source = path if isinstance(path, Source) else Source.parse(path)
    return source.read(student, teacher, batch)


class LossTerm(nn.Module):
    """Base of every loss usable from YAML: a weight plus where its inputs come from.

    Subclasses implement ``forward`` with tensor arguments only and declare
    ``default_sources`` mapping each ``forward`` argument to a source path. A
    term may hold parameters (e.g. a learned projector); those belong to the
    student side and are optimised and checkpointed with it.

    Args:
        weight: multiplier of this term in the total loss.
        sources: overrides of ``default_sources``, e.g.
            ``{mask: batch.response_mask}`` or
            ``{student_hidden: student.hidden_states.6}``.
    """

    default_sources: ClassVar[dict[str, str]] = {}

    def __init__(self, weight: float = 1.0, sources: dict[str, str] | None = None) -> None:
        super().__init__()
        name = type(self).__name__
        if not isinstance(weight, int | float) or isinstance(weight, bool) or not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"{name}.weight: must be a finite number >= 0, got {weight!r} (a negative "
                              "weight would maximise the term; remove the term or set 0 to only log it)")
        self.weight = float(weight)
        params = inspect.signature(self.forward).parameters
        self.sources: dict[str, Source] = parse_sources({**self.default_sources, **(sources or {})}, name,
                                                        set(params))
        # A default source of an argument with a default may be absent (no loss_mask in image
        # batches); one the user named must exist, so a typo never silently drops a mask.
        self._skippable = {arg for arg, p in params.items()
                           if p.default is not inspect.Parameter.empty and arg not in (sources or {})}

    @property
    def reads_teacher(self) -> bool:
        """Whether any source is a teacher output."""
        return any(source.root == "teacher" for source in self.sources.values())

    def may_be_absent(self, argument: str) -> bool:
        """Whether ``argument``'s source may be absent: ``forward`` has a default for it and its
        source is the term's default (a source the user named must exist)."""
        return argument in self._skippable

    def gather(self, student: ModelOutput, teacher: ModelOutput | None, batch: dict) -> dict[str, Any]:
        """Collect this term's ``forward`` arguments from model outputs and the batch.

        An argument with a default whose *default* source is absent (a batch entry the batch
        lacks, e.g. no ``loss_mask`` for image batches; a feature the model does not return,
        e.g. an LM head without bias) is left out, so ``forward`` uses its default. A source
        given in ``sources`` must be there.

        Raises:
            SourceError: a required source is absent; the message says what exists.
        """
        return {arg: source.read(student, teacher, batch) for arg, source in self.sources.items()
                if arg not in self._skippable or source.present(student, teacher, batch)}
