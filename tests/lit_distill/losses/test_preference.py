"""DPO against a direct float64 formula, sequence log-probs, batch normalisation, MoE aux term."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_distill.contracts import ModelOutput, valid_count
from lit_distill.errors import ConfigError
from lit_distill.losses import DPO, ForwardKL, MoEAuxLoss, dpo_loss, sequence_logprobs


def direct_sequence_logprobs(logits, labels):
    out = []
    for b in range(logits.shape[0]):
        total = 0.0
        for t in range(logits.shape[1]):
            if labels[b, t] != -100:
                row = logits[b, t].double()
                total += float(row[labels[b, t]] - torch.logsumexp(row, 0))
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


def direct_dpo(pc, pr, rc, rr, beta):
    losses = []
    for a, b, c, d in zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist(), strict=True):
        z = beta * ((a - c) - (b - d))
        losses.append(math.log1p(math.exp(-z)) if z > -30 else -z)  # -log sigmoid(z)
    return sum(losses) / len(losses)


def preference_batch(pairs=3, length=7, vocab=11, seed=0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, vocab, (2 * pairs, length), generator=gen)
    labels[:, :3] = -100  # prompt
    labels[0, -1] = -100  # a shorter response
    return labels


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.floats(-40, 5, allow_nan=False), min_size=4, max_size=4), beta=st.floats(0.01, 2.0),
       pairs=st.integers(1, 4))
def test_dpo_loss_matches_formula(values, beta, pairs):
    gen = torch.Generator().manual_seed(pairs)
    logps = [torch.tensor([v] * pairs, dtype=torch.float64) + torch.randn(pairs, generator=gen, dtype=torch.float64)
             for v in values]
    got = dpo_loss(*logps, beta=beta)
    assert float(got) == pytest.approx(direct_dpo(*logps, beta), rel=1e-9, abs=1e-12)


def test_dpo_loss_is_log2_at_reference_and_decreases_with_the_margin():
    zeros = torch.zeros(3, dtype=torch.float64)
    assert float(dpo_loss(zeros, zeros, zeros, zeros, 0.1)) == pytest.approx(math.log(2))
    better = dpo_loss(zeros + 1, zeros, zeros, zeros, 0.1)
    assert float(better) < math.log(2)


def test_sequence_logprobs_matches_direct_sum():
    labels = preference_batch()
    logits = torch.randn(*labels.shape, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(sequence_logprobs(logits, labels), direct_sequence_logprobs(logits, labels),
                               rtol=1e-12, atol=1e-12)
    mask = labels != -100
    mask[:, -1] = False  # an explicit mask wins over the labels
    expected = direct_sequence_logprobs(logits, labels.masked_fill(~mask, -100))
    torch.testing.assert_close(sequence_logprobs(logits, labels, mask), expected, rtol=1e-12, atol=1e-12)


def test_dpo_term_splits_chosen_then_rejected_and_uses_teacher_as_reference():
    labels = preference_batch(pairs=3)
    gen = torch.Generator().manual_seed(2)
    student = torch.randn(*labels.shape, 11, dtype=torch.float64, generator=gen, requires_grad=True)
    teacher = torch.randn(*labels.shape, 11, dtype=torch.float64, generator=gen)
    term = DPO(beta=0.1)
    got = term(**term.gather(ModelOutput(logits=student), ModelOutput(logits=teacher),
                             {"labels": labels, "response_mask": labels != -100}))
    s, t = direct_sequence_logprobs(student.detach(), labels), direct_sequence_logprobs(teacher, labels)
    assert float(got) == pytest.approx(direct_dpo(s[:3], s[3:], t[:3], t[3:], 0.1), rel=1e-10)
    got.backward()
    assert student.grad.abs().sum() > 0
    # gradient descent raises the chosen responses' log-probs and lowers the rejected ones'
    with torch.no_grad():
        stepped = student - 10.0 * student.grad
    s2 = direct_sequence_logprobs(stepped, labels)
    assert (s2[:3] > s[:3]).all() and (s2[3:] < s[3:]).all()


def test_dpo_rejects_odd_batches_and_bad_beta():
    with pytest.raises(ConfigError, match="even"):
        DPO()(torch.randn(3, 4, 5), torch.randn(3, 4, 5), torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ConfigError, match="beta"):
        DPO(beta=0.0)


def test_preference_batch_is_weighted_per_sequence_so_the_step_objective_is_the_pair_mean():
    """DistillationModule multiplies each micro-batch loss by valid_count(batch) and divides by the
    step's total: without a loss_mask that is the number of rows (2 per pair), so micro-batches of
    different sizes combine into the mean DPO loss over all pairs of the step."""
    term = DPO(beta=0.1)
    labels = preference_batch(pairs=5, seed=3)
    gen = torch.Generator().manual_seed(4)
    student = torch.randn(*labels.shape, 11, dtype=torch.float64, generator=gen)
    teacher = torch.randn(*labels.shape, 11, dtype=torch.float64, generator=gen)

    def micro(idx):
        rows = torch.cat([idx, idx + 5])
        batch = {"labels": labels[rows], "response_mask": labels[rows] != -100}
        loss = term(**term.gather(ModelOutput(logits=student[rows]), ModelOutput(logits=teacher[rows]), batch))
        return loss, valid_count(batch)

    (l1, c1), (l2, c2) = micro(torch.tensor([0, 1])), micro(torch.tensor([2, 3, 4]))
    assert int(c1) == 4 and int(c2) == 6  # sequences, not tokens
    combined = (l1 * c1 + l2 * c2) / (c1 + c2)
    whole, _ = micro(torch.arange(5))
    torch.testing.assert_close(combined, whole, rtol=1e-12, atol=0)


def test_moe_aux_term_reads_the_student_feature():
    term = MoEAuxLoss()
    assert term.weight == 0.01
    value = torch.tensor(1.25, dtype=torch.float64)
    out = ModelOutput(logits=torch.zeros(1, 1, 2), features={"moe_aux_loss": value})
    assert float(term(**term.gather(out, None, {}))) == 1.25


def test_mimic_is_forward_kl_over_response_positions():
    """ForwardKL reads batch.loss_mask: KL(p_T || q_S) averaged over the positions that predict a
    response token (labels already shifted, so position t compares the predictions of token t+1)."""
    labels = preference_batch(pairs=2)
    gen = torch.Generator().manual_seed(5)
    s = torch.randn(*labels.shape, 11, dtype=torch.float64, generator=gen)
    t = torch.randn(*labels.shape, 11, dtype=torch.float64, generator=gen)
    mask = labels != -100
    got = ForwardKL()(s, t, mask)
    p, logq = torch.softmax(t, -1), torch.log_softmax(s, -1)
    per_position = (p * (torch.log(p) - logq)).sum(-1)
    assert float(got) == pytest.approx(float(per_position[mask].mean()), rel=1e-10)
