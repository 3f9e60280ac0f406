"""IndirectSemanticDistillation: value against a float64 formula, padding, gradients, freezing, state."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_distill.errors import ConfigError
from lit_distill.losses.indirect_semantic import IndirectSemanticDistillation
from lit_distill.models.hf_whisper import HFWhisperEncoder
from lit_distill.models.lm_spt import LMSPTCodec

pytestmark = pytest.mark.usefixtures("one_thread")

WHISPER = {"d_model": 16, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 32,
           "num_mel_bins": 80, "max_source_positions": 25}  # window: 50 mel frames = 8000 samples
WINDOW = 8000


def make_term(**kwargs) -> IndirectSemanticDistillation:
    torch.manual_seed(0)
    return IndirectSemanticDistillation(HFWhisperEncoder(config=WHISPER), **kwargs)


def reference_loss(term: IndirectSemanticDistillation, recon: torch.Tensor, wave: torch.Tensor,
                   lengths: list[int]) -> float:
    """Direct formula in float64: transformers' feature extractor on each real segment, the encoder in
    float64, squared error averaged over D, then over the encoder frames e with 2e < ceil(len / 160)."""
    import copy

    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=80)
    encoder = copy.deepcopy(term.encoder.module).double().eval()

    def encode(x: torch.Tensor, n: int) -> torch.Tensor:
        mel = extractor(x[:n].double().numpy(), sampling_rate=16000, padding="max_length", max_length=WINDOW,
                        return_tensors="np")["input_features"]
        with torch.no_grad():
            return encoder(input_features=torch.from_numpy(mel).double()).last_hidden_state[0]

    total, count = 0.0, 0
    for i, n in enumerate(lengths):
        mel_frames = -(-n // 160)
        frames = -(-mel_frames // 2)
        diff = (encode(recon[i, 0], n) - encode(wave[i, 0], n))[:frames]
        total += float(diff.pow(2).mean(-1).sum())
        count += frames
    return total / count


def batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = max(lengths)
    mask = torch.arange(t)[None] < torch.tensor(lengths)[:, None]
    wave = torch.randn(len(lengths), 1, t, generator=g) * 0.1 * mask[:, None]
    recon = wave + 0.05 * torch.randn(len(lengths), 1, t, generator=g)  # garbage on padding too
    return recon, wave, mask


def test_value_matches_a_direct_float64_formula():
    term = make_term()
    lengths = [6000, 2500, 401]
    recon, wave, mask = batch(lengths)
    value = term(recon, wave, mask)
    expected = reference_loss(term, recon, wave, lengths)
    assert expected > 0
    # the reference mel comes from transformers' float32 extractor
    assert value.item() == pytest.approx(expected, rel=5e-5)


def test_padding_is_masked():
    term = make_term()
    recon, wave, mask = batch([6000, 2500])
    value = term(recon, wave, mask)
    # what the codec writes on padding samples does not count
    noisy = recon + 5.0 * (~mask[:, None]) * torch.randn_like(recon)
    assert term(noisy, wave, mask).item() == pytest.approx(value.item(), rel=1e-6)
    # the encoder frames of the padded window do not count either: not the mean over all 25 frames
    target_mel, frame_mask = term.encoder.prepare(wave, mask)
    recon_mel, _ = term.encoder.prepare(recon, mask)
    with torch.no_grad():
        per_frame = (term.encoder.encode_mel(recon_mel) - term.encoder.encode_mel(target_mel)).pow(2).mean(-1)
    assert frame_mask.sum(-1).tolist() == [19, 8]
    torch.testing.assert_close(value, per_frame[frame_mask].mean())
    assert not torch.isclose(value, per_frame.mean())


@settings(max_examples=8, deadline=None)
@given(lengths=st.lists(st.integers(161, WINDOW), min_size=1, max_size=3), seed=st.integers(0, 100))
def test_zero_for_a_perfect_resynthesis_and_positive_otherwise(lengths, seed):
    term = make_term()
    _, wave, mask = batch(lengths, seed)
    assert term(wave.clone(), wave, mask).item() == 0.0
    assert term(wave * 0.5, wave, mask).item() > 0.0


def test_gradients_reach_the_semantic_path_only_and_the_encoder_stays_frozen():
    term = make_term(weight=500.0)
    torch.manual_seed(1)
    codec = LMSPTCodec(strides=[4, 4, 5], channels=2, max_channels=8, dim=8, dilations=[1],
                       semantic_codebook_size=16, semantic_codebook_dim=4, num_quantizers=2, codebook_size=8)
    _, wave, mask = batch([4000, 3000])
    term.train()
    assert not term.encoder.training and all(not m.training for m in term.encoder.modules())
    before = {k: v.clone() for k, v in term.encoder.state_dict().items()}
    features = codec(waveform=wave, waveform_mask=mask).features
    term(features["semantic_reconstruction"], wave, mask).backward()

    def touched(module: torch.nn.Module) -> bool:
        return any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters())

    assert touched(codec.aux_decoder) and touched(codec.semantic_encoder)
    assert touched(codec.semantic_quantizer.project_in)  # straight through the semantic VQ
    assert not touched(codec.acoustic_encoder) and not touched(codec.decoder)
    assert not touched(codec.acoustic_quantizer)
    assert all(not p.requires_grad and p.grad is None for p in term.encoder.parameters())
    for name, value in term.encoder.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_encoder_weights_stay_out_of_the_state_dict_unless_asked():
    term = make_term()
    assert not any(k.startswith("encoder.") for k in term.state_dict())
    outer = torch.nn.ModuleDict({"semantic": term})
    result = outer.load_state_dict(outer.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    kept = make_term(in_checkpoint=True)
    keys = [k for k in kept.state_dict() if k.startswith("encoder.")]
    assert keys and set(keys) == {"encoder." + k for k in kept.encoder.state_dict()}


def test_bad_inputs_name_the_problem():
    with pytest.raises(ConfigError, match="HFWhisperEncoder"):
        IndirectSemanticDistillation(torch.nn.Linear(2, 2))
    term = make_term()
    with pytest.raises(ConfigError, match="must have one shape"):
        term(torch.zeros(1, 1, 100), torch.zeros(1, 1, 90))
    with pytest.raises(ConfigError, match="exceeds the encoder's window"):
        term(torch.zeros(1, 1, WINDOW + 1), torch.zeros(1, 1, WINDOW + 1))
    assert np.isfinite(term(torch.zeros(1, 1, 320), torch.zeros(1, 1, 320)).item())


def test_hfmodel_with_the_whisper_task_is_accepted_like_its_thin_name():
    from lit_distill.models.hf_model import HFModel

    torch.manual_seed(0)
    plain = IndirectSemanticDistillation(HFModel(task="whisper-encoder", config=WHISPER))
    named = make_term()
    gen = torch.Generator().manual_seed(1)
    wave, recon = torch.randn(2, 1, WINDOW, generator=gen), torch.randn(2, 1, WINDOW, generator=gen)
    assert torch.equal(plain(recon, wave), named(recon, wave))
    with pytest.raises(ConfigError, match="task: whisper-encoder"):
        IndirectSemanticDistillation(HFModel(task="speech-encoder", config={
            "model_type": "hubert", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 32, "conv_dim": [16], "conv_stride": [5], "conv_kernel": [10]}))
