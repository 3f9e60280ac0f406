"""Image-classification data: an ImageFolder tree or scikit-learn's digits, optionally long-tailed.

Every train batch is a dict (``B`` = batch size, ``S`` = ``image_size``, ``C`` = number of
classes)::

    {
        "inputs": {"pixel_values": FloatTensor[B, 3, S, S]},          # normalised with mean/std
        "labels": LongTensor[B],                                      # class indices
        # only when teacher_view == "strong":
        "teacher_inputs": {"pixel_values": FloatTensor[B, 3, S, S]},  # the teacher's view
        # only when mixup_alpha > 0 or cutmix_alpha > 0:
        "soft_labels": FloatTensor[B, C],                             # mixed one-hot targets, rows sum to 1
    }

Validation/test/predict batches hold ``inputs`` and ``labels`` only: no mixing and no separate
teacher view (both models see the same clean images).

Pipeline of one training image: decode (RGB) and resize to ``S x S`` (bilinear) → augmentation
(``augment``) → ``ToTensor`` (values in [0, 1]) → ``Normalize(mean, std)``. The teacher view
(``teacher_view="strong"``) is a second, independent augmentation of the same decoded image:
random crop (+ flip if ``hflip``) + the strong policy (RandAugment, or a small affine warp for
digits: ``strong_policy``), whatever ``augment`` is; it is the out-of-distribution teacher view
of DeiT-LT. Random erasing (``random_erasing``) applies to the student's view only.

Mixing (mixup / cutmix) is applied to the whole batch in the collate function, after
normalisation: the batch is paired with its reverse (sample ``i`` with sample ``B-1-i``), mixed
with ``lam ~ Beta(alpha, alpha)`` (for cutmix, ``lam`` is the kept area after clipping the box),
and ``soft_labels = lam * onehot(y) + (1 - lam) * onehot(y[::-1])``. ``labels`` then hold
``soft_labels.argmax(-1)`` (the dominant class; the first one on a tie), so hard-label losses
keep working. With mixing on, ``teacher_inputs`` (if asked for) are the student's *mixed* images
themselves, the DeiT rule: the teacher sees the student's mixed batch.

Long-tailed training data (``imbalance_factor``): with ``n_max`` = the number of training images
of the smallest class, class at rank ``r`` (0 = head) keeps
``n_r = max(1, floor(n_max * (1 / imbalance_factor) ** (r / (C - 1))))`` images (floor, as in the
LDAM-DRW / DeiT-LT CIFAR-LT code), chosen at random with ``split_seed``. The ranks follow the class
index, or a ``split_seed`` permutation of the classes when ``shuffle_class_order``. Validation is
never subsampled.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from datamodules.checks import check_loader_arguments
from datamodules.long_tail import GROUPS, balanced_split, class_groups, long_tail_counts  # noqa: F401
from datamodules.records import epoch_loader
from lit_distill.errors import ConfigError, MissingPathError
from lit_distill.models.vision_base import IMAGENET_MEAN, IMAGENET_STD

SOURCES = ("imagefolder", "digits")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_RA_SECTION = re.compile(r"t\w+|(m|n|p|mstd|mmax|inc)\d[\d.]*")  # the sections timm reads
ImageItem = Path | Image.Image  # a file decoded on access, or an image already in memory


def _load_digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's digits: images ``[1797, 8, 8]`` float in [0, 16] and labels ``[1797]``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ConfigError("source 'digits' needs scikit-learn, which is not installed "
                          "(pip install scikit-learn), or use source 'imagefolder'") from err
    digits = load_digits()
    return torch.as_tensor(digits.images, dtype=torch.float32), torch.as_tensor(digits.target).long()


def digits_images(images: Tensor, size: int) -> list[Image.Image]:
    """8x8 grey digits (values 0..16) → RGB ``size x size`` PIL images (bilinear upsampling)."""
    x = F.interpolate(images[:, None] / 16.0, size=(size, size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)[:, 0].numpy()
    return [Image.fromarray(a, mode="L").convert("RGB") for a in x]


def _posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize op, keeping 0 bits as a black image.

    timm's ``Posterize``/``PosterizeIncreasing`` levels reach 0 bits (low resp. top magnitudes,
    e.g. ``m9-mstd0.5`` draws); Pillow < 11 then returned a black image, newer Pillow raises.
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _scan_split(split_dir: Path, classes: list[str] | None, field: str) -> tuple[list[str], list[Path], list[int]]:
    """Class names, image files and labels of ``split_dir/<class>/*``; ``classes`` fixes the mapping."""
    dirs = sorted(d for d in split_dir.iterdir() if d.is_dir())
    if not dirs:
        raise ConfigError(f"{field}: no class folders in {str(split_dir)!r}; expected {split_dir}/<class>/*.png")
    names = [d.name for d in dirs]
    if classes is None:
        classes = names
    elif unknown := sorted(set(names) - set(classes)):
        raise ConfigError(f"{field}: class folders {unknown} of {str(split_dir)!r} are not training classes "
                          f"(training classes: {classes})")
    files: list[Path] = []
    labels: list[int] = []
    for d in dirs:
        found = sorted(f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        if not found:
            raise ConfigError(f"{field}: class folder {str(d)!r} holds no images "
                              f"({'/'.join(IMAGE_EXTENSIONS)})")
        files += found
        labels += [classes.index(d.name)] * len(found)
    return classes, files, labels


class ImageDataset(Dataset):
    """Images with labels; an item is ``(view, teacher_view | None, label)``.

    Args:
        items: image files or in-memory images.
        labels: class index of each item.
        image_size: side every image is resized to (bilinear) before ``transform``.
        transform: PIL image → normalised tensor.
        teacher_transform: PIL image → the teacher's view, or None for no separate view.
    """

    def __init__(self, items: Sequence[ImageItem], labels: Sequence[int], image_size: int,
                 transform: Callable, teacher_transform: Callable | None = None):
        self.items, self.labels = list(items), list(labels)
        self.image_size, self.transform, self.teacher_transform = image_size, transform, teacher_transform

    def __len__(self) -> int:
        return len(self.items)

    def image(self, i: int) -> Image.Image:
        """The ``i``-th image, RGB, ``image_size`` square."""
        item = self.items[i]
        if isinstance(item, Path):
            with Image.open(item) as f:
                item = f.convert("RGB")
        size = (self.image_size, self.image_size)
        return item if item.size == size else item.resize(size, Image.BILINEAR)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor | None, int]:
        img = self.image(i)
        teacher = self.teacher_transform(img) if self.teacher_transform is not None else None
        return self.transform(img), teacher, self.labels[i]


class ImageCollator:
    """Stack samples into the batch contract of this module; mix the batch if asked.

    Args:
        num_classes: width of ``soft_labels``.
        mixup_alpha: Beta parameter of mixup; 0 = off.
        cutmix_alpha: Beta parameter of cutmix; 0 = off.
        switch_prob: with both on, the probability that a batch uses cutmix instead of mixup.
        teacher_sees_mix: with mixing on, add ``teacher_inputs`` holding the mixed images.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
                 switch_prob: float = 0.5, teacher_sees_mix: bool = False):
        self.num_classes, self.teacher_sees_mix = num_classes, teacher_sees_mix
        self.mixup_alpha, self.cutmix_alpha, self.switch_prob = mixup_alpha, cutmix_alpha, switch_prob

    @property
    def mixing(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def mix(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Mix ``x`` with its reverse; return the mixed images and the soft labels ``[B, C]``."""
        use_cutmix = self.cutmix_alpha > 0 and (
            self.mixup_alpha <= 0 or torch.rand(()).item() < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        partner = x.flip(0)
        if use_cutmix:
            h, w = x.shape[-2:]
            cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
            cy, cx = torch.randint(h, ()).item(), torch.randint(w, ()).item()
            y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
            x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
            x = x.clone()
            x[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
        else:
            x = lam * x + (1 - lam) * partner
        onehot = F.one_hot(labels, self.num_classes).float()
        return x, lam * onehot + (1 - lam) * onehot.flip(0)

    def __call__(self, samples: list[tuple[Tensor, Tensor | None, int]]) -> dict[str, Any]:
        x = torch.stack([s[0] for s in samples])
        labels = torch.tensor([s[2] for s in samples], dtype=torch.long)
        batch: dict[str, Any] = {"inputs": {"pixel_values": x}, "labels": labels}
        if self.mixing:
            x, soft = self.mix(x, labels)
            batch["inputs"]["pixel_values"] = x
            batch["soft_labels"], batch["labels"] = soft, soft.argmax(-1)
            if self.teacher_sees_mix:
                batch["teacher_inputs"] = {"pixel_values": x}  # the teacher sees the mixed batch
        elif samples[0][1] is not None:
            batch["teacher_inputs"] = {"pixel_values": torch.stack([s[1] for s in samples])}
        return batch


class ImageClassificationDataModule(LightningDataModule):
    """Image classification from an ImageFolder tree or scikit-learn's digits, optionally long-tailed.

    Batches follow the contract in the :mod:`datamodules.vision` module docstring. The classes,
    the train/val split and the long-tailed subsampling are fixed at construction, so
    ``num_classes``, ``class_counts`` and ``class_groups`` are available before ``setup``.

    Args:
        source: ``imagefolder`` (``root/train/<class>/*.png`` and optionally
            ``root/val/<class>/*.png``; any of .png/.jpg/.jpeg/.bmp/.gif/.webp/.tif/.tiff) or
            ``digits`` (scikit-learn's 1,797 8x8 grey digits, 10 classes, upsampled with bilinear
            interpolation and repeated to 3 channels; needs scikit-learn).
        root: Dataset directory for ``imagefolder`` (unused for ``digits``). Class names are the
            folder names under ``root/train``, in sorted order (= class indices).
        image_size: Side in pixels that every image is resized to (bilinear) before augmentation.
        val_fraction: Without a ``root/val`` folder (and always for ``digits``): the validation
            images per class are ``round(val_fraction * m)``, the same for every class, where
            ``m`` is the size of the smallest class, so validation is balanced.
        imbalance_factor: Long-tailed subsampling of the training split: the head class keeps
            ``imbalance_factor`` times as many images as the tail class, with the exponential
            profile of the module docstring (1 = balanced: every class cut to the smallest one;
            e.g. 10 or 100). None keeps the training split as it is (e.g. already long-tailed).
        shuffle_class_order: Assign head-to-tail ranks by a ``split_seed`` permutation of the
            classes instead of by class index.
        many_threshold: Classes with more than this many training images (after subsampling)
            form the ``head`` group of ``class_groups``. The CIFAR-LT convention is 100; the
            default 30 suits small data such as digits (~140 images per class).
        few_threshold: Classes with fewer than this many training images form the ``tail``
            group (CIFAR-LT: 20); the others are ``medium``.
        augment: Training augmentation of the student view: ``none``; ``standard`` = random
            crop with ``crop_padding`` zero padding (+ horizontal flip if ``hflip``);
            ``strong`` = ``standard`` followed by RandAugment (``randaugment``).
        hflip: Random horizontal flips in ``standard``/``strong`` and in the teacher view. Off by
            default (wrong for digits and text-like images); turn on for natural images.
        crop_padding: Zero padding in pixels of the random crop (0 = no crop).
        randaugment: timm RandAugment config string, e.g. ``rand-m9-mstd0.5-inc1`` (magnitude 9,
            magnitude noise 0.5, increasing-severity ops).
        strong_policy: what ``strong`` (and the teacher view) adds after the crop: ``randaugment``
            (ImageNet's, DeiT-LT's default) or ``affine``: a random rotation (±15°), shift (±10 %),
            scale (0.9-1.1) and shear (±10°), geometry only. ``affine`` is for digits and other
            line drawings: RandAugment's invert, solarize, posterize and colour ops turn an
            upsampled 8 × 8 digit into another picture (a plain ViT trained with them falls from ~67 %
            to ~19 % on long-tailed digits, issue 14), while a digit stays itself under small
            rotations, shifts and shears.
        random_erasing: Probability of erasing a random rectangle of each training image (the
            student's view) with noise after normalisation (DeiT / DeiT-LT: 0.25); 0 = off.
        teacher_view: ``strong`` adds ``teacher_inputs`` to training batches: an independent
            strongly augmented view (crop/flip + RandAugment) of the same images, DeiT-LT's
            out-of-distribution teacher view; with mixing on it is the student's mixed images.
            ``none`` = the teacher sees the student's inputs.
        mixup_alpha: Mixup Beta parameter; 0 = off. Adds ``soft_labels`` to training batches.
        cutmix_alpha: CutMix Beta parameter; 0 = off. Adds ``soft_labels`` to training batches.
        mix_switch_prob: With both mixup and cutmix on, the probability that a batch uses cutmix.
        mean: Per-channel (RGB) mean of the normalisation applied after augmentation
            (default ImageNet's; match the student's pretrained statistics).
        std: Per-channel (RGB) standard deviation of the normalisation.
        batch_size: Images per batch (per process).
        num_workers: DataLoader worker processes.
        split_seed: Seed of the train/val split, of the long-tailed selection and of the class
            order, kept apart from ``seed`` so that runs with different seeds see the same data.
        seed: Seed of the training shuffle order (reshuffled each epoch from ``seed + epoch``).
        shuffle: Shuffle the training images. False keeps the dataset order.

    Attributes:
        class_names: Class names in class-index order (folder names, or ``"0"``..``"9"``).
        class_counts: Training images per class after subsampling, indexed by class (e.g. for
            DeiT-LT's deferred re-weighting).
        class_groups: ``{"head": [...], "medium": [...], "tail": [...]}`` class indices, from
            ``class_counts`` and the thresholds, for per-group accuracy.
    """

    def __init__(
        self,
        source: str = "imagefolder",
        root: str | None = None,
        image_size: int = 32,
        val_fraction: float = 0.2,
        imbalance_factor: float | None = None,
        shuffle_class_order: bool = False,
        many_threshold: int = 30,
        few_threshold: int = 10,
        augment: Literal["none", "standard", "strong"] = "standard",
        hflip: bool = False,
        crop_padding: int = 4,
        randaugment: str = "rand-m9-mstd0.5-inc1",
        strong_policy: Literal["randaugment", "affine"] = "randaugment",
        random_erasing: float = 0.0,
        teacher_view: Literal["none", "strong"] = "none",
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_switch_prob: float = 0.5,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        batch_size: int = 64,
        num_workers: int = 0,
        split_seed: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        self._check_args()
        self.train_dataset: ImageDataset | None = None
        self.val_dataset: ImageDataset | None = None
        self._mixing, self._train_collate = True, None
        items, labels, val_items, val_labels = self._read_source()
        where = "digits" if source == "digits" else f"root {str(Path(root) / 'train')!r}"
        if val_items is None:
            train_idx, val_idx = balanced_split(labels, self.num_classes, val_fraction, split_seed,
                                                self.class_names, where)
            val_items, val_labels = [items[i] for i in val_idx], [labels[i] for i in val_idx]
            items, labels = [items[i] for i in train_idx], [labels[i] for i in train_idx]
        if imbalance_factor is not None:
            keep = self._long_tail_indices(labels)
            items, labels = [items[i] for i in keep], [labels[i] for i in keep]
        self._train = (items, labels)
        self._val = (val_items, val_labels)
        # training images per class after subsampling, and head/medium/tail class indices
        self.class_counts: list[int] = [labels.count(c) for c in range(self.num_classes)]
        self.class_groups: dict[str, list[int]] = class_groups(self.class_counts, many_threshold,
                                                               few_threshold)

    def _check_args(self) -> None:
        hp = self.hparams
        if hp.source not in SOURCES:
            raise ConfigError(f"source: unknown source {hp.source!r}; valid: {list(SOURCES)}")
        if hp.image_size < 1:
            raise ConfigError(f"image_size must be a positive number of pixels, got {hp.image_size}")
        if not 0.0 < hp.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {hp.val_fraction}")
        if hp.imbalance_factor is not None and not hp.imbalance_factor >= 1:
            raise ConfigError(f"imbalance_factor must be >= 1 (1 = balanced, e.g. 10 or 100) or null "
                              f"to keep the data as it is, got {hp.imbalance_factor}")
        if hp.few_threshold > hp.many_threshold:
            raise ConfigError(f"few_threshold ({hp.few_threshold}) must not exceed many_threshold "
                              f"({hp.many_threshold})")
        if hp.augment not in ("none", "standard", "strong"):
            raise ConfigError(f"augment: {hp.augment!r} is not one of ['none', 'standard', 'strong']")
        if hp.teacher_view not in ("none", "strong"):
            raise ConfigError(f"teacher_view: {hp.teacher_view!r} is not one of ['none', 'strong']")
        if hp.strong_policy not in ("randaugment", "affine"):
            raise ConfigError(f"strong_policy: {hp.strong_policy!r} is not one of ['randaugment', 'affine']")
        if not 0.0 <= hp.random_erasing <= 1.0:
            raise ConfigError(f"random_erasing must be a probability in [0, 1], got {hp.random_erasing}")
        if hp.crop_padding < 0:
            raise ConfigError(f"crop_padding must be >= 0, got {hp.crop_padding}")
        for name in ("mixup_alpha", "cutmix_alpha"):
            if hp[name] < 0:
                raise ConfigError(f"{name} must be >= 0 (0 = off), got {hp[name]}")
        if not 0.0 <= hp.mix_switch_prob <= 1.0:
            raise ConfigError(f"mix_switch_prob must be in [0, 1], got {hp.mix_switch_prob}")
        for name, positive in (("mean", False), ("std", True)):
            stats = [float(v) for v in hp[name]]
            if len(stats) != 3 or (positive and min(stats) <= 0):
                raise ConfigError(f"{name}: {list(hp[name])} is not three per-channel (RGB) "
                                  f"{'positive ' if positive else ''}values")
        check_loader_arguments(hp.batch_size, hp.num_workers)
        if (hp.augment == "strong" or hp.teacher_view == "strong") and hp.strong_policy == "randaugment":
            self._randaugment()  # fail early on a bad config string

    def _read_source(self) -> tuple[list, list[int], list | None, list[int] | None]:
        """Train items/labels and, when the source has its own, val items/labels; sets class names."""
        hp = self.hparams
        if hp.source == "digits":
            images, targets = _load_digits()
            self.class_names = [str(c) for c in range(int(targets.max()) + 1)]
            return digits_images(images, hp.image_size), targets.tolist(), None, None
        if hp.root is None:
            raise ConfigError("root is required when source is 'imagefolder' "
                              "(a directory with train/<class>/*.png)")
        root = Path(hp.root)
        if not root.is_dir():
            raise MissingPathError(f"root {hp.root!r} does not exist or is not a directory; "
                                   "expected root/train/<class>/*.png")
        if not (root / "train").is_dir():
            raise MissingPathError(f"root: {str(root / 'train')!r} does not exist; "
                                   "expected root/train/<class>/*.png")
        self.class_names, items, labels = _scan_split(root / "train", None, "root")
        if not (root / "val").is_dir():
            return items, labels, None, None
        _, val_items, val_labels = _scan_split(root / "val", self.class_names, "root")
        return items, labels, val_items, val_labels

    def _long_tail_indices(self, labels: list[int]) -> list[int]:
        """Indices of the training images kept by the long-tailed profile (seeded)."""
        hp = self.hparams
        g = torch.Generator().manual_seed(hp.split_seed)
        order = (torch.randperm(self.num_classes, generator=g).tolist() if hp.shuffle_class_order
                 else list(range(self.num_classes)))
        per_class = [[i for i, y in enumerate(labels) if y == c] for c in range(self.num_classes)]
        n_max = min(len(idx) for idx in per_class)
        targets = long_tail_counts(n_max, self.num_classes, hp.imbalance_factor)
        keep: list[int] = []
        for rank, c in enumerate(order):
            perm = torch.randperm(len(per_class[c]), generator=g)[: targets[rank]].tolist()
            keep += [per_class[c][j] for j in perm]
        return sorted(keep)

    @property
    def num_classes(self) -> int:
        """Number of classes (the width of the student's classifier)."""
        return len(self.class_names)

    def _randaugment(self) -> Callable:
        from timm.data.auto_augment import rand_augment_transform

        hp = self.hparams
        params = {"translate_const": int(hp.image_size * 0.45),
                  "img_mean": tuple(min(255, round(255 * m)) for m in hp.mean)}
        sections = hp.randaugment.split("-")
        if sections[0] != "rand" or not all(_RA_SECTION.fullmatch(x) for x in sections[1:]):
            raise ConfigError(f"randaugment: {hp.randaugment!r} must be 'rand' followed by "
                              "-m<int>, -n<int>, -p<float>, -mstd<float>, -mmax<int>, -inc<0|1> or "
                              "-t<set> sections, e.g. 'rand-m9-mstd0.5-inc1'")
        try:
            randaugment = rand_augment_transform(hp.randaugment, params)
        except Exception as err:  # timm raises AssertionError/ValueError/KeyError on bad strings
            raise ConfigError(f"randaugment: {hp.randaugment!r} is not a valid timm RandAugment "
                              f"string, e.g. 'rand-m9-mstd0.5-inc1' ({type(err).__name__}: {err})") from err
        for op in randaugment.ops:
            if op.name.startswith("Posterize"):
                op.aug_fn = _posterize
        return randaugment

    def _transform(self, augment: str, erase: bool = False) -> Callable:
        """PIL image → augmented (``augment``: none/standard/strong), normalised tensor (then erased if ``erase``)."""
        hp = self.hparams
        ops: list[Callable] = []
        if augment != "none":
            if hp.crop_padding > 0:
                ops.append(T.RandomCrop(hp.image_size, padding=hp.crop_padding))
            if hp.hflip:
                ops.append(T.RandomHorizontalFlip())
        if augment == "strong":
            ops.append(self._randaugment() if hp.strong_policy == "randaugment" else
                       T.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=10))
        ops += [T.ToTensor(), T.Normalize(hp.mean, hp.std)]
        if erase and hp.random_erasing > 0:
            ops.append(T.RandomErasing(p=hp.random_erasing, value="random"))
        return T.Compose(ops)

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets (images are decoded lazily, per item)."""
        if self.train_dataset is not None:
            return
        hp = self.hparams
        # with mixing on, the teacher view is the mixed batch (made in the collate), not a per-image view
        separate = hp.teacher_view == "strong" and not (hp.mixup_alpha > 0 or hp.cutmix_alpha > 0)
        teacher = self._transform("strong") if separate else None
        self.train_dataset = ImageDataset(*self._train, hp.image_size, self._transform(hp.augment, erase=True), teacher)
        self.val_dataset = ImageDataset(*self._val, hp.image_size, self._transform("none"))

    def _loader(self, dataset: ImageDataset | None, shuffle: bool, train: bool) -> DataLoader:
        hp = self.hparams
        collate = ImageCollator(self.num_classes)
        if train:
            collate = self._train_collate = ImageCollator(
                self.num_classes, hp.mixup_alpha if self._mixing else 0.0, hp.cutmix_alpha if self._mixing else 0.0,
                hp.mix_switch_prob, teacher_sees_mix=hp.teacher_view == "strong")
        return epoch_loader(self, dataset, shuffle, collate)

    def set_mixing(self, enabled: bool) -> None:
        """Switch mixup/cutmix on (as configured) or off for the training batches from now on.

        DeiT-LT turns mixing off for its re-weighting phase (``--no-mixup-drw``);
        :class:`~lit_distill.callbacks.DeferredReweighting` calls this at every epoch start. The
        loader's collate function is changed in place, so it applies from the next batch made in this
        process: with ``num_workers > 0`` the (persistent) workers keep the collate function they
        started with, so a change is refused there.

        Raises:
            ConfigError: when the change cannot reach the workers (``num_workers > 0``).
        """
        hp = self.hparams
        if enabled != self._mixing and hp.num_workers > 0 and self._train_collate is not None:
            raise ConfigError("set_mixing: data-loader workers keep the collate function they started with; "
                              "switching mixup/cutmix during training needs data.init_args.num_workers: 0")
        self._mixing = enabled
        if self._train_collate is not None:
            self._train_collate.mixup_alpha = hp.mixup_alpha if enabled else 0.0
            self._train_collate.cutmix_alpha = hp.cutmix_alpha if enabled else 0.0

    def train_dataloader(self) -> DataLoader:
        """Training batches (augmented, optionally mixed, with the teacher view if asked)."""
        return self._loader(self.train_dataset, shuffle=self.hparams.shuffle, train=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in dataset order, without augmentation."""
        return self._loader(self.val_dataset, shuffle=False, train=False)

    def test_dataloader(self) -> DataLoader:
        """Same as :meth:`val_dataloader`."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """Same as :meth:`val_dataloader`."""
        return self.val_dataloader()
