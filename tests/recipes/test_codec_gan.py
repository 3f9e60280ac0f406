"""recipes.codec_gan: STFT discriminators, LSGAN / feature-matching formulas, AdversarialStep, a 2-batch fit."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from datamodules.speech import synthesize_speech_corpus
from lit_distill import DistillationModule
from lit_distill.cli import run_cli
from lit_distill.errors import ConfigError
from lit_distill.losses.audio import Commitment
from lit_distill.losses.terms import CrossEntropy
from lit_distill.models.codec import ConvCodec
from recipes.codec_gan import (
    AdversarialStep,
    MultiScaleSTFTDiscriminator,
    STFTDiscriminator,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
)

REPO = Path(__file__).resolve().parents[2]
OVERLAY = REPO / "configs" / "speech" / "overlays" / "adversarial.yaml"


def test_stft_discriminator_shapes_and_gradient():
    torch.manual_seed(0)
    disc = STFTDiscriminator(n_fft=256, channels=4)
    wave = torch.randn(2, 1, 1600, requires_grad=True)
    logits, features = disc(wave)
    frames = 1600 // 64 + 1
    assert logits.shape == (2, 1, 17, frames)  # 129 bins halved three times: 65, 33, 17
    assert [f.shape[2] for f in features] == [129, 65, 33, 17, 17] and all(f.shape[1] == 4 for f in features)
    logits.sum().backward()
    assert wave.grad.abs().sum() > 0
    multi = MultiScaleSTFTDiscriminator([256, 128], channels=4)
    assert [out[0].shape[-1] for out in multi(wave)] == [frames, 1600 // 32 + 1]


def test_gan_losses_against_direct_formulas():
    torch.manual_seed(0)
    real = [torch.randn(2, 1, 5, 7, dtype=torch.float64), torch.randn(2, 1, 3, 4, dtype=torch.float64)]
    fake = [torch.randn(2, 1, 5, 7, dtype=torch.float64), torch.randn(2, 1, 3, 4, dtype=torch.float64)]
    expected_d = sum(float(((1 - r) ** 2).sum() / r.numel() + (f ** 2).sum() / f.numel())
                     for r, f in zip(real, fake, strict=True)) / 2
    assert discriminator_loss(real, fake).item() == pytest.approx(expected_d, rel=1e-12)
    expected_g = sum(float(((1 - f) ** 2).sum() / f.numel()) for f in fake) / 2
    assert generator_adversarial_loss(fake).item() == pytest.approx(expected_g, rel=1e-12)
    real_feats = [[torch.randn(3, 4, dtype=torch.float64) for _ in range(2)] for _ in range(2)]
    fake_feats = [[torch.randn(3, 4, dtype=torch.float64) for _ in range(2)] for _ in range(2)]
    expected_f = sum(float((f - r).abs().sum() / 12) for rs, fs in zip(real_feats, fake_feats, strict=True)
                     for r, f in zip(rs, fs, strict=True)) / 4
    assert feature_matching_loss(real_feats, fake_feats).item() == pytest.approx(expected_f, rel=1e-12)


def codec() -> ConvCodec:
    torch.manual_seed(0)
    return ConvCodec(channels=2, dim=4, dilations=[1], num_quantizers=1, codebook_size=4)


def test_discriminator_has_its_own_optimizer_outside_the_module_hparams():
    step = AdversarialStep(MultiScaleSTFTDiscriminator([128], 2))
    module = DistillationModule(codec(), {"commit": Commitment()}, step=step)
    assert "step" not in module.hparams  # no pickled modules outside the CLI
    assert not module.automatic_optimization
    generator, disc = module.configure_optimizers()
    disc_params = {id(p) for p in step.discriminator.parameters()}
    assert {id(p) for g in disc.param_groups for p in g["params"]} == disc_params
    assert {id(p) for g in generator.param_groups for p in g["params"]} == {id(p) for p in module.student.parameters()}
    with pytest.raises(ConfigError, match="model.init_args.scheduler"):
        DistillationModule(codec(), {"commit": Commitment()}, step=AdversarialStep(MultiScaleSTFTDiscriminator([128], 2)),
                           scheduler=torch.optim.lr_scheduler.ConstantLR)


def test_generator_step_is_normalised_before_it_is_clipped():
    # 3 waveforms: the module scales the generator loss by 3 and divides its gradients by 3;
    # clipping after that division gives an update of exactly the clip norm (SGD, lr 1).
    step = AdversarialStep(MultiScaleSTFTDiscriminator([128], 2), disc_start_step=10, grad_clip=1.0e-3)
    module = DistillationModule(codec(), {"commit": Commitment()}, step=step,
                                optimizer=lambda params: torch.optim.SGD(params, lr=1.0))
    waveform = torch.randn(3, 1, 640, generator=torch.Generator().manual_seed(0))
    before = [p.detach().clone() for p in module.student.parameters()]
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader([{"inputs": {"waveform": waveform}, "waveform": waveform}], batch_size=None))
    update = torch.cat([(p.detach() - b).flatten() for p, b in zip(module.student.parameters(), before, strict=True)])
    assert update.norm() == pytest.approx(1.0e-3, rel=1e-4)
    assert step.generator_steps == 1 and "train/disc" not in trainer.callback_metrics  # before disc_start_step


def test_missing_reconstruction_is_one_config_error():
    step = AdversarialStep(MultiScaleSTFTDiscriminator([128], 2))
    module = DistillationModule(torch.nn.Linear(4, 3), {"ce": CrossEntropy()}, step=step)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    batch = {"inputs": {"x": torch.randn(2, 4)}, "labels": torch.tensor([0, 2]), "waveform": torch.randn(2, 1, 640)}
    with pytest.raises(ConfigError, match="features.reconstruction"):
        trainer.fit(module, DataLoader([batch], batch_size=None))


@pytest.mark.slow
def test_adversarial_fit_from_stacked_yaml_resumes_the_generator_count(tmp_path):
    sentences = ["The quick brown fox jumps over the lazy dog.", "She opened the window and listened to the rain.",
                 "Two birds were building a nest under the roof."]
    manifest = synthesize_speech_corpus(tmp_path / "synth", sentences, voices=["en-gb"], speeds=[160])
    gan = "--model.init_args.step.init_args"
    args = ["--config", str(REPO / "configs/speech/codec/codec_synth.yaml"), "--config", str(OVERLAY),
            "--model.init_args.student.init_args.channels=4", "--model.init_args.student.init_args.dim=16",
            "--model.init_args.student.init_args.dilations=[1]", "--model.init_args.student.init_args.codebook_size=16",
            f"{gan}.discriminator.init_args.fft_sizes=[512,256]", f"{gan}.discriminator.init_args.channels=4",
            f"{gan}.disc_optimizer.init_args.lr=1.0e-3", f"{gan}.disc_start_step=1",
            f"--data.init_args.manifest={manifest}", "--data.init_args.synthesize=false",
            "--data.init_args.batch_size=2", "--data.init_args.val_fraction=0.34", "--data.init_args.crop_seconds=0.5",
            "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
            "--trainer.num_sanity_val_steps=0", "--trainer.limit_val_batches=1",
            f"--trainer.default_root_dir={tmp_path / 'run'}"]
    # global_step counts both optimisers: batch 0 steps the generator (1), batch 1 both (3)
    run = run_cli(["fit", *args, "--trainer.max_steps=3"])
    step = run.model.step
    assert isinstance(step, AdversarialStep) and step.generator_steps == 2 and step.grad_clip == 1.0
    assert run.trainer.gradient_clip_val is None  # the overlay moved clipping into the step
    assert run.trainer.global_step == 3
    metrics = run.trainer.callback_metrics
    for key in ("train/disc", "train/adv", "train/feat", "train/mel", "val/mel", "val/si_snr"):
        assert torch.isfinite(metrics[key]), key
    last = next((tmp_path / "run").rglob("last.ckpt"))
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["training_step_state"] == {"generator_steps": 2} and len(ckpt["optimizer_states"]) == 2
    assert any(k.startswith("step.discriminator.") for k in ckpt["state_dict"])

    # resume: the count goes on from 2 (the adversarial terms keep counting from the right step)
    resumed = run_cli(["fit", *args, "--trainer.max_steps=5", f"--ckpt_path={last}"])
    assert resumed.model.step.generator_steps == 3 and resumed.trainer.global_step == 5
