"""Synthetic scenes of real digits: images, per-pixel masks and object lists, seeded.

Scikit-learn's digits (1,797 real 8x8 handwritten digits, shipped with the library)
are upsampled and pasted, without overlap, onto a coloured noisy canvas. A scene
gives what several datamodules need from one generator: a segmentation mask
(background 0, digit ``d`` is class ``d + 1``) and the list of placed objects
(digit, box) from which questions and answers are written.

The digit images are split once (seeded) into a train and a held-out pool, so
held-out scenes are made of handwriting never seen in training.

Example::

    pool = digit_pool("train")
    scenes = make_scenes(100, pool, seed=0, canvas_size=64)
    scenes[0].image.shape, scenes[0].mask.shape   # [3, 64, 64], [64, 64]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_distill.errors import ConfigError

NUM_DIGITS = 10
MASK_THRESHOLD = 0.3  # upsampled intensity in [0, 1] above which a pixel belongs to the digit


@dataclass(frozen=True)
class SceneObject:
    """One digit placed in a scene.

    Attributes:
        digit: the digit's class, 0..9 (its mask value is ``digit + 1``).
        top: row of the box's top-left corner.
        left: column of the box's top-left corner.
        size: side of the square box in pixels.
    """

    digit: int
    top: int
    left: int
    size: int

    @property
    def center(self) -> tuple[float, float]:
        """``(row, column)`` of the box centre."""
        return self.top + self.size / 2, self.left + self.size / 2


@dataclass
class Scene:
    """A composed scene.

    Attributes:
        image: ``[3, H, W]`` float in [0, 1].
        mask: ``[H, W]`` int64; 0 background, ``d + 1`` where digit ``d`` is drawn.
        objects: the placed digits, in placement order.
    """

    image: Tensor
    mask: Tensor
    objects: list[SceneObject]


@dataclass
class DigitPool:
    """Digit images to draw from: ``images [N, 8, 8]`` in [0, 1] and ``labels [N]``."""

    images: Tensor
    labels: Tensor


def digit_pool(split: Literal["train", "val"], val_fraction: float = 0.2, seed: int = 0) -> DigitPool:
    """One side of a seeded, disjoint split of scikit-learn's digits.

    Args:
        split: ``"train"`` or ``"val"`` (held-out handwriting).
        val_fraction: share of the 1,797 images in the ``"val"`` pool.
        seed: seed of the split (keep it fixed so the two pools never overlap).
    """
    if split not in ("train", "val"):
        raise ConfigError(f"split: '{split}' is not valid (valid: train, val)")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction: must be in (0, 1), got {val_fraction}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ConfigError("digit scenes need scikit-learn (pip install scikit-learn)") from err
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32) / 16.0
    labels = torch.as_tensor(digits.target).long()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_val = round(len(labels) * val_fraction)
    chosen = order[:n_val] if split == "val" else order[n_val:]
    return DigitPool(images[chosen], labels[chosen])


def _random_color(gen: torch.Generator, low: float, high: float) -> Tensor:
    return low + (high - low) * torch.rand(3, generator=gen)


def _place_boxes(gen: torch.Generator, count: int, canvas_size: int, digit_size: tuple[int, int],
                 max_tries: int) -> list[tuple[int, int, int]]:
    """Up to ``count`` non-overlapping square boxes ``(top, left, size)``."""
    boxes: list[tuple[int, int, int]] = []
    for _ in range(max_tries):
        if len(boxes) == count:
            break
        size = int(torch.randint(digit_size[0], digit_size[1] + 1, (1,), generator=gen))
        top = int(torch.randint(0, canvas_size - size + 1, (1,), generator=gen))
        left = int(torch.randint(0, canvas_size - size + 1, (1,), generator=gen))
        if all(top + size <= t or t + s <= top or left + size <= lf or lf + s <= left for t, lf, s in boxes):
            boxes.append((top, left, size))
    return boxes


def compose_scene(pool: DigitPool, generator: torch.Generator, canvas_size: int = 64,
                  num_digits: tuple[int, int] = (1, 4), digit_size: tuple[int, int] = (16, 28),
                  noise_std: float = 0.05, max_tries: int = 200) -> Scene:
    """Compose one scene: 1..k non-overlapping digits on a dark, noisy, coloured canvas.

    Args:
        pool: digit images to draw from.
        generator: the random stream (the scene is a pure function of its state).
        canvas_size: side of the square canvas in pixels.
        num_digits: inclusive range of how many digits to place.
        digit_size: inclusive range of the side of each digit's box in pixels.
        noise_std: standard deviation of the Gaussian pixel noise.
        max_tries: box placements to try before settling for fewer digits.
    """
    lo, hi = num_digits
    if not 1 <= lo <= hi:
        raise ConfigError(f"num_digits: need 1 <= min <= max, got {num_digits}")
    if not 4 <= digit_size[0] <= digit_size[1] <= canvas_size:
        raise ConfigError(f"digit_size: need 4 <= min <= max <= canvas_size ({canvas_size}), got {digit_size}")
    count = int(torch.randint(lo, hi + 1, (1,), generator=generator))
    background = _random_color(generator, 0.0, 0.35)
    image = background[:, None, None].expand(3, canvas_size, canvas_size).clone()
    mask = torch.zeros(canvas_size, canvas_size, dtype=torch.long)
    objects = []
    for top, left, size in _place_boxes(generator, count, canvas_size, digit_size, max_tries):
        index = int(torch.randint(0, len(pool.labels), (1,), generator=generator))
        digit = int(pool.labels[index])
        glyph = F.interpolate(pool.images[index][None, None], size=(size, size), mode="bilinear",
                              align_corners=False)[0, 0].clamp(0, 1)  # [size, size]
        color = _random_color(generator, 0.55, 1.0)
        region = image[:, top:top + size, left:left + size]
        image[:, top:top + size, left:left + size] = region * (1 - glyph) + color[:, None, None] * glyph
        mask[top:top + size, left:left + size][glyph > MASK_THRESHOLD] = digit + 1
        objects.append(SceneObject(digit, top, left, size))
    image = (image + noise_std * torch.randn(image.shape, generator=generator)).clamp(0, 1)
    return Scene(image, mask, objects)


def make_scenes(count: int, pool: DigitPool, seed: int, **scene_kwargs) -> list[Scene]:
    """``count`` scenes; scene ``i`` depends only on ``(seed, i)``, so subsets are stable.

    Args:
        count: number of scenes.
        pool: digit images to draw from (see :func:`digit_pool`).
        seed: base seed.
        **scene_kwargs: forwarded to :func:`compose_scene`.
    """
    if count < 1:
        raise ConfigError(f"count: need at least one scene, got {count}")
    return [compose_scene(pool, torch.Generator().manual_seed(seed * 1_000_003 + i), **scene_kwargs)
            for i in range(count)]
