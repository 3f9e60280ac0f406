"""CrossEntropy with hard and soft (mixup/cutmix) targets against direct float64 computations."""

from __future__ import annotations

import math

import pytest
import torch

from lit_distill.contracts import ModelOutput
from lit_distill.losses import CrossEntropy


def test_soft_labels_replace_hard_labels_when_the_batch_has_them():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, generator=g)
    soft = torch.softmax(torch.randn(4, 5, generator=g), -1)
    labels = soft.argmax(-1)
    term = CrossEntropy()
    with_soft = term(**term.gather(ModelOutput(logits=logits), None, {"labels": labels, "soft_labels": soft}))
    expected = 0.0
    for b in range(4):
        log_z = math.log(sum(math.exp(float(v)) for v in logits[b].double()))
        expected -= sum(float(soft[b, c]) * (float(logits[b, c]) - log_z) for c in range(5)) / 4
    assert float(with_soft) == pytest.approx(expected, rel=1e-5)
    hard = term(**term.gather(ModelOutput(logits=logits), None, {"labels": labels}))
    one_hot = torch.nn.functional.one_hot(labels, 5).float()
    assert float(hard) == pytest.approx(float(term(logits, labels, one_hot)), rel=1e-6)
