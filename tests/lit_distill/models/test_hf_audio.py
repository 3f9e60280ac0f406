"""HFSpeechEncoder: tiny HuBERT / WavLM built from configs, saved and loaded back through ``path``."""

from __future__ import annotations

import pytest
import torch

from lit_distill import Teacher
from lit_distill.errors import ConfigError
from lit_distill.models.hf_audio import HFSpeechEncoder, normalize_waveform

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "conv_dim": [16, 16, 16], "conv_stride": [5, 4, 2], "conv_kernel": [10, 4, 2],
        "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4}


def expected_frames(num_samples: int, kernels: list[int], strides: list[int]) -> int:
    length = num_samples
    for k, s in zip(kernels, strides, strict=True):
        length = (length - k) // s + 1
    return length


@pytest.mark.parametrize("model_type", ["hubert", "wavlm"])
def test_saved_and_loaded_through_path(tmp_path, model_type):
    torch.manual_seed(0)
    built = HFSpeechEncoder(config={"model_type": model_type, **TINY})
    assert built.total_stride == 40 and built.hidden_size == 32 and built.output_size is None
    built.export(str(tmp_path / "enc"))
    loaded = HFSpeechEncoder(path=str(tmp_path / "enc"))
    assert type(loaded.module).__name__ == type(built.module).__name__
    wave = torch.randn(2, 1, 1000)
    built.eval()
    loaded.eval()
    with torch.no_grad():
        a, b = built(waveform=wave), loaded(waveform=wave)
    frames = expected_frames(1000, TINY["conv_kernel"], TINY["conv_stride"])
    assert frames == 24
    assert len(a.hidden_states) == TINY["num_hidden_layers"] + 1
    for h in a.hidden_states:
        assert h.shape == (2, frames, 32)
    assert a.logits is None
    torch.testing.assert_close(a.features["last_hidden_state"], a.hidden_states[-1])
    for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
        torch.testing.assert_close(x, y)
    # [B, T] input equals the squeezed [B, 1, T] one
    with torch.no_grad():
        flat = loaded(waveform=wave[:, 0])
    torch.testing.assert_close(flat.hidden_states[-1], b.hidden_states[-1])


def test_frame_count_for_hubert_base_strides():
    enc = HFSpeechEncoder(config={"model_type": "hubert", **TINY, "conv_dim": [8] * 7,
                                  "conv_stride": [5, 2, 2, 2, 2, 2, 2], "conv_kernel": [10, 3, 3, 3, 3, 2, 2]})
    assert enc.total_stride == 320
    with torch.no_grad():
        out = enc.eval()(waveform=torch.randn(1, 1, 16000))
    assert out.hidden_states[-1].shape[1] == expected_frames(16000, [10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2]) == 49


def test_normalization_matches_direct_formula():
    torch.manual_seed(1)
    wave = 0.3 * torch.randn(2, 50, dtype=torch.float64) + 0.1
    mask = torch.ones(2, 50, dtype=torch.bool)
    mask[1, 30:] = False
    got = normalize_waveform(wave, mask)
    for i, n in enumerate([50, 30]):
        x = wave[i, :n]
        ref = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
        torch.testing.assert_close(got[i, :n], ref)
        assert torch.all(got[i, n:] == 0)
    enc = HFSpeechEncoder(config={"model_type": "hubert", **TINY}, normalize=True).eval()
    with torch.no_grad():
        scaled = enc(waveform=5.0 * wave[:, None].float() + 2.0).hidden_states[-1]
        plain = enc(waveform=wave[:, None].float()).hidden_states[-1]
    torch.testing.assert_close(scaled, plain, rtol=1e-4, atol=1e-4)  # affine changes are normalised away


def test_frozen_inside_teacher():
    teacher = Teacher(HFSpeechEncoder(config={"model_type": "hubert", **TINY}))
    teacher.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    out = teacher(waveform=torch.randn(1, 1, 400))
    assert out.hidden_states[-1].shape == (1, expected_frames(400, [10, 4, 2], [5, 4, 2]), 32)
    assert not out.hidden_states[-1].requires_grad


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="model_type: 'not-a-model'"):
        HFSpeechEncoder(config={"model_type": "not-a-model"})
    with pytest.raises(ConfigError, match="not a waveform encoder"):
        HFSpeechEncoder(config={"model_type": "bert", "hidden_size": 32})
    with pytest.raises(ConfigError, match="needs 'model_type'"):
        HFSpeechEncoder(config={"hidden_size": 32})
    with pytest.raises(ConfigError, match="HFSpeechEncoder.path: no directory"):
        HFSpeechEncoder(path=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="exactly one"):
        HFSpeechEncoder()
    with pytest.raises(ConfigError, match="HFSpeechEncoder.config"):
        HFSpeechEncoder(config={"model_type": "hubert", "conv_dim": [8, 8], "conv_stride": [5], "conv_kernel": [10, 3]})
    enc = HFSpeechEncoder(config={"model_type": "hubert", **TINY})
    with pytest.raises(ConfigError, match="mono"):
        enc(waveform=torch.randn(1, 2, 400))


def test_hfspeechencoder_is_hfmodel_for_speech_encoders_with_the_same_fields(tmp_path):
    import inspect

    from lit_distill.models import HFModel

    own = inspect.signature(HFSpeechEncoder).parameters
    general = inspect.signature(HFModel).parameters
    assert issubclass(HFSpeechEncoder, HFModel)
    # every HFSpeechEncoder field is an HFModel field with the same default; what it leaves out is fixed
    # (task; hidden states always on) or refused for speech encoders (the text and Whisper fields)
    left_out = {"task", "output_hidden_states", "vocab_size", "pad_token_id", "num_classes", "trust_remote_code",
                "attn_implementation", "output_attentions", "compute_logits", "lora", "sample_rate"}
    assert {name: p.default for name, p in own.items()} == {
        name: p.default for name, p in general.items() if name not in left_out}
    torch.manual_seed(0)
    HFSpeechEncoder(config={"model_type": "wavlm", **TINY}).export(str(tmp_path))
    named = HFSpeechEncoder(path=str(tmp_path), normalize=True).eval()
    general_model = HFModel(task="speech-encoder", path=str(tmp_path), normalize=True,
                            output_hidden_states=True).eval()
    assert named.task == "speech-encoder" and named.normalize and named.output_hidden_states
    wave = torch.randn(2, 1, 1000)
    with torch.no_grad():
        a, b = named(waveform=wave), general_model(waveform=wave)
    assert all(torch.equal(x, y) for x, y in zip(a.hidden_states, b.hidden_states, strict=True))
    assert named.output_spec() == general_model.output_spec()
    with pytest.raises(ConfigError, match="HFSpeechEncoder.dtype: 'int8'"):
        HFSpeechEncoder(path=str(tmp_path), dtype="int8")
