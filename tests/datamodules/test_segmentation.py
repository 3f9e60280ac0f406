"""Segmentation datamodule: LAD label encoding, joint augmentation, batch contract, VOC folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.segmentation import (
    SegmentationDataModule,
    fixed_label_values,
    label_encoding,
    scale_crop,
)
from lit_distill.errors import ConfigError, MissingPathError


def test_fixed_values_generalise_voc():
    voc = fixed_label_values(21)
    torch.testing.assert_close(voc, (torch.arange(22) - 11) / 10.0)
    digits = fixed_label_values(11)  # 11 classes + the ignore class
    assert digits.shape == (12,)
    assert digits[0].item() == pytest.approx(-1.1) and digits[-1].item() == pytest.approx(1.1 - 2.2 / 12)
    torch.testing.assert_close(digits.diff(), torch.full((11,), 2.2 / 12))


def test_fixed_encoding_values_and_noise():
    labels = torch.zeros(64, 64, dtype=torch.long)
    labels[:32] = 3
    labels[:, :8] = 255
    g = torch.Generator().manual_seed(0)
    channel = label_encoding(labels, 11, "fixed", scale=100.0, generator=g)
    values = fixed_label_values(11)
    for k, region in ((0, (labels == 0)), (3, (labels == 3)), (11, (labels == 255))):
        pixels = channel[region] / 100.0
        assert pixels.mean().item() == pytest.approx(values[k].item(), abs=0.005)
        assert pixels.std().item() == pytest.approx(0.02, rel=0.1)


def test_random_encoding_statistics():
    """One N(0,1) value per class and image, N(0, 0.03²) pixel noise, all times the scale."""
    labels = torch.zeros(16, 16, dtype=torch.long)
    labels[8:] = 5
    g = torch.Generator().manual_seed(1)
    draws = torch.stack([label_encoding(labels, 11, "random", scale=100.0, generator=g) for _ in range(1500)])
    draws = draws / 100.0
    background, five = draws[:, labels == 0], draws[:, labels == 5]
    class_values = torch.stack([background.mean(1), five.mean(1)])  # [2, 1500]
    for v in class_values:
        assert abs(v.mean().item()) < 0.1 and v.std().item() == pytest.approx(1.0, rel=0.08)
    assert abs(torch.corrcoef(class_values)[0, 1].item()) < 0.1  # independent per class
    assert background.std(1).mean().item() == pytest.approx(0.03, rel=0.05)
    assert five.std(1).mean().item() == pytest.approx(0.03, rel=0.05)


def test_encoding_is_seeded_and_rejects_bad_modes():
    labels = torch.randint(0, 11, (8, 8))
    a = label_encoding(labels, 11, "random", generator=torch.Generator().manual_seed(3))
    b = label_encoding(labels, 11, "random", generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    with pytest.raises(ConfigError, match="mode"):
        label_encoding(labels, 11, "onehot")


def test_scale_crop_moves_image_and_mask_together():
    torch.manual_seed(0)
    mask = torch.randint(0, 11, (40, 40))
    image = (mask.float() / 10.0)[None].repeat(3, 1, 1)
    for _ in range(10):
        img, m = scale_crop(image, mask, 48, (1.0, 1.0), hflip=True, ignore_index=255)
        assert img.shape == (3, 48, 48) and m.shape == (48, 48)
        inside = m != 255
        torch.testing.assert_close(img[0][inside] * 10, m[inside].float())
        assert (img[:, ~inside] == 0).all()  # padding: image 0, mask ignore
        assert inside.sum() == 40 * 40
    constant = torch.full((40, 40), 7)
    _, m = scale_crop(image, constant, 32, (0.5, 2.0), hflip=False, ignore_index=255)
    assert set(m.unique().tolist()) <= {7, 255}


def shapes(batch):
    return {k: ({kk: tuple(vv.shape) for kk, vv in v.items()} if isinstance(v, dict) else tuple(v.shape))
            for k, v in batch.items()}


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({}, {"inputs": {"pixel_values": (4, 3, 32, 32)}, "labels": (4, 32, 32)}),
    ({"label_encoding": "fixed"}, {"student_inputs": {"pixel_values": (4, 3, 32, 32)},
                                   "teacher_inputs": {"pixel_values": (4, 4, 32, 32)}, "labels": (4, 32, 32)}),
    ({"label_encoding": "random", "val_label_encoding": "fixed", "label_views": 2, "label_input": "student"},
     {"student_inputs": {"pixel_values": (4, 4, 32, 32), "pixel_values_2": (4, 4, 32, 32)},
      "labels": (4, 32, 32)}),
])
def test_batch_contract(kwargs, expected):
    dm = SegmentationDataModule(image_size=32, train_scenes=8, val_scenes=4, digit_size=(8, 14), batch_size=4,
                                mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), **kwargs)
    assert dm.num_classes == 11 and dm.class_names[0] == "background"
    dm.setup()
    train, val = next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader()))
    assert shapes(train) == expected and shapes(val) == expected
    assert train["labels"].dtype == torch.long
    assert set(train["labels"].unique().tolist()) <= set(range(11)) | {255}
    if "teacher_inputs" in train:
        rgb = train["teacher_inputs"]["pixel_values"][:, :3]
        torch.testing.assert_close(rgb, train["student_inputs"]["pixel_values"])
    if "pixel_values_2" in train.get("student_inputs", {}):
        a, b = train["student_inputs"]["pixel_values"], train["student_inputs"]["pixel_values_2"]
        torch.testing.assert_close(a[:, :3], b[:, :3])
        assert not torch.equal(a[:, 3], b[:, 3])  # independent noisings
    # validation is deterministic, label noise included
    again = next(iter(dm.val_dataloader()))
    for side in ("inputs", "student_inputs", "teacher_inputs"):
        if side in val:
            for key in val[side]:
                torch.testing.assert_close(val[side][key], again[side][key])


def test_val_scenes_use_held_out_handwriting():
    dm = SegmentationDataModule(image_size=32, train_scenes=4, val_scenes=4, digit_size=(8, 14))
    dm.setup()
    train_img = dm.train_dataset.pairs[0][0]
    assert all(not torch.equal(train_img, img) for img, _ in dm.val_dataset.pairs)


@pytest.fixture
def voc_dir(tmp_path):
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [255] * (256 * 3 - 9)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (tmp_path / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "JPEGImages" / f"{name}.jpg")
        mask = np.zeros((20, 30), dtype=np.uint8)
        mask[5:15, 10:20] = 2
        mask[0] = 255
        png = Image.fromarray(mask, mode="P")
        png.putpalette(palette)
        png.save(tmp_path / "SegmentationClass" / f"{name}.png")
    (tmp_path / "ImageSets/Segmentation/train.txt").write_text("a\nb\n")
    (tmp_path / "ImageSets/Segmentation/val.txt").write_text("c\n")
    return tmp_path


def test_voc_folder(voc_dir):
    dm = SegmentationDataModule(source="voc", root=str(voc_dir), num_classes=3, image_size=16, batch_size=2,
                                ignore_index=255, label_encoding="fixed")
    dm.setup()
    assert len(dm.train_dataset) == 2 and len(dm.val_dataset) == 1
    batch = next(iter(dm.val_dataloader()))
    assert batch["teacher_inputs"]["pixel_values"].shape == (1, 4, 16, 16)
    assert set(batch["labels"].unique().tolist()) == {0, 2, 255}
    train = next(iter(dm.train_dataloader()))
    assert train["labels"].shape == (2, 16, 16)


def test_voc_errors(voc_dir, tmp_path_factory):
    dm = SegmentationDataModule(source="voc", root=str(voc_dir), num_classes=2, image_size=16)
    dm.setup()
    with pytest.raises(ConfigError, match="num_classes"):
        dm.val_dataset[0]
    (voc_dir / "JPEGImages" / "c.jpg").unlink()
    with pytest.raises(MissingPathError, match="c.jpg"):
        SegmentationDataModule(source="voc", root=str(voc_dir), num_classes=3).setup()
    with pytest.raises(MissingPathError):
        SegmentationDataModule(source="voc", root=str(tmp_path_factory.mktemp("empty")), num_classes=3).setup()


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"label_views": 3}, "label_views"),
    ({"label_encoding": "fixed", "val_label_encoding": "none"}, "val_label_encoding"),
    ({"ignore_index": 5}, "ignore_index"),
    ({"source": "voc"}, "root"),
    ({"num_classes": 5}, "num_classes"),
    ({"label_encoding": "onehot"}, "label_encoding"),
])
def test_config_errors(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        SegmentationDataModule(**kwargs)
