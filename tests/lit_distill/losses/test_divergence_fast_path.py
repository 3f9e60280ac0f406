"""The closed-form student gradient (teacher without gradient) equals autograd's, for every divergence.

With a teacher that needs no gradient (the distillation step), the divergences return their
gradient from a closed form (``_AnalyticSum``); with a teacher gradient they go through
autograd. Both must give the same value and the same student gradient, in float64, for every
divergence, temperature, mask, chunk size and ``-inf`` vocabulary entries.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_distill.losses import divergences
from lit_distill.losses.taid import taid_cross_entropy

from .test_divergences import CASE_IDS, CASES, call


def both_paths(name, kw, student, teacher, mask, temperature, chunk_size):
    """(value, student grad) through the fast path and through autograd (teacher with grad)."""
    results = []
    for teacher_grad in (False, True):
        s = student.clone().requires_grad_()
        t = teacher.clone().requires_grad_(teacher_grad)
        value = call(name, s, t, mask, temperature, chunk_size, **kw)
        value.backward()
        results.append((value.detach(), s.grad))
    return results


@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 6), vocab=st.integers(2, 12), temperature=st.sampled_from([0.5, 1.0, 2.0, 4.0]),
       chunk=st.sampled_from([None, 1, 4]), seed=st.integers(0, 2**16), masked=st.booleans(),
       banned=st.booleans())
def test_fast_path_equals_autograd(name, kw, rows, vocab, temperature, chunk, seed, masked, banned):
    if name == "total_variation":
        temperature = 1.0
    g = torch.Generator().manual_seed(seed)
    student = 3 * torch.randn(rows, vocab, generator=g, dtype=torch.float64)
    teacher = 3 * torch.randn(rows, vocab, generator=g, dtype=torch.float64)
    if banned:  # the same entries -inf on both sides (a masked vocabulary)
        out = torch.rand(rows, vocab, generator=g) < 0.3
        out[:, 0] = False
        student, teacher = (x.masked_fill(out, -math.inf) for x in (student, teacher))
    mask = (torch.rand(rows, generator=g) < 0.7) if masked else None
    (fast_value, fast_grad), (ref_value, ref_grad) = both_paths(name, kw, student, teacher, mask, temperature, chunk)
    torch.testing.assert_close(fast_value, ref_value, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast_grad, ref_grad, rtol=1e-8, atol=1e-12)
    if mask is not None:
        assert torch.all(fast_grad[~mask] == 0)


@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_gradcheck_student_only(name, kw):
    g = torch.Generator().manual_seed(1)
    student = torch.randn(3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 6, generator=g, dtype=torch.float64)
    mask = torch.tensor([True, False, True])
    temperature = 1.0 if name == "total_variation" else 2.0
    assert torch.autograd.gradcheck(lambda s: call(name, s, teacher, mask, temperature, **kw), (student,))


def test_float32_and_bfloat16_students_match_float64():
    g = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(2, 5, 64, generator=g), torch.randn(2, 5, 64, generator=g)
    mask = torch.rand(2, 5, generator=g) < 0.8
    ref = student.double().requires_grad_()
    divergences.forward_kl(ref, teacher.double(), mask, temperature=2.0).backward()
    for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2)):
        s = student.to(dtype).clone().requires_grad_()
        value = divergences.forward_kl(s, teacher.to(dtype), mask, temperature=2.0)
        value.backward()
        assert value.dtype == torch.float32 and s.grad.dtype == dtype
        torch.testing.assert_close(s.grad.double(), ref.grad, rtol=tol, atol=tol * 1e-2)


def test_taid_fast_path_equals_autograd():
    g = torch.Generator().manual_seed(3)
    student = torch.randn(4, 9, generator=g, dtype=torch.float64)
    teacher = torch.randn(4, 9, generator=g, dtype=torch.float64)
    mask = torch.tensor([True, True, False, True])
    grads = []
    for teacher_grad in (False, True):
        s, t = student.clone().requires_grad_(), teacher.clone().requires_grad_(teacher_grad)
        taid_cross_entropy(s, t, 0.3, mask).backward()
        grads.append(s.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


def test_fast_path_supports_retained_graphs():
    """A graph may be differentiated twice (retain_graph), e.g. by GradientShare before the step."""
    student = torch.randn(4, 5, requires_grad=True)
    value = divergences.reverse_kl(student, torch.randn(4, 5))
    (first,) = torch.autograd.grad(value, student, retain_graph=True)
    value.backward()
    torch.testing.assert_close(student.grad, first)


@settings(max_examples=30, deadline=None)
@given(rows=st.lists(st.booleans(), min_size=1, max_size=12), vocab=st.integers(1, 9), value=st.floats(-5, 5))
def test_fill_rows_equals_a_broadcast_masked_fill(rows, vocab, value):
    """The CPU row fill writes exactly the selected rows, NaN and inf entries included."""
    x = torch.randn(len(rows), vocab, dtype=torch.float64)
    x[0, 0], x[-1, -1] = math.nan, -math.inf
    chosen = torch.tensor(rows)
    expected = x.masked_fill(chosen.unsqueeze(-1), value)
    divergences._fill_rows(x, chosen, value)
    torch.testing.assert_close(x, expected, rtol=0, atol=0, equal_nan=True)
