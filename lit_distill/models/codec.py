"""A convolutional neural speech codec with residual vector quantisation (RVQ).

``waveform [B, 1, T] → encoder → latent [B, D, F] → RVQ → quantized [B, D, F] → decoder →
reconstruction [B, 1, T]``, with ``F = ceil(T / hop)`` frames, ``hop = prod(strides)`` and a frame
rate of ``sample_rate / hop`` (e.g. strides ``[2, 4, 5, 8]`` at 16 kHz: hop 320, 50 Hz).

The encoder is a SEANet-style stack: a stem convolution, then per stride a block of dilated
residual units followed by a strided convolution (kernel ``2 * stride``) that doubles the
channels, and a projection to ``dim``. The decoder mirrors it with transposed convolutions.

RVQ: quantiser ``q`` encodes the residual left by quantisers ``0..q-1``; codebooks are learned by
exponential moving averages (EMA) with dead-code replacement, one ``VectorQuantize`` layer of the
``vector-quantize-pytorch`` library per quantiser. The residual loop is ours so that the
per-layer outputs are exact: layer ``q``'s straight-through output has the value of its code
vector ``c_q`` and the gradient of the identity into the encoder latent, so a loss on a single
RVQ layer (DM-Codec distils layer 0) trains the encoder.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from vector_quantize_pytorch import VectorQuantize

from lit_distill.contracts import ModelOutput
from lit_distill.errors import ConfigError
from lit_distill.models.base import ModelAdapter
from lit_distill.sources import OutputSpec


class ResidualUnit(nn.Module):
    """``x + Conv1x1(ELU(DilatedConv3(ELU(x))))``, length-preserving. ``[B, C, L] → [B, C, L]``."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ELU(), nn.Conv1d(channels, channels, 3, dilation=dilation, padding=dilation),
            nn.ELU(), nn.Conv1d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


def _down(c_in: int, c_out: int, stride: int) -> nn.Conv1d:
    """Strided convolution with ``L_out = L_in / stride`` exactly when ``stride`` divides ``L_in``."""
    if stride == 1:
        return nn.Conv1d(c_in, c_out, 3, padding=1)
    return nn.Conv1d(c_in, c_out, 2 * stride, stride=stride, padding=math.ceil(stride / 2))


def _up(c_in: int, c_out: int, stride: int) -> nn.Module:
    """Transposed convolution with ``L_out = L_in * stride`` exactly."""
    if stride == 1:
        return nn.Conv1d(c_in, c_out, 3, padding=1)
    return nn.ConvTranspose1d(c_in, c_out, 2 * stride, stride=stride, padding=math.ceil(stride / 2),
                              output_padding=stride % 2)


def _widths(num_blocks: int, channels: int, max_channels: int) -> list[int]:
    return [min(channels * 2 ** i, max_channels) for i in range(num_blocks + 1)]


def build_encoder(strides: Sequence[int], channels: int, max_channels: int, dim: int,
                  dilations: Sequence[int]) -> nn.Sequential:
    """SEANet-style encoder ``[B, 1, T] → [B, dim, T / prod(strides)]`` (``T`` a multiple of the hop).

    A stem convolution to ``channels``, then per stride: residual units (one per dilation) and a
    strided convolution that doubles the width (capped at ``max_channels``); a projection to ``dim``.
    """
    widths = _widths(len(strides), channels, max_channels)
    enc: list[nn.Module] = [nn.Conv1d(1, widths[0], 7, padding=3)]
    for i, s in enumerate(strides):
        enc += [ResidualUnit(widths[i], d) for d in dilations]
        enc += [nn.ELU(), _down(widths[i], widths[i + 1], s)]
    enc += [nn.ELU(), nn.Conv1d(widths[-1], dim, 3, padding=1)]
    return nn.Sequential(*enc)


def build_decoder(strides: Sequence[int], channels: int, max_channels: int, dim: int,
                  dilations: Sequence[int]) -> nn.Sequential:
    """The mirror of :func:`build_encoder`: ``[B, dim, F] → [B, 1, F * prod(strides)]``."""
    widths = _widths(len(strides), channels, max_channels)
    dec: list[nn.Module] = [nn.Conv1d(dim, widths[-1], 7, padding=3)]
    for i in reversed(range(len(strides))):
        dec += [nn.ELU(), _up(widths[i + 1], widths[i], strides[i])]
        dec += [ResidualUnit(widths[i], d) for d in dilations]
    dec += [nn.ELU(), nn.Conv1d(widths[0], 1, 7, padding=3)]
    return nn.Sequential(*dec)


def check_codebook_args(codebook_size: int, ema_decay: float, prefix: str = "") -> None:
    """ConfigError for a codebook of fewer than 2 entries or an EMA decay outside (0, 1)."""
    if codebook_size < 2:
        raise ConfigError(f"{prefix}codebook_size must be >= 2, got {codebook_size}")
    if not 0.0 < ema_decay < 1.0:
        raise ConfigError(f"ema_decay must be in (0, 1), got {ema_decay}")


class ResidualQuantizer(nn.Module):
    """Residual vector quantisation with EMA codebooks and straight-through gradients.

    Args:
        dim: width ``D`` of the vectors quantised.
        num_quantizers: number of codebooks ``Q``.
        codebook_size: entries per codebook ``K``.
        ema_decay: EMA decay of the codebook statistics.
        commitment_weight: weight of each quantiser's commitment loss
            ``mean ||r_q - sg(c_q)||^2`` (``r_q`` its input residual).
        kmeans_init: initialise each codebook by k-means on the first batch.
        threshold_ema_dead_code: codes whose EMA usage count falls below this are replaced by
            random vectors of the current batch (0 = off).
        quantizer_dropout: probability that a training batch uses only the first ``n``
            quantisers, ``n ~ U{1..Q}`` (SoundStream; LM-SPT uses 0.5). Codes of the dropped
            quantisers are ``-1`` and their outputs zero.
    """

    def __init__(self, dim: int, num_quantizers: int = 8, codebook_size: int = 1024, ema_decay: float = 0.99,
                 commitment_weight: float = 1.0, kmeans_init: bool = False, threshold_ema_dead_code: float = 2.0,
                 quantizer_dropout: float = 0.0) -> None:
        super().__init__()
        if num_quantizers < 1:
            raise ConfigError(f"num_quantizers must be >= 1, got {num_quantizers}")
        check_codebook_args(codebook_size, ema_decay)
        if not 0.0 <= quantizer_dropout <= 1.0:
            raise ConfigError(f"quantizer_dropout must be in [0, 1], got {quantizer_dropout}")
        self.num_quantizers, self.codebook_size, self.quantizer_dropout = num_quantizers, codebook_size, quantizer_dropout
        self.commitment_weight = commitment_weight
        self.layers = nn.ModuleList(
            VectorQuantize(dim=dim, codebook_size=codebook_size, decay=ema_decay,
                           commitment_weight=0.0, kmeans_init=kmeans_init,  # ours, below: also in eval
                           threshold_ema_dead_code=threshold_ema_dead_code, rotation_trick=False)
            for _ in range(num_quantizers))

    def forward(self, latent: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """Quantise ``latent`` ``[B, D, F]``.

        Args:
            latent: encoder output ``[B, D, F]``.
            mask: bool ``[B, F]``, True on real frames (EMA statistics and commitment losses
                use those only); None = all.

        Returns:
            ``quantized`` ``[B, D, F]`` (value ``sum_q c_q``, identity gradient into ``latent``),
            ``codes`` long ``[B, Q, F]``, ``layer_outputs`` ``[B, Q, D, F]`` (layer ``q``: value
            ``c_q``, identity gradient into ``latent``), ``commit_loss`` (scalar:
            ``commitment_weight * sum_q mean ||r_q - sg(c_q)||^2`` over real frames and
            dimensions, ``r_q = latent - sum_{j<q} c_j``; in training and in eval). Codes are
            ``-1`` (and code vectors zero) on masked frames and for dropped quantisers.
        """
        x = latent.transpose(1, 2)  # [B, F, D]
        n_used = self.num_quantizers
        if self.training and self.quantizer_dropout > 0 and torch.rand(()) < self.quantizer_dropout:
            n_used = int(torch.randint(1, self.num_quantizers + 1, ()))
        b, f, d = x.shape
        codes = torch.full((b, self.num_quantizers, f), -1, dtype=torch.long, device=x.device)
        vectors = torch.zeros(self.num_quantizers, b, f, d, dtype=x.dtype, device=x.device)
        commit = x.new_zeros(())
        weights = None if mask is None else mask[..., None].to(x.dtype)
        residual = x
        for q, layer in enumerate(self.layers[:n_used]):
            out, idx, _ = layer(residual, mask=mask)
            code = out.detach()  # c_q; the straight-through paths are built below from known values
            codes[:, q], vectors[q] = idx, code
            error = (residual - code).pow(2)
            if weights is None:
                commit = commit + error.mean()
            else:
                commit = commit + (error * weights).sum() / (weights.sum() * d).clamp_min(1)
            residual = residual - code
        # Layer q's input residual is x - sum_{j<q} c_j: straight-through from there is the
        # identity into x, with the value c_q.
        before = torch.cat([vectors.new_zeros(1, b, f, d), vectors.cumsum(0)[:-1]])
        inputs = x[None] - before
        layer_out = inputs + (vectors - inputs).detach()
        total = vectors.sum(0)
        quantized = x + (total - x).detach()
        return {"quantized": quantized.transpose(1, 2), "codes": codes,
                "layer_outputs": layer_out.permute(1, 0, 3, 2), "commit_loss": self.commitment_weight * commit}

    def lookup(self, codes: Tensor) -> Tensor:
        """Code vectors summed over quantisers: long ``[B, Q', F]`` (``Q' <= Q``, ``-1`` = unused) → ``[B, D, F]``."""
        if codes.dim() != 3 or codes.shape[1] > self.num_quantizers:
            raise ConfigError(f"codes: expected [B, Q<={self.num_quantizers}, F], got {list(codes.shape)}")
        total = None
        for q in range(codes.shape[1]):
            book = self.layers[q].codebook  # [K, D]
            idx = codes[:, q]
            vec = book[idx.clamp_min(0)] * (idx >= 0)[..., None]
            total = vec if total is None else total + vec
        return total.transpose(1, 2)


class FramedCodec(ModelAdapter):
    """What every waveform codec here shares: framing arithmetic and the codec protocol.

    A subclass sets ``sample_rate`` and ``strides`` and implements ``run`` (features
    ``reconstruction``, ``codes`` ...), ``encode``, ``decode`` and ``codebook_sizes``; then
    ``python -m lit_distill tokenize|decode`` and ``CodecMetrics`` work with it.
    """

    sample_rate: int
    strides: list[int]

    @property
    def model(self) -> nn.Module:
        """The codec itself (it is its own wrapped model)."""
        return self

    @property
    def hop_length(self) -> int:
        """Samples per frame: the product of ``strides``."""
        return math.prod(self.strides)

    @property
    def frame_rate(self) -> float:
        """Frames per second: ``sample_rate / hop_length``."""
        return self.sample_rate / self.hop_length

    @property
    def codebook_sizes(self) -> list[int]:
        """Entries of each codebook, in code order."""
        raise NotImplementedError

    def num_frames(self, num_samples: int) -> int:
        """Frames of a waveform of ``num_samples``: ``ceil(num_samples / hop_length)``."""
        return -(-num_samples // self.hop_length)

    def frame_mask(self, waveform_mask: Tensor) -> Tensor:
        """Bool ``[B, T]`` sample mask → ``[B, F]`` frame mask (a frame counts when its first sample does)."""
        return waveform_mask[:, :: self.hop_length]

    def _pad(self, waveform: Tensor) -> Tensor:
        """``[B, 1, T]`` zero-padded at the end to a whole number of frames."""
        if waveform.dim() != 3 or waveform.shape[1] != 1:
            raise ConfigError(f"{type(self).__name__}: waveform must be [B, 1, T], got {list(waveform.shape)}")
        extra = self.num_frames(waveform.shape[-1]) * self.hop_length - waveform.shape[-1]
        return F.pad(waveform, (0, extra))

    def encode(self, waveform: Tensor) -> Tensor:
        """Waveform ``[B, 1, T]`` → codes long ``[B, Q, F]``."""
        raise NotImplementedError

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode inside the block (no EMA updates, no quantiser dropout), the previous mode after."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    def decode(self, codes: Tensor) -> Tensor:
        """Codes long ``[B, Q', F]`` → waveform ``[B, 1, F * hop_length]``."""
        raise NotImplementedError


class ConvCodec(FramedCodec):
    """Convolutional waveform codec with RVQ; the frame rate is set by ``strides``.

    Called as ``codec(waveform=[B, 1, T])`` (optionally ``waveform_mask`` bool ``[B, T]``), it
    returns a :class:`ModelOutput` whose ``features`` are:

    - ``latent`` ``[B, D, F]``: encoder output before quantisation;
    - ``quantized`` ``[B, D, F]``: the RVQ output (straight-through);
    - ``codes`` long ``[B, Q, F]``: code indices (``-1`` for quantisers dropped in training);
    - ``layer_outputs`` ``[B, Q, D, F]`` and ``layer_outputs.<q>`` ``[B, D, F]``: each RVQ
      layer's quantised vector (straight-through), e.g. ``student.features.layer_outputs.0``
      for DM-Codec's distillation;
    - ``reconstruction`` ``[B, 1, T]``: the decoded waveform, cut to the input length;
    - ``commit_loss``: scalar commitment loss summed over quantisers.

    Args:
        sample_rate: rate of the waveforms (Hz); with ``strides`` it sets ``frame_rate``.
        strides: encoder downsampling factors, first to last (the decoder upsamples in reverse);
            ``hop = prod(strides)`` samples per frame.
        channels: channels after the stem; doubled by every strided block (capped at
            ``max_channels``).
        max_channels: cap on the channel width.
        dim: width ``D`` of the latent and of the code vectors.
        dilations: dilations of the residual units in every block.
        num_quantizers: RVQ depth ``Q``.
        codebook_size: entries per codebook.
        ema_decay: EMA decay of the codebooks.
        commitment_weight: weight of each quantiser's commitment term inside ``commit_loss``.
        kmeans_init: k-means initialisation of the codebooks on the first batch.
        threshold_ema_dead_code: dead-code replacement threshold (EMA count; 0 = off).
        quantizer_dropout: probability of training a batch with only the first ``n ~ U{1..Q}``
            quantisers.
    """

    def __init__(self, sample_rate: int = 16000, strides: Sequence[int] = (2, 4, 5, 8), channels: int = 32,
                 max_channels: int = 512, dim: int = 128, dilations: Sequence[int] = (1, 3, 9),
                 num_quantizers: int = 8, codebook_size: int = 1024, ema_decay: float = 0.99,
                 commitment_weight: float = 1.0, kmeans_init: bool = False,
                 threshold_ema_dead_code: float = 2.0, quantizer_dropout: float = 0.0) -> None:
        super().__init__()
        strides = [int(s) for s in strides]
        if not strides or any(s < 1 for s in strides):
            raise ConfigError(f"strides: {strides} must be a non-empty list of integers >= 1, e.g. [2, 4, 5, 8]")
        if sample_rate < 1:
            raise ConfigError(f"sample_rate must be positive, got {sample_rate}")
        for name, value in (("channels", channels), ("max_channels", max_channels), ("dim", dim)):
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        self.sample_rate, self.strides, self.dim = sample_rate, strides, dim
        self.encoder = build_encoder(strides, channels, max_channels, dim, dilations)
        self.quantizer = ResidualQuantizer(dim, num_quantizers, codebook_size, ema_decay, commitment_weight,
                                           kmeans_init, threshold_ema_dead_code, quantizer_dropout)
        self.decoder = build_decoder(strides, channels, max_channels, dim, dilations)

    @property
    def num_quantizers(self) -> int:
        """RVQ depth ``Q``."""
        return self.quantizer.num_quantizers

    @property
    def codebook_size(self) -> int:
        """Entries per codebook."""
        return self.quantizer.codebook_size

    @property
    def codebook_sizes(self) -> list[int]:
        """Entries of each codebook, first quantiser first (all equal here)."""
        return [self.quantizer.codebook_size] * self.quantizer.num_quantizers

    def declared_outputs(self) -> OutputSpec:
        """Features only: latent, quantized, codes, layer_outputs (and ``layer_outputs.<q>`` per
        quantiser), reconstruction and commit_loss."""
        names = {"latent", "quantized", "codes", "layer_outputs", "reconstruction", "commit_loss"}
        names |= {f"layer_outputs.{q}" for q in range(self.num_quantizers)}
        return OutputSpec(logits=False, hidden_states=0, features=frozenset(names), closed=True)

    def run(self, waveform: Tensor, waveform_mask: Tensor | None = None, **_: Any) -> ModelOutput:
        length = waveform.shape[-1]
        latent = self.encoder(self._pad(waveform))
        mask = self.frame_mask(waveform_mask) if waveform_mask is not None else None
        rvq = self.quantizer(latent, mask)
        reconstruction = self.decoder(rvq["quantized"])[..., :length]
        features = {"latent": latent, "quantized": rvq["quantized"], "codes": rvq["codes"],
                    "layer_outputs": rvq["layer_outputs"], "reconstruction": reconstruction,
                    "commit_loss": rvq["commit_loss"]}
        for q in range(self.num_quantizers):
            features[f"layer_outputs.{q}"] = rvq["layer_outputs"][:, q]
        return ModelOutput(features=features)

    @torch.no_grad()
    def encode(self, waveform: Tensor) -> Tensor:
        """Waveform ``[B, 1, T]`` → codes long ``[B, Q, ceil(T / hop_length)]`` (eval mode, all quantisers)."""
        with self.evaluating():
            return self.quantizer(self.encoder(self._pad(waveform)))["codes"]

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes long ``[B, Q', F]`` (the first ``Q' <= Q`` quantisers) → waveform ``[B, 1, F * hop_length]``."""
        with self.evaluating():
            return self.decoder(self.quantizer.lookup(codes))
