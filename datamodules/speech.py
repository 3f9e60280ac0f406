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

With ``teacher_waveform: true`` as well (DM-Codec's combined mode: a speech model and a text
model teach together, see :class:`lit_distill.models.MultiModel`), ``teacher_inputs`` also holds
``waveform`` and ``waveform_mask`` (the same tensors as above).

Training waveforms are random crops of ``crop_seconds`` (shorter utterances are kept whole and
padded); validation uses the deterministic centre crop or, with ``val_crop: full``, the whole
utterance.

Audio I/O and the ``espeak-ng`` corpus live in :mod:`datamodules.speech_corpus` (re-exported
here): WAV needs no audio backend; other formats (e.g. LibriSpeech's FLAC) go through
``torchaudio.load``, which needs ``torchcodec`` installed; convert to WAV otherwise.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datamodules.checks import check_loader_arguments, read_utf8
from datamodules.records import EpochLoaders, epoch_loader
from datamodules.speech_corpus import (  # noqa: F401 - re-exported: the corpus is part of this API
    AUDIO_EXTENSIONS,
    english_sentences,
    read_audio,
    synthesize_speech_corpus,
    to_mono,
    write_wav,
)
from lit_distill.errors import ConfigError, MissingPathError


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
    for lineno, line in enumerate(read_utf8(path, field).splitlines(), 1):
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
        for line in read_utf8(trans, field).splitlines():
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
        waveform: also put ``waveform`` and ``waveform_mask`` into ``teacher_inputs`` (for a
            teacher that reads both, e.g. a speech model beside a language model).
    """

    def __init__(self, tokenizer: Any, max_length: int, waveform: bool = False) -> None:
        self.tokenizer, self.max_length, self.waveform = tokenizer, max_length, waveform
        self.tokenizer.padding_side = "right"

    def __call__(self, samples: list[tuple[Tensor, str]]) -> dict[str, Any]:
        batch = collate_speech(samples)
        encoded = self.tokenizer(batch["texts"], padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
        input_ids, attention_mask = encoded["input_ids"].long(), encoded["attention_mask"].long()
        teacher_inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.waveform:
            teacher_inputs.update(waveform=batch["waveform"], waveform_mask=batch["waveform_mask"])
        return {"student_inputs": batch.pop("inputs"), "teacher_inputs": teacher_inputs,
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
        teacher_waveform: With ``teacher_tokenizer``: also give the teacher the waveform
            (``teacher_inputs.waveform`` / ``waveform_mask``), for DM-Codec's combined mode
            (a speech model and a language model teaching together).
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
        teacher_waveform: bool = False,
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
        check_loader_arguments(batch_size, num_workers)
        if synthesize and (manifest is None or Path(manifest).name != "manifest.jsonl"):
            raise ConfigError(f"synthesize: needs manifest: <folder>/manifest.jsonl (got {manifest!r})")
        if teacher_max_length < 1:
            raise ConfigError(f"teacher_max_length must be >= 1, got {teacher_max_length}")
        if teacher_waveform and teacher_tokenizer is None:
            raise ConfigError("teacher_waveform: only applies with teacher_tokenizer (without it the teacher "
                              "reads batch.inputs, which hold the waveform already); unset it or set the tokenizer")
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

            self.collate = TranscriptCollate(load_tokenizer(hp.teacher_tokenizer), hp.teacher_max_length,
                                             waveform=hp.teacher_waveform)

    def _loader(self, dataset: SpeechDataset | None, shuffle: bool) -> DataLoader:
        """Batches of ``dataset``: random crops for training, centre crops or whole utterances else."""
        return epoch_loader(self, dataset, shuffle, self.collate)
