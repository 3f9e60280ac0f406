"""The ``whisper-encoder`` task of :class:`~lit_distill.models.hf_model.HFModel`: Whisper's encoder
on waveforms, with a differentiable log-mel front end (for LM-SPT's loss).

Whisper reads 16 kHz audio as an 80- (or, from large-v3, 128-) band log-mel spectrogram with a
400-sample Hann window and a 160-sample hop (100 mel frames/s), always padded to the encoder's
fixed window (30 s: 3000 mel frames, 1500 encoder frames; its two convolutions halve the rate).
:func:`whisper_log_mel` computes that spectrogram in torch, so that gradients flow from the
encoder back into the waveform (LM-SPT's indirect distillation trains a decoder through it).
"""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from lit_distill.contracts import ModelOutput
from lit_distill.errors import ConfigError
from lit_distill.models.hf_loading import load_pretrained_checked
from lit_distill.models.speech_front_end import hidden_state_count, mono
from lit_distill.sources import OutputSpec

WHISPER_SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160


def whisper_mel_filters(n_mels: int = 80, dtype: torch.dtype = torch.float32) -> Tensor:
    """Whisper's Slaney mel filter bank ``[1 + N_FFT // 2, n_mels]`` (0 to 8 kHz at 16 kHz)."""
    from transformers.audio_utils import mel_filter_bank

    filters = mel_filter_bank(num_frequency_bins=1 + N_FFT // 2, num_mel_filters=n_mels, min_frequency=0.0,
                              max_frequency=8000.0, sampling_rate=WHISPER_SAMPLE_RATE, norm="slaney",
                              mel_scale="slaney")
    return torch.from_numpy(filters).to(dtype)


def whisper_log_mel(waveform: Tensor, num_samples: int, mel_filters: Tensor) -> Tensor:
    """Whisper's log-mel spectrogram of ``waveform`` zero-padded to ``num_samples``, differentiable.

    The same values as ``transformers.WhisperFeatureExtractor`` with ``padding="max_length"``:
    power STFT (Hann 400, hop 160, centred, reflect padding), mel filters, the last frame
    dropped, ``log10(max(mel, 1e-10))``, floored at its per-utterance maximum minus 8, then
    ``(x + 4) / 4``.

    Args:
        waveform: ``[B, T]`` or ``[B, 1, T]`` at 16 kHz, ``T <= num_samples`` (samples past the
            real audio should be zero, as the feature extractor pads).
        num_samples: the encoder's input length in samples (``2 * max_source_positions * 160``).
        mel_filters: ``[201, M]`` from :func:`whisper_mel_filters`.

    Returns:
        ``[B, M, num_samples // 160]`` in the waveform's dtype (computed in at least float32).
    """
    waveform = mono(waveform, "whisper_log_mel")
    if waveform.shape[-1] > num_samples:
        raise ConfigError(f"whisper_log_mel: {waveform.shape[-1]} samples exceed the encoder's window of "
                          f"{num_samples} samples")
    dtype = torch.promote_types(waveform.dtype, torch.float32)
    x = torch.nn.functional.pad(waveform.to(dtype), (0, num_samples - waveform.shape[-1]))
    window = torch.hann_window(N_FFT, dtype=dtype, device=x.device)
    spec = torch.stft(x, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect", return_complex=True)
    power = spec.real.pow(2) + spec.imag.pow(2)  # [B, 201, frames + 1]; no abs(): smooth at 0
    mel = torch.einsum("bfn,fm->bmn", power[..., :-1], mel_filters.to(dtype=dtype, device=x.device))
    log_mel = mel.clamp_min(1e-10).log10()
    peak = log_mel.amax(dim=(1, 2), keepdim=True)
    log_mel = torch.maximum(log_mel, peak - 8.0)
    return ((log_mel + 4.0) / 4.0).to(waveform.dtype)



class WhisperFrontEnd(nn.Module):
    """Waveform in, Whisper encoder states and the mask of real-audio frames out.

    The encoder's window is fixed: ``max_source_positions`` encoder frames = twice as many mel
    frames = ``2 * max_source_positions * 160`` samples at 16 kHz (1500 → 30 s for the released
    models). Shorter waveforms are zero-padded to it, as Whisper always does; ``frame_mask``
    marks the encoder frames that cover real audio.

    Args:
        module: the ``WhisperEncoder`` (its config gives the window and the mel bands).
        name: the adapter's class name, for messages.
        sample_rate: rate of the waveforms given (Hz); other than 16 kHz they are resampled
            (``torchaudio.functional.resample``, differentiable).
    """

    example: ClassVar[str] = "openai/whisper-large-v3"  # shown when a path does not load
    fields: ClassVar[tuple[str, ...]] = ("sample_rate",)  # the HFModel fields it takes
    exports: ClassVar[tuple[str, ...]] = ("sample_rate", "mel_filters", "num_mel_bins", "num_frames", "num_samples",
                                          "window_seconds", "prepare", "encode_mel")  # reachable on the adapter

    def __init__(self, module: nn.Module, name: str, sample_rate: int = WHISPER_SAMPLE_RATE) -> None:
        super().__init__()
        if sample_rate < 1:
            raise ConfigError(f"{name}.sample_rate must be positive, got {sample_rate}")
        self.name, self.sample_rate = name, int(sample_rate)
        # a reference, not a submodule: the adapter owns the weights (its state_dict keys stay module.*)
        self._encoder = (module,)
        self.num_mel_bins = int(module.config.num_mel_bins)  # 80, or 128 from large-v3
        self.num_frames = int(module.config.max_source_positions)  # encoder frames per window
        self.register_buffer("mel_filters", whisper_mel_filters(self.num_mel_bins), persistent=False)

    def extra_repr(self) -> str:
        return f"sample_rate={self.sample_rate}, num_mel_bins={self.num_mel_bins}, num_frames={self.num_frames}"

    @property
    def num_samples(self) -> int:
        """The window in 16 kHz samples: ``2 * num_frames * 160``."""
        return 2 * self.num_frames * HOP_LENGTH

    @property
    def window_seconds(self) -> float:
        """The window in seconds."""
        return self.num_samples / WHISPER_SAMPLE_RATE

    @staticmethod
    def load(path: str, field: str, dtype: torch.dtype | None, revision: str | None) -> nn.Module:
        """The encoder of the ``WhisperModel`` / ``WhisperForConditionalGeneration`` at ``path``, or
        an encoder exported alone (``save_pretrained`` of a ``WhisperEncoder``)."""
        from transformers import WhisperModel
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        config_file = os.path.join(path, "config.json")
        if os.path.isfile(config_file):
            with open(config_file) as f:
                if json.load(f).get("architectures") == ["WhisperEncoder"]:
                    return load_pretrained_checked(WhisperEncoder, path, field, WhisperFrontEnd.example, dtype=dtype,
                                                   revision=revision)
        model = load_pretrained_checked(WhisperModel, path, field, WhisperFrontEnd.example, dtype=dtype,
                                        revision=revision)
        encoder = model.get_encoder()
        del model  # the decoder goes with it
        return encoder

    @staticmethod
    def build(config: dict[str, Any], field: str, dtype: torch.dtype | None) -> nn.Module:
        """A fresh ``WhisperEncoder`` from Whisper config fields (``config`` is consumed)."""
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        config.pop("model_type", None)
        try:
            hf_config = WhisperConfig(**config)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"{field}: " + " ".join(str(err).split())) from err
        if hf_config.max_source_positions < 1 or hf_config.d_model % hf_config.encoder_attention_heads:
            raise ConfigError(f"{field}: max_source_positions must be >= 1 and d_model divisible by "
                              f"encoder_attention_heads (got {hf_config.max_source_positions}, {hf_config.d_model}, "
                              f"{hf_config.encoder_attention_heads})")
        encoder = WhisperEncoder(hf_config)
        return encoder.to(dtype) if dtype is not None else encoder

    def prepare(self, waveform: Tensor, waveform_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Waveform at ``sample_rate`` → (log-mel ``[B, M, 2 * T_enc]``, frame_mask bool ``[B, T_enc]``).

        Samples outside ``waveform_mask`` are zeroed; the audio is resampled to 16 kHz if needed,
        and padding past the window is cut (real audio past it is a ConfigError).
        """
        waveform = mono(waveform, self.name)
        b, t = waveform.shape
        if waveform_mask is None:
            lengths = torch.full((b,), t, dtype=torch.long, device=waveform.device)
        else:
            waveform = waveform * waveform_mask.to(waveform.dtype)
            lengths = waveform_mask.sum(-1)
        if self.sample_rate != WHISPER_SAMPLE_RATE:
            import torchaudio

            waveform = torchaudio.functional.resample(waveform, self.sample_rate, WHISPER_SAMPLE_RATE)
            lengths = torch.ceil(lengths.double() * WHISPER_SAMPLE_RATE / self.sample_rate).long()
        if waveform.shape[-1] > self.num_samples:
            longest = int(lengths.max())  # host sync only on this rare path
            if longest > self.num_samples:
                raise ConfigError(
                    f"{self.name}: a waveform of {longest / WHISPER_SAMPLE_RATE:.2f} s exceeds the encoder's "
                    f"window of {self.window_seconds:.2f} s (max_source_positions={self.num_frames}); use shorter "
                    "crops (data.init_args.crop_seconds) or an encoder with a longer window")
            waveform = waveform[:, : self.num_samples]
        mel = whisper_log_mel(waveform, self.num_samples, self.mel_filters)
        mel_lengths = torch.div(lengths + HOP_LENGTH - 1, HOP_LENGTH, rounding_mode="floor")  # ceil(len / hop)
        enc = torch.arange(self.num_frames, device=waveform.device)
        # conv2 (stride 2) centres encoder frame e on mel frame 2e.
        frame_mask = 2 * enc[None] < mel_lengths[:, None]
        return mel, frame_mask

    def encode_mel(self, mel: Tensor) -> Tensor:
        """Log-mel ``[B, M, 2 * T_enc]`` → last hidden state ``[B, T_enc, D]`` (in float32 or the weights' dtype)."""
        encoder = self._encoder[0]
        return encoder(input_features=mel.to(next(encoder.parameters()).dtype)).last_hidden_state

    def declared_outputs(self, config: Any, output_hidden_states: bool) -> OutputSpec:
        """``features.last_hidden_state`` and ``features.frame_mask``; every layer's hidden
        states when ``output_hidden_states``."""
        hidden = hidden_state_count(config, "encoder_layers", output_hidden_states)
        return OutputSpec(logits=False, hidden_states=hidden,
                          features=frozenset({"last_hidden_state", "frame_mask"}), closed=True)

    def run(self, module: nn.Module, output_hidden_states: bool, waveform: Tensor,
            waveform_mask: Tensor | None = None, **_: Any) -> ModelOutput:
        """``waveform`` ``[B, 1, T]`` or ``[B, T]``, ``waveform_mask`` bool ``[B, T]`` (True on real
        samples; the others are zeroed first) → ``last_hidden_state`` ``[B, T_enc, D]``, ``frame_mask``
        bool ``[B, T_enc]`` (``T_enc = max_source_positions``) and, when asked, the hidden states
        (``h_0`` after the convolutions and positions, ..., ``h_L``)."""
        mel, frame_mask = self.prepare(waveform, waveform_mask)
        out = module(input_features=mel.to(next(module.parameters()).dtype), output_hidden_states=output_hidden_states)
        return ModelOutput(hidden_states=tuple(out.hidden_states) if output_hidden_states else None,
                           features={"last_hidden_state": out.last_hidden_state, "frame_mask": frame_mask})
