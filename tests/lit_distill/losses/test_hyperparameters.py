"""Every loss term's numeric hyperparameters are plain attributes that ``forward`` reads.

That is what lets :class:`lit_distill.callbacks.ParameterSchedule` anneal any of them. The
terms are discovered through ``lit_distill.losses.__all__``; each has an example here (simple
tensors it can run on) that says, for each int/float constructor argument, how a changed
value shows: ``changes`` (the value a probe computes differs), ``same_value`` (a different
memory layout, identical value by design), or ``built_in`` (it sizes layers or buffers at
construction, so it is no attribute and a schedule refuses it). A new term, or a new
argument of a term, fails :func:`test_every_numeric_argument_is_accounted_for` until it is
added here.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

import lit_distill.losses as losses
from lit_distill.contracts import LossTerm

TERMS = {name: getattr(losses, name) for name in losses.__all__
         if inspect.isclass(getattr(losses, name)) and issubclass(getattr(losses, name), LossTerm)}

SKIPPED = {
    "LogitDivergence": "abstract base of the logit terms (no divergence); every subclass is tested",
    "IndirectSemanticDistillation": "needs a Whisper encoder model; its only numeric argument is weight",
}


def numeric_arguments(cls: type) -> list[str]:
    """Constructor arguments annotated int or float (not bool, not a sequence)."""
    names = []
    for name, parameter in inspect.signature(cls).parameters.items():
        annotation = str(parameter.annotation)
        if re.search(r"\b(int|float)\b", annotation) and "Sequence" not in annotation:
            names.append(name)
    return names


def forward_value(term: LossTerm, inputs: dict[str, Any]) -> torch.Tensor:
    torch.manual_seed(0)  # terms that sample (TRG's tokens) sample the same positions
    return term(**inputs).detach()


@dataclass
class Example:
    kwargs: dict[str, Any]
    inputs: Callable[[], dict[str, Any]]
    changes: dict[str, Any] = field(default_factory=dict)
    same_value: dict[str, Any] = field(default_factory=dict)
    built_in: tuple[str, ...] = ()
    probe: Callable[[LossTerm, dict[str, Any]], torch.Tensor] = forward_value


def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def logits_pair(vocab_student: int = 7, vocab_teacher: int = 7) -> dict[str, Any]:
    g = generator()
    mask = torch.tensor([[True, True, False], [True, True, True]])
    return {"student_logits": torch.randn(2, 3, vocab_student, generator=g),
            "teacher_logits": torch.randn(2, 3, vocab_teacher, generator=g), "mask": mask}


CLASS_COUNTS = [50, 20, 9, 4, 2]


def classification() -> dict[str, Any]:
    return {"logits": torch.randn(6, 5, generator=generator()), "labels": torch.tensor([0, 1, 2, 3, 4, 0])}


def alm_inputs() -> dict[str, Any]:
    g = generator()
    chunks = torch.eye(4, dtype=torch.bool).expand(2, 4, 4)
    return {"student_logits": torch.randn(2, 4, 7, generator=g), "teacher_logits": torch.randn(2, 4, 9, generator=g),
            "student_labels": torch.randint(0, 7, (2, 4), generator=g),
            "teacher_labels": torch.randint(0, 9, (2, 4), generator=g),
            "student_chunks": chunks, "teacher_chunks": chunks,
            "student_space_mask": torch.arange(7) % 2 == 0, "teacher_space_mask": torch.arange(9) % 2 == 0}


def uld_inputs() -> dict[str, Any]:
    pair = logits_pair(7, 9)
    mask = pair.pop("mask")
    return {**pair, "student_mask": mask, "teacher_mask": mask}


def fused_inputs() -> dict[str, Any]:
    g = generator()
    return {"student_hidden": torch.randn(2, 3, 4, generator=g), "student_weight": torch.randn(7, 4, generator=g),
            "teacher_hidden": torch.randn(2, 3, 5, generator=g), "teacher_weight": torch.randn(7, 5, generator=g),
            "mask": torch.tensor([[True, True, False], [True, True, True]])}


def fused_ce_inputs() -> dict[str, Any]:
    g = generator()
    return {"hidden": torch.randn(2, 3, 4, generator=g), "head_weight": torch.randn(7, 4, generator=g),
            "labels": torch.tensor([[0, 1, 2], [3, 0, 6]])}


def dense_pair() -> dict[str, Any]:
    g = generator()
    return {"student_logits": torch.randn(2, 3, 4, 4, generator=g),
            "teacher_logits": torch.randn(2, 3, 4, 4, generator=g)}


def pixel_ce() -> dict[str, Any]:
    g = generator()
    return {"logits": torch.randn(2, 3, 4, 4, generator=g), "labels": torch.randint(0, 3, (2, 4, 4), generator=g)}


def preference() -> dict[str, Any]:
    g = generator()
    return {"student_logits": torch.randn(4, 3, 7, generator=g), "teacher_logits": torch.randn(4, 3, 7, generator=g),
            "labels": torch.randint(0, 7, (4, 3), generator=g), "mask": torch.ones(4, 3, dtype=torch.bool)}


def fused_sparse_cache() -> dict[str, Any]:
    """The cache of :func:`sparse_cache` against a student's hidden states ``[2, 3, 4]`` × head ``[7, 4]``."""
    cache = sparse_cache()
    del cache["student_logits"]
    g = generator()
    return {**cache, "student_hidden": torch.randn(2, 3, 4, generator=g), "student_weight": torch.randn(7, 4, generator=g)}


def sparse_cache() -> dict[str, Any]:
    g = generator()
    probs = torch.softmax(torch.randn(2, 3, 7, generator=g), dim=-1)
    top = probs.topk(2, dim=-1)
    return {"student_logits": torch.randn(2, 3, 7, generator=g), "topk_ids": top.indices,
            "topk_logprobs": top.values.log(), "tail_mass": 1.0 - top.values.sum(-1),
            "mask": torch.tensor([[True, True, False], [True, True, True]])}


def waveforms() -> dict[str, Any]:
    g = generator()
    return {"reconstruction": torch.randn(2, 1, 256, generator=g), "waveform": torch.randn(2, 1, 256, generator=g)}


def codec_features() -> dict[str, Any]:
    g = generator()
    waveform_mask = torch.ones(2, 20, dtype=torch.bool)
    waveform_mask[1, 10:] = False
    return {"student_features": torch.randn(2, 6, 5, generator=g), "teacher_features": torch.randn(2, 7, 6, generator=g),
            "waveform_mask": waveform_mask}


def ctc_inputs() -> dict[str, Any]:
    g = generator()
    frame_mask = torch.ones(2, 6, dtype=torch.bool)
    frame_mask[1, 4:] = False
    return {"logits": torch.randn(2, 6, 5, generator=g), "targets": torch.tensor([[1, 2, 3], [2, 2, 0]]),
            "target_lengths": torch.tensor([3, 2]), "frame_mask": frame_mask}


def taid_after_updates(term: LossTerm, inputs: dict[str, Any]) -> torch.Tensor:
    """TAID's t_start, t_end, alpha and beta act through ``update`` (once per optimizer step)."""
    term.update(torch.tensor(2.0), 0, 10)  # the first update only records the loss
    term.update(torch.tensor(1.0), 2, 10)
    return forward_value(term, inputs)


LOGIT = {"changes": {"temperature": 2.0}, "same_value": {"chunk_size": 2}}
EXAMPLES: dict[str, Example] = {
    "ForwardKL": Example({}, logits_pair, **LOGIT),
    "ReverseKL": Example({}, logits_pair, **LOGIT),
    "GeneralizedJSD": Example({}, logits_pair, {"beta": 0.2, "temperature": 2.0}, {"chunk_size": 2}),
    "SkewKL": Example({}, logits_pair, {"alpha": 0.3, "temperature": 2.0}, {"chunk_size": 2}),
    "SkewReverseKL": Example({}, logits_pair, {"alpha": 0.3, "temperature": 2.0}, {"chunk_size": 2}),
    "TotalVariation": Example({}, logits_pair, same_value={"chunk_size": 2}),
    "TAID": Example({"alpha": 1.0}, logits_pair,
                    {"t_start": 0.9, "t_end": 0.45, "alpha": 0.5, "beta": 0.0}, {"chunk_size": 2},
                    probe=taid_after_updates),
    "CrossEntropy": Example({}, classification, {"ignore_index": 0, "label_smoothing": 0.1}),
    "LogitAdjustedCrossEntropy": Example({"class_counts": CLASS_COUNTS}, classification,
                                         {"ignore_index": 0, "label_smoothing": 0.1, "tau": 0.5,
                                          "class_counts": CLASS_COUNTS[::-1]}),
    "DeiTHardDistillation": Example({}, lambda: {"dist_logits": torch.randn(4, 5, generator=generator()),
                                                 "teacher_logits": torch.randn(4, 5)}),
    "ALM": Example({"debias": True}, alm_inputs, {"tau": 5.0, "eps": 0.01, "space_threshold": 0.95}),
    "ULD": Example({}, uld_inputs, {"temperature": 2.0, "top_k": 2}),
    "TRG": Example({"student_dim": 6, "teacher_dim": 8, "num_tokens": 5, "k": 3, "projection_dim": 4},
                   lambda: {"student_tokens": torch.randn(2, 10, 6, generator=generator()),
                            "teacher_tokens": torch.randn(2, 10, 8)},
                   {"num_tokens": 4, "k": 2, "sigma": 0.5, "temperature": 0.5, "local_weight": 0.5,
                    "global_weight": 0.5, "contextual_weight": 0.5},
                   built_in=("student_dim", "teacher_dim", "projection_dim")),
    "FusedForwardKL": Example({}, fused_inputs, {"temperature": 2.0}, {"chunk_size": 2}),
    "FusedReverseKL": Example({}, fused_inputs, {"temperature": 2.0}, {"chunk_size": 2}),
    "FusedCrossEntropy": Example({}, fused_ce_inputs, {"ignore_index": 0}, {"chunk_size": 2}),
    "ChannelWiseDistillation": Example({}, dense_pair, {"temperature": 2.0}),
    "PixelKD": Example({}, dense_pair, {"temperature": 2.0}),
    "PixelCrossEntropy": Example({}, pixel_ce, {"ignore_index": 0}),
    "DPO": Example({}, preference, {"beta": 0.5}),
    "MoEAuxLoss": Example({}, lambda: {"aux": torch.tensor(0.3)}),
    "SparseForwardKL": Example({}, sparse_cache, {"temperature": 2.0}, {"chunk_size": 2}),
    "FusedSparseForwardKL": Example({}, fused_sparse_cache, {"temperature": 2.0}, {"chunk_size": 2}),
    "CodecReconstruction": Example({"mel_fft_sizes": [64, 32], "n_mels": 8, "stft_fft_sizes": [64, 32]}, waveforms,
                                   {"mel_weight": 0.5, "waveform_weight": 1.0, "stft_weight": 1.0},
                                   built_in=("sample_rate", "n_mels")),
    "CTC": Example({}, ctc_inputs, {"blank": 4}),
    "MultiLabelBCE": Example({}, lambda: {"logits": torch.randn(2, 5, generator=generator()),
                                          "targets": (torch.rand(2, 5, generator=generator()) > 0.5).float()}),
    "Commitment": Example({}, lambda: {"commit_loss": torch.tensor(0.3)}),
    "FeatureMSE": Example({}, lambda: {"student_features": torch.randn(2, 3, 4, generator=generator()),
                                       "teacher_features": torch.randn(2, 3, 4)},
                          built_in=("student_dim", "teacher_dim")),
    "CodecFeatureDistillation": Example({"mode": "t_axis"}, codec_features, {"lambda_cos": 3.0, "hop_length": 4},
                                        built_in=("student_dim", "teacher_dim")),
    "HiddenStatesMSE": Example({}, lambda: {"student_hidden": tuple(torch.randn(2, 3, 4, generator=generator())
                                                                    for _ in range(3)),
                                            "teacher_hidden": tuple(torch.randn(2, 3, 4) for _ in range(5))},
                               built_in=("student_dim", "teacher_dim")),
    "AttentionDistillation": Example({}, lambda: {"student_attention": torch.rand(2, 2, 3, 3, generator=generator())
                                                  .softmax(-1), "teacher_attention": torch.rand(2, 2, 3, 3).softmax(-1)}),
    "MiniLMRelation": Example({"heads": 2, "sources": {"student_states": "student.features.q",
                                                        "teacher_states": "teacher.features.q"}},
                              lambda: {"student_states": torch.randn(2, 3, 4, generator=generator()),
                                       "teacher_states": torch.randn(2, 3, 8)}, {"heads": 4}),
    "AdaSPEC": Example({}, lambda: {**logits_pair(), "reference_logits": torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(7))},
                       {"keep": 0.2}),
    "EnsembleKD": Example({"teachers": ["a", "b"], "weighting": "entropy"},
                          lambda: {"student_logits": torch.randn(4, 5, generator=generator()),
                                   "teacher_features": {"a.logits": torch.randn(4, 5), "b.logits": 3 * torch.randn(4, 5)}},
                          {"temperature": 2.0, "weight_temperature": 0.3}),
    "EmbeddingDistillation": Example({}, lambda: {"student_embedding": torch.randn(3, 4, generator=generator()),
                                                  "teacher_embedding": torch.randn(3, 4)},
                                     built_in=("student_dim", "teacher_dim")),
}


def cases(kind: str) -> list:
    return [pytest.param(name, arg, id=f"{name}.{arg}") for name in sorted(TERMS) if name in EXAMPLES
            for arg in getattr(EXAMPLES[name], kind)]


def build(name: str) -> LossTerm:
    torch.manual_seed(0)
    return TERMS[name](**EXAMPLES[name].kwargs)


def test_the_terms_are_discovered_from_the_package():
    assert {"ForwardKL", "GeneralizedJSD", "TRG", "ULD", "TAID", "CodecReconstruction"} <= set(TERMS)


@pytest.mark.parametrize("name", sorted(TERMS))
def test_every_numeric_argument_is_accounted_for(name):
    if name in SKIPPED:
        assert set(numeric_arguments(TERMS[name])) <= {"weight", "temperature", "chunk_size"}, SKIPPED[name]
        return
    assert name in EXAMPLES, f"{name}: add an Example (or a reason in SKIPPED)"
    example = EXAMPLES[name]
    accounted = {"weight", *example.changes, *example.same_value, *example.built_in}
    assert set(numeric_arguments(TERMS[name])) == accounted


@pytest.mark.parametrize(("name", "arg"), cases("changes"))
def test_a_changed_attribute_changes_what_the_term_computes(name, arg):
    term, example = build(name), EXAMPLES[name]
    default = inspect.signature(TERMS[name]).parameters[arg].default
    assert getattr(term, arg) == example.kwargs.get(arg, default)
    before = example.probe(term, example.inputs())
    term = build(name)
    setattr(term, arg, example.changes[arg])
    assert getattr(term, arg) == example.changes[arg]
    after = example.probe(term, example.inputs())
    assert torch.isfinite(after).all() and not torch.allclose(before, after), (before, after)


@pytest.mark.parametrize(("name", "arg"), cases("same_value"))
def test_a_layout_attribute_is_settable_and_keeps_the_value(name, arg):
    example = EXAMPLES[name]
    before = example.probe(build(name), example.inputs())
    term = build(name)
    setattr(term, arg, example.same_value[arg])
    assert getattr(term, arg) == example.same_value[arg]
    torch.testing.assert_close(example.probe(term, example.inputs()), before)


@pytest.mark.parametrize(("name", "arg"), cases("built_in"))
def test_an_argument_built_into_layers_is_not_an_attribute_a_schedule_could_set(name, arg):
    assert not hasattr(build(name), arg)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_weight_is_a_settable_float(name):
    term = build(name)
    assert term.weight == float(inspect.signature(TERMS[name]).parameters["weight"].default)
    term.weight = 0.25
    assert term.weight == 0.25
