"""ClassGroupAccuracy: per-group accuracy of the CLS, DIST and averaged heads."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lit_distill import DistillationModule
from lit_distill.callbacks import ClassGroupAccuracy
from lit_distill.losses import CrossEntropy

X = torch.eye(4)  # one validation sample per class; inputs are one-hot
LABELS = torch.tensor([0, 1, 2, 3])


class FixedHeads(nn.Module):
    """CLS head right on classes 0 and 1; DIST head right on 1, 2 and 3."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.register_buffer("cls", torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [5.0, 0, 0, 0], [5.0, 0, 0, 0]]))
        self.register_buffer("dist", torch.tensor([[0, 5.0, 0, 0], [0, 5.0, 0, 0], [0, 0, 5.0, 0], [0, 0, 0, 5.0]]))

    def forward(self, x):
        return {"logits": self.scale * x @ self.cls, "dist_logits": self.scale * x @ self.dist}


class Data(L.LightningDataModule):
    class_groups = {"head": [0, 1], "tail": [2, 3]}

    def val_dataloader(self):
        return DataLoader([{"inputs": {"x": X}, "labels": LABELS}], batch_size=None)


def test_group_accuracies_per_head():
    module = DistillationModule(student=FixedHeads(), losses={"ce": CrossEntropy()})
    callback = ClassGroupAccuracy()
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[callback])
    metrics = trainer.validate(module, datamodule=Data(), verbose=False)[0]
    assert metrics["val/acc_cls"] == pytest.approx(0.5)
    assert metrics["val/acc_cls_head"] == pytest.approx(1.0) and metrics["val/acc_cls_tail"] == pytest.approx(0.0)
    assert metrics["val/acc_dist_head"] == pytest.approx(0.5) and metrics["val/acc_dist_tail"] == pytest.approx(1.0)
    # averaged logits: class 0 -> tie broken to class 0 (correct), 1 right, 2 and 3 -> 2.5 vs 2.5 tie -> class 0
    avg = (X @ FixedHeads().cls + X @ FixedHeads().dist) / 2
    expected = (avg.argmax(-1) == LABELS).float()
    assert metrics["val/acc_avg"] == pytest.approx(float(expected.mean()))
    assert metrics["val/acc_avg_tail"] == pytest.approx(float(expected[2:].mean()))
    torch.testing.assert_close(callback.per_class_accuracy["cls"], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(callback.per_class_accuracy["dist"], torch.tensor([0.0, 1.0, 1.0, 1.0]))
    torch.testing.assert_close(callback.per_class_accuracy["avg"], expected)
