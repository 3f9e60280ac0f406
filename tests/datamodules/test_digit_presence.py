"""Digit-presence datamodule: multi-hot labels of generated scenes, the batch contract, its scene seeds."""

from __future__ import annotations

import json

import pytest
import torch

from datamodules.digit_presence import DigitPresenceDataModule
from datamodules.digit_scenes import digit_pool, make_scenes
from datamodules.vlm import load_image, write_digit_vqa
from lit_distill.errors import ConfigError


def test_labels_are_the_scenes_digits_and_images_are_normalised():
    data = DigitPresenceDataModule(train_scenes=6, val_scenes=3, scene_seed=5, batch_size=4)
    data.setup()
    scenes = make_scenes(6, digit_pool("train"), 5, canvas_size=64)
    for (image, labels), scene in zip(data.train_dataset, scenes, strict=True):
        assert labels.dtype == torch.float32 and labels.shape == (10,)
        assert set(labels.nonzero().flatten().tolist()) == {o.digit for o in scene.objects}
        torch.testing.assert_close(image, (scene.image - 0.5) / 0.5)
    batch = next(iter(data.train_dataloader()))
    assert set(batch) == {"inputs", "labels"} and batch["inputs"]["pixel_values"].shape == (4, 3, 64, 64)
    assert batch["labels"].shape == (4, 10) and set(batch["labels"].unique().tolist()) <= {0.0, 1.0}
    assert len(list(data.val_dataloader())) == 1  # 3 scenes in order, one batch


def test_default_validation_scenes_are_write_digit_vqas_held_out_scenes(tmp_path):
    """The tower is validated on the scenes the VLMs are (val_scene_seed 7919 = write_digit_vqa's seed + 7919)."""
    paths = write_digit_vqa(tmp_path / "vqa", num_train=1, num_val=2)
    data = DigitPresenceDataModule(train_scenes=1, val_scenes=2)
    data.setup()
    records = json.loads(paths["val"].read_text())
    for i, (image, labels) in enumerate(data.val_dataset):
        record = next(r for r in records if r["meta"]["scene"] == i)
        png = load_image(paths["val"].parent / record["image"], 64, [0.5] * 3, [0.5] * 3)
        torch.testing.assert_close(image, png, rtol=0, atol=1.01 / 255 / 0.5)  # the PNG rounds to 8 bits
        presence = [r["meta"] for r in records if r["meta"]["scene"] == i and r["meta"]["type"] == "presence"]
        for meta in presence:
            assert labels[meta["digit"]].item() == (meta["answer"] == "yes")


@pytest.mark.parametrize(("kwargs", "field"), [({"train_scenes": 0}, "train_scenes"), ({"val_scenes": 0}, "val_scenes"),
                                               ({"image_size": 8}, "image_size"), ({"std": [0.5, 0.0, 0.5]}, "std"),
                                               ({"batch_size": 0}, "batch_size")])
def test_bad_arguments_fail_early_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        DigitPresenceDataModule(**kwargs)
