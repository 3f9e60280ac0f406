"""recipes.codec_gan: STFT discriminators, LSGAN / feature-matching formulas, a 2-batch adversarial fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from datamodules.speech import synthesize_speech_corpus
from lit_distill.cli import run_cli
from lit_distill.errors import ConfigError
from recipes.codec_gan import (
    CodecGANModule,
    MultiScaleSTFTDiscriminator,
    STFTDiscriminator,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    with_discriminator,
)

REPO = Path(__file__).resolve().parents[2]


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


def test_direct_construction():
    from lit_distill.losses.audio import Commitment
    from lit_distill.models.codec import ConvCodec

    def codec():
        return ConvCodec(channels=2, dim=4, dilations=[1], num_quantizers=1, codebook_size=4)

    module = CodecGANModule(codec(), {"commit": Commitment()}, MultiScaleSTFTDiscriminator([128], 2))
    assert "discriminator" not in module.hparams and "disc_optimizer" not in module.hparams  # no pickled modules
    generator, disc = module.configure_optimizers()
    disc_params = {id(p) for p in module.discriminator.parameters()}
    assert {id(p) for g in disc.param_groups for p in g["params"]} == disc_params
    assert not disc_params & {id(p) for g in generator.param_groups for p in g["params"]}
    with pytest.raises(ConfigError, match="scheduler"):
        CodecGANModule(codec(), {"commit": Commitment()}, MultiScaleSTFTDiscriminator([128], 2),
                       scheduler=torch.optim.lr_scheduler.ConstantLR)


@pytest.mark.slow
def test_adversarial_fit_from_yaml(tmp_path):
    sentences = ["The quick brown fox jumps over the lazy dog.", "She opened the window and listened to the rain.",
                 "Two birds were building a nest under the roof."]
    manifest = synthesize_speech_corpus(tmp_path / "synth", sentences, voices=["en-gb"], speeds=[160])
    config = yaml.safe_load((REPO / "configs/speech/codec/codec_synth.yaml").read_text())
    config["model"]["init_args"]["student"]["init_args"].update(channels=4, dim=16, dilations=[1], codebook_size=16)
    config = with_discriminator(config, fft_sizes=[512, 256], channels=4, disc_lr=1.0e-3, disc_start_step=1)
    assert "gradient_clip_val" not in config["trainer"]  # not allowed under manual optimisation
    assert config["model"]["init_args"]["grad_clip"] == 1.0  # moved into the module
    path = tmp_path / "gan.yaml"
    path.write_text(yaml.safe_dump(config))
    # global_step counts both optimisers: batch 0 steps the generator (1), batch 1 both (3)
    run = run_cli(["fit", "--config", str(path), f"--data.init_args.manifest={manifest}",
                   "--data.init_args.synthesize=false", "--data.init_args.batch_size=2",
                   "--data.init_args.val_fraction=0.34", "--data.init_args.crop_seconds=0.5",
                   "--trainer.max_steps=3", "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
                   "--trainer.num_sanity_val_steps=0", "--trainer.limit_val_batches=1",
                   f"--trainer.default_root_dir={tmp_path / 'run'}"])
    module = run.model
    assert isinstance(module, CodecGANModule) and module.generator_steps == 2
    assert run.trainer.global_step == 3
    metrics = run.trainer.callback_metrics
    for key in ("train/disc", "train/adv", "train/feat", "train/mel", "val/mel", "val/si_snr"):
        assert torch.isfinite(metrics[key]), key
    ckpt = torch.load(next((tmp_path / "run").rglob("last.ckpt")), map_location="cpu", weights_only=False)
    assert ckpt["codec_gan_generator_steps"] == 2 and len(ckpt["optimizer_states"]) == 2
    assert any(k.startswith("discriminator.") for k in ckpt["state_dict"])


def test_with_discriminator_refuses_other_modules():
    with pytest.raises(ConfigError, match="only a DistillationModule codec config"):
        with_discriminator({"model": {"class_path": "recipes.codec_gan.CodecGANModule"}})
