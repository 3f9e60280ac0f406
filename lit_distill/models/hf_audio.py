"""``HFSpeechEncoder``: :class:`~lit_distill.models.hf_model.HFModel` for speech encoders (HuBERT,
WavLM, wav2vec 2.0, ...) on raw waveforms, under its historic name."""

from __future__ import annotations

from typing import Any

from lit_distill.models.hf_model import HFModel
from lit_distill.models.speech_front_end import normalize_waveform


class HFSpeechEncoder(HFModel):
    """A ``transformers`` speech encoder on waveforms: ``HFModel(task="speech-encoder",
    output_hidden_states=True, ...)`` under its historic name.

    Give exactly one of ``path`` (a hub id or a directory written by ``save_pretrained``) or
    ``config`` (``model_type`` plus the architecture's fields, for a fresh random model). Its
    frame rate is ``sample_rate / total_stride`` (320 for HuBERT/WavLM base: 50 Hz at 16 kHz;
    see :mod:`~lit_distill.models.speech_front_end`). Used frozen inside ``lit_distill.Teacher``.
    Every field means what it means in :class:`~lit_distill.models.hf_model.HFModel`; errors
    name ``HFSpeechEncoder.<field>``.

    Args:
        path: hub id (e.g. ``facebook/hubert-base-ls960``) or local directory.
        config: architecture fields for a model built from scratch, e.g.
            ``{model_type: hubert, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2,
            intermediate_size: 64, conv_dim: [32, 32], conv_stride: [5, 4], conv_kernel: [10, 4]}``.
        normalize: normalise every utterance to zero mean and unit variance before the model
            (set it as the checkpoint's ``preprocessor_config.json`` ``do_normalize`` says).
        dtype: load the weights in this dtype; None keeps float32 / the checkpoint's default.
        revision: hub revision (branch, tag or commit).
        hooks: module paths whose outputs are recorded as features.

    Inputs: ``waveform`` float ``[B, 1, T]`` (or ``[B, T]``) at the model's sample rate;
    optional ``waveform_mask`` bool ``[B, T]`` (used for the normalisation statistics only).

    Outputs: ``ModelOutput(hidden_states=(h_0, ..., h_L))``, each ``[B, F, D]`` (``h_0`` is the
    projected convolutional features, ``h_L`` the last layer), and
    ``features={"last_hidden_state": [B, F, D]}``; ``logits`` is None.
    """

    def __init__(self, path: str | None = None, config: dict[str, Any] | None = None, normalize: bool = False,
                 dtype: str | None = None, revision: str | None = None, hooks: list[str] | None = None) -> None:
        super().__init__("speech-encoder", path=path, config=config, normalize=normalize, dtype=dtype,
                         revision=revision, output_hidden_states=True, hooks=hooks)


__all__ = ["HFSpeechEncoder", "normalize_waveform"]
