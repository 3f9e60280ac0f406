"""Forward KL and cross-entropy from one student softmax equal the two losses computed apart.

The reference is a direct float64 formula (KL(p ‖ q) over mask rows, −log q[label] over labelled
rows, autograd for the gradient); the module-level pairing is checked against the same terms
evaluated one by one.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_distill import DistillationModule
from lit_distill.callbacks import GradientShare
from lit_distill.losses import CrossEntropy, ForwardKL, ReverseKL, forward_kl
from lit_distill.losses.kl_ce import forward_kl_and_cross_entropy, paired_values
from lit_distill.losses.terms import cross_entropy


def reference(student, teacher, labels, mask, ignore_index=-100):
    """float64 (kl, ce) by the textbook formulas, differentiable in ``student``."""
    log_q = torch.log_softmax(student.double(), -1)
    log_p = torch.log_softmax(teacher.double(), -1)
    p = log_p.exp()
    kl_rows = torch.where(p > 0, p * (log_p - log_q), 0.0).sum(-1)
    kl_mask = torch.ones_like(labels, dtype=torch.bool) if mask is None else mask
    kl = (kl_rows * kl_mask).sum() / max(int(kl_mask.sum()), 1)
    valid = labels != ignore_index
    ce_rows = -log_q.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    ce = (ce_rows * valid).sum() / max(int(valid.sum()), 1)
    return kl, ce


def case(seed, batch=2, length=5, vocab=11, masked=True, ignored=True, banned=False, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    student = (torch.randn(batch, length, vocab, generator=g) * 3).to(dtype)
    teacher = torch.randn(batch, length, vocab, generator=g) * 3
    if banned:  # vocabulary entries the teacher rules out
        teacher[..., 0] = -math.inf
    labels = torch.randint(0, vocab, (batch, length), generator=g)
    if ignored:
        labels[torch.rand(batch, length, generator=g) < 0.3] = -100
    mask = torch.rand(batch, length, generator=g) < 0.7 if masked else None
    return student, teacher, labels, mask


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 3), length=st.integers(1, 6), vocab=st.integers(2, 13),
       masked=st.booleans(), ignored=st.booleans(), banned=st.booleans(),
       weights=st.tuples(st.floats(0.0, 2.0), st.floats(0.0, 2.0)))
def test_values_and_gradient_equal_the_float64_formulas(seed, batch, length, vocab, masked, ignored, banned, weights):
    student, teacher, labels, mask = case(seed, batch, length, vocab, masked, ignored, banned)
    s, ref_s = student.clone().requires_grad_(), student.double().requires_grad_()
    kl, ce = forward_kl_and_cross_entropy(s, teacher, labels, mask)
    ref_kl, ref_ce = reference(ref_s, teacher, labels, mask)
    (weights[0] * kl + weights[1] * ce).backward()
    (weights[0] * ref_kl + weights[1] * ref_ce).backward()
    assert kl.dtype == ce.dtype == torch.float32
    assert torch.allclose(kl.double(), ref_kl, rtol=1e-5, atol=1e-6)
    assert torch.allclose(ce.double(), ref_ce, rtol=1e-5, atol=1e-6)
    assert torch.allclose(s.grad.double(), ref_s.grad, rtol=1e-5, atol=1e-7)


def test_equals_the_two_losses_computed_apart():
    student, teacher, labels, mask = case(3, batch=4, length=16, vocab=257)
    joint_in, apart_in = student.clone().requires_grad_(), student.clone().requires_grad_()
    kl, ce = forward_kl_and_cross_entropy(joint_in, teacher, labels, mask)
    kl_apart, ce_apart = forward_kl(apart_in, teacher, mask), cross_entropy(apart_in, labels)
    (0.3 * kl + 0.7 * ce).backward()
    (0.3 * kl_apart + 0.7 * ce_apart).backward()
    assert torch.allclose(kl, kl_apart, rtol=1e-6) and torch.allclose(ce, ce_apart, rtol=1e-6)
    assert torch.allclose(joint_in.grad, apart_in.grad, rtol=1e-5, atol=1e-9)


def test_each_output_differentiated_alone_gives_its_own_gradient():
    """GradientShare differentiates one term at a time through a retained graph."""
    student, teacher, labels, mask = case(5, vocab=17)
    s = student.clone().requires_grad_()
    kl, ce = forward_kl_and_cross_entropy(s, teacher, labels, mask)
    (grad_kl,) = torch.autograd.grad(kl, s, retain_graph=True)
    (grad_ce,) = torch.autograd.grad(ce, s)
    ref_s = student.double().requires_grad_()
    ref_kl, ref_ce = reference(ref_s, teacher, labels, mask)
    assert torch.allclose(grad_kl.double(), torch.autograd.grad(ref_kl, ref_s, retain_graph=True)[0], atol=1e-7)
    assert torch.allclose(grad_ce.double(), torch.autograd.grad(ref_ce, ref_s)[0], atol=1e-7)


def test_bfloat16_student_gets_a_bfloat16_gradient_of_the_float32_losses():
    student, teacher, labels, mask = case(7, vocab=33, dtype=torch.bfloat16)
    s = student.clone().requires_grad_()
    kl, ce = forward_kl_and_cross_entropy(s, teacher, labels, mask)
    (kl + ce).backward()
    ref_s = student.double().requires_grad_()
    ref_kl, ref_ce = reference(ref_s, teacher, labels, mask)
    (ref_kl + ref_ce).backward()
    assert s.grad.dtype == torch.bfloat16 and kl.dtype == torch.float32
    assert torch.allclose(kl.double(), ref_kl, rtol=1e-5) and torch.allclose(ce.double(), ref_ce, rtol=1e-5)
    assert torch.allclose(s.grad.double(), ref_s.grad, atol=4e-3)  # bfloat16 rounding of the gradient


@pytest.mark.parametrize("setting", ["float64", "no_grad", "teacher_grad"])
def test_outside_the_distillation_step_it_calls_the_two_losses(setting):
    student, teacher, labels, mask = case(11, vocab=9)
    if setting == "float64":
        student, teacher = student.double(), teacher.double()
    s = student.clone().requires_grad_(setting != "no_grad")
    t = teacher.clone().requires_grad_(setting == "teacher_grad")
    kl, ce = forward_kl_and_cross_entropy(s, t, labels, mask)
    assert torch.equal(kl, forward_kl(s, t, mask)) and torch.equal(ce, cross_entropy(s, labels))
    assert kl.dtype == (torch.float64 if setting == "float64" else torch.float32)


def test_no_valid_position_gives_zero_losses_and_a_zero_gradient():
    student, teacher, labels, _ = case(13, vocab=7)
    s = student.clone().requires_grad_()
    kl, ce = forward_kl_and_cross_entropy(s, teacher, torch.full_like(labels, -100), torch.zeros_like(labels, dtype=torch.bool))
    (kl + ce).backward()
    assert kl.item() == 0.0 and ce.item() == 0.0 and torch.count_nonzero(s.grad) == 0


def test_shape_errors_are_the_kl_errors():
    student, teacher, labels, mask = case(17, vocab=9)
    with pytest.raises(ValueError, match="vocabularies differ"):
        forward_kl_and_cross_entropy(student.requires_grad_(), teacher[..., :5], labels, mask)


# --------------------------------------------------------------------------- pairing in the module


def gathered(student, teacher, labels, mask, *terms):
    """``paired_values`` inputs for terms reading the default sources."""
    inputs = {}
    for name, term in terms:
        if isinstance(term, CrossEntropy):
            inputs[name] = {"logits": student, "labels": labels}
        else:
            inputs[name] = {"student_logits": student, "teacher_logits": teacher, "mask": mask}
    return inputs


@pytest.mark.parametrize(("kl_term", "ce_term", "pairs"), [
    (ForwardKL(), CrossEntropy(), True),
    (ForwardKL(temperature=2.0), CrossEntropy(), False),
    (ForwardKL(chunk_size=4), CrossEntropy(), False),
    (ForwardKL(padded_vocab=True), CrossEntropy(), False),
    (ForwardKL(), CrossEntropy(label_smoothing=0.1), False),
    (ReverseKL(), CrossEntropy(), False),
])
def test_pairs_only_a_forward_kl_and_a_cross_entropy_at_temperature_one(kl_term, ce_term, pairs):
    student, teacher, labels, mask = case(19, vocab=9)
    student.requires_grad_()
    terms = {"kd": kl_term, "ce": ce_term}
    values = paired_values(terms, gathered(student, teacher, labels, mask, *terms.items()))
    assert set(values) == ({"kd", "ce"} if pairs else set())
    if pairs:
        assert torch.allclose(values["kd"], forward_kl(student, teacher, mask), rtol=1e-6)
        assert torch.allclose(values["ce"], cross_entropy(student, labels), rtol=1e-6)


def test_does_not_pair_terms_on_other_logits_or_with_hooks():
    student, teacher, labels, mask = case(23, vocab=9)
    student.requires_grad_()
    terms = {"kd": ForwardKL(), "ce": CrossEntropy()}
    inputs = gathered(student, teacher, labels, mask, *terms.items())
    inputs["ce"]["logits"] = student.clone()
    assert paired_values(terms, inputs) == {}
    hooked = {"kd": ForwardKL(), "ce": CrossEntropy()}
    hooked["ce"].register_forward_hook(lambda *args: None)
    assert paired_values(hooked, gathered(student, teacher, labels, mask, *hooked.items())) == {}


def test_module_step_with_the_pair_equals_the_terms_one_by_one(monkeypatch):
    """DistillationModule.compute_losses: same per-term values and student gradient with and without pairing."""
    from lit_distill.contracts import ModelOutput

    student, teacher, labels, mask = case(29, batch=3, length=8, vocab=31)
    batch = {"labels": labels, "loss_mask": mask}
    results = []
    for pair in (True, False):
        if not pair:
            monkeypatch.setattr("lit_distill.module.paired_values", lambda *args: {})
        module = DistillationModule(student=torch.nn.Linear(2, 2), teacher=torch.nn.Linear(2, 2),
                                    losses={"kd": ForwardKL(weight=0.5), "ce": CrossEntropy(weight=0.5)})
        s = student.clone().requires_grad_()
        total, values = module.compute_losses(batch, ModelOutput(logits=s), ModelOutput(logits=teacher))
        total.backward()
        results.append((total.detach(), {k: v.detach() for k, v in values.items()}, s.grad))
    (total_p, values_p, grad_p), (total_a, values_a, grad_a) = results
    assert list(values_p) == ["kd", "ce"] == list(values_a)
    assert torch.allclose(total_p, total_a, rtol=1e-6)
    assert all(torch.allclose(values_p[k], values_a[k], rtol=1e-6) for k in values_a)
    assert torch.allclose(grad_p, grad_a, rtol=1e-5, atol=1e-9)


def test_gradient_share_still_sees_both_terms():
    """GradientShare hooks the terms, so they are evaluated one by one and it records both."""
    from lit_distill.contracts import ModelOutput

    share = GradientShare(every_n_steps=1)
    module = DistillationModule(student=torch.nn.Linear(2, 2), teacher=torch.nn.Linear(2, 2),
                                losses={"kd": ForwardKL(), "ce": CrossEntropy()})
    share.setup(None, module, "fit")
    share._values = {}
    student, teacher, labels, mask = case(31, vocab=9)
    module.compute_losses({"labels": labels, "loss_mask": mask}, ModelOutput(logits=student.requires_grad_()),
                          ModelOutput(logits=teacher))
    assert set(share._values) == {"kd", "ce"}
