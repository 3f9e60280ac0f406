"""HFWhisperEncoder and whisper_log_mel: the feature extractor's values, gradients, loading, windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_distill.errors import ConfigError
from lit_distill.models.hf_whisper import HFWhisperEncoder, whisper_log_mel, whisper_mel_filters

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"d_model": 32, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
        "decoder_layers": 1, "decoder_attention_heads": 2, "decoder_ffn_dim": 32, "vocab_size": 64,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 1,
        "num_mel_bins": 80, "max_source_positions": 50, "max_target_positions": 16}
WINDOW = 2 * 50 * 160  # samples of the tiny encoder's window (1 s)


def feature_extractor_mel(waveforms: list[torch.Tensor], n_mels: int, num_samples: int) -> np.ndarray:
    """transformers' numpy feature extractor: the independent reference."""
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    return extractor([w.double().numpy() for w in waveforms], sampling_rate=16000, padding="max_length",
                     max_length=num_samples, return_tensors="np")["input_features"]


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_the_feature_extractor(n_mels):
    g = torch.Generator().manual_seed(n_mels)
    lengths = [9000, 16000, 4321]
    waveforms = [torch.randn(n, generator=g) * s for n, s in zip(lengths, [0.1, 0.5, 0.02], strict=True)]
    batch = torch.zeros(3, 1, max(lengths), dtype=torch.float64)
    for i, w in enumerate(waveforms):
        batch[i, 0, : w.numel()] = w
    ours = whisper_log_mel(batch, WINDOW, whisper_mel_filters(n_mels, torch.float64))
    reference = feature_extractor_mel(waveforms, n_mels, WINDOW)
    assert ours.shape == reference.shape == (3, n_mels, WINDOW // 160)
    # the extractor works in float32 (ours here in float64): 1e-4 of (log10 + 4) / 4 is 0.1 % of power
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-4, rtol=0)


def test_log_mel_gradient_matches_finite_differences():
    torch.manual_seed(0)
    x = (torch.randn(1, 480, dtype=torch.float64) * 0.3).requires_grad_()
    filters = whisper_mel_filters(80, torch.float64)
    assert torch.autograd.gradcheck(lambda w: whisper_log_mel(w, 640, filters), (x,), eps=1e-6, atol=1e-5,
                                      fast_mode=True)


def test_log_mel_rejects_audio_longer_than_the_window():
    with pytest.raises(ConfigError, match="exceed the encoder's window"):
        whisper_log_mel(torch.zeros(1, 700), 640, whisper_mel_filters(80))


@pytest.mark.parametrize("architecture", ["WhisperModel", "WhisperForConditionalGeneration"])
def test_loads_the_encoder_of_a_saved_model(tmp_path, architecture):
    import transformers

    torch.manual_seed(0)
    reference = getattr(transformers, architecture)(transformers.WhisperConfig(**TINY)).eval()
    reference.save_pretrained(tmp_path)
    encoder = HFWhisperEncoder(path=str(tmp_path)).eval()
    assert not any("decoder" in name for name, _ in encoder.named_modules())
    assert (encoder.num_frames, encoder.num_samples, encoder.hidden_size) == (50, WINDOW, 32)

    g = torch.Generator().manual_seed(1)
    lengths = [WINDOW, 6000]
    waveform = torch.randn(2, 1, WINDOW, generator=g) * 0.1
    mask = torch.arange(WINDOW)[None] < torch.tensor(lengths)[:, None]
    out = encoder(waveform=waveform, waveform_mask=mask)
    features = torch.from_numpy(feature_extractor_mel([waveform[i, 0, :n] for i, n in enumerate(lengths)], 80, WINDOW))
    with torch.no_grad():
        expected = reference.get_encoder()(input_features=features.float()).last_hidden_state
    torch.testing.assert_close(out.features["last_hidden_state"], expected, atol=1e-4, rtol=1e-4)
    # encoder frame e covers mel frame 2e: real when 2e < ceil(length / 160)
    frames = torch.arange(50)
    expected_mask = torch.stack([2 * frames < -(-n // 160) for n in lengths])
    assert torch.equal(out.features["frame_mask"], expected_mask)
    assert out.features["frame_mask"].sum(-1).tolist() == [50, 19]


def test_fresh_encoder_window_padding_and_errors():
    torch.manual_seed(0)
    encoder = HFWhisperEncoder(config={k: TINY[k] for k in ("d_model", "encoder_layers", "encoder_attention_heads",
                                                             "encoder_ffn_dim", "num_mel_bins",
                                                             "max_source_positions")}, output_hidden_states=True)
    short = torch.randn(1, 1, 3000) * 0.1
    out = encoder(waveform=short)
    assert out.features["last_hidden_state"].shape == (1, 50, 32) and len(out.hidden_states) == 3
    # padding past the window is cut; zero padding gives the same result as no padding
    padded = torch.cat([short, torch.zeros(1, 1, WINDOW + 500 - 3000)], -1)
    mask = torch.arange(padded.shape[-1])[None] < 3000
    out_padded = encoder(waveform=padded, waveform_mask=mask)
    torch.testing.assert_close(out_padded.features["last_hidden_state"], out.features["last_hidden_state"])
    with pytest.raises(ConfigError, match="exceeds the encoder's window of 1.00 s"):
        encoder(waveform=padded)
    with pytest.raises(ConfigError, match="exactly one of 'path'"):
        HFWhisperEncoder()
    with pytest.raises(ConfigError, match="HFWhisperEncoder.path: no directory"):
        HFWhisperEncoder(path="/no/such/dir")


def test_resamples_other_rates_to_16k():
    import torchaudio

    torch.manual_seed(0)
    config = {"d_model": 32, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
              "num_mel_bins": 80, "max_source_positions": 50}
    at_24k = HFWhisperEncoder(config=config, sample_rate=24000)
    at_16k = HFWhisperEncoder(config=config)
    at_16k.load_state_dict(at_24k.state_dict())
    x = torch.randn(1, 1, 12000) * 0.1  # 0.5 s at 24 kHz
    mel, frame_mask = at_24k.prepare(x)
    mel_16k, _ = at_16k.prepare(torchaudio.functional.resample(x, 24000, 16000))
    torch.testing.assert_close(mel, mel_16k)
    assert int(frame_mask.sum()) == 25  # 8000 samples at 16 kHz: 50 mel frames, 25 encoder frames


def test_hfwhisperencoder_is_hfmodel_for_whisper_with_the_same_fields(tmp_path):
    import inspect

    from lit_distill.models import HFModel

    own = inspect.signature(HFWhisperEncoder).parameters
    general = inspect.signature(HFModel).parameters
    assert issubclass(HFWhisperEncoder, HFModel)
    # every HFWhisperEncoder field is an HFModel field with the same default; what it leaves out is
    # fixed (task) or refused for Whisper's encoder (the text and speech-encoder fields)
    left_out = {"task", "vocab_size", "pad_token_id", "num_classes", "trust_remote_code", "attn_implementation",
                "output_attentions", "compute_logits", "lora", "normalize"}
    assert {name: p.default for name, p in own.items()} == {
        name: p.default for name, p in general.items() if name not in left_out}
    config = {k: TINY[k] for k in ("d_model", "encoder_layers", "encoder_attention_heads", "encoder_ffn_dim",
                                   "num_mel_bins", "max_source_positions")}
    torch.manual_seed(0)
    HFWhisperEncoder(config=config).export(str(tmp_path))  # the encoder alone, loadable through path
    named = HFWhisperEncoder(path=str(tmp_path), sample_rate=24000, output_hidden_states=True).eval()
    general_model = HFModel(task="whisper-encoder", path=str(tmp_path), sample_rate=24000,
                            output_hidden_states=True).eval()
    assert named.task == "whisper-encoder" and named.sample_rate == 24000
    x = torch.randn(1, 1, 12000) * 0.1
    with torch.no_grad():
        a, b = named(waveform=x), general_model(waveform=x)
    assert all(torch.equal(u, v) for u, v in zip(a.hidden_states, b.hidden_states, strict=True))
    assert torch.equal(a.features["frame_mask"], b.features["frame_mask"])
    assert named.output_spec() == general_model.output_spec()
    with pytest.raises(ConfigError, match="HFWhisperEncoder.sample_rate must be positive"):
        HFWhisperEncoder(config=config, sample_rate=0)
