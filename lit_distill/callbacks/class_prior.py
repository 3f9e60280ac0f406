"""Give long-tail losses the training split's class counts when fit starts."""

from __future__ import annotations

import lightning as L

from lit_distill.errors import ConfigError


class ClassPriorFromData(L.Callback):
    """Sets ``class_counts`` of the named loss terms from the datamodule's ``class_counts``.

    For terms such as :class:`~lit_distill.losses.LogitAdjustedCrossEntropy` whose prior is the
    long-tailed training split's, known only once the datamodule has built it.

    Args:
        terms: names of the terms in ``model.init_args.losses`` to give the counts to.
    """

    def __init__(self, terms: list[str]) -> None:
        self.terms = list(terms)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        counts = getattr(trainer.datamodule, "class_counts", None)
        if counts is None:
            raise ConfigError("ClassPriorFromData: the datamodule has no class_counts "
                              "(datamodules.ImageClassificationDataModule has them)")
        losses = getattr(pl_module, "losses", {})
        for name in self.terms:
            if name not in losses or not hasattr(losses[name], "class_counts"):
                raise ConfigError(f"ClassPriorFromData.terms: '{name}' is not a term with class_counts in "
                                  f"model.init_args.losses (terms: {sorted(losses)})")
            losses[name].class_counts = [int(c) for c in counts]
