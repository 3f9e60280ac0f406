"""ctc_loss and the CTC term against F.ctc_loss per sample in float64 and against brute-force alignments."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_distill.contracts import ModelOutput
from lit_distill.errors import ConfigError
from lit_distill.losses import CTC, ctc_loss


def collapse(path: tuple[int, ...], blank: int) -> tuple[int, ...]:
    """Merge repeats, then drop blanks (the CTC many-to-one map)."""
    merged = [c for i, c in enumerate(path) if i == 0 or c != path[i - 1]]
    return tuple(c for c in merged if c != blank)


def brute_force_nll(logits: torch.Tensor, target: list[int], blank: int) -> float:
    """-log Σ over every path of ``logits [F, C]``'s frames that collapses to ``target`` (float64)."""
    log_probs = logits.double().log_softmax(-1)
    frames, classes = log_probs.shape
    total = 0.0
    for path in itertools.product(range(classes), repeat=frames):
        if collapse(path, blank) == tuple(target):
            total += math.exp(sum(float(log_probs[t, c]) for t, c in enumerate(path)))
    return -math.log(total)


def reference(logits, targets, target_lengths, frame_lengths, blank, reduction="sample"):
    """Per sample in float64 with F.ctc_loss on that sample alone; the mean of nll / length, or the
    sum of nll over the sum of lengths."""
    nlls, lengths = [], []
    for b in range(logits.shape[0]):
        f, s = int(frame_lengths[b]), int(target_lengths[b])
        lp = logits[b, :f].double().log_softmax(-1)[:, None]
        nlls.append(float(F.ctc_loss(lp, targets[b:b + 1, :s], torch.tensor([f]), torch.tensor([s]), blank=blank,
                                     reduction="sum", zero_infinity=True)))
        lengths.append(s)
    if reduction == "label":
        return sum(nlls) / max(1, sum(lengths))
    return sum(n / max(1, s) for n, s in zip(nlls, lengths, strict=True)) / len(nlls)


def test_matches_brute_force_alignment_sums():
    g = torch.Generator().manual_seed(0)
    cases = [([1], 3), ([1, 2], 4), ([2, 2], 4), ([1, 2, 1], 5), ([], 3)]
    for blank in (0, 2):
        for target, frames in cases:
            target = [c if c != blank else 3 for c in target]  # never the blank
            logits = torch.randn(1, frames, 4, generator=g, dtype=torch.float64)
            got = ctc_loss(logits, torch.tensor([target + [0]]), torch.tensor([len(target)]), blank=blank)
            expected = brute_force_nll(logits[0], target, blank) / max(1, len(target))
            assert float(got) == pytest.approx(expected, rel=1e-10), (blank, target, frames)


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 4), frames=st.integers(4, 9), classes=st.integers(3, 6), blank=st.integers(0, 2),
       reduction=st.sampled_from(["sample", "label"]), seed=st.integers(0, 10_000))
def test_matches_per_sample_float64_reference_with_padding(batch, frames, classes, blank, reduction, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, frames, classes, generator=g)
    frame_lengths = torch.randint(1, frames + 1, (batch,), generator=g)
    frame_mask = torch.arange(frames)[None] < frame_lengths[:, None]
    target_lengths = torch.randint(0, 4, (batch,), generator=g)
    labels = [c for c in range(classes) if c != blank]
    targets = torch.tensor(labels)[torch.randint(len(labels), (batch, 4), generator=g)]
    got = ctc_loss(logits, targets, target_lengths, frame_mask, blank=blank, reduction=reduction)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(reference(logits, targets, target_lengths, frame_lengths, blank, reduction),
                                       rel=1e-5, abs=1e-6)


def test_padding_frames_and_targets_have_no_influence_on_value_or_gradient():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 7, 5, generator=g, requires_grad=True)
    frame_mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    targets, lengths = torch.tensor([[1, 2, 3], [4, 4, 1]]), torch.tensor([3, 1])
    loss = ctc_loss(logits, targets, lengths, frame_mask)
    loss.backward()
    assert logits.grad[1, 4:].abs().max() == 0  # frames past the mask get no gradient
    changed = logits.detach().clone()
    changed[1, 4:] += 100.0
    other_targets = torch.tensor([[1, 2, 3], [4, 2, 2]])
    assert float(ctc_loss(changed, other_targets, lengths, frame_mask)) == pytest.approx(float(loss.detach()), rel=1e-6)


def test_impossible_alignment_counts_zero_or_inf():
    logits = torch.zeros(1, 2, 3)  # two frames cannot hold "1 1" (a blank must separate the repeat)
    targets, lengths = torch.tensor([[1, 1]]), torch.tensor([2])
    assert float(ctc_loss(logits, targets, lengths)) == 0.0
    assert math.isinf(float(ctc_loss(logits, targets, lengths, zero_infinity=False)))


def test_term_reads_its_default_sources_and_validates_blank():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 6, 4, generator=g)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    batch = {"targets": torch.tensor([[1, 2], [3, 0]]), "target_lengths": torch.tensor([2, 1])}
    term = CTC()
    with_mask = term(**term.gather(ModelOutput(logits=logits, features={"frame_mask": mask}), None, batch))
    assert float(with_mask) == pytest.approx(float(ctc_loss(logits, batch["targets"], batch["target_lengths"], mask)))
    # a model without a frame mask: every frame counts
    without = term(**term.gather(ModelOutput(logits=logits), None, batch))
    assert float(without) == pytest.approx(float(ctc_loss(logits, batch["targets"], batch["target_lengths"])))
    assert float(without) != pytest.approx(float(with_mask))
    by_label = CTC(reduction="label")
    value = by_label(**by_label.gather(ModelOutput(logits=logits, features={"frame_mask": mask}), None, batch))
    assert float(value) == pytest.approx(float(ctc_loss(logits, batch["targets"], batch["target_lengths"], mask,
                                                        reduction="label")))
    with pytest.raises(ConfigError, match="CTC.blank"):
        CTC(blank=-1)
    with pytest.raises(ConfigError, match="CTC.reduction"):
        CTC(reduction="mean")
