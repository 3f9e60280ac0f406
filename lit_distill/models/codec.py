"""A convolutional neural speech codec with residual vector quantisation (RVQ).

``waveform [B, 1, T] → encoder → latent [B, D, F] → RVQ → quantized [B, D, F] → decoder →
reconstruction [B, 1, T]``, with ``F = ceil(T / hop)`` frames, ``hop = prod(strides)`` and a frame
rate of ``sample_rate / hop`` (e.g. strides ``[2, 4, 5, 8]`` at 16 kHz: hop 320, 50 Hz).

The encoder is a SEANet-style stack: a stem convolution, then per stride a block of dilated
residual units followed by a strided convolution (kernel ``2 * stride``) that doubles the
channels, and a projection to ``dim``. The decoder mirrors it with transposed convolutions.

RVQ: quantiser ``q`` encodes the residual left by quantisers ``0..q-1``. Codebooks are learned by
exponential moving averages (EMA) with dead-code replacement (one ``VectorQuantize`` layer of the
``vector-quantize-pytorch`` library per quantiser; the default) or by gradient descent on a
codebook loss with an optional L2-normalised (cosine) lookup (:class:`LearnedCodebook`, as DAC
and LM-SPT; the library does not combine a learned codebook with cosine lookup). Codes live in
the latent's width or, with ``codebook_dim``, in a low-dimensional factorised space reached by
per-quantiser projections. The residual loop is ours so that the per-layer outputs are exact:
without projections layer ``q``'s straight-through output has the value of its code vector
``c_q`` and the gradient of the identity into the encoder latent, so a loss on a single RVQ
layer (DM-Codec distils layer 0) trains the encoder; with them the residual chain keeps its
gradient as in DAC (see :class:`ResidualQuantizer`).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from vector_quantize_pytorch import VectorQuantize

from lit_distill.contracts import ModelOutput
from lit_distill.errors import ConfigError
from lit_distill.models.base import ModelAdapter
from lit_distill.models.vision_base import load_checked, read_state_dict
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


CODEBOOKS = ("ema", "learned")
COMMITMENTS = ("sum_all", "mean_first")


def check_codebook_args(codebook_size: int, ema_decay: float, prefix: str = "") -> None:
    """ConfigError for a codebook of fewer than 2 entries or an EMA decay outside (0, 1)."""
    if codebook_size < 2:
        raise ConfigError(f"{prefix}codebook_size must be >= 2, got {codebook_size}")
    if not 0.0 < ema_decay < 1.0:
        raise ConfigError(f"ema_decay must be in (0, 1), got {ema_decay}")


def check_codebook_kind(codebook: str, cosine: bool, kmeans_init: bool, prefix: str = "") -> None:
    """ConfigError for an unknown ``codebook`` kind or options the kind does not have."""
    if codebook not in CODEBOOKS:
        raise ConfigError(f"{prefix}codebook: '{codebook}' is not valid (valid: {', '.join(CODEBOOKS)})")
    if cosine and codebook != "learned":
        raise ConfigError(f"{prefix}cosine: true needs {prefix}codebook: learned (the EMA codebooks look up "
                          "by Euclidean distance)")
    if kmeans_init and codebook != "ema":
        raise ConfigError(f"{prefix}kmeans_init: true needs {prefix}codebook: ema (a learned codebook starts "
                          "from a normal initialisation)")


class LearnedCodebook(nn.Module):
    """A codebook trained by gradient descent (VQ-VAE's codebook loss), no EMA statistics.

    The nearest entry of ``u`` ``[B, F, d]`` is found by Euclidean distance or, with ``cosine``, by
    cosine similarity (both ``u`` and the entries L2-normalised for the lookup only, as in
    ViT-VQGAN and DAC); the code vector returned is the raw entry, so a codebook loss
    ``mean ||c − sg(u)||^2`` moves the chosen entries towards their inputs.

    Dead-code restart (``dead_code_steps > 0``; off by default, DAC and LM-SPT have none): the
    codebook loss moves only the entries a frame selects, so an entry that no frame points at keeps
    its random direction for ever. With the option, an entry no real frame of ``dead_code_steps``
    consecutive training batches selected is set to one of the current batch's ``u`` (drawn at
    random, without replacement while there are enough frames) before the lookup, as Jukebox's
    codebook restarts do.

    Args:
        dim: width ``d`` of the code vectors.
        codebook_size: entries ``K``.
        cosine: look up by cosine similarity instead of Euclidean distance.
        dead_code_steps: restart entries unused for this many training batches (0 = off).
    """

    def __init__(self, dim: int, codebook_size: int, cosine: bool = False, dead_code_steps: int = 0) -> None:
        super().__init__()
        if dead_code_steps < 0:
            raise ConfigError(f"dead_code_steps must be >= 0 (0 = off), got {dead_code_steps}")
        self.weight = nn.Parameter(torch.randn(codebook_size, dim))
        self.cosine, self.dead_code_steps = cosine, dead_code_steps
        if dead_code_steps:
            self.register_buffer("unused_steps", torch.zeros(codebook_size, dtype=torch.long))

    @torch.no_grad()
    def _restart_dead(self, flat: Tensor) -> None:
        """Set entries unused for ``dead_code_steps`` batches to random rows of ``flat`` ``[N, d]`` (real frames)."""
        dead = (self.unused_steps >= self.dead_code_steps).nonzero().flatten()
        if len(dead) == 0 or len(flat) == 0:
            return
        pick = torch.randperm(len(flat), device=flat.device)[:len(dead)] if len(flat) >= len(dead) \
            else torch.randint(len(flat), (len(dead),), device=flat.device)
        self.weight[dead] = flat[pick].to(self.weight.dtype)
        self.unused_steps[dead] = 0

    @property
    def codebook(self) -> Tensor:
        """The entries ``[K, d]``."""
        return self.weight

    def forward(self, u: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Args: u ``[B, F, d]``, mask bool ``[B, F]`` (None: all real).

        Returns:
            ``(code [B, F, d]`` (the entries, differentiable in the codebook only; zero on masked
            frames), ``codes`` long ``[B, F]`` (``-1`` on masked frames)).
        """
        flat = u.detach().reshape(-1, u.shape[-1])
        if self.dead_code_steps and self.training:
            self._restart_dead(flat if mask is None else flat[mask.reshape(-1)])
        book = self.weight.detach()
        if self.cosine:
            codes = (F.normalize(flat, dim=-1) @ F.normalize(book, dim=-1).T).argmax(-1)
        else:
            codes = (flat.pow(2).sum(-1, keepdim=True) - 2 * flat @ book.T + book.pow(2).sum(-1)).argmin(-1)
        codes = codes.view(u.shape[:-1])
        code = F.embedding(codes, self.weight)
        if mask is not None:
            codes = codes.masked_fill(~mask, -1)
            code = code * mask[..., None].to(code.dtype)
        if self.dead_code_steps and self.training:
            used = torch.zeros_like(self.unused_steps, dtype=torch.bool)
            used[codes[codes >= 0]] = True
            self.unused_steps.add_(1).masked_fill_(used, 0)
        return code, codes


def build_codebook(dim: int, codebook_size: int, codebook: str, cosine: bool, ema_decay: float, kmeans_init: bool,
                   threshold_ema_dead_code: float, dead_code_steps: int = 0) -> nn.Module:
    """One codebook of width ``dim``: the library's EMA ``VectorQuantize`` or a :class:`LearnedCodebook`
    (``dead_code_steps``: its restart of unused entries; learned codebooks only)."""
    if codebook == "learned":
        return LearnedCodebook(dim, codebook_size, cosine, dead_code_steps)
    if dead_code_steps:
        raise ConfigError("dead_code_steps needs codebook: learned (EMA codebooks restart dead codes by "
                          "threshold_ema_dead_code)")
    return VectorQuantize(dim=dim, codebook_size=codebook_size, decay=ema_decay,
                          commitment_weight=0.0, kmeans_init=kmeans_init,  # ours, in the caller: also in eval
                          threshold_ema_dead_code=threshold_ema_dead_code, rotation_trick=False)


def nearest_code(book: nn.Module, u: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(code [B, F, d], codes long [B, F])`` of ``u`` ``[B, F, d]`` from a :func:`build_codebook` codebook.

    EMA codebooks update their statistics here (in training); their code vectors carry no
    gradient. Learned codebooks' code vectors are differentiable in the codebook.
    """
    if isinstance(book, LearnedCodebook):
        return book(u, mask)
    out, codes, _ = book(u, mask=mask)
    return out.detach(), codes


def masked_mse(a: Tensor, b: Tensor, weights: Tensor | None) -> Tensor:
    """Mean of ``(a − b)^2`` ``[B, F, d]`` over the frames where ``weights`` ``[B, F, 1]`` is 1 and all ``d``."""
    error = (a - b).pow(2)
    if weights is None:
        return error.mean()
    return (error * weights).sum() / (weights.sum() * a.shape[-1]).clamp_min(1)


class ResidualQuantizer(nn.Module):
    """Residual vector quantisation with straight-through gradients; EMA or learned codebooks.

    Quantiser ``q`` encodes the residual ``r_q`` that quantisers ``0..q-1`` leave (``r_0`` = the
    latent). Two constructions, chosen by ``codebook_dim``:

    - ``codebook_dim: null`` (codes in the latent's own width ``D``): layer ``q``'s output has the
      value of its code vector ``c_q`` and the gradient of the identity into the latent, and so
      does their sum. A loss on one layer (DM-Codec distils layer 0) trains the encoder.
    - ``codebook_dim: d`` (factorised low-dimensional codes, DAC / LM-SPT): per quantiser
      ``u_q = W_in,q r_q`` (``[.., d]``), its nearest code ``c_q``, output
      ``o_q = W_out,q (u_q + sg(c_q − u_q))`` and ``r_{q+1} = r_q − o_q`` *with* its gradient. The
      output's gradient into the latent is then not the identity: a model that quantises
      ``z − s`` (LM-SPT's acoustic RVQ) passes the decoder's gradient on to ``s``.

    Args:
        dim: width ``D`` of the vectors quantised.
        num_quantizers: number of codebooks ``Q``.
        codebook_size: entries per codebook ``K``.
        ema_decay: EMA decay of the codebook statistics (``codebook: ema``).
        commitment_weight: weight of the commitment loss inside ``commit_loss``.
        kmeans_init: initialise each EMA codebook by k-means on the first batch.
        threshold_ema_dead_code: EMA codes whose usage count falls below this are replaced by
            random vectors of the current batch (0 = off; EMA only).
        quantizer_dropout: probability that a training batch uses only the first ``n``
            quantisers, ``n ~ U{1..Q}`` (SoundStream; LM-SPT uses 0.5). Codes of the dropped
            quantisers are ``-1`` and their outputs zero.
        codebook: ``ema`` (exponential moving averages with dead-code replacement, the
            ``vector-quantize-pytorch`` layer; default) or ``learned`` (trained by the gradient of
            ``codebook_loss``, as DAC and LM-SPT do; give that loss a weight, e.g. 1).
        codebook_dim: width ``d`` of factorised codes (LM-SPT: 8); None: codes of width ``D``.
        cosine: look codes up by cosine similarity (L2-normalised lookup, DAC / LM-SPT); needs
            ``codebook: learned``.
        commitment: ``sum_all``: ``Σ_q mean ||u_q − sg(c_q)||^2``, every layer's term reaching
            the latent (default; DAC sums too) or ``mean_first``: the mean over the quantisers
            used, only layer 0's term reaching the latent (the later residuals are detached for
            it), as EnCodec / DM-Codec's reference computes it.
    """

    def __init__(self, dim: int, num_quantizers: int = 8, codebook_size: int = 1024, ema_decay: float = 0.99,
                 commitment_weight: float = 1.0, kmeans_init: bool = False, threshold_ema_dead_code: float = 2.0,
                 quantizer_dropout: float = 0.0, codebook: str = "ema", codebook_dim: int | None = None,
                 cosine: bool = False, commitment: str = "sum_all") -> None:
        super().__init__()
        if num_quantizers < 1:
            raise ConfigError(f"num_quantizers must be >= 1, got {num_quantizers}")
        check_codebook_args(codebook_size, ema_decay)
        check_codebook_kind(codebook, cosine, kmeans_init)
        if not 0.0 <= quantizer_dropout <= 1.0:
            raise ConfigError(f"quantizer_dropout must be in [0, 1], got {quantizer_dropout}")
        if codebook_dim is not None and codebook_dim < 1:
            raise ConfigError(f"codebook_dim must be >= 1 or null, got {codebook_dim}")
        if commitment not in COMMITMENTS:
            raise ConfigError(f"commitment: '{commitment}' is not valid (valid: {', '.join(COMMITMENTS)})")
        self.num_quantizers, self.codebook_size, self.quantizer_dropout = num_quantizers, codebook_size, quantizer_dropout
        self.commitment_weight, self.commitment, self.codebook_dim = commitment_weight, commitment, codebook_dim
        width = dim if codebook_dim is None else codebook_dim
        self.layers = nn.ModuleList(
            build_codebook(width, codebook_size, codebook, cosine, ema_decay, kmeans_init, threshold_ema_dead_code)
            for _ in range(num_quantizers))
        if codebook_dim is not None:
            self.project_in = nn.ModuleList(nn.Linear(dim, codebook_dim) for _ in range(num_quantizers))
            self.project_out = nn.ModuleList(nn.Linear(codebook_dim, dim) for _ in range(num_quantizers))

    def forward(self, latent: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """Quantise ``latent`` ``[B, D, F]``.

        Args:
            latent: encoder output ``[B, D, F]``.
            mask: bool ``[B, F]``, True on real frames (EMA statistics and the losses use those
                only); None = all.

        Returns:
            ``quantized`` ``[B, D, F]`` (value ``Σ_q`` of the layers' outputs), ``codes`` long
            ``[B, Q, F]``, ``layer_outputs`` ``[B, Q, D, F]`` (see the class docstring for their
            gradients), ``commit_loss`` (scalar: ``commitment_weight`` × the commitment loss of
            ``commitment`` over real frames and code dimensions; in training and in eval) and
            ``codebook_loss`` (scalar: the same reduction of ``mean ||c_q − sg(u_q)||^2``, which
            trains learned codebooks; 0 for EMA ones). Codes are ``-1`` (and code vectors zero)
            on masked frames and for dropped quantisers.
        """
        x = latent.transpose(1, 2)  # [B, F, D]
        n_used = self.num_quantizers
        if self.training and self.quantizer_dropout > 0 and torch.rand(()) < self.quantizer_dropout:
            n_used = int(torch.randint(1, self.num_quantizers + 1, ()))
        b, f, d = x.shape
        codes = torch.full((b, self.num_quantizers, f), -1, dtype=torch.long, device=x.device)
        vectors = torch.zeros(self.num_quantizers, b, f, d, dtype=x.dtype, device=x.device)
        commit, codebook_loss = x.new_zeros(()), x.new_zeros(())
        weights = None if mask is None else mask[..., None].to(x.dtype)
        factorised = self.codebook_dim is not None
        residual = x
        for q, book in enumerate(self.layers[:n_used]):
            u = self.project_in[q](residual) if factorised else residual
            code, idx = nearest_code(book, u, mask)
            codes[:, q] = idx
            committed = u
            if self.commitment == "mean_first" and q > 0:  # only layer 0's residual reaches the latent
                committed = self.project_in[q](residual.detach()) if factorised else residual.detach()
            commit = commit + masked_mse(committed, code.detach(), weights)
            if isinstance(book, LearnedCodebook):
                codebook_loss = codebook_loss + masked_mse(code, u.detach(), weights)
            if factorised:
                out = self.project_out[q](u + (code - u).detach())
                if weights is not None:
                    out = out * weights
                vectors[q] = out
                residual = residual - out
            else:
                vectors[q] = code.detach()  # c_q; the straight-through paths are built below from known values
                residual = residual - code.detach()
        if self.commitment == "mean_first":
            commit, codebook_loss = commit / n_used, codebook_loss / n_used
        if factorised:
            layer_out, quantized = vectors, vectors.sum(0)
        else:
            # Layer q's input residual is x - sum_{j<q} c_j: straight-through from there is the
            # identity into x, with the value c_q.
            before = torch.cat([vectors.new_zeros(1, b, f, d), vectors.cumsum(0)[:-1]])
            inputs = x[None] - before
            layer_out = inputs + (vectors - inputs).detach()
            total = vectors.sum(0)
            quantized = x + (total - x).detach()
        return {"quantized": quantized.transpose(1, 2), "codes": codes,
                "layer_outputs": layer_out.permute(1, 0, 3, 2), "commit_loss": self.commitment_weight * commit,
                "codebook_loss": codebook_loss}

    def lookup(self, codes: Tensor) -> Tensor:
        """Code vectors summed over quantisers: long ``[B, Q', F]`` (``Q' <= Q``, ``-1`` = unused) → ``[B, D, F]``."""
        if codes.dim() != 3 or codes.shape[1] > self.num_quantizers:
            raise ConfigError(f"codes: expected [B, Q<={self.num_quantizers}, F], got {list(codes.shape)}")
        total = None
        for q in range(codes.shape[1]):
            book = self.layers[q].codebook  # [K, d]
            idx = codes[:, q]
            vec = book[idx.clamp_min(0)]
            if self.codebook_dim is not None:
                vec = self.project_out[q](vec)
            vec = vec * (idx >= 0)[..., None]
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
    - ``commit_loss``: scalar commitment loss (summed over quantisers, or see ``commitment``);
    - ``codebook_loss``: scalar codebook loss of learned codebooks (0 for EMA ones).

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
        codebook: ``ema`` (default) or ``learned`` (gradient-trained through the
            ``codebook_loss`` feature, e.g. a ``Commitment`` term reading it).
        codebook_dim: width of factorised low-dimensional codes (None: ``dim``); see
            :class:`ResidualQuantizer` for how it changes the gradients.
        cosine: L2-normalised (cosine) code lookup; needs ``codebook: learned``.
        commitment: ``sum_all`` (default: summed over quantisers, every residual reaching the
            encoder) or ``mean_first`` (DM-Codec's reference: the mean, only layer 0's residual
            reaching the encoder).
        init_from: start from saved weights of the same architecture: an ``export`` directory
            (its ``model_state_dict.pt``) or a state-dict file, codebooks and their EMA statistics
            included (fine-tuning a trained codec, e.g. with a distillation term added).
    """

    def __init__(self, sample_rate: int = 16000, strides: Sequence[int] = (2, 4, 5, 8), channels: int = 32,
                 max_channels: int = 512, dim: int = 128, dilations: Sequence[int] = (1, 3, 9),
                 num_quantizers: int = 8, codebook_size: int = 1024, ema_decay: float = 0.99,
                 commitment_weight: float = 1.0, kmeans_init: bool = False,
                 threshold_ema_dead_code: float = 2.0, quantizer_dropout: float = 0.0, codebook: str = "ema",
                 codebook_dim: int | None = None, cosine: bool = False, commitment: str = "sum_all",
                 init_from: str | None = None) -> None:
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
                                           kmeans_init, threshold_ema_dead_code, quantizer_dropout, codebook=codebook,
                                           codebook_dim=codebook_dim, cosine=cosine, commitment=commitment)
        self.decoder = build_decoder(strides, channels, max_channels, dim, dilations)
        if init_from is not None:
            path = os.path.join(init_from, "model_state_dict.pt") if os.path.isdir(init_from) else init_from
            load_checked(self, read_state_dict(path, "ConvCodec.init_from"), "ConvCodec.init_from", path)

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
        quantiser), reconstruction, commit_loss and codebook_loss."""
        names = {"latent", "quantized", "codes", "layer_outputs", "reconstruction", "commit_loss", "codebook_loss"}
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
                    "commit_loss": rvq["commit_loss"], "codebook_loss": rvq["codebook_loss"]}
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
