"""Teacher(dtype="auto"): bfloat16 only where the device multiplies bf16 natively."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_distill import ConfigError, Teacher
from lit_distill import teacher as teacher_module


def linear_teacher(dtype: str | None) -> Teacher:
    torch.manual_seed(0)
    return Teacher(nn.Linear(8, 5), dtype=dtype)


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_is_bfloat16_exactly_where_the_device_has_native_bf16(monkeypatch, native):
    asked = []
    monkeypatch.setattr(teacher_module, "native_bf16", lambda device: asked.append(device) or native)
    teacher = linear_teacher("auto")
    assert all(p.dtype == torch.float32 for p in teacher.parameters())  # undecided until the device is known
    x = torch.randn(3, 8)
    out = teacher(x=x)
    expected = torch.bfloat16 if native else torch.float32
    assert asked == [torch.device("cpu")]
    assert teacher.dtype == (torch.bfloat16 if native else None)
    assert all(p.dtype == expected for p in teacher.parameters())
    assert out.logits.dtype == expected and not out.logits.requires_grad
    reference = linear_teacher("bfloat16" if native else None)(x=x).logits
    assert torch.equal(out.logits, reference)
    teacher(x=x)
    assert len(asked) == 1  # decided once


def test_auto_dtype_resolved_for_a_given_device_before_the_weights_move(monkeypatch):
    monkeypatch.setattr(teacher_module, "native_bf16", lambda device: device.type == "cuda")
    teacher = linear_teacher("auto")
    assert teacher.resolve_auto_dtype(torch.device("cuda")) == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in teacher.parameters())
    assert teacher.resolve_auto_dtype(torch.device("cpu")) == torch.bfloat16  # settled: not decided again


def test_native_bf16_on_this_cpu_matches_its_instruction_set():
    expected = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert teacher_module.native_bf16(torch.device("cpu")) == expected
    assert teacher_module.native_bf16(torch.device("meta")) is False


def test_a_dtype_that_is_neither_auto_nor_floating_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"Teacher.dtype: 'int8' is not a floating dtype \(valid: .*, auto\)"):
        linear_teacher("int8")


class _Holder:
    """Stands for DistillationModule's signature: a teacher typed as any module."""

    def __init__(self, teacher: nn.Module | None = None) -> None:
        self.teacher = teacher


def test_dtype_null_on_the_command_line_for_a_nested_teacher_keeps_the_models_dtype(tmp_path):
    """jsonargparse hands ``...teacher.init_args.dtype=null`` to a nested class as the string 'None'."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    config = tmp_path / "config.yaml"
    config.write_text(f"holder:\n  class_path: {__name__}._Holder\n  init_args:\n    teacher:\n"
                      "      class_path: lit_distill.Teacher\n      init_args:\n        dtype: bfloat16\n"
                      "        model: {class_path: torch.nn.Linear, init_args: {in_features: 8, out_features: 5}}\n")
    parser = ArgumentParser()
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_argument("--holder", type=_Holder)
    cfg = parser.parse_args(["--config", str(config), "--holder.init_args.teacher.init_args.dtype=null"])
    teacher = parser.instantiate_classes(cfg).holder.teacher
    assert teacher.dtype is None and all(p.dtype == torch.float32 for p in teacher.parameters())
