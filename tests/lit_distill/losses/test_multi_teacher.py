"""Multi-teacher KD against direct float64 formulas, and two teachers with their own inputs in one fit."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lit_distill import ConfigError, DistillationModule
from lit_distill.losses.multi_teacher import EnsembleKD, ensemble_kd
from lit_distill.models import HFModel, MultiModel


def direct(student, teachers, mask, temperature, combine, weighting, tau, labels):
    """Row by row in float64: weights, combined target, KL(p̄ ‖ q) × T², mean over valid rows."""
    total, count = 0.0, 0
    for i in range(student.shape[0]):
        if mask is not None and not mask[i]:
            continue
        ps = [torch.softmax(t[i] / temperature, -1) for t in teachers]
        if weighting == "uniform":
            w = torch.full((len(ps),), 1.0 / len(ps), dtype=torch.float64)
        elif weighting == "entropy":
            w = torch.softmax(torch.stack([(p * p.log()).sum() for p in ps]) / tau, 0)
        else:
            w = torch.softmax(torch.stack([p[labels[i]].log() for p in ps]) / tau, 0)
        if combine == "probabilities":
            target = sum(wk * p for wk, p in zip(w, ps, strict=True))
        else:
            target = torch.softmax(sum(wk * t[i] for wk, t in zip(w, teachers, strict=True)) / temperature, -1)
        q = torch.softmax(student[i] / temperature, -1)
        total += float((target * (target.log() - q.log())).sum())
        count += 1
    return total / count * temperature**2


@pytest.mark.parametrize("combine", ["probabilities", "logits"])
@pytest.mark.parametrize("weighting", ["uniform", "entropy", "gold"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_matches_the_direct_formula(combine, weighting, temperature):
    g = torch.Generator().manual_seed(0)
    student = torch.randn(6, 5, generator=g, dtype=torch.float64)
    teachers = [3 * torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(3)]
    mask = torch.tensor([True, True, False, True, True, True])
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    got = ensemble_kd(student, teachers, mask, temperature, combine, weighting, 0.5, labels)
    assert got.item() == pytest.approx(direct(student, teachers, mask, temperature, combine, weighting, 0.5, labels),
                                       rel=1e-6)


def test_one_teacher_twice_is_plain_kd():
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    from lit_distill.losses import forward_kl

    for combine in ("probabilities", "logits"):
        torch.testing.assert_close(ensemble_kd(student, [teacher, teacher], None, 2.0, combine),
                                   forward_kl(student, teacher, temperature=2.0))


BERT = {"model_type": "bert", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "max_position_embeddings": 32}


def test_two_teachers_with_their_own_tokenizations_train_one_student():
    torch.manual_seed(0)
    teacher = MultiModel({"a": HFModel(task="sequence-classification", config=BERT, vocab_size=30, num_classes=3),
                          "b": HFModel(task="sequence-classification", config=BERT, vocab_size=50, num_classes=3)},
                         inputs={"a": {"input_ids": "a_input_ids", "attention_mask": "a_attention_mask"},
                                 "b": {"input_ids": "b_input_ids", "attention_mask": "b_attention_mask"}})
    student = HFModel(task="sequence-classification", config=BERT, vocab_size=40, num_classes=3)
    losses = {"ensemble": EnsembleKD(teachers=["a", "b"], weighting="entropy", temperature=2.0)}
    with pytest.raises(ConfigError, match="no such feature"):
        DistillationModule(student, {"kd": EnsembleKD(teachers=["a", "c"], sources={
            "teacher_features": "teachers.c.logits"})}, teacher=teacher)
    module = DistillationModule(student, losses, teacher=teacher)

    def tokens(vocab, length):
        ids = torch.randint(0, vocab, (4, length))
        return ids, torch.ones_like(ids)

    (s_ids, s_mask), (a_ids, a_mask), (b_ids, b_mask) = tokens(40, 6), tokens(30, 5), tokens(50, 8)
    batch = {"student_inputs": {"input_ids": s_ids, "attention_mask": s_mask},
             "teacher_inputs": {"a_input_ids": a_ids, "a_attention_mask": a_mask, "b_input_ids": b_ids,
                                "b_attention_mask": b_mask}, "labels": torch.tensor([0, 1, 2, 0])}
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(module, DataLoader([batch, batch], batch_size=None))
    assert torch.isfinite(trainer.callback_metrics["train/ensemble"])


def test_bad_arguments():
    with pytest.raises(ConfigError, match="at least two"):
        EnsembleKD(teachers=["a"])
    with pytest.raises(ConfigError, match="not known"):
        EnsembleKD(teachers=["a", "b"], combine="median")


def cached_member(z, k, t_cache):
    """A CachedTopK member's features for teacher logits ``z``, cached at top-k and temperature t_cache (float32)."""
    from lit_distill.cache import sparse_teacher
    from lit_distill.models import CachedTopK

    ids, logprobs, tail = sparse_teacher(z, k, t_cache)
    out = CachedTopK(vocab_size=z.shape[-1])(topk_ids=ids, topk_logprobs=logprobs, tail_mass=tail,
                                             temperature=t_cache)
    return {"b.logits": out.logits, **{f"b.{key}": value for key, value in out.features.items()}}


@pytest.mark.parametrize("combine", ["probabilities", "logits"])
@pytest.mark.parametrize("weighting", ["uniform", "entropy", "gold"])
@pytest.mark.parametrize(("temperature", "t_cache"), [(1.0, 1.0), (2.0, 1.0), (0.5, 2.0)])
def test_a_cached_member_at_k_equal_v_equals_the_live_one(combine, weighting, temperature, t_cache):
    g = torch.Generator().manual_seed(2)
    student, z_a, z_b = (3 * torch.randn(3, 4, 9, generator=g) for _ in range(3))
    mask = torch.rand(3, 4, generator=g) > 0.2
    labels = torch.randint(0, 9, (3, 4), generator=g)
    term = EnsembleKD(teachers=["a", "b"], combine=combine, weighting=weighting, temperature=temperature,
                      weight_temperature=0.5)
    live = term(student, {"a.logits": z_a, "b.logits": z_b}, mask, labels)
    cached = term(student, {"a.logits": z_a, **cached_member(z_b, 9, t_cache)}, mask, labels)
    torch.testing.assert_close(cached, live, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("combine", ["probabilities", "logits"])
@pytest.mark.parametrize("weighting", ["uniform", "entropy", "gold"])
def test_a_truncated_cached_member_is_its_cached_distribution(combine, weighting):
    """k < V at T = T_c: the target is the direct formula on the cached distribution (top-k, uniform tail)."""
    g = torch.Generator().manual_seed(3)
    student, z_a, z_b = (3 * torch.randn(5, 9, generator=g, dtype=torch.float64) for _ in range(3))
    labels = torch.randint(0, 9, (5,), generator=g)
    features = {"a.logits": z_a.float(), **cached_member(z_b.float(), 3, 2.0)}
    got = EnsembleKD(teachers=["a", "b"], combine=combine, weighting=weighting, temperature=2.0,
                     weight_temperature=0.5)(student.float(), features, None, labels)
    p = torch.softmax(z_b / 2.0, -1)
    top = p.topk(3, -1).indices
    tail = (1 - p.gather(-1, top).sum(-1, keepdim=True)) / 6
    cached_p = tail.expand(5, 9).scatter(-1, top, p.gather(-1, top))
    # a teacher with logits T·log p̂ has softmax(logits / T) = p̂ at the direct formula's temperature T
    expected = direct(student, [z_a, 2.0 * cached_p.log()], None, 2.0, combine, weighting, 0.5, labels)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_a_truncated_cache_read_at_another_temperature_is_refused():
    g = torch.Generator().manual_seed(4)
    student, z_a, z_b = (torch.randn(2, 8, generator=g) for _ in range(3))
    term = EnsembleKD(teachers=["a", "b"], temperature=2.0)
    with pytest.raises(ConfigError, match=r"teacher 'b' is a top-4 cache \(of V = 8\) written at temperature 1.0"):
        term(student, {"a.logits": z_a, **cached_member(z_b, 4, 1.0)})
    assert torch.isfinite(term(student, {"a.logits": z_a, **cached_member(z_b, 4, 2.0)}))  # T = T_c
    assert torch.isfinite(term(student, {"a.logits": z_a, **cached_member(z_b, 8, 1.0)}))  # k = V: any T
