"""Accuracy per class group (head / medium / tail) for each head of the student."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from lit_distill.errors import ConfigError


class ClassGroupAccuracy(L.Callback):
    """Logs ``val/acc_<head>_<group>`` for every head and class group, plus overall accuracy.

    Heads: ``cls`` (``student.logits``); with a DeiT distillation head also ``dist``
    (``student.features.dist_logits``) and ``avg`` (the mean of the two logits, DeiT's
    inference output). Groups come from the datamodule's ``class_groups`` (e.g.
    ``{"head": [...], "medium": [...], "tail": [...]}``); a group's accuracy is the mean
    of its classes' accuracies, so every class counts the same.

    Args:
        prefix: logged-name prefix.

    Attributes:
        per_class_accuracy: after each validation epoch, ``{head: FloatTensor[C]}`` on the CPU
            (NaN for classes without validation samples), e.g. for per-class plots.
    """

    def __init__(self, prefix: str = "val") -> None:
        self.prefix = prefix
        self._correct: dict[str, Tensor] = {}
        self._total: Tensor | None = None
        self.per_class_accuracy: dict[str, Tensor] = {}

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._correct, self._total = {}, None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        student = outputs["student"] if isinstance(outputs, dict) else None
        labels = batch.get("labels")
        if student is None or student.logits is None or labels is None or labels.dim() != 1:
            return
        heads = {"cls": student.logits}
        if "dist_logits" in student.features:
            heads["dist"] = student.features["dist_logits"]
            heads["avg"] = (student.logits + heads["dist"]) / 2
        classes = student.logits.shape[-1]
        total = torch.bincount(labels, minlength=classes)
        self._total = total if self._total is None else self._total + total
        for name, logits in heads.items():
            correct = (logits.argmax(-1) == labels).float()  # weights, not a boolean index: no host sync
            hits = torch.bincount(labels, weights=correct, minlength=classes)
            self._correct[name] = self._correct.get(name, 0) + hits

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._total is None or trainer.sanity_checking:
            return
        total = trainer.strategy.reduce(self._total.float(), reduce_op="sum")
        groups = getattr(trainer.datamodule, "class_groups", None) or {}
        for name, correct in self._correct.items():
            correct = trainer.strategy.reduce(correct.float(), reduce_op="sum")
            per_class = correct / total.clamp_min(1)
            self.per_class_accuracy[name] = torch.where(total > 0, per_class, torch.nan).cpu()
            pl_module.log(f"{self.prefix}/acc_{name}", correct.sum() / total.sum().clamp_min(1))
            for group, members in groups.items():
                if members:
                    if max(members) >= per_class.numel():
                        raise ConfigError(f"ClassGroupAccuracy: class_groups['{group}'] names class "
                                          f"{max(members)} but the model has {per_class.numel()} classes")
                    index = torch.tensor(list(members), device=per_class.device)
                    seen = index[total[index] > 0]  # classes without validation samples do not count
                    pl_module.log(f"{self.prefix}/acc_{name}_{group}", per_class[seen].mean())
