"""Encoder losses against direct float64 computations of the papers' formulas, and a real fit."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from lit_distill import ConfigError, DistillationModule
from lit_distill.losses.encoder import (
    AttentionDistillation,
    EmbeddingDistillation,
    HiddenStatesMSE,
    MiniLMRelation,
    attention_kl,
    attention_mse,
    embedding_distance,
    hidden_mse,
    layer_map,
    relation_kl,
)
from lit_distill.models import HFModel


def test_layer_maps():
    assert layer_map(2, 4, "uniform") == [(0, 0), (1, 2), (2, 4)]
    assert layer_map(3, 12, "uniform", include_embeddings=False) == [(1, 4), (2, 8), (3, 12)]
    assert layer_map(2, 5, "last") == [(2, 5)]
    assert layer_map(2, 5, [[1, 3], [2, 5]]) == [(1, 3), (2, 5)]
    with pytest.raises(ConfigError, match="multiple"):
        layer_map(3, 4, "uniform")
    with pytest.raises(ConfigError, match="out of range"):
        layer_map(2, 4, [[3, 1]])


def test_hidden_mse_is_a_sum_of_element_means():
    g = torch.Generator().manual_seed(0)
    student = [torch.randn(2, 3, 4, generator=g, dtype=torch.float64) for _ in range(3)]
    teacher = [torch.randn(2, 3, 4, generator=g, dtype=torch.float64) for _ in range(5)]
    pairs = [(0, 0), (1, 2), (2, 4)]
    expected = sum(((student[m] - teacher[n]) ** 2).mean() for m, n in pairs)
    assert hidden_mse(student, teacher, pairs).item() == pytest.approx(expected.item(), rel=1e-6)


def softmax_rows(x):
    return torch.softmax(x, -1)


def direct_attention_kl(s, t, mask):
    total, rows = 0.0, 0
    for b in range(s.shape[0]):
        keys = mask[b].bool()
        for h in range(s.shape[1]):
            for q in range(s.shape[2]):
                if not keys[q]:
                    continue
                p, r = t[b, h, q, keys], s[b, h, q, keys]
                total += float((p * (p.log() - r.log())).sum())
                rows += 1
    return total / rows


def masked_attention(scores, mask):
    return torch.softmax(scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf")), -1)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 1000), length=st.integers(2, 6))
def test_attention_kl_and_mse_match_direct_loops(seed, length):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, length // 2 + 1:] = 0
    s = masked_attention(torch.randn(2, 3, length, length, generator=g, dtype=torch.float64), mask)
    t = masked_attention(torch.randn(2, 3, length, length, generator=g, dtype=torch.float64), mask)
    assert attention_kl(s, t, mask).item() == pytest.approx(direct_attention_kl(s, t, mask), rel=1e-6)
    weight = mask[:, None, :, None] * mask[:, None, None, :]
    expected = float(((s - t) ** 2 * weight).sum() / (weight.sum() * 3))
    assert attention_mse(s, t, mask).item() == pytest.approx(expected, rel=1e-6)


def direct_relation(x, b, a, heads, keys):
    d = x.shape[-1] // heads
    part = x[b][:, a * d:(a + 1) * d][keys]
    return torch.softmax(part @ part.T / math.sqrt(d), -1)


def direct_relation_kl(xs, xt, heads, mask):
    per_example = []
    for b in range(xs.shape[0]):
        keys = mask[b].bool()
        total = 0.0
        for a in range(heads):
            rt, rs = direct_relation(xt, b, a, heads, keys), direct_relation(xs, b, a, heads, keys)
            total += float((rt * (rt.log() - rs.log())).sum())
        per_example.append(total / (heads * int(keys.sum())))
    return sum(per_example) / len(per_example)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 1000), heads=st.sampled_from([1, 2, 4]))
def test_relation_kl_matches_a_direct_loop_with_different_widths(seed, heads):
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    xs = torch.randn(2, 5, 8, generator=g, dtype=torch.float64)
    xt = torch.randn(2, 5, 16, generator=g, dtype=torch.float64)
    got = relation_kl(xs, xt, heads, mask)
    assert got.item() == pytest.approx(direct_relation_kl(xs, xt, heads, mask), rel=1e-6)
    assert relation_kl(xt, xt, heads, mask).item() == pytest.approx(0.0, abs=1e-9)


def test_relation_kl_gradient_is_finite_with_padding():
    xs = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    xt = torch.randn(2, 5, 8, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    relation_kl(xs, xt, 2, mask).backward()
    assert torch.isfinite(xs.grad).all() and torch.all(xs.grad[0, 3:] == 0)


def test_embedding_distances():
    s, t = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    assert embedding_distance(s, t, "cosine").item() == pytest.approx(0.5)
    assert embedding_distance(s, t, "mse").item() == pytest.approx(((s - t) ** 2).mean().item())


BERT = {"model_type": "bert", "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
        "max_position_embeddings": 32}


def test_tinybert_and_minilm_terms_train_a_student_from_a_teacher():
    torch.manual_seed(0)
    value = "bert.encoder.layer.{}.attention.self.value"
    student = HFModel(task="sequence-classification", config={**BERT, "num_hidden_layers": 2, "hidden_size": 16},
                      vocab_size=40, num_classes=3, output_hidden_states=True, output_attentions=True,
                      hooks=[value.format(1)])
    teacher = HFModel(task="sequence-classification", config={**BERT, "num_hidden_layers": 4}, vocab_size=40,
                      num_classes=3, output_hidden_states=True, output_attentions=True, hooks=[value.format(3)])
    losses = {"hidden": HiddenStatesMSE(student_dim=16, teacher_dim=32),
              "attention": AttentionDistillation(),
              "value_relation": MiniLMRelation(heads=2, sources={"student_states": f"student.features.{value.format(1)}",
                                                                 "teacher_states": f"teacher.features.{value.format(3)}"}),
              "embedding": EmbeddingDistillation(student_dim=16, teacher_dim=32)}
    module = DistillationModule(student, losses, teacher=teacher)
    ids = torch.randint(0, 40, (4, 6))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0
    batches = [{"inputs": {"input_ids": ids, "attention_mask": mask}, "labels": torch.tensor([0, 1, 2, 0])}] * 2
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(module, DataLoader(batches, batch_size=None))
    for name in losses:
        assert torch.isfinite(trainer.callback_metrics[f"train/{name}"]), name
    assert module.losses["hidden"].projector.weight.grad is not None


def test_minilm_relation_needs_its_sources():
    with pytest.raises(ConfigError, match="student_states"):
        MiniLMRelation()
