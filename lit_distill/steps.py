"""Training steps: what the module does with one training batch, as a strategy it calls.

:class:`~lit_distill.DistillationModule` delegates ``training_step`` and its optimiser set-up
to a :class:`TrainingStep` (``model.init_args.step``). The default step is plain distillation:
the weighted sum of the loss terms. A method whose step differs (a GAN codec's discriminator,
on-policy sampling that replaces a batch's responses, a preference stage) subclasses
``TrainingStep``, never ``DistillationModule``, and calls the module's shared part,
:meth:`DistillationModule.distillation_loss`, which runs the models, checks the first batch,
evaluates the terms, counts the batch's valid elements for the optimizer step and logs
``train/*``. So every step keeps the same normalisation, checks and logging.

A step is an ``nn.Module``: parameters it owns (a discriminator) are saved in checkpoints with
the module under ``step.``; other state (counters) goes through :meth:`TrainingStep.checkpoint_state`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
from torch import Tensor, nn

from lit_distill.contracts import ModelOutput


@dataclass
class StepResult:
    """What :meth:`DistillationModule.distillation_loss` computed for one batch.

    Attributes:
        total: weighted sum of the loss terms, 0-dim; each term is a mean over the batch's
            valid elements.
        values: each term's unweighted value, 0-dim, by term name.
        count: the batch's valid elements (``loss_mask.sum()``, else the batch size), 0-dim
            integer tensor on the batch's device; already added to the optimizer step's count.
        student_out: the student's outputs.
        teacher_out: the teacher's outputs (None without a teacher or when no term reads it).
        logging: whether this is a step the loggers write (``trainer.log_every_n_steps``); a step
            that logs values of its own should log them only then.
    """

    total: Tensor
    values: dict[str, Tensor]
    count: Tensor
    student_out: ModelOutput
    teacher_out: ModelOutput | None
    logging: bool

    @property
    def weighted_total(self) -> Tensor:
        """``total * count``: what a step backpropagates through the module's optimizer.

        Before that optimizer steps, the module divides its gradients by the valid count of the
        whole optimizer step (all micro-batches, all devices), so the objective is a mean over
        valid elements whatever the accumulation and the number of devices.
        """
        return self.total * self.count


class TrainingStep(nn.Module):
    """The default training step (plain distillation), and the base of steps that differ.

    Hooks, each called by the module with itself as ``module``:

    - :meth:`attach`: once, when the module is built (check the module's configuration);
    - :meth:`configure_optimizers`: add the step's own optimisers to the module's;
    - :meth:`training_step`: one batch;
    - :meth:`before_optimizer_step`: after the module normalised the gradients of its optimizer,
      before any optimizer steps (e.g. to clip gradients under manual optimisation);
    - :meth:`after_validation`: after each validation of ``fit`` (not the sanity check), with
      its reduced metrics, before checkpoints are written;
    - :meth:`checkpoint_state` / :meth:`load_checkpoint_state`: state other than tensors.

    A step with ``automatic_optimization = False`` steps its optimisers itself
    (``module.optimizers()``, ``module.manual_backward``); the module's optimizer is always the
    first. Lightning's ``gradient_clip_val`` and ``accumulate_grad_batches`` do not apply then.
    """

    automatic_optimization: bool = True

    def attach(self, module: L.LightningModule) -> None:
        """Check that ``module`` (the ``DistillationModule``) suits this step; raise ``ConfigError`` if not."""

    def configure_optimizers(self, module: L.LightningModule, module_optimizer: Any) -> Any:
        """The Lightning optimizer configuration of the whole run.

        Args:
            module: the ``DistillationModule``.
            module_optimizer: the module's own configuration: its optimizer over the student and
                loss-term parameters, or ``{"optimizer": ..., "lr_scheduler": ...}``.

        Returns:
            Anything ``LightningModule.configure_optimizers`` may return, with the module's
            optimizer first. The default returns ``module_optimizer``.
        """
        return module_optimizer

    def training_step(self, module: L.LightningModule, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        """One training batch; the default is the distillation loss weighted by its valid count.

        A step that changes the batch (e.g. replaces its responses by student samples) passes the
        new batch to ``module.distillation_loss``; the normalisation then counts the new batch.

        Returns:
            The loss Lightning backpropagates (automatic optimisation), or anything to log
            (manual optimisation).
        """
        return module.distillation_loss(batch).weighted_total

    def before_optimizer_step(self, module: L.LightningModule, optimizer: Any) -> None:
        """Called for every optimizer, after the module normalised its own optimizer's gradients."""

    def after_validation(self, module: L.LightningModule, metrics: dict[str, Tensor]) -> None:
        """Called after each validation run during ``fit`` (the sanity check excluded).

        Args:
            module: the ``DistillationModule``.
            metrics: the run's reduced values, 0-dim, by name (``val/loss``, ``val/<term>``,
                ``val/student_ce``...), all ranks included.
        """

    def checkpoint_state(self) -> dict[str, Any]:
        """State saved in checkpoints besides the step's parameters and buffers (default: none)."""
        return {}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`checkpoint_state` returned (``{}`` for a checkpoint without it)."""
