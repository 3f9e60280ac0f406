"""Shared plumbing of the text datamodules: read records, split off validation, serve loaders."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from datamodules.checks import check_loader_arguments, read_utf8
from datamodules.local_corpus import split_documents
from lit_distill.checkpointing import ResumableDataLoader, ResumableSampler
from lit_distill.errors import ConfigError, MissingPathError

EXPECTED_DATA = "expected a .txt/.jsonl file or a directory of them"

_EXTENSIONS = {"auto": (".txt", ".jsonl"), "text": (".txt",), "jsonl": (".jsonl",)}
_FORMAT_OF = {".txt": "text", ".jsonl": "jsonl"}
Record = str | tuple[str, str]  # a plain-text document or a (prompt, response) pair


def _input_files(path: str, fmt: str) -> list[tuple[Path, str]]:
    """The data files under ``path`` (sorted) and the format each one is parsed with."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"data path {path!r} does not exist; {EXPECTED_DATA}")
    if p.is_file():
        if fmt == "auto" and p.suffix not in _EXTENSIONS["auto"]:
            raise ConfigError(f"cannot infer the format of {path!r} from its extension; set format")
        return [(p, fmt if fmt != "auto" else _FORMAT_OF[p.suffix])]
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in _EXTENSIONS[fmt])
    if not files:
        raise ConfigError(f"no {'/'.join(_EXTENSIONS[fmt])} files found in directory {path!r}")
    return [(f, fmt if fmt != "auto" else _FORMAT_OF[f.suffix]) for f in files]


def read_records(
    path: str, fmt: str, text_field: str, prompt_field: str, response_field: str, field: str = "data path"
) -> list[Record]:
    """Read documents (blank-line separated in .txt) and JSONL records from a file or directory.

    A JSONL record holding both ``prompt_field`` and ``response_field`` is a pair; otherwise it
    must hold ``text_field``. ``field`` names the config field of ``path`` in error messages
    (e.g. a file that is not UTF-8).
    """
    records: list[Record] = []
    for file, file_fmt in _input_files(path, fmt):
        text = read_utf8(file, field).replace("\r\n", "\n")
        if file_fmt == "text":
            records += [d.strip() for d in re.split(r"\n[ \t]*\n", text) if d.strip()]
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{file}:{lineno}: invalid JSON ({err})") from err
            if isinstance(rec, dict) and prompt_field in rec and response_field in rec:
                records.append((str(rec[prompt_field]), str(rec[response_field])))
            elif isinstance(rec, dict) and text_field in rec:
                records.append(str(rec[text_field]))
            else:
                raise ConfigError(
                    f"{file}:{lineno}: record has neither {text_field!r} nor both "
                    f"{prompt_field!r} and {response_field!r}"
                )
    return records


def epoch_sampler(trainer, dataset, shuffle: bool, seed: int) -> ResumableSampler:
    """A sampler whose order is a pure function of (seed, epoch, world size, rank).

    Lightning calls ``set_epoch`` every epoch (with the restored epoch after
    ``--ckpt_path``), so a resumed run sees exactly the data of an uninterrupted
    one. With N processes, rank r takes every N-th index of the same permutation,
    so N processes with batch B see the same global batches as one process with
    batch N*B. Lightning keeps a ``DistributedSampler`` as it is instead of
    wrapping it. It is a :class:`~lit_distill.checkpointing.ResumableSampler`, so a
    :class:`~lit_distill.checkpointing.ResumableDataLoader` resumes mid-epoch exactly.

    Args:
        trainer: the attached trainer (None outside fit: one process).
        dataset: a map-style dataset.
        shuffle: permute each epoch (False keeps dataset order).
        seed: base seed of the permutations.
    """
    world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    return ResumableSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed)


def epoch_loader(datamodule: LightningDataModule, dataset: Any, shuffle: bool,
                 collate_fn: Callable[[list], Any]) -> ResumableDataLoader:
    """The project's DataLoader over ``dataset``: :func:`epoch_sampler` order, resumable mid-epoch.

    Reads ``batch_size``, ``num_workers`` and ``seed`` from the datamodule's hyperparameters.

    Args:
        datamodule: the datamodule asking (its trainer sets world size and rank).
        dataset: a map-style dataset, or None before ``setup`` (an error).
        shuffle: permute each epoch.
        collate_fn: turns a list of samples into a batch.
    """
    if dataset is None:
        raise RuntimeError("call setup() before requesting dataloaders")
    hp = datamodule.hparams
    return ResumableDataLoader(dataset, batch_size=hp.batch_size,
                               sampler=epoch_sampler(datamodule.trainer, dataset, shuffle, hp.seed),
                               collate_fn=collate_fn, num_workers=hp.num_workers,
                               persistent_workers=hp.num_workers > 0)


class EpochLoaders:
    """Mixin: the four dataloaders of a datamodule with ``train_dataset``/``val_dataset``.

    Training batches are reshuffled each epoch unless ``hparams.shuffle`` is false; validation,
    test and predict batches are the validation split in order. Subclasses implement
    ``_loader(dataset, shuffle)`` (usually :func:`epoch_loader` with their collate function).
    """

    def _loader(self, dataset: Any, shuffle: bool) -> DataLoader:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        """Training batches, reshuffled each epoch from ``seed + epoch`` unless ``shuffle`` is false."""
        return self._loader(self.train_dataset, shuffle=self.hparams.shuffle)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in dataset order."""
        return self._loader(self.val_dataset, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Same as :meth:`val_dataloader`."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """Same as :meth:`val_dataloader` (``predict`` returns the student's outputs per batch)."""
        return self.val_dataloader()


class NestableHyperparameters:
    """Mixin (before ``LightningDataModule``): ``save_hyperparameters`` that also works nested."""

    def save_hyperparameters(self, *args: Any, **kwargs: Any) -> None:
        """Lightning's, but a datamodule nested in another one (``CachedTeacherDataModule.data``)
        records its own arguments: LightningCLI hands every datamodule the outer ``data`` config."""
        from pydoc import locate

        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

        given, frame = _given_hyperparameters.get(), inspect.currentframe().f_back
        nested = given is not None and "_class_path" in given and locate(given["_class_path"]) is not type(self)
        token = _given_hyperparameters.set(None) if nested else None
        try:
            super().save_hyperparameters(*args, frame=frame, **kwargs)
        finally:
            if token is not None:
                _given_hyperparameters.reset(token)


class RecordsDataModule(NestableHyperparameters, EpochLoaders, LightningDataModule):
    """Base of datamodules that turn text records (documents or prompt/response pairs) into samples.

    A subclass calls ``save_hyperparameters()`` (the arguments ``train_path``,
    ``val_path``, ``val_fraction``, ``format``, ``text_field``, ``prompt_field``,
    ``response_field``, ``max_length``, ``batch_size``, ``num_workers``, ``seed`` and
    ``shuffle`` are read from there), then :meth:`check_paths`, and implements
    :meth:`_build` (records → samples) and :meth:`collate_fn`.
    """

    skip_reason = "whose response does not fit in max_length tokens"

    def check_paths(self) -> None:
        """Fail early on arguments that cannot work (before any tokenizer is loaded)."""
        hp = self.hparams
        if hp.max_length < 2:
            raise ConfigError(f"max_length must be at least 2, got {hp.max_length}")
        check_loader_arguments(hp.batch_size, hp.num_workers)
        if hp.val_path is None and not 0.0 < hp.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1) without val_path, got {hp.val_fraction}")
        for name in ("train_path", "val_path"):
            path = hp[name]
            if path is not None and not str(path).strip():
                raise ConfigError(f"{name}: the path is empty; {EXPECTED_DATA}")
            if path is not None and not Path(path).exists():
                raise MissingPathError(f"{name} {path!r} does not exist; {EXPECTED_DATA}")
        self.train_dataset: list | None = None  # map-style datasets (plain lists)
        self.val_dataset: list | None = None
        self.num_skipped: dict[str, int] = {}

    def _build(self, records: list, where: str, split: str) -> list:
        """Turn records into samples (subclasses)."""
        raise NotImplementedError

    def collate_fn(self) -> Callable[[list], dict[str, Any]]:
        """The batch collator (subclasses)."""
        raise NotImplementedError

    def split_records(self) -> dict[str, tuple[list[Record], str]]:
        """The records of each split before tokenisation, as :meth:`setup` splits them.

        Returns:
            ``{"train": (records, where), "val": (records, where)}``; ``where`` names the file or
            split the records came from, for error messages. Without ``val_path`` the validation
            records are the seeded ``val_fraction`` split of the training file (document level).
        """
        hp = self.hparams
        fields = (hp.text_field, hp.prompt_field, hp.response_field)
        train, where = read_records(hp.train_path, hp.format, *fields, "train_path"), repr(hp.train_path)
        if not train:
            raise ConfigError(f"train_path {where} holds no documents or records")
        if hp.val_path is not None:
            val, val_where = read_records(hp.val_path, hp.format, *fields, "val_path"), repr(hp.val_path)
            if not val:
                raise ConfigError(f"val_path {val_where} holds no documents or records")
        elif len(train) < 2:
            raise ConfigError(f"train_path {where} has fewer than 2 documents; cannot split off val")
        else:
            train, val = split_documents(train, hp.val_fraction, hp.seed)
            val_where = f"the validation split of {where}"
        return {"train": (train, where), "val": (val, val_where)}

    def setup(self, stage: str | None = None) -> None:
        """Read and tokenize the data once (cached in memory for all stages)."""
        if self.train_dataset is not None:
            return
        splits = self.split_records()
        self.train_dataset = self._build(*splits["train"], "train")
        self.val_dataset = self._build(*splits["val"], "val")
        if n_skipped := sum(self.num_skipped.values()):
            hp = self.hparams
            rank_zero_warn(f"skipped {n_skipped} prompt/response pair(s) {self.num_skipped} "
                           f"{self.skip_reason.replace('max_length', f'max_length={hp.max_length}')}")

    def _loader(self, dataset: list | None, shuffle: bool) -> DataLoader:
        """A DataLoader over ``dataset`` (see :func:`epoch_loader`)."""
        return epoch_loader(self, dataset, shuffle, self.collate_fn())
