"""Tests of the functional logit divergences against float64 references written from formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lit_distill import losses
from lit_distill.losses import (
    forward_kl,
    generalized_jsd,
    reverse_kl,
    skew_kl,
    skew_reverse_kl,
    total_variation,
)

PROPERTY = settings(max_examples=40, deadline=None, database=None)

# (function name, extra keyword arguments); every public divergence, with non-default parameters.
CASES = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("generalized_jsd", {"beta": 0.5}),
    ("generalized_jsd", {"beta": 0.2}),
    ("skew_kl", {"alpha": 0.1}),
    ("skew_kl", {"alpha": 0.0}),
    ("skew_reverse_kl", {"alpha": 0.3}),
    ("total_variation", {}),
]
CASE_IDS = [f"{name}{''.join(f'-{k}={v}' for k, v in kw.items())}" for name, kw in CASES]
# (name, kw, temperature) triples; total_variation has no temperature.
TEMPERATURE_CASES = [
    pytest.param(name, kw, T, id=f"{cid}-T={T}")
    for (name, kw), cid in zip(CASES, CASE_IDS, strict=True)
    for T in (0.5, 1.0, 2.0, 4.0)
    if name != "total_variation" or T == 1.0
]


def call(name, student, teacher, mask=None, temperature=1.0, chunk_size=None, **kw):
    """Call a divergence by name; total_variation takes no temperature."""
    fn = getattr(losses, name)
    if name == "total_variation":
        assert temperature == 1.0
        return fn(student, teacher, mask, chunk_size=chunk_size)
    return fn(student, teacher, mask, temperature=temperature, chunk_size=chunk_size, **kw)


# --------------------------------------------------------------------------- float64 reference


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z[np.isfinite(z)].max())  # exp(-inf) = 0
    return e / e.sum()


def _kl(a: np.ndarray, b: np.ndarray) -> float:
    """KL(a ‖ b) = Σ a log(a / b), with 0 log 0 = 0, by explicit loop."""
    total = 0.0
    for ai, bi in zip(a.tolist(), b.tolist(), strict=True):
        if ai > 0.0:
            total += ai * math.log(ai / bi)
    return total


def _position(name: str, p: np.ndarray, q: np.ndarray, kw: dict) -> float:
    if name == "forward_kl":
        return _kl(p, q)
    if name == "reverse_kl":
        return _kl(q, p)
    if name == "generalized_jsd":
        b = kw["beta"]
        m = b * p + (1 - b) * q
        return b * _kl(p, m) + (1 - b) * _kl(q, m)
    if name == "skew_kl":
        return _kl(p, kw["alpha"] * p + (1 - kw["alpha"]) * q)
    if name == "skew_reverse_kl":
        return _kl(q, kw["alpha"] * q + (1 - kw["alpha"]) * p)
    assert name == "total_variation"
    return 0.5 * float(np.abs(p - q).sum())


def reference(name, student, teacher, mask=None, temperature=1.0, **kw) -> float:
    """Mean over valid positions of the divergence, times T² (not for TVD), in float64."""
    s = torch.as_tensor(student).detach().double().numpy()
    t = torch.as_tensor(teacher).detach().double().numpy()
    s, t = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
    valid = np.ones(len(s), bool) if mask is None else torch.as_tensor(mask).numpy().reshape(-1)
    values = [_position(name, _softmax(t[i] / temperature), _softmax(s[i] / temperature), kw)
              for i in range(len(s)) if valid[i]]
    mean = sum(values) / len(values) if values else 0.0
    return mean if name == "total_variation" else mean * temperature**2


# --------------------------------------------------------------------------- hypothesis inputs


@st.composite
def logit_pairs(draw, min_vocab=2):
    """Student and teacher float32 logits ``[B, L, V]``, a bool mask ``[B, L]`` with >= 1 True."""
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(min_vocab, 12)))
    values = st.floats(-30, 30, width=32, allow_subnormal=False)
    student = torch.from_numpy(draw(hnp.arrays(np.float32, shape, elements=values)))
    teacher = torch.from_numpy(draw(hnp.arrays(np.float32, shape, elements=values)))
    mask = torch.from_numpy(draw(hnp.arrays(np.bool_, shape[:2])))
    mask.view(-1)[draw(st.integers(0, mask.numel() - 1))] = True
    return student, teacher, mask


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(("name", "kw", "temperature"), TEMPERATURE_CASES)
def test_matches_float64_reference(name, kw, temperature):
    g = torch.Generator().manual_seed(0)
    student = 3 * torch.randn(2, 5, 17, generator=g)
    teacher = 3 * torch.randn(2, 5, 17, generator=g)
    mask = torch.rand(2, 5, generator=g) < 0.6
    mask[0, 0] = True
    for m in (mask, None):
        expected = reference(name, student, teacher, m, temperature, **kw)
        got = call(name, student, teacher, m, temperature, **kw)
        assert got.dtype == torch.float32 and got.shape == ()
        assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
        # float64 inputs are computed (and returned) in float64: much tighter agreement.
        got64 = call(name, student.double(), teacher.double(), m, temperature, **kw)
        assert got64.dtype == torch.float64
        assert got64.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_hand_computed_v2():
    # p = softmax([0, 0]) = (1/2, 1/2); q = softmax([0, ln 3]) = (1/4, 3/4).
    teacher = torch.tensor([[0.0, 0.0], [float("nan"), 5.0]])
    student = torch.tensor([[0.0, math.log(3.0)], [1e30, float("inf")]])
    mask = torch.tensor([True, False])  # the second row is garbage and must be ignored
    # KL(p‖q) = 1/2 ln(2) + 1/2 ln(2/3) = 1/2 ln(4/3)
    fkl = 0.5 * math.log(4 / 3)
    assert forward_kl(student, teacher, mask).item() == pytest.approx(fkl, rel=1e-6)
    # KL(q‖p) = 1/4 ln(1/2) + 3/4 ln(3/2)
    assert reverse_kl(student, teacher, mask).item() == pytest.approx(
        0.25 * math.log(0.5) + 0.75 * math.log(1.5), rel=1e-6)
    # TVD = 1/2 (|1/2 − 1/4| + |1/2 − 3/4|) = 1/4
    assert total_variation(student, teacher, mask).item() == pytest.approx(0.25, rel=1e-6)
    # M = (3/8, 5/8): JSD = 1/2 [1/2 ln(4/3) + 1/2 ln(4/5)] + 1/2 [1/4 ln(2/3) + 3/4 ln(6/5)]
    jsd = 0.5 * (0.5 * math.log(4 / 3) + 0.5 * math.log(4 / 5)) + 0.5 * (
        0.25 * math.log(2 / 3) + 0.75 * math.log(6 / 5))
    assert generalized_jsd(student, teacher, mask).item() == pytest.approx(jsd, rel=1e-6)
    # Temperature 2 on doubled logits gives the same p, q; the result is scaled by 2² = 4.
    assert forward_kl(2 * student[:1], 2 * teacher[:1], temperature=2.0).item() == pytest.approx(
        4 * fkl, rel=1e-6)


def test_forward_kl_gradient_is_scaled_q_minus_p():
    # d/dz_s [T² · mean KL(p‖q)] = T · (q − p) / n_valid on valid rows, 0 elsewhere.
    g = torch.Generator().manual_seed(1)
    student = torch.randn(4, 9, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(4, 9, generator=g, dtype=torch.float64)
    mask = torch.tensor([True, False, True, True])
    T = 3.0
    forward_kl(student, teacher, mask, temperature=T).backward()
    expected = T * (torch.softmax(student / T, -1) - torch.softmax(teacher / T, -1)) / 3
    expected[1] = 0
    torch.testing.assert_close(student.grad, expected.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_gradcheck_float64(name, kw):
    g = torch.Generator().manual_seed(2)
    student = torch.randn(3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([True, False, True])
    assert torch.autograd.gradcheck(lambda s, t: call(name, s, t, mask, **kw), (student, teacher))


# --------------------------------------------------------------------------- properties


@PROPERTY
@given(data=logit_pairs())
@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_property_matches_reference_and_bounds(name, kw, data):
    student, teacher, mask = data
    value = call(name, student, teacher, mask, **kw)
    expected = reference(name, student, teacher, mask, **kw)
    assert value.item() == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert value.item() >= -1e-6  # non-negative up to float32 rounding
    if name == "total_variation":
        assert value.item() <= 1 + 1e-6
    if name == "generalized_jsd" and kw["beta"] == 0.5:
        assert value.item() <= math.log(2) + 1e-6
    if name.startswith("skew") and kw["alpha"] > 0:
        assert value.item() <= math.log(1 / kw["alpha"]) + 1e-5


@PROPERTY
@given(data=logit_pairs())
@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_property_strictly_positive_when_distributions_differ(name, kw, data):
    student, teacher, mask = data
    assume(reference(name, student, teacher, mask, **kw) > 1e-4)
    assert call(name, student, teacher, mask, **kw).item() > 0


@PROPERTY
@given(data=logit_pairs(), shift=hnp.arrays(np.float32, 12, elements=st.floats(-50, 50, width=32)))
@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_property_zero_for_equal_or_shifted_logits(name, kw, data, shift):
    student, _, mask = data
    assert call(name, student, student.clone(), mask, **kw).abs().item() <= 1e-6
    # softmax is invariant to adding a constant per row
    rows = student.shape[0] * student.shape[1]
    row_shift = torch.from_numpy(shift[:rows]).reshape(*student.shape[:2], 1)
    assert call(name, student, student + row_shift, mask, **kw).abs().item() <= 2e-5


@PROPERTY
@given(data=logit_pairs(), chunk_size=st.sampled_from([None, 1, 3]),
       poison=st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e30, -3e38]))
@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_property_masked_positions_have_no_influence(name, kw, data, poison, chunk_size):
    student, teacher, mask = data
    s1, t1 = student.clone().requires_grad_(), teacher.clone().requires_grad_()
    clean = call(name, s1, t1, mask, chunk_size=chunk_size, **kw)
    clean.backward()
    dirty_s = torch.where(mask.unsqueeze(-1), student, poison).requires_grad_()
    noise = torch.randn_like(teacher) * 1e4
    dirty_t = torch.where(mask.unsqueeze(-1), teacher, noise).requires_grad_()
    dirty = call(name, dirty_s, dirty_t, mask, chunk_size=chunk_size, **kw)
    dirty.backward()
    torch.testing.assert_close(dirty, clean, rtol=0, atol=0)
    for clean_grad, dirty_grad in ((s1.grad, dirty_s.grad), (t1.grad, dirty_t.grad)):
        torch.testing.assert_close(dirty_grad, clean_grad, rtol=0, atol=0)
        assert torch.all(dirty_grad[~mask] == 0)


@PROPERTY
@given(data=logit_pairs(), temperature=st.floats(0.25, 8.0))
@pytest.mark.parametrize(("name", "kw"), CASES[:-1], ids=CASE_IDS[:-1])  # all but total_variation
def test_property_temperature_scaling(name, kw, data, temperature):
    student, teacher, mask = data
    at_t = call(name, student, teacher, mask, temperature, **kw)
    rescaled = call(name, student / temperature, teacher / temperature, mask, 1.0, **kw)
    torch.testing.assert_close(at_t, temperature**2 * rescaled, rtol=1e-5, atol=1e-6)


@PROPERTY
@given(data=logit_pairs(), beta=st.floats(0.05, 0.95))
def test_property_jsd_swaps_with_beta(data, beta):
    student, teacher, mask = data
    symmetric = generalized_jsd(student, teacher, mask), generalized_jsd(teacher, student, mask)
    torch.testing.assert_close(*symmetric, rtol=1e-5, atol=1e-6)
    # more generally JSD_β(p, q) = JSD_{1−β}(q, p)
    torch.testing.assert_close(generalized_jsd(student, teacher, mask, beta=beta),
                               generalized_jsd(teacher, student, mask, beta=1 - beta),
                               rtol=1e-4, atol=1e-6)


@PROPERTY
@given(data=logit_pairs(), temperature=st.floats(0.5, 4.0))
def test_property_skew_with_alpha_zero_is_plain_kl(data, temperature):
    student, teacher, mask = data
    torch.testing.assert_close(skew_kl(student, teacher, mask, temperature, alpha=0.0),
                               forward_kl(student, teacher, mask, temperature))
    torch.testing.assert_close(skew_reverse_kl(student, teacher, mask, temperature, alpha=0.0),
                               reverse_kl(student, teacher, mask, temperature))


# --------------------------------------------------------------------------- -inf vocab entries


@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize(("name", "kw", "temperature"),
                         [p for p in TEMPERATURE_CASES if p.values[2] in (0.5, 1.0)])
def test_neg_inf_vocab_entries(name, kw, temperature, chunk_size):
    g = torch.Generator().manual_seed(3)
    student, teacher = 2 * torch.randn(5, 10, generator=g), 2 * torch.randn(5, 10, generator=g)
    banned = torch.rand(5, 10, generator=g) < 0.4
    banned[:, 0] = False  # keep at least one entry per row
    banned[2] = True
    banned[2, :2] = False  # a row with only two allowed tokens
    student, teacher = (x.masked_fill(banned, -math.inf) for x in (student, teacher))
    s, t = student.clone().requires_grad_(), teacher.clone().requires_grad_()
    value = call(name, s, t, None, temperature, chunk_size, **kw)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(s.grad).all() and torch.isfinite(t.grad).all()
    assert torch.all(s.grad[banned] == 0) and torch.all(t.grad[banned] == 0)
    # reference on the remaining vocabulary only (row by row, banned columns dropped)
    per_row = [reference(name, student[i, ~banned[i]][None], teacher[i, ~banned[i]][None],
                         None, temperature, **kw) for i in range(5)]
    assert value.item() == pytest.approx(sum(per_row) / 5, rel=1e-5, abs=1e-6)


# --------------------------------------------------------------------------- chunked path


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 12, 100])
@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_chunked_matches_unchunked(name, kw, chunk_size):
    g = torch.Generator().manual_seed(4)
    base_s, base_t = 4 * torch.randn(3, 4, 33, generator=g), 4 * torch.randn(3, 4, 33, generator=g)
    mask = torch.rand(3, 4, generator=g) < 0.7
    temperature = 1.0 if name == "total_variation" else 1.5
    results = []
    for size in (None, chunk_size):
        s, t = base_s.clone().requires_grad_(), base_t.clone().requires_grad_()
        value = call(name, s, t, mask, temperature, size, **kw)
        (0.37 * value + s.sum()).backward()  # upstream gradient != 1 and other graph users
        results.append((value.detach(), s.grad, t.grad))
    (v0, gs0, gt0), (v1, gs1, gt1) = results
    torch.testing.assert_close(v1, v0, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gs1, gs0, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gt1, gt0, rtol=1e-5, atol=1e-7)
    # only s.sum() reaches masked rows
    assert torch.all(gs1[~mask] == 1) and torch.any(gs1[mask] != 1)


def test_chunked_teacher_without_grad_and_no_grad_mode():
    g = torch.Generator().manual_seed(5)
    student = torch.randn(7, 11, generator=g, requires_grad=True)
    teacher = torch.randn(7, 11, generator=g)
    full = forward_kl(student, teacher)
    (grad_full,) = torch.autograd.grad(full, student)
    chunked = forward_kl(student, teacher, chunk_size=3)
    (grad_chunked,) = torch.autograd.grad(chunked, student)
    torch.testing.assert_close(chunked, full)
    torch.testing.assert_close(grad_chunked, grad_full)
    with torch.no_grad():
        no_grad = forward_kl(student, teacher, chunk_size=3)
    assert not no_grad.requires_grad
    torch.testing.assert_close(no_grad, full.detach())


def test_chunked_rejects_second_backward():
    # with a teacher gradient the chunked path goes through autograd, one backward per forward
    # (a student-only gradient takes the closed form, which allows more: test_divergence_fast_path)
    student = torch.randn(4, 5, requires_grad=True)
    value = forward_kl(student, torch.randn(4, 5, requires_grad=True), chunk_size=2)
    value.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward pass"):
        value.backward()


# --------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_low_precision_inputs_compute_in_float32(name, kw, chunk_size, dtype):
    g = torch.Generator().manual_seed(6)
    student = (3 * torch.randn(2, 4, 50, generator=g)).to(dtype).requires_grad_()
    teacher = (3 * torch.randn(2, 4, 50, generator=g)).to(dtype)
    mask = torch.tensor([[True, True, False, True], [False, True, True, True]])
    value = call(name, student, teacher, mask, chunk_size=chunk_size, **kw)
    value.backward()
    assert value.dtype == torch.float32
    assert student.grad.dtype == dtype
    upcast = student.detach().float().requires_grad_()
    expected = call(name, upcast, teacher.float(), mask, **kw)
    expected.backward()
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(student.grad, upcast.grad.to(dtype), rtol=1e-2, atol=1e-5)


# --------------------------------------------------------------------------- empty inputs, no sync


@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_no_valid_position_gives_zero_with_zero_grad(name, kw, chunk_size):
    student = torch.randn(2, 3, 8).requires_grad_()
    teacher = torch.full((2, 3, 8), float("nan")).requires_grad_()
    nothing = torch.zeros(2, 3, dtype=torch.bool)
    value = call(name, student, teacher, nothing, chunk_size=chunk_size, **kw)
    value.backward()
    assert value.item() == 0.0
    assert torch.all(student.grad == 0) and torch.all(teacher.grad == 0)
    empty = torch.zeros(0, 8, requires_grad=True)
    none = call(name, empty, torch.zeros(0, 8), chunk_size=chunk_size, **kw)
    none.backward()
    assert none.item() == 0.0 and empty.grad.shape == (0, 8)


@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_no_data_dependent_host_sync(name, kw, chunk_size):
    # Meta tensors have no data: .item(), .tolist(), .cpu() or boolean-mask indexing would raise.
    student = torch.empty(2, 5, 16, device="meta", requires_grad=True)
    teacher = torch.empty(2, 5, 16, device="meta")
    mask = torch.empty(2, 5, dtype=torch.bool, device="meta")
    value = call(name, student, teacher, mask, chunk_size=chunk_size, **kw)
    assert value.device.type == "meta" and value.shape == ()
    (grad,) = torch.autograd.grad(value, student)
    assert grad.shape == student.shape


# --------------------------------------------------------------------------- validation


def test_different_vocab_sizes_point_to_cross_tokenizer_losses():
    with pytest.raises(ValueError, match=r"vocabularies differ.*151936.*152064") as info:
        forward_kl(torch.zeros(2, 3, 151936, device="meta"),
                   torch.zeros(2, 3, 152064, device="meta"))
    message = str(info.value)
    assert "lit_distill.losses.uld" in message and "alm" in message and "shared prefix" in message


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"teacher_logits": torch.zeros(3, 2, 5)}, "must have one shape"),
        ({"student_logits": torch.zeros(()), "teacher_logits": torch.zeros(())}, "at least 1-D"),
        ({"mask": torch.ones(2, 4, dtype=torch.bool)}, "mask shape"),
        ({"mask": torch.ones(2, 3)}, "mask must be a bool"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"chunk_size": 2.5}, "chunk_size"),
        ({"student_logits": torch.zeros(2, 3, 5, dtype=torch.long)}, "floating point"),
    ],
)
def test_invalid_inputs_raise(kwargs, match):
    args = {"student_logits": torch.zeros(2, 3, 5), "teacher_logits": torch.zeros(2, 3, 5)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        forward_kl(**args)


@pytest.mark.parametrize("beta", [0.0, 1.0, -0.5, 1.5])
def test_invalid_beta(beta):
    with pytest.raises(ValueError, match=r"strictly in \(0, 1\).*call forward_kl / reverse_kl"):
        generalized_jsd(torch.zeros(2, 5), torch.zeros(2, 5), beta=beta)


@pytest.mark.parametrize("alpha", [-0.1, 1.0, 2.0])
@pytest.mark.parametrize("fn", [skew_kl, skew_reverse_kl])
def test_invalid_alpha(fn, alpha):
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\)"):
        fn(torch.zeros(2, 5), torch.zeros(2, 5), alpha=alpha)


def test_package_exports():
    assert set(losses.__all__) >= {"forward_kl", "reverse_kl", "generalized_jsd", "skew_kl",
                                   "skew_reverse_kl", "total_variation"}


@pytest.mark.parametrize(("name", "kw"), CASES, ids=CASE_IDS)
def test_extreme_temperature_and_one_sided_neg_inf_stay_finite(name, kw):
    teacher = torch.tensor([[2.0, -math.inf, 0.5, -math.inf], [1.0, 0.0, -1.0, -math.inf]])
    student = torch.tensor([[0.0, -math.inf, 1.0, -math.inf], [0.5, -math.inf, 0.0, 3.0]])
    for temperature in ([1.0] if name == "total_variation" else [1e-10, 1.0, 1e3]):
        s, t = student.clone().requires_grad_(), teacher.clone().requires_grad_()
        # row 1 has -inf on one side only: an infinite KL, returned as a huge finite value
        value = call(name, s, t, None, temperature, **kw)
        value.backward()
        assert torch.isfinite(value) and value >= 0
        assert torch.isfinite(s.grad).all() and torch.isfinite(t.grad).all()
    # row 0 alone (-inf on both sides) is an ordinary divergence over the two finite entries
    assert call(name, student[:1], teacher[:1], None, 1.0, **kw).item() == pytest.approx(
        reference(name, student[:1, [0, 2]], teacher[:1, [0, 2]], **kw), rel=1e-5)
