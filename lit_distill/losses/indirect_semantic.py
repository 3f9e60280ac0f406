"""LM-SPT's indirect semantic distillation as a YAML loss term.

``L_d = MSE(E(mel(x)), E(mel(x̂_sem)))`` with ``E`` a frozen ASR encoder (Whisper's in the paper),
``x`` the input and ``x̂_sem`` the auxiliary decoder's resynthesis from the semantic tokens. The
target side runs without gradient; gradients flow through ``E`` and the log-mel front end into
the auxiliary decoder and, straight through the semantic quantiser, into the semantic encoder.
Only encoder frames of real audio count (Whisper pads every input to its fixed window).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from lit_distill.contracts import LossTerm
from lit_distill.errors import ConfigError
from lit_distill.losses.speech_distill import indirect_semantic_loss
from lit_distill.models.hf_model import HFModel


class IndirectSemanticDistillation(LossTerm):
    """LM-SPT's ``L_d``: a frozen Whisper encoder compares the input with the semantic resynthesis.

    Both waveforms ``[B, 1, T]`` are zeroed outside ``waveform_mask`` (the reconstruction of
    padding samples is not audio), turned into Whisper log-mels padded to the encoder's window,
    and encoded; the loss is :func:`~lit_distill.losses.speech_distill.indirect_semantic_loss`:
    ``Σ_valid mean_D (E(mel x̂) − E(mel x))² / #valid`` over the encoder frames that cover real
    audio (``HFWhisperEncoder.prepare``'s ``frame_mask``).

    The encoder belongs to the term but is never trained: its parameters do not require grad
    (so the optimizer skips them), it stays in eval mode, and by default its weights are left
    out of checkpoints (it is rebuilt from its config on load).

    Args:
        encoder: the frozen ASR encoder, e.g. ``{class_path: lit_distill.models.HFWhisperEncoder,
            init_args: {path: openai/whisper-large-v3}}`` (or ``HFModel`` with ``task:
            whisper-encoder``); its ``sample_rate`` must be the data's.
        in_checkpoint: also save the encoder's weights in checkpoints (needed only when it cannot
            be rebuilt from its config, e.g. a random encoder without a fixed seed).
        weight: multiplier of this term in the total loss (LM-SPT: 500).
        sources: overrides of ``default_sources``: ``reconstruction`` (``[B, 1, T]``, default
            ``student.features.semantic_reconstruction``), ``waveform`` (``[B, 1, T]``, default
            ``batch.waveform``) and ``waveform_mask`` (bool ``[B, T]``, default
            ``batch.waveform_mask``; optional).
    """

    default_sources: ClassVar[dict[str, str]] = {
        "reconstruction": "student.features.semantic_reconstruction", "waveform": "batch.waveform",
        "waveform_mask": "batch.waveform_mask"}

    def __init__(self, encoder: nn.Module, in_checkpoint: bool = False, weight: float = 1.0,
                 sources: dict[str, str] | None = None) -> None:
        super().__init__(weight, sources)
        if not (isinstance(encoder, HFModel) and encoder.task == "whisper-encoder"):
            raise ConfigError(f"IndirectSemanticDistillation.encoder: got a {type(encoder).__name__}; valid: "
                              "lit_distill.models.HFWhisperEncoder (path: openai/whisper-... or config: {...}), "
                              "i.e. HFModel with task: whisper-encoder")
        self.encoder = encoder.requires_grad_(False).eval()
        self.in_checkpoint = in_checkpoint
        if not in_checkpoint:
            self.register_state_dict_post_hook(_drop_encoder_state)
            self.register_load_state_dict_post_hook(_ignore_missing_encoder)

    def train(self, mode: bool = True) -> IndirectSemanticDistillation:
        """Train mode for the term; the encoder stays in eval mode (no dropout, no layer drop)."""
        super().train(mode)
        self.encoder.eval()
        return self

    def forward(self, reconstruction: Tensor, waveform: Tensor, waveform_mask: Tensor | None = None) -> Tensor:
        """Args: reconstruction and waveform ``[B, 1, T]``, waveform_mask bool ``[B, T]``. Returns a 0-dim tensor."""
        if reconstruction.shape != waveform.shape:
            raise ConfigError(f"IndirectSemanticDistillation: reconstruction {list(reconstruction.shape)} "
                              f"({self.sources['reconstruction']}) and waveform {list(waveform.shape)} "
                              f"({self.sources['waveform']}) must have one shape")
        target_mel, frame_mask = self.encoder.prepare(waveform.detach(), waveform_mask)
        recon_mel, _ = self.encoder.prepare(reconstruction, waveform_mask)
        return indirect_semantic_loss(self.encoder.encode_mel, target_mel, recon_mel, frame_mask)


def _drop_encoder_state(module: nn.Module, state: dict, prefix: str, local_metadata) -> None:
    for key in [k for k in state if k.startswith(prefix + "encoder.")]:
        del state[key]


def _ignore_missing_encoder(module: IndirectSemanticDistillation, incompatible) -> None:
    names = tuple("encoder." + name for name in module.encoder.state_dict())
    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if not k.endswith(names)]


__all__ = ["IndirectSemanticDistillation"]
