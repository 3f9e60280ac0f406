"""Tests of the ULD loss against a float64 reference written with plain loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_distill.losses.cross_tokenizer import uld

PROPERTY = settings(max_examples=40, deadline=None, database=None)
NEG_INF = float("-inf")


# --------------------------------------------------------------------------- float64 reference


def _softmax(z: list[float]) -> list[float]:
    top = max(v for v in z if v != NEG_INF)
    e = [math.exp(v - top) if v != NEG_INF else 0.0 for v in z]
    total = sum(e)
    return [v / total for v in e]


def _pairs(student, teacher, ms, mt, temperature):
    """Per sample, the list of (q↓, p↓) pairs: sorted probability lists in float64."""
    s = torch.as_tensor(student).detach().double().tolist()
    t = torch.as_tensor(teacher).detach().double().tolist()
    ms, mt = torch.as_tensor(ms).tolist(), torch.as_tensor(mt).tolist()
    out = []
    for b in range(len(s)):
        s_pos = [i for i, on in enumerate(ms[b]) if on]
        t_pos = [i for i, on in enumerate(mt[b]) if on]
        pairs = []
        for i in range(min(len(s_pos), len(t_pos))):
            q = sorted(_softmax([v / temperature for v in s[b][s_pos[i]]]), reverse=True)
            p = sorted(_softmax([v / temperature for v in t[b][t_pos[i]]]), reverse=True)
            pairs.append((q, p))
        out.append(pairs)
    return out


def _pad(a: list[float], n: int) -> list[float]:
    return a + [0.0] * (n - len(a))


def _l1_padded(q: list[float], p: list[float]) -> float:
    n = max(len(q), len(p))
    return sum(abs(x - y) for x, y in zip(_pad(q, n), _pad(p, n), strict=True))


def _topk_pair(q, p, k):
    """(fast value, tail_q, tail_p) of the top-k approximation, from the definition."""
    n = max(min(k, len(q)), min(k, len(p)))
    head = _l1_padded(q[:k], p[:k]) if n else 0.0
    tq, tp = sum(q[k:]), sum(p[k:])
    return head + abs(tq - tp), tq, tp


def _mean_of_means(per_sample: list[list[float]]) -> float:
    means = [sum(v) / len(v) for v in per_sample if v]
    return sum(means) / len(means) if means else 0.0


def reference(student, teacher, ms, mt, temperature=1.0, top_k=None) -> float:
    """ULD in float64: explicit sort, explicit zero padding, explicit L1, explicit means."""
    per_sample = []
    for pairs in _pairs(student, teacher, ms, mt, temperature):
        if top_k is None:
            per_sample.append([_l1_padded(q, p) for q, p in pairs])
        else:
            per_sample.append([_topk_pair(q, p, top_k)[0] for q, p in pairs])
    return _mean_of_means(per_sample)


def reference_topk_bound(student, teacher, ms, mt, k, temperature=1.0) -> float:
    """The documented bound 2·min(τ_q, τ_p), reduced like the loss."""
    per_sample = [[2 * min(_topk_pair(q, p, k)[1:]) for q, p in pairs]
                  for pairs in _pairs(student, teacher, ms, mt, temperature)]
    return _mean_of_means(per_sample)


# --------------------------------------------------------------------------- inputs


def make_inputs(seed, batch, ls, lt, vs, vt, scale=3.0, p_true=0.6, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    student = (scale * torch.randn(batch, ls, vs, generator=g, dtype=torch.float64)).to(dtype)
    teacher = (scale * torch.randn(batch, lt, vt, generator=g, dtype=torch.float64)).to(dtype)
    ms = torch.rand(batch, ls, generator=g) < p_true
    mt = torch.rand(batch, lt, generator=g) < p_true
    return student, teacher, ms, mt


@st.composite
def uld_inputs(draw, max_vocab=9):
    """Random shapes (either vocab larger, or equal), logits and masks with uneven counts."""
    batch = draw(st.integers(1, 3))
    ls, lt = draw(st.integers(0, 5)), draw(st.integers(0, 5))
    vs, vt = draw(st.integers(1, max_vocab)), draw(st.integers(1, max_vocab))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([0.5, 3.0, 10.0]))
    p_true = draw(st.sampled_from([0.3, 0.7, 1.0]))
    return make_inputs(seed, batch, ls, lt, vs, vt, scale, p_true)


# --------------------------------------------------------------------------- values


SHAPES = [  # (B, Ls, Lt, Vs, Vt)
    (3, 6, 5, 7, 13),   # Vs < Vt
    (3, 5, 7, 19, 6),   # Vs > Vt
    (4, 6, 6, 11, 11),  # Vs == Vt
    (2, 1, 8, 1, 4),    # one student position, a one-entry vocab
]


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-Ls{}-Lt{}-Vs{}-Vt{}".format(*s))
def test_matches_float64_reference(shape, temperature):
    student, teacher, ms, mt = make_inputs(0, *shape)
    ms[0] = False  # a sample with zero pairs
    expected = reference(student, teacher, ms, mt, temperature)
    got = uld(student, teacher, ms, mt, temperature=temperature)
    assert got.dtype == torch.float32 and got.shape == ()
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    got64 = uld(student.double(), teacher.double(), ms, mt, temperature=temperature)
    assert got64.dtype == torch.float64
    assert got64.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


@PROPERTY
@given(data=uld_inputs(), temperature=st.sampled_from([0.7, 1.0, 2.0]))
def test_property_matches_reference_and_range(data, temperature):
    student, teacher, ms, mt = data
    value = uld(student, teacher, ms, mt, temperature=temperature).item()
    assert value == pytest.approx(reference(student, teacher, ms, mt, temperature),
                                  rel=1e-5, abs=1e-6)
    assert -1e-6 <= value <= 2 + 1e-6


def test_hand_computed_v2_vs_v3():
    # Pair 1: q = softmax([0, 0]) = (1/2, 1/2); p = softmax([ln 2, 0, 0]) = (1/2, 1/4, 1/4).
    #   sorted + padded: (1/2, 1/2, 0) vs (1/2, 1/4, 1/4): D = 0 + 1/4 + 1/4 = 1/2.
    # Pair 2: q = softmax([0, ln 3]) = (1/4, 3/4) -> (3/4, 1/4, 0); p = (1/3, 1/3, 1/3):
    #   D = 5/12 + 1/12 + 4/12 = 5/6.
    nan = float("nan")
    student = torch.tensor([[[0.0, 0.0], [nan, nan]],
                            [[nan, 1e30], [0.0, math.log(3.0)]]])
    teacher = torch.tensor([[[9.0, 9.0, 9.0], [math.log(2.0), 0.0, 0.0], [nan, 0.0, 0.0]],
                            [[0.0, 0.0, 0.0], [nan, nan, nan], [nan, nan, nan]]])
    ms = torch.tensor([[True, False], [False, True]])
    mt = torch.tensor([[False, True, False], [True, False, False]])
    # One pair per sample: ULD = (1/2 + 5/6) / 2 = 2/3.
    assert uld(student, teacher, ms, mt).item() == pytest.approx(2 / 3, rel=1e-6)
    # top_k=1: pair 1 keeps 1/2 vs 1/2, tails 1/2 vs 1/2 -> 0 (exact 1/2, bound 2·1/2 = 1);
    # pair 2 keeps 3/4 vs 1/3, tails 1/4 vs 2/3 -> 5/12 + 5/12 = 5/6 (exact here).
    assert uld(student, teacher, ms, mt, top_k=1).item() == pytest.approx(5 / 12, rel=1e-6)
    # Doubling the logits at T=2 gives the same distributions and the same value: no T².
    assert uld(2 * student, 2 * teacher, ms, mt, temperature=2.0).item() == pytest.approx(
        2 / 3, rel=1e-6)


def test_per_sample_mean_not_token_mean():
    # Sample 0: one pair at distance 1/2; sample 1: five identical pairs at distance 0.
    student = torch.zeros(2, 5, 2)
    teacher = torch.zeros(2, 5, 3)
    teacher[0, 0] = torch.tensor([math.log(2.0), 0.0, 0.0])  # D = 1/2 (see above)
    teacher[1] = torch.tensor([0.0, 0.0, NEG_INF])  # same sorted probs as the student: D = 0
    ms = torch.tensor([[True, False, False, False, False], [True] * 5])
    mt = ms.clone()
    value = uld(student, teacher, ms, mt).item()
    assert value == pytest.approx(0.25, rel=1e-6)  # (1/2 + 0) / 2, not 1/2 / 6
    assert value == pytest.approx(reference(student, teacher, ms, mt), rel=1e-6)


def test_no_pair_gives_zero_with_zero_grad():
    student, teacher, ms, mt = make_inputs(1, 3, 4, 5, 6, 7)
    ms[0], mt[1], ms[2] = False, False, False  # every sample has n_b = 0
    student.requires_grad_(True)
    value = uld(student, teacher, ms, mt)
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(value)
    assert torch.equal(student.grad, torch.zeros_like(student))
    for top_k in (1, 100):
        assert uld(student, teacher, ms, mt, top_k=top_k).item() == 0.0
    # Empty sequence dims too.
    empty = torch.zeros(3, 0, 6, requires_grad=True)
    value = uld(empty, teacher, torch.zeros(3, 0, dtype=torch.bool), mt)
    value.backward()
    assert value.item() == 0.0 and empty.grad.shape == empty.shape


# --------------------------------------------------------------------------- properties


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), vocab=st.integers(1, 10), extra=st.integers(0, 5))
def test_zero_when_sorted_probabilities_match(seed, vocab, extra):
    g = torch.Generator().manual_seed(seed)
    teacher = 4 * torch.randn(2, 3, vocab, generator=g)
    perm = torch.randperm(vocab, generator=g)
    student = teacher[..., perm] + 1.5  # a permutation (and a shift, which softmax ignores)
    # The teacher also gets extra vocab entries at -inf: probability 0, like zero padding.
    padded = torch.cat([teacher, torch.full((2, 3, extra), NEG_INF)], -1)
    mask = torch.ones(2, 3, dtype=torch.bool)
    for top_k in (None, 1, 3):
        assert uld(student, padded, mask, mask, top_k=top_k).item() == pytest.approx(0, abs=2e-6)
        assert uld(padded, student, mask, mask, top_k=top_k).item() == pytest.approx(0, abs=2e-6)


@PROPERTY
@given(data=uld_inputs(), seed=st.integers(0, 2**31 - 1), top_k=st.sampled_from([None, 1, 3]))
def test_invariant_to_vocab_permutations(data, seed, top_k):
    student, teacher, ms, mt = data
    g = torch.Generator().manual_seed(seed)
    ps = torch.randperm(student.shape[-1], generator=g)
    pt = torch.randperm(teacher.shape[-1], generator=g)
    base = uld(student, teacher, ms, mt, top_k=top_k).item()
    assert uld(student[..., ps], teacher, ms, mt, top_k=top_k).item() == pytest.approx(
        base, rel=1e-5, abs=1e-6)
    assert uld(student, teacher[..., pt], ms, mt, top_k=top_k).item() == pytest.approx(
        base, rel=1e-5, abs=1e-6)


@PROPERTY
@given(data=uld_inputs(), top_k=st.sampled_from([None, 2]), junk=st.sampled_from(
    [float("nan"), float("inf"), NEG_INF, 1e38]))
def test_unpaired_positions_do_not_leak(data, top_k, junk):
    student, teacher, ms, mt = data
    n = torch.minimum(ms.sum(1), mt.sum(1))  # pairs per sample
    # Positions that form no pair: masked out, or True but past the other side's count.
    used_s = ms & (ms.cumsum(1) <= n[:, None])
    used_t = mt & (mt.cumsum(1) <= n[:, None])
    base = uld(student, teacher, ms, mt, top_k=top_k).item()
    s = torch.where(used_s[..., None], student, junk).requires_grad_(True)
    t = torch.where(used_t[..., None], teacher, junk).requires_grad_(True)
    value = uld(s, t, ms, mt, top_k=top_k)
    value.backward()
    assert value.item() == pytest.approx(base, rel=1e-6, abs=1e-7)
    for x, used in ((s, used_s), (t, used_t)):
        assert torch.isfinite(x.grad).all()
        assert torch.equal(x.grad[~used], torch.zeros_like(x.grad[~used]))


def test_inputs_not_modified():
    student, teacher, ms, mt = make_inputs(3, 2, 4, 4, 5, 6)
    copies = [x.clone() for x in (student, teacher, ms, mt)]
    versions = [x._version for x in (student, teacher)]
    for top_k in (None, 2):
        uld(student, teacher, ms, mt, top_k=top_k)
    for x, c in zip((student, teacher, ms, mt), copies, strict=True):
        assert torch.equal(x, c)
    assert [x._version for x in (student, teacher)] == versions


def test_neg_inf_vocab_entries_no_nan():
    student, teacher, ms, mt = make_inputs(4, 2, 5, 5, 8, 12)
    ms[:, 0] = mt[:, 0] = True
    student[..., 5:] = NEG_INF  # a masked tail of the student vocab
    teacher[..., ::2] = NEG_INF
    for top_k in (None, 3, 7, 100):  # k past the number of finite entries takes -inf ones
        s = student.clone().requires_grad_(True)
        t = teacher.clone().requires_grad_(True)
        value = uld(s, t, ms, mt, top_k=top_k)
        value.backward()
        assert torch.isfinite(value)
        assert torch.isfinite(s.grad).all() and torch.isfinite(t.grad).all()
        assert (s.grad[..., 5:] == 0).all()
        if top_k is None or top_k >= 12:
            assert value.item() == pytest.approx(reference(student, teacher, ms, mt), rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_computed_in_float32(dtype):
    student, teacher, ms, mt = make_inputs(5, 2, 4, 4, 9, 7, dtype=dtype)
    ms[:, 0] = mt[:, 0] = True
    value = uld(student, teacher, ms, mt)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(reference(student, teacher, ms, mt), rel=1e-5, abs=1e-6)


# --------------------------------------------------------------------------- top-k


@PROPERTY
@given(data=uld_inputs())
def test_topk_exact_when_k_covers_a_vocab(data):
    student, teacher, ms, mt = data
    exact = uld(student, teacher, ms, mt).item()
    big = max(student.shape[-1], teacher.shape[-1])
    assert uld(student, teacher, ms, mt, top_k=big).item() == pytest.approx(exact, abs=1e-6)
    # k >= min(Vs, Vt) is already exact: one tail is empty, so the bound 2·min(τ_q, τ_p) is 0.
    small = min(student.shape[-1], teacher.shape[-1])
    assert uld(student, teacher, ms, mt, top_k=small).item() == pytest.approx(exact, abs=1e-5)


@PROPERTY
@given(data=uld_inputs(max_vocab=40), top_k=st.integers(1, 6),
       temperature=st.sampled_from([0.5, 1.0, 3.0]))
def test_topk_error_within_documented_bound(data, top_k, temperature):
    student, teacher, ms, mt = data
    exact = reference(student, teacher, ms, mt, temperature)
    fast_ref = reference(student, teacher, ms, mt, temperature, top_k=top_k)
    bound = reference_topk_bound(student, teacher, ms, mt, top_k, temperature)
    # The inequality itself, on the float64 reference: 0 <= exact − fast <= 2·min(τ_q, τ_p).
    assert -1e-12 <= exact - fast_ref <= bound + 1e-12
    fast = uld(student, teacher, ms, mt, temperature=temperature, top_k=top_k).item()
    assert fast == pytest.approx(fast_ref, rel=1e-5, abs=2e-6)
    assert -2e-6 <= exact - fast <= bound + 2e-6


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), vs=st.integers(2, 30), vt=st.integers(2, 30),
       top_k=st.integers(1, 5))
def test_topk_error_identity_per_pair(seed, vs, vt, top_k):
    # One pair: exact − fast = 2·(min(τ_q, τ_p) − Σ_j min(a_j, b_j)), a, b the padded tails.
    student, teacher, _, _ = make_inputs(seed, 1, 1, 1, vs, vt)
    one = torch.ones(1, 1, dtype=torch.bool)
    [[(q, p)]] = _pairs(student, teacher, one, one, 1.0)
    n = max(len(q), len(p))
    a, b = _pad(q, n)[top_k:], _pad(p, n)[top_k:]
    gap = 2 * (min(sum(a), sum(b)) - sum(min(x, y) for x, y in zip(a, b, strict=True)))
    exact = uld(student.double(), teacher.double(), one, one).item()
    fast = uld(student.double(), teacher.double(), one, one, top_k=top_k).item()
    assert exact - fast == pytest.approx(gap, abs=1e-12)


def test_topk_bound_is_nearly_attained():
    # Student tail concentrated on one entry, teacher tail spread thin: exact − fast is close
    # to 2·min(τ_q, τ_p), so that bound cannot be tightened without more information.
    vocab = 2000
    student = torch.full((1, 1, vocab), NEG_INF, dtype=torch.float64)
    student[..., :2] = 0.0  # q = (1/2, 1/2, 0, …): τ_q = 1/2 for k = 1
    teacher = torch.zeros(1, 1, vocab, dtype=torch.float64)
    teacher[..., 0] = math.log(vocab - 1.0)  # p = (1/2, 1/(2(V−1)), …): τ_p = 1/2
    one = torch.ones(1, 1, dtype=torch.bool)
    exact = uld(student, teacher, one, one).item()
    fast = uld(student, teacher, one, one, top_k=1).item()
    assert fast == pytest.approx(0.0, abs=1e-12)
    assert exact - fast == pytest.approx(2 * 0.5, abs=2e-3)  # bound = 1


def test_topk_gradient_finite_and_flows():
    student, teacher, ms, mt = make_inputs(6, 3, 6, 5, 50, 70, scale=5.0)
    ms[:, 0] = mt[:, 0] = True
    s = student.clone().requires_grad_(True)
    t = teacher.clone().requires_grad_(True)
    uld(s, t, ms, mt, top_k=4).backward()
    assert torch.isfinite(s.grad).all() and torch.isfinite(t.grad).all()
    assert s.grad.abs().sum() > 0 and t.grad.abs().sum() > 0
    # The tails depend on every logit (through the logsumexp), not only on the top-k.
    assert (s.grad[0, ms[0].nonzero()[0, 0]] != 0).sum() > 4


# --------------------------------------------------------------------------- gradients


def test_gradient_finite_and_flows_to_student():
    student, teacher, ms, mt = make_inputs(7, 3, 6, 7, 20, 13)
    ms[:, 0] = mt[:, 0] = True
    s = student.clone().requires_grad_(True)
    uld(s, teacher, ms, mt, temperature=2.0).backward()
    assert torch.isfinite(s.grad).all()
    assert s.grad[ms].abs().sum() > 0


@pytest.mark.parametrize("top_k", [None, 2])
def test_gradcheck_float64(top_k):
    # Distinct random logits: ties in the sort would make the gradient ill-defined.
    g = torch.Generator().manual_seed(8)
    student = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    ms = torch.tensor([[True, False, True], [True, True, True]])
    mt = torch.tensor([[False, True, True, True], [True, False, True, False]])
    assert torch.autograd.gradcheck(
        lambda s, t: uld(s, t, ms, mt, temperature=1.3, top_k=top_k), (student, teacher))


# --------------------------------------------------------------------------- vectorisation


@pytest.mark.parametrize("top_k", [None, 3])
def test_batch_equals_mean_of_per_sample_calls(top_k):
    student, teacher, ms, mt = make_inputs(9, 5, 7, 6, 10, 8)
    ms[1] = False  # no pair: excluded from the mean
    mt[3, 1:] = False
    mt[3, 0] = True
    singles = [uld(student[b:b + 1], teacher[b:b + 1], ms[b:b + 1], mt[b:b + 1], top_k=top_k)
               for b in range(5) if min(ms[b].sum(), mt[b].sum()) > 0]
    assert len(singles) == 4
    batch = uld(student, teacher, ms, mt, top_k=top_k)
    torch.testing.assert_close(batch, torch.stack(singles).mean(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("top_k", [None, 3])
def test_no_data_dependent_op_runs_on_meta_device(top_k):
    # Meta tensors have shapes but no data: .item(), boolean indexing or nonzero() raise on
    # them. Forward and backward running there shows that no value reaches the host.
    s = torch.empty(2, 5, 7, device="meta", requires_grad=True)
    t = torch.empty(2, 4, 9, device="meta", requires_grad=True)
    ms = torch.empty(2, 5, dtype=torch.bool, device="meta")
    mt = torch.empty(2, 4, dtype=torch.bool, device="meta")
    value = uld(s, t, ms, mt, temperature=2.0, top_k=top_k)
    value.backward()
    assert value.shape == () and s.grad.shape == s.shape and t.grad.shape == t.shape
    with pytest.raises(RuntimeError):  # the probe is sensitive: a sync would be caught
        value.item()


def test_non_contiguous_logits():
    student, teacher, ms, mt = make_inputs(10, 2, 6, 6, 9, 11)
    ms[:, 0] = mt[:, 0] = True
    expected = reference(student[:, :-1], teacher[:, 1:], ms[:, :-1], mt[:, 1:])
    got = uld(student[:, :-1], teacher[:, 1:], ms[:, :-1], mt[:, 1:]).item()
    assert got == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------- errors


def test_errors():
    s, t = torch.randn(2, 3, 4), torch.randn(2, 5, 6)
    ms, mt = torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="batch sizes differ"):
        uld(s, t[:1], ms, mt[:1])
    with pytest.raises(ValueError, match="student_mask must be a bool tensor"):
        uld(s, t, ms.long(), mt)
    with pytest.raises(ValueError, match="teacher_mask must be a bool tensor"):
        uld(s, t, ms, mt.float())
    with pytest.raises(ValueError, match=r"teacher_mask shape \(2, 4\) must equal"):
        uld(s, t, ms, mt[:, :4])
    with pytest.raises(ValueError, match=r"student_mask shape \(2, 3, 1\) must equal"):
        uld(s, t, ms[..., None], mt)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            uld(s, t, ms, mt, temperature=bad)
    for bad in (0, -3, 2.0, True):
        with pytest.raises(ValueError, match="top_k must be an int >= 1 or None"):
            uld(s, t, ms, mt, top_k=bad)
    with pytest.raises(ValueError, match=r"student_logits must be a floating point tensor \[B, L"):
        uld(s[0], t, ms, mt)
    with pytest.raises(ValueError, match="teacher_logits must be a floating point tensor"):
        uld(s, t.long(), ms, mt)
    with pytest.raises(ValueError, match="V > 0"):
        uld(s[..., :0], t, ms, mt)


def test_reference_sanity():
    # The reference itself on the hand example (guards against a shared mistake).
    q, p = sorted(_softmax([0.0, math.log(3.0)]), reverse=True), _softmax([0.0, 0.0, 0.0])
    assert _l1_padded(q, p) == pytest.approx(5 / 6)
    assert np.isclose(_topk_pair(q, p, 1)[0], 5 / 6)


def test_uld_term_reads_both_masks_and_allows_different_vocabularies():
    from lit_distill import ConfigError, DistillationModule
    from lit_distill.losses import ULD, CrossEntropy
    from lit_distill.models import HFCausalLM

    def llama(vocab):
        return HFCausalLM(config={"model_type": "llama", "vocab_size": vocab, "hidden_size": 16,
                                  "intermediate_size": 32, "num_hidden_layers": 1,
                                  "num_attention_heads": 2, "num_key_value_heads": 1})

    torch.manual_seed(0)
    module = DistillationModule(student=llama(30), teacher=llama(45),
                                losses={"ce": CrossEntropy(), "uld": ULD(top_k=8)})
    assert module.losses["uld"].weight == 1.5  # the paper's lambda
    s_ids, t_ids = torch.randint(0, 30, (2, 7)), torch.randint(0, 45, (2, 9))
    labels = torch.cat([s_ids[:, 1:], torch.full((2, 1), -100)], 1)
    t_labels = torch.cat([t_ids[:, 1:], torch.full((2, 1), -100)], 1)
    batch = {"student_inputs": {"input_ids": s_ids}, "teacher_inputs": {"input_ids": t_ids},
             "labels": labels, "loss_mask": labels != -100,
             "teacher_labels": t_labels, "teacher_loss_mask": t_labels != -100}
    student_out, teacher_out = module(batch)
    values = module.compute_losses(batch, student_out, teacher_out)[1]
    expected = uld(student_out.logits, teacher_out.logits, batch["loss_mask"], batch["teacher_loss_mask"],
                   top_k=8)
    torch.testing.assert_close(values["uld"], expected)
    with pytest.raises(ConfigError, match="top_k"):
        ULD(top_k=0)


def test_uld_byte_alignment_reads_the_chunk_start_masks():
    from lit_distill import ConfigError
    from lit_distill.losses import ULD

    term = ULD(alignment="bytes")
    assert term.sources["student_mask"] == "batch.student_chunk_start_mask"
    assert term.sources["teacher_mask"] == "batch.teacher_chunk_start_mask"
    assert ULD().sources["student_mask"] == "batch.loss_mask"
    with pytest.raises(ConfigError, match="alignment"):
        ULD(alignment="chars")


def test_skip_student_eos_drops_each_rows_last_answer_position():
    from lit_distill.losses.cross_tokenizer import ULD, without_last_position

    mask = torch.tensor([[False, True, True, True, False], [True, False, True, False, False],
                         [False, False, False, False, False]])
    expected = torch.tensor([[False, True, True, False, False], [True, False, False, False, False],
                             [False, False, False, False, False]])
    assert torch.equal(without_last_position(mask), expected)
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, 7, generator=g), torch.randn(3, 5, 9, generator=g)
    teacher_mask = torch.tensor([[True, True, False, False, False], [True, False, False, False, False],
                                 [False, False, False, False, False]])
    skipping = ULD(skip_student_eos=True)(s, t, mask, teacher_mask)
    assert torch.allclose(skipping, ULD()(s, t, expected, teacher_mask))
