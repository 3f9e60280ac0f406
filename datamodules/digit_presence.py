"""Multi-label digit presence on generated digit scenes: which of the ten digits does a scene hold?

Scenes come from :mod:`datamodules.digit_scenes` (real handwritten digits pasted on a noisy
canvas): training scenes from the ``train`` handwriting pool, validation scenes from the disjoint
``val`` pool. This is the pretraining task of the LLaVA-MoD vision tower
(``configs/vlm/llava_mod/tiny-vision_presence.yaml``, loss :class:`lit_distill.losses.multilabel.MultiLabelBCE`).

Batches (``B`` batch size, ``S`` = ``image_size``)::

    {
        "inputs": {"pixel_values": FloatTensor[B, 3, S, S]},  # normalised with mean/std
        "labels": FloatTensor[B, 10],                         # 1.0 where the digit is in the scene
    }

No ``loss_mask``: every label of every scene counts.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader

from datamodules.checks import check_loader_arguments
from datamodules.records import EpochLoaders, epoch_loader
from lit_distill.errors import ConfigError

NUM_DIGITS = 10


def presence_samples(count: int, split: str, scene_seed: int, image_size: int, mean: list[float],
                     std: list[float]) -> list[tuple[Tensor, Tensor]]:
    """``count`` scenes as ``(pixel_values [3, S, S] normalised, multi-hot labels [10])`` pairs.

    Args:
        count: number of scenes.
        split: handwriting pool, ``"train"`` or ``"val"``.
        scene_seed: seed of the scenes (scene ``i`` depends only on ``(scene_seed, i)``).
        image_size: canvas side ``S`` in pixels.
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.
    """
    from datamodules.digit_scenes import digit_pool, make_scenes

    scenes = make_scenes(count, digit_pool(split), scene_seed, canvas_size=image_size)
    mean_t, std_t = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    samples = []
    for scene in scenes:
        labels = torch.zeros(NUM_DIGITS)
        labels[[o.digit for o in scene.objects]] = 1.0
        samples.append(((scene.image - mean_t) / std_t, labels))
    return samples


def collate(samples: list[tuple[Tensor, Tensor]]) -> dict[str, Any]:
    """Stack ``(image, labels)`` pairs into the batch of the module docstring."""
    return {"inputs": {"pixel_values": torch.stack([s[0] for s in samples])},
            "labels": torch.stack([s[1] for s in samples])}


class DigitPresenceDataModule(EpochLoaders, LightningDataModule):
    """Generated digit scenes with the set of digits each holds, as multi-hot labels.

    Batches follow the contract in the :mod:`datamodules.digit_presence` module docstring.

    Args:
        train_scenes: generated training scenes (``train`` handwriting pool).
        val_scenes: generated validation scenes (held-out ``val`` pool).
        scene_seed: seed of the training scenes. The default 1 keeps them apart from the
            training scenes of :func:`datamodules.vlm.write_digit_vqa` (seed 0).
        val_scene_seed: seed of the validation scenes. The default 7919 gives the held-out scenes
            of ``write_digit_vqa`` (its ``seed + 7919``), so the tower is validated on the scenes
            the VLMs are.
        image_size: scene side in pixels.
        mean: per-channel (RGB) normalisation mean (``VLMDataModule``'s default: 0.5).
        std: per-channel (RGB) normalisation std (``VLMDataModule``'s default: 0.5).
        batch_size: scenes per batch (per process).
        num_workers: DataLoader worker processes.
        seed: seed of the training shuffle order (reshuffled each epoch from ``seed + epoch``).
        shuffle: shuffle the training scenes.
    """

    def __init__(self, train_scenes: int = 6000, val_scenes: int = 200, scene_seed: int = 1,
                 val_scene_seed: int = 7919, image_size: int = 64, mean: list[float] | None = None,
                 std: list[float] | None = None, batch_size: int = 64, num_workers: int = 0, seed: int = 0,
                 shuffle: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_loader_arguments(batch_size, num_workers)
        for name, count in (("train_scenes", train_scenes), ("val_scenes", val_scenes)):
            if count < 1:
                raise ConfigError(f"{name}: need at least one scene, got {count}")
        if image_size < 16:
            raise ConfigError(f"image_size: must be >= 16 pixels (digits are drawn 16-28 pixels wide), got {image_size}")
        self.mean = [0.5] * 3 if mean is None else [float(v) for v in mean]
        self.std = [0.5] * 3 if std is None else [float(v) for v in std]
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"mean/std: need three per-channel (RGB) values, std > 0; got {self.mean}, {self.std}")
        self.train_dataset: list | None = None
        self.val_dataset: list | None = None

    @property
    def num_classes(self) -> int:
        """Labels per scene: the ten digits."""
        return NUM_DIGITS

    def setup(self, stage: str | None = None) -> None:
        """Generate the scenes (once)."""
        if self.train_dataset is not None:
            return
        hp = self.hparams
        self.train_dataset = presence_samples(hp.train_scenes, "train", hp.scene_seed, hp.image_size, self.mean, self.std)
        self.val_dataset = presence_samples(hp.val_scenes, "val", hp.val_scene_seed, hp.image_size, self.mean, self.std)

    def _loader(self, dataset: list | None, shuffle: bool) -> DataLoader:
        return epoch_loader(self, dataset, shuffle, collate)
