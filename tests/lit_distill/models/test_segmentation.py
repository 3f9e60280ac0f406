"""Segmentation adapters: build and run, stem widening, export and reload."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from lit_distill.errors import ConfigError
from lit_distill.models import TimmSegmentation, TorchvisionSegmentation, widen_input_stem


@pytest.mark.parametrize("name", [
    "lraspp_mobilenet_v3_large",
    pytest.param("deeplabv3_mobilenet_v3_large", marks=pytest.mark.slow),
    pytest.param("fcn_resnet50", marks=pytest.mark.slow),  # 35M parameters: slow to initialise
])
def test_torchvision_models_build_and_run(name):
    torch.manual_seed(0)
    model = TorchvisionSegmentation(name, num_classes=5).eval()
    assert model.output_size == 5
    with torch.no_grad():
        out = model(pixel_values=torch.randn(2, 3, 32, 32))
    assert out.logits.shape == (2, 5, 32, 32) and torch.isfinite(out.logits).all()


def test_timm_model_builds_runs_and_trains():
    torch.manual_seed(0)
    model = TimmSegmentation("test_resnet", num_classes=7, out_indices=[1, 2, 4], head_channels=16)
    out = model(pixel_values=torch.randn(2, 3, 40, 48))
    assert out.logits.shape == (2, 7, 40, 48)
    out.logits.mean().backward()
    assert all(p.grad is not None for p in model.module.head.parameters())


def test_widening_keeps_outputs_for_a_zero_extra_channel():
    torch.manual_seed(0)
    base = TimmSegmentation("test_resnet", num_classes=4, head_channels=8).eval()
    wide = copy.deepcopy(base)
    path = widen_input_stem(wide.module, extra_channels=1, init_std=0.01)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = base(pixel_values=x).logits
        got = wide(pixel_values=torch.cat([x, torch.zeros(2, 1, 32, 32)], 1)).logits
        shifted = wide(pixel_values=torch.cat([x, torch.ones(2, 1, 32, 32)], 1)).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not torch.equal(shifted, expected)  # the new channel is live
    old, new = base.module.get_submodule(path), wide.module.get_submodule(path)
    assert new.in_channels == 4 and new.weight.shape[1] == 4
    torch.testing.assert_close(new.weight[:, :3], old.weight, rtol=0, atol=0)
    extra = new.weight[:, 3]
    assert extra.std().item() == pytest.approx(0.01, rel=0.35)  # small: N(0, 0.01²)
    assert extra.abs().max().item() < 0.1 * old.weight.abs().max().item()


def test_adapter_widening_matches_for_torchvision_and_zero_init():
    torch.manual_seed(0)
    base = TorchvisionSegmentation("lraspp_mobilenet_v3_large", num_classes=3).eval()
    torch.manual_seed(0)
    wide = TorchvisionSegmentation("lraspp_mobilenet_v3_large", num_classes=3, extra_input_channels=1).eval()
    assert wide.stem_path is not None
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(wide(pixel_values=torch.cat([x, torch.zeros(1, 1, 32, 32)], 1)).logits,
                                   base(pixel_values=x).logits, rtol=0, atol=0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    widen_input_stem(net, 2, init_std=0.0)
    assert net[0].weight.shape == (4, 5, 3, 3) and (net[0].weight[:, 3:] == 0).all()


def test_export_and_reload_through_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = TimmSegmentation("test_resnet", num_classes=4, head_channels=8, extra_input_channels=1).eval()
    model.export(str(tmp_path))
    config = json.loads((tmp_path / "segmentation_config.json").read_text())
    assert config["class_path"] == "lit_distill.models.segmentation.TimmSegmentation"
    assert config["init_args"]["extra_input_channels"] == 1
    reloaded = TimmSegmentation(**config["init_args"], checkpoint=str(tmp_path / "model_state_dict.pt")).eval()
    x = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=x).logits, model(pixel_values=x).logits)
    with pytest.raises(ConfigError, match="shape mismatches"):
        TimmSegmentation("test_resnet", num_classes=4, head_channels=8,
                         checkpoint=str(tmp_path / "model_state_dict.pt"))


def test_bad_arguments():
    with pytest.raises(ConfigError, match="TorchvisionSegmentation.name"):
        TorchvisionSegmentation("lraspp_mobilenet", num_classes=3)
    with pytest.raises(ConfigError, match="TimmSegmentation.name"):
        TimmSegmentation("not_a_model", num_classes=3)
    with pytest.raises(ConfigError, match="extra_input_channels"):
        widen_input_stem(nn.Sequential(nn.Conv2d(1, 2, 3)), 1)


def test_init_from_a_baseline_keeps_its_weights_and_widens_with_the_authors_std(tmp_path):
    torch.manual_seed(0)
    baseline = TimmSegmentation("test_resnet", num_classes=4, head_channels=8).eval()
    baseline.export(str(tmp_path))
    torch.manual_seed(1)  # another init: everything but the new channel must come from the baseline
    teacher = TimmSegmentation("test_resnet", num_classes=4, head_channels=8, extra_input_channels=1,
                               init_from=str(tmp_path / "model_state_dict.pt")).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(teacher(pixel_values=torch.cat([x, torch.zeros(2, 1, 32, 32)], 1)).logits,
                                   baseline(pixel_values=x).logits, rtol=0, atol=0)
    extra = teacher.module.get_submodule(teacher.stem_path).weight[:, 3]
    assert extra.std().item() == pytest.approx(0.1, rel=0.35)  # LAD's 0.1 * randn
    student = TimmSegmentation("test_resnet", num_classes=4, head_channels=8,
                               init_from=str(tmp_path / "model_state_dict.pt")).eval()
    with torch.no_grad():
        torch.testing.assert_close(student(pixel_values=x).logits, baseline(pixel_values=x).logits, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="TimmSegmentation.init_from"):
        TimmSegmentation("test_resnet", num_classes=5, head_channels=8, init_from=str(tmp_path / "model_state_dict.pt"))
