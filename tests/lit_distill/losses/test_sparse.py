"""Sparse (top-k + tail) forward KL: float64 direct formula, k = V equals dense, bound, term."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_distill.contracts import ModelOutput
from lit_distill.losses import forward_kl
from lit_distill.losses.sparse import SparseForwardKL, sparse_forward_kl

pytestmark = pytest.mark.usefixtures("one_thread")


def _teacher_topk(teacher_logits: torch.Tensor, k: int, temperature: float = 1.0):
    log_p = torch.log_softmax(teacher_logits / temperature, -1)
    values, ids = log_p.topk(k, dim=-1)
    tail = log_p.scatter(-1, ids, float("-inf")).logsumexp(-1).exp()  # exactly 0 when k = V
    return ids, values, tail


def _direct64(student_logits, ids, log_p, tail, mask, temperature):
    """Written out per position in float64, with q_tail = 1 − Σ_top q."""
    q = torch.softmax(student_logits.double() / temperature, -1)
    total, count = 0.0, 0
    for n in range(q.shape[0]):
        if mask is not None and not mask[n]:
            continue
        count += 1
        q_top = q[n, ids[n]]
        p_top = log_p[n].double().exp()
        value = (p_top * (log_p[n].double() - q_top.log())).sum()
        t = tail[n].double()
        if t > 0:
            value = value + t * (t.log() - (1 - q_top.sum()).log())
        total = total + value
    return total / max(count, 1) * temperature**2


def test_matches_float64_direct_formula_with_mask_and_temperature():
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(12, 30, generator=gen, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(12, 30, generator=gen, dtype=torch.float64) * 2
    ids, log_p, tail = _teacher_topk(teacher, 5, temperature=2.0)
    mask = torch.arange(12) % 4 != 1
    value = sparse_forward_kl(student, ids, log_p, tail, mask, temperature=2.0)
    direct = _direct64(student, ids, log_p, tail, mask, 2.0)
    torch.testing.assert_close(value, direct, rtol=1e-10, atol=1e-12)
    g_value, = torch.autograd.grad(value, student)
    g_direct, = torch.autograd.grad(direct, student)
    torch.testing.assert_close(g_value, g_direct, rtol=1e-9, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 8), v=st.integers(2, 30), temperature=st.sampled_from([0.5, 1.0, 3.0]),
       seed=st.integers(0, 10_000), masked=st.booleans())
def test_k_equal_v_is_the_dense_forward_kl(n, v, temperature, seed, masked):
    gen = torch.Generator().manual_seed(seed)
    student = (torch.randn(n, v, generator=gen) * 3).requires_grad_()
    teacher = torch.randn(n, v, generator=gen) * 3
    mask = (torch.rand(n, generator=gen) > 0.3) if masked else None
    ids, log_p, _ = _teacher_topk(teacher, v, temperature)
    tail = torch.zeros(n)  # every token is in the top k
    sparse = sparse_forward_kl(student, ids, log_p, tail, mask, temperature)
    dense = forward_kl(student, teacher, mask, temperature)
    torch.testing.assert_close(sparse, dense, rtol=1e-5, atol=1e-6)
    g_sparse, = torch.autograd.grad(sparse, student)
    g_dense, = torch.autograd.grad(dense, student)
    assert torch.isfinite(g_sparse).all()
    torch.testing.assert_close(g_sparse, g_dense, rtol=1e-4, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 20), seed=st.integers(0, 10_000))
def test_lower_bound_of_dense_kl_and_zero_when_student_equals_teacher(k, seed):
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(6, 20, generator=gen, dtype=torch.float64) * 2
    teacher = torch.randn(6, 20, generator=gen, dtype=torch.float64) * 2
    ids, log_p, tail = _teacher_topk(teacher, k)
    sparse = sparse_forward_kl(student, ids, log_p, tail)
    dense = forward_kl(student, teacher)
    assert -1e-12 <= sparse.item() <= dense.item() + 1e-12
    same = sparse_forward_kl(teacher, ids, log_p, tail)
    assert abs(same.item()) < 1e-10


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(1)
    student = torch.randn(4, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    ids, log_p, tail = _teacher_topk(torch.randn(4, 9, generator=gen, dtype=torch.float64), 3)
    mask = torch.tensor([True, False, True, True])
    assert torch.autograd.gradcheck(lambda s: sparse_forward_kl(s, ids, log_p, tail, mask, 1.5), (student,))


def test_half_precision_cache_tensors_and_garbage_in_masked_rows():
    gen = torch.Generator().manual_seed(2)
    student = torch.randn(2, 5, 40, generator=gen, requires_grad=True)
    ids, log_p, tail = _teacher_topk(torch.randn(2, 5, 40, generator=gen), 8)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    ids16, log_p16 = ids.to(torch.uint16), log_p.half()
    log_p16[1, 3:] = float("nan")
    tail_bad = tail.clone()
    tail_bad[1, 3:] = float("inf")
    value = sparse_forward_kl(student, ids16, log_p16, tail_bad, mask)
    reference = sparse_forward_kl(student, ids, log_p16.float().nan_to_num(0.0), tail, mask)
    torch.testing.assert_close(value, reference)
    grad, = torch.autograd.grad(value, student)
    assert torch.isfinite(grad).all() and (grad[1, 3:] == 0).all()
    none_valid = sparse_forward_kl(student, ids, log_p, tail, torch.zeros(2, 5, dtype=torch.bool))
    assert none_valid.item() == 0.0


def test_bad_shapes_raise():
    student = torch.randn(3, 10)
    ids, log_p, tail = _teacher_topk(torch.randn(3, 10), 4)
    with pytest.raises(ValueError, match="topk_logprobs"):
        sparse_forward_kl(student, ids, log_p[:, :3], tail)
    with pytest.raises(ValueError, match="tail_mass"):
        sparse_forward_kl(student, ids, log_p, tail[:2])
    with pytest.raises(ValueError, match="exceeds"):
        sparse_forward_kl(student[:, :2], ids[:, :3].clamp_max(1), log_p[:, :3], tail)
    with pytest.raises(ValueError, match="temperature"):
        sparse_forward_kl(student, ids, log_p, tail, temperature=-1.0)


def test_term_reads_the_batch_and_needs_no_teacher():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 16, generator=gen)
    ids, log_p, tail = _teacher_topk(torch.randn(2, 4, 16, generator=gen), 4)
    batch = {"teacher_topk_ids": ids, "teacher_topk_logprobs": log_p, "teacher_tail_mass": tail,
             "loss_mask": torch.ones(2, 4, dtype=torch.bool)}
    term = SparseForwardKL(temperature=1.0)
    assert not term.reads_teacher
    value = term(**term.gather(ModelOutput(logits=logits), None, batch))
    torch.testing.assert_close(value, sparse_forward_kl(logits, ids, log_p, tail))


def test_term_refuses_a_cache_written_at_another_temperature():
    from lit_distill.errors import ConfigError

    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 8, generator=gen)
    ids, log_p, tail = _teacher_topk(torch.randn(2, 3, 8, generator=gen) / 2.0, 8)
    batch = {"teacher_topk_ids": ids, "teacher_topk_logprobs": log_p, "teacher_tail_mass": tail,
             "loss_mask": torch.ones(2, 3, dtype=torch.bool), "teacher_temperature": 2.0}
    ok = SparseForwardKL(temperature=2.0)
    value = ok(**ok.gather(ModelOutput(logits=logits), None, batch))
    torch.testing.assert_close(value, sparse_forward_kl(logits, ids, log_p, tail, temperature=2.0))
    wrong = SparseForwardKL(temperature=1.0)
    with pytest.raises(ConfigError, match=r"SparseForwardKL.temperature: 1, but the cache was written at 2"):
        wrong(**wrong.gather(ModelOutput(logits=logits), None, batch))


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 12), chunk=st.integers(1, 13), k=st.integers(1, 10), seed=st.integers(0, 10_000),
       masked=st.booleans())
def test_chunked_path_gives_the_same_value_and_gradient(n, chunk, k, seed, masked):
    gen = torch.Generator().manual_seed(seed)
    student = (torch.randn(n, 10, generator=gen) * 2).requires_grad_()
    ids, log_p, tail = _teacher_topk(torch.randn(n, 10, generator=gen) * 2, k)
    mask = (torch.rand(n, generator=gen) > 0.3) if masked else None
    one_shot = sparse_forward_kl(student, ids, log_p, tail, mask, 2.0)
    chunked = sparse_forward_kl(student, ids, log_p, tail, mask, 2.0, chunk_size=chunk)
    torch.testing.assert_close(chunked, one_shot, rtol=1e-6, atol=1e-7)
    g_one, = torch.autograd.grad(one_shot, student)
    g_chunk, = torch.autograd.grad(chunked, student)
    torch.testing.assert_close(g_chunk, g_one, rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        torch.testing.assert_close(sparse_forward_kl(student, ids, log_p, tail, mask, 2.0, chunk_size=chunk),
                                   one_shot.detach(), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="chunk_size"):
        sparse_forward_kl(student, ids, log_p, tail, chunk_size=0)
