"""The ``speech-encoder`` task of :class:`~lit_distill.models.hf_model.HFModel`: waveform encoders
with a convolutional feature extractor (HuBERT, WavLM, wav2vec 2.0, ... through ``AutoModel``).

Its frame rate is ``sample_rate / prod(conv_stride)`` (320 for HuBERT/WavLM base: 50 Hz at
16 kHz); a waveform of ``T`` samples gives ``F`` frames with ``L ← floor((L - k) / s) + 1``
over the feature extractor's (kernel ``k``, stride ``s``) layers.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lit_distill.contracts import ModelOutput
from lit_distill.errors import ConfigError
from lit_distill.models.hf_loading import load_pretrained_checked
from lit_distill.sources import OutputSpec

try:  # newer transformers validate configs through huggingface_hub's strict dataclasses
    from huggingface_hub.errors import StrictDataclassClassValidationError

    _CONFIG_VALIDATION_ERRORS: tuple[type[Exception], ...] = (StrictDataclassClassValidationError,)
except ImportError:  # pragma: no cover - older huggingface_hub
    _CONFIG_VALIDATION_ERRORS = ()


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


def mono(waveform: Tensor, name: str) -> Tensor:
    """``[B, 1, T]`` or ``[B, T]`` → ``[B, T]``; anything else is a ConfigError naming ``name``."""
    if waveform.dim() == 3:
        if waveform.shape[1] != 1:
            raise ConfigError(f"{name}: waveform must be mono [B, 1, T], got {list(waveform.shape)}")
        waveform = waveform[:, 0]
    if waveform.dim() != 2:
        raise ConfigError(f"{name}: waveform must be [B, 1, T] or [B, T], got {list(waveform.shape)}")
    return waveform


def build_speech_model(auto_class: str, config: dict[str, Any], field: str, dtype: torch.dtype | None) -> nn.Module:
    """A fresh ``transformers.<auto_class>`` waveform model from ``model_type`` and the architecture's
    fields (``config`` is consumed); a ConfigError naming ``field`` for anything else."""
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = config.pop("model_type", None)
    if model_type is None:
        raise ConfigError(f"{field}: needs 'model_type' (e.g. hubert, wavlm, wav2vec2)")
    if model_type not in CONFIG_MAPPING:
        raise ConfigError(f"{field}.model_type: '{model_type}' is not a transformers model type "
                          "(e.g. hubert, wavlm, wav2vec2)")
    try:
        hf_config = AutoConfig.for_model(model_type, **config)
    except (ValueError, TypeError, *_CONFIG_VALIDATION_ERRORS) as err:
        raise ConfigError(f"{field}: " + " ".join(line.strip() for line in str(err).splitlines())) from err
    if not hasattr(hf_config, "conv_stride"):
        raise ConfigError(f"{field}.model_type: '{model_type}' is not a waveform encoder with a "
                          "convolutional feature extractor (valid: hubert, wavlm, wav2vec2, ...)")
    return getattr(transformers, auto_class).from_config(hf_config, **({} if dtype is None else {"dtype": dtype}))


def hidden_state_count(config: Any, layers_field: str, output_hidden_states: bool) -> int | None:
    """How many hidden states a speech encoder returns: 0 when not asked, ``layers + 1`` (the
    input of the first layer, then each layer's output), None when ``config`` does not say."""
    layers = getattr(config, layers_field, None)
    return (None if layers is None else int(layers) + 1) if output_hidden_states else 0


class SpeechEncoderFrontEnd(nn.Module):
    """Waveform in, the last hidden state (and, when asked, every layer's) out, for a speech encoder.

    Args:
        module: the ``AutoModel`` speech encoder (its config gives the strides).
        name: the adapter's class name, for messages.
        normalize: normalise every utterance to zero mean and unit variance before the model.
    """

    example: ClassVar[str] = "facebook/hubert-base-ls960"  # shown when a path does not load
    fields: ClassVar[tuple[str, ...]] = ("normalize",)  # the HFModel fields it takes
    exports: ClassVar[tuple[str, ...]] = ("normalize", "total_stride")  # reachable on the adapter

    def __init__(self, module: nn.Module, name: str, normalize: bool = False) -> None:
        super().__init__()
        strides = getattr(module.config, "conv_stride", None)
        if strides is None:  # a loaded checkpoint of another kind (a fresh one is checked in build)
            raise ConfigError(f"{name}.path: {type(module).__name__} is not a waveform encoder with a convolutional "
                              "feature extractor (valid: hubert, wavlm, wav2vec2, ...)")
        self.name, self.normalize = name, normalize
        self.total_stride = math.prod(int(s) for s in strides)  # input samples per frame

    def extra_repr(self) -> str:
        return f"normalize={self.normalize}, total_stride={self.total_stride}"

    @staticmethod
    def load(path: str, field: str, dtype: torch.dtype | None, revision: str | None) -> nn.Module:
        """The ``AutoModel`` saved at ``path`` (hub id or local directory)."""
        from transformers import AutoModel

        return load_pretrained_checked(AutoModel, path, field, SpeechEncoderFrontEnd.example, dtype=dtype,
                                       revision=revision)

    @staticmethod
    def build(config: dict[str, Any], field: str, dtype: torch.dtype | None) -> nn.Module:
        """A fresh ``AutoModel`` from ``model_type`` and the architecture's fields (``config`` is consumed)."""
        return build_speech_model("AutoModel", config, field, dtype)

    def declared_outputs(self, config: Any, output_hidden_states: bool) -> OutputSpec:
        """``features.last_hidden_state`` and, when asked, every layer's hidden states (CNN features first)."""
        hidden = hidden_state_count(config, "num_hidden_layers", output_hidden_states)
        return OutputSpec(logits=False, hidden_states=hidden, features=frozenset({"last_hidden_state"}), closed=True)

    def run(self, module: nn.Module, output_hidden_states: bool, waveform: Tensor,
            waveform_mask: Tensor | None = None, **_: Any) -> ModelOutput:
        """``waveform`` ``[B, 1, T]`` or ``[B, T]``, ``waveform_mask`` bool ``[B, T]`` (for the
        normalisation statistics only) → ``last_hidden_state`` ``[B, F, D]`` and hidden states."""
        waveform = mono(waveform, self.name)
        if self.normalize:
            waveform = normalize_waveform(waveform, waveform_mask)
        out = module(input_values=waveform, output_hidden_states=output_hidden_states)
        return ModelOutput(hidden_states=tuple(out.hidden_states) if output_hidden_states else None,
                           features={"last_hidden_state": out.last_hidden_state})


class SpeechCTCFrontEnd(SpeechEncoderFrontEnd):
    """The ``speech-ctc`` task: a waveform encoder with a CTC head (``AutoModelForCTC``: HuBERT,
    WavLM, wav2vec 2.0 ``...ForCTC``), its per-frame class logits and the mask of real frames.

    Like :class:`SpeechEncoderFrontEnd`, no attention mask reaches the model: padding is read as
    silence (batch utterances of similar length, e.g. ``datamodules.ASRDataModule``'s buckets).
    ``waveform_mask`` serves the normalisation and the frame mask: frame ``f`` of a sample is real
    when ``f`` is below the feature extractor's output length for the sample's real samples.

    Args:
        module: the ``...ForCTC`` model (its config gives the strides and ``vocab_size`` classes).
        name: the adapter's class name, for messages.
        normalize: normalise every utterance to zero mean and unit variance before the model.
        num_classes: the data's classes (blank included), checked against the model's.
    """

    example: ClassVar[str] = "facebook/hubert-large-ls960-ft"
    fields: ClassVar[tuple[str, ...]] = ("normalize", "num_classes")

    def __init__(self, module: nn.Module, name: str, normalize: bool = False, num_classes: int | None = None) -> None:
        super().__init__(module, name, normalize)
        if not all(hasattr(module, part) for part in ("base_model", "dropout", "lm_head")):
            raise ConfigError(f"{name}.path: {type(module).__name__} is not a CTC model with an encoder, a dropout "
                              "and an lm_head (valid: HubertForCTC, Wav2Vec2ForCTC, WavLMForCTC, ...)")
        self.output_size = int(module.config.vocab_size)
        if num_classes is not None and num_classes != self.output_size:
            raise ConfigError(f"{name}.num_classes: the data has {num_classes} classes but the model has "
                              f"{self.output_size} outputs (config vocab_size); use a model trained on this alphabet")

    @staticmethod
    def load(path: str, field: str, dtype: torch.dtype | None, revision: str | None) -> nn.Module:
        """The ``AutoModelForCTC`` saved at ``path`` (hub id or local directory)."""
        from transformers import AutoModelForCTC

        return load_pretrained_checked(AutoModelForCTC, path, field, SpeechCTCFrontEnd.example, dtype=dtype,
                                       revision=revision)

    @staticmethod
    def build(config: dict[str, Any], field: str, dtype: torch.dtype | None,
              num_classes: int | None = None) -> nn.Module:
        """A fresh ``AutoModelForCTC``; ``num_classes`` (linked from the data) sets its ``vocab_size``."""
        if num_classes is not None:
            if config.get("vocab_size", num_classes) != num_classes:
                raise ConfigError(f"{field}.vocab_size: {config['vocab_size']} output classes, but the data has "
                                  f"{num_classes} (num_classes); leave vocab_size out to take the data's")
            config["vocab_size"] = num_classes
        return build_speech_model("AutoModelForCTC", config, field, dtype)

    def declared_outputs(self, config: Any, output_hidden_states: bool) -> OutputSpec:
        """``logits``, ``features.last_hidden_state`` / ``features.frame_mask`` and, when asked,
        every layer's hidden states."""
        hidden = hidden_state_count(config, "num_hidden_layers", output_hidden_states)
        return OutputSpec(logits=True, hidden_states=hidden,
                          features=frozenset({"last_hidden_state", "frame_mask"}), closed=True)

    def run(self, module: nn.Module, output_hidden_states: bool, waveform: Tensor,
            waveform_mask: Tensor | None = None, **_: Any) -> ModelOutput:
        """``waveform`` ``[B, 1, T]`` or ``[B, T]``, ``waveform_mask`` bool ``[B, T]`` → ``logits``
        ``[B, F, C]``, ``last_hidden_state`` ``[B, F, D]`` (what the head reads), ``frame_mask`` bool
        ``[B, F]`` and, when asked, the hidden states (as ``speech-encoder`` returns them)."""
        waveform = mono(waveform, self.name)
        if self.normalize:
            waveform = normalize_waveform(waveform, waveform_mask)
        # ...ForCTC's own forward, in two parts: its encoder's output_hidden_states end before the final
        # layer norm of pre-LN models, so the state the head reads is taken from the encoder itself
        out = module.base_model(input_values=waveform, output_hidden_states=output_hidden_states)
        logits = module.lm_head(module.dropout(out.last_hidden_state))
        frames = logits.shape[1]
        if waveform_mask is None:
            frame_mask = torch.ones(waveform.shape[0], frames, dtype=torch.bool, device=waveform.device)
        else:
            lengths = module._get_feat_extract_output_lengths(waveform_mask.sum(-1))
            frame_mask = torch.arange(frames, device=waveform.device)[None] < lengths[:, None]
        return ModelOutput(logits=logits, hidden_states=tuple(out.hidden_states) if output_hidden_states else None,
                           features={"last_hidden_state": out.last_hidden_state, "frame_mask": frame_mask})
