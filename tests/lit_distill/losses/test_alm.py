"""Tests of the ALM cross-tokenizer loss against a float64 reference written from the formula."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_distill.contracts import ModelOutput
from lit_distill.errors import ConfigError
from lit_distill.losses.alm import ALM, alm, binary_ce, log1mexp

PROPERTY = settings(max_examples=30, deadline=None, database=None)


# ---------------------------------------------------------------------------------------------
# Independent reference: Python loops over samples, chunks and tokens, float64.
# ---------------------------------------------------------------------------------------------


def _ref_token_logp(row: torch.Tensor, label: int) -> float:
    values = [float(v) for v in row.double()]
    top = max(values)
    return values[label] - (top + math.log(sum(math.exp(v - top) for v in values)))


def _ref_chunk_losses(sl, tl, slab, tlab, sch, tch, cmask, tau, eps):
    """{(b, c): ℓ_c} over the counted chunks."""
    out = {}
    for b in range(sl.shape[0]):
        for c in range(sch.shape[2]):
            s_tok = [t for t in range(sl.shape[1]) if sch[b, t, c] and int(slab[b, t]) != -100]
            t_tok = [t for t in range(tl.shape[1]) if tch[b, t, c] and int(tlab[b, t]) != -100]
            if not s_tok or not t_tok or (cmask is not None and not cmask[b, c]):
                continue
            log_ps = min(0.0, sum(_ref_token_logp(sl[b, t], int(slab[b, t])) for t in s_tok))
            log_pt = min(0.0, sum(_ref_token_logp(tl[b, t], int(tlab[b, t])) for t in t_tok))
            a = log_pt / tau - eps
            bb = log_ps / tau - eps
            p = math.exp(a)
            out[(b, c)] = -(p * bb + (1.0 - p) * math.log(-math.expm1(bb)))
    return out


def _reference(sl, tl, slab, tlab, sch, tch, cmask=None, tau=100.0, eps=1e-6):
    losses = _ref_chunk_losses(sl, tl, slab, tlab, sch, tch, cmask, tau, eps)
    return sum(losses.values()) / len(losses) if losses else 0.0


def _random_case(seed, batch=3, ls=9, lt=7, vs=11, vt=17, chunks=4, scale=3.0,
                 dtype=torch.float32):
    """Random logits, labels (some -100) and chunk memberships (each position in at most one
    chunk, some in none)."""
    g = torch.Generator().manual_seed(seed)
    sl = (torch.randn(batch, ls, vs, generator=g) * scale).to(dtype)
    tl = (torch.randn(batch, lt, vt, generator=g) * scale).to(dtype)
    slab = torch.randint(0, vs, (batch, ls), generator=g)
    tlab = torch.randint(0, vt, (batch, lt), generator=g)
    slab[torch.rand(batch, ls, generator=g) < 0.2] = -100
    tlab[torch.rand(batch, lt, generator=g) < 0.2] = -100
    s_idx = torch.randint(-1, chunks, (batch, ls), generator=g)
    t_idx = torch.randint(-1, chunks, (batch, lt), generator=g)
    sch = s_idx.unsqueeze(-1) == torch.arange(chunks)
    tch = t_idx.unsqueeze(-1) == torch.arange(chunks)
    return sl, tl, slab, tlab, sch, tch


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("tau", [100.0, 10.0, 1.0])
@pytest.mark.parametrize("use_mask", [False, True])
def test_matches_reference(seed, tau, use_mask):
    sl, tl, slab, tlab, sch, tch = _random_case(seed)
    cmask = torch.rand(sch.shape[0], sch.shape[2], generator=torch.Generator().manual_seed(seed)) < 0.7
    cmask = cmask if use_mask else None
    expected = _reference(sl, tl, slab, tlab, sch, tch, cmask, tau)
    got = alm(sl, tl, slab, tlab, sch, tch, cmask, tau=tau)
    assert got.dtype == torch.float32 and got.shape == ()
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_float64_matches_reference_tightly():
    sl, tl, slab, tlab, sch, tch = _random_case(7, dtype=torch.float64)
    got = alm(sl, tl, slab, tlab, sch, tch, tau=3.0, eps=1e-4)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(_reference(sl, tl, slab, tlab, sch, tch, None, 3.0, 1e-4),
                                       rel=1e-12)


def test_hand_computed():
    # Student vocab 2, teacher vocab 4, all logits 0: every student token has probability 1/2,
    # every teacher token 1/4. Chunk 0: two student tokens (P_S = 1/4), one teacher token
    # (P_T = 1/4). Chunk 1: one student token (P_S = 1/2), one teacher token (P_T = 1/4).
    # With tau = 1 and eps -> 0: chunk 0 costs the binary entropy H(1/4), chunk 1
    # -(1/4 ln 1/2 + 3/4 ln 1/2) = ln 2.
    sl = torch.zeros(1, 3, 2)
    tl = torch.zeros(1, 2, 4)
    slab = torch.tensor([[0, 1, 1]])
    tlab = torch.tensor([[3, 2]])
    sch = torch.tensor([[[True, False], [True, False], [False, True]]])
    tch = torch.tensor([[[True, False], [False, True]]])
    h_quarter = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    expected = (h_quarter + math.log(2.0)) / 2
    got = alm(sl, tl, slab, tlab, sch, tch, tau=1.0, eps=1e-9)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # eps shifts both log-likelihoods: check the exact formula with eps = 1e-2 too
    eps = 1e-2
    a = math.log(0.25) - eps
    p = math.exp(a)
    l0 = -(p * a + (1 - p) * math.log(1 - p))
    b1 = math.log(0.5) - eps
    l1 = -(p * b1 + (1 - p) * math.log(1 - math.exp(b1)))
    got = alm(sl, tl, slab, tlab, sch, tch, tau=1.0, eps=eps)
    assert got.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_chunk_of_probability_one_is_finite():
    # A student chunk of probability 1 in float32 (log P_S = 0): eps keeps log(1 - e^b) finite.
    sl = torch.full((1, 1, 3), -1e4)
    sl[0, 0, 1] = 1e4
    tl = torch.zeros(1, 1, 3)
    ones = torch.ones(1, 1, 1, dtype=torch.bool)
    sl.requires_grad_(True)
    loss = alm(sl, tl, torch.tensor([[1]]), torch.tensor([[0]]), ones, ones)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(sl.grad).all()


def test_bf16_inputs_computed_in_float32():
    sl, tl, slab, tlab, sch, tch = _random_case(3)
    sl, tl = sl.bfloat16(), tl.bfloat16()
    got = alm(sl, tl, slab, tlab, sch, tch)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(_reference(sl.float(), tl.float(), slab, tlab, sch, tch),
                                       rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Masks and leaks
# ---------------------------------------------------------------------------------------------


def test_masked_content_does_not_leak():
    sl, tl, slab, tlab, sch, tch = _random_case(11)
    cmask = torch.ones(sch.shape[0], sch.shape[2], dtype=torch.bool)
    cmask[0, 1] = False
    cmask[2, 3] = False
    expected = _reference(sl, tl, slab, tlab, sch, tch, cmask)
    # Positions whose label is -100 (whether or not their chunk flag is set) and positions
    # whose only chunk is masked out by chunk_mask get NaN logits.
    s_dead = (slab == -100) | ~(sch & cmask.unsqueeze(1)).any(-1)
    t_dead = (tlab == -100) | ~(tch & cmask.unsqueeze(1)).any(-1)
    assert s_dead.any() and t_dead.any() and (s_dead & (slab != -100)).any()
    sl_nan = torch.where(s_dead.unsqueeze(-1), float("nan"), sl).requires_grad_(True)
    tl_nan = torch.where(t_dead.unsqueeze(-1), float("nan"), tl)
    loss = alm(sl_nan, tl_nan, slab, tlab, sch, tch, cmask)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.isfinite(sl_nan.grad).all()
    assert (sl_nan.grad[s_dead] == 0).all()
    assert sl_nan.grad[~s_dead].abs().sum() > 0


def test_ignored_labels_and_chunk_mask_change_nothing_else():
    sl, tl, slab, tlab, sch, tch = _random_case(12)
    base = alm(sl, tl, slab, tlab, sch, tch)
    # Changing the label ids at ignored positions' logits changes nothing.
    sl2 = sl.clone()
    sl2[slab == -100] = 123.0
    assert alm(sl2, tl, slab, tlab, sch, tch).item() == pytest.approx(base.item(), rel=1e-6)
    # An all-True chunk_mask equals None.
    full = torch.ones(sch.shape[0], sch.shape[2], dtype=torch.bool)
    assert alm(sl, tl, slab, tlab, sch, tch, full).item() == pytest.approx(base.item(), rel=1e-6)


def test_no_counted_chunk_gives_zero_with_zero_grad():
    sl, tl, slab, tlab, sch, tch = _random_case(13)
    sl.requires_grad_(True)
    none = torch.zeros(sch.shape[0], sch.shape[2], dtype=torch.bool)
    loss = alm(sl, tl, slab, tlab, sch, tch, none)
    loss.backward()
    assert loss.item() == 0.0 and (sl.grad == 0).all()
    # every label ignored: no chunk has a token
    sl.grad = None
    ignored = torch.full_like(slab, -100)
    loss = alm(sl, tl, ignored, tlab, sch, tch)
    loss.backward()
    assert loss.item() == 0.0 and (sl.grad == 0).all()


def test_empty_side_chunks_do_not_count_even_if_masked_in():
    sl, tl, slab, tlab, sch, tch = _random_case(14)
    tch[:, :, 0] = False  # chunk 0 has no teacher token anywhere
    full = torch.ones(sch.shape[0], sch.shape[2], dtype=torch.bool)
    got = alm(sl, tl, slab, tlab, sch, tch, full)
    assert got.item() == pytest.approx(_reference(sl, tl, slab, tlab, sch, tch), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------


def test_gradient_flows_only_to_student():
    sl, tl, slab, tlab, sch, tch = _random_case(21)
    sl.requires_grad_(True)
    tl.requires_grad_(True)
    loss = alm(sl, tl, slab, tlab, sch, tch)
    loss.backward()
    assert tl.grad is None
    assert torch.isfinite(sl.grad).all() and sl.grad.abs().sum() > 0


def test_gradcheck_float64():
    sl, tl, slab, tlab, sch, tch = _random_case(22, batch=2, ls=5, lt=4, vs=4, vt=5, chunks=3,
                                                dtype=torch.float64)
    sl.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: alm(x, tl, slab, tlab, sch, tch, tau=2.0), (sl,))


def _single_token_case(seed, dtype):
    g = torch.Generator().manual_seed(seed)
    batch, length, vocab = 2, 6, 13
    logits = (torch.randn(batch, length, vocab, generator=g) * 2).to(dtype)
    labels = torch.randint(0, vocab, (batch, length), generator=g)
    labels[0, 0] = -100
    chunks = torch.eye(length, dtype=torch.bool).expand(batch, length, length).clone()
    return logits, labels, chunks


@pytest.mark.parametrize("tau", [100.0, 1.0])
def test_minimum_at_student_equal_teacher(tau):
    teacher, labels, chunks = _single_token_case(31, torch.float64)
    student = teacher.clone().requires_grad_(True)
    loss = alm(student, teacher, labels, labels, chunks, chunks, tau=tau)
    loss.backward()
    assert student.grad.abs().max().item() < 1e-12
    g = torch.Generator().manual_seed(32)
    for _ in range(5):
        perturbed = teacher + 0.3 * torch.randn(teacher.shape, generator=g, dtype=torch.float64)
        assert alm(perturbed, teacher, labels, labels, chunks, chunks, tau=tau) >= loss - 1e-12


def test_minimum_at_student_equal_teacher_float32():
    teacher, labels, chunks = _single_token_case(33, torch.float32)
    student = teacher.clone().requires_grad_(True)
    loss = alm(student, teacher, labels, labels, chunks, chunks)
    loss.backward()
    # float32 rounding only; a perturbation of the same size gives gradients of order 1e-3
    assert student.grad.abs().max().item() < 1e-5
    other_logits = teacher.clone()
    other_logits[..., 0] += 1.0
    other_logits.requires_grad_(True)
    alm(other_logits, teacher, labels, labels, chunks, chunks).backward()
    assert other_logits.grad.abs().max().item() > 1e-4


# ---------------------------------------------------------------------------------------------
# Temperature
# ---------------------------------------------------------------------------------------------


def test_tau_keeps_long_chunks_informative():
    # One chunk of 40 tokens over a vocabulary of 2000: log P ≈ -40 · 7.6 ≈ -300, so with
    # tau = 1 the chunk probabilities underflow in float32 (below e^-104).
    g = torch.Generator().manual_seed(41)
    length, vocab = 40, 2000
    teacher = torch.randn(1, length, vocab, generator=g)
    labels = torch.randint(0, vocab, (1, length), generator=g)
    chunks = torch.ones(1, length, 1, dtype=torch.bool)
    students = [torch.randn(1, length, vocab, generator=g).requires_grad_(True) for _ in range(2)]

    flat = [alm(s, teacher, labels, labels, chunks, chunks, tau=1.0) for s in students]
    for s, loss in zip(students, flat, strict=True):
        loss.backward()
        assert loss.item() == 0.0 and (s.grad == 0).all()  # no signal at all

    for s in students:
        s.grad = None
    warm = [alm(s, teacher, labels, labels, chunks, chunks, tau=100.0) for s in students]
    for s, loss in zip(students, warm, strict=True):
        loss.backward()
        assert torch.isfinite(loss) and loss.item() > 0
        assert torch.isfinite(s.grad).all() and (s.grad.abs().amax(-1) > 1e-8).all()
    assert warm[0].item() != pytest.approx(warm[1].item(), rel=1e-4)
    assert warm[0].item() == pytest.approx(
        _reference(students[0].detach(), teacher, labels, labels, chunks, chunks), rel=1e-4)


# ---------------------------------------------------------------------------------------------
# Reduction
# ---------------------------------------------------------------------------------------------


def test_batch_is_chunk_weighted_mean_of_samples():
    sl, tl, slab, tlab, sch, tch = _random_case(51, batch=4)
    cmask = torch.rand(4, sch.shape[2], generator=torch.Generator().manual_seed(52)) < 0.8
    whole = alm(sl, tl, slab, tlab, sch, tch, cmask)
    total, count = 0.0, 0
    for b in range(4):
        sl_b, tl_b = sl[b:b + 1], tl[b:b + 1]
        part = alm(sl_b, tl_b, slab[b:b + 1], tlab[b:b + 1], sch[b:b + 1], tch[b:b + 1],
                   cmask[b:b + 1])
        n_b = len(_ref_chunk_losses(sl_b, tl_b, slab[b:b + 1], tlab[b:b + 1], sch[b:b + 1],
                                    tch[b:b + 1], cmask[b:b + 1], 100.0, 1e-6))
        total += part.item() * n_b
        count += n_b
    assert count > 4
    assert whole.item() == pytest.approx(total / count, rel=1e-5)


# ---------------------------------------------------------------------------------------------
# log(1 - e^b)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("x", [-1e-7, -1e-6, -1e-3, -0.5, -0.7, -1.0, -20.0, -90.0, -1e4, -1e30])
def test_log1mexp_accuracy_float32(x):
    got = log1mexp(torch.tensor(x, dtype=torch.float32)).item()
    expected = math.log(-math.expm1(x)) if x > -math.log(2) else math.log1p(-math.exp(x))
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-38)
    t = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    log1mexp(t).backward()
    assert math.isfinite(t.grad.item())


def test_naive_forms_are_inaccurate_where_we_switch():
    # why two branches: log1p(-exp(b)) is off near 0, log(-expm1(b)) loses -e^b far below 0
    b = torch.tensor(-1e-6)
    assert abs(torch.log1p(-torch.exp(b)).item() - math.log(1e-6)) > 1e-3
    assert log1mexp(b).item() == pytest.approx(math.log(-math.expm1(-1e-6)), rel=1e-6)
    b = torch.tensor(-30.0)
    assert torch.log(-torch.expm1(b)).item() == 0.0
    assert log1mexp(b).item() == pytest.approx(-math.exp(-30.0), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------


@PROPERTY
@given(log_p=st.floats(-1e4, 0.0), log_q=st.floats(-1e4, 0.0),
       tau=st.sampled_from([1.0, 10.0, 100.0]))
def test_binary_ce_at_least_binary_entropy(log_p, log_q, tau):
    p, q = torch.tensor([log_p], dtype=torch.float64), torch.tensor([log_q], dtype=torch.float64)
    assert binary_ce(p, q, tau).item() >= binary_ce(p, p, tau).item() - 1e-12


@PROPERTY
@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([0.1, 1.0, 5.0]),
       tau=st.sampled_from([1.0, 10.0, 100.0]))
def test_each_chunk_at_least_its_value_at_b_equal_a(seed, scale, tau):
    sl, tl, slab, tlab, sch, tch = _random_case(seed, batch=2, scale=scale, chunks=3)
    for b in range(2):
        for c in range(3):
            only = torch.zeros(2, 3, dtype=torch.bool)
            only[b, c] = True
            loss = alm(sl, tl, slab, tlab, sch, tch, only, tau=tau).item()
            # the teacher as its own student: b = a exactly for this chunk
            at_min = alm(tl, tl, tlab, tlab, tch, tch, only, tau=tau).item()
            counted = (sch[b, :, c] & (slab[b] != -100)).any() and (tch[b, :, c] & (tlab[b] != -100)).any()
            if not counted:
                assert loss == 0.0
                continue
            assert math.isfinite(loss)
            assert loss >= at_min - 1e-6 * (1 + abs(at_min))


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _bad(**changes):
    sl, tl, slab, tlab, sch, tch = _random_case(0, batch=2)
    args = dict(student_logits=sl, teacher_logits=tl, student_labels=slab, teacher_labels=tlab,
                student_chunks=sch, teacher_chunks=tch, chunk_mask=None)
    for key, fn in changes.items():
        args[key] = fn(args)
    return args


@pytest.mark.parametrize("changes, match", [
    ({"student_logits": lambda a: a["student_logits"][0]}, "student_logits must be"),
    ({"teacher_logits": lambda a: a["teacher_logits"].long()}, "teacher_logits must be"),
    ({"teacher_logits": lambda a: a["teacher_logits"][:1]}, "batch sizes differ"),
    ({"student_labels": lambda a: a["student_labels"].float()}, "student_labels must be an int64"),
    ({"teacher_labels": lambda a: a["teacher_labels"][:, :-1]}, "teacher_labels shape"),
    ({"student_chunks": lambda a: a["student_chunks"].long()}, "student_chunks must be a bool"),
    ({"teacher_chunks": lambda a: a["teacher_chunks"][:, :-1]}, "teacher_chunks shape"),
    ({"teacher_chunks": lambda a: a["teacher_chunks"][..., :-1]}, "same number of chunks"),
    ({"chunk_mask": lambda a: torch.ones(2, 4)}, "chunk_mask must be a bool"),
    ({"chunk_mask": lambda a: torch.ones(2, 3, dtype=torch.bool)}, "chunk_mask shape"),
])
def test_value_errors(changes, match):
    with pytest.raises(ValueError, match=match):
        alm(**_bad(**changes))


@pytest.mark.parametrize("kw, match", [
    ({"tau": 0.0}, "tau must be"), ({"tau": float("inf")}, "tau must be"),
    ({"eps": 0.0}, "eps must be"), ({"eps": -1e-6}, "eps must be"),
])
def test_value_errors_hyperparameters(kw, match):
    with pytest.raises(ValueError, match=match):
        alm(**_bad(), **kw)


# ---------------------------------------------------------------------------------------------
# The YAML term
# ---------------------------------------------------------------------------------------------


def test_term_reads_its_sources_and_matches_functional():
    sl, tl, slab, tlab, sch, tch = _random_case(61)
    cmask = torch.rand(3, 4, generator=torch.Generator().manual_seed(62)) < 0.7
    batch = {"labels": slab, "teacher_labels": tlab, "alm_student_chunks": sch,
             "alm_teacher_chunks": tch, "alm_chunk_mask": cmask}
    term = ALM(tau=10.0, weight=0.5)
    assert term.weight == 0.5 and term.reads_teacher
    kwargs = term.gather(ModelOutput(logits=sl), ModelOutput(logits=tl), batch)
    assert term(**kwargs).item() == pytest.approx(
        alm(sl, tl, slab, tlab, sch, tch, cmask, tau=10.0).item(), rel=1e-6)
    # no chunk mask in the batch: the argument is left out (None)
    del batch["alm_chunk_mask"]
    kwargs = term.gather(ModelOutput(logits=sl), ModelOutput(logits=tl), batch)
    assert "chunk_mask" not in kwargs
    assert term(**kwargs).item() == pytest.approx(
        alm(sl, tl, slab, tlab, sch, tch, tau=10.0).item(), rel=1e-6)


def test_term_config_errors():
    with pytest.raises(ConfigError, match="tau"):
        ALM(tau=-1.0)
    with pytest.raises(ConfigError, match="eps"):
        ALM(eps=0.0)
    with pytest.raises(ConfigError, match="not an argument"):
        ALM(sources={"mask": "batch.loss_mask"})
    assert ALM(sources={"student_labels": "batch.student_labels"}).sources["student_labels"] == (
        "batch.student_labels")


# ---------------------------------------------------------------------------------------------
# Debiasing (tokenkit's merge_by_space_prob + append_space)
# ---------------------------------------------------------------------------------------------


def _ref_space_logp(row: torch.Tensor, space: torch.Tensor) -> float:
    values = [float(v) for v in row.double()]
    top = max(values)
    total = sum(math.exp(v - top) for v in values)
    return math.log(sum(math.exp(v - top) for v, s in zip(values, space.tolist(), strict=False) if s) / total)


def _ref_debiased(sl, tl, slab, tlab, sch, tch, s_space, t_space, tau=100.0, eps=1e-6, threshold=0.1):
    """Loop reference: counted chunks in order, merged until the teacher's word-start probability after
    a chunk exceeds ``threshold``; each group's log-likelihood + log P(word start after it), per side."""
    losses = []
    for b in range(sl.shape[0]):
        groups, current = [], None
        for c in range(sch.shape[2]):
            s_tok = [t for t in range(sl.shape[1]) if sch[b, t, c] and int(slab[b, t]) != -100]
            t_tok = [t for t in range(tl.shape[1]) if tch[b, t, c] and int(tlab[b, t]) != -100]
            if not s_tok or not t_tok:
                continue
            log_ps = min(0.0, sum(_ref_token_logp(sl[b, t], int(slab[b, t])) for t in s_tok))
            log_pt = min(0.0, sum(_ref_token_logp(tl[b, t], int(tlab[b, t])) for t in t_tok))
            s_end = _ref_space_logp(sl[b, min(max(s_tok) + 1, sl.shape[1] - 1)], s_space)
            t_end = _ref_space_logp(tl[b, min(max(t_tok) + 1, tl.shape[1] - 1)], t_space)
            current = [0.0, 0.0] if current is None else current
            current = [current[0] + log_ps, current[1] + log_pt, s_end, t_end]
            if math.exp(t_end) > threshold:
                groups.append(current)
                current = None
        if current is not None:
            groups.append(current)
        for log_ps, log_pt, s_end, t_end in groups:
            a, bb = min(0.0, log_pt + t_end) / tau - eps, min(0.0, log_ps + s_end) / tau - eps
            p = math.exp(a)
            losses.append(-(p * bb + (1.0 - p) * math.log(-math.expm1(bb))))
    return sum(losses) / len(losses) if losses else 0.0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("threshold", [0.1, 0.5, 0.9])
def test_debiased_alm_matches_a_direct_loop(seed, threshold):
    sl, tl, slab, tlab, sch, tch = _random_case(seed, scale=1.0)
    g = torch.Generator().manual_seed(100 + seed)
    s_space, t_space = torch.rand(11, generator=g) < 0.4, torch.rand(15, generator=g) < 0.4  # shorter than Vt
    got = alm(sl.double(), tl.double(), slab, tlab, sch, tch, tau=10.0, student_space_mask=s_space,
              teacher_space_mask=t_space, debias=True, space_threshold=threshold)
    want = _ref_debiased(sl, tl, slab, tlab, sch, tch, s_space, torch.cat([t_space, torch.zeros(2, dtype=torch.bool)]),
                         tau=10.0, threshold=threshold)
    assert float(got) == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_debiased_alm_gradient_reaches_the_student_only_and_through_its_space_probability():
    sl, tl, slab, tlab, sch, tch = _random_case(7, scale=1.0)
    sl, tl = sl.double().requires_grad_(), tl.double().requires_grad_()
    space_s, space_t = torch.arange(11) % 3 == 0, torch.arange(17) % 3 == 0
    alm(sl, tl, slab, tlab, sch, tch, student_space_mask=space_s, teacher_space_mask=space_t, debias=True).backward()
    assert tl.grad is None and torch.isfinite(sl.grad).all()
    # positions that are in no counted chunk still get gradient when they follow one (the word-start term)
    plain = sl.detach().clone().requires_grad_()
    alm(plain, tl.detach(), slab, tlab, sch, tch).backward()
    assert not torch.equal(sl.grad, plain.grad)


def test_debias_without_space_masks_is_refused():
    sl, tl, slab, tlab, sch, tch = _random_case(0)
    with pytest.raises(ValueError, match="space_mask"):
        alm(sl, tl, slab, tlab, sch, tch, debias=True)
    with pytest.raises(ConfigError, match="space_threshold"):
        ALM(debias=True, space_threshold=1.5)
