"""Speech data: espeak-ng synthesis, manifests, LibriSpeech folders, crops and padding masks."""

from __future__ import annotations

import json
import math
import wave

import pytest
import torch

from datamodules.speech import (
    SpeechDataModule,
    collate_speech,
    english_sentences,
    read_audio,
    synthesize_speech_corpus,
    write_wav,
)
from lit_distill.errors import ConfigError, MissingPathError

SENTENCES = ["The quick brown fox jumps over the lazy dog.",
             "A small boat drifted slowly along the quiet river.",
             "She opened the window and listened to the rain.",
             "Two birds were building a nest under the roof."]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("speech")
    return synthesize_speech_corpus(out, SENTENCES, voices=["en-us", "en-gb"], speeds=[140, 200], seed=1)


def test_synthesis_writes_real_speech(corpus):
    records = [json.loads(line) for line in corpus.read_text().splitlines()]
    assert [r["text"] for r in records] == SENTENCES
    assert {r["voice"] for r in records} <= {"en-us", "en-gb"} and {r["speed"] for r in records} <= {140, 200}
    for r in records:
        path = corpus.parent / r["path"]
        with wave.open(str(path)) as f:
            assert f.getframerate() == 16000 and f.getnchannels() == 1 and f.getsampwidth() == 2
            assert f.getnframes() / 16000 == pytest.approx(r["duration"], abs=1e-9)
        audio, rate = read_audio(path)
        assert rate == 16000 and audio.shape == (1, round(r["duration"] * 16000))
        # a spoken sentence: about 1-6 s, clearly non-silent, with both loud and quiet stretches
        assert 1.0 < r["duration"] < 6.0
        rms = audio.pow(2).mean().sqrt()
        assert 0.01 < rms < 0.9
        frames = audio[0, : audio.shape[1] // 400 * 400].view(-1, 400).pow(2).mean(-1).sqrt()
        assert frames.max() > 5 * frames.median().clamp_min(1e-4) or frames.min() < 0.1 * frames.max()


def test_speed_changes_duration(tmp_path):
    text = [SENTENCES[0]]
    slow = synthesize_speech_corpus(tmp_path / "slow", text, voices=["en-us"], speeds=[100])
    fast = synthesize_speech_corpus(tmp_path / "fast", text, voices=["en-us"], speeds=[300])
    duration = [json.loads(p.read_text())["duration"] for p in (slow, fast)]
    assert duration[0] > 1.8 * duration[1]


def test_synthesis_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="voices"):
        synthesize_speech_corpus(tmp_path / "a", SENTENCES[:1], voices=["no-such-voice-xx"])
    with pytest.raises(ConfigError, match="speeds"):
        synthesize_speech_corpus(tmp_path / "b", SENTENCES[:1], speeds=[5])
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ConfigError, match="scripts/setup.sh"):
        synthesize_speech_corpus(tmp_path / "c", SENTENCES[:1])


def test_local_english_sentences():
    sentences = english_sentences(6, seed=3)
    assert len(sentences) == 6 and len(set(sentences)) == 6
    assert all(s[0].isupper() and s[-1] in ".?!" and 5 <= len(s.split()) <= 16 for s in sentences)
    assert english_sentences(6, seed=3) == sentences


def test_wav_roundtrip_and_resampling(tmp_path):
    t = torch.arange(8000) / 8000
    tone = 0.5 * torch.sin(2 * math.pi * 440 * t)
    write_wav(tmp_path / "tone.wav", tone, 8000)
    audio, rate = read_audio(tmp_path / "tone.wav")
    assert rate == 8000 and (audio[0] - tone).abs().max() <= 1 / 32767
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps({"path": "tone.wav", "text": f"tone {i}", "duration": 1.0})
                                  for i in range(2)))
    dm = SpeechDataModule(manifest=str(manifest), sample_rate=16000, crop_seconds=None, val_fraction=0.5)
    dm.setup()
    waveform, text = dm.val_dataset[0]
    assert waveform.shape == (16000,)  # resampled 8 kHz → 16 kHz
    spectrum = torch.fft.rfft(waveform).abs()
    assert spectrum.argmax().item() == 440  # 1 s at 16 kHz: bin k is k Hz


def test_datamodule_crops_and_masks(corpus):
    dm = SpeechDataModule(manifest=str(corpus), batch_size=2, crop_seconds=0.5, val_fraction=0.5, val_crop="full")
    dm.setup()
    assert len(dm.train_dataset) == 2 and len(dm.val_dataset) == 2
    batch = next(iter(dm.train_dataloader()))
    assert batch["inputs"]["waveform"].shape == (2, 1, 8000) and batch["waveform"] is batch["inputs"]["waveform"]
    assert batch["waveform_mask"].all() and batch["lengths"].tolist() == [8000, 8000]
    assert all(t in SENTENCES for t in batch["texts"])
    val = next(iter(dm.val_dataloader()))
    lengths = val["lengths"]
    assert val["waveform"].shape == (2, 1, int(lengths.max())) and lengths.min() < lengths.max()
    assert val["waveform_mask"].sum(-1).tolist() == lengths.tolist()
    short = int(lengths.argmin())
    assert val["waveform"][short, 0, int(lengths[short]):].abs().sum() == 0
    # the centre crop is deterministic and is the middle of the utterance
    dm2 = SpeechDataModule(manifest=str(corpus), crop_seconds=0.5, val_fraction=0.5)
    dm2.setup()
    full, _ = dm.val_dataset[0]
    crop, _ = dm2.val_dataset[0]
    start = (full.numel() - 8000) // 2
    assert torch.equal(crop, full[start:start + 8000])


def test_random_crops_differ(corpus):
    dm = SpeechDataModule(manifest=str(corpus), crop_seconds=0.25, val_fraction=0.5)
    dm.setup()
    torch.manual_seed(0)
    crops = [dm.train_dataset[0][0] for _ in range(4)]
    assert all(c.shape == (4000,) for c in crops)
    assert any(not torch.equal(crops[0], c) for c in crops[1:])


def test_collate_pads_at_the_end():
    batch = collate_speech([(torch.ones(3), "a"), (torch.full((5,), 2.0), "b")])
    assert batch["waveform"].shape == (2, 1, 5)
    assert batch["waveform"][0, 0].tolist() == [1, 1, 1, 0, 0]
    assert batch["waveform_mask"].tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert batch["lengths"].tolist() == [3, 5] and batch["texts"] == ["a", "b"]


def test_librispeech_folder(tmp_path, corpus):
    records = [json.loads(line) for line in corpus.read_text().splitlines()]
    chapter = tmp_path / "19" / "198"
    chapter.mkdir(parents=True)
    lines = []
    for i, r in enumerate(records[:3]):
        audio, rate = read_audio(corpus.parent / r["path"])
        write_wav(chapter / f"19-198-{i:04d}.wav", audio, rate)
        lines.append(f"19-198-{i:04d} {r['text'].upper()}")
    (chapter / "19-198.trans.txt").write_text("\n".join(lines) + "\n")
    dm = SpeechDataModule(root=str(tmp_path), val_root=str(tmp_path), crop_seconds=None)
    dm.setup()
    assert len(dm.train_dataset) == 3
    waveform, text = dm.train_dataset[1]
    assert text == records[1]["text"].upper() and waveform.numel() == round(records[1]["duration"] * 16000)


def test_bad_config(tmp_path, corpus):
    with pytest.raises(ConfigError, match="exactly one of manifest"):
        SpeechDataModule()
    with pytest.raises(ConfigError, match="val_crop"):
        SpeechDataModule(manifest=str(corpus), val_crop="middle")
    with pytest.raises(MissingPathError, match="manifest"):
        SpeechDataModule(manifest=str(tmp_path / "none.jsonl")).setup()
    with pytest.raises(ConfigError, match="trans.txt"):
        SpeechDataModule(root=str(tmp_path)).setup()


def test_synthesize_on_prepare_data(tmp_path):
    manifest = tmp_path / "synth" / "manifest.jsonl"
    dm = SpeechDataModule(manifest=str(manifest), synthesize=True, num_sentences=2, crop_seconds=None)
    dm.prepare_data()
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert len(records) == 2 and all(r["duration"] > 0.5 for r in records)
    dm.setup()
    assert len(dm.train_dataset) == 1 and len(dm.val_dataset) == 1
    with pytest.raises(ConfigError, match="manifest.jsonl"):
        SpeechDataModule(manifest=str(tmp_path / "other.jsonl"), synthesize=True)


# ----------------------------------------------------------------------------- text teacher (LM-guided)
@pytest.fixture(scope="module")
def transcript_tokenizer(tmp_path_factory):
    from datamodules.tokenizer_training import train_tokenizer

    out = tmp_path_factory.mktemp("tok")
    (out / "texts.txt").write_text("\n".join(SENTENCES) + "\n")
    return train_tokenizer([out / "texts.txt"], out / "tokenizer", vocab_size=128, algorithm="wordpiece")


def test_teacher_tokenizer_batches(corpus, transcript_tokenizer):
    from datamodules.tokenizer_training import load_tokenizer

    dm = SpeechDataModule(manifest=str(corpus), batch_size=2, crop_seconds=0.5, val_fraction=0.5,
                          val_crop="full", teacher_tokenizer=str(transcript_tokenizer))
    plain = SpeechDataModule(manifest=str(corpus), batch_size=2, crop_seconds=0.5, val_fraction=0.5, val_crop="full")
    dm.setup()
    plain.setup()
    tok = load_tokenizer(str(transcript_tokenizer))
    for batch, ref in zip(dm.val_dataloader(), plain.val_dataloader(), strict=True):
        assert "inputs" not in batch
        assert set(batch) == {"student_inputs", "teacher_inputs", "teacher_token_mask", "waveform",
                              "waveform_mask", "lengths", "texts"}
        # the audio side is the plain batch, unchanged
        assert batch["student_inputs"]["waveform"] is batch["waveform"]
        assert torch.equal(batch["waveform"], ref["waveform"]) and torch.equal(batch["lengths"], ref["lengths"])
        assert torch.equal(batch["waveform_mask"], ref["waveform_mask"]) and batch["texts"] == ref["texts"]
        ids, attn, mask = (batch["teacher_inputs"]["input_ids"], batch["teacher_inputs"]["attention_mask"],
                           batch["teacher_token_mask"])
        assert ids.dtype == attn.dtype == torch.long and mask.dtype == torch.bool
        assert ids.shape == attn.shape == mask.shape and ids.shape[0] == 2
        assert torch.equal(mask, attn.bool())
        counts = attn.sum(-1)
        assert int(counts.max()) == ids.shape[1] and counts.min() < counts.max()  # padded to the longest
        for row, n, text in zip(ids, counts.tolist(), batch["texts"], strict=True):
            # right padding: n real tokens first, then pad ids only
            assert row[n:].eq(tok.pad_token_id).all() and row[:n].ne(tok.pad_token_id).all()
            assert row[:n].tolist() == tok(text)["input_ids"]
            assert tok.decode(row[:n], skip_special_tokens=True) == text
    train = next(iter(dm.train_dataloader()))
    assert train["student_inputs"]["waveform"].shape == (2, 1, 8000)
    assert torch.equal(train["teacher_token_mask"], train["teacher_inputs"]["attention_mask"].bool())


def test_teacher_max_length_truncates(corpus, transcript_tokenizer):
    dm = SpeechDataModule(manifest=str(corpus), batch_size=2, crop_seconds=0.5, val_fraction=0.5,
                          teacher_tokenizer=str(transcript_tokenizer), teacher_max_length=3)
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    assert batch["teacher_inputs"]["input_ids"].shape == (2, 3) and batch["teacher_token_mask"].all()
    with pytest.raises(ConfigError, match="teacher_max_length"):
        SpeechDataModule(manifest=str(corpus), teacher_tokenizer=str(transcript_tokenizer), teacher_max_length=0)


def test_teacher_waveform_joins_the_transcript(corpus, transcript_tokenizer):
    dm = SpeechDataModule(manifest=str(corpus), batch_size=2, crop_seconds=0.5, val_fraction=0.5,
                          val_crop="full", teacher_tokenizer=str(transcript_tokenizer), teacher_waveform=True)
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    teacher = batch["teacher_inputs"]
    assert set(teacher) == {"input_ids", "attention_mask", "waveform", "waveform_mask"}
    assert teacher["waveform"] is batch["waveform"] is batch["student_inputs"]["waveform"]
    assert teacher["waveform_mask"] is batch["waveform_mask"]
    with pytest.raises(ConfigError, match="teacher_waveform: only applies with teacher_tokenizer"):
        SpeechDataModule(manifest=str(corpus), teacher_waveform=True)
