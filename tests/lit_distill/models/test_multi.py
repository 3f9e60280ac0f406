"""MultiModel: named members on their own inputs, outputs flattened into features."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_distill.contracts import ModelOutput, resolve_source
from lit_distill.errors import ConfigError
from lit_distill.models import ModelAdapter, MultiModel


class Recorder(ModelAdapter):
    """Records the names of its inputs; runs on the one whose width fits."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.module = nn.Linear(width, width)
        self.seen: list[str] = []

    def run(self, **inputs):
        self.seen = sorted(inputs)
        x = next(v for v in inputs.values() if v.shape[-1] == self.module.in_features).float()
        h0 = self.module(x)
        return ModelOutput(logits=h0.sum(-1, keepdim=True), hidden_states=(h0, 2 * h0, 3 * h0),
                           features={"mean": h0.mean(-1)})


def test_members_get_their_inputs_and_outputs_are_named():
    speech, text = Recorder(4), Recorder(3)
    multi = MultiModel({"speech": speech, "text": text}, inputs={"speech": ["waveform"]})
    waveform, ids = torch.randn(2, 5, 4), torch.randn(2, 7, 3)
    out = multi(waveform=waveform, ids=ids)
    assert speech.seen == ["waveform"] and text.seen == ["ids", "waveform"]  # unlisted: every entry
    assert out.logits is None and out.hidden_states is None
    h = speech.module(waveform)
    assert torch.allclose(out.features["speech.hidden_states.-1"], 3 * h)
    assert out.features["speech.hidden_states.2"] is out.features["speech.hidden_states.-1"]
    assert out.features["speech.hidden_states.0"] is out.features["speech.hidden_states.-3"]
    assert torch.allclose(out.features["speech.mean"], h.mean(-1))
    assert out.features["text.logits"].shape == (2, 7, 1)
    # a loss source reaches a member's layer through the usual path syntax
    got = resolve_source("teacher.features.text.hidden_states.-2", ModelOutput(), out, {})
    assert torch.allclose(got, 2 * text.module(ids))


def test_a_plain_module_member_is_wrapped():
    multi = MultiModel({"net": nn.Linear(3, 2)})
    out = multi(x=torch.ones(1, 3))
    assert out.features["net.logits"].shape == (1, 2)


@pytest.mark.parametrize(("members", "inputs", "match"), [
    ({}, None, "at least one"),
    ({"a.b": nn.Linear(1, 1)}, None, "without dots"),
    ({"a": nn.Linear(1, 1)}, {"b": ["x"]}, r"\['b'\] are not members"),
])
def test_bad_config(members, inputs, match):
    with pytest.raises(ConfigError, match=match):
        MultiModel(members, inputs)


def test_missing_input_names_the_member():
    multi = MultiModel({"speech": Recorder(2)}, inputs={"speech": ["waveform"]})
    with pytest.raises(ConfigError, match=r"MultiModel.inputs.speech: \['waveform'\] are not in the inputs"):
        multi(input_ids=torch.ones(1, 2))


def test_export_writes_every_member(tmp_path):
    multi = MultiModel({"a": nn.Linear(2, 2), "b": nn.Linear(2, 3)})
    multi.export(str(tmp_path))
    for name, width in (("a", 2), ("b", 3)):
        state = torch.load(tmp_path / name / "model_state_dict.pt", weights_only=True)
        assert state["weight"].shape == (width, 2)
