"""StepProgressBar: one training bar of optimizer steps out of the run's real total."""

from __future__ import annotations

import io

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lit_distill import DistillationModule
from lit_distill.callbacks.progress import StepProgressBar
from lit_distill.losses import CrossEntropy


class Snapshots(L.Callback):
    """What the training bar shows after every training batch: (description, completed, total)."""

    def __init__(self, bar: StepProgressBar):
        self.bar, self.seen = bar, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        task = self.bar.train_progress_bar
        self.seen.append((task.description, task.completed, task.total))


def fit(num_batches: int, **trainer_args) -> tuple[list, str]:
    """Fit a linear student on ``num_batches`` batches; returns the bar's snapshots and its rendering."""
    torch.manual_seed(0)
    module = DistillationModule(student=nn.Linear(4, 3), losses={"ce": CrossEntropy()})
    batches = [{"inputs": {"x": torch.randn(2, 4)}, "labels": torch.randint(0, 3, (2,))} for _ in range(num_batches)]
    screen = io.StringIO()
    bar = StepProgressBar(console_kwargs={"file": screen, "force_terminal": True, "width": 200})
    snapshots = Snapshots(bar)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_model_summary=False, enable_checkpointing=False,
                        limit_val_batches=0, callbacks=[bar, snapshots], **trainer_args)
    trainer.fit(module, DataLoader(batches, batch_size=None))
    return snapshots.seen, screen.getvalue()


def test_only_max_steps_counts_steps_across_epochs_out_of_max_steps():
    seen, screen = fit(2, max_steps=5, max_epochs=-1)
    assert [completed for _, completed, _ in seen] == [1, 2, 3, 4, 5]
    assert {total for _, _, total in seen} == {5}
    assert [description.split("]")[-1].strip() for description, _, _ in seen] == [
        "Steps (epoch 0)", "Steps (epoch 0)", "Steps (epoch 1)", "Steps (epoch 1)", "Steps (epoch 2)"]
    assert "5/5" in screen and "-2" not in screen and "/-" not in screen


def test_epochs_bound_the_total_with_accumulation():
    seen, _ = fit(4, max_epochs=2, accumulate_grad_batches=2)
    assert {total for _, _, total in seen} == {4}  # 2 epochs x 4 batches / 2 accumulated
    assert [completed for _, completed, _ in seen] == [0, 1, 1, 2, 2, 3, 3, 4]
    assert seen[-1][0].endswith("Steps (epoch 1/1)")


@pytest.mark.parametrize("trainer_args", [{"max_steps": 3}, {"max_epochs": 3}])
def test_total_steps_helpers(trainer_args):
    trainer = L.Trainer(accelerator="cpu", logger=False, **trainer_args)
    assert StepProgressBar.epochs_bound(trainer) is ("max_epochs" in trainer_args)
