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
