"""Speculative-decoding acceptance of the student as a draft for its teacher, logged during validation."""

from __future__ import annotations

import lightning as L

from lit_distill.errors import ConfigError
from lit_distill.speculative import AcceptanceTally


class SpeculativeAcceptance(L.Callback):
    """Logs how well the student would serve as the teacher's draft model (DistillSpec's measure).

    On every validation batch with student and teacher logits ``[B, L, V]`` it scores the
    positions of ``loss_mask`` (:mod:`lit_distill.speculative`) and logs, per epoch,

    - ``<prefix>/acceptance``: mean Σ_v min(p_v, q_v) at ``temperature`` (sampled decoding),
    - ``<prefix>/acceptance_greedy``: argmax agreement (greedy decoding),
    - ``<prefix>/tokens_per_call`` and ``<prefix>/tokens_per_call_greedy``: expected tokens one
      target call yields with ``gamma`` draft tokens.

    Sums are reduced over processes, so the values are those of the whole validation set.

    Args:
        gamma: draft tokens per target call.
        temperature: sampling temperature of both models for the sampled estimate.
        prefix: logged-name prefix.
    """

    def __init__(self, gamma: int = 4, temperature: float = 1.0, prefix: str = "val") -> None:
        if gamma < 1 or temperature <= 0:
            raise ConfigError(f"SpeculativeAcceptance: need gamma >= 1 and temperature > 0, got gamma={gamma}, "
                              f"temperature={temperature}")
        self.gamma, self.temperature, self.prefix = gamma, temperature, prefix
        self._tally = AcceptanceTally(gamma, temperature)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._tally = AcceptanceTally(self.gamma, self.temperature)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        student = outputs.get("student") if isinstance(outputs, dict) else None
        teacher = outputs.get("teacher") if isinstance(outputs, dict) else None
        mask = batch.get("loss_mask") if isinstance(batch, dict) else None
        if student is None or teacher is None or student.logits is None or teacher.logits is None or mask is None:
            return
        self._tally.update(student.logits.detach(), teacher.logits.detach(), mask)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._tally.sums or trainer.sanity_checking:
            return
        self._tally.sums = {k: trainer.strategy.reduce(v, reduce_op="sum") for k, v in self._tally.sums.items()}
        for key, value in self._tally.means().items():
            pl_module.log(f"{self.prefix}/{key}", value, batch_size=1)
