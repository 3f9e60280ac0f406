"""CTCHead on a tiny Whisper encoder: logits from the encoder's feature, export, and reload of both
the encoder alone (as LM-SPT's teacher loads it) and the whole head."""

from __future__ import annotations

import pytest
import torch

from lit_distill.errors import ConfigError
from lit_distill.models import CTCHead, HFWhisperEncoder

WHISPER = {"d_model": 32, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
           "num_mel_bins": 80, "max_source_positions": 10}


def test_logits_are_the_head_on_the_encoder_feature_and_outputs_pass_through():
    torch.manual_seed(0)
    model = CTCHead(HFWhisperEncoder(config=dict(WHISPER)), num_classes=6).eval()
    assert model.output_size == 6
    spec = model.output_spec()
    assert spec.logits and {"frame_mask", "last_hidden_state"} <= spec.features
    wave, mask = torch.randn(2, 1, 3000), torch.arange(3000)[None] < torch.tensor([[3000], [1000]])
    with torch.no_grad():
        out = model(waveform=wave, waveform_mask=mask)
        encoder = model.module(waveform=wave, waveform_mask=mask)
    assert out.logits.shape == (2, 10, 6)
    expected = encoder.features["last_hidden_state"] @ model.head.weight.T + model.head.bias
    torch.testing.assert_close(out.logits, expected)
    torch.testing.assert_close(out.features["frame_mask"], encoder.features["frame_mask"])
    assert out.features["frame_mask"].sum(-1).tolist() == [10, 4]  # ceil(ceil(1000 / 160) / 2) frames


def test_export_reloads_as_the_encoder_alone_and_as_the_head(tmp_path):
    torch.manual_seed(1)
    model = CTCHead(HFWhisperEncoder(config=dict(WHISPER)), num_classes=5).eval()
    out_dir = tmp_path / "whisper_ctc"
    model.export(str(out_dir))
    encoder = HFWhisperEncoder(path=str(out_dir)).eval()
    again = CTCHead(HFWhisperEncoder(path=str(out_dir)), num_classes=5, path=str(out_dir)).eval()
    wave = torch.randn(1, 1, 2000)
    with torch.no_grad():
        a, b, c = model(waveform=wave), encoder(waveform=wave), again(waveform=wave)
    torch.testing.assert_close(a.features["last_hidden_state"], b.features["last_hidden_state"])
    torch.testing.assert_close(a.logits, c.logits)


def test_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="CTCHead.num_classes"):
        CTCHead(HFWhisperEncoder(config=dict(WHISPER)))
    with pytest.raises(ConfigError, match="CTCHead.path: no ctc_head.pt"):
        CTCHead(HFWhisperEncoder(config=dict(WHISPER)), num_classes=3, path=str(tmp_path))
    with pytest.raises(ConfigError, match="CTCHead.hidden_size"):
        CTCHead(torch.nn.Linear(2, 2), num_classes=3)
    model = CTCHead(HFWhisperEncoder(config=dict(WHISPER)), num_classes=3, feature="nope")
    with pytest.raises(ConfigError, match="CTCHead.feature: 'nope'"):
        model(waveform=torch.randn(1, 1, 800))


def test_token_probe_starts_uniform_and_reads_its_table():
    from lit_distill.models import TokenCTCProbe

    probe = TokenCTCProbe(vocab_size=4, num_classes=3)
    assert probe.output_size == 3 and not probe.table.any()
    with torch.no_grad():
        probe.table.copy_(torch.arange(12.0).view(4, 3))
    ids, mask = torch.tensor([[3, 0, 1]]), torch.tensor([[1, 1, 0]])
    out = probe(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(out.logits, probe.table[ids])
    assert out.features["frame_mask"].tolist() == [[True, True, False]]
    assert probe(input_ids=ids).features["frame_mask"].all()
    assert probe.output_spec().logits and "frame_mask" in probe.output_spec().features
    with pytest.raises(ConfigError, match="TokenCTCProbe.vocab_size"):
        TokenCTCProbe(num_classes=3)
