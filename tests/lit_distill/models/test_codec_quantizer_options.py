"""ResidualQuantizer's options: factorised codes, learned (cosine) codebooks, commitment reductions."""

from __future__ import annotations

import pytest
import torch

from lit_distill.errors import ConfigError
from lit_distill.models.codec import ConvCodec, LearnedCodebook, ResidualQuantizer
from lit_distill.models.lm_spt import SemanticQuantizer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_factorised_rvq_gradient_is_the_residual_chain_of_its_projections():
    torch.manual_seed(0)
    rvq = ResidualQuantizer(dim=6, num_quantizers=2, codebook_size=8, codebook_dim=2).eval()
    latent = torch.randn(2, 6, 5, requires_grad=True)
    out = rvq(latent)
    # values: o_q = W_out,q c_q + b_out,q of the residual chain r_{q+1} = r_q - o_q
    r = latent.detach().transpose(1, 2)
    outs = []
    for q in range(2):
        u = rvq.project_in[q](r)
        book = rvq.layers[q].codebook
        code = book[torch.cdist(u, book[None].expand(2, -1, -1)).argmin(-1)]
        outs.append(rvq.project_out[q](code))
        r = r - outs[-1]
    torch.testing.assert_close(out["layer_outputs"].detach(), torch.stack(outs, 1).transpose(2, 3).detach())
    # gradient of the sum: I - (I - W_1)(I - W_0) with W_q = W_out,q W_in,q (not the identity)
    w = [rvq.project_out[q].weight.double() @ rvq.project_in[q].weight.double() for q in range(2)]
    eye = torch.eye(6, dtype=torch.float64)
    jacobian = eye - (eye - w[1]) @ (eye - w[0])
    g = torch.randn(2, 6, 5)
    (grad,) = torch.autograd.grad((out["quantized"] * g).sum(), latent)
    torch.testing.assert_close(grad.double(), torch.einsum("ij,bif->bjf", jacobian, g.double()), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(rvq.lookup(out["codes"]), out["quantized"].detach(), atol=1e-6, rtol=1e-6)


def test_learned_codebook_cosine_lookup_returns_the_raw_entry():
    torch.manual_seed(0)
    book = LearnedCodebook(dim=3, codebook_size=5, cosine=True)
    with torch.no_grad():
        book.weight.copy_(torch.tensor([[10.0, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0], [1, 1, 0]]))
    u = torch.tensor([[[0.1, 0.9, 0.0], [5.0, 0.1, 0.0], [0.0, 0.0, -3.0]]])
    code, idx = book(u, torch.tensor([[True, True, False]]))
    # by direction: [0.1, 0.9, 0] is nearest to entry 1, [5, 0.1, 0] to entry 0 (Euclidean would pick 4)
    assert idx.tolist() == [[1, 0, -1]]
    torch.testing.assert_close(code[0, :2], book.weight[[1, 0]].detach())
    assert (code[0, 2] == 0).all()
    euclid = LearnedCodebook(dim=3, codebook_size=5)
    euclid.weight.data.copy_(book.weight.data)
    assert euclid(u)[1][0, :2].tolist() == [1, 4]


def test_learned_codebook_loss_trains_only_the_codebook_and_commitment_only_the_input():
    torch.manual_seed(0)
    rvq = ResidualQuantizer(dim=4, num_quantizers=2, codebook_size=8, codebook="learned", cosine=True,
                            commitment_weight=0.25)
    latent = torch.randn(3, 4, 7, requires_grad=True)
    out = rvq(latent)
    x = latent.detach().transpose(1, 2)
    codes = out["codes"]
    c0 = rvq.layers[0].weight.detach()[codes[:, 0]]
    c1 = rvq.layers[1].weight.detach()[codes[:, 1]]
    residuals = [x, x - c0]
    expected = sum((r - c).pow(2).mean() for r, c in zip(residuals, (c0, c1), strict=True))
    assert out["codebook_loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["commit_loss"].item() == pytest.approx(0.25 * expected.item(), rel=1e-5)
    grad_latent, grad_book = torch.autograd.grad(out["codebook_loss"], [latent, rvq.layers[0].weight],
                                                 allow_unused=True)
    assert grad_latent is None and grad_book.abs().sum() > 0
    (grad_book,) = torch.autograd.grad(out["commit_loss"], [rvq.layers[0].weight], allow_unused=True)
    assert grad_book is None
    # EMA codebooks report no codebook loss
    assert ResidualQuantizer(dim=4, num_quantizers=2, codebook_size=8)(latent)["codebook_loss"].item() == 0.0


def test_commitment_mean_first_is_the_mean_with_only_layer_0_reaching_the_latent():
    torch.manual_seed(0)
    latent = torch.randn(3, 4, 7, requires_grad=True)
    rvq = ResidualQuantizer(dim=4, num_quantizers=3, codebook_size=8, commitment_weight=0.5,
                            commitment="mean_first").eval()
    out = rvq(latent)
    x = latent.detach().double().transpose(1, 2)
    c = out["layer_outputs"].detach().double().transpose(2, 3)  # [B, Q, F, D]
    residuals = [x, x - c[:, 0], x - c[:, 0] - c[:, 1]]
    errors = [((r - c[:, q]) ** 2).mean() for q, r in enumerate(residuals)]
    assert out["commit_loss"].item() == pytest.approx(0.5 * sum(errors).item() / 3, rel=1e-5)
    (grad,) = torch.autograd.grad(out["commit_loss"], latent)
    expected_grad = 0.5 / 3 * 2 * (x - c[:, 0]) / x.numel()  # layer 0's term only
    torch.testing.assert_close(grad.double(), expected_grad.transpose(1, 2), atol=1e-7, rtol=1e-6)
    # sum_all (the default) on the same codebooks: the sum, every residual reaching the latent
    rvq.commitment = "sum_all"
    assert rvq(latent)["commit_loss"].item() == pytest.approx(0.5 * sum(errors).item(), rel=1e-5)


def test_options_reach_conv_codec_and_the_semantic_quantizer():
    torch.manual_seed(0)
    codec = ConvCodec(channels=2, dim=8, dilations=[1], num_quantizers=2, codebook_size=8, codebook="learned",
                      codebook_dim=3, cosine=True, commitment="mean_first")
    assert isinstance(codec.quantizer.layers[0], LearnedCodebook) and codec.quantizer.layers[0].weight.shape == (8, 3)
    f = codec(waveform=torch.randn(2, 1, 640) * 0.1).features
    assert f["codebook_loss"].requires_grad and "codebook_loss" in codec.declared_outputs().features
    codec.eval()
    wave = torch.randn(1, 1, 640) * 0.1
    with torch.no_grad():
        recon = codec(waveform=wave).features["reconstruction"]
    torch.testing.assert_close(codec.decode(codec.encode(wave)), recon, atol=1e-5, rtol=1e-5)
    sq = SemanticQuantizer(dim=6, codebook_size=8, codebook_dim=3, codebook="learned", cosine=True)
    out = sq(torch.randn(2, 6, 5))
    assert out["codebook_loss"].item() > 0 and isinstance(sq.vq, LearnedCodebook)


def test_bad_options_name_the_field():
    with pytest.raises(ConfigError, match="codebook: 'vq' is not valid"):
        ResidualQuantizer(dim=4, codebook="vq")
    with pytest.raises(ConfigError, match="cosine: true needs codebook: learned"):
        ResidualQuantizer(dim=4, cosine=True)
    with pytest.raises(ConfigError, match="kmeans_init: true needs codebook: ema"):
        ResidualQuantizer(dim=4, codebook="learned", kmeans_init=True)
    with pytest.raises(ConfigError, match="commitment: 'mean' is not valid"):
        ResidualQuantizer(dim=4, commitment="mean")
    with pytest.raises(ConfigError, match="codebook_dim"):
        ResidualQuantizer(dim=4, codebook_dim=0)
