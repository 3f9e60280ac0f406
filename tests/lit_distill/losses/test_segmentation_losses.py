"""Dense segmentation losses against float64 direct formulas, plus properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_distill.errors import ConfigError
from lit_distill.losses import (
    ChannelWiseDistillation,
    PixelCrossEntropy,
    PixelKD,
    channel_wise_distillation,
    pixel_cross_entropy,
    pixel_kd,
)


def direct_cwd(s, t, T):
    """T² / (B·C) · Σ_b Σ_c Σ_i p_t log(p_t / p_s), softmax over positions, with explicit loops."""
    s, t = s.double(), t.double()
    B, C = s.shape[:2]
    total = 0.0
    for b in range(B):
        for c in range(C):
            zs, zt = s[b, c].flatten() / T, t[b, c].flatten() / T
            ps = torch.exp(zs) / torch.exp(zs).sum()
            pt = torch.exp(zt) / torch.exp(zt).sum()
            total += float((pt * torch.log(pt / ps)).sum())
    return total * T * T / (B * C)


def direct_pixel_kd(s, t, T, mask=None):
    s, t = s.double(), t.double()
    B, C, H, W = s.shape
    per_image = []
    for b in range(B):
        acc, count = 0.0, 0
        for i in range(H):
            for j in range(W):
                if mask is not None and not mask[b, i, j]:
                    continue
                zs, zt = s[b, :, i, j] / T, t[b, :, i, j] / T
                ps = torch.exp(zs) / torch.exp(zs).sum()
                pt = torch.exp(zt) / torch.exp(zt).sum()
                acc += float((pt * torch.log(pt / ps)).sum())
                count += 1
        per_image.append(acc / max(count, 1))
    return sum(per_image) / B * T * T


def direct_pixel_ce(logits, labels, ignore):
    logits = logits.double()
    B, C, H, W = logits.shape
    per_image = []
    for b in range(B):
        acc, count = 0.0, 0
        for i in range(H):
            for j in range(W):
                y = int(labels[b, i, j])
                if y == ignore:
                    continue
                z = logits[b, :, i, j]
                acc += float(torch.log(torch.exp(z).sum()) - z[y])
                count += 1
        per_image.append(acc / max(count, 1))
    return sum(per_image) / B


dense_shapes = st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(1, 4))


@settings(max_examples=12, deadline=None)
@given(shape=dense_shapes, T=st.sampled_from([0.5, 1.0, 4.0]), seed=st.integers(0, 10_000))
def test_cwd_matches_direct_formula(shape, T, seed):
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(shape, generator=g) * 3, torch.randn(shape, generator=g) * 3
    assert channel_wise_distillation(s, t, T).item() == pytest.approx(direct_cwd(s, t, T), rel=1e-4, abs=1e-5)
    # float64 stays float64 and is exact to rounding
    value = channel_wise_distillation(s.double(), t.double(), T)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(direct_cwd(s, t, T), rel=1e-10, abs=1e-12)


@settings(max_examples=12, deadline=None)
@given(shape=dense_shapes, seed=st.integers(0, 10_000))
def test_cwd_properties(shape, seed):
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    assert channel_wise_distillation(s, t).item() >= -1e-6
    assert channel_wise_distillation(t, t).item() == pytest.approx(0.0, abs=1e-6)
    # a constant added to a whole channel does not change its spatial distribution
    shift = torch.randn(shape[0], shape[1], 1, 1, generator=g) * 5
    assert channel_wise_distillation(s + shift, t).item() == pytest.approx(
        channel_wise_distillation(s, t).item(), rel=1e-4, abs=1e-5)


@settings(max_examples=10, deadline=None)
@given(shape=dense_shapes, T=st.sampled_from([1.0, 2.0, 4.0]), seed=st.integers(0, 10_000),
       masked=st.booleans())
def test_pixel_kd_matches_direct_formula(shape, T, seed, masked):
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(shape, generator=g) * 2, torch.randn(shape, generator=g) * 2
    mask = torch.rand(shape[0], *shape[2:], generator=g) > 0.4 if masked else None
    expected = direct_pixel_kd(s, t, T, mask)
    assert pixel_kd(s, t, T, mask).item() == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert pixel_kd(t, t, T, mask).item() == pytest.approx(0.0, abs=1e-6)


@settings(max_examples=10, deadline=None)
@given(shape=dense_shapes, seed=st.integers(0, 10_000))
def test_pixel_cross_entropy_matches_direct_formula(shape, seed):
    g = torch.Generator().manual_seed(seed)
    B, C, H, W = shape
    logits = torch.randn(shape, generator=g) * 2
    labels = torch.randint(0, C, (B, H, W), generator=g)
    labels[torch.rand(B, H, W, generator=g) < 0.3] = 255
    assert pixel_cross_entropy(logits, labels).item() == pytest.approx(
        direct_pixel_ce(logits, labels, 255), rel=1e-5, abs=1e-6)


def test_fully_ignored_image_contributes_zero():
    logits = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    labels[1] = 255
    expected = pixel_cross_entropy(logits[:1], labels[:1]).item() / 2
    assert pixel_cross_entropy(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_losses_are_invariant_to_micro_batching():
    """Per-image means weighted by image counts (DistillationModule's scheme) equal the full batch."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 4, 5, 5, generator=g), torch.randn(6, 4, 5, 5, generator=g)
    labels = torch.randint(0, 4, (6, 5, 5), generator=g)
    labels[:, 0] = 255
    for fn, args in ((channel_wise_distillation, (s, t)), (pixel_kd, (s, t)),
                     (pixel_cross_entropy, (s, labels))):
        full = fn(*args).item()
        chunks = [(0, 1), (1, 4), (4, 6)]
        accumulated = sum(fn(*(a[i:j] for a in args)).item() * (j - i) for i, j in chunks) / 6
        assert accumulated == pytest.approx(full, rel=1e-6), fn.__name__


def test_terms_detach_the_target_and_read_their_sources():
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    t = torch.randn(2, 3, 4, 4, requires_grad=True)
    for term in (ChannelWiseDistillation(temperature=4.0), PixelKD(temperature=2.0)):
        term(s, t).backward()
        assert s.grad is not None and t.grad is None
        s.grad = None
    term = ChannelWiseDistillation(sources={"teacher_logits": "student.features.path2_logits"})
    assert term.sources == {"student_logits": "student.logits", "teacher_logits": "student.features.path2_logits"}
    assert not term.reads_teacher
    assert PixelCrossEntropy().sources == {"logits": "student.logits", "labels": "batch.labels"}
    assert math.isclose(ChannelWiseDistillation(weight=3.0).weight, 3.0)


def test_bad_inputs_fail_clearly():
    with pytest.raises(ConfigError, match="temperature"):
        ChannelWiseDistillation(temperature=0.0)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        channel_wise_distillation(torch.randn(2, 3, 4), torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="labels"):
        pixel_cross_entropy(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 5, dtype=torch.long))
