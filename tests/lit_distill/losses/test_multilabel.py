"""Multi-label BCE against torch's reference and a direct float64 formula, with and without masks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_distill.contracts import ModelOutput
from lit_distill.losses import MultiLabelBCE, multilabel_bce


def direct(logits, targets, mask):
    """−y log σ(z) − (1 − y) log(1 − σ(z)), one element at a time in float64, mean over valid ones."""
    total, count = 0.0, 0
    for z, y, keep in zip(logits.double().flatten().tolist(), targets.double().flatten().tolist(),
                          mask.flatten().tolist(), strict=True):
        if keep:
            p = 1.0 / (1.0 + math.exp(-z))
            total -= y * math.log(p) + (1.0 - y) * math.log(1.0 - p)
            count += 1
    return total / count if count else 0.0


@given(st.integers(1, 5), st.integers(1, 6), st.integers(0, 99))
@settings(max_examples=30, deadline=None)
def test_without_a_mask_it_is_torchs_mean_bce(batch, classes, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, 3, classes, generator=g) * 4
    targets = torch.rand(batch, 3, classes, generator=g)  # soft targets too
    torch.testing.assert_close(multilabel_bce(logits, targets), F.binary_cross_entropy_with_logits(logits, targets))


@given(st.integers(1, 5), st.integers(1, 6), st.booleans(), st.integers(0, 99))
@settings(max_examples=40, deadline=None)
def test_with_a_mask_it_is_the_direct_mean_over_valid_elements(batch, classes, per_label, seed):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, classes, generator=g) * 3).double()
    targets = (torch.rand(batch, classes, generator=g) < 0.4).double()
    shape = (batch, classes) if per_label else (batch,)
    mask = torch.rand(shape, generator=g) < 0.6
    full = mask if per_label else mask[:, None].expand(batch, classes)
    got = multilabel_bce(logits, targets, mask)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(direct(logits, targets, full), rel=1e-12, abs=1e-12)


def test_extreme_logits_stay_finite_and_nothing_valid_is_zero():
    logits = torch.tensor([[80.0, -80.0, 0.0]])
    targets = torch.tensor([[0.0, 1.0, 1.0]])
    # −log σ(−80) = 80 + log(1 + e^−80) ≈ 80 for each of the two wrong answers, log 2 for the third
    assert multilabel_bce(logits, targets).item() == pytest.approx((160 + math.log(2)) / 3, rel=1e-6)
    assert multilabel_bce(logits, targets, torch.zeros(1, 3, dtype=torch.bool)).item() == 0.0


def test_its_gradient_is_sigmoid_minus_target_over_the_valid_count():
    logits = torch.tensor([[1.0, -2.0], [0.5, 3.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mask = torch.tensor([[True, True], [True, False]])
    multilabel_bce(logits, targets, mask).backward()
    expected = torch.where(mask, (torch.sigmoid(logits.detach()) - targets) / 3, 0.0)
    torch.testing.assert_close(logits.grad, expected)


def test_mismatched_shapes_are_refused_with_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 10\).*\(4, 9\)"):
        multilabel_bce(torch.zeros(4, 10), torch.zeros(4, 9))
    with pytest.raises(ValueError, match=r"mask \(3,\)"):
        multilabel_bce(torch.zeros(4, 10), torch.zeros(4, 10), torch.ones(3, dtype=torch.bool))


def test_the_term_reads_logits_and_multi_hot_labels_and_skips_an_absent_mask():
    term = MultiLabelBCE(weight=0.5)
    logits, labels = torch.randn(4, 10), (torch.rand(4, 10) < 0.3).float()
    args = term.gather(ModelOutput(logits=logits), None, {"inputs": {}, "labels": labels})
    assert set(args) == {"logits", "targets"}
    torch.testing.assert_close(term(**args), F.binary_cross_entropy_with_logits(logits, labels))
    assert term.weight == 0.5 and not term.reads_teacher
    masked = term.gather(ModelOutput(logits=logits), None,
                         {"labels": labels, "loss_mask": torch.tensor([True, False, True, True])})
    torch.testing.assert_close(term(**masked), F.binary_cross_entropy_with_logits(logits[[0, 2, 3]], labels[[0, 2, 3]]))
