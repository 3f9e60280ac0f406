"""Audio files and a real English speech corpus synthesised with Debian's ``espeak-ng``.

- Audio I/O: WAV (8/16/32-bit PCM) is read and written with Python's :mod:`wave`, so no audio
  backend is needed; other formats (e.g. FLAC) go through ``torchaudio.load``, which needs
  ``torchcodec``. :func:`to_mono` downmixes and resamples.
- :func:`synthesize_speech_corpus` speaks English sentences (found on this machine, or a
  built-in list) with several voices and speeds, resamples to 16 kHz and writes WAV files plus a
  JSONL manifest that :class:`datamodules.speech.SpeechDataModule` reads.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Sequence
from pathlib import Path

import torch
import torchaudio
from torch import Tensor

from lit_distill.errors import ConfigError

SETUP_HINT = "install it with `bash scripts/setup.sh` (Debian package espeak-ng)"
AUDIO_EXTENSIONS = (".wav", ".flac")
DEFAULT_VOICES: tuple[str, ...] = ("en-us", "en-gb", "en-us+f3", "en-gb-scotland")
DEFAULT_SPEEDS: tuple[int, ...] = (140, 175)

# Used when no locally installed English prose is found (see :func:`english_sentences`).
BUILTIN_SENTENCES: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "A small boat drifted slowly along the quiet river.",
    "She opened the window and listened to the rain.",
    "Every morning the baker lights the oven before dawn.",
    "The children counted the stars above the old barn.",
    "He wrote a long letter to his brother in the city.",
    "Fresh bread and warm soup were waiting on the table.",
    "The train to the coast leaves at half past seven.",
    "Music drifted from the open door of the small cafe.",
    "They planted tomatoes and beans in the spring garden.",
    "A gentle wind moved the tall grass on the hill.",
    "The library closes early on the first Sunday of the month.",
    "Please bring a pencil, a ruler and a notebook tomorrow.",
    "The old clock in the hall struck twelve at midnight.",
    "Two birds were building a nest under the roof.",
    "We walked along the beach until the sun went down.",
)


# ----------------------------------------------------------------------------- audio I/O
def read_audio(path: str | Path) -> tuple[Tensor, int]:
    """Read an audio file.

    Args:
        path: a ``.wav`` file (PCM, read with :mod:`wave`) or any format ``torchaudio.load``
            reads (needs ``torchcodec``).

    Returns:
        ``(waveform [C, T] float32 in [-1, 1], sample_rate)``.
    """
    path = Path(path)
    if path.suffix.lower() == ".wav":
        with wave.open(str(path), "rb") as f:
            channels, width, rate, n = f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()
            raw = f.readframes(n)
        if width == 1:  # unsigned 8-bit
            data = (torch.frombuffer(bytearray(raw), dtype=torch.uint8).float() - 128.0) / 128.0
        elif width in (2, 4):
            dtype = torch.int16 if width == 2 else torch.int32
            data = torch.frombuffer(bytearray(raw), dtype=dtype).float() / float(2 ** (8 * width - 1))
        else:
            raise ConfigError(f"audio file {str(path)!r}: {8 * width}-bit WAV is not supported "
                              "(valid: 8, 16 or 32-bit PCM)")
        return data.view(-1, channels).t().contiguous(), rate
    try:
        waveform, rate = torchaudio.load(str(path))
    except ImportError as err:
        raise ConfigError(f"audio file {str(path)!r}: reading {path.suffix} needs torchcodec "
                          "(pip install torchcodec); or convert the data to WAV") from err
    return waveform.float(), rate


def write_wav(path: str | Path, waveform: Tensor, sample_rate: int) -> None:
    """Write a mono or multi-channel waveform as 16-bit PCM WAV (atomically: temp file + rename).

    Args:
        path: output ``.wav`` path.
        waveform: ``[T]`` or ``[C, T]``, values in [-1, 1] (clipped).
        sample_rate: samples per second.
    """
    path = Path(path)
    x = waveform.detach().float().cpu()
    x = x[None] if x.dim() == 1 else x
    pcm = (x.clamp(-1.0, 1.0) * 32767.0).round().to(torch.int16).t().contiguous()
    tmp = path.with_name(path.name + ".tmp")
    with wave.open(str(tmp), "wb") as f:
        f.setnchannels(x.shape[0])
        f.setsampwidth(2)
        f.setframerate(sample_rate)
        f.writeframes(pcm.numpy().tobytes())
    tmp.replace(path)


def to_mono(waveform: Tensor, rate: int, sample_rate: int) -> Tensor:
    """Average the channels of ``[C, T]`` and resample to ``sample_rate``; returns ``[T']``."""
    mono = waveform.mean(0)
    if rate != sample_rate:
        mono = torchaudio.functional.resample(mono, rate, sample_rate)
    return mono


# ----------------------------------------------------------------------------- synthesis
def english_sentences(n: int, min_words: int = 5, max_words: int = 16, seed: int = 0) -> list[str]:
    """Up to ``n`` English sentences from text installed on this machine.

    Sentences are cut from :func:`datamodules.local_corpus.collect_documents` (CPython's own
    documentation), keeping plain prose only (letters, spaces and simple punctuation, between
    ``min_words`` and ``max_words`` words), shuffled with ``seed``. Falls back to
    :data:`BUILTIN_SENTENCES` when fewer than ``n`` are found there.

    Args:
        n: number of sentences wanted.
        min_words: shortest sentence kept, in words.
        max_words: longest sentence kept, in words.
        seed: seed of the selection.
    """
    from datamodules.local_corpus import collect_documents

    plain = re.compile(r"[A-Z][A-Za-z ,;']+[.?!]")
    found: list[str] = []
    seen: set[str] = set()
    for doc in collect_documents():
        for sentence in re.split(r"(?<=[.?!])\s+", " ".join(doc.split())):
            if plain.fullmatch(sentence) and min_words <= len(sentence.split()) <= max_words \
                    and sentence not in seen:
                seen.add(sentence)
                found.append(sentence)
    if len(found) < n:
        found = list(dict.fromkeys([*found, *BUILTIN_SENTENCES]))
    random.Random(seed).shuffle(found)
    return found[:n]


def _voice_table(kind: str | None) -> set[str]:
    """Names espeak-ng accepts: languages, voice names and voice files (``--voices[=variant]``)."""
    args = ["espeak-ng", "--voices" + (f"={kind}" if kind else "")]
    lines = subprocess.run(args, capture_output=True, text=True, check=True).stdout.splitlines()[1:]
    names: set[str] = set()
    for line in lines:
        cols = line.split()
        if len(cols) >= 5:
            names.update({cols[1], cols[3], cols[4], cols[4].rsplit("/", 1)[-1]})
    return names


def check_voices(voices: Sequence[str]) -> None:
    """Fail with a ConfigError on a voice espeak-ng does not know (it would silently fall back).

    A voice is ``<language or voice name>`` or ``<language>+<variant>`` (e.g. ``en-us+f3``).
    """
    languages, variants = _voice_table(None), _voice_table("variant")
    for voice in voices:
        base, _, variant = voice.partition("+")
        if base not in languages or (variant and variant not in variants):
            raise ConfigError(f"voices: {voice!r} is not an espeak-ng voice; valid are languages/voices of "
                              "`espeak-ng --voices=en` (e.g. en-us, en-gb), optionally +<variant> from "
                              "`espeak-ng --voices=variant` (e.g. en-us+f3)")


def _espeak(text: str, voice: str, speed: int, out: Path) -> None:
    """Speak ``text`` with espeak-ng into the WAV file ``out`` (espeak's own rate, 22.05 kHz)."""
    result = subprocess.run(["espeak-ng", "-v", voice, "-s", str(int(speed)), "-w", str(out), "--stdin"],
                            input=text, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not out.is_file():
        raise ConfigError(f"voices: espeak-ng failed for voice {voice!r} at {speed} wpm "
                          f"({result.stderr.strip() or 'no output'}); list valid voices with "
                          "`espeak-ng --voices=en` (variants: `en-us+f3`)")


def synthesize_speech_corpus(
    out_dir: str | Path,
    sentences: Sequence[str] | None = None,
    voices: Sequence[str] = DEFAULT_VOICES,
    speeds: Sequence[int] = DEFAULT_SPEEDS,
    sample_rate: int = 16000,
    seed: int = 0,
    num_sentences: int = 64,
    overwrite: bool = False,
) -> Path:
    """Synthesise real English speech with ``espeak-ng`` and write WAVs plus a JSONL manifest.

    Each sentence is spoken once, by a voice and at a speed drawn with ``seed`` from ``voices``
    and ``speeds``, resampled from espeak's 22.05 kHz to ``sample_rate`` and written as 16-bit
    PCM ``out_dir/wav/<index>.wav``. The manifest ``out_dir/manifest.jsonl`` holds one record
    per utterance: ``path`` (relative to ``out_dir``), ``text``, ``duration`` (seconds),
    ``voice``, ``speed`` (words per minute) and ``sample_rate``. Idempotent: an existing
    manifest is returned as it is unless ``overwrite``.

    Args:
        out_dir: output folder (created).
        sentences: the texts; None takes ``num_sentences`` from :func:`english_sentences`.
        voices: espeak-ng voice names, e.g. ``en-us``, ``en-gb``, ``en-us+f3`` (a variant).
        speeds: speaking rates in words per minute (espeak's ``-s``; 80..450).
        sample_rate: rate of the written WAVs.
        seed: seed of the voice/speed draws (and of the sentence selection).
        num_sentences: how many local sentences to speak when ``sentences`` is None.
        overwrite: synthesise again even when the manifest exists.

    Returns:
        The manifest path.
    """
    out = Path(out_dir)
    manifest = out / "manifest.jsonl"
    if manifest.is_file() and not overwrite:
        return manifest
    if shutil.which("espeak-ng") is None:
        raise ConfigError(f"synthesize_speech_corpus: the espeak-ng program is not installed; {SETUP_HINT}")
    if not voices:
        raise ConfigError("voices: empty; give at least one espeak-ng voice, e.g. ['en-us']")
    if not speeds or any(not 80 <= int(s) <= 450 for s in speeds):
        raise ConfigError(f"speeds: {list(speeds)} must be a non-empty list of words per minute in [80, 450]")
    check_voices(voices)
    texts = list(sentences) if sentences is not None else english_sentences(num_sentences, seed=seed)
    texts = [" ".join(t.split()) for t in texts]
    if not texts or any(not t for t in texts):
        raise ConfigError("sentences: empty list or empty sentence; give non-empty English texts")
    rng = random.Random(seed)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        for i, text in enumerate(texts):
            voice, speed = rng.choice(list(voices)), int(rng.choice(list(speeds)))
            _espeak(text, voice, speed, raw)
            waveform, rate = read_audio(raw)
            mono = to_mono(waveform, rate, sample_rate)
            rel = f"wav/{i:05d}.wav"
            write_wav(out / rel, mono, sample_rate)
            records.append({"path": rel, "text": text, "duration": mono.numel() / sample_rate,
                            "voice": voice, "speed": speed, "sample_rate": sample_rate})
    tmp_manifest = manifest.with_name(manifest.name + ".tmp")
    tmp_manifest.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    tmp_manifest.replace(manifest)
    return manifest
