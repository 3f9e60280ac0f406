"""Typed sources: parsing, reading, and the check against each adapter's declared outputs before training."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from lit_distill import ConfigError, DistillationModule, LossTerm, ModelOutput
from lit_distill.losses import CrossEntropy, ForwardKL, FusedForwardKL
from lit_distill.models import HFCausalLM, MultiModel, TorchModule
from lit_distill.sources import OutputSpec, Source, SourceError

LLAMA = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
         "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 32}

names = st.text(st.sampled_from("abcxyz_0123."), min_size=1, max_size=12).filter(
    lambda s: not s.startswith(".") and not s.endswith("."))


@given(st.sampled_from(["student", "teacher"]), st.integers(-50, 50))
def test_hidden_state_paths_round_trip(side, layer):
    source = Source.parse(f"{side}.hidden_states.{layer}")
    assert (source.root, source.field, source.key) == (side, "hidden_states", layer)
    assert Source.parse(source.path) == source and source == f"{side}.hidden_states.{layer}"


@given(st.sampled_from(["student", "teacher"]), names)
def test_feature_names_keep_their_dots(side, name):
    source = Source.parse(f"{side}.features.{name}")
    assert (source.field, source.key) == ("features", name)
    assert str(source) == f"{side}.features.{name}" and hash(source) == hash(str(source))


def test_whole_tuples_and_named_teachers():
    assert Source.parse("student.hidden_states") == Source("student", "hidden_states", None)
    assert Source.parse("teacher.features").key is None
    assert Source.parse("teachers.bert.logits") == "teacher.features.bert.logits"
    assert Source.parse("teachers.bert.hidden_states.-1").key == "bert.hidden_states.-1"
    out = ModelOutput(hidden_states=(torch.zeros(1),), features={"a.logits": torch.ones(1)})
    assert Source.parse("teacher.features").read(None, out, {}) is out.features
    assert Source.parse("batch.inputs.attention_mask").read(None, None, {"inputs": {"attention_mask": 3}}) == 3


@given(names)
def test_batch_keys(key):
    source = Source.parse(f"batch.{key}")
    assert (source.root, source.field, source.key, source.is_model_output) == ("batch", "batch", key, False)


@pytest.mark.parametrize("path, reason", [
    ("logits", "must start with"), ("student", "must start with"), ("student.logit", "valid forms"),
    ("student.logits.0", "valid forms"), ("teacher.hidden_states.last", "integer layer index"),
    ("teacher.featurez", "valid forms"), ("pupil.logits", "must start with"), ("teachers.bert", "teachers.<name>")])
def test_malformed_paths_say_what_is_valid(path, reason):
    with pytest.raises(ValueError, match=reason):
        Source.parse(path)


def test_read_and_presence():
    s = ModelOutput(logits=torch.ones(2, 3), hidden_states=(torch.zeros(1), torch.ones(1)))
    t = ModelOutput(features={"lm_head.weight": torch.eye(2)})
    batch = {"labels": torch.tensor([1, 2])}
    assert Source.parse("student.hidden_states.-1").read(s, t, batch) is s.hidden_states[-1]
    assert Source.parse("teacher.features.lm_head.weight").read(s, t, batch) is t.features["lm_head.weight"]
    assert not Source.parse("teacher.features.lm_head.bias").present(s, t, batch)
    assert not Source.parse("batch.loss_mask").present(s, t, batch)
    with pytest.raises(SourceError, match="features are"):
        Source.parse("teacher.features.lm_head.bias").read(s, t, batch)
    with pytest.raises(KeyError):  # a SourceError is also a KeyError and a ConfigError
        Source.parse("batch.loss_mask").read(s, t, batch)


def test_spec_problems():
    closed = OutputSpec(logits=False, hidden_states=3, features=frozenset({"pooled"}), closed=True)
    assert closed.problem(Source.parse("student.logits")) == "this model returns no logits"
    assert closed.problem(Source.parse("student.hidden_states.-3")) is None
    assert "out of range" in closed.problem(Source.parse("student.hidden_states.3"))
    assert closed.problem(Source.parse("student.features.pooled")) is None
    assert closed.problem(Source.parse("student.features.tokens")) == "this model has no such feature"
    assert "output_hidden_states" in OutputSpec(hidden_states=0).problem(Source.parse("student.hidden_states.0"))
    assert OutputSpec().problem(Source.parse("student.features.anything")) is None  # open: checked at the step
    assert closed.describe() == "hidden_states.<i> (i in [-3, 2]), features.pooled"


def lm(**kwargs) -> HFCausalLM:
    return HFCausalLM(config=LLAMA, vocab_size=40, **kwargs)


@pytest.mark.parametrize("sources, needles", [
    ({"student_logits": "student.hidden_states.-1"}, ["sources.student_logits", "output_hidden_states"]),
    ({"teacher_logits": "teacher.features.logitz"}, ["teacher.features.logitz", "no such feature",
                                                     "HFCausalLM) gives logits"]),
])
def test_a_source_the_model_cannot_give_fails_before_training(sources, needles):
    with pytest.raises(ConfigError) as err:
        DistillationModule(lm(), {"kd": ForwardKL(sources=sources)}, teacher=lm())
    for needle in needles:
        assert needle in str(err.value)
    assert str(err.value).startswith("model.init_args.losses.kd.init_args.sources.")


def test_layer_index_is_checked_against_the_depth():
    DistillationModule(lm(output_hidden_states=True),
                       {"kd": ForwardKL(sources={"student_logits": "student.hidden_states.-3"})}, teacher=lm())
    with pytest.raises(ConfigError, match="out of range for 3 hidden states"):
        DistillationModule(lm(output_hidden_states=True),
                           {"kd": ForwardKL(sources={"student_logits": "student.hidden_states.3"})}, teacher=lm())


def test_fused_terms_accept_a_head_without_bias():
    module = DistillationModule(lm(compute_logits=False), {"kd": FusedForwardKL()}, teacher=lm(compute_logits=False))
    assert "lm_head.bias" not in module.student.output_spec().features
    # named explicitly, an absent bias is an error instead of a silent omission
    with pytest.raises(ConfigError, match="student_bias"):
        DistillationModule(lm(compute_logits=False),
                           {"kd": FusedForwardKL(sources={"student_bias": "student.features.lm_head.bias"})},
                           teacher=lm(compute_logits=False))


def test_multi_model_declares_its_members_outputs():
    multi = MultiModel({"text": lm(output_hidden_states=True)})
    spec = multi.output_spec()
    assert spec.closed and {"text.logits", "text.hidden_states.-1", "text.hidden_states.2"} <= spec.features
    assert spec.problem(Source.parse("teacher.features.text.hidden_states.3")) == "this model has no such feature"


def test_open_adapters_defer_to_the_first_step():
    net = TorchModule(torch.nn.Linear(4, 3), hooks=[])
    assert net.output_spec() == OutputSpec()

    class Reads(LossTerm):
        default_sources = {"x": "student.features.whatever"}

        def forward(self, x):
            return x.sum()

    module = DistillationModule(net, {"r": Reads()})  # cannot be known before running
    batch = {"inputs": {"x": torch.ones(2, 4)}, "labels": torch.tensor([0, 1])}
    with pytest.raises(ConfigError, match=r"^model\.init_args\.losses\.r\.init_args\.sources: .*features are"):
        module.training_step(batch, 0)


def test_a_named_batch_source_must_exist():
    module = DistillationModule(TorchModule(torch.nn.Linear(4, 3)),
                                {"ce": CrossEntropy(sources={"labels": "batch.targets"})})
    with pytest.raises(ConfigError, match="no key 'targets'"):
        module.training_step({"inputs": {"x": torch.ones(2, 4)}, "labels": torch.tensor([0, 1])}, 0)
