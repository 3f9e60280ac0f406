"""TorchModule: any nn.Module, its outputs turned into a ModelOutput."""

from __future__ import annotations

import torch
from torch import nn

from lit_distill import ModelOutput
from lit_distill.models import TorchModule, as_adapter
from lit_distill.models.torch_module import to_model_output


class DictNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.body(x)
        return {"logits": self.head(h), "embedding": h}


def test_single_input_is_passed_positionally_and_tensor_is_logits():
    net = nn.Linear(4, 3)
    out = TorchModule(net)(pixel_values=torch.ones(2, 4))
    torch.testing.assert_close(out.logits, net(torch.ones(2, 4)))


def test_mapping_output_gives_logits_and_features():
    out = TorchModule(DictNet())(x=torch.ones(2, 4))
    assert out.logits.shape == (2, 3) and out.features["embedding"].shape == (2, 8)


def test_hooks_capture_submodule_outputs():
    out = TorchModule(DictNet(), hooks=["body"])(x=torch.ones(5, 4))
    assert out.features["body"].shape == (5, 8)


def test_a_deep_copy_captures_its_own_features():
    import copy

    original = TorchModule(DictNet(), hooks=["body"])
    clone = copy.deepcopy(original)
    with torch.no_grad():
        clone.module.body.weight.mul_(2)
    out = clone(x=torch.ones(3, 4))
    torch.testing.assert_close(out.features["body"], clone.module.body(torch.ones(3, 4)))
    assert original._captured == {}  # nothing leaked into the original


def test_conversions_and_wrapping():
    t = torch.zeros(2, 2)
    assert to_model_output((t, t)).logits is t
    existing = ModelOutput(logits=t)
    assert to_model_output(existing) is existing
    adapter = TorchModule(nn.Identity())
    assert as_adapter(adapter) is adapter
    assert isinstance(as_adapter(nn.Identity()), TorchModule)
