"""SegmentationMetrics: mIoU against a hand computation, per-class IoU keys, the PNG figure."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from lit_distill.callbacks import SegmentationMetrics
from lit_distill.callbacks.segmentation import colorize, segmentation_palette
from lit_distill.contracts import ModelOutput


class Recorder:
    def __init__(self):
        self.logged = {}

    def log(self, name, value, **_):
        self.logged[name] = float(value)


def one_hot_logits(pred, num_classes):
    return torch.nn.functional.one_hot(pred, num_classes).permute(0, 3, 1, 2).float()


def hand_iou(preds, labels, num_classes, ignore):
    """IoU per class from pixel sets, over all batches; None where the class never occurs."""
    ious = []
    for c in range(num_classes):
        inter = union = 0
        for p, y in zip(preds, labels, strict=True):
            for pv, yv in zip(p.flatten().tolist(), y.flatten().tolist(), strict=True):
                if yv == ignore:
                    continue
                inter += pv == c and yv == c
                union += pv == c or yv == c
        ious.append(inter / union if union else None)
    return ious


def run_epoch(callback, batches, trainer, module):
    callback.on_validation_epoch_start(trainer, module)
    for i, (batch, outputs) in enumerate(batches):
        callback.on_validation_batch_end(trainer, module, outputs, batch, i)
    callback.on_validation_epoch_end(trainer, module)


def test_miou_and_per_class_iou_match_a_hand_computation(tmp_path):
    g = torch.Generator().manual_seed(0)
    num_classes, ignore = 4, 255
    batches, preds, teacher_preds, labels = [], [], [], []
    for _ in range(3):
        y = torch.randint(0, 3, (2, 5, 6), generator=g)  # class 3 never in the ground truth
        y[:, 0, :2] = ignore
        p = torch.randint(0, 3, (2, 5, 6), generator=g)
        tp = torch.where(torch.rand(2, 5, 6, generator=g) < 0.8, y.clamp(max=2), p)
        batch = {"inputs": {"pixel_values": torch.rand(2, 3, 5, 6, generator=g)}, "labels": y}
        outputs = {"student": ModelOutput(logits=one_hot_logits(p, num_classes)),
                   "teacher": ModelOutput(logits=one_hot_logits(tp, num_classes))}
        batches.append((batch, outputs))
        preds.append(p), teacher_preds.append(tp), labels.append(y)
    names = ["bg", "a", "b", "c"]
    datamodule = SimpleNamespace(class_names=names, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, datamodule=datamodule,
                              log_dir=str(tmp_path), default_root_dir=str(tmp_path), current_epoch=2)
    module = Recorder()
    callback = SegmentationMetrics(ignore_index=ignore, max_images=2)
    run_epoch(callback, batches, trainer, module)

    for key, side_preds in (("", preds), ("teacher_", teacher_preds)):
        expected = hand_iou(side_preds, labels, num_classes, ignore)
        present = [v for v in expected if v is not None]
        assert module.logged[f"val/{key}miou"] == pytest.approx(sum(present) / len(present), rel=1e-6)
        for name, value in zip(names, expected, strict=True):
            if value is None:
                assert f"val/{key}iou_{name}" not in module.logged
            else:
                assert module.logged[f"val/{key}iou_{name}"] == pytest.approx(value, rel=1e-6)

    png = tmp_path / "segmentation" / "epoch_002.png"
    assert callback.last_figure == str(png) and png.exists()
    with Image.open(png) as img:
        # 2 rows (max_images) x 4 columns (image, truth, teacher, student), 5x6 tiles, 2 px padding
        assert img.size == (4 * (6 + 2) + 2, 2 * (5 + 2) + 2)

    # a new epoch starts from scratch: a perfect student gives mIoU 1
    perfect = [(b, {"student": ModelOutput(logits=one_hot_logits(b["labels"].clamp(max=3), num_classes)),
                    "teacher": None}) for b, _ in batches]
    module = Recorder()
    run_epoch(callback, perfect, trainer, module)
    assert module.logged["val/miou"] == pytest.approx(1.0)
    assert "val/teacher_miou" not in module.logged


def test_sanity_check_logs_nothing(tmp_path):
    trainer = SimpleNamespace(sanity_checking=True, is_global_zero=True, datamodule=None, log_dir=str(tmp_path),
                              default_root_dir=str(tmp_path), current_epoch=0)
    y = torch.zeros(1, 4, 4, dtype=torch.long)
    batch = {"inputs": {"pixel_values": torch.rand(1, 3, 4, 4)}, "labels": y}
    module = Recorder()
    run_epoch(SegmentationMetrics(), [(batch, {"student": ModelOutput(logits=one_hot_logits(y, 2))})],
              trainer, module)
    assert module.logged == {} and not (tmp_path / "segmentation").exists()


def test_palette_and_colorize():
    palette = segmentation_palette(11)
    assert palette.shape == (11, 3) and palette[0].tolist() == [0, 0, 0]
    assert palette[1].tolist() == [128, 0, 0] and palette[2].tolist() == [0, 128, 0]  # VOC's colours
    assert len({tuple(c) for c in palette.tolist()}) == 11
    image = colorize(torch.tensor([[0, 1], [255, 2]]), 11, 255)
    assert image.shape == (3, 2, 2)
    assert image[:, 1, 0].mul(255).round().tolist() == [224, 224, 192]
