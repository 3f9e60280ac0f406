"""GradMagStep: each balanced term's weight is the inverse of its gradient norm (times the mean norm)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lit_distill import ConfigError, DistillationModule
from lit_distill.gradmag import GradMagStep
from lit_distill.losses import CrossEntropy, ForwardKL


def data():
    g = torch.Generator().manual_seed(0)
    return [{"inputs": {"x": torch.randn(6, 4, generator=g)}, "labels": torch.randint(0, 3, (6,), generator=g)}]


def direct_update(student: nn.Linear, teacher: nn.Linear, batch: dict, preserve: bool) -> dict:
    """One SGD(lr=1) step on the gradient-magnitude-weighted sum, computed by hand."""
    x, y = batch["inputs"]["x"], batch["labels"]
    logits = student(x)
    ce = nn.functional.cross_entropy(logits, y)
    kd = nn.functional.kl_div(torch.log_softmax(logits, -1), torch.log_softmax(teacher(x), -1), log_target=True,
                              reduction="batchmean")
    params = list(student.parameters())
    norms = [torch.stack([g.pow(2).sum() for g in torch.autograd.grad(v, params, retain_graph=True)]).sum().sqrt()
             for v in (ce, kd)]
    scale = (norms[0] + norms[1]) / 2 if preserve else 1.0
    total = scale / norms[0] * ce + scale / norms[1] * kd
    grads = torch.autograd.grad(total, params)
    return {name: p.detach() - g for (name, p), g in zip(student.named_parameters(), grads, strict=True)}


@pytest.mark.parametrize("preserve", [True, False])
def test_one_step_equals_the_hand_computation(preserve):
    torch.manual_seed(0)
    student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
    expected = direct_update(student, teacher, data()[0], preserve)
    module = DistillationModule(student, {"ce": CrossEntropy(weight=7.0), "kd": ForwardKL(weight=0.01)},
                                teacher=teacher, step=GradMagStep(preserve_magnitude=preserve),
                                optimizer=lambda p: torch.optim.SGD(p, lr=1.0))
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(module, DataLoader(data(), batch_size=None))
    for name, value in module.student.module.named_parameters():
        torch.testing.assert_close(value.detach(), expected[name], rtol=1e-5, atol=1e-6)
    assert {"gradmag/ce", "gradmag/kd"} <= set(trainer.callback_metrics)


def test_terms_and_parameters_are_checked():
    with pytest.raises(ConfigError, match=r"\['nope'\] are not in"):
        DistillationModule(nn.Linear(4, 3), {"ce": CrossEntropy()}, step=GradMagStep(terms=["nope"]))
    with pytest.raises(ConfigError, match="at least two terms"):
        DistillationModule(nn.Linear(4, 3), {"ce": CrossEntropy()}, step=GradMagStep())
    module = DistillationModule(nn.Linear(4, 3), {"ce": CrossEntropy(), "ce2": CrossEntropy()},
                                step=GradMagStep(parameters=["student.nothing"]))
    with pytest.raises(ConfigError, match="match no trainable student parameter"):
        module.step.training_step(module, data()[0], 0)
