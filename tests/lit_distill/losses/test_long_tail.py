"""Logit-adjusted cross-entropy against a direct float64 computation, and its prior from the data."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader

from lit_distill import ConfigError, DistillationModule
from lit_distill.callbacks import ClassPriorFromData
from lit_distill.losses import CrossEntropy, LogitAdjustedCrossEntropy, logit_adjusted_cross_entropy


def direct(logits, labels, counts, tau, smoothing=0.0):
    """−log softmax(z + τ log π)_y with ε-smoothed one-hot targets, one sample at a time, float64."""
    total = 0.0
    n = sum(counts)
    for row, y in zip(logits.double().tolist(), labels.tolist(), strict=True):
        adjusted = [z + tau * math.log(c / n) for z, c in zip(row, counts, strict=True)]
        log_norm = math.log(sum(math.exp(a) for a in adjusted))
        target = [(1 - smoothing) * (c == y) + smoothing / len(row) for c in range(len(row))]
        total -= sum(t * (a - log_norm) for t, a in zip(target, adjusted, strict=True))
    return total / len(labels)


@given(st.integers(2, 6), st.integers(1, 5), st.floats(0.0, 2.0), st.sampled_from([0.0, 0.1]), st.integers(0, 99))
@settings(max_examples=40, deadline=None)
def test_matches_the_direct_formula(classes, batch, tau, smoothing, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, generator=g) * 3
    labels = torch.randint(0, classes, (batch,), generator=g)
    counts = torch.randint(1, 100, (classes,), generator=g).tolist()
    got = logit_adjusted_cross_entropy(logits, labels, counts, tau, label_smoothing=smoothing)
    assert got.item() == pytest.approx(direct(logits, labels, counts, tau, smoothing), rel=1e-5, abs=1e-6)


def test_tau_zero_or_a_uniform_prior_is_plain_cross_entropy():
    logits, labels = torch.randn(8, 4), torch.randint(0, 4, (8,))
    plain = CrossEntropy()(logits, labels)
    torch.testing.assert_close(logit_adjusted_cross_entropy(logits, labels, [5, 1, 9, 2], tau=0.0), plain)
    torch.testing.assert_close(logit_adjusted_cross_entropy(logits, labels, [3, 3, 3, 3]), plain)


def test_soft_targets_match_the_mixture_of_hard_losses():
    logits, counts = torch.randn(1, 3), [50, 10, 2]
    soft = torch.tensor([[0.7, 0.0, 0.3]])
    mixed = logit_adjusted_cross_entropy(logits, None, counts, soft_labels=soft)
    parts = [logit_adjusted_cross_entropy(logits, torch.tensor([c]), counts) for c in (0, 2)]
    torch.testing.assert_close(mixed, 0.7 * parts[0] + 0.3 * parts[1])


def test_counts_come_from_the_datamodule_and_bad_ones_are_refused():
    class Data(L.LightningDataModule):
        class_counts = [40, 8, 2]

        def train_dataloader(self):
            return DataLoader([{"inputs": {"input": torch.randn(4, 4)}, "labels": torch.tensor([0, 1, 2, 0])}],
                              batch_size=None)

    term = LogitAdjustedCrossEntropy()
    module = DistillationModule(student=nn.Linear(4, 3), teacher=None, losses={"la": term})
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, callbacks=[ClassPriorFromData(["la"])])
    trainer.fit(module, datamodule=Data())
    assert term.class_counts == [40, 8, 2]
    with pytest.raises(ConfigError, match="class_counts"):
        LogitAdjustedCrossEntropy(class_counts=[3, 0])
    with pytest.raises(ConfigError, match="ClassPriorFromData"):
        LogitAdjustedCrossEntropy()(torch.randn(2, 3), torch.tensor([0, 1]))


def test_soft_cross_entropy_applies_label_smoothing_to_mixed_targets():
    logits, soft = torch.randn(2, 4), torch.tensor([[0.6, 0.4, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    smoothed = 0.9 * soft + 0.1 / 4
    expected = -(smoothed * torch.log_softmax(logits, -1)).sum(-1).mean()
    torch.testing.assert_close(CrossEntropy(label_smoothing=0.1)(logits, None, soft), expected)
