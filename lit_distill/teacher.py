"""The frozen teacher."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from lit_distill.contracts import ModelOutput
from lit_distill.models.base import ModelAdapter, parse_dtype
from lit_distill.models.torch_module import as_adapter
from lit_distill.sources import OutputSpec


class Teacher(nn.Module):
    """Wraps the teacher model: frozen, always in eval mode, run under ``no_grad``.

    Its parameters never reach the optimizer (they do not require grad, so DDP
    does not synchronise them either), and by default they are left out of the
    saved checkpoint: on load the teacher is rebuilt from its own config.

    Args:
        model: the teacher model (an adapter such as ``HFCausalLM``, or any
            ``nn.Module``, which is wrapped in ``TorchModule``).
        dtype: run the teacher in this dtype (e.g. ``bfloat16``) to save memory
            and time; floating inputs are cast to it. None keeps the model's dtype.
            ``"auto"``: ``bfloat16`` where the device the teacher runs on multiplies bf16
            matrices natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX; decided
            at the first forward, from the device of the teacher's weights), else the
            model's dtype. On this project's CPUs (AVX512-BF16) it makes the quickstart's
            teacher forward 2.4x faster at a KL of ~4e-6 nats/position to float32
            (``bench/bf16_teacher.py``); on a CPU without bf16 instructions bf16 is emulated
            and slower, which is why it is not forced.
        in_checkpoint: also save the teacher's weights in checkpoints (needed
            only when the teacher cannot be rebuilt from its config).
    """

    def __init__(self, model: nn.Module, dtype: str | None = None, in_checkpoint: bool = False) -> None:
        super().__init__()
        self.model: ModelAdapter = as_adapter(model)
        self.auto_dtype = dtype == "auto"
        self.dtype = None if self.auto_dtype else parse_dtype(dtype, "Teacher.dtype", also_valid=", auto")
        self.in_checkpoint = in_checkpoint
        if self.dtype is not None:
            self.model.to(self.dtype)
        self.model.requires_grad_(False)
        self.train(False)
        # Normalisation of the images the datamodule produces (the student's), set by
        # DistillationModule when both sides are image adapters; see match_inputs_to.
        self.source_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def match_inputs_to(self, student: ModelAdapter) -> None:
        """Convert ``pixel_values`` normalised for ``student`` into what the teacher expects.

        When both models are image adapters, the teacher's input is un-normalised with
        the student's statistics, resized to the teacher's input size if it differs, and
        re-normalised with the teacher's (a no-op when everything matches).
        """
        from lit_distill.models.vision_base import ImageModelAdapter

        if isinstance(self.model, ImageModelAdapter) and isinstance(student, ImageModelAdapter):
            self.source_stats = (tuple(student.mean), tuple(student.std))

    def train(self, mode: bool = True) -> Teacher:
        """Keep the teacher in eval mode whatever the trainer asks (dropout off, BN frozen)."""
        return super().train(False)

    @property
    def output_size(self) -> int | None:
        """Size of the teacher's logits' last dimension when known without a forward."""
        return self.model.output_size

    def output_spec(self) -> OutputSpec:
        """What the teacher's ``ModelOutput`` can hold (its adapter's spec)."""
        return self.model.output_spec()

    def resolve_auto_dtype(self, device: torch.device | None = None) -> torch.dtype | None:
        """Settle ``dtype="auto"`` (once) for ``device``, by default the one the weights are on now.

        Returns:
            The dtype the teacher runs in, None for the model's own.
        """
        if self.auto_dtype:
            device = device or next((p.device for p in self.model.parameters()), torch.device("cpu"))
            self.auto_dtype = False
            if native_bf16(device):
                self.dtype = torch.bfloat16
                self.model.to(self.dtype)
        return self.dtype

    @torch.no_grad()
    def forward(self, **inputs: Any) -> ModelOutput:
        self.resolve_auto_dtype()
        if self.source_stats is not None and "pixel_values" in inputs:
            inputs = {**inputs, "pixel_values": self.model.prepare(inputs["pixel_values"], *self.source_stats)}
        if self.dtype is not None:
            inputs = {k: v.to(self.dtype) if isinstance(v, Tensor) and v.is_floating_point() else v
                      for k, v in inputs.items()}
        return self.model(**inputs)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware (not emulated)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False
