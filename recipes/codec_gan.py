"""Adversarial codec training: a multi-scale STFT discriminator and the step that trains it.

The training step differs from plain distillation (two optimisers, a discriminator update
before every generator update), so :class:`AdversarialStep` plugs into
:class:`~lit_distill.DistillationModule` as its ``step`` (see :mod:`lit_distill.steps`); the
overlay ``configs/speech/overlays/adversarial.yaml`` makes any codec config adversarial::

    python -m lit_distill fit --config configs/speech/codec/codec_synth.yaml \
        --config configs/speech/overlays/adversarial.yaml

Per step, with ``x`` the
input waveform and ``x̂`` the codec's reconstruction, for every discriminator ``D_k`` (one per
STFT resolution) with logits ``D_k(·)`` and intermediate feature maps ``f_k^l(·)``:

- discriminator (least-squares GAN):
  ``L_D = mean_k [ mean (1 - D_k(x))^2 + mean D_k(sg x̂)^2 ]``;
- generator: the module's loss terms (reconstruction, commitment, distillation ...) plus
  ``adversarial_weight * mean_k mean (1 - D_k(x̂))^2`` plus
  ``feature_weight * mean_{k,l} mean |f_k^l(x̂) - sg f_k^l(x)|``.

Adversarial terms start at ``disc_start_step`` (the codec first learns to reconstruct).
Every STFT discriminator follows EnCodec's MS-STFT design in our own words: the real and
imaginary parts of a complex STFT as two channels, 2-D convolutions dilated along time and
strided along frequency, and a one-channel logit map.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn

from lit_distill.contracts import batch_size
from lit_distill.errors import ConfigError
from lit_distill.steps import StepResult, TrainingStep


class STFTDiscriminator(nn.Module):
    """One STFT resolution: complex spectrogram → logit map plus feature maps.

    Args:
        n_fft: FFT size (Hann window ``n_fft``, hop ``n_fft // 4``).
        channels: convolution channels.
        dilations: time dilations of the middle convolutions (each also halves the frequencies).
    """

    def __init__(self, n_fft: int = 1024, channels: int = 32, dilations: Sequence[int] = (1, 2, 4)) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        layers = [nn.Conv2d(2, channels, (3, 9), padding=(1, 4))]
        for d in dilations:
            layers.append(nn.Conv2d(channels, channels, (3, 9), stride=(2, 1), dilation=(1, d), padding=(1, 4 * d)))
        layers.append(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1)))
        self.convs = nn.ModuleList(nn.utils.parametrizations.weight_norm(c) for c in layers)
        self.out = nn.utils.parametrizations.weight_norm(nn.Conv2d(channels, 1, (3, 3), padding=(1, 1)))

    def forward(self, waveform: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Waveform ``[B, 1, T]`` → (logits ``[B, 1, F', N]``, feature maps ``[B, C, F_l, N]``)."""
        spec = torch.stft(waveform[:, 0], self.n_fft, self.n_fft // 4, self.n_fft, self.window.to(waveform.dtype),
                          center=True, return_complex=True)
        x = torch.stack([spec.real, spec.imag], 1)  # [B, 2, n_fft // 2 + 1, N]
        features = []
        for conv in self.convs:
            x = nn.functional.leaky_relu(conv(x), 0.2)
            features.append(x)
        return self.out(x), features


class MultiScaleSTFTDiscriminator(nn.Module):
    """One :class:`STFTDiscriminator` per FFT size.

    Args:
        fft_sizes: FFT sizes, e.g. ``[1024, 512, 256]``.
        channels: convolution channels of every discriminator.
    """

    def __init__(self, fft_sizes: Sequence[int] = (1024, 512, 256), channels: int = 32) -> None:
        super().__init__()
        if not fft_sizes:
            raise ConfigError("discriminator.fft_sizes: give at least one FFT size, e.g. [1024, 512, 256]")
        self.discriminators = nn.ModuleList(STFTDiscriminator(int(n), channels) for n in fft_sizes)

    def forward(self, waveform: Tensor) -> list[tuple[Tensor, list[Tensor]]]:
        """Waveform ``[B, 1, T]`` → per resolution (logits, feature maps)."""
        return [d(waveform) for d in self.discriminators]


def discriminator_loss(real: Sequence[Tensor], fake: Sequence[Tensor]) -> Tensor:
    """Least-squares GAN loss of the discriminators: ``mean_k [mean (1 - r_k)^2 + mean f_k^2]``."""
    return torch.stack([((1 - r) ** 2).mean() + (f ** 2).mean() for r, f in zip(real, fake, strict=True)]).mean()


def generator_adversarial_loss(fake: Sequence[Tensor]) -> Tensor:
    """Least-squares GAN loss of the generator: ``mean_k mean (1 - f_k)^2``."""
    return torch.stack([((1 - f) ** 2).mean() for f in fake]).mean()


def feature_matching_loss(real: Sequence[Sequence[Tensor]], fake: Sequence[Sequence[Tensor]]) -> Tensor:
    """``mean_{k,l} mean |fake_k^l - sg real_k^l|`` over discriminators ``k`` and layers ``l``."""
    return torch.stack([(f - r.detach()).abs().mean() for rs, fs in zip(real, fake, strict=True)
                        for r, f in zip(rs, fs, strict=True)]).mean()


class AdversarialStep(TrainingStep):
    """GAN training of a codec: per batch, a discriminator update, then a generator update.

    The generator's loss is the module's (its terms, through
    ``DistillationModule.distillation_loss``, so with its valid-count normalisation, first-batch
    checks and ``train/*`` logging) plus, from ``disc_start_step`` on, the adversarial and
    feature-matching terms (see the module docstring). The student must return
    ``features.reconstruction`` ``[B, 1, T]`` and batches must hold ``waveform`` ``[B, 1, T]``
    (:mod:`datamodules.speech`). Logged besides the module's ``train/loss`` (its terms only,
    comparable with ``val/loss``) and ``train/<term>``: ``train/disc``, ``train/adv`` and
    ``train/feat`` (after ``disc_start_step``).

    Manual optimisation: set ``trainer.gradient_clip_val`` to null (clip with ``grad_clip``) and
    keep ``accumulate_grad_batches`` at 1; ``model.init_args.scheduler`` is not supported yet.
    Lightning's ``global_step`` (and so ``trainer.max_steps``) counts every optimiser step, i.e.
    two per batch once the discriminator trains.

    Args:
        discriminator: e.g. :class:`MultiScaleSTFTDiscriminator`; saved with the module under
            ``step.discriminator.``.
        disc_optimizer: the discriminator's optimiser (the generator's is the module's).
        adversarial_weight: weight of the generator's least-squares adversarial loss.
        feature_weight: weight of the feature-matching loss.
        disc_start_step: generator step (batch) from which the discriminator trains and the
            adversarial terms count.
        grad_clip: max gradient norm of each optimiser's step (0 = off), applied after the
            module's normalisation.
    """

    automatic_optimization = False

    def __init__(self, discriminator: nn.Module, disc_optimizer: OptimizerCallable = torch.optim.AdamW,
                 adversarial_weight: float = 1.0, feature_weight: float = 1.0, disc_start_step: int = 0,
                 grad_clip: float = 0.0) -> None:
        super().__init__()
        self.discriminator = discriminator
        self.disc_optimizer_factory = disc_optimizer
        self.adversarial_weight, self.feature_weight = float(adversarial_weight), float(feature_weight)
        self.disc_start_step, self.grad_clip = int(disc_start_step), float(grad_clip)
        self.generator_steps = 0  # batches trained; saved in checkpoints

    def attach(self, module: L.LightningModule) -> None:
        if module.scheduler_factory is not None:
            raise ConfigError("model.init_args.scheduler: AdversarialStep does not step schedulers yet; set null")

    def configure_optimizers(self, module: L.LightningModule, module_optimizer: Any) -> list[Any]:
        return [module_optimizer, self.disc_optimizer_factory(self.discriminator.parameters())]

    def training_step(self, module: L.LightningModule, batch: dict[str, Any], batch_idx: int) -> Tensor:
        generator_optimizer, disc_optimizer = module.optimizers()
        result = module.distillation_loss(batch)
        real, fake = _waveforms(batch, result)
        generator_loss, logged = result.total, {}
        if self.generator_steps >= self.disc_start_step:
            d_real, d_fake = self.discriminator(real), self.discriminator(fake.detach())
            disc = discriminator_loss([r[0] for r in d_real], [f[0] for f in d_fake])
            _update(module, disc_optimizer, disc)
            g_fake, g_real = self.discriminator(fake), self.discriminator(real)
            logged["adv"] = generator_adversarial_loss([f[0] for f in g_fake])
            logged["feat"] = feature_matching_loss([r[1] for r in g_real], [f[1] for f in g_fake])
            generator_loss = generator_loss + self.adversarial_weight * logged["adv"] \
                + self.feature_weight * logged["feat"]
            logged["disc"] = disc.detach()
        # Weighted by the batch's valid count like the module's terms: the module divides the
        # generator's gradients by the step's count (a batch mean for codecs).
        _update(module, generator_optimizer, generator_loss * result.count)
        self.generator_steps += 1
        if result.logging:
            size = batch_size(batch)
            for name, value in logged.items():
                module.log(f"train/{name}", value, batch_size=size)
        return generator_loss.detach()

    def before_optimizer_step(self, module: L.LightningModule, optimizer: Any) -> None:
        if self.grad_clip > 0:
            module.clip_gradients(optimizer, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")

    def checkpoint_state(self) -> dict[str, Any]:
        return {"generator_steps": self.generator_steps}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.generator_steps = int(state.get("generator_steps", 0))


def _update(module: L.LightningModule, optimizer: Any, loss: Tensor) -> None:
    """One manual optimiser step on ``loss`` (clipping happens in ``before_optimizer_step``)."""
    optimizer.zero_grad()
    module.manual_backward(loss)
    optimizer.step()


def _waveforms(batch: dict[str, Any], result: StepResult) -> tuple[Tensor, Tensor]:
    """The real ``batch.waveform`` and the student's ``features.reconstruction``, both ``[B, 1, T]``."""
    if "waveform" not in batch:
        raise ConfigError("data: AdversarialStep needs batches with 'waveform' [B, 1, T] "
                          "(e.g. datamodules.SpeechDataModule)")
    if "reconstruction" not in result.student_out.features:
        raise ConfigError("model.init_args.student: AdversarialStep needs a codec that returns "
                          "features.reconstruction [B, 1, T] (e.g. lit_distill.models.ConvCodec)")
    return batch["waveform"], result.student_out.features["reconstruction"]
