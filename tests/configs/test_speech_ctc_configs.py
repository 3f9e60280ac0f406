"""The speech CTC teacher configs train for two steps through the real CLI, export, and load back
through the adapters the distillation configs use (HFSpeechEncoder, HFWhisperEncoder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from datamodules.speech import write_wav
from lit_distill.cli import main
from lit_distill.export import build_student, load_checkpoint_file
from lit_distill.models import CTCHead, HFModel, HFSpeechEncoder, HFWhisperEncoder

REPO = Path(__file__).resolve().parents[2]
CTC = REPO / "configs" / "speech" / "ctc"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """Ten noise 'utterances' (0.3-1.2 s) with transcripts: enough for two CTC steps."""
    out = tmp_path_factory.mktemp("ctc_corpus")
    g = torch.Generator().manual_seed(0)
    lines = []
    for i in range(10):
        n = 4800 + 1600 * i
        write_wav(out / f"u{i}.wav", 0.1 * torch.randn(1, n, generator=g), 16000)
        lines.append(json.dumps({"path": f"u{i}.wav", "text": f"word {i} is here", "duration": n / 16000}))
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return out / "manifest.jsonl"


def fit_and_export(config: Path, manifest: Path, tmp_path: Path, *extra: str) -> tuple[Path, Path]:
    main(["fit", "--config", str(config), f"--data.init_args.manifest={manifest}", "--data.init_args.synthesize=false",
          "--data.init_args.batch_size=4", "--trainer.max_steps=2", "--trainer.val_check_interval=2",
          "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false", "--trainer.accelerator=cpu",
          "--model.init_args.scheduler.init_args.total_steps=2", f"--trainer.default_root_dir={tmp_path}", *extra])
    ckpt = next(tmp_path.rglob("last.ckpt"))
    main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "export")])
    state = load_checkpoint_file(str(ckpt), "ckpt")
    assert state["global_step"] == 2
    scores = [c.get("best_model_score") for c in state["callbacks"].values() if "best_model_score" in c]
    assert scores and all(torch.isfinite(s) for s in scores)  # val/loss: a finite CTC loss on held-out data
    return ckpt, tmp_path / "export"


def test_hubert_ctc_config_trains_exports_and_loads_as_the_sm_teacher(manifest, tmp_path):
    ckpt, export = fit_and_export(CTC / "hubert-ctc-tiny_synth.yaml", manifest, tmp_path)
    trained = build_student(load_checkpoint_file(str(ckpt), "ckpt")).eval()
    assert isinstance(trained, HFModel) and trained.output_size == 29  # linked from the data's alphabet
    loaded = HFSpeechEncoder(path=str(export), normalize=True).eval()
    again = HFModel("speech-ctc", path=str(export), normalize=True, num_classes=29).eval()
    wave = torch.randn(1, 1, 8000)
    with torch.no_grad():
        mine, theirs, whole = trained(waveform=wave), loaded(waveform=wave), again(waveform=wave)
    torch.testing.assert_close(whole.logits, mine.logits)
    assert len(theirs.hidden_states) == 4
    torch.testing.assert_close(theirs.features["last_hidden_state"], mine.features["last_hidden_state"])


def test_whisper_ctc_config_trains_exports_and_loads_as_the_lm_spt_encoder(manifest, tmp_path):
    positions = "--model.init_args.student.init_args.encoder.init_args.config"
    config = {"d_model": 64, "encoder_layers": 2, "encoder_attention_heads": 4, "encoder_ffn_dim": 256,
              "num_mel_bins": 80, "max_source_positions": 75, "dropout": 0.05}  # a 1.5 s window
    ckpt, export = fit_and_export(CTC / "whisper-ctc-tiny_synth.yaml", manifest, tmp_path,
                                  f"{positions}={json.dumps(config)}")
    trained = build_student(load_checkpoint_file(str(ckpt), "ckpt")).eval()
    assert isinstance(trained, CTCHead) and trained.output_size == 29
    encoder = HFWhisperEncoder(path=str(export)).eval()
    whole = CTCHead(HFWhisperEncoder(path=str(export)), num_classes=29, path=str(export)).eval()
    assert encoder.num_frames == 75
    wave = torch.randn(1, 1, 12000)
    with torch.no_grad():
        mine, theirs, again = trained(waveform=wave), encoder(waveform=wave), whole(waveform=wave)
    torch.testing.assert_close(theirs.features["last_hidden_state"], mine.features["last_hidden_state"])
    torch.testing.assert_close(again.logits, mine.logits)
