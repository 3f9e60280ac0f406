"""lit_distill.steps: the default step is today's training; custom steps keep the module's normalisation."""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lit_distill import DistillationModule
from lit_distill.losses.terms import CrossEntropy
from lit_distill.steps import TrainingStep

VOCAB = 11


def tiny_lm() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(VOCAB, 8), nn.Tanh(), nn.Linear(8, VOCAB))


def make_batch(lengths: list[int], seed: int, max_len: int = 7) -> dict[str, Any]:
    """Right-padded next-token batch: ``inputs.input_ids`` ``[B, T]``, ``labels`` and ``loss_mask`` ``[B, T]``."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (len(lengths), max_len), generator=g)
    labels = torch.full_like(ids, -100)
    for row, n in enumerate(lengths):
        labels[row, : n - 1] = ids[row, 1:n]
    return {"inputs": {"input_ids": ids}, "labels": labels, "loss_mask": labels != -100}


# 6 micro-batches of uneven sizes and lengths: 3 optimizer steps under accumulation 2
UNEVEN = [make_batch(lengths, seed) for seed, lengths in
          enumerate([[7, 2], [3], [7, 7, 5], [2, 2], [4, 6, 3, 2], [7]])]


def keep_first_targets(batch: dict[str, Any], keep: int = 2) -> dict[str, Any]:
    """The batch with only the first ``keep`` targets of each row (a stand-in for on-policy samples)."""
    mask = batch["loss_mask"] & (batch["loss_mask"].cumsum(-1) <= keep)
    return {**batch, "labels": batch["labels"].masked_fill(~mask, -100), "loss_mask": mask}


class KeepFirstTargets(TrainingStep):
    """Replaces every batch before the shared part runs, as issue 16's on-policy step will."""

    def training_step(self, module, batch, batch_idx):
        return module.distillation_loss(keep_first_targets(batch)).weighted_total


class Record(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(trainer.callback_metrics["train/ce"]))


def trainer(**kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1)
    return L.Trainer(**{**defaults, **kwargs})


def fit_module(step: TrainingStep | None, batches: list[dict], accumulate: int) -> tuple[nn.Module, list[float]]:
    module = DistillationModule(tiny_lm(), {"ce": CrossEntropy()}, step=step,
                                optimizer=lambda params: torch.optim.SGD(params, lr=0.5))
    record = Record()
    steps = len(batches) // accumulate
    trainer(max_steps=steps, accumulate_grad_batches=accumulate, callbacks=[record]).fit(
        module, DataLoader(batches, batch_size=None))
    return module.student.module, record.losses


def reference_fit(batches: list[dict], accumulate: int) -> tuple[nn.Module, list[float]]:
    """Hand-written loop of the documented objective: per optimizer step, the mean over valid targets."""
    model = tiny_lm()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for start in range(0, len(batches), accumulate):
        window = batches[start:start + accumulate]
        optimizer.zero_grad()
        totals = [nn.functional.cross_entropy(model(b["inputs"]["input_ids"]).flatten(0, 1), b["labels"].flatten())
                  for b in window]
        counts = [b["loss_mask"].sum() for b in window]
        (sum(t * c for t, c in zip(totals, counts, strict=True)) / sum(counts)).backward()
        optimizer.step()
        losses += [float(t.detach()) for t in totals]
    return model, losses


def assert_same_training(actual: tuple[nn.Module, list[float]], expected: tuple[nn.Module, list[float]]) -> None:
    (model, losses), (ref_model, ref_losses) = actual, expected
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    for (name, p), q in zip(model.named_parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("step", [None, TrainingStep()], ids=["default", "explicit"])
def test_default_step_trains_the_token_mean_of_each_optimizer_step(step):
    actual = fit_module(step, UNEVEN, accumulate=2)
    assert_same_training(actual, reference_fit(UNEVEN, accumulate=2))
    assert not torch.equal(actual[0][0].weight, tiny_lm()[0].weight)  # it did train


def test_a_step_that_replaces_the_batch_keeps_the_normalisation():
    actual = fit_module(KeepFirstTargets(), UNEVEN, accumulate=2)
    # the objective counts the replaced batches' targets, not the original ones
    assert_same_training(actual, reference_fit([keep_first_targets(b) for b in UNEVEN], accumulate=2))


class Critic(TrainingStep):
    """A step with parameters and an optimiser of its own (as a GAN's discriminator), manual optimisation."""

    automatic_optimization = False

    def __init__(self) -> None:
        super().__init__()
        self.critic = nn.Linear(VOCAB, 1)

    def configure_optimizers(self, module, module_optimizer):
        return [module_optimizer, torch.optim.SGD(self.critic.parameters(), lr=1.0)]

    def critic_loss(self, logits: torch.Tensor) -> torch.Tensor:
        return self.critic(logits.detach()).square().mean()

    def training_step(self, module, batch, batch_idx):
        main, own = module.optimizers()
        result = module.distillation_loss(batch)
        own.zero_grad()
        module.manual_backward(self.critic_loss(result.student_out.logits))
        own.step()
        main.zero_grad()
        module.manual_backward(result.weighted_total)
        main.step()


def test_step_parameters_have_their_own_optimizer_and_keep_their_mean(tmp_path):
    step = Critic()
    module = DistillationModule(tiny_lm(), {"ce": CrossEntropy()}, step=step,
                                optimizer=lambda params: torch.optim.SGD(params, lr=1.0))
    assert "step" not in module.hparams  # an object, not config, outside the CLI
    main, own = module.configure_optimizers()
    assert [id(p) for g in main.param_groups for p in g["params"]] == [id(p) for p in module.student.parameters()]
    assert [id(p) for g in own.param_groups for p in g["params"]] == [id(p) for p in step.critic.parameters()]

    batch = UNEVEN[2]
    student, critic = copy.deepcopy(module.student.module), copy.deepcopy(step.critic)
    logits = student(batch["inputs"]["input_ids"])
    nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten()).backward()
    critic(logits.detach()).square().mean().backward()

    t = trainer(max_steps=2)  # manual optimisation: global_step counts both optimisers
    t.fit(module, DataLoader([batch], batch_size=None))
    # SGD with lr 1: each update is minus the gradient of that optimiser's own mean loss
    for p, before in zip(module.student.module.parameters(), student.parameters(), strict=True):
        torch.testing.assert_close(p, before - before.grad, rtol=1e-5, atol=1e-6)
    for p, before in zip(step.critic.parameters(), critic.parameters(), strict=True):
        torch.testing.assert_close(p, before - before.grad, rtol=1e-5, atol=1e-6)
    t.save_checkpoint(tmp_path / "m.ckpt")
    state = torch.load(tmp_path / "m.ckpt", weights_only=True)["state_dict"]
    assert {k for k in state if k.startswith("step.")} == {"step.critic.weight", "step.critic.bias"}


class CountingStep(TrainingStep):
    """Counts the batches it trained on; the count is checkpointed."""

    def __init__(self) -> None:
        super().__init__()
        self.batches = 0

    def training_step(self, module, batch, batch_idx):
        self.batches += 1
        return super().training_step(module, batch, batch_idx)

    def checkpoint_state(self) -> dict[str, Any]:
        return {"batches": self.batches}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.batches = int(state.get("batches", 0))


def test_step_state_survives_checkpoint_and_resume(tmp_path):
    data = DataLoader(UNEVEN, batch_size=None)
    first = DistillationModule(tiny_lm(), {"ce": CrossEntropy()}, step=CountingStep())
    t = trainer(max_steps=2)
    t.fit(first, data)
    t.save_checkpoint(tmp_path / "m.ckpt")
    assert torch.load(tmp_path / "m.ckpt", weights_only=True)["training_step_state"] == {"batches": 2}

    resumed = DistillationModule(tiny_lm(), {"ce": CrossEntropy()}, step=CountingStep())
    trainer(max_steps=4).fit(resumed, data, ckpt_path=tmp_path / "m.ckpt")
    assert resumed.step.batches == 4


def test_default_step_adds_nothing_to_checkpoints(tmp_path):
    module = DistillationModule(tiny_lm(), {"ce": CrossEntropy()})
    t = trainer(max_steps=1)
    t.fit(module, DataLoader(UNEVEN[:1], batch_size=None))
    t.save_checkpoint(tmp_path / "m.ckpt")
    checkpoint = torch.load(tmp_path / "m.ckpt", weights_only=True)
    assert "training_step_state" not in checkpoint
    assert not any(k.startswith("step.") for k in checkpoint["state_dict"])
