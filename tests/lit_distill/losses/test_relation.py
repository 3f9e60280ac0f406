"""TRG relation losses against direct float64 computations, and the TRG term."""

from __future__ import annotations

import math

import pytest
import torch

from lit_distill import ConfigError
from lit_distill.losses import TRG, contextual_relation, global_contrastive, local_graph_kl
from lit_distill.losses.relation import align_token_grids, as_tokens, sample_tokens


def reference_local(s, t, k, sigma):
    s, t = s.double(), t.double()
    m, total = s.shape[0], 0.0
    for i in range(m):
        d_t = [float(((t[i] - t[j]) ** 2).sum()) if j != i else math.inf for j in range(m)]
        nbrs = sorted(range(m), key=lambda j: d_t[j])[:k]
        a_t = [math.exp(-d_t[j] / (2 * sigma)) for j in nbrs]
        a_s = [math.exp(-float(((s[i] - s[j]) ** 2).sum()) / (2 * sigma)) for j in nbrs]
        p = [a / sum(a_t) for a in a_t]
        q = [a / sum(a_s) for a in a_s]
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    return total / m


def test_local_graph_kl_matches_the_definition():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(9, 4, generator=g), torch.randn(9, 4, generator=g)
    for k, sigma in ((3, 1.0), (5, 4.0)):
        assert float(local_graph_kl(s, t, k, sigma)) == pytest.approx(reference_local(s, t, k, sigma), rel=1e-4)
    assert float(local_graph_kl(t, t, 3, 1.0)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="k must be"):
        local_graph_kl(s, t, 9)


def test_global_contrastive_matches_the_definition():
    g = torch.Generator().manual_seed(1)
    s, t, tau = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g), 0.2
    sn, tn = s.double() / s.double().norm(dim=1, keepdim=True), t.double() / t.double().norm(dim=1, keepdim=True)
    sims = sn @ tn.T / tau
    expected = sum(-float(sims[i, i]) + math.log(float(torch.exp(sims[i]).sum())) for i in range(6)) / 6
    assert float(global_contrastive(s, t, tau)) == pytest.approx(expected, rel=1e-5)
    aligned = global_contrastive(t, t, 0.05)
    assert aligned < global_contrastive(s, t, 0.05)  # matching tokens is better than random


def test_contextual_relation_matches_the_definition_and_allows_different_widths():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, 4, 3, generator=g), torch.randn(2, 4, 7, generator=g)
    def rel(x):
        x = x.double()
        return torch.softmax(x @ x.transpose(1, 2) / math.sqrt(x.shape[-1]), -1)
    expected = ((rel(s) - rel(t)) ** 2).mean()
    assert float(contextual_relation(s, t)) == pytest.approx(float(expected), rel=1e-5)
    assert float(contextual_relation(t, t)) == pytest.approx(0.0, abs=1e-8)


def test_trg_term_trains_its_projectors_and_leaves_the_teacher_alone():
    torch.manual_seed(0)
    term = TRG(student_dim=6, teacher_dim=10, num_tokens=5, k=3, projection_dim=8)
    assert term.sources == {"student_tokens": "student.features.tokens", "teacher_tokens": "teacher.features.tokens"}
    student = torch.randn(3, 12, 6, requires_grad=True)
    teacher = torch.randn(3, 12, 10, requires_grad=True)
    loss = term(student, teacher)
    loss.backward()
    assert torch.isfinite(loss) and teacher.grad is None
    assert student.grad.abs().sum() > 0
    assert all(p.grad is not None for p in term.parameters())
    # only the sampled tokens (5 of 12 per image) receive gradient
    assert int((student.grad.abs().sum(-1) > 0).sum(1).max()) <= 5


def test_trg_rejects_mismatched_grids_and_bad_hyperparameters():
    term = TRG(student_dim=4, teacher_dim=4)
    with pytest.raises(ValueError, match="square grids"):
        term(torch.randn(2, 8, 4), torch.randn(2, 9, 4))
    with pytest.raises(ValueError, match="same batch and token counts"):
        sample_tokens(torch.randn(2, 8, 4), torch.randn(2, 9, 4), 4)
    with pytest.raises(ConfigError, match="sigma"):
        TRG(student_dim=4, teacher_dim=4, sigma=0.0)


def test_feature_maps_become_row_major_tokens():
    fmap = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)  # [B, C, H, W]
    tokens = as_tokens(fmap)
    assert tokens.shape == (2, 4, 3)
    for b in range(2):
        for h in range(2):
            for w in range(2):
                torch.testing.assert_close(tokens[b, 2 * h + w], fmap[b, :, h, w])


def test_finer_grid_is_average_pooled_to_the_coarser_one():
    g = torch.Generator().manual_seed(3)
    student = torch.randn(2, 16, 5, generator=g)  # a 4x4 ViT grid, row-major
    teacher_map = torch.randn(2, 7, 2, 2, generator=g)  # a CNN's 2x2 map
    s, t = align_token_grids(student, teacher_map)
    assert s.shape == (2, 4, 5) and t.shape == (2, 4, 7)
    grid = student.reshape(2, 4, 4, 5)
    for i, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):  # each coarse cell = mean of its 2x2 block
        expected = grid[:, 2 * r:2 * r + 2, 2 * c:2 * c + 2].reshape(2, 4, 5).mean(1)
        torch.testing.assert_close(s[:, i], expected)
    torch.testing.assert_close(t, as_tokens(teacher_map))
    s2, t2 = align_token_grids(teacher_map.flatten(2).transpose(1, 2), student)  # the other way round
    assert s2.shape == (2, 4, 7) and t2.shape == (2, 4, 5)


def test_trg_term_accepts_a_cnn_feature_map_teacher():
    torch.manual_seed(0)
    term = TRG(student_dim=6, teacher_dim=10, num_tokens=4, k=3, projection_dim=8)
    student = torch.randn(3, 64, 6, requires_grad=True)  # 8x8 patch tokens
    loss = term(student, torch.randn(3, 10, 4, 4))  # a 4x4 map with 10 channels
    loss.backward()
    assert torch.isfinite(loss) and student.grad.abs().sum() > 0
