"""ParameterSchedule: values as a function of the step, applied to a term during fit."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lit_distill import ConfigError, DistillationModule, Teacher
from lit_distill.callbacks import ParameterSchedule
from lit_distill.losses import ULD, CrossEntropy, ForwardKL, GeneralizedJSD, TotalVariation


def test_linear_and_cosine_values():
    linear = ParameterSchedule("ce", "weight", 1.0, 0.0, shape="linear")
    cosine = ParameterSchedule("ce", "weight", 0.5, 0.05, shape="cosine")
    assert [linear.value(s, 4) for s in range(6)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0])
    assert cosine.value(0, 10) == pytest.approx(0.5) and cosine.value(10, 10) == pytest.approx(0.05)
    assert cosine.value(5, 10) == pytest.approx(0.275)
    with pytest.raises(ConfigError, match="shape"):
        ParameterSchedule("ce", "weight", 0, 1, shape="step")


class Seen(L.Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.values.append(pl_module.losses["ce"].weight)


def fit(schedule):
    module = DistillationModule(student=nn.Linear(4, 3), losses={"ce": CrossEntropy()})
    seen = Seen()
    g = torch.Generator().manual_seed(0)
    batches = [{"inputs": {"x": torch.randn(4, 4, generator=g)}, "labels": torch.randint(0, 3, (4,), generator=g)}
               for _ in range(4)]
    trainer = L.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, callbacks=[schedule, seen])
    trainer.fit(module, DataLoader(batches, batch_size=None))
    return seen.values


def test_schedule_sets_the_term_attribute_every_step():
    assert fit(ParameterSchedule("ce", "weight", 0.0, 1.0, shape="linear")) == pytest.approx([0.0, 0.25, 0.5, 0.75])


def test_unknown_term_or_attribute_is_named():
    with pytest.raises(ConfigError, match="no term 'ce' with attribute 'tau'"):
        fit(ParameterSchedule("ce", "tau", 1.0, 0.1))


class UsedAtForward(L.Callback):
    """Records ``losses.<term>.<attribute>`` as the term's training forward reads it."""

    def __init__(self, term: str, attribute: str):
        self.term, self.attribute, self.values = term, attribute, []

    def on_fit_start(self, trainer, pl_module):
        def record(module, args):
            if module.training:
                self.values.append(getattr(module, self.attribute))
        pl_module.losses[self.term].register_forward_pre_hook(record)


def fit_with_teacher(term: str, loss, schedule: ParameterSchedule, steps: int = 3) -> list[float]:
    torch.manual_seed(0)
    module = DistillationModule(student=nn.Linear(4, 5), teacher=Teacher(nn.Linear(4, 5)), losses={term: loss})
    used = UsedAtForward(term, schedule.attribute)
    g = torch.Generator().manual_seed(0)
    batches = [{"inputs": {"x": torch.randn(4, 4, generator=g)}, "labels": torch.randint(0, 5, (4,), generator=g)}
               for _ in range(steps)]
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                        callbacks=[schedule, used])
    trainer.fit(module, DataLoader(batches, batch_size=None))
    return used.values


@pytest.mark.parametrize(("loss", "attribute", "start", "end"), [
    (ForwardKL(temperature=4.0), "temperature", 4.0, 1.0),
    (GeneralizedJSD(beta=0.1), "beta", 0.1, 0.9),
    (ForwardKL(), "weight", 0.0, 1.0),
], ids=["ForwardKL.temperature", "GeneralizedJSD.beta", "ForwardKL.weight"])
def test_schedule_reaches_the_value_each_forward_uses(loss, attribute, start, end):
    schedule = ParameterSchedule("kd", attribute, start, end, shape="linear")
    used = fit_with_teacher("kd", loss, schedule)
    assert used == pytest.approx([schedule.value(step, 3) for step in range(3)])
    assert used[0] == pytest.approx(start) and used[0] != used[1] != used[2]


def test_scheduled_temperature_changes_the_loss_as_a_fresh_term_would():
    """The scheduled attribute is what forward computes with: same value as a term built with it."""
    scheduled, fresh = ForwardKL(temperature=4.0), ForwardKL(temperature=2.5)
    student, teacher = torch.randn(3, 7), torch.randn(3, 7)
    scheduled.temperature = 2.5
    assert scheduled(student, teacher) == fresh(student, teacher)


def test_an_int_attribute_gets_a_rounded_value():
    uld = ULD(top_k=8)
    schedule = ParameterSchedule("uld", "top_k", 8, 2, shape="linear")
    module = DistillationModule(student=nn.Linear(4, 5), teacher=Teacher(nn.Linear(4, 5)), losses={"uld": uld})
    trainer = SimpleNamespace(estimated_stepping_batches=4, global_step=1)
    schedule.on_train_batch_start(trainer, module, None, 0)
    assert uld.top_k == 6 and isinstance(uld.top_k, int)


@pytest.mark.parametrize(("loss", "attribute", "needles"), [
    (TotalVariation(), "temperature", ["no term 'kd' with attribute 'temperature'", "attributes of 'kd': weight"]),
    (ForwardKL(), "sources", ["losses.kd.sources", "not a number", "temperature, weight"]),
    (ForwardKL(), "padded_vocab", ["losses.kd.padded_vocab is False", "not a number"]),
    (ForwardKL(chunk_size=None), "chunk_size", ["losses.kd.chunk_size is None", "not a number"]),
], ids=["missing", "dict", "bool", "none"])
def test_an_attribute_that_is_missing_or_not_a_number_is_refused_at_fit_start(loss, attribute, needles):
    with pytest.raises(ConfigError) as info:
        fit_with_teacher("kd", loss, ParameterSchedule("kd", attribute, 1.0, 2.0))
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
