"""LMSPTCodec: frame rates, features, the two quantisers' values and gradients, encode/decode."""

from __future__ import annotations

import pytest
import torch

from lit_distill.errors import ConfigError
from lit_distill.models.codec import ResidualQuantizer
from lit_distill.models.lm_spt import LMSPTCodec, SemanticQuantizer, TimeCenteredConv1d

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kwargs) -> LMSPTCodec:
    args = {"channels": 2, "max_channels": 8, "dim": 8, "dilations": [1], "semantic_codebook_size": 16,
            "semantic_codebook_dim": 4, "num_quantizers": 2, "codebook_size": 8, "quantizer_dropout": 0.0}
    return LMSPTCodec(**{**args, **kwargs})


@pytest.mark.parametrize(("strides", "sample_rate", "hop", "rate"), [
    ([4, 4, 5, 8], 16000, 640, 25.0),
    ([4, 4, 5, 8, 2], 16000, 1280, 12.5),
    ([4, 4, 5, 8, 4], 16000, 2560, 6.25),
    ([4, 5, 6, 8, 2], 24000, 1920, 12.5),  # the paper's
])
def test_frame_rate_and_feature_shapes(strides, sample_rate, hop, rate):
    torch.manual_seed(0)
    codec = tiny(strides=strides, sample_rate=sample_rate)
    assert codec.hop_length == hop and codec.frame_rate == pytest.approx(rate)
    assert codec.num_quantizers == 3 and codec.codebook_sizes == [16, 8, 8] and codec.codebook_size == 16
    length = 2 * hop + 5
    frames = codec.num_frames(length)
    assert frames == 3
    f = codec(waveform=torch.randn(2, 1, length) * 0.1).features
    assert f["reconstruction"].shape == f["semantic_reconstruction"].shape == (2, 1, length)
    assert f["codes"].shape == (2, 3, frames) and f["codes"].dtype == torch.long
    assert torch.equal(f["codes"][:, 0], f["semantic_codes"]) and f["semantic_codes"].shape == (2, frames)
    assert f["layer_outputs"].shape == (2, 3, 8, frames)
    for key in ("latent", "semantic_latent", "quantized", "layer_outputs.0", "layer_outputs.2"):
        assert f[key].shape == (2, 8, frames), key
    assert f["commit_loss"].shape == f["semantic_commit_loss"].shape == ()
    # decoder input = semantic vector + acoustic RVQ output; layer 0 is the semantic vector
    assert torch.allclose(f["quantized"], f["layer_outputs"].sum(1), atol=1e-5)


def test_semantic_quantizer_values_gradient_and_commitment():
    torch.manual_seed(0)
    sq = SemanticQuantizer(dim=6, codebook_size=8, codebook_dim=3, commitment_weight=0.25).eval()
    latent = torch.randn(2, 6, 5, requires_grad=True)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    out = sq(latent, mask)
    w_in, b_in = sq.project_in.weight.double(), sq.project_in.bias.double()
    w_out, b_out = sq.project_out.weight.double(), sq.project_out.bias.double()
    book = sq.vq.codebook.double()
    u = latent.detach().double().transpose(1, 2) @ w_in.T + b_in  # [B, F, d]
    nearest = torch.cdist(u, book[None].expand(2, -1, -1)).argmin(-1)
    assert torch.equal(out["codes"][0], nearest[0]) and torch.equal(out["codes"][1, :3], nearest[1, :3])
    assert (out["codes"][1, 3:] == -1).all()
    # value: W_out c + b_out on real frames
    expected = (book[nearest] @ w_out.T + b_out).transpose(1, 2)
    torch.testing.assert_close(out["quantized"][0].double(), expected[0], atol=1e-5, rtol=1e-5)
    # commitment: 0.25 * mean over real frames and code dims of (u - c)^2
    m = mask[..., None].double()
    commit = 0.25 * (((u - book[nearest]) ** 2) * m).sum() / (m.sum() * 3)
    assert out["commit_loss"].item() == pytest.approx(commit.item(), rel=1e-5)
    # straight-through: d quantized / d latent = W_out W_in (per frame)
    g = torch.randn(2, 6, 5)
    (grad,) = torch.autograd.grad((out["quantized"] * g).sum(), latent)
    expected_grad = (w_out @ w_in).T @ g.double()
    torch.testing.assert_close(grad.double(), expected_grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sq.lookup(out["codes"][:1]), out["quantized"][:1].detach(), atol=1e-5, rtol=1e-5)


def test_acoustic_rvq_quantises_the_residual_of_the_semantic_vector():
    torch.manual_seed(0)
    codec = tiny().eval()
    x = torch.randn(2, 1, 3 * codec.hop_length) * 0.1
    f = codec(waveform=x).features
    rvq: ResidualQuantizer = codec.acoustic_quantizer
    residual = f["latent"] - f["layer_outputs.0"]
    assert torch.equal(rvq(residual)["codes"], f["codes"][:, 1:])


def test_gradients_of_the_two_outputs_reach_their_own_paths():
    torch.manual_seed(0)
    codec = tiny(strides=[2, 4])
    x = torch.randn(2, 1, 64) * 0.1

    def grads(loss_of) -> dict[str, float]:
        codec.zero_grad(set_to_none=True)
        loss_of(codec(waveform=x).features).backward()
        return {name: sum(float(p.grad.abs().sum()) for p in getattr(codec, name).parameters() if p.grad is not None)
                for name in ("semantic_encoder", "semantic_quantizer", "aux_decoder", "acoustic_encoder",
                             "decoder")}

    semantic = grads(lambda f: f["semantic_reconstruction"].pow(2).sum())
    assert all(semantic[n] > 0 for n in ("semantic_encoder", "semantic_quantizer", "aux_decoder"))
    assert semantic["acoustic_encoder"] == semantic["decoder"] == 0
    # the decoder reads s + RVQ(z_a - s); the factorised RVQ (the authors' DAC-style quantiser) passes
    # its gradient on to s, so the reconstruction trains both encoders (issue 15: it used to be 0.0)
    main = grads(lambda f: f["reconstruction"].pow(2).sum())
    assert main["acoustic_encoder"] > 0 and main["decoder"] > 0
    assert main["semantic_encoder"] > 0 and main["semantic_quantizer"] > 0 and main["aux_decoder"] == 0


@pytest.mark.parametrize("codebook", [{}, {"codebook": "learned", "cosine": True}])
def test_an_l1_reconstruction_alone_trains_the_semantic_encoder(codebook):
    torch.manual_seed(0)
    codec = tiny(strides=[2, 4], **codebook)
    x = torch.randn(2, 1, 64) * 0.1
    (codec(waveform=x).features["reconstruction"] - x).abs().mean().backward()
    semantic = torch.cat([p.grad.flatten() for p in codec.semantic_encoder.parameters()]).norm()
    acoustic = torch.cat([p.grad.flatten() for p in codec.acoustic_encoder.parameters()]).norm()
    assert semantic > 0 and acoustic > 0


def test_without_factorised_acoustic_codes_the_semantic_gradient_cancels():
    torch.manual_seed(0)
    codec = tiny(strides=[2, 4], acoustic_codebook_dim=None)  # identity straight-through in width D
    x = torch.randn(2, 1, 64) * 0.1
    (codec(waveform=x).features["reconstruction"] - x).abs().mean().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in codec.semantic_encoder.parameters())


def test_encode_decode_match_the_eval_forward():
    torch.manual_seed(0)
    codec = tiny(strides=[2, 4]).eval()
    x = torch.randn(2, 1, 40) * 0.1  # 5 frames
    f = codec(waveform=x).features
    codes = codec.encode(x)
    assert torch.equal(codes, f["codes"]) and codes.shape == (2, 3, 5)
    torch.testing.assert_close(codec.decode(codes), f["reconstruction"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(codec.decode_semantic(codes), f["semantic_reconstruction"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(codec.decode_semantic(codes[:, 0]), f["semantic_reconstruction"])
    assert codec.decode(codes[:, :1]).shape == (2, 1, 40)  # semantic tokens only through the main decoder
    with pytest.raises(ConfigError, match="semantic first"):
        codec.decode(torch.zeros(2, 4, 5, dtype=torch.long))


def test_quantizer_dropout_and_masked_frames():
    torch.manual_seed(0)
    codec = tiny(strides=[2, 4], num_quantizers=3, quantizer_dropout=1.0).train()
    x = torch.randn(2, 1, 40) * 0.1
    mask = torch.arange(40)[None] < torch.tensor([40, 20])[:, None]
    used = set()
    for _ in range(8):
        codes = codec(waveform=x, waveform_mask=mask).features["codes"]
        # semantic codes on every real frame, -1 on padding (sample 1 has 20 of 40 samples: 3 of 5 frames)
        assert (codes[0, 0] >= 0).all() and (codes[1, 0, :3] >= 0).all() and (codes[1, 0, 3:] == -1).all()
        used.add(int((codes[0, 1:] >= 0).all(-1).sum()))
    assert used <= {1, 2, 3} and len(used) > 1  # 1..Q acoustic quantisers per batch


def test_bad_arguments_name_the_field():
    with pytest.raises(ConfigError, match="LMSPTCodec.strides"):
        tiny(strides=[])
    with pytest.raises(ConfigError, match="semantic_codebook_size"):
        tiny(semantic_codebook_size=1)
    with pytest.raises(ConfigError, match=r"waveform must be \[B, 1, T\]"):
        tiny()(waveform=torch.zeros(2, 10))


def test_codebook_usage_counts_each_codebook_over_its_own_size():
    from lit_distill.callbacks.codec_metrics import codebook_stats

    counts = torch.zeros(2, 16)
    counts[0, :4] = 1.0  # semantic codebook: 4 of 16 used
    counts[1, :4] = torch.tensor([3.0, 1.0, 0.0, 0.0])  # acoustic codebook of 4 entries: 2 used
    usage, perplexity = codebook_stats(counts, sizes=[16, 4])
    torch.testing.assert_close(usage, torch.tensor([4 / 16, 2 / 4], dtype=torch.float64))
    p = torch.tensor([0.75, 0.25], dtype=torch.float64)
    torch.testing.assert_close(perplexity, torch.tensor([4.0, float(torch.exp(-(p * p.log()).sum()))],
                                                        dtype=torch.float64))


def test_zero_bias_init_zeroes_conv_and_projection_biases_so_silence_maps_to_the_origin():
    torch.manual_seed(0)
    codec = tiny(strides=[2, 4], zero_bias_init=True).eval()
    convs = [m for m in codec.modules() if isinstance(m, torch.nn.Conv1d)]
    projections = [codec.semantic_quantizer.project_in, codec.semantic_quantizer.project_out,
                   *codec.acoustic_quantizer.project_in, *codec.acoustic_quantizer.project_out]
    assert convs and all((m.bias == 0).all() for m in [*convs, *projections])
    # as DAC's init_weights: transposed convolutions and the weights keep PyTorch's initialisation
    transposed = [m for m in codec.modules() if isinstance(m, torch.nn.ConvTranspose1d)]
    assert transposed and all((m.bias != 0).any() for m in transposed)
    assert all(m.weight.abs().sum() > 0 for m in convs)
    silence = torch.zeros(1, 1, 40)
    with torch.no_grad():
        u = codec.semantic_quantizer.project_in(codec.semantic_encoder(silence).transpose(1, 2))
    assert torch.equal(u, torch.zeros_like(u))  # ELU(0) = 0: no bias, no offset
    default = tiny(strides=[2, 4]).eval()
    with torch.no_grad():
        offset = default.semantic_quantizer.project_in(default.semantic_encoder(silence).transpose(1, 2))
    assert offset.abs().min() > 0  # PyTorch's default biases: silence is a constant vector, not the origin


def test_semantic_quantizer_matches_the_authors_dac_vq_maths_on_the_same_tensors():
    """The authors' semantic quantiser is DAC's factorised VQ: ``z_e = W_in z + b_in``, the entry ``k`` that
    minimises ``|z_e/|z_e| − e_k/|e_k||^2``, the RAW entry ``e_k`` as ``z_q``, commitment ``mean (z_e − sg z_q)^2``,
    codebook loss ``mean (z_q − sg z_e)^2``, output ``W_out (z_e + sg(z_q − z_e)) + b_out``. Written here from
    those equations, run on the same weights and inputs as ours: values, codes, losses and gradients agree."""
    torch.manual_seed(0)
    sq = SemanticQuantizer(dim=6, codebook_size=16, codebook_dim=3, codebook="learned", cosine=True,
                           commitment_weight=1.0)
    latent = torch.randn(2, 6, 7, requires_grad=True)
    ours = sq(latent)
    upstream = torch.randn(2, 6, 7)
    params = [latent, sq.project_in.weight, sq.project_in.bias, sq.vq.weight, sq.project_out.weight]
    our_grads = torch.autograd.grad((ours["quantized"] * upstream).sum() + ours["commit_loss"]
                                    + ours["codebook_loss"], params)

    z_e = torch.einsum("od,bdt->bot", sq.project_in.weight, latent) + sq.project_in.bias[:, None]  # [B, d, T]
    flat = z_e.transpose(1, 2).reshape(-1, 3)
    a, e = torch.nn.functional.normalize(flat, dim=1), torch.nn.functional.normalize(sq.vq.weight, dim=1)
    distance = a.pow(2).sum(1, keepdim=True) - 2 * a @ e.T + e.pow(2).sum(1)[None]
    codes = distance.argmin(1).view(2, 7)
    z_q = sq.vq.weight[codes].transpose(1, 2)  # [B, d, T]
    commitment = (z_e - z_q.detach()).pow(2).mean()
    codebook_loss = (z_q - z_e.detach()).pow(2).mean()
    out = torch.einsum("od,bdt->bot", sq.project_out.weight, z_e + (z_q - z_e).detach()) + sq.project_out.bias[:, None]
    ref_grads = torch.autograd.grad((out * upstream).sum() + commitment + codebook_loss, params)

    assert torch.equal(ours["codes"], codes)
    torch.testing.assert_close(ours["quantized"], out)
    torch.testing.assert_close(ours["commit_loss"], commitment)
    torch.testing.assert_close(ours["codebook_loss"], codebook_loss)
    for mine, theirs in zip(our_grads, ref_grads, strict=True):
        torch.testing.assert_close(mine, theirs)


def test_semantic_center_looks_up_u_minus_its_time_mean_over_real_frames():
    torch.manual_seed(0)
    sq = SemanticQuantizer(dim=6, codebook_size=32, codebook_dim=3, codebook="learned", cosine=True,
                           center=True).eval()
    latent = torch.randn(2, 6, 9)
    mask = torch.tensor([[True] * 9, [True] * 6 + [False] * 3])
    offset = torch.randn(2, 6, 1) * 100.0  # a different time-constant vector per utterance
    moved = latent.clone()
    moved[1, :, 6:] = 1e3  # padding frames must not enter the mean
    base, shifted = sq(latent, mask), sq(moved + offset, mask)
    assert torch.equal(base["codes"], shifted["codes"])
    torch.testing.assert_close(base["quantized"][0], shifted["quantized"][0])
    u = sq.project_in(latent.transpose(1, 2))[0].detach()
    centred = torch.nn.functional.normalize(u - u.mean(0), dim=-1)
    expected = (centred @ torch.nn.functional.normalize(sq.vq.weight, dim=-1).T).argmax(-1)
    assert torch.equal(base["codes"][0], expected)
    single = sq(latent[:1])  # the commitment reads the centred u too
    assert single["commit_loss"].item() == pytest.approx(
        float((u - u.mean(0) - sq.vq.weight.detach()[expected]).pow(2).mean()), rel=1e-5)
    # without centring the same offset sends every frame to one or two codes
    plain = SemanticQuantizer(dim=6, codebook_size=32, codebook_dim=3, codebook="learned", cosine=True).eval()
    plain.load_state_dict(sq.state_dict())
    assert len(set(plain(latent + offset)["codes"][0].tolist())) <= 2 < len(set(base["codes"][0].tolist()))


def test_semantic_options_reach_the_codec_and_default_to_the_authors():
    default = tiny(codebook="learned", cosine=True)
    assert not default.semantic_quantizer.center and default.semantic_quantizer.vq.dead_code_steps == 0
    codec = tiny(codebook="learned", cosine=True, semantic_center=True, semantic_dead_code_steps=5)
    assert codec.semantic_quantizer.center and codec.semantic_quantizer.vq.dead_code_steps == 5
    for layer in codec.acoustic_quantizer.layers:  # the acoustic RVQ keeps the authors' codebooks
        assert layer.dead_code_steps == 0
    with pytest.raises(ConfigError, match="dead_code_steps needs codebook: learned"):
        tiny(semantic_dead_code_steps=5)


def _participation_rank(matrix: torch.Tensor) -> float:
    """``(Σσ²)² / Σσ⁴`` of ``matrix``'s singular values: 1 for a rank-one matrix."""
    power = torch.linalg.svdvals(matrix.double()).pow(2)
    return float(power.sum() ** 2 / power.pow(2).sum())


def test_semantic_encoder_center_ignores_a_time_constant_input_at_every_layer():
    torch.manual_seed(0)
    codec = tiny(semantic_encoder_center=True).eval()
    convs = [m for m in codec.semantic_encoder.modules() if isinstance(m, torch.nn.Conv1d)]
    assert convs and all(type(m) is TimeCenteredConv1d for m in convs)  # stem, residual units, strided, last
    for conv in convs:  # a per-channel constant added to any layer's input does not reach its output
        x = torch.randn(2, conv.in_channels, 24)
        with torch.no_grad():
            torch.testing.assert_close(conv(x + 3.0 * torch.randn(2, conv.in_channels, 1)), conv(x))
    wave, offset = torch.randn(2, 1, 2 * codec.hop_length) * 0.1, torch.tensor([2.0, -3.0]).view(2, 1, 1)
    with torch.no_grad():
        base, moved = codec(waveform=wave).features, codec(waveform=wave + offset).features
    gap = (moved["semantic_latent"] - base["semantic_latent"]).abs().max()
    torch.testing.assert_close(moved["semantic_latent"], base["semantic_latent"])
    assert torch.equal(moved["semantic_codes"], base["semantic_codes"])
    plain = tiny().eval()  # without the option the same offset moves the semantic latent
    plain.load_state_dict(codec.state_dict())
    with torch.no_grad():
        shift = plain(waveform=wave + offset).features["semantic_latent"] - plain(waveform=wave).features[
            "semantic_latent"]
    assert shift.abs().max() > 1e-3 > 100 * gap


def test_semantic_encoder_center_gives_a_conv_weight_gradient_of_more_than_rank_one_on_a_constant_input():
    torch.manual_seed(0)
    on = tiny(semantic_encoder_center=True)
    off = tiny()
    off.load_state_dict(on.state_dict())
    last = lambda codec: codec.semantic_encoder[-1]  # noqa: E731 - the conv W_in reads: widths[-1] -> dim
    conv = last(off)
    x = 5.0 * torch.randn(1, conv.in_channels, 1) + 0.05 * torch.randn(3, conv.in_channels, 40)
    delta = torch.randn(3, conv.out_channels, 40)  # a full-rank upstream gradient
    ranks = []
    for codec in (off, on):
        last(codec)(x).mul(delta).sum().backward()
        ranks.append(_participation_rank(last(codec).weight.grad.flatten(1)))
    assert ranks[0] < 1.05  # Σ_t δ_t x_tᵀ ≈ (Σ_t δ_t) x̄ᵀ: rank one along the constant
    assert ranks[1] > 3.0  # Σ_t δ_t (x_t − x̄)ᵀ: the noise's directions


def test_semantic_encoder_center_off_is_the_default_codec_and_on_changes_only_the_semantic_encoder():
    torch.manual_seed(0)
    default = tiny()
    after_default = torch.rand(4)
    torch.manual_seed(0)
    off = tiny(semantic_encoder_center=False)
    torch.manual_seed(0)
    on = tiny(semantic_encoder_center=True)
    after_on = torch.rand(4)
    assert torch.equal(after_on, after_default)  # the wrapping draws nothing from the RNG
    assert not any(isinstance(m, TimeCenteredConv1d) for m in [*default.modules(), *off.modules()])
    for other in (off, on):  # same parameter names and values: a checkpoint loads either way
        assert list(other.state_dict()) == list(default.state_dict())
        assert all(torch.equal(v, default.state_dict()[k]) for k, v in other.state_dict().items())
    assert not any(isinstance(m, TimeCenteredConv1d) for m in
                   [*on.acoustic_encoder.modules(), *on.decoder.modules(), *on.aux_decoder.modules()])
    wave = torch.randn(2, 1, 3 * default.hop_length) * 0.1
    with torch.no_grad():
        a, b = default.eval()(waveform=wave).features, off.eval()(waveform=wave).features
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical
