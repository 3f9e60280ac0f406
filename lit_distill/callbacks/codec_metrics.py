"""Codec metrics per validation epoch (mel distance, SI-SNR, codebook use, teacher cosine, spectrograms)
and, every N training steps, codebook use of the training batch (a trajectory, not one reading)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import lightning as L
import torch
import torchaudio
from PIL import Image
from torch import Tensor

from lit_distill.contracts import resolve_source
from lit_distill.errors import ConfigError
from lit_distill.losses.audio import MultiResolutionMelLoss, si_snr


def codebook_stats(counts: Tensor, sizes: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
    """Utilisation and perplexity of each codebook from its code counts.

    Args:
        counts: ``[Q, K]`` how often each of the ``K`` codes of each quantiser was chosen.
        sizes: entries of each codebook (``<= K``; codebooks of different sizes, e.g. LM-SPT's
            semantic and acoustic ones); None: all ``K``.

    Returns:
        ``(usage [Q], perplexity [Q])``: the fraction of codes used at least once, and
        ``exp(H(p))`` of the empirical code distribution ``p`` (between 1 and ``K``; 0 for a
        quantiser that chose nothing).
    """
    counts = counts.double()
    total = counts.sum(-1, keepdim=True)
    p = counts / total.clamp_min(1)
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)
    perplexity = torch.where(total[:, 0] > 0, entropy.exp(), torch.zeros_like(entropy))
    if sizes is None:
        return (counts > 0).double().mean(-1), perplexity
    used = (counts > 0).double().sum(-1)
    return used / torch.tensor([float(k) for k in sizes], dtype=used.dtype, device=used.device), perplexity


def code_counts(codes: Tensor, size: int) -> Tensor:
    """How often each code was chosen: long ``[B, Q, F]`` (``-1`` = no code) → ``[Q, size]``."""
    q = codes.shape[1]
    valid = codes >= 0
    flat = (codes.clamp_min(0) + torch.arange(q, device=codes.device)[None, :, None] * size)[valid]
    return torch.bincount(flat, minlength=q * size).view(q, size)


def spectrogram_image(waveforms: Sequence[Tensor], sample_rate: int, n_fft: int = 1024, n_mels: int = 80,
                      dynamic_range_db: float = 80.0) -> Image.Image:
    """Log-mel spectrograms of waveforms ``[T]`` stacked vertically (low frequencies at the bottom).

    All panels share one dB scale: the loudest bin of all is white, ``dynamic_range_db`` below it
    black; a white line separates the panels.
    """
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=n_fft // 4,
                                               n_mels=n_mels, power=2.0)
    specs = [10 * torch.log10(mel(w.detach().float().cpu()) + 1e-10) for w in waveforms]
    top = max(float(s.max()) for s in specs)
    rows = []
    for i, spec in enumerate(specs):
        scaled = ((spec - (top - dynamic_range_db)) / dynamic_range_db).clamp(0, 1).flip(0)
        rows.append(scaled)
        if i < len(specs) - 1:
            rows.append(torch.ones(2, spec.shape[1]))
    pixels = (torch.cat(rows) * 255).round().to(torch.uint8).numpy()
    return Image.fromarray(pixels, mode="L").resize((pixels.shape[1] * 2, pixels.shape[0] * 2), Image.NEAREST)


class CodecMetrics(L.Callback):
    """Logs reconstruction quality and codebook use of a codec student; writes a spectrogram PNG.

    Reads the ``{"student", "teacher"}`` outputs that ``DistillationModule.validation_step``
    returns and the batch of :mod:`datamodules.speech`: the student's
    ``features.reconstruction`` ``[B, 1, T]`` and ``features.codes`` ``[B, Q, F]`` (``-1`` =
    no code) against ``batch["waveform"]`` ``[B, 1, T]`` with ``batch["waveform_mask"]``.
    Logged once per validation epoch, over the whole validation set:

    - ``<prefix>/mel_distance``: mean log-mel L1 (:class:`MultiResolutionMelLoss`, equal
      weights averaged over ``mel_fft_sizes``), weighted by batch size;
    - ``<prefix>/si_snr``: mean SI-SNR in dB over waveforms;
    - ``<prefix>/codebook_usage`` and ``<prefix>/codebook_perplexity`` (means over quantisers)
      and per quantiser ``..._q<i>`` (see :func:`codebook_stats`);
    - ``<prefix>/teacher_cosine`` (when ``student_source`` and ``teacher_source`` are set and a
      teacher runs): mean cosine similarity per frame between the two features over the first
      ``min(F_student, F_teacher)`` frames;
    - ``<prefix>/teacher_cosine_<term>`` for every name in ``teacher_terms``: the mean cosine
      similarity over the frames that count between the student feature as that distillation
      term projects it and the teacher feature as it aligns it (``CodecFeatureDistillation.align``),
      whatever the two widths.

    With ``train_every_n_steps: N`` it also logs, every ``N`` optimizer steps, the codebook use of
    that step's training batch: ``train/codebook_usage``, ``train/codebook_perplexity`` and per
    quantiser ``..._q<i>``. The codes come from the student's ``encode`` (eval mode: all
    quantisers, no EMA update) of ``batch["waveform"]``, frames of padding left out; read them
    as a trajectory (usage from one batch of ``B·F`` frames is bounded by ``B·F / K``).

    The PNG ``<log_dir>/codec/epoch_<E>.png`` shows the log-mel spectrogram of the first
    validation waveform (real samples only) above that of its reconstruction.

    Args:
        sample_rate: rate of the waveforms (Hz).
        mel_fft_sizes: FFT sizes of the mel distance.
        student_source: source path of the student feature compared with the teacher, e.g.
            ``student.features.layer_outputs.0`` (``[B, D, F]``, see ``student_channels_first``).
        teacher_source: source path of the teacher feature ``[B, F, D]``, e.g.
            ``teacher.hidden_states.-1``.
        student_channels_first: the student feature is ``[B, D, F]`` (codec layout) rather than
            ``[B, F, D]``.
        teacher_terms: names of ``CodecFeatureDistillation`` loss terms (e.g. ``[distill]``) whose
            projected student and aligned teacher features are compared.
        spectrogram: write the PNG.
        prefix: logged-name prefix.
        train_every_n_steps: log the codebook use of a training batch every this many optimizer
            steps (0: never).
    """

    def __init__(self, sample_rate: int = 16000, mel_fft_sizes: Sequence[int] = (1024, 512, 256),
                 student_source: str | None = None, teacher_source: str | None = None,
                 student_channels_first: bool = True, teacher_terms: Sequence[str] = (), spectrogram: bool = True,
                 prefix: str = "val", train_every_n_steps: int = 0) -> None:
        if (student_source is None) != (teacher_source is None):
            raise ConfigError("CodecMetrics: set both student_source and teacher_source (or neither)")
        if train_every_n_steps < 0:
            raise ConfigError(f"CodecMetrics.train_every_n_steps: must be >= 0 (0: off), got {train_every_n_steps}")
        self.train_every_n_steps = train_every_n_steps
        self.sample_rate, self.prefix, self.spectrogram = sample_rate, prefix, spectrogram
        self.student_source, self.teacher_source = student_source, teacher_source
        self.student_channels_first = student_channels_first
        self.teacher_terms = list(teacher_terms)
        self.mel = MultiResolutionMelLoss(sample_rate, mel_fft_sizes,
                                          weights=[1.0 / len(mel_fft_sizes)] * len(mel_fft_sizes))
        self._reset()
        self.last_figure: str | None = None

    def _reset(self) -> None:
        self._sums: dict[str, Tensor] = {}
        self._counts: Tensor | None = None
        self._example: tuple[Tensor, Tensor] | None = None

    def _add(self, name: str, value: Tensor) -> None:
        value = value.detach().double()
        self._sums[name] = self._sums[name] + value if name in self._sums else value

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not isinstance(outputs, dict) or outputs.get("student") is None:
            return
        student = outputs["student"]
        recon = student.features.get("reconstruction")
        target = batch.get("waveform")
        if recon is None or target is None:
            raise ConfigError("CodecMetrics: needs student features 'reconstruction' (a codec adapter such as "
                              "lit_distill.models.ConvCodec) and batch['waveform'] (datamodules.speech)")
        mask = batch.get("waveform_mask")
        size = target.shape[0]
        self.mel.to(recon.device)
        with torch.no_grad():
            self._add("mel_distance", self.mel(recon, target, mask) * size)
            self._add("si_snr", si_snr(recon, target, mask).sum())
            self._add("waveforms", torch.tensor(float(size), device=recon.device))
            codes = student.features.get("codes")
            if codes is not None:
                self._count_codes(codes, pl_module)
            if self.student_source is not None and outputs.get("teacher") is not None:
                self._add("teacher_cosine", self._cosine(student, outputs["teacher"], batch) * size)
                self._add("cosine_waveforms", torch.tensor(float(size), device=recon.device))
            if outputs.get("teacher") is not None:
                for name in self.teacher_terms:
                    self._term_cosine(name, pl_module, student, outputs["teacher"], batch)
        if batch_idx == 0 and self._example is None:
            n = int(mask[0].sum()) if mask is not None else target.shape[-1]
            self._example = (target[0, 0, :n].detach().cpu(), recon[0, 0, :n].detach().cpu())

    def _count_codes(self, codes: Tensor, pl_module: L.LightningModule) -> None:
        size = getattr(pl_module.student, "codebook_size", None)
        if size is None:
            size = int(codes.max()) + 1
        counts = code_counts(codes, size)
        self._counts = counts if self._counts is None else self._counts + counts

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = self.train_every_n_steps
        if not n or trainer.global_step % n or not isinstance(batch, dict) or "waveform" not in batch:
            return
        student = pl_module.student
        if not hasattr(student, "encode"):
            raise ConfigError("CodecMetrics.train_every_n_steps: the student has no encode(); use a codec "
                              "adapter such as lit_distill.models.ConvCodec")
        codes = student.encode(batch["waveform"])  # [B, Q, F], no grad, eval mode
        mask = batch.get("waveform_mask")
        if mask is not None and hasattr(student, "frame_mask"):
            codes = codes.masked_fill(~student.frame_mask(mask.bool())[:, None, : codes.shape[-1]], -1)
        size = getattr(student, "codebook_size", None) or int(codes.max()) + 1
        counts = trainer.strategy.reduce(code_counts(codes, size), reduce_op="sum")
        sizes = getattr(student, "codebook_sizes", None)
        usage, perplexity = codebook_stats(counts, sizes if sizes is not None and len(sizes) == len(counts) else None)
        pl_module.log("train/codebook_usage", usage.mean().float(), on_step=True, on_epoch=False)
        pl_module.log("train/codebook_perplexity", perplexity.mean().float(), on_step=True, on_epoch=False)
        for q in range(usage.shape[0]):
            pl_module.log(f"train/codebook_usage_q{q}", usage[q].float(), on_step=True, on_epoch=False)
            pl_module.log(f"train/codebook_perplexity_q{q}", perplexity[q].float(), on_step=True, on_epoch=False)

    def _cosine(self, student, teacher, batch) -> Tensor:
        s = resolve_source(self.student_source, student, teacher, batch)
        t = resolve_source(self.teacher_source, student, teacher, batch)
        if self.student_channels_first:
            s = s.transpose(1, 2)
        if s.shape[-1] != t.shape[-1]:
            raise ConfigError(f"CodecMetrics.student_source: width {s.shape[-1]} differs from the teacher's "
                              f"{t.shape[-1]} ({self.teacher_source}); compare features of equal width")
        n = min(s.shape[1], t.shape[1])
        return torch.nn.functional.cosine_similarity(s[:, :n].float(), t[:, :n].float(), dim=-1).mean()

    def _term_cosine(self, name: str, pl_module: L.LightningModule, student, teacher, batch) -> None:
        losses = getattr(pl_module, "losses", {})
        term = losses[name] if name in losses else None
        if not hasattr(term, "align"):
            raise ConfigError(f"CodecMetrics.teacher_terms: '{name}' is not a CodecFeatureDistillation term of the "
                              f"module (terms: {sorted(getattr(pl_module, 'losses', {}))})")
        s, t, mask = term.align(**term.gather(student, teacher, batch))
        cos = torch.nn.functional.cosine_similarity(s.float(), t.float(), dim=-1)  # [B, F]
        self._add(f"teacher_cosine_{name}", (cos * mask).sum())
        self._add(f"cosine_frames_{name}", mask.sum())

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or "waveforms" not in self._sums:
            return
        sums = {k: trainer.strategy.reduce(v, reduce_op="sum") for k, v in self._sums.items()}
        p = self.prefix
        pl_module.log(f"{p}/mel_distance", (sums["mel_distance"] / sums["waveforms"]).float())
        pl_module.log(f"{p}/si_snr", (sums["si_snr"] / sums["waveforms"]).float())
        if "teacher_cosine" in sums:
            pl_module.log(f"{p}/teacher_cosine", (sums["teacher_cosine"] / sums["cosine_waveforms"]).float())
        for name in self.teacher_terms:
            if f"teacher_cosine_{name}" in sums:
                cosine = sums[f"teacher_cosine_{name}"] / sums[f"cosine_frames_{name}"].clamp_min(1)
                pl_module.log(f"{p}/teacher_cosine_{name}", cosine.float())
        if self._counts is not None:
            counts = trainer.strategy.reduce(self._counts, reduce_op="sum")
            sizes = getattr(pl_module.student, "codebook_sizes", None)
            usage, perplexity = codebook_stats(counts, sizes if sizes is not None and len(sizes) == len(counts) else None)
            pl_module.log(f"{p}/codebook_usage", usage.mean().float())
            pl_module.log(f"{p}/codebook_perplexity", perplexity.mean().float())
            for q in range(usage.shape[0]):
                pl_module.log(f"{p}/codebook_usage_q{q}", usage[q].float())
                pl_module.log(f"{p}/codebook_perplexity_q{q}", perplexity[q].float())
        if self.spectrogram and self._example is not None and trainer.is_global_zero:
            self.last_figure = self._write_figure(trainer)

    def _write_figure(self, trainer: L.Trainer) -> str:
        log_dir = trainer.log_dir or trainer.default_root_dir
        path = os.path.join(log_dir, "codec", f"epoch_{trainer.current_epoch:03d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        spectrogram_image(list(self._example), self.sample_rate).save(path)
        return path
