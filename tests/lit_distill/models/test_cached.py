"""CachedTopK: dense logits from cached top-k rows, against a float64 computation from the teacher's logits."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lit_distill.cache import sparse_teacher
from lit_distill.errors import ConfigError
from lit_distill.models import CachedTopK, MultiModel
from lit_distill.models.cached import LOG_ZERO, dense_logprobs

V = 11


def direct(z: torch.Tensor, k: int, t_cache: float) -> torch.Tensor:
    """Float64, position by position: T_c · (log p at the top k, log(tail / (V − k)) elsewhere)."""
    out = torch.empty(z.shape, dtype=torch.float64)
    for index in torch.cartesian_prod(*(torch.arange(n) for n in z.shape[:-1])):
        p = torch.softmax(z[tuple(index)].double() / t_cache, -1)
        top = p.topk(k).indices
        rest = torch.ones(V, dtype=torch.bool)
        rest[top] = False
        row = torch.full((V,), math.log((1 - p[top].sum()) / (V - k)) if k < V else 0.0, dtype=torch.float64)
        row[top] = p[top].log()
        out[tuple(index)] = t_cache * row
    return out


@pytest.mark.parametrize("k", [1, 4, V])
@pytest.mark.parametrize("t_cache", [1.0, 2.5])
def test_logits_match_the_float64_computation(k, t_cache):
    z = 3 * torch.randn(2, 3, V, generator=torch.Generator().manual_seed(k))
    ids, logprobs, tail = sparse_teacher(z, k, t_cache)
    out = CachedTopK(vocab_size=V)(topk_ids=ids, topk_logprobs=logprobs, tail_mass=tail, temperature=t_cache)
    assert out.logits.dtype == torch.float32 and out.logits.shape == (2, 3, V)
    torch.testing.assert_close(out.logits.double(), direct(z, k, t_cache), rtol=1e-5, atol=1e-5)
    assert out.features == {"cache_temperature": t_cache, "cache_top_k": k}
    # at the cache's temperature the softmax is the cached distribution: top-k probs, uniform tail
    p = torch.softmax(out.logits.double() / t_cache, -1)
    torch.testing.assert_close(p.gather(-1, ids), logprobs.double().exp(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 3, dtype=torch.float64))
    if k == V:  # the teacher's logits up to a constant per position
        shift = out.logits - z
        torch.testing.assert_close(shift, shift[..., :1].expand_as(shift), rtol=0, atol=1e-5)


def test_zero_probabilities_are_finite_and_exactly_zero():
    ids = torch.tensor([[[3, 0], [0, 1]]])  # a valid row, then a padded row (ids 0..k-1, log-probs 0)
    logprobs = torch.tensor([[[0.0, float("-inf")], [0.0, 0.0]]], dtype=torch.float16)
    tail = torch.zeros(1, 2)
    logits = CachedTopK(vocab_size=5)(topk_ids=ids, topk_logprobs=logprobs, tail_mass=tail, temperature=2.0).logits
    assert torch.isfinite(logits).all()
    expected = torch.full((1, 2, 5), LOG_ZERO)
    expected[0, 0, 3] = 0.0
    expected[0, 1, :2] = 0.0
    assert torch.equal(logits, expected)
    p = torch.softmax(logits, -1)
    assert torch.equal(p[0, 0], torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0]))  # exactly 0, so 0 · log p = 0
    assert not torch.isnan(p * torch.log_softmax(logits, -1)).any()
    # the raw dense form keeps log 0 = -inf; the adapter floors it
    assert torch.isneginf(dense_logprobs(ids, logprobs, tail, 5)[0, 0, 0])


def test_a_member_of_a_multi_model_next_to_a_live_one():
    live = nn.Linear(4, V)
    teacher = MultiModel({"a": live, "b": CachedTopK(vocab_size=V)},
                         inputs={"a": ["x"], "b": {"topk_ids": "b_topk_ids", "topk_logprobs": "b_topk_logprobs",
                                                   "tail_mass": "b_tail_mass", "temperature": "b_temperature"}})
    assert {"b.logits", "b.cache_temperature", "b.cache_top_k"} <= teacher.output_spec().features
    assert teacher.module["b"].output_spec().closed  # a typo in a source naming b fails before training
    z = torch.randn(2, 3, V)
    ids, logprobs, tail = sparse_teacher(z, 5, 1.0)
    x = torch.randn(2, 3, 4)
    out = teacher(x=x, b_topk_ids=ids, b_topk_logprobs=logprobs, b_tail_mass=tail, b_temperature=1.0)
    torch.testing.assert_close(out.features["a.logits"], live(x))
    assert out.features["b.logits"].shape == (2, 3, V) and out.features["b.cache_top_k"] == 5


def test_bad_inputs_are_one_line_config_errors(tmp_path):
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="vocab_size"):
            CachedTopK(vocab_size=bad)
    member = CachedTopK(vocab_size=4)
    ids, logprobs, tail = sparse_teacher(torch.randn(2, 6), 3, 1.0)
    with pytest.raises(ConfigError, match=r"got \['tail_mass', 'topk_ids', 'topk_logprobs'\]; map them"):
        member(topk_ids=ids, topk_logprobs=logprobs, tail_mass=tail)
    with pytest.raises(ConfigError, match=r"got \['attention_mask', 'b_topk_ids'\]"):  # a member left unmapped
        member(b_topk_ids=ids, attention_mask=tail)
    with pytest.raises(ConfigError, match="> 0"):
        member(topk_ids=ids, topk_logprobs=logprobs, tail_mass=tail, temperature=0.0)
    with pytest.raises(ConfigError, match="must be"):
        member(topk_ids=ids, topk_logprobs=logprobs[:, :2], tail_mass=tail, temperature=1.0)
    with pytest.raises(ConfigError, match="k = 3 entries per row, more than vocab_size = 2"):
        CachedTopK(vocab_size=2)(topk_ids=ids, topk_logprobs=logprobs, tail_mass=tail, temperature=1.0)
    member.export(str(tmp_path / "b"))
    assert (tmp_path / "b" / "cached_teacher.json").exists()


def test_an_id_beyond_vocab_size_is_a_one_line_error():
    ids = torch.tensor([[[0, 7]]])
    with pytest.raises(ConfigError, match="token id 7, beyond vocab_size = 5"):
        CachedTopK(5)(topk_ids=ids, topk_logprobs=torch.log(torch.tensor([[[0.5, 0.4]]])),
                      tail_mass=torch.tensor([[0.1]]), temperature=1.0)


@pytest.mark.parametrize("k", [2, V])
@pytest.mark.parametrize("t_cache", [1.0, 2.5])
def test_a_classifiers_rows_per_sample_give_its_b_c_logits(k, t_cache):
    """A sequence classifier's cache: one row per sample, no position axis ([B, k] -> logits [B, C], C = V)."""
    from lit_distill.losses import ForwardKL

    z = 3 * torch.randn(4, V, generator=torch.Generator().manual_seed(k))
    ids, logprobs, tail = sparse_teacher(z, k, t_cache)
    out = CachedTopK(vocab_size=V)(topk_ids=ids, topk_logprobs=logprobs, tail_mass=tail, temperature=t_cache,
                                   vocab_size=V)
    assert out.logits.shape == (4, V) and out.features == {"cache_temperature": t_cache, "cache_top_k": k}
    torch.testing.assert_close(out.logits.double(), direct(z[None], k, t_cache)[0], rtol=1e-5, atol=1e-5)
    if k == V:  # every class cached: the loss is the live classifier's at any temperature
        student = torch.randn(4, V, generator=torch.Generator().manual_seed(9))
        for t in (0.5, 1.0, t_cache, 3.0):
            kd = ForwardKL(temperature=t)
            torch.testing.assert_close(kd(student, out.logits), kd(student, z), rtol=1e-5, atol=1e-6)


def test_the_caches_own_class_count_is_checked_when_given():
    ids, logprobs, tail = sparse_teacher(torch.randn(3, 2), 2, 1.0)  # a 2-class classifier's cache
    rows = {"topk_ids": ids, "topk_logprobs": logprobs, "tail_mass": tail, "temperature": 1.0}
    assert CachedTopK(vocab_size=2)(**rows, vocab_size=2).logits.shape == (3, 2)
    # read as 3 classes, the third would silently get probability 0: refused when the cache's V is mapped
    assert torch.equal(CachedTopK(vocab_size=3)(**rows).logits[:, 2], torch.full((3,), LOG_ZERO))
    with pytest.raises(ConfigError, match=r"^CachedTopK.vocab_size: 3, but the cache was written with V = 2 [^\n]*$"):
        CachedTopK(vocab_size=3)(**rows, vocab_size=2)
