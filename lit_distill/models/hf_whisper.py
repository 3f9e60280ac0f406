"""``HFWhisperEncoder``: :class:`~lit_distill.models.hf_model.HFModel` for Whisper's encoder on
waveforms (``task: whisper-encoder``, for LM-SPT's loss), under its historic name.

The log-mel front end (:func:`whisper_log_mel`, :func:`whisper_mel_filters`) lives in
:mod:`~lit_distill.models.whisper_front_end`.
"""

from __future__ import annotations

from typing import Any

from lit_distill.models.hf_model import HFModel
from lit_distill.models.whisper_front_end import (
    WHISPER_SAMPLE_RATE,
    whisper_log_mel,
    whisper_mel_filters,
)


class HFWhisperEncoder(HFModel):
    """The encoder of a ``transformers`` Whisper model on waveforms: ``HFModel(task="whisper-encoder",
    ...)`` under its historic name.

    Give exactly one of ``path`` (a hub id such as ``openai/whisper-large-v3``, a directory written
    by ``save_pretrained`` of a ``WhisperModel`` or ``WhisperForConditionalGeneration``, or this
    adapter's export) or ``config`` (Whisper config fields for a fresh random encoder, e.g.
    ``{d_model: 64, encoder_layers: 2, encoder_attention_heads: 2, encoder_ffn_dim: 128,
    num_mel_bins: 80, max_source_positions: 150}``). Only the encoder is kept (the decoder is
    dropped). Every field means what it means in :class:`~lit_distill.models.hf_model.HFModel`;
    errors name ``HFWhisperEncoder.<field>``.

    The encoder's window is fixed: ``max_source_positions`` encoder frames = twice as many mel
    frames = ``2 * max_source_positions * 160`` samples at 16 kHz (1500 → 30 s for the released
    models). Shorter waveforms are zero-padded to it, as Whisper always does; the ``frame_mask``
    output marks the encoder frames that cover real audio. ``prepare``, ``encode_mel``,
    ``num_frames``, ``num_samples``, ``window_seconds`` and ``num_mel_bins`` come from
    :class:`~lit_distill.models.whisper_front_end.WhisperFrontEnd`.

    Args:
        path: hub id or local directory.
        config: Whisper config fields for a model built from scratch.
        sample_rate: rate of the waveforms given to :meth:`run` (Hz); other than 16 kHz they
            are resampled (``torchaudio.functional.resample``, differentiable).
        dtype: load the weights in this dtype (e.g. ``bfloat16``); None keeps float32 / the
            checkpoint's default.
        revision: hub revision (branch, tag or commit).
        output_hidden_states: also return every layer's hidden states.
        hooks: module paths whose outputs are recorded as features.

    Inputs of :meth:`run`: ``waveform`` ``[B, 1, T]`` or ``[B, T]``; optional ``waveform_mask``
    bool ``[B, T]`` (True on real samples; samples outside it are zeroed first).

    Outputs: ``ModelOutput(features={"last_hidden_state": [B, T_enc, D], "frame_mask": bool
    [B, T_enc]})`` with ``T_enc = max_source_positions``, plus ``hidden_states`` (``h_0`` after
    the convolutions and positions, ..., ``h_L``) when asked.
    """

    def __init__(self, path: str | None = None, config: dict[str, Any] | None = None,
                 sample_rate: int = WHISPER_SAMPLE_RATE, dtype: str | None = None, revision: str | None = None,
                 output_hidden_states: bool = False, hooks: list[str] | None = None) -> None:
        super().__init__("whisper-encoder", path=path, config=config, sample_rate=sample_rate, dtype=dtype,
                         revision=revision, output_hidden_states=output_hidden_states, hooks=hooks)


__all__ = ["HFWhisperEncoder", "whisper_log_mel", "whisper_mel_filters"]
