"""Speech data: waveforms with transcripts, and a real speech corpus synthesised with ``espeak-ng``.

Sources:

* a JSONL manifest, one record per line: ``{"path": ..., "text": ..., "duration": ...}``
  (``path`` relative to the manifest's folder or absolute; further fields are ignored);
* a LibriSpeech-style folder: ``<root>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt``
  (lines ``<utterance-id> <TRANSCRIPT>``) beside ``<utterance-id>.flac`` or ``.wav``.

:func:`synthesize_speech_corpus` writes such a manifest from English sentences spoken by
Debian's ``espeak-ng`` (several voices and speeds, resampled to 16 kHz), so tests and examples
train on real speech without any download.

Every batch is a dict (``B`` = batch size, ``T`` = the longest waveform of the batch)::

    {
        "inputs": {"waveform": FloatTensor[B, 1, T]},  # mono, in [-1, 1], zero-padded at the end
        "waveform": FloatTensor[B, 1, T],              # the same tensor, for loss sources (batch.waveform)
        "waveform_mask": BoolTensor[B, T],             # True on real samples, False on padding
        "lengths": LongTensor[B],                      # real samples per waveform
        "texts": list[str],                            # transcripts
    }

With ``teacher_tokenizer`` set (DM-Codec's LM-guided mode: a text teacher reads the
transcripts), ``inputs`` is replaced by per-side entries (``L`` = the longest tokenised transcript
of the batch, at most ``teacher_max_length``); the other keys stay::

    {
        "student_inputs": {"waveform": FloatTensor[B, 1, T]},      # the codec's input
        "teacher_inputs": {"input_ids": LongTensor[B, L],         # transcripts, right-padded
                           "attention_mask": LongTensor[B, L]},   # 1 on real tokens
        "teacher_token_mask": BoolTensor[B, L],                   # attention_mask as bool (batch.teacher_token_mask)
        "waveform": ..., "waveform_mask": ..., "lengths": ..., "texts": ...,  # as above
    }

Training waveforms are random crops of ``crop_seconds`` (shorter utterances are kept whole and
padded); validation uses the deterministic centre crop or, with ``val_crop: full``, the whole
utterance.

Audio I/O: WAV (8/16/32-bit PCM) is read and written with Python's :mod:`wave`, so no audio
backend is needed. Other formats (e.g. LibriSpeech's FLAC) go through ``torchaudio.load``, which
needs ``torchcodec`` installed; convert to WAV otherwise.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
import torchaudio
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datamodules.records import EpochLoaders, epoch_loader
from lit_distill.errors import ConfigError, MissingPathError

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


# ----------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Utterance:
    """One audio file and its transcript."""

    path: Path
    text: str


def read_manifest(path: str | Path, field: str = "manifest") -> list[Utterance]:
    """Utterances of a JSONL manifest (``path``, ``text`` per record; paths relative to its folder)."""
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"{field}: {str(path)!r} does not exist; expected a JSONL file with "
                               "records {\"path\": ..., \"text\": ..., \"duration\": ...}")
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{field}: {path}:{lineno}: invalid JSON ({err})") from err
        if not isinstance(rec, dict) or "path" not in rec or "text" not in rec:
            raise ConfigError(f"{field}: {path}:{lineno}: a record needs 'path' and 'text'")
        audio = Path(rec["path"])
        items.append(Utterance(audio if audio.is_absolute() else path.parent / audio, str(rec["text"])))
    if not items:
        raise ConfigError(f"{field}: {str(path)!r} holds no records")
    return items


def read_librispeech(root: str | Path, field: str = "root") -> list[Utterance]:
    """Utterances of a LibriSpeech-style tree (``<speaker>/<chapter>/*.trans.txt`` + audio)."""
    root = Path(root)
    if not root.is_dir():
        raise MissingPathError(f"{field}: {str(root)!r} is not a directory; expected "
                               "<root>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt with audio beside it")
    items = []
    for trans in sorted(root.glob("*/*/*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            audio = next((trans.parent / (utt_id + ext) for ext in AUDIO_EXTENSIONS
                          if (trans.parent / (utt_id + ext)).is_file()), None)
            if audio is None:
                raise MissingPathError(f"{field}: {trans} names utterance {utt_id!r} but neither "
                                       f"{utt_id}.flac nor {utt_id}.wav exists beside it")
            items.append(Utterance(audio, text))
    if not items:
        raise ConfigError(f"{field}: no <speaker>/<chapter>/*.trans.txt transcripts under {str(root)!r}")
    return items


# ----------------------------------------------------------------------------- dataset
class SpeechDataset(Dataset):
    """Utterances decoded on access to mono ``sample_rate`` waveforms, optionally cropped.

    An item is ``(waveform [T], text)`` with ``T <= crop_samples`` when cropping.

    Args:
        items: the utterances.
        sample_rate: target rate (files at other rates are resampled).
        crop_samples: crop length in samples; None keeps whole utterances.
        random_crop: random crop offsets (training); False takes the centre.
    """

    def __init__(self, items: Sequence[Utterance], sample_rate: int, crop_samples: int | None,
                 random_crop: bool) -> None:
        self.items, self.sample_rate = list(items), sample_rate
        self.crop_samples, self.random_crop = crop_samples, random_crop

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Tensor, str]:
        item = self.items[i]
        waveform, rate = read_audio(item.path)
        mono = to_mono(waveform, rate, self.sample_rate)
        n, crop = mono.numel(), self.crop_samples
        if crop is not None and n > crop:
            start = int(torch.randint(n - crop + 1, ())) if self.random_crop else (n - crop) // 2
            mono = mono[start:start + crop]
        return mono, item.text


def collate_speech(samples: list[tuple[Tensor, str]]) -> dict[str, Any]:
    """Pad ``(waveform [T_i], text)`` samples at the end into the batch contract of this module."""
    lengths = torch.tensor([s[0].numel() for s in samples], dtype=torch.long)
    longest = int(lengths.max())
    waveform = torch.stack([F.pad(s[0], (0, longest - s[0].numel())) for s in samples])[:, None]
    mask = torch.arange(longest)[None, :] < lengths[:, None]
    return {"inputs": {"waveform": waveform}, "waveform": waveform, "waveform_mask": mask,
            "lengths": lengths, "texts": [s[1] for s in samples]}


class TranscriptCollate:
    """Collate for a text teacher: :func:`collate_speech` plus the transcripts tokenised.

    Moves ``inputs`` to ``student_inputs`` and adds ``teacher_inputs`` (``input_ids`` /
    ``attention_mask`` ``[B, L]``, right-padded, truncated to ``max_length``) and
    ``teacher_token_mask`` (bool ``[B, L]``); see the module docstring.

    Args:
        tokenizer: a Hugging Face tokenizer with a pad token (right padding is enforced).
        max_length: longest tokenised transcript kept, in tokens.
    """

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer, self.max_length = tokenizer, max_length
        self.tokenizer.padding_side = "right"

    def __call__(self, samples: list[tuple[Tensor, str]]) -> dict[str, Any]:
        batch = collate_speech(samples)
        encoded = self.tokenizer(batch["texts"], padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
        input_ids, attention_mask = encoded["input_ids"].long(), encoded["attention_mask"].long()
        return {"student_inputs": batch.pop("inputs"),
                "teacher_inputs": {"input_ids": input_ids, "attention_mask": attention_mask},
                "teacher_token_mask": attention_mask.bool(), **batch}


class SpeechDataModule(EpochLoaders, LightningDataModule):
    """Waveforms and transcripts from a JSONL manifest or a LibriSpeech-style folder.

    Batches follow the contract in the :mod:`datamodules.speech` module docstring.

    Args:
        manifest: JSONL manifest of the training data (records ``path``, ``text``,
            ``duration``; e.g. written by :func:`synthesize_speech_corpus`).
        root: LibriSpeech-style training folder instead of ``manifest``.
        val_manifest: JSONL manifest of the validation data.
        val_root: LibriSpeech-style validation folder.
        val_fraction: Without ``val_manifest``/``val_root``: the fraction of the training
            utterances held out for validation (at least one), chosen with ``split_seed``.
        sample_rate: Rate every waveform is resampled to (Hz).
        crop_seconds: Length of the random training crops; shorter utterances are kept whole
            and zero-padded in the batch. None trains on whole utterances.
        val_crop: ``center``: validation takes the centre ``crop_seconds`` (deterministic);
            ``full``: whole utterances, padded per batch.
        batch_size: Utterances per batch (per process).
        num_workers: DataLoader worker processes.
        split_seed: Seed of the train/val split, apart from ``seed`` so that runs with different
            seeds see the same data.
        seed: Seed of the training shuffle order (reshuffled each epoch from ``seed + epoch``).
        shuffle: Shuffle the training utterances.
        synthesize: When ``manifest`` does not exist, synthesise an English ``espeak-ng``
            corpus there first (``prepare_data``, with :func:`synthesize_speech_corpus`'s default
            voices and speeds at ``sample_rate``); ``manifest`` must then be named
            ``manifest.jsonl``.
        num_sentences: Sentences spoken when synthesising.
        teacher_tokenizer: A tokenizer for a text teacher (DM-Codec's LM-guided mode): a local
            directory / ``tokenizer.json`` or a hub id, loaded with
            :func:`datamodules.tokenizer_training.load_tokenizer` (it needs a pad token). Batches
            then carry ``student_inputs``, ``teacher_inputs`` and ``teacher_token_mask`` instead of
            ``inputs`` (see the module docstring). None: waveforms only.
        teacher_max_length: Longest tokenised transcript, in tokens (longer ones are truncated).
    """

    def __init__(
        self,
        manifest: str | None = None,
        root: str | None = None,
        val_manifest: str | None = None,
        val_root: str | None = None,
        val_fraction: float = 0.1,
        sample_rate: int = 16000,
        crop_seconds: float | None = 1.0,
        val_crop: Literal["center", "full"] = "center",
        batch_size: int = 8,
        num_workers: int = 0,
        split_seed: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        synthesize: bool = False,
        num_sentences: int = 64,
        teacher_tokenizer: str | None = None,
        teacher_max_length: int = 128,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if (manifest is None) == (root is None):
            raise ConfigError("data: give exactly one of manifest (a JSONL file) or root "
                              "(a LibriSpeech-style folder)")
        if val_manifest is not None and val_root is not None:
            raise ConfigError("data: give at most one of val_manifest or val_root")
        if val_manifest is None and val_root is None and not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1) without val_manifest/val_root, got {val_fraction}")
        if sample_rate < 1000:
            raise ConfigError(f"sample_rate must be at least 1000 Hz, got {sample_rate}")
        if crop_seconds is not None and crop_seconds * sample_rate < 1:
            raise ConfigError(f"crop_seconds must be positive (or null for whole utterances), got {crop_seconds}")
        if val_crop not in ("center", "full"):
            raise ConfigError(f"val_crop: {val_crop!r} is not one of ['center', 'full']")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if synthesize and (manifest is None or Path(manifest).name != "manifest.jsonl"):
            raise ConfigError(f"synthesize: needs manifest: <folder>/manifest.jsonl (got {manifest!r})")
        if teacher_max_length < 1:
            raise ConfigError(f"teacher_max_length must be >= 1, got {teacher_max_length}")
        self.train_dataset: SpeechDataset | None = None
        self.val_dataset: SpeechDataset | None = None
        self.collate: Any = collate_speech

    @property
    def crop_samples(self) -> int | None:
        """Training crop length in samples (None: whole utterances)."""
        seconds = self.hparams.crop_seconds
        return None if seconds is None else round(seconds * self.hparams.sample_rate)

    def prepare_data(self) -> None:
        """Synthesise the corpus when asked and missing (runs on one process)."""
        hp = self.hparams
        if hp.synthesize and not Path(hp.manifest).is_file():
            synthesize_speech_corpus(Path(hp.manifest).parent, sample_rate=hp.sample_rate,
                                     num_sentences=hp.num_sentences, seed=hp.split_seed)

    def _split(self) -> tuple[list[Utterance], list[Utterance]]:
        hp = self.hparams
        train = read_manifest(hp.manifest) if hp.manifest is not None else read_librispeech(hp.root)
        if hp.val_manifest is not None:
            return train, read_manifest(hp.val_manifest, "val_manifest")
        if hp.val_root is not None:
            return train, read_librispeech(hp.val_root, "val_root")
        if len(train) < 2:
            raise ConfigError(f"val_fraction: only {len(train)} utterance(s); need at least 2 to hold one "
                              "out, or give val_manifest")
        n_val = min(max(round(len(train) * hp.val_fraction), 1), len(train) - 1)
        order = list(range(len(train)))
        random.Random(hp.split_seed).shuffle(order)
        held = set(order[:n_val])
        return ([u for i, u in enumerate(train) if i not in held], [u for i, u in enumerate(train) if i in held])

    def setup(self, stage: str | None = None) -> None:
        """Read the manifests / transcripts (audio is decoded per item)."""
        if self.train_dataset is not None:
            return
        hp = self.hparams
        train, val = self._split()
        self.train_dataset = SpeechDataset(train, hp.sample_rate, self.crop_samples, random_crop=True)
        val_crop = self.crop_samples if hp.val_crop == "center" else None
        self.val_dataset = SpeechDataset(val, hp.sample_rate, val_crop, random_crop=False)
        if hp.teacher_tokenizer is not None:
            from datamodules.tokenizer_training import load_tokenizer

            self.collate = TranscriptCollate(load_tokenizer(hp.teacher_tokenizer), hp.teacher_max_length)

    def _loader(self, dataset: SpeechDataset | None, shuffle: bool) -> DataLoader:
        """Batches of ``dataset``: random crops for training, centre crops or whole utterances else."""
        return epoch_loader(self, dataset, shuffle, self.collate)
