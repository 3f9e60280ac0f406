"""Semantic distillation into speech codecs: DM-Codec's feature losses and LM-SPT's indirect loss.

DM-Codec distils a teacher sequence (a speech model's hidden layer, or a language model's
token states) into the output of one RVQ layer of the codec, through a learned linear projector
from the codec's width to the teacher's. The teacher sequence is first brought to the codec's
frame count: by position (truncate or zero-pad, as in the paper) or by linear interpolation in
time (a better alignment when the two sequences span the same audio at different rates).

LM-SPT distils indirectly: a frozen ASR encoder sees the original audio and the audio
resynthesised from the semantic tokens, and the loss is the MSE between its two outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_distill.contracts import LossTerm
from lit_distill.errors import ConfigError
from lit_distill.losses.feature import make_projector, to_teacher_width

MODES = ("d_axis", "t_axis")
ALIGNMENTS = ("position", "interpolate")


def positional_align(teacher: Tensor, num_frames: int, teacher_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Align a teacher sequence to ``num_frames`` by position: frame ``f`` gets teacher step ``f``.

    Longer sequences are truncated, shorter ones zero-padded at the end (DM-Codec's alignment).

    Args:
        teacher: ``[B, Tt, D]``.
        num_frames: ``F``, the codec's frame count.
        teacher_mask: bool ``[B, Tt]``, True on real teacher steps (None: all real).

    Returns:
        ``(aligned [B, F, D], mask bool [B, F])``; ``mask`` is False on padded frames and on
        frames taken from masked teacher steps.
    """
    if num_frames < 0:
        raise ConfigError(f"num_frames must be >= 0, got {num_frames}")
    b, tt, d = teacher.shape
    if teacher_mask is None:
        teacher_mask = torch.ones(b, tt, dtype=torch.bool, device=teacher.device)
    n = min(tt, num_frames)
    aligned = teacher.new_zeros(b, num_frames, d)
    aligned[:, :n] = teacher[:, :n]
    mask = torch.zeros(b, num_frames, dtype=torch.bool, device=teacher.device)
    mask[:, :n] = teacher_mask[:, :n].bool()
    return aligned, mask


def interpolate_align(teacher: Tensor, num_frames: int, teacher_mask: Tensor | None = None,
                      frame_lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Resample a teacher sequence to ``num_frames`` by linear interpolation in time.

    Both sequences are taken to span the same audio: with ``L`` teacher steps spread over ``N``
    frames, frame ``f`` sits at teacher coordinate ``u_f = clamp((f + 0.5) * L / N - 0.5, 0, L - 1)``
    (half-pixel centres, as ``F.interpolate(mode="linear", align_corners=False)``) and is
    ``(1 - w) * teacher[floor(u_f)] + w * teacher[floor(u_f) + 1]``, ``w = u_f - floor(u_f)``.

    Without ``frame_lengths`` the whole padded teacher (``L = Tt``) spans all ``N = num_frames``
    frames: right for a teacher that saw the same padded audio as the codec (a speech model).
    With ``frame_lengths`` every sample is stretched on its own: its real steps (``L_b`` from
    ``teacher_mask``) over its real frames (``N_b = frame_lengths[b]``): right for a sequence of
    its own length that covers the sample's real audio (a transcript's tokens).

    Args:
        teacher: ``[B, Tt, D]``.
        num_frames: ``F``, the codec's frame count.
        teacher_mask: bool ``[B, Tt]`` of real steps, a prefix per sample (None: all real).
        frame_lengths: long ``[B]``, real codec frames per sample (None: see above).

    Returns:
        ``(aligned [B, F, D], mask bool [B, F])``. Without ``frame_lengths`` a frame is valid when
        ``u_f`` lies within the real prefix (``u_f <= L_b - 1``), so it mixes no padded step; with
        them, frames ``f < N_b`` of samples with at least one real step are valid.
    """
    if num_frames < 0:
        raise ConfigError(f"num_frames must be >= 0, got {num_frames}")
    b, tt, _ = teacher.shape
    if num_frames == 0:
        return teacher.new_zeros(b, 0, teacher.shape[-1]), torch.zeros(b, 0, dtype=torch.bool, device=teacher.device)
    lengths = torch.full((b,), tt, device=teacher.device) if teacher_mask is None else teacher_mask.bool().sum(-1)
    f = torch.arange(num_frames, device=teacher.device, dtype=torch.float64)
    if frame_lengths is not None:
        return _per_sample_interpolation(teacher, f, lengths, frame_lengths.clamp(0, num_frames))
    aligned = F.interpolate(teacher.transpose(1, 2), size=num_frames, mode="linear",
                            align_corners=False).transpose(1, 2)
    if teacher_mask is None:
        return aligned, torch.ones(b, num_frames, dtype=torch.bool, device=teacher.device)
    coord = ((f + 0.5) * tt / num_frames - 0.5).clamp(0, tt - 1)
    mask = coord[None] <= (lengths[:, None] - 1).to(torch.float64)
    return aligned, mask


def _per_sample_interpolation(teacher: Tensor, f: Tensor, lengths: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
    """``interpolate_align`` with ``L_b`` real steps over ``N_b`` real frames per sample."""
    steps = lengths.to(torch.float64)[:, None]
    span = frames.to(torch.float64).clamp_min(1)[:, None]
    coord = ((f[None] + 0.5) * steps / span - 0.5).clamp_min(0)
    coord = torch.minimum(coord, (steps - 1).clamp_min(0))  # [B, F]
    lo = coord.floor().long()
    hi = torch.minimum(lo + 1, (lengths[:, None] - 1).clamp_min(0))
    w = (coord - lo).to(teacher.dtype)[..., None]
    d = teacher.shape[-1]
    aligned = (1 - w) * teacher.gather(1, lo[..., None].expand(-1, -1, d)) \
        + w * teacher.gather(1, hi[..., None].expand(-1, -1, d))
    mask = (f[None] < frames[:, None]) & (lengths[:, None] > 0)
    return aligned, mask


def _check_pair(student: Tensor, teacher: Tensor, name: str) -> None:
    if student.dim() != 3 or teacher.dim() != 3 or student.shape[0] != teacher.shape[0] \
            or student.shape[-1] != teacher.shape[-1]:
        raise ConfigError(f"{name}: expected student [B, T, D] and teacher [B, T', D], got "
                          f"{list(student.shape)} and {list(teacher.shape)}")


def cosine_time_loss(student: Tensor, teacher: Tensor, mask: Tensor | None = None, eps: float = 1e-8,
                     centered: bool = False) -> Tensor:
    """DM-Codec's "d_axis" loss: cosine along time for every feature dimension.

    With ``n = min(T, T')``, ``m`` the frame mask, ``s = student[:, :n] * m`` and
    ``t = teacher[:, :n] * m``: ``cos[b, d] = Σ_t s[b,t,d] t[b,t,d] / max(‖s[b,:,d]‖ ‖t[b,:,d]‖, eps)``
    and ``L = −mean_{b,d} log σ(cos[b, d])``. The mean runs jointly over the samples that have at
    least one valid frame and the ``D`` dimensions, so every sample weighs the same whatever its
    length. A positive rescaling of any teacher (or student) dimension leaves ``L`` unchanged.

    With ``centered``, ``s`` and ``t`` first lose their per-utterance mean over the valid frames
    (``s[b,:,d] − mean_t s[b,t,d]``), so ``cos[b, d]`` is the Pearson correlation in time. The
    uncentred cosine is maximised by a large time-constant offset that matches the sign of the
    teacher's mean, which says nothing about the content of the frames (issue 15: at weight
    120 it pushed such an offset into the codec's latent and collapsed codebook 0).

    Which reading of the authors' loss this is: their ``d_axis_distill_loss`` takes the cosine
    along axis 1 of ``[B, T, D]`` features, i.e. along time per utterance and dimension, as the
    paper writes it, and that is what we implement. Their released feature extraction and
    collate, read literally, hand it features whose axis 1 is the batch on a single frame, so
    the released code would compare one frame across the utterances of a batch. We do not copy
    that: it depends on which utterances share a batch, and gives each utterance one frame.

    Args:
        student: ``[B, T, D]`` (already in the teacher's width).
        teacher: ``[B, T', D]`` (no gradient flows into it).
        mask: bool ``[B, >= n]``, True on frames that count (None: all of the first ``n``).
        eps: floor of the norm product.
        centered: subtract each utterance's mean over its valid frames first (Pearson correlation).

    Returns:
        0-dim float32 tensor (0 when no sample has a valid frame).
    """
    _check_pair(student, teacher, "cosine_time_loss")
    n = min(student.shape[1], teacher.shape[1])
    s, t = student[:, :n].float(), teacher[:, :n].detach().float()
    m = torch.ones_like(s[..., :1]) if mask is None else mask[:, :n].to(s.dtype)[..., None]  # [B, n, 1]
    if mask is not None:
        s, t = s * m, t * m
        counts = mask[:, :n].sum(-1) > 0  # [B]
    else:
        counts = torch.full((s.shape[0],), n > 0, dtype=torch.bool, device=s.device)
    if centered:
        frames = m.sum(1, keepdim=True).clamp_min(1)  # [B, 1, 1]
        s = (s - s.sum(1, keepdim=True) / frames) * m
        t = (t - t.sum(1, keepdim=True) / frames) * m
    cos = (s * t).sum(1) / (s.norm(dim=1) * t.norm(dim=1)).clamp_min(eps)  # [B, D]
    per_sample = -F.logsigmoid(cos).mean(-1)  # [B]
    weights = counts.to(per_sample.dtype)
    return (per_sample * weights).sum() / weights.sum().clamp_min(1)


def cosine_frame_loss(student: Tensor, teacher: Tensor, mask: Tensor | None = None, lambda_cos: float = 1.0,
                      eps: float = 1e-8) -> Tensor:
    """DM-Codec's "t_axis" loss: per-frame L1 plus a cosine term over the feature dimensions.

    With ``n = min(T, T')``: for every frame ``ℓ[b, t] = mean_d |s − t| + λ · (−log σ(cos_d(s, t)))``
    where ``cos_d(s, t) = s·t / max(‖s‖ ‖t‖, eps)`` over ``D``; ``L`` is the mean of ``ℓ`` over the
    valid frames of the whole batch (a token mean: longer samples weigh more).

    Args:
        student: ``[B, T, D]`` (already in the teacher's width).
        teacher: ``[B, T', D]`` (no gradient flows into it).
        mask: bool ``[B, >= n]``, True on frames that count (None: all of the first ``n``).
        lambda_cos: weight ``λ`` of the cosine term.
        eps: floor of the norm product.

    Returns:
        0-dim float32 tensor (0 when no frame is valid).
    """
    _check_pair(student, teacher, "cosine_frame_loss")
    n = min(student.shape[1], teacher.shape[1])
    s, t = student[:, :n].float(), teacher[:, :n].detach().float()
    l1 = (s - t).abs().mean(-1)
    cos = (s * t).sum(-1) / (s.norm(dim=-1) * t.norm(dim=-1)).clamp_min(eps)
    per_frame = l1 - lambda_cos * F.logsigmoid(cos)  # [B, n]
    if mask is None:
        return per_frame.mean() if per_frame.numel() else per_frame.sum()
    m = mask[:, :n].to(per_frame.dtype)
    return (per_frame * m).sum() / m.sum().clamp_min(1)


def frames_from_lengths(lengths: Tensor, num_frames: int, samples_per_frame: float) -> Tensor:
    """Bool ``[B, num_frames]`` mask of the frames covering real input: frame ``f`` counts when
    ``f * samples_per_frame < length`` (``lengths`` ``[B]`` in input steps, e.g. mel frames)."""
    start = torch.arange(num_frames, device=lengths.device, dtype=torch.float64) * samples_per_frame
    return start[None] < lengths[:, None].to(torch.float64)


def indirect_semantic_loss(encoder_fn: Callable[[Tensor], Tensor], target_mel: Tensor, recon_mel: Tensor,
                           frame_mask: Tensor | None = None) -> Tensor:
    """LM-SPT's indirect semantic distillation: ``MSE(E(mel(x)), E(mel(x̂)))`` over real frames.

    ``E`` is a frozen ASR encoder (Whisper's in the paper; freeze its parameters yourself). The
    target side runs without gradient; gradients flow through ``E`` into ``recon_mel`` and from
    there into the decoder that resynthesised ``x̂`` from the semantic tokens.

    Whisper pitfall: its encoder always sees 30 s (mel padded to 3000 frames, 1500 encoder
    frames). A 2 s segment fills only the first 100 encoder frames; the other 1400 encode
    padding on both sides and are nearly equal, so an unmasked mean shrinks the loss ~15× and
    makes its scale depend on the segment length. ``frame_mask`` keeps the real frames only,
    e.g. ``frames_from_lengths(mel_lengths, 1500, 2)`` (Whisper's encoder halves the mel rate).
    Trimming the encoder output to the real frames before calling is equivalent.

    Args:
        encoder_fn: frozen encoder, ``[B, M, T_mel] → [B, T_enc, D]``.
        target_mel: ``[B, M, T_mel]`` mel of the original audio (detached here).
        recon_mel: ``[B, M, T_mel]`` mel of the resynthesised audio.
        frame_mask: bool ``[B, T_enc]``, True on encoder frames of real audio (None: all).

    Returns:
        0-dim float32 tensor: Σ_valid mean_D (e_x̂ − e_x)² / #valid (0 when nothing is valid).
    """
    if target_mel.shape != recon_mel.shape:
        raise ConfigError(f"indirect_semantic_loss: target_mel {list(target_mel.shape)} and recon_mel "
                          f"{list(recon_mel.shape)} must have one shape (pad both to the encoder's input length)")
    with torch.no_grad():
        target = encoder_fn(target_mel.detach())
    recon = encoder_fn(recon_mel)
    per_frame = (recon.float() - target.float()).pow(2).mean(-1)  # [B, T_enc]
    if frame_mask is None:
        return per_frame.mean()
    if frame_mask.shape != per_frame.shape:
        raise ConfigError(f"indirect_semantic_loss: frame_mask {list(frame_mask.shape)} must match the encoder "
                          f"frames {list(per_frame.shape)}")
    m = frame_mask.to(per_frame.dtype)
    return (per_frame * m).sum() / m.sum().clamp_min(1)


class CodecFeatureDistillation(LossTerm):
    """DM-Codec's semantic distillation: one RVQ layer's output, projected, matched to a teacher sequence.

    The student feature ``[B, Ds, F]`` (default ``student.features.layer_outputs.0``, RVQ layer 0)
    is transposed to ``[B, F, Ds]`` and projected to ``[B, F, Dt]`` (linear, optionally with a bias); the teacher feature
    ``[B, Tt, Dt]`` (default ``teacher.hidden_states.-1``; or e.g. ``teacher.features.<name>``) is
    aligned to ``F`` frames, then :func:`cosine_time_loss` (``d_axis``) or
    :func:`cosine_frame_loss` (``t_axis``) compares them. Frames without a real teacher step (zero
    padding of the positional alignment, masked teacher steps) and, with ``hop_length``, frames
    of padding samples are left out of the loss.

    Args:
        student_dim: codec width ``Ds``; with ``teacher_dim``, a learned linear projector
            ``Ds → Dt`` (student side). Without both, the widths must agree.
        teacher_dim: teacher width ``Dt``.
        mode: ``d_axis`` (cosine along time per dimension, DM-Codec's default) or ``t_axis``
            (per-frame L1 + ``lambda_cos`` · cosine over dimensions).
        alignment: ``position`` (truncate / zero-pad, as in DM-Codec) or ``interpolate``
            (linear interpolation of the teacher to the codec's frame count; with a
            ``teacher_mask`` and a ``waveform_mask`` every sample's real teacher steps are
            stretched over its own real frames, see :func:`interpolate_align`).
        lambda_cos: weight of the cosine term in ``t_axis`` mode.
        centered: ``d_axis`` on time-centred features (each utterance's mean over its frames
            subtracted first; see :func:`cosine_time_loss`). Off: DM-Codec's uncentred cosine.
        projector_bias: give the projector a bias, as DM-Codec's ``nn.Linear`` has (off by
            default so that checkpoints of the bias-free projector still load; the DM-Codec
            configs turn it on).
        hop_length: codec samples per frame; when given and the batch has ``waveform_mask``
            ``[B, T]``, frames of padding samples are left out.
        weight: multiplier of this term in the total loss (DM-Codec: 120). To warm it up, ramp it
            with ``lit_distill.callbacks.ParameterSchedule`` (``term: <this term's name>,
            attribute: weight, start: 0, end: 120, shape: linear, steps: N``: 120 from step N on).
        sources: where the features come from, e.g.
            ``{teacher_features: teacher.hidden_states.9}``; ``teacher_mask`` (bool ``[B, Tt]``,
            True on real teacher steps, e.g. ``batch.teacher_mask``) has no default source.
    """

    default_sources: ClassVar[dict[str, str]] = {
        "student_features": "student.features.layer_outputs.0", "teacher_features": "teacher.hidden_states.-1",
        "waveform_mask": "batch.waveform_mask"}

    def __init__(self, student_dim: int | None = None, teacher_dim: int | None = None, mode: str = "d_axis",
                 alignment: str = "position", lambda_cos: float = 1.0, hop_length: int | None = None,
                 weight: float = 1.0, sources: dict[str, str] | None = None, centered: bool = False,
                 projector_bias: bool = False) -> None:
        super().__init__(weight, sources)
        name = type(self).__name__
        if mode not in MODES:
            raise ConfigError(f"{name}.mode: '{mode}' is not valid (valid: {', '.join(MODES)})")
        if alignment not in ALIGNMENTS:
            raise ConfigError(f"{name}.alignment: '{alignment}' is not valid (valid: {', '.join(ALIGNMENTS)})")
        if hop_length is not None and hop_length < 1:
            raise ConfigError(f"{name}.hop_length must be >= 1, got {hop_length}")
        if centered and mode != "d_axis":
            raise ConfigError(f"{name}.centered: only applies to mode: d_axis (got mode: {mode})")
        self.projector = make_projector(name, student_dim, teacher_dim)
        if projector_bias:
            if self.projector is None:
                raise ConfigError(f"{name}.projector_bias: needs student_dim and teacher_dim (a projector)")
            self.projector = nn.Linear(student_dim, teacher_dim, bias=True)
        self.mode, self.alignment, self.lambda_cos, self.hop_length = mode, alignment, lambda_cos, hop_length
        self.centered = centered

    def forward(self, student_features: Tensor, teacher_features: Tensor,
                waveform_mask: Tensor | None = None, teacher_mask: Tensor | None = None) -> Tensor:
        """Args: student ``[B, Ds, F]``, teacher ``[B, Tt, Dt]``, waveform_mask bool ``[B, T]``,
        teacher_mask bool ``[B, Tt]``. Returns a 0-dim tensor."""
        student, teacher, mask = self.align(student_features, teacher_features, waveform_mask, teacher_mask)
        if self.mode == "d_axis":
            return cosine_time_loss(student, teacher, mask, centered=self.centered)
        return cosine_frame_loss(student, teacher, mask, self.lambda_cos)

    def align(self, student_features: Tensor, teacher_features: Tensor, waveform_mask: Tensor | None = None,
              teacher_mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The two sequences this term compares (same arguments as ``forward``).

        Returns:
            ``(student [B, F, Dt]`` projected, ``teacher [B, F, Dt]`` aligned (detached),
            ``mask`` bool ``[B, F]`` of the frames that count).
        """
        name = type(self).__name__
        if student_features.dim() != 3 or teacher_features.dim() != 3:
            raise ConfigError(f"{name}: expected student [B, D, F] ({self.sources['student_features']}) and "
                              f"teacher [B, T, D] ({self.sources['teacher_features']}), got "
                              f"{list(student_features.shape)} and {list(teacher_features.shape)}")
        student = student_features.transpose(1, 2)  # [B, F, Ds]
        student = to_teacher_width(self.projector, student, teacher_features.shape[-1], name,
                                   (self.sources["student_features"], self.sources["teacher_features"]))
        frames = student.shape[1]
        frame_mask = None
        if self.hop_length is not None and waveform_mask is not None:
            frame_mask = waveform_mask[:, :: self.hop_length][:, :frames].bool()
        if self.alignment == "position":
            teacher, mask = positional_align(teacher_features.detach(), frames, teacher_mask)
        else:
            # A teacher with its own mask (a transcript's tokens) covers each sample's real audio.
            per_sample = teacher_mask is not None and frame_mask is not None
            teacher, mask = interpolate_align(teacher_features.detach(), frames, teacher_mask,
                                              frame_mask.sum(-1) if per_sample else None)
        if frame_mask is not None:
            mask = mask & frame_mask
        return student, teacher, mask


__all__ = ["CodecFeatureDistillation", "cosine_frame_loss", "cosine_time_loss", "frames_from_lengths",
           "indirect_semantic_loss", "interpolate_align", "positional_align"]
