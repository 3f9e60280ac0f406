"""DeiT hard distillation and DeiT-LT's effective-number weights, against direct formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lit_distill import ConfigError
from lit_distill.losses import (
    DeiTHardDistillation,
    deit_hard_distillation,
    effective_number_weights,
)


def test_effective_number_weights_match_the_formula():
    counts, beta = [500, 120, 30, 5], 0.999
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    expected = [w * len(counts) / sum(raw) for w in raw]
    weights = effective_number_weights(counts, beta)
    assert weights.tolist() == pytest.approx(expected, rel=1e-6)
    assert float(weights.sum()) == pytest.approx(4.0, rel=1e-6)
    assert weights.tolist() == sorted(weights.tolist())  # rarer classes weigh more


def test_effective_number_weights_limits_and_errors():
    assert effective_number_weights([10, 10, 10]).tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert effective_number_weights([100, 1], beta=0.0).tolist() == pytest.approx([1.0, 1.0])
    # beta -> 1: inverse frequency
    w = effective_number_weights([100, 10], beta=1 - 1e-9)
    assert float(w[1] / w[0]) == pytest.approx(10.0, rel=1e-3)
    with pytest.raises(ConfigError, match="positive"):
        effective_number_weights([3, 0])
    with pytest.raises(ConfigError, match="beta"):
        effective_number_weights([3, 4], beta=1.0)


def test_hard_distillation_is_ce_against_the_teacher_argmax():
    g = torch.Generator().manual_seed(0)
    dist, teacher = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    targets = teacher.argmax(-1)
    expected = -sum(math.log(float(torch.softmax(dist[i].double(), -1)[targets[i]])) for i in range(6)) / 6
    assert float(deit_hard_distillation(dist, teacher)) == pytest.approx(expected, rel=1e-5)


def test_weighted_hard_distillation_divides_by_the_targets_weights():
    g = torch.Generator().manual_seed(1)
    dist, teacher = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    weight = torch.tensor([0.5, 1.0, 2.0, 0.5])
    targets = teacher.argmax(-1)
    per_example = F.cross_entropy(dist, targets, reduction="none")
    expected = (weight[targets] * per_example).sum() / weight[targets].sum()
    torch.testing.assert_close(deit_hard_distillation(dist, teacher, weight), expected)


def test_term_reads_the_dist_head_and_gives_no_teacher_gradient():
    term = DeiTHardDistillation()
    assert term.sources["dist_logits"] == "student.features.dist_logits" and term.weight == 0.5
    dist = torch.randn(3, 4, requires_grad=True)
    teacher = torch.randn(3, 4, requires_grad=True)
    term(dist, teacher).backward()
    assert dist.grad is not None and teacher.grad is None
    with pytest.raises(ValueError, match=r"\[B, C\]"):
        deit_hard_distillation(torch.randn(3, 4), torch.randn(3, 5))


def test_soft_distillation_of_the_dist_head_is_tau_squared_kl():
    """DeiT's soft variant is ForwardKL pointed at the DIST head: τ²·KL(p_T^τ ‖ q_dist^τ), mean over images."""
    from lit_distill.contracts import ModelOutput
    from lit_distill.losses import ForwardKL

    g = torch.Generator().manual_seed(4)
    dist, teacher, tau = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g), 3.0
    term = ForwardKL(temperature=tau, sources={"student_logits": "student.features.dist_logits"})
    student = ModelOutput(logits=torch.randn(5, 7, generator=g), features={"dist_logits": dist})
    value = term(**term.gather(student, ModelOutput(logits=teacher), {"labels": torch.zeros(5, dtype=torch.long)}))
    p = torch.softmax(teacher.double() / tau, -1)
    log_q = torch.log_softmax(dist.double() / tau, -1)
    expected = tau**2 * sum(float((p[b] * (p[b].log() - log_q[b])).sum()) for b in range(5)) / 5
    assert float(value) == pytest.approx(expected, rel=1e-5)
