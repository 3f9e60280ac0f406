"""Drives TAID's adaptive interpolation: one update per optimizer step, in training only."""

from __future__ import annotations

import lightning as L
import torch

from lit_distill.errors import ConfigError
from lit_distill.losses.taid import TAID


class TAIDSchedule(L.Callback):
    """Moves the t of a :class:`~lit_distill.losses.taid.TAID` term after every optimizer step.

    The step's loss is the mean of the term's values over the step's micro-batches,
    averaged over data-parallel ranks so that every rank moves t identically. The
    state (t, momentum, previous loss) lives in the term's buffers, hence in the
    checkpoint; t is logged as ``train/taid_t``.

    Args:
        term: name of the TAID term in ``model.init_args.losses``.
    """

    def __init__(self, term: str = "taid") -> None:
        self.term = term

    def _taid(self, pl_module: L.LightningModule) -> TAID:
        losses = getattr(pl_module, "losses", {})
        term = losses[self.term] if self.term in losses else None
        if not isinstance(term, TAID):
            raise ConfigError(f"TAIDSchedule.term: no TAID term named '{self.term}' in "
                              f"model.init_args.losses (terms: {sorted(losses)})")
        return term

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._taid(pl_module)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        term = self._taid(pl_module)
        loss = term.pop_step_loss()
        if loss is None:
            return
        loss = trainer.strategy.reduce(loss, reduce_op="mean")
        # global_step counts the optimizer steps finished before this one (0 on the first), the
        # value TAID's reference passes from its training step (issue 16: we passed one more).
        term.update(loss, trainer.global_step, trainer.estimated_stepping_batches)
        logging_step = getattr(pl_module, "_logging_step", None)
        if logging_step is None or logging_step():  # only on the steps the loggers write
            pl_module.log("train/taid_t", term.t, batch_size=1)
