"""Segmentation metrics (mIoU, per-class IoU) and a figure of predictions per validation epoch."""

from __future__ import annotations

import os
from collections.abc import Sequence

import lightning as L
import torch
from torch import Tensor
from torchmetrics.classification import MulticlassJaccardIndex

from lit_distill.errors import ConfigError

IGNORE_COLOR = (224, 224, 192)  # VOC's colour of the ignore label


def segmentation_palette(num_classes: int) -> Tensor:
    """Pascal VOC's colour map for ``num_classes`` classes: ``[C, 3]`` uint8 (class 0 is black).

    Colours come from the bits of the class index (VOC's scheme), so any count is distinct.
    """
    colors = torch.zeros(num_classes, 3, dtype=torch.uint8)
    for c in range(num_classes):
        r = g = b = 0
        index = c
        for shift in range(7, -1, -1):
            r |= ((index >> 0) & 1) << shift
            g |= ((index >> 1) & 1) << shift
            b |= ((index >> 2) & 1) << shift
            index >>= 3
        colors[c] = torch.tensor([r, g, b], dtype=torch.uint8)
    return colors


def colorize(labels: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """Class map ``[H, W]`` → RGB image ``[3, H, W]`` float in [0, 1] (ignored pixels in VOC beige)."""
    palette = torch.cat([segmentation_palette(num_classes), torch.tensor([IGNORE_COLOR], dtype=torch.uint8)])
    index = torch.where((labels < 0) | (labels >= num_classes) | (labels == ignore_index),
                        torch.full_like(labels, num_classes), labels)
    return palette[index.cpu()].permute(2, 0, 1).float() / 255.0


class SegmentationMetrics(L.Callback):
    """Logs mIoU and per-class IoU of the student (and teacher) and writes a PNG per validation epoch.

    Reads the ``{"student", "teacher"}`` outputs that ``DistillationModule.validation_step``
    returns: ``logits`` ``[B, C, H, W]`` against ``batch["labels"]`` ``[B, H, W]``. Logged:
    ``<prefix>/miou`` and ``<prefix>/iou_<class>`` (student), ``<prefix>/teacher_miou`` and
    ``<prefix>/teacher_iou_<class>`` (when a teacher runs). IoU comes from torchmetrics'
    ``MulticlassJaccardIndex`` accumulated over the whole validation set (pixels labelled
    ``ignore_index`` do not count); mIoU is the mean over the classes that occur in the
    ground truth or the predictions (a class absent from both is not averaged in).

    The figure ``<log_dir>/segmentation/epoch_<E>.png`` shows, for the first ``max_images``
    validation images, one row each: image, ground truth, teacher prediction (if any),
    student prediction (VOC colour map; ignored pixels beige). Images are un-normalised
    with the datamodule's ``mean``/``std`` when it has them.

    Args:
        ignore_index: label of pixels that do not count.
        class_names: names used in the per-class keys; default the datamodule's
            ``class_names``, else the class indices.
        max_images: images in the figure (0: no figure).
        prefix: logged-name prefix.
    """

    def __init__(self, ignore_index: int = 255, class_names: Sequence[str] | None = None,
                 max_images: int = 4, prefix: str = "val") -> None:
        if max_images < 0:
            raise ConfigError(f"SegmentationMetrics.max_images: must be >= 0, got {max_images}")
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names is not None else None
        self.max_images = max_images
        self.prefix = prefix
        self._metrics: dict[str, MulticlassJaccardIndex] = {}
        self._figure: dict[str, Tensor] = {}
        self.last_figure: str | None = None

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for metric in self._metrics.values():
            metric.reset()
        self._figure = {}

    def _metric(self, side: str, num_classes: int, device: torch.device) -> MulticlassJaccardIndex:
        metric = self._metrics.get(side)
        if metric is None or metric.num_classes != num_classes:
            metric = MulticlassJaccardIndex(num_classes, average="none", ignore_index=self.ignore_index,
                                            zero_division=float("nan"))
            self._metrics[side] = metric
        return metric.to(device)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        labels = batch.get("labels")
        if not isinstance(outputs, dict) or labels is None or labels.ndim != 3:
            return
        predictions = {}
        for side in ("student", "teacher"):
            out = outputs.get(side)
            if out is None or out.logits is None or out.logits.ndim != 4:
                continue
            if out.logits.shape[-2:] != labels.shape[-2:]:
                raise ConfigError(f"SegmentationMetrics: {side} logits {tuple(out.logits.shape)} do not match "
                                  f"labels {tuple(labels.shape)}; segmentation adapters return [B, C, H, W] "
                                  "at the input resolution")
            pred = out.logits.argmax(1)
            self._metric(side, out.logits.shape[1], pred.device).update(pred, labels)
            predictions[side] = pred
        if batch_idx == 0 and self.max_images and "student" in predictions:
            inputs = batch.get("student_inputs") or batch.get("inputs") or {}
            images = inputs.get("pixel_values")
            if images is not None:
                n = self.max_images
                self._figure = {"image": images[:n, :3].detach().float().cpu(), "labels": labels[:n].cpu(),
                                **{side: pred[:n].cpu() for side, pred in predictions.items()}}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._metrics:
            return
        names = self.class_names or list(getattr(trainer.datamodule, "class_names", None) or [])
        for side, metric in self._metrics.items():
            if not metric.update_called:
                continue
            per_class = metric.compute()
            key = "" if side == "student" else "teacher_"
            pl_module.log(f"{self.prefix}/{key}miou", per_class.nanmean())
            for c, iou in enumerate(per_class):
                name = names[c] if c < len(names) else str(c)
                if not torch.isnan(iou):
                    pl_module.log(f"{self.prefix}/{key}iou_{name}", iou)
        if self._figure and trainer.is_global_zero:
            self.last_figure = self._write_figure(trainer)

    def _write_figure(self, trainer: L.Trainer) -> str:
        from torchvision.utils import make_grid, save_image

        fig = self._figure
        num_classes = next(m.num_classes for m in self._metrics.values())
        images = fig["image"]
        mean = getattr(trainer.datamodule, "mean", None)
        std = getattr(trainer.datamodule, "std", None)
        if mean is not None and std is not None:
            images = images * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
        else:  # unknown normalisation: stretch each image to [0, 1]
            low = images.amin(dim=(1, 2, 3), keepdim=True)
            images = (images - low) / (images.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(1e-6)
        columns = ["labels", *(side for side in ("teacher", "student") if side in fig)]
        tiles = []
        for i in range(images.shape[0]):
            tiles.append(images[i].clamp(0, 1))
            tiles += [colorize(fig[col][i], num_classes, self.ignore_index) for col in columns]
        grid = make_grid(torch.stack(tiles), nrow=1 + len(columns), padding=2, pad_value=1.0)
        log_dir = trainer.log_dir or trainer.default_root_dir
        path = os.path.join(log_dir, "segmentation", f"epoch_{trainer.current_epoch:03d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_image(grid, path)
        return path
