"""DeferredReweighting switches DeiT-LT's class weights on at its start epoch."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lit_distill import ConfigError, DistillationModule
from lit_distill.callbacks import DeferredReweighting
from lit_distill.losses import CrossEntropy, DeiTHardDistillation, effective_number_weights


class TwoHeads(nn.Module):
    """A tiny classifier with a CLS and a DIST head, like a distilled ViT."""

    def __init__(self):
        super().__init__()
        self.body, self.cls, self.dist = nn.Linear(4, 8), nn.Linear(8, 3), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return {"logits": self.cls(h), "dist_logits": self.dist(h)}


class Data(L.LightningDataModule):
    class_counts = [40, 8, 2]

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        batches = [{"inputs": {"x": torch.randn(4, 4, generator=g)}, "labels": torch.randint(0, 3, (4,), generator=g)}
                   for _ in range(2)]
        return DataLoader(batches, batch_size=None)


class Record(L.Callback):
    def __init__(self):
        self.weights = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            w = pl_module.losses["dist"].class_weight
            self.weights.append(None if w is None else w.clone())


def fit(callback):
    torch.manual_seed(0)
    module = DistillationModule(student=TwoHeads(), teacher=nn.Linear(4, 3),
                                losses={"ce": CrossEntropy(weight=0.5), "dist": DeiTHardDistillation()})
    record = Record()
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, callbacks=[callback, record])
    trainer.fit(module, datamodule=Data())
    return record.weights


def test_weights_switch_on_at_the_start_epoch():
    weights = fit(DeferredReweighting(term="dist", start_epoch=2, beta=0.99))
    assert weights[0] is None and weights[1] is None
    torch.testing.assert_close(weights[2], effective_number_weights([40, 8, 2], 0.99))


def test_a_missing_term_is_named():
    with pytest.raises(ConfigError, match="no DeiTHardDistillation term named 'nope'"):
        fit(DeferredReweighting(term="nope"))


class MixingData(Data):
    """Records what DeferredReweighting asks of its mixing, per epoch."""

    def __init__(self):
        super().__init__()
        self.mixing = []

    def set_mixing(self, enabled):
        self.mixing.append(enabled)


def test_stop_mixing_switches_mixing_off_from_the_start_epoch():
    data = MixingData()
    torch.manual_seed(0)
    module = DistillationModule(student=TwoHeads(), teacher=nn.Linear(4, 3),
                                losses={"ce": CrossEntropy(weight=0.5), "dist": DeiTHardDistillation()})
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        callbacks=[DeferredReweighting(term="dist", start_epoch=2, stop_mixing=True)])
    trainer.fit(module, datamodule=data)
    assert data.mixing == [True, True, False]


def test_stop_mixing_needs_a_datamodule_that_can():
    with pytest.raises(ConfigError, match="stop_mixing"):
        fit(DeferredReweighting(term="dist", stop_mixing=True))
