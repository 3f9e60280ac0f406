"""ConvCodec and its residual vector quantiser: frame-rate arithmetic, shapes, gradients, encode/decode."""

from __future__ import annotations

import pytest
import torch

from lit_distill.errors import ConfigError
from lit_distill.models.codec import ConvCodec, ResidualQuantizer


def tiny_codec(**kwargs) -> ConvCodec:
    args = {"channels": 4, "dim": 8, "dilations": [1], "num_quantizers": 3, "codebook_size": 16}
    return ConvCodec(**{**args, **kwargs})


@pytest.mark.parametrize(("strides", "sample_rate", "hop", "frame_rate"), [
    ([2, 4, 5, 8], 16000, 320, 50.0),   # DM-Codec
    ([8, 5, 4, 2], 16000, 320, 50.0),
    ([4, 5, 6, 8, 2], 24000, 1920, 12.5),  # LM-SPT
    ([4, 5, 6, 8], 24000, 960, 25.0),
    ([3, 1, 5], 16000, 15, 16000 / 15),
])
def test_frame_rate_and_shapes(strides, sample_rate, hop, frame_rate):
    torch.manual_seed(0)
    codec = tiny_codec(strides=strides, sample_rate=sample_rate, channels=2, dim=4)
    assert codec.hop_length == hop and codec.frame_rate == pytest.approx(frame_rate)
    for length in (2 * hop, hop + 1):
        frames = -(-length // hop)
        assert codec.num_frames(length) == frames
        out = codec(waveform=torch.randn(2, 1, length) * 0.1)
        f = out.features
        assert f["latent"].shape == f["quantized"].shape == (2, 4, frames)
        assert f["codes"].shape == (2, 3, frames) and f["codes"].dtype == torch.long
        assert f["layer_outputs"].shape == (2, 3, 4, frames) and f["layer_outputs.2"].shape == (2, 4, frames)
        assert f["reconstruction"].shape == (2, 1, length) and f["commit_loss"].shape == ()


def test_rvq_values_and_straight_through_gradient():
    torch.manual_seed(0)
    rvq = ResidualQuantizer(dim=6, num_quantizers=3, codebook_size=8)
    latent = torch.randn(2, 6, 5, dtype=torch.float64).float().requires_grad_()
    out = rvq(latent)
    vectors = out["layer_outputs"].detach()
    # values: layer q holds c_q, the code vector of the residual left by layers < q (pre-update codebooks)
    assert torch.allclose(vectors.sum(1), out["quantized"].detach(), atol=1e-6)
    assert all(vectors[:, q].abs().sum() > 0 for q in range(3))
    # gradients: identity into the latent, for the sum and for each single layer
    w = torch.randn_like(latent)
    (grad,) = torch.autograd.grad((out["quantized"] * w).sum(), latent, retain_graph=True)
    assert torch.equal(grad, w)
    for q in range(3):
        (grad,) = torch.autograd.grad((out["layer_outputs"][:, q] * w).sum(), latent, retain_graph=True)
        assert torch.equal(grad, w)


def test_eval_codes_match_codebooks():
    torch.manual_seed(0)
    rvq = ResidualQuantizer(dim=6, num_quantizers=3, codebook_size=8).eval()
    latent = torch.randn(2, 6, 5)
    out = rvq(latent)
    residual = latent.transpose(1, 2)
    for q, layer in enumerate(rvq.layers):
        book = layer.codebook
        nearest = torch.cdist(residual, book[None].expand(2, -1, -1)).argmin(-1)
        assert torch.equal(out["codes"][:, q], nearest)
        residual = residual - book[nearest]
    assert torch.allclose(rvq.lookup(out["codes"]), out["quantized"], atol=1e-6)


def test_commitment_loss_value_and_gradient():
    torch.manual_seed(0)
    rvq = ResidualQuantizer(dim=4, num_quantizers=2, codebook_size=8, commitment_weight=0.25)
    latent = torch.randn(3, 4, 7, requires_grad=True)
    out = rvq(latent)
    x = latent.detach().double().transpose(1, 2)
    c = out["layer_outputs"].detach().double().transpose(2, 3)  # [B, Q, F, D]
    residuals = [x, x - c[:, 0]]
    expected = 0.25 * sum(((r - c[:, q]) ** 2).mean() for q, r in enumerate(residuals))
    assert out["commit_loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    (grad,) = torch.autograd.grad(out["commit_loss"], latent)
    expected_grad = 0.25 * sum(2 * (r - c[:, q]) / r.numel() for q, r in enumerate(residuals))
    assert torch.allclose(grad.double(), expected_grad.transpose(1, 2), atol=1e-7)


def test_gradients_reach_the_encoder_and_decoder():
    torch.manual_seed(0)
    codec = tiny_codec()
    out = codec(waveform=torch.randn(2, 1, 640) * 0.1)
    loss = out.features["reconstruction"].pow(2).mean() + out.features["commit_loss"]
    loss.backward()
    first, last = codec.encoder[0].weight, codec.decoder[-1].weight
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert last.grad is not None and last.grad.abs().sum() > 0
    codec.zero_grad()
    out = codec(waveform=torch.randn(2, 1, 640) * 0.1)
    out.features["layer_outputs.0"].sum().backward()  # a loss on one RVQ layer trains the encoder
    assert first.grad.abs().sum() > 0


def test_encode_decode(tmp_path):
    torch.manual_seed(0)
    codec = tiny_codec().eval()
    wave = torch.randn(2, 1, 1000) * 0.1
    codes = codec.encode(wave)
    assert codes.shape == (2, 3, 4) and codes.dtype == torch.long and codes.min() >= 0 and codes.max() < 16
    audio = codec.decode(codes)
    assert audio.shape == (2, 1, 4 * 320)
    with torch.no_grad():
        recon = codec(waveform=wave).features["reconstruction"]
    assert torch.allclose(audio[..., :1000], recon, atol=1e-5)
    assert codec.decode(codes[:, :1]).shape == (2, 1, 1280)  # coarse: first quantiser only
    torch.save(codec.state_dict(), tmp_path / "codec.pt")
    again = tiny_codec()
    again.load_state_dict(torch.load(tmp_path / "codec.pt"))
    assert torch.equal(again.encode(wave), codes)


def test_masks_and_quantizer_dropout():
    torch.manual_seed(0)
    codec = tiny_codec()
    mask = torch.ones(2, 1280, dtype=torch.bool)
    mask[1, 700:] = False  # frames 0..2 of the second waveform start on real samples
    codes = codec(waveform=torch.randn(2, 1, 1280) * 0.1, waveform_mask=mask).features["codes"]
    assert (codes[0] >= 0).all() and (codes[1, :, :3] >= 0).all() and (codes[1, :, 3:] == -1).all()
    rvq = ResidualQuantizer(dim=4, num_quantizers=4, codebook_size=8, quantizer_dropout=1.0)
    used = {int((rvq(torch.randn(1, 4, 3))["codes"][0, :, 0] >= 0).sum()) for _ in range(30)}
    assert used == {1, 2, 3, 4}
    assert (rvq.eval()(torch.randn(1, 4, 3))["codes"] >= 0).all()


def test_bad_config():
    with pytest.raises(ConfigError, match="strides"):
        ConvCodec(strides=[])
    with pytest.raises(ConfigError, match="strides"):
        ConvCodec(strides=[2, 0])
    with pytest.raises(ConfigError, match="waveform"):
        tiny_codec()(waveform=torch.zeros(2, 640))
    with pytest.raises(ConfigError, match="quantizer_dropout"):
        ResidualQuantizer(dim=4, quantizer_dropout=1.5)


def test_init_from_export_restores_weights_and_codebook_state(tmp_path):
    torch.manual_seed(0)
    trained = tiny_codec(kmeans_init=True)
    trained(waveform=torch.randn(2, 1, 640) * 0.1)  # k-means initialises and EMA-updates the codebooks
    trained.export(str(tmp_path / "export"))
    torch.manual_seed(1)
    for source in (tmp_path / "export", tmp_path / "export" / "model_state_dict.pt"):
        loaded = tiny_codec(kmeans_init=True, init_from=str(source))
        want, got = trained.state_dict(), loaded.state_dict()
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
        wave = torch.randn(1, 1, 960) * 0.1
        assert torch.equal(trained.encode(wave), loaded.encode(wave))
    with pytest.raises(ConfigError, match="init_from"):
        tiny_codec(num_quantizers=2, init_from=str(tmp_path / "export"))


def test_learned_codebook_restarts_entries_unused_for_dead_code_steps_batches_from_real_frames():
    from lit_distill.models.codec import LearnedCodebook, build_codebook

    torch.manual_seed(0)
    book = LearnedCodebook(dim=3, codebook_size=6, dead_code_steps=2)
    with torch.no_grad():
        book.weight.copy_(torch.tensor([[0.0, 0.0, 0.0]] + [[50.0 + k, 0.0, 0.0] for k in range(5)]))
    u = torch.randn(2, 4, 3) * 0.1  # every real frame is nearest to entry 0
    u[1, 3] = 1000.0  # a masked frame: never a restart value
    mask = torch.tensor([[True] * 4, [True, True, True, False]])
    before = book.weight.detach().clone()
    for _ in range(2):  # two batches without entries 1..5: not restarted yet
        _, codes = book(u, mask)
        assert (codes[mask] == 0).all()
    torch.testing.assert_close(book.weight.detach(), before)
    assert book.unused_steps.tolist() == [0, 2, 2, 2, 2, 2]
    book.eval()
    book(u, mask)  # eval: no restart, no counting
    assert book.unused_steps.tolist() == [0, 2, 2, 2, 2, 2]
    book.train()
    _, codes = book(u, mask)  # third batch: entries 1..5 restart to distinct real frames first
    real = u[mask]
    restarted = book.weight.detach()[1:]
    matches = (restarted[:, None] == real[None]).all(-1)  # [5, 7]
    assert (matches.sum(1) == 1).all() and (matches.sum(0) <= 1).all()
    torch.testing.assert_close(book.weight.detach()[0], before[0])
    assert (codes[mask] >= 0).all() and len(set(codes[mask].tolist())) > 1  # the restarted entries are used
    with pytest.raises(ConfigError, match="dead_code_steps needs codebook: learned"):
        build_codebook(3, 6, "ema", False, 0.99, False, 2.0, dead_code_steps=2)
    with pytest.raises(ConfigError, match="dead_code_steps must be >= 0"):
        LearnedCodebook(3, 6, dead_code_steps=-1)
    assert not hasattr(LearnedCodebook(3, 6), "unused_steps")  # off by default: no extra state
