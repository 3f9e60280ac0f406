"""Plain logit divergences refuse a truncated cached teacher read at another temperature, as EnsembleKD does."""

from __future__ import annotations

import pytest
import torch

from lit_distill.cache import sparse_teacher
from lit_distill.contracts import ModelOutput
from lit_distill.errors import ConfigError
from lit_distill.losses import ForwardKL, GeneralizedJSD
from lit_distill.models import CachedTopK

V = 8


def cached_output(k: int, t_cache: float) -> ModelOutput:
    """A CachedTopK teacher's real output for random logits, cached at top-k and temperature t_cache."""
    ids, logprobs, tail = sparse_teacher(torch.randn(2, 3, V, generator=torch.Generator().manual_seed(k)), k, t_cache)
    return CachedTopK(vocab_size=V)(topk_ids=ids, topk_logprobs=logprobs, tail_mass=tail, temperature=t_cache)


def test_a_cached_teacher_itself_at_another_temperature_is_refused():
    student = ModelOutput(logits=torch.randn(2, 3, V))
    batch = {"loss_mask": torch.ones(2, 3, dtype=torch.bool)}
    with pytest.raises(ConfigError, match=r"ForwardKL.temperature: 2.0, but the teacher is a top-4 cache "
                                          r"\(of V = 8\) written at temperature 1.0"):
        ForwardKL(temperature=2.0).gather(student, cached_output(4, 1.0), batch)
    for term, teacher in ((ForwardKL(temperature=2.0), cached_output(4, 2.0)),  # T = T_c
                          (ForwardKL(temperature=2.0), cached_output(V, 1.0)),  # k = V: exact at any T
                          (GeneralizedJSD(temperature=1.0), cached_output(4, 1.0))):
        inputs = term.gather(student, teacher, batch)
        assert torch.isfinite(term(**inputs))


def test_a_cached_member_read_through_teachers_source_is_checked():
    member = cached_output(4, 1.0)
    teacher = ModelOutput(logits=None, features={"b.logits": member.logits,
                                                 **{f"b.{k}": v for k, v in member.features.items()}})
    student = ModelOutput(logits=torch.randn(2, 3, V))
    term = GeneralizedJSD(temperature=0.5, sources={"teacher_logits": "teachers.b.logits"})
    with pytest.raises(ConfigError, match=r"GeneralizedJSD.temperature: 0.5, but teacher 'b' is a top-4 cache"):
        term.gather(student, teacher, {"loss_mask": torch.ones(2, 3, dtype=torch.bool)})
    # a live teacher's logits (no cache features) at any temperature are not checked
    live = ModelOutput(logits=torch.randn(2, 3, V))
    assert torch.isfinite(ForwardKL(temperature=3.0)(**ForwardKL(temperature=3.0).gather(student, live, {})))
