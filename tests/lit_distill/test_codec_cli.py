"""``python -m lit_distill tokenize`` / ``decode`` on a tiny ConvCodec checkpoint."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from datamodules.speech import read_audio, write_wav
from lit_distill.cli import main
from lit_distill.codec_cli import load_codec
from lit_distill.models.codec import ConvCodec
from lit_distill.models.torch_module import TorchModule

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "speech" / "codec" / "codec_synth.yaml"


def _save_checkpoint(path: Path, student_config: dict, student: torch.nn.Module) -> None:
    """A checkpoint laid out as Lightning writes it for DistillationModule: the student's config
    in hyper_parameters and its weights under 'student.' in state_dict."""
    state = {f"student.{k}": v for k, v in student.state_dict().items()}
    torch.save({"hyper_parameters": {"student": student_config}, "state_dict": state}, path)


@pytest.fixture(scope="module")
def codec_ckpt(tmp_path_factory) -> Path:
    """codec_synth.yaml's student, shrunk (and without k-means init, so the codebooks are used as saved)."""
    student = yaml.safe_load(CONFIG.read_text())["model"]["init_args"]["student"]
    student["init_args"].update(channels=4, max_channels=16, dim=8, codebook_size=16, kmeans_init=False)
    torch.manual_seed(0)
    codec = ConvCodec(**student["init_args"])
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    _save_checkpoint(path, student, codec)
    return path


def test_tokenize_then_decode_matches_forward(codec_ckpt, tmp_path, capsys):
    codec = load_codec(str(codec_ckpt))
    assert isinstance(codec, ConvCodec) and not codec.training
    sr, hop, q = codec.sample_rate, codec.hop_length, codec.num_quantizers
    t = torch.arange(int(0.3 * sr) + 7) / sr  # not a multiple of the hop: the last frame is partial
    wav = tmp_path / "clip.wav"
    write_wav(wav, 0.5 * torch.sin(2 * math.pi * 220 * t), sr)

    main(["tokenize", "--ckpt", str(codec_ckpt), "--out", str(tmp_path / "codes"), str(wav)])
    record = torch.load(tmp_path / "codes" / "clip.codes.pt", weights_only=True)
    n = t.numel()
    frames = math.ceil(n / hop)
    assert record["codes"].shape == (q, frames) and record["codes"].dtype == torch.int16
    assert record["sample_rate"] == sr and record["frame_rate"] == pytest.approx(sr / hop)
    assert record["num_samples"] == n
    assert 0 <= int(record["codes"].min()) and int(record["codes"].max()) < codec.codebook_size

    main(["decode", "--ckpt", str(codec_ckpt), "--out", str(tmp_path / "wav"),
          str(tmp_path / "codes" / "clip.codes.pt")])
    assert "wrote" in capsys.readouterr().out
    decoded, rate = read_audio(tmp_path / "wav" / "clip.wav")
    assert rate == sr and decoded.shape == (1, n)

    x, _ = read_audio(wav)
    with torch.no_grad():
        out = codec(waveform=x[None])
    assert torch.equal(out.features["codes"][0].to(torch.int16), record["codes"])
    expected = out.features["reconstruction"][0].clamp(-1, 1)
    assert expected.abs().max().item() > 1e-3  # a real signal, not silence on both sides
    # 16-bit PCM: the round trip through the WAV file is exact to half a step (plus float noise).
    assert (decoded - expected).abs().max().item() <= 0.5 / 32767 + 1e-5


def test_tokenize_resamples_other_rates(codec_ckpt, tmp_path, capsys):
    wav = tmp_path / "low.wav"
    write_wav(wav, 0.3 * torch.sin(2 * math.pi * 200 * torch.arange(4000) / 8000), 8000)
    main(["tokenize", "--ckpt", str(codec_ckpt), "--out", str(tmp_path), str(wav)])
    assert "resampling 8000 Hz -> 16000 Hz" in capsys.readouterr().out
    record = torch.load(tmp_path / "low.codes.pt", weights_only=True)
    assert record["num_samples"] == 8000 and record["codes"].shape[1] == math.ceil(8000 / 320)


def _exit_message(capsys, args) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_one_line_errors(codec_ckpt, tmp_path, capsys):
    linear = tmp_path / "linear.ckpt"
    _save_checkpoint(linear, {"class_path": "torch.nn.Linear", "init_args": {"in_features": 2, "out_features": 2}},
                     TorchModule(torch.nn.Linear(2, 2)))
    wav = tmp_path / "a.wav"
    write_wav(wav, torch.zeros(800), 16000)
    assert "not a codec" in _exit_message(capsys, ["tokenize", "--ckpt", str(linear), "--out", str(tmp_path), str(wav)])
    assert "no file" in _exit_message(capsys, ["tokenize", "--ckpt", str(codec_ckpt), "--out", str(tmp_path),
                                               str(tmp_path / "missing.wav")])
    assert "no file" in _exit_message(capsys, ["decode", "--ckpt", str(tmp_path / "none.ckpt"), "--out",
                                               str(tmp_path), str(wav)])
    bad = tmp_path / "bad.codes.pt"
    torch.save({"codes": torch.zeros(2, 3, dtype=torch.int16), "sample_rate": 24000, "frame_rate": 75.0}, bad)
    assert "24000 Hz" in _exit_message(capsys, ["decode", "--ckpt", str(codec_ckpt), "--out", str(tmp_path), str(bad)])


@pytest.mark.slow
def test_round_trip_on_a_checkpoint_written_by_fit(tmp_path):
    """One real training step of codec_synth.yaml on a tiny corpus, then tokenize → decode."""
    (tmp_path / "wav").mkdir()
    lines = []
    for i in range(4):
        t = torch.arange(4000) / 16000
        write_wav(tmp_path / "wav" / f"{i}.wav", 0.3 * torch.sin(2 * math.pi * (150 + 40 * i) * t), 16000)
        lines.append(json.dumps({"path": f"wav/{i}.wav", "text": "tone", "duration": 0.25}))
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "lit_distill", "fit", "--config", str(CONFIG),
                    "--data.init_args.manifest", str(tmp_path / "manifest.jsonl"),
                    "--data.init_args.synthesize", "false", "--data.init_args.crop_seconds", "0.25",
                    "--data.init_args.batch_size", "2", "--trainer.max_steps", "1",
                    "--trainer.limit_val_batches", "1", "--trainer.accelerator", "cpu",
                    "--trainer.callbacks", "[]", "--trainer.logger", "false",
                    "--trainer.default_root_dir", str(run)], check=True, cwd=REPO, env=env,
                   capture_output=True)
    ckpt = next(run.rglob("last.ckpt"))
    codec = load_codec(str(ckpt))
    assert codec.num_quantizers == 4 and codec.codebook_size == 256
    wav = tmp_path / "wav" / "0.wav"
    main(["tokenize", "--ckpt", str(ckpt), "--out", str(tmp_path / "out"), str(wav)])
    main(["decode", "--ckpt", str(ckpt), "--out", str(tmp_path / "out"), str(tmp_path / "out" / "0.codes.pt")])
    record = torch.load(tmp_path / "out" / "0.codes.pt", weights_only=True)
    assert record["codes"].shape == (4, math.ceil(4000 / 320)) and record["codes"].dtype == torch.int16
    x, _ = read_audio(wav)
    with torch.no_grad():
        out = codec(waveform=x[None])
    assert torch.equal(out.features["codes"][0].to(torch.int16), record["codes"])
    decoded, rate = read_audio(tmp_path / "out" / "0.wav")
    assert rate == 16000 and decoded.shape == (1, 4000)
    expected = out.features["reconstruction"][0].clamp(-1, 1)
    assert (decoded - expected).abs().max().item() <= 0.5 / 32767 + 1e-5
