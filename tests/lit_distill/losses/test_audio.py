"""Audio reconstruction losses against direct float64 formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torchaudio
from hypothesis import given, settings
from hypothesis import strategies as st

from lit_distill.contracts import ModelOutput
from lit_distill.errors import ConfigError
from lit_distill.losses.audio import (
    CodecReconstruction,
    Commitment,
    MultiResolutionMelLoss,
    multi_resolution_stft_loss,
    si_snr,
    si_snr_loss,
    usable_mels,
    waveform_l1,
)


def direct_si_snr(est: torch.Tensor, tgt: torch.Tensor, eps: float = 1e-8) -> float:
    """SI-SNR of two 1-D float64 signals, written out term by term (eps on the energies, as documented)."""
    e = est - est.mean()
    t = tgt - tgt.mean()
    s = (torch.dot(e, t) / (torch.dot(t, t) + eps)) * t
    n = e - s
    return 10 * math.log10(float((torch.dot(s, s) + eps) / (torch.dot(n, n) + eps)))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.1, 10.0), noise=st.floats(0.01, 1.0))
def test_si_snr_matches_direct_formula_and_is_scale_invariant(seed, scale, noise):
    g = torch.Generator().manual_seed(seed)
    tgt = torch.randn(3, 1, 400, generator=g, dtype=torch.float64)
    est = tgt + noise * torch.randn(3, 1, 400, generator=g, dtype=torch.float64) + 0.3
    values = si_snr(est, tgt)
    for b in range(3):
        assert values[b].item() == pytest.approx(direct_si_snr(est[b, 0], tgt[b, 0]), abs=1e-6)
    assert torch.allclose(si_snr(scale * est, tgt), values, atol=1e-6)
    assert si_snr_loss(est, tgt).item() == pytest.approx(-values.mean().item())


def test_si_snr_mask_ignores_padding():
    torch.manual_seed(0)
    tgt = torch.randn(2, 300, dtype=torch.float64)
    est = tgt + 0.2 * torch.randn(2, 300, dtype=torch.float64)
    mask = torch.ones(2, 300, dtype=torch.bool)
    mask[1, 200:] = False
    padded_est = est.clone()
    padded_est[1, 200:] = 5.0  # garbage in the padding must not count
    values = si_snr(padded_est, tgt, mask)
    assert values[1].item() == pytest.approx(direct_si_snr(est[1, :200], tgt[1, :200]), abs=1e-6)
    assert values[0].item() == pytest.approx(direct_si_snr(est[0], tgt[0]), abs=1e-6)


def test_waveform_l1():
    est, tgt = torch.tensor([[[1.0, 2.0, 3.0]]]), torch.tensor([[[0.0, 0.0, 1.0]]])
    assert waveform_l1(est, tgt).item() == pytest.approx(5 / 3)
    mask = torch.tensor([[True, False, True]])
    assert waveform_l1(est, tgt, mask).item() == pytest.approx(3 / 2)


def direct_stft_loss(est: torch.Tensor, tgt: torch.Tensor, sizes, eps=1e-7) -> float:
    total = 0.0
    for n in sizes:
        w = torch.hann_window(n, dtype=torch.float64)
        e = torch.stft(est, n, n // 4, n, w, center=True, pad_mode="reflect", return_complex=True).abs()
        t = torch.stft(tgt, n, n // 4, n, w, center=True, pad_mode="reflect", return_complex=True).abs()
        sc = torch.sqrt(((t - e) ** 2).sum()) / torch.sqrt((t ** 2).sum())
        lm = (torch.log(t + eps) - torch.log(e + eps)).abs().mean()
        total += float(sc + lm)
    return total / len(sizes)


def test_stft_loss_matches_torch_stft():
    torch.manual_seed(0)
    tgt = torch.randn(2, 1, 1024, dtype=torch.float64)
    est = tgt + 0.3 * torch.randn(2, 1, 1024, dtype=torch.float64)
    sizes = [256, 128, 64]
    value = multi_resolution_stft_loss(est, tgt, fft_sizes=sizes)
    assert value.item() == pytest.approx(direct_stft_loss(est[:, 0], tgt[:, 0], sizes), rel=1e-9)
    assert multi_resolution_stft_loss(tgt, tgt, fft_sizes=sizes).item() == pytest.approx(0.0, abs=1e-12)


def test_stft_loss_mask_equals_unpadded():
    torch.manual_seed(0)
    tgt = torch.randn(1, 1, 1024, dtype=torch.float64)
    est = tgt + 0.3 * torch.randn(1, 1, 1024, dtype=torch.float64)
    mask = torch.ones(1, 1024, dtype=torch.bool)
    # with every sample real the mask changes nothing
    assert multi_resolution_stft_loss(est, tgt, mask, [128]).item() == pytest.approx(
        multi_resolution_stft_loss(est, tgt, None, [128]).item(), rel=1e-12)
    mask[0, 512:] = False
    garbage = est.clone()
    garbage[..., 512:] = 3.0
    a = multi_resolution_stft_loss(garbage, tgt, mask, [128])
    b = multi_resolution_stft_loss(est, tgt, mask, [128])
    assert a.item() == pytest.approx(b.item(), rel=1e-12)  # padded samples never count


def test_mel_loss_against_direct_log_mel():
    torch.manual_seed(0)
    tgt = torch.randn(2, 1, 2048)
    est = tgt + 0.5 * torch.randn(2, 1, 2048)
    loss = MultiResolutionMelLoss(16000, fft_sizes=[512, 256], n_mels=40, weights=[2.0, 1.0])
    expected = 0.0
    for n, w in ((512, 2.0), (256, 1.0)):
        mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=n, hop_length=n // 4, n_mels=usable_mels(16000, n, 40),
                                                   power=1.0).double()
        e, t = mel(est[:, 0].double()), mel(tgt[:, 0].double())
        expected += w * float((torch.log(e + 1e-5) - torch.log(t + 1e-5)).abs().mean())
    assert loss(est, tgt).item() == pytest.approx(expected, rel=1e-4)
    assert loss(tgt, tgt).item() == 0.0
    assert loss(est, tgt).item() > 0.1
    with pytest.raises(ConfigError, match="weights"):
        MultiResolutionMelLoss(fft_sizes=[512, 256], weights=[1.0])


def test_usable_mels_leaves_no_empty_filter():
    assert usable_mels(16000, 1024, 80) == 80  # DM-Codec's largest resolutions keep all 80 bands
    assert usable_mels(16000, 512, 80) == 80
    for n_fft in (256, 128):
        n = usable_mels(16000, n_fft, 80)
        bank = torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, 0.0, 8000.0, n, 16000)
        assert 1 <= n < 80 and (bank.amax(0) > 0).all()
        with pytest.warns(UserWarning, match="all zero"):
            torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, 0.0, 8000.0, n + 1, 16000)


def test_codec_reconstruction_term():
    torch.manual_seed(0)
    tgt = torch.randn(2, 1, 2048)
    rec = (tgt + 0.3 * torch.randn(2, 1, 2048)).requires_grad_()
    mask = torch.ones(2, 2048, dtype=torch.bool)
    term = CodecReconstruction(sample_rate=16000, mel_weight=1.0, mel_fft_sizes=[512, 256], n_mels=40,
                               waveform_weight=10.0, stft_weight=0.5, stft_fft_sizes=[256])
    student = ModelOutput(features={"reconstruction": rec})
    batch = {"inputs": {"waveform": tgt}, "waveform": tgt, "waveform_mask": mask}
    value = term(**term.gather(student, None, batch))
    mel = MultiResolutionMelLoss(16000, [512, 256], 40)(rec, tgt)
    expected = mel + 10.0 * waveform_l1(rec, tgt) + 0.5 * multi_resolution_stft_loss(rec, tgt, fft_sizes=[256])
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    value.backward()
    assert rec.grad.abs().sum() > 0
    del batch["waveform_mask"]  # the mask is optional
    assert term(**term.gather(student, None, batch)).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ConfigError, match="at least one positive"):
        CodecReconstruction(mel_weight=0.0)


def test_commitment_term():
    commit = torch.tensor(0.7, requires_grad=True)
    term = Commitment(weight=10.0)
    assert term(**term.gather(ModelOutput(features={"commit_loss": commit}), None, {})) is commit
    assert term.weight == 10.0 and not term.reads_teacher
