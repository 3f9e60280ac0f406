"""Adversarial codec training: a multi-scale STFT discriminator and a two-optimizer module.

The training step differs from :class:`~lit_distill.DistillationModule` (two optimisers, a
discriminator update before every generator update), so it lives here. Per step, with ``x`` the
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

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from lit_distill.contracts import LossTerm, batch_size
from lit_distill.errors import ConfigError
from lit_distill.module import DistillationModule


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


class CodecGANModule(DistillationModule):
    """:class:`~lit_distill.DistillationModule` with a discriminator: manual optimisation, two optimisers.

    The loss terms (and the teacher, if any) work as in the parent; the student must return
    ``features.reconstruction`` ``[B, 1, T]`` and batches must hold ``waveform`` ``[B, 1, T]``
    (:mod:`datamodules.speech`). Logged besides the terms: ``train/disc``, ``train/adv``,
    ``train/feat`` (after ``disc_start_step``).

    Args:
        student: the codec (e.g. ``lit_distill.models.ConvCodec``).
        losses: the generator's loss terms.
        discriminator: e.g. :class:`MultiScaleSTFTDiscriminator`.
        teacher: optional frozen teacher (for distillation terms).
        optimizer: the generator's optimiser (student and loss-term parameters).
        disc_optimizer: the discriminator's optimiser.
        adversarial_weight: weight of the generator's least-squares adversarial loss.
        feature_weight: weight of the feature-matching loss.
        disc_start_step: optimizer step from which the discriminator trains and the adversarial
            terms count.
        grad_clip: max gradient norm of each optimiser's step (0 = off); Lightning's
            ``gradient_clip_val`` does not apply under manual optimisation.
        scheduler: not supported yet (must be null).

    Note: under manual optimisation Lightning's ``global_step`` (and so ``trainer.max_steps``)
    counts every optimiser step, i.e. two per batch once the discriminator trains.
    """

    def __init__(
        self,
        student: nn.Module,
        losses: dict[str, LossTerm],
        discriminator: nn.Module,
        teacher: nn.Module | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        disc_optimizer: OptimizerCallable = torch.optim.AdamW,
        adversarial_weight: float = 1.0,
        feature_weight: float = 1.0,
        disc_start_step: int = 0,
        grad_clip: float = 0.0,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        if scheduler is not None:
            raise ConfigError("model.init_args.scheduler: CodecGANModule does not support schedulers yet; set null")
        with warnings.catch_warnings():  # the parent's save_hyperparameters sees our module arguments too
            warnings.filterwarnings("ignore", message=r"Attribute 'discriminator' is an instance of `nn.Module`")
            super().__init__(student=student, losses=losses, teacher=teacher, optimizer=optimizer)
        for key in ("discriminator", "disc_optimizer"):  # objects, not config, outside LightningCLI
            if not isinstance(self.hparams.get(key), dict | str | type(None)):
                self.hparams.pop(key)
        self.discriminator = discriminator
        self.disc_optimizer_factory = disc_optimizer
        self.adversarial_weight, self.feature_weight = float(adversarial_weight), float(feature_weight)
        self.disc_start_step, self.grad_clip = int(disc_start_step), float(grad_clip)
        self.generator_steps = 0  # batches trained; saved in checkpoints
        self.automatic_optimization = False

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["codec_gan_generator_steps"] = self.generator_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.generator_steps = int(checkpoint.get("codec_gan_generator_steps", 0))

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        generator = [p for name, p in self.named_parameters()
                     if p.requires_grad and not name.startswith(("teacher.", "discriminator."))]
        return [self.optimizer_factory(generator), self.disc_optimizer_factory(self.discriminator.parameters())]

    def _step(self, optimizer, loss: Tensor) -> None:
        optimizer.zero_grad()
        self.manual_backward(loss)
        if self.grad_clip > 0:
            self.clip_gradients(optimizer, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
        optimizer.step()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        opt_g, opt_d = self.optimizers()
        student_out, teacher_out = self(batch, run_teacher=self._teacher_needed)
        total, values = self.compute_losses(batch, student_out, teacher_out)
        real, fake = batch["waveform"], student_out.features["reconstruction"]
        adversarial = self.generator_steps >= self.disc_start_step
        if adversarial:
            d_real, d_fake = self.discriminator(real), self.discriminator(fake.detach())
            disc = discriminator_loss([r[0] for r in d_real], [f[0] for f in d_fake])
            self._step(opt_d, disc)
            g_fake, g_real = self.discriminator(fake), self.discriminator(real)
            values["adv"] = generator_adversarial_loss([f[0] for f in g_fake])
            values["feat"] = feature_matching_loss([r[1] for r in g_real], [f[1] for f in g_fake])
            total = total + self.adversarial_weight * values["adv"] + self.feature_weight * values["feat"]
            values["disc"] = disc.detach()
        self._step(opt_g, total)
        self.generator_steps += 1
        if self._logging_step():
            size = batch_size(batch)
            self.log("train/loss", total, prog_bar=True, batch_size=size)
            for name, value in values.items():
                self.log(f"train/{name}", value, batch_size=size)
        return total.detach()


def with_discriminator(config: dict[str, Any], fft_sizes: Sequence[int] = (1024, 512, 256), channels: int = 32,
                       disc_lr: float | None = None, adversarial_weight: float = 1.0, feature_weight: float = 1.0,
                       disc_start_step: int = 0) -> dict[str, Any]:
    """Turn a codec config (a ``DistillationModule`` dict, as ``yaml.safe_load`` reads it) adversarial.

    The model becomes a :class:`CodecGANModule` with the same student, teacher and loss terms
    plus a :class:`MultiScaleSTFTDiscriminator` and its own AdamW; the trainer's
    ``gradient_clip_val`` moves into the module's ``grad_clip`` (manual optimisation).

    Args:
        config: the parsed config; not modified.
        fft_sizes: the discriminators' FFT sizes.
        channels: their convolution channels.
        disc_lr: the discriminator's learning rate (None: the generator's, else 1e-4).
        adversarial_weight: weight of the generator's adversarial loss.
        feature_weight: weight of the feature-matching loss.
        disc_start_step: generator step from which the adversarial terms count.

    Returns:
        A new config dict.
    """
    import copy

    config = copy.deepcopy(config)
    model = config.get("model") or {}
    if model.get("class_path") not in ("lit_distill.DistillationModule", "lit_distill.module.DistillationModule"):
        raise ConfigError(f"model.class_path: '{model.get('class_path')}' is not lit_distill.DistillationModule; "
                          "only a DistillationModule codec config can be made adversarial")
    args = model.setdefault("init_args", {})
    if disc_lr is None:
        disc_lr = ((args.get("optimizer") or {}).get("init_args") or {}).get("lr", 1.0e-4)
    model["class_path"] = "recipes.codec_gan.CodecGANModule"
    clip = (config.get("trainer") or {}).pop("gradient_clip_val", None)
    args.update(discriminator={"class_path": "recipes.codec_gan.MultiScaleSTFTDiscriminator",
                               "init_args": {"fft_sizes": list(fft_sizes), "channels": channels}},
                disc_optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": disc_lr, "betas": [0.8, 0.99]}},
                adversarial_weight=adversarial_weight, feature_weight=feature_weight,
                disc_start_step=disc_start_step, grad_clip=float(clip or 0.0))
    return config
