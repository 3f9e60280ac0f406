"""HFModel task speech-ctc: a tiny HubertForCTC from a config, its frame mask, export and reload
(as speech-ctc, and as the speech-encoder teachers load it)."""

from __future__ import annotations

import pytest
import torch

from lit_distill.errors import ConfigError
from lit_distill.models import HFModel, HFSpeechEncoder
from lit_distill.models.speech_front_end import normalize_waveform

TINY = {"model_type": "hubert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "conv_dim": [16, 16, 16], "conv_stride": [5, 4, 2], "conv_kernel": [10, 4, 2],
        "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4, "do_stable_layer_norm": True,
        "feat_extract_norm": "layer"}


def frames_of(samples: int) -> int:
    """floor((L - k) / s) + 1 over the (kernel, stride) layers of TINY."""
    for k, s in zip(TINY["conv_kernel"], TINY["conv_stride"], strict=True):
        samples = (samples - k) // s + 1
    return samples


def test_logits_frame_mask_and_features_of_a_fresh_model():
    torch.manual_seed(0)
    model = HFModel("speech-ctc", config=dict(TINY), num_classes=7, normalize=True).eval()
    assert model.output_size == 7 and model.model.config.vocab_size == 7 and model.total_stride == 40
    spec = model.output_spec()
    assert spec.logits and {"frame_mask", "last_hidden_state"} <= spec.features
    lengths = torch.tensor([1000, 640])
    wave = torch.randn(2, 1, 1000)
    mask = torch.arange(1000)[None] < lengths[:, None]
    wave = wave * mask[:, None]
    with torch.no_grad():
        out = model(waveform=wave, waveform_mask=mask)
        reference = model.model(input_values=normalize_waveform(wave[:, 0], mask), output_hidden_states=True)
        encoder = model.model.hubert(input_values=normalize_waveform(wave[:, 0], mask)).last_hidden_state
    frames = frames_of(1000)
    assert out.logits.shape == (2, frames, 7)
    torch.testing.assert_close(out.logits, reference.logits)
    torch.testing.assert_close(out.features["last_hidden_state"], encoder)
    assert out.hidden_states is None  # not asked for
    assert out.features["frame_mask"].sum(-1).tolist() == [frames_of(1000), frames_of(640)]
    assert out.features["frame_mask"].dtype == torch.bool
    assert not out.features["frame_mask"][1, frames_of(640):].any()
    with torch.no_grad():  # no mask: every frame counts
        assert model(waveform=wave).features["frame_mask"].all()


def test_export_loads_as_speech_ctc_and_as_the_speech_encoder_teacher(tmp_path):
    torch.manual_seed(1)
    model = HFModel("speech-ctc", config=dict(TINY), num_classes=5, output_hidden_states=True).eval()
    model.export(str(tmp_path / "ctc"))
    again = HFModel("speech-ctc", path=str(tmp_path / "ctc"), num_classes=5).eval()
    teacher = HFSpeechEncoder(path=str(tmp_path / "ctc")).eval()
    wave = torch.randn(2, 1, 800)
    with torch.no_grad():
        a, b, c = model(waveform=wave), again(waveform=wave), teacher(waveform=wave)
    torch.testing.assert_close(a.logits, b.logits)
    assert len(a.hidden_states) == len(c.hidden_states) == TINY["num_hidden_layers"] + 1
    for x, y in zip(a.hidden_states, c.hidden_states, strict=True):
        torch.testing.assert_close(x, y)


def test_class_count_checks(tmp_path):
    with pytest.raises(ConfigError, match="HFModel.config.vocab_size: 9 output classes, but the data has 7"):
        HFModel("speech-ctc", config={**TINY, "vocab_size": 9}, num_classes=7)
    HFModel("speech-ctc", config=dict(TINY), num_classes=6).export(str(tmp_path / "six"))
    with pytest.raises(ConfigError, match="HFModel.num_classes: the data has 7 classes but the model has 6"):
        HFModel("speech-ctc", path=str(tmp_path / "six"), num_classes=7)
    with pytest.raises(ConfigError, match="HFModel.sample_rate: 8000 is for task whisper-encoder, not speech-ctc"):
        HFModel("speech-ctc", config=dict(TINY), sample_rate=8000)
