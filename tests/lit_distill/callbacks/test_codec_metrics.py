"""CodecMetrics: codebook statistics, teacher cosine, spectrogram PNG, and a real 2-step codec fit."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from datamodules.speech import synthesize_speech_corpus
from lit_distill.callbacks.codec_metrics import CodecMetrics, codebook_stats, spectrogram_image
from lit_distill.cli import run_cli
from lit_distill.contracts import ModelOutput
from lit_distill.errors import ConfigError
from lit_distill.losses.audio import MultiResolutionMelLoss, si_snr
from lit_distill.models.codec import ConvCodec

REPO = Path(__file__).resolve().parents[3]
CONFIG = REPO / "configs" / "speech" / "codec" / "codec_synth.yaml"


def test_codebook_stats_against_direct_formula():
    counts = torch.tensor([[3, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    usage, perplexity = codebook_stats(counts)
    assert usage.tolist() == [0.5, 0.0, 1.0]
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert perplexity[0].item() == pytest.approx(math.exp(h))
    assert perplexity[1].item() == 0.0 and perplexity[2].item() == pytest.approx(4.0)


def test_spectrogram_image_panels():
    t = torch.arange(16000) / 16000
    tone = 0.5 * torch.sin(2 * math.pi * 1000 * t)
    image = spectrogram_image([tone, torch.zeros(16000)], 16000, n_fft=1024, n_mels=80)
    assert image.mode == "L" and image.size == (2 * 63, 2 * (80 + 2 + 80))
    pixels = torch.tensor(list(image.getdata()), dtype=torch.float32).view(image.size[1], image.size[0])
    top, bottom = pixels[:160], pixels[164:]
    assert top.max() == 255 and bottom.max() == 0  # silence is 80 dB+ below the tone: black
    bright_row = int(top.mean(1).argmax()) // 2  # the tone's mel band (low frequencies at the bottom)
    assert 20 < 79 - bright_row < 60


class FakeStrategy:
    def reduce(self, value, reduce_op="sum"):
        return value


def test_metrics_and_teacher_cosine(tmp_path):
    torch.manual_seed(0)
    callback = CodecMetrics(sample_rate=16000, mel_fft_sizes=[256], student_source="student.features.layer_outputs.0",
                            teacher_source="teacher.hidden_states.-1")
    logged: dict[str, float] = {}
    module = SimpleNamespace(student=SimpleNamespace(codebook_size=4),
                             log=lambda name, value: logged.__setitem__(name, float(value)))
    trainer = SimpleNamespace(sanity_checking=False, strategy=FakeStrategy(), is_global_zero=True,
                              log_dir=str(tmp_path), default_root_dir=str(tmp_path), current_epoch=3)
    callback.on_validation_epoch_start(trainer, module)
    batches, cosines = [], []
    for _ in range(2):
        wave = torch.randn(2, 1, 1600)
        recon = wave + 0.3 * torch.randn(2, 1, 1600)
        codes = torch.randint(0, 4, (2, 2, 5))
        s, t = torch.randn(2, 6, 5), torch.randn(2, 7, 6)  # student [B, D, F], teacher [B, F', D]
        student = ModelOutput(features={"reconstruction": recon, "codes": codes, "layer_outputs.0": s})
        teacher = ModelOutput(hidden_states=(t,))
        batch = {"waveform": wave, "waveform_mask": torch.ones(2, 1600, dtype=torch.bool)}
        callback.on_validation_batch_end(trainer, module, {"student": student, "teacher": teacher}, batch, len(batches))
        batches.append((wave, recon, codes))
        cosines.append(torch.nn.functional.cosine_similarity(s.transpose(1, 2), t[:, :5], dim=-1).mean())
    callback.on_validation_epoch_end(trainer, module)
    waves, recons, codes = (torch.cat(x) for x in zip(*batches, strict=True))
    mel = MultiResolutionMelLoss(16000, [256], weights=[1.0])
    expected_mel = sum(mel(r, w).item() for _, w, r in [(0, *b[:2]) for b in batches]) / 2
    assert logged["val/mel_distance"] == pytest.approx(expected_mel, rel=1e-5)
    assert logged["val/si_snr"] == pytest.approx(si_snr(recons, waves).mean().item(), rel=1e-5)
    assert logged["val/teacher_cosine"] == pytest.approx(torch.stack(cosines).mean().item(), rel=1e-5)
    counts = torch.stack([torch.bincount(codes[:, q].flatten(), minlength=4) for q in range(2)])
    usage, perplexity = codebook_stats(counts)
    assert logged["val/codebook_usage_q1"] == pytest.approx(usage[1].item())
    assert logged["val/codebook_perplexity"] == pytest.approx(perplexity.mean().item(), rel=1e-6)
    assert callback.last_figure == str(tmp_path / "codec" / "epoch_003.png")
    assert Image.open(callback.last_figure).size[0] == 2 * (1600 // 256 + 1)
    with pytest.raises(ConfigError, match="both"):
        CodecMetrics(student_source="student.features.quantized")


def test_teacher_cosine_through_a_distillation_term(tmp_path):
    """The term's projected student vs its aligned teacher, over the frames the term counts."""
    from torch import nn

    from lit_distill.losses import CodecFeatureDistillation

    torch.manual_seed(1)
    term = CodecFeatureDistillation(student_dim=6, teacher_dim=3, alignment="position", hop_length=320)
    callback = CodecMetrics(mel_fft_sizes=[256], teacher_terms=["distill"], spectrogram=False)
    logged: dict[str, float] = {}
    module = SimpleNamespace(student=SimpleNamespace(codebook_size=4), losses=nn.ModuleDict({"distill": term}),
                             log=lambda name, value: logged.__setitem__(name, float(value)))
    trainer = SimpleNamespace(sanity_checking=False, strategy=FakeStrategy(), is_global_zero=True)
    callback.on_validation_epoch_start(trainer, module)
    wave = torch.randn(2, 1, 1600)  # 5 frames of 320 samples
    mask = torch.ones(2, 1600, dtype=torch.bool)
    mask[1, 700:] = False  # sample 1: frames 0..2 real
    s, t = torch.randn(2, 6, 5), torch.randn(2, 4, 3)  # teacher 4 steps: frame 4 is positional padding
    student = ModelOutput(features={"reconstruction": wave, "layer_outputs.0": s})
    batch = {"waveform": wave, "waveform_mask": mask}
    callback.on_validation_batch_end(trainer, module, {"student": student, "teacher": ModelOutput(hidden_states=(t,))},
                                     batch, 0)
    callback.on_validation_epoch_end(trainer, module)
    projected = s.transpose(1, 2) @ term.projector.weight.detach().t()
    frames = [(0, f) for f in range(4)] + [(1, f) for f in range(3)]
    expected = sum(torch.nn.functional.cosine_similarity(projected[b, f], t[b, f], dim=0) for b, f in frames) / 7
    assert logged["val/teacher_cosine_distill"] == pytest.approx(expected.item(), rel=1e-5)
    module.losses = nn.ModuleDict()
    with pytest.raises(ConfigError, match="'distill' is not a CodecFeatureDistillation term"):
        callback.on_validation_batch_end(trainer, module, {"student": student, "teacher": ModelOutput(
            hidden_states=(t,))}, batch, 0)


@pytest.mark.slow
def test_codec_config_fits_two_steps(tmp_path):
    sentences = ["The quick brown fox jumps over the lazy dog.", "She opened the window and listened to the rain.",
                 "Two birds were building a nest under the roof.", "We walked along the beach at sunset."]
    manifest = synthesize_speech_corpus(tmp_path / "synth", sentences, voices=["en-us"], speeds=[175])
    assert len(manifest.read_text().splitlines()) == 4
    run = run_cli([
        "fit", "--config", str(CONFIG), f"--data.init_args.manifest={manifest}",
        "--data.init_args.synthesize=false", "--data.init_args.batch_size=2", "--data.init_args.val_fraction=0.25",
        "--data.init_args.crop_seconds=0.5",
        "--model.init_args.student.init_args.channels=4", "--model.init_args.student.init_args.dim=16",
        "--model.init_args.student.init_args.dilations=[1]", "--model.init_args.student.init_args.codebook_size=16",
        "--trainer.max_steps=2", "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
        "--trainer.num_sanity_val_steps=0", f"--trainer.default_root_dir={tmp_path / 'run'}",
    ])
    assert run.trainer.global_step == 2
    metrics = run.trainer.callback_metrics
    for key in ("val/loss", "val/mel", "val/wave", "val/commit", "val/mel_distance", "val/si_snr"):
        assert torch.isfinite(metrics[key]), key
    assert 0 < metrics["val/codebook_usage"] <= 1 and 1 <= metrics["val/codebook_perplexity"] <= 16
    assert metrics["val/commit"] > 0
    figures = list((tmp_path / "run").rglob("codec/epoch_*.png"))
    assert figures and Image.open(figures[0]).mode == "L"
    codec = run.model.student
    assert codec.frame_rate == 50.0
    first = json.loads(manifest.read_text().splitlines()[0])
    assert first["sample_rate"] == 16000


def test_codebook_use_of_training_batches_every_n_steps():
    torch.manual_seed(0)
    codec = ConvCodec(channels=2, dim=4, dilations=[1], num_quantizers=2, codebook_size=8)
    callback = CodecMetrics(train_every_n_steps=3)
    logged: list[tuple[int, str, float]] = []
    trainer = SimpleNamespace(global_step=0, strategy=FakeStrategy())
    module = SimpleNamespace(student=codec, log=lambda name, value, **kw: logged.append((trainer.global_step, name,
                                                                                          float(value))))
    wave = torch.randn(2, 1, 1600) * 0.1  # 5 frames each
    mask = torch.ones(2, 1600, dtype=torch.bool)
    mask[1, 640:] = False  # sample 1: frames 0, 1 real
    for step in range(7):
        trainer.global_step = step
        callback.on_train_batch_end(trainer, module, None, {"waveform": wave, "waveform_mask": mask}, step)
    assert sorted({s for s, _, _ in logged}) == [0, 3, 6]  # a trajectory: every 3 steps
    codes = codec.encode(wave)
    codes[1, :, 2:] = -1
    counts = torch.stack([torch.bincount(codes[:, q][codes[:, q] >= 0], minlength=8) for q in range(2)])
    usage, perplexity = codebook_stats(counts)
    at_six = {name: value for s, name, value in logged if s == 6}
    assert at_six["train/codebook_usage"] == pytest.approx(usage.mean().item())
    assert at_six["train/codebook_perplexity_q1"] == pytest.approx(perplexity[1].item(), rel=1e-6)
    assert codec.training  # encode ran in eval mode and restored training
    with pytest.raises(ConfigError, match="train_every_n_steps"):
        CodecMetrics(train_every_n_steps=-1)
