"""Tests of ImageClassificationDataModule: batch contract, long-tailed profile, views, mixing, errors.

The ``digits`` source reads scikit-learn's digits. Where scikit-learn is not installed, the
``digits`` fixture substitutes arrays of the same shape, value range and class sizes (8x8, 0..16,
1,797 images in 10 classes) for ``load_digits``, so the whole digits pipeline (upsampling, split,
subsampling, augmentation, collate) is still exercised; :func:`test_real_digits_or_clear_error`
checks the real data set where it can be loaded and the error otherwise.
"""

from __future__ import annotations

import importlib.util
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler

from datamodules import vision
from datamodules.vision import ImageClassificationDataModule, long_tail_counts
from lit_distill.errors import ConfigError, MissingPathError

HAS_SKLEARN = importlib.util.find_spec("sklearn") is not None
DIGITS_CLASS_SIZES = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]  # those of load_digits()
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _stand_in_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """1,797 8x8 images in [0, 16] with the digits' class sizes: a class-specific stroke + noise."""
    g = torch.Generator().manual_seed(123)
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(DIGITS_CLASS_SIZES)])
    images = torch.rand(len(labels), 8, 8, generator=g) * 4
    for i, c in enumerate(labels.tolist()):
        images[i, c % 8, :] += 12  # a row per class, a column for classes 8 and 9
        if c >= 8:
            images[i, :, c - 6] += 12
    perm = torch.randperm(len(labels), generator=g)  # interleave the classes as load_digits does
    return images.clamp(0, 16)[perm], labels[perm]


@pytest.fixture(autouse=True)
def _seeded():
    """Augmentation draws from torch, random (timm's RandAugment) and numpy."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def digits(monkeypatch):
    """Make ``source="digits"`` loadable without network: real data if sklearn is there."""
    if not HAS_SKLEARN:
        monkeypatch.setattr(vision, "_load_digits", _stand_in_digits)
    return "digits"


def make_dm(**kwargs) -> ImageClassificationDataModule:
    dm = ImageClassificationDataModule(**{"source": "digits", "batch_size": 16, **kwargs})
    dm.setup("fit")
    return dm


def counts(labels) -> list[int]:
    return np.bincount(np.asarray(labels), minlength=10).tolist()


def write_png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (10, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


COLOURS = {"cat": (255, 0, 0), "dog": (0, 255, 0), "emu": (0, 0, 255)}


@pytest.fixture
def folder(tmp_path) -> Path:
    """root/train/<class>/*.png with 6 images per class (one colour per class), no val folder."""
    for name, colour in COLOURS.items():
        for i in range(6):
            write_png(tmp_path / "train" / name / f"{i}.png", colour, size=(10 + i, 12))
    return tmp_path


# --- batch contract -------------------------------------------------------------------------


def test_batch_shapes_dtypes_and_normalised_range(digits):
    dm = make_dm(image_size=24)
    batch = next(iter(dm.train_dataloader()))
    x, y = batch["inputs"]["pixel_values"], batch["labels"]
    assert set(batch) == {"inputs", "labels"}
    assert x.shape == (16, 3, 24, 24) and x.dtype == torch.float32
    assert y.shape == (16,) and y.dtype == torch.long and 0 <= y.min() and y.max() < dm.num_classes
    # undoing the normalisation gives [0, 1] pixel values, and grey digits have equal channels
    pixels = x * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert torch.allclose(pixels[:, 0], pixels[:, 1], atol=1e-5)
    assert pixels.max() > 0.9  # bright strokes survive the upsampling
    val = next(iter(dm.val_dataloader()))
    assert set(val) == {"inputs", "labels"} and val["inputs"]["pixel_values"].shape == (16, 3, 24, 24)
    assert dm.num_classes == 10


def test_custom_mean_std_are_applied(digits):
    dm = make_dm(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), augment="none")
    x = next(iter(dm.val_dataloader()))["inputs"]["pixel_values"]
    assert x.min() >= -1 - 1e-6 and x.max() <= 1 + 1e-6
    assert x.min() == pytest.approx(-1.0)  # the black background maps to -1


# --- splits and the long-tailed profile ----------------------------------------------------


def test_val_is_balanced_and_disjoint_from_train(digits):
    dm = make_dm()
    val_counts = counts(dm.val_dataset.labels)
    assert len(set(val_counts)) == 1 and val_counts[0] == round(0.2 * min(DIGITS_CLASS_SIZES))
    assert len(dm.train_dataset) + len(dm.val_dataset) == 1797
    assert not {id(i) for i in dm.train_dataset.items} & {id(i) for i in dm.val_dataset.items}
    assert counts(dm.train_dataset.labels) == [n - val_counts[0] for n in DIGITS_CLASS_SIZES]


@pytest.mark.parametrize("factor", [1, 10, 100])
def test_class_counts_follow_exponential_profile(digits, factor):
    n_max = min(DIGITS_CLASS_SIZES) - round(0.2 * min(DIGITS_CLASS_SIZES))  # smallest train class
    dm = make_dm(imbalance_factor=factor)
    expected = [max(1, math.floor(n_max * (1 / factor) ** (c / 9))) for c in range(10)]
    assert dm.class_counts == expected
    assert counts(dm.train_dataset.labels) == expected
    assert expected[0] == n_max and expected[-1] == max(1, math.floor(n_max / factor))
    assert counts(dm.val_dataset.labels) == [35] * 10  # validation is never subsampled


def test_long_tail_counts_known_values():
    cifar10_lt = long_tail_counts(5000, 10, 100)  # CIFAR-10-LT (LDAM-DRW): 12,406 images
    assert cifar10_lt == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50] and sum(cifar10_lt) == 12406
    assert long_tail_counts(100, 3, 4) == [100, 50, 25]
    assert long_tail_counts(7, 1, 10) == [7]
    assert long_tail_counts(10, 4, 1000) == [10, 1, 1, 1]  # never below one image


def test_shuffled_class_order_permutes_the_profile(digits):
    plain = make_dm(imbalance_factor=10)
    shuffled = make_dm(imbalance_factor=10, shuffle_class_order=True, split_seed=3)
    assert sorted(shuffled.class_counts, reverse=True) == plain.class_counts
    assert shuffled.class_counts != plain.class_counts


def test_selection_is_seeded(digits):
    a, b = make_dm(imbalance_factor=10), make_dm(imbalance_factor=10)
    c = make_dm(imbalance_factor=10, split_seed=1)

    def fingerprint(dm):
        return [np.asarray(img).tobytes() for img in dm.train_dataset.items]

    assert fingerprint(a) == fingerprint(b)
    assert a.class_counts == c.class_counts and fingerprint(a) != fingerprint(c)
    # a different training-order seed keeps the data identical
    assert fingerprint(make_dm(imbalance_factor=10, seed=5)) == fingerprint(a)


def test_groups_partition_all_classes(digits):
    dm = make_dm(imbalance_factor=100)
    groups = dm.class_groups
    assert set(groups) == {"head", "medium", "tail"}
    members = [c for g in groups.values() for c in g]
    assert sorted(members) == list(range(10))
    assert all(dm.class_counts[c] > 30 for c in groups["head"])
    assert all(dm.class_counts[c] < 10 for c in groups["tail"])
    assert all(10 <= dm.class_counts[c] <= 30 for c in groups["medium"])
    assert groups["head"] and groups["medium"] and groups["tail"]
    custom = make_dm(imbalance_factor=100, many_threshold=100, few_threshold=2)
    assert custom.class_groups["head"] == [0] and custom.class_groups["tail"] == [9]


# --- views and mixing ------------------------------------------------------------------------


def test_strong_teacher_view(digits):
    dm = make_dm(teacher_view="strong", augment="none", shuffle=False)
    batch = next(iter(dm.train_dataloader()))
    student, teacher = batch["inputs"]["pixel_values"], batch["teacher_inputs"]["pixel_values"]
    assert teacher.shape == student.shape and teacher.dtype == torch.float32
    assert not torch.allclose(student, teacher)
    assert batch["labels"].tolist() == dm.train_dataset.labels[:16]
    clean = torch.stack([dm.val_dataset.transform(dm.train_dataset.image(i)) for i in range(16)])
    assert torch.equal(student, clean)  # augment="none": the student sees the clean images
    assert "teacher_inputs" not in next(iter(dm.val_dataloader()))
    # with RandAugment ops that never fire and no crop, the teacher view IS the same images
    same = make_dm(teacher_view="strong", augment="none", shuffle=False, crop_padding=0,
                   randaugment="rand-m9-n2-p0")
    batch = next(iter(same.train_dataloader()))
    assert torch.equal(batch["teacher_inputs"]["pixel_values"], batch["inputs"]["pixel_values"])


def _clean_batch(dm, n=16):
    return torch.stack([dm.train_dataset[i][0] for i in range(n)]), dm.train_dataset.labels[:n]


def test_mixup_soft_labels(digits):
    torch.manual_seed(0)
    dm = make_dm(mixup_alpha=0.8, augment="none", shuffle=False, teacher_view="strong")
    batch = next(iter(dm.train_dataloader()))
    soft, hard = batch["soft_labels"], batch["labels"]
    assert soft.shape == (16, 10) and soft.dtype == torch.float32
    assert torch.allclose(soft.sum(-1), torch.ones(16))
    assert torch.equal(hard, soft.argmax(-1)) and hard.dtype == torch.long
    assert ((soft > 0).sum(-1) <= 2).all()
    x, labels = _clean_batch(dm)
    y = torch.tensor(labels)
    lam = soft[0, y[0]].item() if y[0] != y[-1] else None
    if lam is not None:  # sample 0 is mixed with sample B-1
        assert torch.allclose(batch["inputs"]["pixel_values"][0], lam * x[0] + (1 - lam) * x[-1], atol=1e-5)
    # the teacher sees the student's mixed images (DeiT rule)
    assert torch.equal(batch["teacher_inputs"]["pixel_values"], batch["inputs"]["pixel_values"])
    assert "soft_labels" not in next(iter(dm.val_dataloader()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cutmix_soft_labels_match_pasted_area(folder, seed):
    torch.manual_seed(seed)
    dm = ImageClassificationDataModule(root=str(folder), cutmix_alpha=1.0, augment="none",
                                       image_size=16, batch_size=15, shuffle=False)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    x, labels = _clean_batch(dm, 15)  # one colour per class: cat, dog, emu images, 5 each
    mixed, soft = batch["inputs"]["pixel_values"], batch["soft_labels"]
    assert ((mixed == x) | (mixed == x.flip(0))).all(1).all()  # each pixel from itself or its partner
    pasted = (mixed != x).any(1).float().mean((1, 2))  # fraction of the image from the partner
    assert labels[0] == 0 and labels[14] == 2  # sample 0 (cat) is paired with sample 14 (emu)
    assert soft[0, 2].item() == pytest.approx(pasted[0].item()) and soft[0, 0] == pytest.approx(1 - pasted[0])
    assert torch.allclose(soft.sum(-1), torch.ones(15)) and torch.equal(batch["labels"], soft.argmax(-1))


def test_strong_augmentation_changes_images_and_respects_hflip(digits):
    dm = make_dm(augment="strong", shuffle=False)
    batch = next(iter(dm.train_dataloader()))
    x, _ = _clean_batch(make_dm(augment="none", shuffle=False))
    assert not torch.allclose(batch["inputs"]["pixel_values"], x)
    names = [type(t).__name__ for t in dm.train_dataset.transform.transforms]
    assert "RandAugment" in names and "RandomHorizontalFlip" not in names
    flip = make_dm(augment="standard", hflip=True)
    assert "RandomHorizontalFlip" in [type(t).__name__ for t in flip.train_dataset.transform.transforms]


# --- ImageFolder ------------------------------------------------------------------------------


def test_imagefolder_classes_labels_and_resize(folder):
    dm = ImageClassificationDataModule(root=str(folder), image_size=8, augment="none",
                                       mean=(0, 0, 0), std=(1, 1, 1), batch_size=4, shuffle=False)
    dm.setup()
    assert dm.class_names == ["cat", "dog", "emu"] and dm.num_classes == 3
    assert counts(dm.val_dataset.labels)[:3] == [1, 1, 1]  # round(0.2 * 6), balanced
    assert counts(dm.train_dataset.labels)[:3] == [5, 5, 5]
    assert not set(dm.train_dataset.items) & set(dm.val_dataset.items)
    for batch in dm.train_dataloader():
        x, y = batch["inputs"]["pixel_values"], batch["labels"]
        assert x.shape[1:] == (3, 8, 8)
        for img, label in zip(x, y.tolist(), strict=True):
            colour = torch.tensor(COLOURS[dm.class_names[label]], dtype=torch.float32) / 255
            assert torch.allclose(img, colour[:, None, None].expand(3, 8, 8), atol=1e-6)


def test_imagefolder_with_val_folder(folder):
    for name, colour in COLOURS.items():
        if name != "dog":  # a val folder may lack a class
            write_png(folder / "val" / name / "a.png", colour)
            write_png(folder / "val" / name / "b.jpg", colour)
    dm = ImageClassificationDataModule(root=str(folder), batch_size=4, imbalance_factor=3)
    dm.setup()
    assert counts(dm.val_dataset.labels)[:3] == [2, 0, 2]
    assert dm.class_counts == [6, 3, 2]  # floor(6 * (1/3) ** (r / 2)): 6, 3.46, 2
    assert all(p.parent.parent.name == "val" for p in dm.val_dataset.items)


def test_dataloader_convention(folder):
    dm = ImageClassificationDataModule(root=str(folder), batch_size=4, num_workers=2, seed=7)
    dm.setup()
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, DistributedSampler)
    assert loader.sampler.seed == 7 and loader.sampler.shuffle and loader.sampler.num_replicas == 1
    assert loader.persistent_workers and loader.num_workers == 2
    val = ImageClassificationDataModule(root=str(folder), batch_size=4)
    val.setup()
    assert not val.val_dataloader().sampler.shuffle and not val.val_dataloader().persistent_workers


# --- errors -------------------------------------------------------------------------------------


def test_errors(tmp_path, folder, digits):
    with pytest.raises(MissingPathError, match="root"):
        ImageClassificationDataModule(root=str(tmp_path / "nope"))
    with pytest.raises(MissingPathError, match="train"):
        ImageClassificationDataModule(root=str(tmp_path / "train" / "cat"))
    with pytest.raises(ConfigError, match="root is required"):
        ImageClassificationDataModule()
    (folder / "train" / "fox").mkdir()
    with pytest.raises(ConfigError, match="fox.*holds no images"):
        ImageClassificationDataModule(root=str(folder))
    (tmp_path / "bare" / "train").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no class folders"):
        ImageClassificationDataModule(root=str(tmp_path / "bare"))
    with pytest.raises(ConfigError, match="imbalance_factor"):
        ImageClassificationDataModule(source="digits", imbalance_factor=0.5)
    with pytest.raises(ConfigError, match=r"unknown source 'cifar'.*imagefolder.*digits"):
        ImageClassificationDataModule(source="cifar")
    with pytest.raises(ConfigError, match="randaugment"):
        ImageClassificationDataModule(source="digits", augment="strong", randaugment="rand-q")
    with pytest.raises(ConfigError, match="std"):
        ImageClassificationDataModule(source="digits", std=(0.2, 0.0, 0.2))
    with pytest.raises(ConfigError, match="few_threshold"):
        ImageClassificationDataModule(source="digits", many_threshold=5, few_threshold=10)


def test_errors_in_val_folder(folder):
    write_png(folder / "val" / "yak" / "0.png", (1, 2, 3))
    with pytest.raises(ConfigError, match="yak"):
        ImageClassificationDataModule(root=str(folder))
    (folder / "val" / "yak" / "0.png").unlink()
    (folder / "val" / "yak").rmdir()
    (folder / "val" / "cat").mkdir()
    with pytest.raises(ConfigError, match="cat.*holds no images"):
        ImageClassificationDataModule(root=str(folder))


def test_real_digits_or_clear_error():
    if HAS_SKLEARN:
        dm = ImageClassificationDataModule(source="digits")
        assert dm.num_classes == 10
        assert sum(dm.class_counts) + len(dm._val[1]) == 1797
    else:
        with pytest.raises(ConfigError, match="scikit-learn"):
            ImageClassificationDataModule(source="digits")


def test_randaugment_posterize_to_zero_bits_does_not_crash(digits):
    """timm's top-magnitude PosterizeIncreasing keeps 0 bits, which current Pillow rejects."""
    dm = make_dm(augment="strong")
    randaugment = next(t for t in dm.train_dataset.transform.transforms if type(t).__name__ == "RandAugment")
    op = next(op for op in randaugment.ops if op.name == "PosterizeIncreasing")  # "inc1" set
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0
    assert op(Image.new("RGB", (8, 8), (200, 90, 40))).getextrema() == ((0, 0), (0, 0), (0, 0))
    plain = make_dm(augment="strong", randaugment="rand-m1-n4-mstd0.5")  # 'Posterize' at low levels
    for i in range(200):
        assert plain.train_dataset[i % len(plain.train_dataset)][0].shape == (3, 32, 32)


def test_set_mixing_switches_soft_labels_off_and_back(digits):
    dm = make_dm(mixup_alpha=0.8, augment="none")
    assert "soft_labels" in next(iter(dm.train_dataloader()))
    dm.set_mixing(False)
    batch = next(iter(dm.train_dataloader()))
    assert "soft_labels" not in batch and batch["labels"].dtype == torch.long
    dm.set_mixing(True)
    assert "soft_labels" in next(iter(dm.train_dataloader()))


def test_set_mixing_is_refused_when_workers_hold_the_collate(digits):
    dm = make_dm(mixup_alpha=0.8, augment="none", num_workers=1)
    dm.train_dataloader()
    with pytest.raises(ConfigError, match="num_workers: 0"):
        dm.set_mixing(False)


def test_affine_policy_moves_digits_without_inverting_them(digits):
    torch.manual_seed(0)
    dm = make_dm(augment="strong", strong_policy="affine", crop_padding=0, shuffle=False)
    clean = make_dm(augment="none", shuffle=False)
    strong = torch.stack([dm.train_dataset[i][0] for i in range(32)])
    plain = torch.stack([clean.train_dataset[i][0] for i in range(32)])
    assert not torch.allclose(strong, plain)  # geometry changed
    # no photometric op: the background (the most common value of each image) stays the clean one
    assert torch.allclose(strong.flatten(1).mode(1).values, plain.flatten(1).mode(1).values)


def test_random_erasing_touches_the_student_view_only(digits):
    torch.manual_seed(0)
    dm = make_dm(augment="none", random_erasing=1.0, shuffle=False)
    clean = make_dm(augment="none", shuffle=False)
    assert all(not torch.equal(dm.train_dataset[i][0], clean.train_dataset[i][0]) for i in range(8))
    assert all(torch.equal(dm.val_dataset[i][0], clean.val_dataset[i][0]) for i in range(8))
