"""The speech CTC teacher configs train for two steps through the real CLI, export, and load back
through the adapters the distillation configs use (HFSpeechEncoder, HFWhisperEncoder)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from datamodules.speech import write_wav
from lit_distill.cli import main
from lit_distill.experiment import read_metrics
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
          "--model.init_args.scheduler.init_args.total_steps=2", f"--trainer.default_root_dir={tmp_path}",
          "--trainer.logger=lightning.pytorch.loggers.CSVLogger", f"--trainer.logger.save_dir={tmp_path}", *extra])
    ckpt = next(tmp_path.rglob("last.ckpt"))
    main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "export")])
    state = load_checkpoint_file(str(ckpt), "ckpt")
    assert state["global_step"] == 2
    held_out = read_metrics(tmp_path).trajectories["val/ctc"]  # a trajectory, validated after the last step
    assert [step for step, _ in held_out] == [1] and all(math.isfinite(v) for _, v in held_out)
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


def token_code(seed: int, n: int) -> tuple[list[torch.Tensor], list[list[int]]]:
    """Token k + 1 always sounds like character k + 1, token 0 is silence: a probe can read it exactly."""
    g = torch.Generator().manual_seed(seed)
    tokens, targets = [], []
    for _ in range(n):
        chars = torch.randint(1, 6, (5,), generator=g).tolist()
        tokens.append(torch.tensor([x for c in chars for x in (c, c, 0)]))
        targets.append(chars)
    return tokens, targets


def test_ctc_probe_config_learns_a_token_to_character_code(tmp_path):
    from lit_distill.losses import ctc_loss

    (train_tok, train_t), (val_tok, val_t) = token_code(0, 12), token_code(1, 4)
    data = {"vocab_size": 6, "num_classes": 29, "train": {"tokens": train_tok, "targets": train_t},
            "val": {"tokens": val_tok, "targets": val_t}}
    torch.save(data, tmp_path / "tokens.pt")
    main(["fit", "--config", str(CTC / "ctc-probe_tokens.yaml"), f"--data.init_args.path={tmp_path / 'tokens.pt'}",
          "--trainer.max_steps=150", "--trainer.val_check_interval=150", "--trainer.log_every_n_steps=1",
          f"--trainer.default_root_dir={tmp_path}", "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
          f"--trainer.logger.save_dir={tmp_path}"])
    state = load_checkpoint_file(str(next(tmp_path.rglob("last.ckpt"))), "ckpt")
    table = state["state_dict"]["student.module.weight"]
    assert state["global_step"] == 150 and table.shape == (6, 29)
    # the objective and optimiser of the hand-written probe it replaces: full-batch Adam(0.2, no weight
    # decay) on the summed CTC loss per character, from a zero table
    reference = torch.zeros(6, 29, requires_grad=True)
    optimizer = torch.optim.Adam([reference], lr=0.2)
    padded = torch.nn.utils.rnn.pad_sequence(train_tok, batch_first=True)
    lengths = torch.tensor([len(t) for t in train_tok])
    for _ in range(150):
        optimizer.zero_grad()
        log_probs = reference[padded].log_softmax(-1).transpose(0, 1)
        loss = torch.nn.functional.ctc_loss(log_probs, torch.tensor(train_t), lengths, torch.tensor([5] * 12),
                                            reduction="sum", zero_infinity=True) / 60
        loss.backward()
        optimizer.step()
    torch.testing.assert_close(table, reference.detach(), atol=1e-4, rtol=1e-4)
    frames = [table[t].argmax(-1).tolist() for t in val_tok]
    greedy = [[c for i, c in enumerate(f) if c and (i == 0 or c != f[i - 1])] for f in frames]
    assert greedy == val_t  # the held-out sequences are read exactly
    # the logged held-out loss is CTC nats per character over the whole split (reduction: label)
    metrics = (next(tmp_path.rglob("metrics.csv"))).read_text().splitlines()
    header, values = metrics[0].split(","), [line.split(",") for line in metrics[1:]]
    logged = [float(row[header.index("val/ctc")]) for row in values if row[header.index("val/ctc")]]
    tokens = torch.nn.utils.rnn.pad_sequence(val_tok, batch_first=True)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(t), dtype=torch.bool) for t in val_tok], batch_first=True)
    direct = ctc_loss(table[tokens].double(), torch.tensor(val_t), torch.tensor([5] * 4), mask, reduction="label")
    assert logged[-1] == pytest.approx(float(direct), rel=1e-4) and 0 < logged[-1] < 0.5  # uniform: ~3 x ln 29 = 10
