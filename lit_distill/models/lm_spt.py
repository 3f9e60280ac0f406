"""LM-SPT's speech tokenizer: a semantic token stream and an acoustic residual stream.

Two SEANet-style encoders read the same waveform ``[B, 1, T]``:

- semantic: ``z_s [B, D, F]`` → linear ``D → d`` (a factorised, low-dimensional codebook space)
  → one vector quantiser → linear ``d → D``: ``s [B, D, F]``, the *semantic tokens*;
- acoustic: ``z_a [B, D, F]``; an RVQ of ``Q`` codebooks quantises ``z_a − s`` (what the
  semantic tokens leave unexplained), with quantiser dropout: ``a [B, D, F]``.

Codebooks are EMA ones (default) or, as in the authors' code, gradient-trained with an
L2-normalised lookup (``codebook: learned``, ``cosine: true``, plus a weight on the
``codebook_loss`` / ``semantic_codebook_loss`` features).

The decoder resynthesises speech from ``s + a``; an *auxiliary decoder* resynthesises it from
``s`` alone. LM-SPT trains the semantic path through that auxiliary output: a frozen ASR
encoder compares it with the input (:class:`lit_distill.losses.IndirectSemanticDistillation`).

Both quantisers pass gradients straight through in their code space. The acoustic RVQ's codes
are factorised as in the authors' DAC-style quantiser (``acoustic_codebook_dim``, default 8):
each layer projects its residual ``D → d``, quantises, projects back ``d → D``, and the residual
chain keeps its gradient. The decoder input ``s + RVQ(z_a − s)`` therefore has a gradient in
``s``, and the main reconstruction loss trains the semantic encoder too. With
``acoustic_codebook_dim: null`` (codes of width ``D``, identity straight-through) that gradient
is exactly zero: ``s + a`` has the gradient of ``z_a`` alone and ``s`` learns only from the
semantic losses (and the acoustic commitment).

Initialisation: PyTorch's default gives every convolution and projection a random bias. On
speech of RMS ~0.1 those biases dominate the latents: at 12.5 Hz with 8 channels, the semantic
quantiser's input is ~99 % one time-constant vector (``|mean_t u|^2 / mean_t |u_t|^2``), so the
cosine lookup sends every frame to 1-3 codes before the first step, and a learned codebook only
moves the entries it selects (``docs/experiments/lm_spt.md`` measures what follows).
``zero_bias_init: true`` starts those biases at 0, as DAC's ``init_weights`` leaves its
weight-normalised convolutions (it zeroes their biases; its truncated-normal weights are
overwritten by weight norm at the first forward): silence maps to the origin and the quantiser's
input varies with the speech. Training rebuilds the constant from the biases within ~10 steps
(~40 biases of ~1e-3 summed through the residual units); two default-off options act on the
lookup instead: ``semantic_center`` looks codes up from ``u`` minus its time mean over the
utterance, ``semantic_dead_code_steps`` restarts learned entries no frame selected for that many
batches. The measurements of each are in ``docs/experiments/lm_spt.md``. They found a third route:
with a ~constant input ``x_t ≈ x̄``, a convolution's weight gradient ``Σ_t δ_t x_tᵀ ≈ (Σ_t δ_t) x̄ᵀ`` is
rank one, and the semantic encoder's updates collapse u's varying part to one direction;
``semantic_encoder_center`` (default off) removes each semantic convolution's input time mean.

Codes are ``[B, 1 + Q, F]``: the semantic code first, then the acoustic ones; ``F =
ceil(T / hop)``, ``hop = prod(strides)``, frame rate ``sample_rate / hop`` (16 kHz with strides
``[4, 4, 5, 8, 2]``: hop 1280, 12.5 Hz).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lit_distill.contracts import ModelOutput
from lit_distill.errors import ConfigError
from lit_distill.models.codec import (
    FramedCodec,
    LearnedCodebook,
    ResidualQuantizer,
    build_codebook,
    build_decoder,
    build_encoder,
    check_codebook_args,
    check_codebook_kind,
    masked_mse,
    nearest_code,
)
from lit_distill.sources import OutputSpec


class TimeCenteredConv1d(nn.Conv1d):
    """A ``Conv1d`` that reads its input minus the input's per-channel time mean.

    ``x [B, C, L]`` → ``conv(x − mean_L x)``: a time-constant part of ``x`` cannot reach the output,
    and the weight gradient is ``Σ_t δ_t (x_t − x̄)ᵀ``, with no rank-one term along the mean input
    ``x̄``. The mean is over all ``L`` steps (padding included). A subclass rather than a module
    in front, so the parameter names and ``isinstance(m, nn.Conv1d)`` stay those of the plain one.
    """

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x - x.mean(-1, keepdim=True))

    @classmethod
    def wrap(cls, conv: nn.Conv1d) -> TimeCenteredConv1d:
        """The same convolution (its own parameters, shared, not copied) reading centred inputs."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                  dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                  padding_mode=conv.padding_mode, device="meta")  # meta: no init, no draw from the RNG
        new.weight, new.bias = conv.weight, conv.bias
        return new


def center_conv_inputs(module: nn.Module) -> None:
    """Replace every ``nn.Conv1d`` inside ``module`` (in place, at any depth) by its
    :class:`TimeCenteredConv1d`; transposed convolutions are not ``Conv1d`` and stay."""
    for name, child in module.named_children():
        if type(child) is nn.Conv1d:
            setattr(module, name, TimeCenteredConv1d.wrap(child))
        else:
            center_conv_inputs(child)


class SemanticQuantizer(nn.Module):
    """One vector quantiser in a factorised codebook space, with straight-through gradients.

    ``x [B, D, F]`` → ``u = W_in x`` (``[B, d, F]``) → nearest code ``c`` (EMA or learned codebook)
    → ``W_out (u + sg(c − u))``: the value of ``W_out c``, the gradient of ``W_out W_in x``.

    Args:
        dim: width ``D`` of its input and output.
        codebook_size: entries ``K``.
        codebook_dim: width ``d`` of the code vectors (LM-SPT: 8).
        ema_decay: EMA decay of the codebook statistics.
        commitment_weight: weight of the commitment loss ``mean ||u − sg(c)||^2``.
        kmeans_init: initialise the codebook by k-means on the first batch.
        threshold_ema_dead_code: replace codes whose EMA count falls below this (0 = off; EMA only).
        codebook: ``ema`` (default) or ``learned`` (trained by ``codebook_loss``).
        cosine: L2-normalised (cosine) code lookup; needs ``codebook: learned``.
        center: quantise ``u − mean_t u`` (the time mean over each utterance's real frames) instead of
            ``u`` (off by default; the authors quantise ``u``). A time-constant part of ``u`` then
            cannot decide the code; the decoder reads ``W_out c`` either way.
        dead_code_steps: restart learned-codebook entries unused for this many training batches
            (0 = off, the authors'; see :class:`~lit_distill.models.codec.LearnedCodebook`).
    """

    def __init__(self, dim: int, codebook_size: int = 1024, codebook_dim: int = 8, ema_decay: float = 0.99,
                 commitment_weight: float = 1.0, kmeans_init: bool = False,
                 threshold_ema_dead_code: float = 2.0, codebook: str = "ema", cosine: bool = False,
                 center: bool = False, dead_code_steps: int = 0) -> None:
        super().__init__()
        check_codebook_args(codebook_size, ema_decay, prefix="semantic_")
        check_codebook_kind(codebook, cosine, kmeans_init)
        if codebook_dim < 1:
            raise ConfigError(f"semantic_codebook_dim must be >= 1, got {codebook_dim}")
        self.codebook_size, self.commitment_weight, self.center = codebook_size, commitment_weight, center
        self.project_in = nn.Linear(dim, codebook_dim)
        self.vq = build_codebook(codebook_dim, codebook_size, codebook, cosine, ema_decay, kmeans_init,
                                 threshold_ema_dead_code, dead_code_steps)
        self.project_out = nn.Linear(codebook_dim, dim)

    def forward(self, latent: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """Quantise ``latent`` ``[B, D, F]`` (``mask`` bool ``[B, F]``: real frames; None = all).

        With ``center``, ``u`` below is ``W_in x − mean_t W_in x`` (per utterance, over real frames).

        Returns:
            ``quantized`` ``[B, D, F]``, ``codes`` long ``[B, F]`` (``-1`` on masked frames) and
            ``commit_loss`` (scalar, ``commitment_weight * mean ||u − sg(c)||^2`` over real
            frames and the ``d`` code dimensions; in training and in eval) and ``codebook_loss``
            (scalar, ``mean ||c − sg(u)||^2`` for a learned codebook, 0 for an EMA one).
        """
        u = self.project_in(latent.transpose(1, 2))  # [B, F, d]
        weights = None if mask is None else mask[..., None].to(u.dtype)
        if self.center:
            w = torch.ones_like(u[..., :1]) if weights is None else weights
            u = u - (u * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1)
        code, codes = nearest_code(self.vq, u, mask)
        commit = masked_mse(u, code.detach(), weights)
        codebook_loss = masked_mse(code, u.detach(), weights) if isinstance(self.vq, LearnedCodebook) \
            else u.new_zeros(())
        quantized = self.project_out(u + (code.detach() - u).detach())
        return {"quantized": quantized.transpose(1, 2), "codes": codes,
                "commit_loss": self.commitment_weight * commit, "codebook_loss": codebook_loss}

    def lookup(self, codes: Tensor) -> Tensor:
        """Codes long ``[B, F]`` → ``W_out c`` ``[B, D, F]`` (``-1`` gives ``W_out 0``)."""
        idx = codes.long()
        vectors = self.vq.codebook[idx.clamp_min(0)] * (idx >= 0)[..., None]
        return self.project_out(vectors).transpose(1, 2)


class LMSPTCodec(FramedCodec):
    """LM-SPT codec: semantic and acoustic encoders, semantic VQ + acoustic RVQ, two decoders.

    Called as ``codec(waveform=[B, 1, T])`` (optionally ``waveform_mask`` bool ``[B, T]``), it
    returns a :class:`ModelOutput` whose ``features`` are:

    - ``reconstruction`` ``[B, 1, T]``: the decoder's output from ``s + a``;
    - ``semantic_reconstruction`` ``[B, 1, T]``: the auxiliary decoder's output from ``s``;
    - ``codes`` long ``[B, 1 + Q, F]`` (semantic first; ``-1`` for dropped acoustic quantisers
      and masked frames) and ``semantic_codes`` long ``[B, F]``;
    - ``layer_outputs`` ``[B, 1 + Q, D, F]`` and ``layer_outputs.<i>`` ``[B, D, F]``: layer 0
      is the semantic quantised vector ``s``, layer ``q + 1`` acoustic RVQ layer ``q``;
    - ``semantic_latent`` / ``latent`` ``[B, D, F]``: the semantic / acoustic encoder outputs;
    - ``quantized`` ``[B, D, F]``: ``s + a``, the decoder's input;
    - ``commit_loss`` (acoustic RVQ) and ``semantic_commit_loss``: scalars;
    - ``codebook_loss`` (acoustic RVQ) and ``semantic_codebook_loss``: scalars, the losses that
      train learned codebooks (0 for EMA ones).

    Args:
        sample_rate: rate of the waveforms (Hz); with ``strides`` it sets ``frame_rate``.
        strides: downsampling factors of both encoders (the decoders upsample in reverse);
            ``hop = prod(strides)``. At 16 kHz: ``[4, 4, 5, 8]`` → 25 Hz, ``[4, 4, 5, 8, 2]`` →
            12.5 Hz, ``[4, 4, 5, 8, 4]`` → 6.25 Hz.
        channels: width after the stem of the encoders and decoder (doubled per strided block,
            capped at ``max_channels``).
        max_channels: cap on the widths.
        aux_channels: the auxiliary decoder's ``channels`` (None: ``channels``).
        dim: width ``D`` of the latents.
        dilations: dilations of the residual units in every block.
        semantic_codebook_size: entries of the semantic codebook (paper: 16384).
        semantic_codebook_dim: width of the semantic code vectors (paper: 8).
        num_quantizers: acoustic RVQ depth ``Q`` (paper: 7).
        codebook_size: entries per acoustic codebook (paper: 4096).
        quantizer_dropout: probability of training a batch with only the first ``n ~ U{1..Q}``
            acoustic quantisers (paper: 0.5).
        ema_decay: EMA decay of all codebooks.
        commitment_weight: weight inside each commitment loss (the loss terms weigh them again).
        kmeans_init: k-means initialisation of the codebooks on the first batch (EMA only).
        threshold_ema_dead_code: dead-code replacement threshold (EMA count; 0 = off).
        acoustic_codebook_dim: width of the acoustic RVQ's factorised codes (paper: 8; the
            default). It is what lets the reconstruction loss reach the semantic branch (see the
            module docstring); null quantises in the full width ``D`` and cuts that gradient.
        codebook: ``ema`` (default) or ``learned`` (the authors': gradient-trained; weigh the
            ``codebook_loss`` and ``semantic_codebook_loss`` features, paper: 1 each), for both
            quantisers.
        cosine: L2-normalised (cosine) lookup in both quantisers (the authors'); needs
            ``codebook: learned``.
        commitment: reduction of the acoustic commitment (see :class:`ResidualQuantizer`;
            ``sum_all``, the default, is the authors' DAC sum).
        zero_bias_init: start the biases of every ``Conv1d`` (encoders, decoders) and of the
            quantisers' projections (DAC's 1x1 convolutions) at 0, as DAC's ``init_weights``
            does; weights keep PyTorch's default initialisation (see the module docstring).
        semantic_center: the semantic quantiser looks up ``u − mean_t u`` (see
            :class:`SemanticQuantizer`; off by default, a deviation from the authors).
        semantic_dead_code_steps: restart semantic-codebook entries unused for this many training
            batches (``codebook: learned`` only; 0 = off, the authors').
        semantic_encoder_center: every ``Conv1d`` of the semantic encoder (stem, residual units,
            strided, last) reads its input minus that input's per-channel time mean over the
            utterance's frames at its own resolution (:class:`TimeCenteredConv1d`); the mean includes
            the padded tail of shorter utterances in a batch and the zeros up to a multiple of the
            hop. Weights and biases are initialised as without it (same RNG draws). Off by default
            (a deviation from the authors); the acoustic encoder and decoders are unchanged.
    """

    def __init__(self, sample_rate: int = 16000, strides: Sequence[int] = (4, 4, 5, 8, 2), channels: int = 32,
                 max_channels: int = 512, aux_channels: int | None = None, dim: int = 128,
                 dilations: Sequence[int] = (1, 3, 9), semantic_codebook_size: int = 1024,
                 semantic_codebook_dim: int = 8, num_quantizers: int = 7, codebook_size: int = 1024,
                 quantizer_dropout: float = 0.5, ema_decay: float = 0.99, commitment_weight: float = 1.0,
                 kmeans_init: bool = False, threshold_ema_dead_code: float = 2.0,
                 acoustic_codebook_dim: int | None = 8, codebook: str = "ema", cosine: bool = False,
                 commitment: str = "sum_all", zero_bias_init: bool = False, semantic_center: bool = False,
                 semantic_dead_code_steps: int = 0, semantic_encoder_center: bool = False) -> None:
        super().__init__()
        strides = [int(s) for s in strides]
        if not strides or any(s < 1 for s in strides):
            raise ConfigError(f"LMSPTCodec.strides: {strides} must be a non-empty list of integers >= 1, "
                              "e.g. [4, 4, 5, 8, 2]")
        if sample_rate < 1:
            raise ConfigError(f"LMSPTCodec.sample_rate must be positive, got {sample_rate}")
        aux_channels = channels if aux_channels is None else aux_channels
        for name, value in (("channels", channels), ("max_channels", max_channels), ("dim", dim),
                            ("aux_channels", aux_channels)):
            if value < 1:
                raise ConfigError(f"LMSPTCodec.{name} must be >= 1, got {value}")
        self.sample_rate, self.strides, self.dim = sample_rate, strides, dim
        self.semantic_encoder = build_encoder(strides, channels, max_channels, dim, dilations)
        self.acoustic_encoder = build_encoder(strides, channels, max_channels, dim, dilations)
        self.semantic_quantizer = SemanticQuantizer(dim, semantic_codebook_size, semantic_codebook_dim, ema_decay,
                                                    commitment_weight, kmeans_init, threshold_ema_dead_code,
                                                    codebook=codebook, cosine=cosine, center=semantic_center,
                                                    dead_code_steps=semantic_dead_code_steps)
        self.acoustic_quantizer = ResidualQuantizer(dim, num_quantizers, codebook_size, ema_decay, commitment_weight,
                                                    kmeans_init, threshold_ema_dead_code, quantizer_dropout,
                                                    codebook=codebook, codebook_dim=acoustic_codebook_dim,
                                                    cosine=cosine, commitment=commitment)
        self.decoder = build_decoder(strides, channels, max_channels, dim, dilations)
        self.aux_decoder = build_decoder(strides, aux_channels, max_channels, dim, dilations)
        if zero_bias_init:
            self._zero_biases()
        if semantic_encoder_center:
            center_conv_inputs(self.semantic_encoder)

    def _zero_biases(self) -> None:
        """Biases of every ``Conv1d`` (not the transposed ones, as DAC) and quantiser projection to 0."""
        projections = [self.semantic_quantizer.project_in, self.semantic_quantizer.project_out]
        if self.acoustic_quantizer.codebook_dim is not None:
            projections += [*self.acoustic_quantizer.project_in, *self.acoustic_quantizer.project_out]
        with torch.no_grad():
            for module in [*(m for m in self.modules() if isinstance(m, nn.Conv1d)), *projections]:
                if module.bias is not None:
                    module.bias.zero_()

    @property
    def num_quantizers(self) -> int:
        """Codebooks per frame: 1 semantic + ``Q`` acoustic."""
        return 1 + self.acoustic_quantizer.num_quantizers

    @property
    def codebook_sizes(self) -> list[int]:
        """Entries of each codebook: the semantic one first, then the ``Q`` acoustic ones."""
        return [self.semantic_quantizer.codebook_size] + \
            [self.acoustic_quantizer.codebook_size] * self.acoustic_quantizer.num_quantizers

    @property
    def codebook_size(self) -> int:
        """The largest codebook (every code fits below it); see :attr:`codebook_sizes`."""
        return max(self.codebook_sizes)

    def _quantize(self, waveform: Tensor, mask: Tensor | None) -> dict[str, Tensor]:
        x = self._pad(waveform)
        semantic_latent, latent = self.semantic_encoder(x), self.acoustic_encoder(x)
        sem = self.semantic_quantizer(semantic_latent, mask)
        rvq = self.acoustic_quantizer(latent - sem["quantized"], mask)
        return {"semantic_latent": semantic_latent, "latent": latent, "semantic": sem, "acoustic": rvq}

    def declared_outputs(self) -> OutputSpec:
        """Features only: both reconstructions, codes (semantic first), latents, quantized, the
        commitment and codebook losses, layer_outputs and ``layer_outputs.<i>`` (0 = semantic)."""
        names = {"reconstruction", "semantic_reconstruction", "codes", "semantic_codes", "layer_outputs",
                 "semantic_latent", "latent", "quantized", "commit_loss", "semantic_commit_loss", "codebook_loss",
                 "semantic_codebook_loss"}
        names |= {f"layer_outputs.{i}" for i in range(self.num_quantizers)}
        return OutputSpec(logits=False, hidden_states=0, features=frozenset(names), closed=True)

    def run(self, waveform: Tensor, waveform_mask: Tensor | None = None, **_: Any) -> ModelOutput:
        length = waveform.shape[-1]
        mask = self.frame_mask(waveform_mask) if waveform_mask is not None else None
        parts = self._quantize(waveform, mask)
        sem, rvq = parts["semantic"], parts["acoustic"]
        s = sem["quantized"]
        quantized = s + rvq["quantized"]
        layer_outputs = torch.cat([s[:, None], rvq["layer_outputs"]], 1)
        features = {
            "reconstruction": self.decoder(quantized)[..., :length],
            "semantic_reconstruction": self.aux_decoder(s)[..., :length],
            "codes": torch.cat([sem["codes"][:, None], rvq["codes"]], 1), "semantic_codes": sem["codes"],
            "layer_outputs": layer_outputs, "semantic_latent": parts["semantic_latent"], "latent": parts["latent"],
            "quantized": quantized, "commit_loss": rvq["commit_loss"], "semantic_commit_loss": sem["commit_loss"],
            "codebook_loss": rvq["codebook_loss"], "semantic_codebook_loss": sem["codebook_loss"]}
        for i in range(layer_outputs.shape[1]):
            features[f"layer_outputs.{i}"] = layer_outputs[:, i]
        return ModelOutput(features=features)

    @torch.no_grad()
    def encode(self, waveform: Tensor) -> Tensor:
        """Waveform ``[B, 1, T]`` → codes long ``[B, 1 + Q, ceil(T / hop_length)]`` (eval mode, all quantisers)."""
        with self.evaluating():
            parts = self._quantize(waveform, None)
            return torch.cat([parts["semantic"]["codes"][:, None], parts["acoustic"]["codes"]], 1)

    def _lookup(self, codes: Tensor) -> tuple[Tensor, Tensor]:
        if codes.dim() != 3 or not 1 <= codes.shape[1] <= self.num_quantizers:
            raise ConfigError(f"codes: expected [B, 1..{self.num_quantizers}, F] (semantic first), got "
                              f"{list(codes.shape)}")
        s = self.semantic_quantizer.lookup(codes[:, 0])
        a = self.acoustic_quantizer.lookup(codes[:, 1:]) if codes.shape[1] > 1 else torch.zeros_like(s)
        return s, a

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Codes long ``[B, Q', F]`` (semantic + the first ``Q' − 1`` acoustic) → waveform ``[B, 1, F * hop_length]``."""
        with self.evaluating():
            s, a = self._lookup(codes)
            return self.decoder(s + a)

    @torch.no_grad()
    def decode_semantic(self, codes: Tensor) -> Tensor:
        """The auxiliary decoder's waveform ``[B, 1, F * hop_length]`` from the semantic codes
        (``[B, F]``, or ``[B, Q', F]`` whose first row is semantic)."""
        with self.evaluating():
            s, _ = self._lookup(codes[:, None] if codes.dim() == 2 else codes[:, :1])
            return self.aux_decoder(s)


__all__ = ["LMSPTCodec", "SemanticQuantizer", "TimeCenteredConv1d", "center_conv_inputs"]
