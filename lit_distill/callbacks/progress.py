"""A training progress bar that counts optimizer steps over the whole run."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, but the training bar shows optimizer steps out of the run's total.

    Lightning's own bar counts the batches of the current epoch and labels it ``Epoch e/E-1``,
    which reads ``Epoch 1/-2`` when only ``trainer.max_steps`` bounds the run. This one keeps
    a single training bar for the whole run: its count is ``trainer.global_step`` and its total
    is ``trainer.max_steps`` or, when epochs bound the run, the steps of all epochs
    (``trainer.estimated_stepping_batches``, which accounts for gradient accumulation and
    ``limit_train_batches``). The description names the epoch, with the last one only when
    epochs bound the run: ``Steps (epoch 2)`` or ``Steps (epoch 2/9)``. Validation bars are
    Lightning's.

    Its arguments are :class:`lightning.pytorch.callbacks.RichProgressBar`'s (``refresh_rate``,
    ``leave``, ``theme``, ``console_kwargs``).
    """

    @staticmethod
    def epochs_bound(trainer: L.Trainer) -> bool:
        """Whether ``max_epochs`` (not ``max_steps``) ends the run."""
        return trainer.max_steps == -1 and trainer.max_epochs is not None and trainer.max_epochs > 0

    @staticmethod
    def total_steps(trainer: L.Trainer) -> int | float:
        """Optimizer steps of the whole run (``inf`` when nothing bounds it)."""
        return trainer.max_steps if trainer.max_steps > 0 else trainer.estimated_stepping_batches

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        last = f"/{trainer.max_epochs - 1}" if self.epochs_bound(trainer) else ""
        return f"Steps (epoch {current_epoch}{last})"

    @property
    def total_train_batches(self) -> int | float:
        """The run's optimizer steps (the training bar's total), not one epoch's batches."""
        return self.total_steps(self.trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Create the training bar once; later epochs only rename it (its count goes on)."""
        if self.is_disabled or self.progress is None or self.train_progress_bar_id is None or self._leave:
            super().on_train_epoch_start(trainer, pl_module)
            if self.train_progress_bar_id is not None and self.progress is not None:
                self._update(self.train_progress_bar_id, trainer.global_step)
            return
        self.progress.update(self.train_progress_bar_id,
                             description=self._description_markup(trainer.current_epoch))
        self.refresh()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Move the training bar to the optimizer step just finished."""
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()  # resumed mid-epoch
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def _description_markup(self, current_epoch: int) -> str:
        description = self._get_train_description(current_epoch)
        return f"[{self.theme.description}]{description}" if self.theme.description else description
