"""``CTCHead``: a linear CTC head on any encoder adapter's features, for encoders that have no
``...ForCTC`` class in ``transformers`` (Whisper's encoder: ``HFWhisperEncoder``).

Trained with :class:`lit_distill.losses.CTC`; exported as the encoder's own export (so the encoder
loads alone, e.g. with ``HFWhisperEncoder(path=DIR)``) plus the head's weights in ``ctc_head.pt``.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from lit_distill.contracts import ModelOutput
from lit_distill.errors import ConfigError
from lit_distill.models.base import ModelAdapter
from lit_distill.models.torch_module import as_adapter
from lit_distill.sources import OutputSpec

HEAD_FILE = "ctc_head.pt"


class CTCHead(ModelAdapter):
    """An encoder adapter plus a linear layer from one of its features to per-frame class logits.

    In YAML: ``student: {class_path: lit_distill.models.CTCHead, init_args: {encoder:
    {class_path: lit_distill.models.HFWhisperEncoder, init_args: {config: {...}}}}}``
    (``num_classes`` is linked from ``datamodules.ASRDataModule``).

    Args:
        encoder: the encoder (any model adapter, e.g. ``HFWhisperEncoder``); its outputs pass
            through (features such as ``frame_mask``, hidden states).
        num_classes: CTC classes, blank included (linked from the data's ``num_classes``).
        feature: the encoder feature the head reads, ``[B, F, D]``.
        hidden_size: ``D``; default the encoder's ``hidden_size``.
        path: a directory written by :meth:`export`: the head's weights are loaded from its
            ``ctc_head.pt`` (give the encoder the same directory as its ``path``).
        hooks: module paths (inside this adapter) whose outputs are recorded as features.

    Outputs: the encoder's :class:`~lit_distill.contracts.ModelOutput` with ``logits``
    ``[B, F, num_classes]``.
    """

    def __init__(self, encoder: nn.Module, num_classes: int | None = None, feature: str = "last_hidden_state",
                 hidden_size: int | None = None, path: str | None = None, hooks: list[str] | None = None) -> None:
        super().__init__(hooks)
        if num_classes is None or num_classes < 2:
            raise ConfigError(f"CTCHead.num_classes: needs the number of CTC classes (blank included, >= 2), got "
                              f"{num_classes}; a datamodule with num_classes (datamodules.ASRDataModule) links it")
        self.module = as_adapter(encoder)
        width = hidden_size if hidden_size is not None else getattr(self.module, "hidden_size", None)
        if width is None:
            raise ConfigError(f"CTCHead.hidden_size: {type(self.module).__name__} has no hidden_size; give it")
        self.feature, self.num_classes = feature, num_classes
        self.head = nn.Linear(int(width), num_classes)
        if path is not None:
            file = os.path.join(path, HEAD_FILE)
            if not os.path.isfile(file):
                raise ConfigError(f"CTCHead.path: no {HEAD_FILE} in '{path}' (written by the export of a CTCHead)")
            self.head.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
        self._install_hooks()

    @property
    def model(self) -> nn.Module:
        """This adapter (hooks name paths such as ``head`` or ``module.module.layers.0``)."""
        return self

    @property
    def output_size(self) -> int:
        return self.num_classes

    def declared_outputs(self) -> OutputSpec | None:
        """The encoder's outputs (its hooked features included), with logits."""
        return replace(self.module.output_spec(), logits=True)

    def run(self, **inputs: Any) -> ModelOutput:
        out = self.module(**inputs)
        if self.feature not in out.features:
            raise ConfigError(f"CTCHead.feature: '{self.feature}' is not among the encoder's features "
                              f"{sorted(out.features)}")
        return ModelOutput(logits=self.head(out.features[self.feature]), hidden_states=out.hidden_states,
                           features=out.features)

    def export(self, out_dir: str) -> None:
        """The encoder's export in ``out_dir``, and the head's weights in ``out_dir/ctc_head.pt``."""
        self.module.export(out_dir)
        torch.save(self.head.state_dict(), os.path.join(out_dir, HEAD_FILE))


class TokenCTCProbe(ModelAdapter):
    """A linear CTC probe on discrete tokens: one row of class logits per token id, zero at the start.

    What a codec's tokens say about the characters spoken: trained with
    :class:`lit_distill.losses.CTC` on frozen token sequences (``datamodules.TokenCTCDataModule``),
    it emits ``table[token]`` at every frame. Zero-initialised, so before training every frame is
    uniform over the classes.

    Args:
        vocab_size: token ids ``[0, vocab_size)`` (linked from the data).
        num_classes: CTC classes, blank included (linked from the data).

    Inputs: ``input_ids`` long ``[B, F]``; optional ``attention_mask`` ``[B, F]`` (1 on real frames).
    Outputs: ``logits`` ``[B, F, num_classes]`` and ``features.frame_mask`` bool ``[B, F]``
    (``attention_mask``, or every frame).
    """

    def __init__(self, vocab_size: int | None = None, num_classes: int | None = None) -> None:
        super().__init__()
        for field, value in (("vocab_size", vocab_size), ("num_classes", num_classes)):
            if value is None or value < 1:
                raise ConfigError(f"TokenCTCProbe.{field}: needs a positive size, got {value}; "
                                  "datamodules.TokenCTCDataModule links it")
        self.module = nn.Embedding(vocab_size, num_classes)
        nn.init.zeros_(self.module.weight)

    @property
    def output_size(self) -> int:
        return self.module.embedding_dim

    @property
    def table(self) -> torch.Tensor:
        """The probe, ``[vocab_size, num_classes]`` logits."""
        return self.module.weight

    def declared_outputs(self) -> OutputSpec:
        return OutputSpec(logits=True, hidden_states=0, features=frozenset({"frame_mask"}), closed=True)

    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any) -> ModelOutput:
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        return ModelOutput(logits=self.module(input_ids), features={"frame_mask": mask})
