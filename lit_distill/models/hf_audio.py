"""Hugging Face speech encoders (HuBERT, WavLM, wav2vec 2.0, ...) as teachers on raw waveforms."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lit_distill.contracts import ModelOutput
from lit_distill.errors import ConfigError
from lit_distill.models.base import ModelAdapter, parse_dtype
from lit_distill.models.hf_loading import load_pretrained_checked
from lit_distill.sources import OutputSpec


def normalize_waveform(waveform: Tensor, waveform_mask: Tensor | None = None, eps: float = 1e-7) -> Tensor:
    """Zero mean, unit variance per utterance over its real samples (``do_normalize`` of the
    ``Wav2Vec2FeatureExtractor``): ``(x - mean) / sqrt(var + eps)``, population variance,
    padding samples set to 0.

    Args:
        waveform: ``[B, T]``.
        waveform_mask: bool ``[B, T]``, True on real samples (None: all real).
        eps: added to the variance.

    Returns:
        ``[B, T]`` in the input's dtype.
    """
    x = waveform.double()
    m = torch.ones_like(x) if waveform_mask is None else waveform_mask.to(x.dtype)
    count = m.sum(-1, keepdim=True).clamp_min(1)
    mean = (x * m).sum(-1, keepdim=True) / count
    var = ((x - mean).pow(2) * m).sum(-1, keepdim=True) / count
    return ((x - mean) / torch.sqrt(var + eps) * m).to(waveform.dtype)


class HFSpeechEncoder(ModelAdapter):
    """A ``transformers`` speech encoder (``AutoModel``: HuBERT, WavLM, wav2vec 2.0) on waveforms.

    Give exactly one of ``path`` (a hub id or a directory written by ``save_pretrained``) or
    ``config`` (``model_type`` plus the architecture's fields, for a fresh random model). Its
    frame rate is ``sample_rate / prod(conv_stride)`` (320 for HuBERT/WavLM base: 50 Hz at
    16 kHz); a waveform of ``T`` samples gives ``F`` frames with ``L ← floor((L - k) / s) + 1``
    over the feature extractor's (kernel ``k``, stride ``s``) layers. Used frozen inside
    ``lit_distill.Teacher``.

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
        super().__init__(hooks)
        if (path is None) == (config is None):
            raise ConfigError("HFSpeechEncoder: give exactly one of 'path' (hub id or local directory) "
                              "or 'config' (a dict with model_type, e.g. hubert or wavlm, to build a fresh model)")
        self.path = path
        self.normalize = normalize
        torch_dtype = parse_dtype(dtype, "HFSpeechEncoder.dtype")
        if path is not None:
            self.module = _load_pretrained(path, torch_dtype, revision)
        else:
            self.module = _build_from_config(dict(config), torch_dtype)
        self._install_hooks()

    @property
    def hidden_size(self) -> int:
        """Width ``D`` of the hidden states."""
        return int(self.module.config.hidden_size)

    @property
    def total_stride(self) -> int:
        """Input samples per output frame: the product of the feature extractor's strides."""
        return int(torch.tensor(list(self.module.config.conv_stride)).prod().item())

    def declared_outputs(self) -> OutputSpec:
        """Every layer's hidden states (the CNN features first) and ``features.last_hidden_state``."""
        layers = getattr(self.module.config, "num_hidden_layers", None)
        return OutputSpec(logits=False, hidden_states=None if layers is None else int(layers) + 1,
                          features=frozenset({"last_hidden_state"}), closed=True)

    def run(self, waveform: Tensor, waveform_mask: Tensor | None = None, **_: Any) -> ModelOutput:
        if waveform.dim() == 3:
            if waveform.shape[1] != 1:
                raise ConfigError(f"HFSpeechEncoder: waveform must be mono [B, 1, T], got {list(waveform.shape)}")
            waveform = waveform[:, 0]
        elif waveform.dim() != 2:
            raise ConfigError(f"HFSpeechEncoder: waveform must be [B, 1, T] or [B, T], got {list(waveform.shape)}")
        if self.normalize:
            waveform = normalize_waveform(waveform, waveform_mask)
        out = self.module(input_values=waveform, output_hidden_states=True)
        return ModelOutput(hidden_states=tuple(out.hidden_states),
                           features={"last_hidden_state": out.last_hidden_state})

    def export(self, out_dir: str) -> None:
        """``save_pretrained`` the encoder into ``out_dir``."""
        self.module.save_pretrained(out_dir)


def _load_pretrained(path: str, dtype: torch.dtype | None, revision: str | None):
    from transformers import AutoModel

    return load_pretrained_checked(AutoModel, path, "HFSpeechEncoder.path", "facebook/hubert-base-ls960",
                                   dtype=dtype, revision=revision)


try:  # newer transformers validate configs through huggingface_hub's strict dataclasses
    from huggingface_hub.errors import StrictDataclassClassValidationError

    _CONFIG_VALIDATION_ERRORS: tuple[type[Exception], ...] = (StrictDataclassClassValidationError,)
except ImportError:  # pragma: no cover - older huggingface_hub
    _CONFIG_VALIDATION_ERRORS = ()


def _build_from_config(config: dict[str, Any], dtype: torch.dtype | None):
    from transformers import AutoConfig, AutoModel

    model_type = config.pop("model_type", None)
    if model_type is None:
        raise ConfigError("HFSpeechEncoder.config: needs 'model_type' (e.g. hubert, wavlm, wav2vec2)")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise ConfigError(f"HFSpeechEncoder.config.model_type: '{model_type}' is not a transformers model type "
                          "(e.g. hubert, wavlm, wav2vec2)")
    try:
        hf_config = AutoConfig.for_model(model_type, **config)
    except (ValueError, TypeError, *_CONFIG_VALIDATION_ERRORS) as err:
        raise ConfigError("HFSpeechEncoder.config: " + " ".join(line.strip() for line in str(err).splitlines())) from err
    if not hasattr(hf_config, "conv_stride"):
        raise ConfigError(f"HFSpeechEncoder.config.model_type: '{model_type}' is not a waveform encoder with a "
                          "convolutional feature extractor (valid: hubert, wavlm, wav2vec2, ...)")
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    return AutoModel.from_config(hf_config, **kwargs)


__all__ = ["HFSpeechEncoder", "normalize_waveform"]
