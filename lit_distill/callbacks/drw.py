"""DeiT-LT's deferred re-weighting: class-balanced distillation from a given epoch on."""

from __future__ import annotations

import lightning as L

from lit_distill.errors import ConfigError
from lit_distill.losses.deit import DeiTHardDistillation, effective_number_weights


class DeferredReweighting(L.Callback):
    """From ``start_epoch`` on, weight a DeiT distillation term by effective-number class weights.

    The class counts come from the datamodule's ``class_counts`` (the long-tailed
    training split). The weights are a function of the epoch, recomputed at every
    epoch start, so a resumed run gets them back without extra state.

    Args:
        term: name of the :class:`~lit_distill.losses.deit.DeiTHardDistillation` term.
        start_epoch: first epoch (0-based) that is re-weighted (DeiT-LT CIFAR: 1100 of 1200).
        beta: effective-number β (DeiT-LT: 0.9999).
        stop_mixing: also switch mixup/cutmix off from ``start_epoch`` on, as DeiT-LT's scripts do
            (``--no-mixup-drw``): the re-weighted phase trains on clean images, whose teacher labels
            agree with the gold label (the datamodule's ``set_mixing``).
    """

    def __init__(self, term: str = "dist", start_epoch: int = 0, beta: float = 0.9999,
                 stop_mixing: bool = False) -> None:
        self.term, self.start_epoch, self.beta, self.stop_mixing = term, start_epoch, beta, stop_mixing

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        losses = getattr(pl_module, "losses", {})
        term = losses[self.term] if self.term in losses else None
        if not isinstance(term, DeiTHardDistillation):
            raise ConfigError(f"DeferredReweighting.term: no DeiTHardDistillation term named "
                              f"'{self.term}' in model.init_args.losses (terms: {sorted(losses)})")
        deferred = trainer.current_epoch >= self.start_epoch
        if self.stop_mixing:
            set_mixing = getattr(trainer.datamodule, "set_mixing", None)
            if set_mixing is None:
                raise ConfigError("DeferredReweighting.stop_mixing: the datamodule cannot switch mixing off "
                                  "(no set_mixing; use datamodules.ImageClassificationDataModule)")
            set_mixing(not deferred)  # a function of the epoch: a resumed run gets it back
        if not deferred:
            term.class_weight = None
            return
        counts = getattr(trainer.datamodule, "class_counts", None)
        if counts is None:
            raise ConfigError("DeferredReweighting: the datamodule has no class_counts "
                              "(use datamodules.ImageClassificationDataModule or add the attribute)")
        term.class_weight = effective_number_weights(counts, self.beta).to(pl_module.device)
