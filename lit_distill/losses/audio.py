"""Waveform reconstruction losses and metrics for neural audio codecs.

Waveforms are ``[B, 1, T]`` or ``[B, T]``; an optional ``mask`` (bool ``[B, T]``, True on real
samples) excludes padding. Spectral losses zero the padded samples of both signals and count a
frame when its centre sample is real (``center=True`` frames: frame ``j`` is centred on sample
``j * hop``).

- :func:`waveform_l1`: mean absolute error over real samples.
- :func:`si_snr`: scale-invariant signal-to-noise ratio in dB per waveform (a metric);
  :func:`si_snr_loss` is its negative batch mean.
- :class:`MultiResolutionMelLoss` / :func:`log_mel_l1`: L1 between log-mel spectrograms at
  several FFT sizes (hop ``n_fft // 4``).
- :func:`multi_resolution_stft_loss`: spectral convergence + log-magnitude L1 at several FFT sizes.
- :class:`CodecReconstruction`: the weighted sum of the above as a YAML loss term;
  :class:`Commitment`: the codec's RVQ commitment loss as a term.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torchaudio
from torch import Tensor, nn

from lit_distill.contracts import LossTerm
from lit_distill.errors import ConfigError


def _flat(x: Tensor) -> Tensor:
    """``[B, 1, T]`` or ``[B, T]`` → ``[B, T]``."""
    if x.dim() == 3:
        if x.shape[1] != 1:
            raise ValueError(f"expected mono waveforms [B, 1, T], got {list(x.shape)}")
        return x[:, 0]
    if x.dim() != 2:
        raise ValueError(f"expected waveforms [B, 1, T] or [B, T], got {list(x.shape)}")
    return x


def _check(estimate: Tensor, target: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    est, tgt = _flat(estimate), _flat(target)
    if est.shape != tgt.shape:
        raise ValueError(f"estimate {list(est.shape)} and target {list(tgt.shape)} differ in shape")
    if mask is not None:
        if mask.shape != tgt.shape:
            raise ValueError(f"mask {list(mask.shape)} must be [B, T] = {list(tgt.shape)}")
        mask = mask.bool()
        est, tgt = est * mask, tgt * mask
    return est, tgt, mask


def frame_mask(mask: Tensor, hop: int, num_frames: int) -> Tensor:
    """Sample mask bool ``[B, T]`` → frame mask ``[B, num_frames]`` of centred frames (centre ``j * hop``)."""
    centres = (torch.arange(num_frames, device=mask.device) * hop).clamp_max(mask.shape[-1] - 1)
    return mask[:, centres]


def _masked_mean(values: Tensor, frames: Tensor | None) -> Tensor:
    """Mean of ``values`` ``[B, N, F]`` over all entries of frames where ``frames`` ``[B, F]`` is True."""
    if frames is None:
        return values.mean()
    weights = frames[:, None, :].to(values.dtype)
    return (values * weights).sum() / (weights.sum() * values.shape[1]).clamp_min(1)


def waveform_l1(estimate: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean ``|estimate - target|`` over real samples.

    Args:
        estimate: ``[B, 1, T]`` or ``[B, T]``.
        target: same shape.
        mask: bool ``[B, T]``; None = all samples.

    Returns:
        Scalar.
    """
    est, tgt, mask = _check(estimate, target, mask)
    diff = (est - tgt).abs()
    if mask is None:
        return diff.mean()
    return diff.sum() / mask.sum().clamp_min(1)


def si_snr(estimate: Tensor, target: Tensor, mask: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """Scale-invariant SNR in dB of each waveform.

    With zero-mean ``e`` (estimate) and ``t`` (target) over the real samples,
    ``s = (<e, t> / ||t||^2) t`` and ``SI-SNR = 10 log10(||s||^2 / ||e - s||^2)``.

    Args:
        estimate: ``[B, 1, T]`` or ``[B, T]``.
        target: same shape.
        mask: bool ``[B, T]``; None = all samples.
        eps: added to the energies (silent inputs give finite values).

    Returns:
        ``[B]`` in dB.
    """
    est, tgt, mask = _check(estimate, target, mask)
    weights = torch.ones_like(tgt) if mask is None else mask.to(tgt.dtype)
    count = weights.sum(-1, keepdim=True).clamp_min(1)
    est = (est - (est * weights).sum(-1, keepdim=True) / count) * weights
    tgt = (tgt - (tgt * weights).sum(-1, keepdim=True) / count) * weights
    scale = (est * tgt).sum(-1, keepdim=True) / ((tgt * tgt).sum(-1, keepdim=True) + eps)
    projection = scale * tgt
    noise = est - projection
    return 10 * torch.log10(((projection ** 2).sum(-1) + eps) / ((noise ** 2).sum(-1) + eps))


def si_snr_loss(estimate: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Negative mean SI-SNR (dB) over the batch; see :func:`si_snr`. Scalar."""
    return -si_snr(estimate, target, mask).mean()


def _stft_magnitude(x: Tensor, n_fft: int, hop: int, win: int) -> Tensor:
    """``[B, T]`` → magnitude ``[B, n_fft // 2 + 1, F]`` (Hann window, centred, reflect padding)."""
    window = torch.hann_window(win, device=x.device, dtype=x.dtype)
    spec = torch.stft(x, n_fft, hop_length=hop, win_length=win, window=window, center=True,
                      pad_mode="reflect", return_complex=True)
    return spec.abs()


def multi_resolution_stft_loss(estimate: Tensor, target: Tensor, mask: Tensor | None = None,
                               fft_sizes: Sequence[int] = (1024, 512, 256), eps: float = 1e-7) -> Tensor:
    """Multi-resolution STFT loss: per FFT size, spectral convergence + log-magnitude L1, averaged.

    For magnitudes ``E`` and ``S`` (hop ``n_fft // 4``, Hann window ``n_fft``):
    ``SC = ||S - E||_F / ||S||_F`` over the batch and ``LM = mean |log(S + eps) - log(E + eps)|``
    over real frames and bins.

    Args:
        estimate: ``[B, 1, T]`` or ``[B, T]``.
        target: same shape.
        mask: bool ``[B, T]``; None = all samples.
        fft_sizes: FFT sizes; ``T`` must exceed ``n_fft // 2`` (reflect padding).
        eps: floor of the magnitudes inside the logarithm.

    Returns:
        Scalar: ``sum_r (SC_r + LM_r) / len(fft_sizes)``.
    """
    est, tgt, mask = _check(estimate, target, mask)
    total = est.new_zeros(())
    for n_fft in fft_sizes:
        hop = n_fft // 4
        e_mag, t_mag = _stft_magnitude(est, n_fft, hop, n_fft), _stft_magnitude(tgt, n_fft, hop, n_fft)
        frames = None if mask is None else frame_mask(mask, hop, t_mag.shape[-1])
        if frames is not None:
            keep = frames[:, None, :].to(t_mag.dtype)
            e_sc, t_sc = e_mag * keep, t_mag * keep
        else:
            e_sc, t_sc = e_mag, t_mag
        sc = torch.linalg.vector_norm(t_sc - e_sc) / torch.linalg.vector_norm(t_sc).clamp_min(eps)
        lm = _masked_mean((torch.log(t_mag + eps) - torch.log(e_mag + eps)).abs(), frames)
        total = total + sc + lm
    return total / len(fft_sizes)


def log_mel_l1(estimate_mel: Tensor, target_mel: Tensor, frames: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Mean ``|log(E + eps) - log(S + eps)|`` of mel spectrograms ``[B, M, F]`` over real frames."""
    return _masked_mean((torch.log(estimate_mel + eps) - torch.log(target_mel + eps)).abs(), frames)


def usable_mels(sample_rate: int, n_fft: int, n_mels: int) -> int:
    """The largest band count ``<= n_mels`` whose mel filterbank (HTK scale, 0 Hz to Nyquist) has no
    all-zero filter at this FFT size (small FFTs cannot resolve narrow low-frequency bands)."""
    for n in range(n_mels, 0, -1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bank = torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, 0.0, sample_rate / 2, n, sample_rate)
        if bool((bank.amax(0) > 0).all()):
            return n
    return 1


class MultiResolutionMelLoss(nn.Module):
    """L1 between log-mel spectrograms at several FFT sizes, weighted per resolution.

    Each resolution uses a Hann window of ``n_fft`` samples, hop ``n_fft // 4``, power 1
    (magnitude) and ``usable_mels(sample_rate, n_fft, n_mels)`` bands: ``n_mels`` or fewer where
    some filters would be empty at that FFT size.

    Args:
        sample_rate: rate of the waveforms (Hz).
        fft_sizes: FFT sizes, e.g. ``[1024, 512, 256, 128]``.
        n_mels: mel bands (reduced per resolution as above).
        weights: weight per resolution (DM-Codec: ``[45, 1, 1, 1]``); None = all 1.
        eps: floor inside the logarithm.
    """

    def __init__(self, sample_rate: int = 16000, fft_sizes: Sequence[int] = (1024, 512, 256, 128),
                 n_mels: int = 80, weights: Sequence[float] | None = None, eps: float = 1e-5) -> None:
        super().__init__()
        fft_sizes = [int(n) for n in fft_sizes]
        if not fft_sizes or min(fft_sizes) < 16:
            raise ConfigError(f"fft_sizes: {fft_sizes} must be a non-empty list of FFT sizes >= 16")
        weights = [1.0] * len(fft_sizes) if weights is None else [float(w) for w in weights]
        if len(weights) != len(fft_sizes):
            raise ConfigError(f"weights: {len(weights)} values for {len(fft_sizes)} fft_sizes; give one per size")
        self.fft_sizes, self.weights, self.eps = fft_sizes, weights, eps
        self.mels = nn.ModuleList(
            torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_fft=n, win_length=n, hop_length=n // 4,
                                                 n_mels=usable_mels(sample_rate, n, n_mels), power=1.0, center=True,
                                                 pad_mode="reflect")
            for n in fft_sizes)

    def forward(self, estimate: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """Weighted sum over resolutions of :func:`log_mel_l1`.

        Args:
            estimate: ``[B, 1, T]`` or ``[B, T]``.
            target: same shape.
            mask: bool ``[B, T]``; None = all samples.

        Returns:
            Scalar.
        """
        est, tgt, mask = _check(estimate, target, mask)
        total = est.new_zeros(())
        for n_fft, weight, mel in zip(self.fft_sizes, self.weights, self.mels, strict=True):
            e_mel, t_mel = mel(est), mel(tgt)
            frames = None if mask is None else frame_mask(mask, n_fft // 4, t_mel.shape[-1])
            total = total + weight * log_mel_l1(e_mel, t_mel, frames, self.eps)
        return total


class CodecReconstruction(LossTerm):
    """Codec reconstruction loss: ``mel_weight * mel + waveform_weight * L1 + stft_weight * STFT``.

    Sources: ``reconstruction`` = ``student.features.reconstruction`` ``[B, 1, T]``, ``waveform``
    = ``batch.waveform`` ``[B, 1, T]`` (the input itself, see :mod:`datamodules.speech`), ``mask``
    = ``batch.waveform_mask`` ``[B, T]`` (optional).

    Args:
        weight: weight of the term in the total loss.
        sources: overrides of the default sources.
        sample_rate: rate of the waveforms (Hz), for the mel filters.
        mel_weight: weight of :class:`MultiResolutionMelLoss` (0 = skip).
        mel_fft_sizes: its FFT sizes.
        mel_weights: its weight per FFT size (None = all 1).
        n_mels: its mel bands.
        waveform_weight: weight of :func:`waveform_l1` (0 = skip).
        stft_weight: weight of :func:`multi_resolution_stft_loss` (0 = skip).
        stft_fft_sizes: its FFT sizes.
    """

    default_sources = {"reconstruction": "student.features.reconstruction", "waveform": "batch.waveform",
                       "mask": "batch.waveform_mask"}

    def __init__(self, weight: float = 1.0, sources: dict[str, str] | None = None, sample_rate: int = 16000,
                 mel_weight: float = 1.0, mel_fft_sizes: Sequence[int] = (1024, 512, 256, 128),
                 mel_weights: Sequence[float] | None = None, n_mels: int = 80, waveform_weight: float = 0.0,
                 stft_weight: float = 0.0, stft_fft_sizes: Sequence[int] = (1024, 512, 256)) -> None:
        super().__init__(weight, sources)
        if min(mel_weight, waveform_weight, stft_weight) < 0 or mel_weight + waveform_weight + stft_weight == 0:
            raise ConfigError("CodecReconstruction: mel_weight, waveform_weight and stft_weight must be >= 0 "
                              "with at least one positive")
        self.mel_weight, self.waveform_weight, self.stft_weight = mel_weight, waveform_weight, stft_weight
        self.stft_fft_sizes = [int(n) for n in stft_fft_sizes]
        self.mel = MultiResolutionMelLoss(sample_rate, mel_fft_sizes, n_mels, mel_weights) if mel_weight > 0 else None

    def forward(self, reconstruction: Tensor, waveform: Tensor, mask: Tensor | None = None) -> Tensor:
        """Scalar loss of ``reconstruction`` ``[B, 1, T]`` against ``waveform`` ``[B, 1, T]``."""
        total = reconstruction.new_zeros(())
        if self.mel_weight > 0:
            if self.mel is None:
                raise ConfigError("CodecReconstruction.mel_weight: the term was built with mel_weight 0 and has no "
                                  "mel filters; build it with a positive mel_weight to schedule that weight")
            total = total + self.mel_weight * self.mel(reconstruction, waveform, mask)
        if self.waveform_weight > 0:
            total = total + self.waveform_weight * waveform_l1(reconstruction, waveform, mask)
        if self.stft_weight > 0:
            total = total + self.stft_weight * multi_resolution_stft_loss(reconstruction, waveform, mask,
                                                                          self.stft_fft_sizes)
        return total


class Commitment(LossTerm):
    """The codec's RVQ commitment loss (source ``commit_loss`` = ``student.features.commit_loss``)."""

    default_sources = {"commit_loss": "student.features.commit_loss"}

    def forward(self, commit_loss: Tensor) -> Tensor:
        """Return the scalar ``commit_loss`` as it is (the term's ``weight`` scales it)."""
        return commit_loss
