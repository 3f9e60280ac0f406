"""LabelChannelCheck: mIoU with the label channel fed vs zeroed, against hand-computed values."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lit_distill.callbacks import LabelChannelCheck
from lit_distill.contracts import ModelOutput
from lit_distill.errors import ConfigError


class Recorder:
    def __init__(self, **models):
        self.logged = {}
        self.__dict__.update(models)

    def log(self, name, value, **_):
        self.logged[name] = float(value)


class ReadsLabel(nn.Module):
    """Predicts class 1 where channel 3 (the label) is positive, else class 0 (2 classes)."""

    def forward(self, pixel_values):
        positive = (pixel_values[:, 3] > 0).float()
        return ModelOutput(logits=torch.stack([1 - positive, positive], 1))


class ReadsRgb(nn.Module):
    """Predicts class 1 where channel 0 is positive: ignores the label channel."""

    def forward(self, pixel_values):
        positive = (pixel_values[:, 0] > 0).float()
        return ModelOutput(logits=torch.stack([1 - positive, positive], 1))


def run_epoch(callback, module, batches, side="student"):
    trainer = SimpleNamespace(sanity_checking=False)
    callback.on_validation_epoch_start(trainer, module)
    model = getattr(module, side)
    for i, batch in enumerate(batches):
        inputs = batch.get(f"{side}_inputs") or batch["inputs"]
        outputs = {side: model(pixel_values=inputs["pixel_values"])}
        callback.on_validation_batch_end(trainer, module, outputs, batch, i)
    callback.on_validation_epoch_end(trainer, module)
    return module.logged


def batch_of(labels, side="student_inputs"):
    rgb = torch.randn(labels.shape[0], 3, *labels.shape[1:], generator=torch.Generator().manual_seed(0))
    label = labels.float() * 2 - 1  # +1 on class 1, -1 on class 0
    return {side: {"pixel_values": torch.cat([rgb, label[:, None]], 1)}, "labels": labels}


def test_a_model_that_reads_the_label_drops_to_the_all_background_miou():
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    labels[:, :, :1] = 1  # 8 of 32 pixels are class 1
    labels[0, 0, 3] = 255  # ignored
    logged = run_epoch(LabelChannelCheck(), Recorder(student=ReadsLabel()), [batch_of(labels)])
    assert logged["val/miou_label_fed"] == pytest.approx(1.0)
    # zeroed: everything predicted 0; IoU(0) = 23/31 (31 counted pixels), IoU(1) = 0
    assert logged["val/miou_label_zeroed"] == pytest.approx((23 / 31 + 0.0) / 2)
    assert logged["val/miou_label_drop"] == pytest.approx(1.0 - 23 / 62)


def test_a_model_that_ignores_the_label_does_not_drop_and_the_teacher_side_is_named():
    labels = torch.randint(0, 2, (3, 5, 5), generator=torch.Generator().manual_seed(1))
    batch = batch_of(labels, "teacher_inputs")
    batch["student_inputs"] = {"pixel_values": batch["teacher_inputs"]["pixel_values"][:, :3]}
    logged = run_epoch(LabelChannelCheck(side="teacher"), Recorder(teacher=ReadsRgb()), [batch], side="teacher")
    assert logged["val/teacher_miou_label_fed"] == pytest.approx(logged["val/teacher_miou_label_zeroed"])
    assert logged["val/teacher_miou_label_drop"] == 0.0


def test_no_label_channel_and_bad_arguments_are_config_errors():
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    batch = {"inputs": {"pixel_values": torch.zeros(1, 3, 4, 4)}, "labels": labels}
    with pytest.raises(ConfigError, match="label_input"):
        run_epoch(LabelChannelCheck(), Recorder(student=ReadsRgb()), [batch])
    with pytest.raises(ConfigError, match="side"):
        LabelChannelCheck(side="both")
    with pytest.raises(ConfigError, match="rgb_channels"):
        LabelChannelCheck(rgb_channels=0)
