"""Speech recognition data: whole utterances with their transcripts as character targets, for CTC.

The utterances come from :class:`datamodules.speech.SpeechDataModule`'s sources (a JSONL
manifest such as :func:`datamodules.speech.synthesize_speech_corpus` writes, or a LibriSpeech
folder) with its seeded train/validation split; they are never cropped (a crop would cut the
transcript). A transcript becomes character ids: lower-cased, characters outside ``alphabet``
dropped, runs of spaces squeezed, ``alphabet[i]`` → ``i + 1`` (0 is the CTC blank). Every batch
is a dict (``B`` utterances, ``T`` samples of the longest, ``S`` characters of the longest
transcript)::

    {
        "inputs": {"waveform": FloatTensor[B, 1, T],      # mono, zero-padded at the end
                   "waveform_mask": BoolTensor[B, T]},    # True on real samples
        "waveform": ..., "waveform_mask": ..., "lengths": LongTensor[B], "texts": list[str],
        "targets": LongTensor[B, S],                      # character ids, right-padded with 0
        "target_lengths": LongTensor[B],                  # characters per transcript
    }

With ``bucket_by_length`` (the default), each batch holds utterances of similar length (the
corpus sorted by length, cut into batches, the batches shuffled each epoch), so a model that
reads the padding as audio sees little of it.

:class:`TokenCTCDataModule` serves the same character targets beside discrete token sequences (a
codec's tokens per utterance, written to a file) for a CTC probe
(:class:`lit_distill.models.TokenCTCProbe`)::

    {
        "inputs": {"input_ids": LongTensor[B, F],        # tokens, right-padded with 0
                   "attention_mask": LongTensor[B, F]},  # 1 on real tokens
        "targets": LongTensor[B, S], "target_lengths": LongTensor[B],
        "loss_mask": BoolTensor[B, S],                   # the target labels: the valid count is their number
    }
"""

from __future__ import annotations

import os
import wave
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

from datamodules.checks import check_loader_arguments
from datamodules.records import EpochLoaders, epoch_loader, epoch_sampler
from datamodules.speech import SpeechDataModule, SpeechDataset, collate_speech, read_audio
from lit_distill.checkpointing import ResumableDataLoader, ResumableSampler
from lit_distill.errors import ConfigError, MissingPathError

ENGLISH_LETTERS = " '" + "abcdefghijklmnopqrstuvwxyz"
BLANK = 0


def text_to_ids(text: str, alphabet: str = ENGLISH_LETTERS) -> list[int]:
    """Character ids ``1..len(alphabet)`` of ``text`` (lower-cased; other characters dropped, spaces squeezed)."""
    kept = "".join(c for c in text.lower() if c in alphabet)
    if " " in alphabet:
        kept = " ".join(kept.split())
    return [alphabet.index(c) + 1 for c in kept]


def ids_to_text(ids: Sequence[int], alphabet: str = ENGLISH_LETTERS) -> str:
    """Inverse of :func:`text_to_ids` (blanks ignored)."""
    return "".join(alphabet[i - 1] for i in ids if i != BLANK)


def audio_samples(path: Any, sample_rate: int) -> int:
    """Length of an audio file in samples at ``sample_rate`` (a WAV header is read, other formats decoded)."""
    if str(path).lower().endswith(".wav"):
        with wave.open(str(path), "rb") as f:
            return round(f.getnframes() * sample_rate / f.getframerate())
    waveform, rate = read_audio(path)
    return round(waveform.shape[-1] * sample_rate / rate)


class CharacterCollate:
    """:func:`datamodules.speech.collate_speech` plus ``waveform_mask`` in ``inputs`` and the
    transcripts as ``targets`` / ``target_lengths`` (see the module docstring)."""

    def __init__(self, alphabet: str) -> None:
        self.alphabet = alphabet

    def __call__(self, samples: list[tuple[torch.Tensor, str]]) -> dict[str, Any]:
        batch = collate_speech(samples)
        batch["inputs"]["waveform_mask"] = batch["waveform_mask"]
        ids = [text_to_ids(text, self.alphabet) for text in batch["texts"]]
        lengths = torch.tensor([len(i) for i in ids], dtype=torch.long)
        targets = torch.zeros(len(ids), max(1, int(lengths.max())), dtype=torch.long)
        for b, row in enumerate(ids):
            targets[b, :len(row)] = torch.tensor(row, dtype=torch.long)
        return {**batch, "targets": targets, "target_lengths": lengths}


class LengthBucketSampler(ResumableSampler):
    """Indices in batches of similar length, the batches in a seeded order per epoch.

    The indices sorted by length are cut into global batches of ``batch_size × world size``
    (the shortest utterances form the one incomplete batch, which always comes last); with
    ``shuffle`` the complete ones are permuted from ``seed + epoch``. Rank ``r`` takes every
    ``world``-th index, so each of its batches comes from one global batch, and resuming skips
    into the epoch as :class:`~lit_distill.checkpointing.ResumableSampler` does.

    Args:
        dataset: the map-style dataset (its length).
        lengths: per item, its length (any comparable size, e.g. samples).
        batch_size: items per batch per process.
        kwargs: ``num_replicas``, ``rank``, ``shuffle``, ``seed`` of ``DistributedSampler``.
    """

    def __init__(self, dataset: Any, lengths: Sequence[int], batch_size: int, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        if len(lengths) != len(dataset):
            raise ValueError(f"LengthBucketSampler: {len(lengths)} lengths for {len(dataset)} items")
        self.lengths, self.batch_size = list(lengths), batch_size

    def order(self) -> list[int]:
        """This rank's indices for the current epoch (before any resume skip)."""
        by_length = sorted(range(len(self.lengths)), key=lambda i: (self.lengths[i], i))
        span = self.batch_size * self.num_replicas
        tail = len(by_length) % span
        batches = [by_length[i:i + span] for i in range(tail, len(by_length), span)]
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        flat = [i for batch in batches for i in batch] + by_length[:tail]
        flat += flat[:self.total_size - len(flat)]  # as DistributedSampler: pad to a multiple of the world
        return flat[self.rank:self.total_size:self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        indices = self.order()
        skip, self._skip = self.pending_skip(), None
        return iter(indices[skip:])


class ASRDataModule(EpochLoaders, LightningDataModule):
    """Whole utterances and character targets for CTC training (batches: see the module docstring).

    Args:
        manifest: JSONL manifest (records ``path``, ``text``; e.g. from
            :func:`datamodules.speech.synthesize_speech_corpus`).
        root: LibriSpeech-style folder instead of ``manifest``.
        val_manifest: JSONL manifest of the validation data.
        val_root: LibriSpeech-style validation folder.
        val_fraction: Without a validation source: the fraction of utterances held out, chosen
            with ``split_seed`` exactly as :class:`~datamodules.speech.SpeechDataModule` does.
        sample_rate: Rate every waveform is resampled to (Hz).
        batch_size: Utterances per batch (per process).
        num_workers: DataLoader worker processes.
        split_seed: Seed of the train/validation split.
        seed: Seed of the training batch order.
        shuffle: Shuffle the training batches.
        synthesize: Synthesise an ``espeak-ng`` corpus at ``manifest`` when it is missing.
        num_sentences: Sentences spoken when synthesising.
        alphabet: The characters the targets use, in class order (class 0 is the blank); the
            model's output classes are ``len(alphabet) + 1`` (``num_classes``, linked to the student).
        bucket_by_length: Batch utterances of similar length together (training and validation).
    """

    def __init__(self, manifest: str | None = None, root: str | None = None, val_manifest: str | None = None,
                 val_root: str | None = None, val_fraction: float = 0.1, sample_rate: int = 16000,
                 batch_size: int = 8, num_workers: int = 0, split_seed: int = 0, seed: int = 0,
                 shuffle: bool = True, synthesize: bool = False, num_sentences: int = 64,
                 alphabet: str = ENGLISH_LETTERS, bucket_by_length: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters()
        if not alphabet or len(set(alphabet)) != len(alphabet) or alphabet != alphabet.lower():
            raise ConfigError(f"alphabet: {alphabet!r} must be non-empty lower-case characters, each once")
        # The utterances, the split and the synthesis are SpeechDataModule's, on whole utterances. It
        # records its own arguments, not the ones LightningCLI is instantiating this module with.
        token = _given_hyperparameters.set(None)
        try:
            self.speech = SpeechDataModule(
                manifest=manifest, root=root, val_manifest=val_manifest, val_root=val_root,
                val_fraction=val_fraction, sample_rate=sample_rate, crop_seconds=None, val_crop="full",
                batch_size=batch_size, num_workers=num_workers, split_seed=split_seed, seed=seed, shuffle=shuffle,
                synthesize=synthesize, num_sentences=num_sentences)
        finally:
            _given_hyperparameters.reset(token)
        self.collate = CharacterCollate(alphabet)
        self.train_dataset: SpeechDataset | None = None
        self.val_dataset: SpeechDataset | None = None

    @property
    def num_classes(self) -> int:
        """CTC output classes: the blank and one per character of ``alphabet``."""
        return len(self.hparams.alphabet) + 1

    def prepare_data(self) -> None:
        """Synthesise the corpus when asked and missing."""
        self.speech.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        """Read the manifests / transcripts and split them (audio is decoded per item)."""
        self.speech.setup(stage)
        self.train_dataset, self.val_dataset = self.speech.train_dataset, self.speech.val_dataset

    def _loader(self, dataset: SpeechDataset | None, shuffle: bool) -> ResumableDataLoader:
        if not self.hparams.bucket_by_length or dataset is None:
            return epoch_loader(self, dataset, shuffle, self.collate)
        hp, trainer = self.hparams, self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        lengths = [audio_samples(item.path, hp.sample_rate) for item in dataset.items]
        sampler = LengthBucketSampler(dataset, lengths, hp.batch_size, num_replicas=world, rank=rank,
                                      shuffle=shuffle, seed=hp.seed)
        return ResumableDataLoader(dataset, batch_size=hp.batch_size, sampler=sampler, collate_fn=self.collate,
                                   num_workers=hp.num_workers, persistent_workers=hp.num_workers > 0)


def pad_right(rows: Sequence[Sequence[int] | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Long ``[N, max(1, L_max)]`` right-padded with 0, and the lengths ``[N]``."""
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    out = torch.zeros(len(rows), max(1, int(lengths.max())), dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out, lengths


def collate_token_targets(samples: list[tuple[torch.Tensor, list[int]]]) -> dict[str, Any]:
    """``(tokens [F_i], character ids)`` samples into the token batch (see the module docstring)."""
    tokens, token_lengths = pad_right([s[0] for s in samples])
    targets, target_lengths = pad_right([s[1] for s in samples])
    attention_mask = (torch.arange(tokens.shape[1])[None] < token_lengths[:, None]).long()
    loss_mask = torch.arange(targets.shape[1])[None] < target_lengths[:, None]
    return {"inputs": {"input_ids": tokens, "attention_mask": attention_mask}, "targets": targets,
            "target_lengths": target_lengths, "loss_mask": loss_mask}


class TokenCTCDataModule(EpochLoaders, LightningDataModule):
    """Token sequences with character targets, for a CTC probe (batches: see the module docstring).

    Args:
        path: a ``torch.save`` file ``{"vocab_size": V, "num_classes": C, "train": {"tokens":
            [LongTensor[F_i], ...], "targets": [[character ids], ...]}, "val": {...}}`` (ids
            ``1..C-1``; 0 is the blank).
        batch_size: sequences per batch; None: the whole split in one batch (full-batch training).
        num_workers: DataLoader worker processes.
        seed: Seed of the training order.
        shuffle: Shuffle the training sequences.
    """

    def __init__(self, path: str, batch_size: int | None = None, num_workers: int = 0, seed: int = 0,
                 shuffle: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters()
        if batch_size is not None:
            check_loader_arguments(batch_size, num_workers)
        if not os.path.isfile(path):
            raise MissingPathError(f"path: no file '{path}' (a torch.save of token sequences and targets)")
        data = torch.load(path, map_location="cpu", weights_only=True)
        self._vocab_size, self._num_classes = int(data["vocab_size"]), int(data["num_classes"])
        self.splits = {part: self._check(data[part], part) for part in ("train", "val")}
        self.train_dataset: list | None = None
        self.val_dataset: list | None = None

    def _check(self, part: dict, name: str) -> list[tuple[torch.Tensor, list[int]]]:
        tokens, targets = list(part["tokens"]), [list(map(int, t)) for t in part["targets"]]
        if not tokens or len(tokens) != len(targets):
            raise ConfigError(f"path: split '{name}' has {len(tokens)} token sequences and {len(targets)} targets")
        if any(len(t) and (int(t.min()) < 0 or int(t.max()) >= self._vocab_size) for t in tokens):
            raise ConfigError(f"path: split '{name}' has token ids outside [0, {self._vocab_size})")
        if any(i < 1 or i >= self._num_classes for t in targets for i in t):
            raise ConfigError(f"path: split '{name}' has target ids outside [1, {self._num_classes}) (0 is the blank)")
        return list(zip((t.long() for t in tokens), targets, strict=True))

    @property
    def vocab_size(self) -> int:
        """Token ids ``[0, vocab_size)``."""
        return self._vocab_size

    @property
    def num_classes(self) -> int:
        """CTC classes, blank included."""
        return self._num_classes

    def setup(self, stage: str | None = None) -> None:
        self.train_dataset, self.val_dataset = self.splits["train"], self.splits["val"]

    def _loader(self, dataset: list | None, shuffle: bool) -> ResumableDataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before requesting dataloaders")
        hp = self.hparams
        return ResumableDataLoader(dataset, batch_size=hp.batch_size or len(dataset),
                                   sampler=epoch_sampler(self.trainer, dataset, shuffle, hp.seed),
                                   collate_fn=collate_token_targets, num_workers=hp.num_workers,
                                   persistent_workers=hp.num_workers > 0)
