"""Does a label-assisted model use its label channel? Validation mIoU with the channel fed vs zeroed."""

from __future__ import annotations

import lightning as L
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from lit_distill.contracts import side_inputs
from lit_distill.errors import ConfigError


class LabelChannelCheck(L.Callback):
    """Logs a label-assisted model's validation mIoU with its extra input channels fed and zeroed.

    LAD's teacher reads ``pixel_values`` ``[B, 3 + E, H, W]``: RGB and ``E`` label channels. A
    teacher worth distilling from must use them: its mIoU should drop when they are zeroed. For
    each validation batch this callback takes the model's own output (channels fed) from
    ``DistillationModule.validation_step`` and runs the model once more on the same inputs with
    channels ``rgb_channels:`` set to zero (``pixel_values_2`` dropped: a dual-path model then
    runs its first path only). Logged at the end of validation, IoU accumulated over the whole
    set as :class:`~lit_distill.callbacks.SegmentationMetrics` does (classes absent from both
    ground truth and predictions are not averaged in)::

        <prefix>/<key>miou_label_fed, <prefix>/<key>miou_label_zeroed, <prefix>/<key>miou_label_drop

    with ``<key>`` empty for the student and ``teacher_`` for the teacher; drop = fed − zeroed.

    Args:
        side: the model checked: ``student`` (training the LAD teacher itself) or ``teacher``
            (a frozen LAD teacher while distilling).
        rgb_channels: input channels that are not label channels (kept).
        ignore_index: label of pixels that do not count.
        prefix: logged-name prefix.
    """

    def __init__(self, side: str = "student", rgb_channels: int = 3, ignore_index: int = 255,
                 prefix: str = "val") -> None:
        if side not in ("student", "teacher"):
            raise ConfigError(f"LabelChannelCheck.side: {side!r} is not valid (valid: student, teacher)")
        if rgb_channels < 1:
            raise ConfigError(f"LabelChannelCheck.rgb_channels: must be >= 1, got {rgb_channels}")
        self.side, self.rgb_channels, self.ignore_index, self.prefix = side, rgb_channels, ignore_index, prefix
        self._metrics: dict[str, MulticlassJaccardIndex] = {}

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._metrics = {}

    def _update(self, name: str, logits: torch.Tensor, labels: torch.Tensor) -> None:
        metric = self._metrics.get(name)
        if metric is None:
            metric = MulticlassJaccardIndex(logits.shape[1], average="none", ignore_index=self.ignore_index,
                                            zero_division=float("nan")).to(logits.device)
            self._metrics[name] = metric
        metric.update(logits.argmax(1), labels)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        labels = batch.get("labels")
        out = outputs.get(self.side) if isinstance(outputs, dict) else None
        if labels is None or out is None or out.logits is None:
            return
        pixels = side_inputs(batch, self.side)["pixel_values"]  # [B, 3 + E, H, W]
        if pixels.shape[1] <= self.rgb_channels:
            raise ConfigError(f"LabelChannelCheck: the {self.side}'s pixel_values have {pixels.shape[1]} channels, "
                              f"none beyond the first {self.rgb_channels}; is the label channel on the "
                              f"{self.side}'s side (data label_input)?")
        zeroed = pixels.clone()
        zeroed[:, self.rgb_channels:] = 0
        model = pl_module.student if self.side == "student" else pl_module.teacher
        with torch.no_grad():
            without = model(pixel_values=zeroed).logits
        self._update("fed", out.logits, labels)
        self._update("zeroed", without, labels)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or len(self._metrics) < 2:
            return
        key = "" if self.side == "student" else "teacher_"
        fed, zeroed = (self._metrics[name].compute().nanmean() for name in ("fed", "zeroed"))
        pl_module.log(f"{self.prefix}/{key}miou_label_fed", fed)
        pl_module.log(f"{self.prefix}/{key}miou_label_zeroed", zeroed)
        pl_module.log(f"{self.prefix}/{key}miou_label_drop", fed - zeroed)
