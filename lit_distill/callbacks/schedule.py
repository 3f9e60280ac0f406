"""Move one attribute of a loss term over training: temperature annealing, KD-weight ramps."""

from __future__ import annotations

import inspect
import math
import re
from typing import Literal

import lightning as L

from lit_distill.errors import ConfigError


class ParameterSchedule(L.Callback):
    """Sets ``losses.<term>.<attribute>`` from ``start`` to ``end`` as training progresses.

    The value is a pure function of the optimizer step (``global_step`` over ``steps``,
    default: the trainer's estimated total), so a resumed run continues exactly. Examples:
    TRG's InfoNCE ``temperature`` annealed from 0.5 to 0.05 (cosine), ``ForwardKL``'s
    ``temperature``, ``GeneralizedJSD``'s ``beta``, or a KD term's ``weight`` ramped from 0 to 1.
    Every loss term keeps its hyperparameters as plain attributes read at ``forward``, so any
    numeric one can be scheduled; an attribute whose constructor argument is an ``int`` (e.g.
    ``top_k``) receives the rounded value. A term or
    attribute that does not exist, or whose value is not a number, fails at fit start.

    Args:
        term: name of the loss term in ``model.init_args.losses``.
        attribute: the term's numeric attribute to set (e.g. ``temperature``, ``beta``, ``weight``).
        start: value at step 0.
        end: value at the last step (and after).
        shape: ``linear`` or ``cosine`` interpolation.
        steps: schedule length in optimizer steps; None uses the whole run.
    """

    def __init__(self, term: str, attribute: str, start: float, end: float,
                 shape: Literal["linear", "cosine"] = "cosine", steps: int | None = None) -> None:
        if shape not in ("linear", "cosine"):
            raise ConfigError(f"ParameterSchedule.shape: '{shape}' is not 'linear' or 'cosine'")
        self.term, self.attribute, self.start, self.end = term, attribute, start, end
        self.shape, self.steps = shape, steps

    def value(self, step: int, total: int) -> float:
        """The scheduled value at optimizer step ``step`` of ``total``."""
        progress = min(max(step / max(total, 1), 0.0), 1.0)
        if self.shape == "cosine":
            progress = 0.5 * (1.0 - math.cos(math.pi * progress))
        return self.start + (self.end - self.start) * progress

    def _target(self, pl_module: L.LightningModule):
        losses = getattr(pl_module, "losses", {})
        if self.term not in losses:
            raise ConfigError(f"ParameterSchedule: no term '{self.term}' with attribute '{self.attribute}' "
                              f"in model.init_args.losses (terms: {sorted(losses)})")
        term = losses[self.term]
        if not hasattr(term, self.attribute):
            raise ConfigError(f"ParameterSchedule: no term '{self.term}' with attribute '{self.attribute}' "
                              f"in model.init_args.losses (numeric attributes of '{self.term}': "
                              f"{', '.join(numeric_attributes(term))})")
        current = getattr(term, self.attribute)
        if not is_number(current):
            raise ConfigError(f"ParameterSchedule.attribute: losses.{self.term}.{self.attribute} is "
                              f"{current!r}, not a number (valid: {', '.join(numeric_attributes(term))})")
        return term

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._target(pl_module)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        total = self.steps or trainer.estimated_stepping_batches
        term = self._target(pl_module)
        value = self.value(trainer.global_step, int(total))
        setattr(term, self.attribute, round(value) if takes_int(term, self.attribute) else value)


def is_number(value: object) -> bool:
    """Whether ``value`` is an int or float (a bool is a switch, not a number)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def takes_int(term: object, attribute: str) -> bool:
    """Whether the term's constructor declares ``attribute`` as an int (and not a float)."""
    parameter = inspect.signature(type(term)).parameters.get(attribute)
    annotation = "" if parameter is None else str(parameter.annotation)
    return re.search(r"\bint\b", annotation) is not None and "float" not in annotation


def numeric_attributes(term: object) -> list[str]:
    """The public attributes of ``term`` that hold a number, sorted: what a schedule can set."""
    return sorted(name for name, value in vars(term).items() if not name.startswith("_") and is_number(value))
