"""FeatureMSE against a direct float64 computation; projector and width errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_distill.errors import ConfigError
from lit_distill.losses.feature import FeatureMSE, feature_mse


def reference(s, t, mask, normalize):
    s, t = s.double(), t.double()
    if normalize:
        s, t = s / s.norm(dim=-1, keepdim=True), t / t.norm(dim=-1, keepdim=True)
    total, count = 0.0, 0
    for idx in itertools.product(*(range(k) for k in s.shape[:-1])):
        if mask is None or bool(mask[idx]):
            total += float(((s[idx] - t[idx]) ** 2).sum()) / s.shape[-1]
            count += 1
    return total / max(count, 1)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 3), n=st.integers(1, 5), d=st.integers(1, 6), normalize=st.booleans(),
       masked=st.booleans(), seed=st.integers(0, 1000))
def test_feature_mse_matches_the_definition(b, n, d, normalize, masked, seed):
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(b, n, d, generator=g), torch.randn(b, n, d, generator=g)
    mask = torch.rand(b, n, generator=g) > 0.4 if masked else None
    assert float(feature_mse(s, t, mask, normalize)) == pytest.approx(reference(s, t, mask, normalize), rel=1e-5,
                                                                       abs=1e-7)


def test_projector_maps_to_the_teacher_width_and_is_trained():
    term = FeatureMSE(student_dim=4, teacher_dim=6)
    s = torch.randn(2, 3, 4, requires_grad=True)
    t = torch.randn(2, 3, 6, requires_grad=True)
    loss = term(s, t)
    loss.backward()
    expected = feature_mse(s @ term.projector.weight.T, t)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert term.projector.weight.grad is not None and t.grad is None


def test_mismatched_widths_without_a_projector_name_the_fix():
    with pytest.raises(ConfigError, match="set student_dim: 4 and teacher_dim: 6"):
        FeatureMSE()(torch.randn(2, 3, 4), torch.randn(2, 3, 6))
    with pytest.raises(ConfigError, match="projector maps 5 -> 6"):
        FeatureMSE(student_dim=5, teacher_dim=6)(torch.randn(2, 3, 4), torch.randn(2, 3, 6))
    with pytest.raises(ConfigError, match="both student_dim and teacher_dim"):
        FeatureMSE(student_dim=5)
