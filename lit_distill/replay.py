"""DistiLLM's adaptive off-policy step: student answers, a replay buffer, a threshold that grows.

Ko et al. (ICML 2024) make on-policy distillation cheaper by reusing the student's answers. Per
micro-batch a number ``r ~ U(0, 1)`` is drawn; with the adaptive threshold ``τ`` and its share for
fresh samples ``s`` (``τ·(1 − step/total)`` for ``replay_ratio: decreasing``, ``τ·step/total`` for
``increasing``, ``τ/2`` for ``constant``):

- ``r < s``, or ``r < τ`` while the buffer is not full: the student answers the batch's prompts
  (as :class:`~lit_distill.on_policy.OnPolicyStep` does), the answers go into the buffer (FIFO,
  ``capacity`` answers) and the step trains on them;
- else ``r < τ``: the step trains on as many answers drawn uniformly from the buffer;
- else: on the data's batch.

So the student's answers make up a share ``τ`` of the steps, and stale (replayed) answers a
growing part of them. ``τ`` starts at ``initial_threshold`` (the authors: 0) and grows by
``threshold_step`` (0.1) after every validation whose ``monitor`` value (the student's loss on
the gold answers) is at least ``tolerance`` (0.1) above the reference loss, which then moves to
it. The authors evaluate once before training to set the reference; here the first validation
sets it (run one early with ``trainer.val_check_interval``). The configured terms apply to every
batch (DistiLLM: :class:`~lit_distill.losses.SkewKL`).

The draw, the samples and the buffer picks are functions of ``(seed, step, micro-batch, rank)``;
``τ``, the reference loss and the buffer are saved in checkpoints, so a resumed run continues
the uninterrupted one. Works with one tokenizer and with two (answers are stored with their
texts and retokenised when replayed).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from lit_distill.errors import ConfigError
from lit_distill.on_policy import Answer, OnPolicyStep, derived_seed
from lit_distill.steps import TrainingStep

SOURCES = ("data", "fresh", "replay")


class AdaptiveOffPolicyStep(TrainingStep):
    """DistiLLM's adaptive mix of data, fresh student answers and replayed ones.

    Args:
        initial_threshold: ``τ`` at the start: the share of steps on student answers.
        threshold_step: how much ``τ`` grows after a validation whose loss rose (at most 1).
        tolerance: how far above the reference loss a validation must be to grow ``τ``.
        monitor: the validation metric (the student's loss on gold answers).
        capacity: answers kept in the replay buffer (FIFO).
        replay_ratio: ``decreasing`` (the authors' default), ``increasing`` or ``constant``: how
            the share of fresh samples among student steps changes over training.
        max_new_tokens: tokens sampled per answer at most.
        temperature: sampling temperature (the authors: 1).
        top_p: nucleus sampling mass (1 = off).
        seed: base of the per-step draws.
        pad_token_id: id padding the new batch; None takes the datamodule tokenizer's.
        eos_token_id: id that ends an answer; None takes the datamodule tokenizer's.
    """

    def __init__(self, initial_threshold: float = 0.0, threshold_step: float = 0.1, tolerance: float = 0.1,
                 monitor: str = "val/student_ce", capacity: int = 1000,
                 replay_ratio: Literal["decreasing", "increasing", "constant"] = "decreasing",
                 max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                 pad_token_id: int | None = None, eos_token_id: int | None = None) -> None:
        super().__init__()
        if not 0 <= initial_threshold <= 1:
            raise ConfigError(f"AdaptiveOffPolicyStep.initial_threshold: must be in [0, 1], got {initial_threshold}")
        if replay_ratio not in ("decreasing", "increasing", "constant"):
            raise ConfigError("AdaptiveOffPolicyStep.replay_ratio: one of decreasing, increasing, constant; "
                              f"got {replay_ratio!r}")
        if capacity < 1:
            raise ConfigError(f"AdaptiveOffPolicyStep.capacity: must be >= 1, got {capacity}")
        self.sampler = OnPolicyStep(1.0, max_new_tokens, temperature, top_p, seed, pad_token_id, eos_token_id)
        self.threshold_step, self.tolerance, self.monitor = threshold_step, tolerance, monitor
        self.replay_ratio, self.seed = replay_ratio, seed
        self.threshold = float(initial_threshold)
        self.reference_loss: float | None = None
        self.buffer: deque[Answer] = deque(maxlen=capacity)

    def attach(self, module: L.LightningModule) -> None:
        self.sampler.attach(module)

    def fresh_share(self, step: int, total: int) -> float:
        """``s``: below it a student step samples fresh answers even when the buffer is full."""
        if self.replay_ratio == "constant":
            return self.threshold / 2
        progress = min(step / max(total, 1), 1.0)
        return self.threshold * (progress if self.replay_ratio == "increasing" else 1 - progress)

    def source(self, step: int, total: int, batch_idx: int, rank: int) -> str:
        """Where micro-batch ``batch_idx`` of optimizer step ``step`` takes its answers: one of ``SOURCES``."""
        coin = torch.Generator().manual_seed(derived_seed(self.seed, step, batch_idx, rank, "replay-coin"))
        r = float(torch.rand((), generator=coin))
        full = len(self.buffer) == self.buffer.maxlen
        if r < self.fresh_share(step, total) or (r < self.threshold and not full):
            return "fresh"
        if r < self.threshold and self.buffer:
            return "replay"
        return "data"

    def training_step(self, module: L.LightningModule, batch: dict[str, Any], batch_idx: int) -> Tensor:
        trainer = module.trainer
        rank = getattr(trainer, "global_rank", 0)
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else trainer.estimated_stepping_batches
        source = self.source(module.global_step, int(total), batch_idx, rank)
        if source != "data":
            device = (batch["student_inputs"] if "student_inputs" in batch else batch["inputs"])["input_ids"].device
            size = (batch["student_inputs"] if "student_inputs" in batch else batch["inputs"])["input_ids"].shape[0]
            if source == "fresh":
                answers = self.sampler.student_answers(module, batch, batch_idx)
                self.buffer.extend(answers)
            else:
                picks = torch.Generator().manual_seed(derived_seed(self.seed, module.global_step, batch_idx, rank, "replay"))
                rows = torch.randint(len(self.buffer), (size,), generator=picks).tolist()
                answers = [self.buffer[row] for row in rows]
            batch = self.sampler.answers_batch(module, answers, device)
        result = module.distillation_loss(batch)
        if result.logging:
            for name in SOURCES:
                module.log(f"train/{name}", float(source == name), on_step=True, on_epoch=False)
            module.log("train/student_threshold", self.threshold, on_step=True, on_epoch=False)
        return result.weighted_total

    def after_validation(self, module: L.LightningModule, metrics: dict[str, Tensor]) -> None:
        """Grow ``τ`` when the monitored validation loss rose by ``tolerance`` above the reference."""
        value = metrics.get(self.monitor)
        if value is None:
            raise ConfigError(f"AdaptiveOffPolicyStep.monitor: validation logged no {self.monitor!r}; name a "
                              "validation metric, e.g. val/student_ce")
        loss = float(value)
        if not math.isfinite(loss):
            return
        if self.reference_loss is None:
            self.reference_loss = loss
        elif loss >= self.reference_loss + self.tolerance:
            self.threshold = min(self.threshold + self.threshold_step, 1.0)
            self.reference_loss = loss

    def checkpoint_state(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "reference_loss": self.reference_loss,
                "buffer": [asdict(answer) for answer in self.buffer]}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.threshold, self.reference_loss = state["threshold"], state["reference_loss"]
        self.buffer.clear()
        self.buffer.extend(Answer(**answer) for answer in state["buffer"])
