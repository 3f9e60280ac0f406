"""Synthetic scenes of real digits: images, per-pixel masks and object lists, seeded.

Scikit-learn's digits (1,797 real 8x8 handwritten digits, shipped with the library)
are upsampled and pasted, without overlap by default, onto a coloured noisy canvas. A scene
gives what several datamodules need from one generator: a segmentation mask
(background 0, digit ``d`` is class ``d + 1``) and the list of placed objects
(digit, box) from which questions and answers are written.

The digit images are split once (seeded) into a train and a held-out pool, so
held-out scenes are made of handwriting never seen in training.

Harder scenes, where telling which strokes belong together (grouping) matters: ``max_overlap``
lets digits overlap (later ones drawn on top), ``contrast`` draws each digit's colour close to
the background's, and ``clutter`` pastes digit fragments that belong to the background class.
With the defaults the scenes are exactly the original ones (same random stream).

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


def _overlap(a: tuple[int, int, int], b: tuple[int, int, int]) -> int:
    """Area shared by two square boxes ``(top, left, size)``."""
    rows = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    cols = min(a[1] + a[2], b[1] + b[2]) - max(a[1], b[1])
    return max(rows, 0) * max(cols, 0)


def _place_boxes(gen: torch.Generator, count: int, canvas_size: int, digit_size: tuple[int, int],
                 max_tries: int, max_overlap: float = 0.0) -> list[tuple[int, int, int]]:
    """Up to ``count`` square boxes ``(top, left, size)``, each sharing at most ``max_overlap``
    of its area with every earlier box (0: disjoint boxes)."""
    boxes: list[tuple[int, int, int]] = []
    for _ in range(max_tries):
        if len(boxes) == count:
            break
        size = int(torch.randint(digit_size[0], digit_size[1] + 1, (1,), generator=gen))
        top = int(torch.randint(0, canvas_size - size + 1, (1,), generator=gen))
        left = int(torch.randint(0, canvas_size - size + 1, (1,), generator=gen))
        box = (top, left, size)
        if all(_overlap(box, other) <= max_overlap * min(size, other[2]) ** 2 for other in boxes):
            boxes.append(box)
    return boxes


def _digit_color(generator: torch.Generator, background: Tensor, contrast: tuple[float, float] | None) -> Tensor:
    """A glyph colour ``[3]``: bright (0.55-1) by default, else ``background`` moved by ``c ~ U(contrast)``
    along a random direction (largest channel change exactly ``c``; a channel that would leave
    [0, 1] moves the other way)."""
    if contrast is None:
        return _random_color(generator, 0.55, 1.0)
    c = contrast[0] + (contrast[1] - contrast[0]) * float(torch.rand((), generator=generator))
    direction = torch.rand(3, generator=generator) * 2 - 1
    delta = direction / direction.abs().max().clamp_min(1e-6) * c
    delta = torch.where(((background + delta) < 0) | ((background + delta) > 1), -delta, delta)
    return (background + delta).clamp(0, 1)


def _glyph(pool: DigitPool, generator: torch.Generator, size: int) -> tuple[int, Tensor]:
    """A random digit of the pool upsampled to ``[size, size]`` in [0, 1], with its class."""
    index = int(torch.randint(0, len(pool.labels), (1,), generator=generator))
    glyph = F.interpolate(pool.images[index][None, None], size=(size, size), mode="bilinear",
                          align_corners=False)[0, 0].clamp(0, 1)
    return int(pool.labels[index]), glyph


def _paste_clutter(image: Tensor, pool: DigitPool, generator: torch.Generator, count: int,
                   digit_size: tuple[int, int], background: Tensor, contrast: tuple[float, float] | None) -> None:
    """Paint ``count`` digit fragments (one random half of a glyph: top, bottom, left or right) in
    place; they stay background in the mask, so only their shape tells them from digits."""
    canvas_size = image.shape[-1]
    for _ in range(count):
        size = int(torch.randint(digit_size[0], digit_size[1] + 1, (1,), generator=generator))
        _, glyph = _glyph(pool, generator, size)
        half, side = size // 2, int(torch.randint(0, 4, (1,), generator=generator))
        keep = torch.zeros_like(glyph)
        (keep[:half] if side == 0 else keep[half:] if side == 1 else keep[:, :half] if side == 2
         else keep[:, half:]).fill_(1.0)
        glyph = glyph * keep
        top = int(torch.randint(0, canvas_size - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, canvas_size - size + 1, (1,), generator=generator))
        color = _digit_color(generator, background, contrast)
        region = image[:, top:top + size, left:left + size]
        image[:, top:top + size, left:left + size] = region * (1 - glyph) + color[:, None, None] * glyph


def compose_scene(pool: DigitPool, generator: torch.Generator, canvas_size: int = 64,
                  num_digits: tuple[int, int] = (1, 4), digit_size: tuple[int, int] = (16, 28),
                  noise_std: float = 0.05, max_tries: int = 200, max_overlap: float = 0.0,
                  contrast: tuple[float, float] | None = None, clutter: int = 0) -> Scene:
    """Compose one scene: 1..k digits (non-overlapping by default) on a dark, noisy, coloured canvas.

    Args:
        pool: digit images to draw from.
        generator: the random stream (the scene is a pure function of its state).
        canvas_size: side of the square canvas in pixels.
        num_digits: inclusive range of how many digits to place.
        digit_size: inclusive range of the side of each digit's box in pixels.
        noise_std: standard deviation of the Gaussian pixel noise.
        max_tries: box placements to try before settling for fewer digits.
        max_overlap: largest share of the smaller box's area two digit boxes may have in
            common (0: disjoint). A later digit is drawn over an earlier one, in the image and
            in the mask.
        contrast: range of the glyph-to-background colour change (largest channel); None: bright
            glyphs (0.55-1 per channel) on the dark canvas.
        clutter: digit fragments (half glyphs) painted before the digits and labelled background.
    """
    lo, hi = num_digits
    if not 1 <= lo <= hi:
        raise ConfigError(f"num_digits: need 1 <= min <= max, got {num_digits}")
    if not 4 <= digit_size[0] <= digit_size[1] <= canvas_size:
        raise ConfigError(f"digit_size: need 4 <= min <= max <= canvas_size ({canvas_size}), got {digit_size}")
    if not 0.0 <= max_overlap <= 1.0:
        raise ConfigError(f"max_overlap: must be in [0, 1], got {max_overlap}")
    if contrast is not None and not 0.0 < contrast[0] <= contrast[1] <= 0.5:
        raise ConfigError(f"contrast: need 0 < min <= max <= 0.5, got {list(contrast)}")
    if clutter < 0:
        raise ConfigError(f"clutter: must be >= 0, got {clutter}")
    count = int(torch.randint(lo, hi + 1, (1,), generator=generator))
    background = _random_color(generator, 0.0, 0.35)
    image = background[:, None, None].expand(3, canvas_size, canvas_size).clone()
    mask = torch.zeros(canvas_size, canvas_size, dtype=torch.long)
    objects = []
    _paste_clutter(image, pool, generator, clutter, digit_size, background, contrast)
    for top, left, size in _place_boxes(generator, count, canvas_size, digit_size, max_tries, max_overlap):
        digit, glyph = _glyph(pool, generator, size)  # glyph [size, size]
        color = _digit_color(generator, background, contrast)
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
