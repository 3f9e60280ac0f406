"""Text classification and sentence pairs for encoder distillation, each teacher with its own tokenizer.

Records come from CSV (a header row) or JSONL files with a text field, an optional second text
field (sentence pairs) and a label field (absent or ``unlabelled: true`` for embedding
distillation on raw text). Batches::

    {"inputs": {"input_ids": [B, L], "attention_mask": [B, L]},          # the student's tokenizer
     "teacher_inputs": {"<name>_input_ids": ..., "<name>_attention_mask": ...},  # per teacher tokenizer
     "labels": [B]}                                                       # class indices, when labelled

``teacher_inputs`` is there only when ``teacher_tokenizers`` names some (a ``MultiModel`` teacher
renames them back to ``input_ids`` per member); without it the teacher reads ``inputs``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule

from datamodules.checks import check_loader_arguments, read_utf8
from datamodules.records import EpochLoaders, NestableHyperparameters, epoch_loader
from lit_distill.errors import ConfigError, MissingPathError


def read_labelled_records(path: str, field: str) -> list[dict[str, Any]]:
    """Rows of a ``.csv`` (header row) or ``.jsonl`` file, or of every such file in a directory."""
    p = Path(path)
    if not p.exists():
        raise MissingPathError(f"{field} {path!r} does not exist; expected a .csv/.jsonl file or a directory of them")
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.suffix in (".csv", ".jsonl"))
    if not files:
        raise ConfigError(f"{field}: no .csv/.jsonl files in {path!r}")
    rows: list[dict[str, Any]] = []
    for file in files:
        text = read_utf8(file, field)
        if file.suffix == ".csv":
            rows += list(csv.DictReader(io.StringIO(text)))
        elif file.suffix == ".jsonl":
            for lineno, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ConfigError(f"{field}: {file}:{lineno} is not JSON ({err.msg})") from None
        else:
            raise ConfigError(f"{field}: cannot read {file} (expected .csv or .jsonl)")
    return rows


class TextClassificationDataModule(NestableHyperparameters, EpochLoaders, LightningDataModule):
    """Labelled texts or sentence pairs (or unlabelled texts), tokenised for the student and each teacher.

    Args:
        train_path: ``.csv`` / ``.jsonl`` file or directory.
        val_path: the same for validation.
        tokenizer: the student's tokenizer (directory, ``tokenizer.json`` or hub id).
        teacher_tokenizers: ``{name: tokenizer}`` for teachers with their own tokenizer; their
            tokens go to ``teacher_inputs`` as ``<name>_input_ids`` / ``<name>_attention_mask``.
        text_field: column of the (first) text.
        text_pair_field: column of the second text of sentence pairs (None: single texts).
        label_field: column of the label.
        labels: the label names in class order (None: the sorted distinct labels of the training
            data; integer labels are used as they are).
        unlabelled: ignore labels (embedding distillation on raw text).
        max_length: tokens per text (pairs: per pair), truncated.
        batch_size: samples per batch (per process).
        num_workers: data loader workers.
        seed: shuffling seed.
        shuffle: reshuffle training samples every epoch.
    """

    def __init__(self, train_path: str, val_path: str, tokenizer: str, teacher_tokenizers: dict[str, str] | None = None,
                 text_field: str = "text", text_pair_field: str | None = None, label_field: str = "label",
                 labels: list[str] | None = None, unlabelled: bool = False, max_length: int = 128,
                 batch_size: int = 32, num_workers: int = 0, seed: int = 0, shuffle: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_loader_arguments(batch_size, num_workers)
        if max_length < 2:
            raise ConfigError(f"max_length must be at least 2, got {max_length}")
        from datamodules.tokenizer_training import load_tokenizer

        self.tokenizer = load_tokenizer(tokenizer)
        self.teacher_tokenizers = {name: load_tokenizer(path) for name, path in (teacher_tokenizers or {}).items()}
        self.train_dataset: list | None = None
        self.val_dataset: list | None = None
        self.label_names = list(labels) if labels is not None else None

    @property
    def vocab_size(self) -> int:
        """The student tokenizer's size (linked to the student)."""
        return len(self.tokenizer)

    @property
    def pad_token_id(self) -> int:
        """The student tokenizer's pad id (linked to the student)."""
        return int(self.tokenizer.pad_token_id)

    @property
    def num_classes(self) -> int | None:
        """Number of classes (linked to the student), once the labels are known."""
        if self.hparams.unlabelled:
            return None
        if self.label_names is None:
            self.setup()
        return len(self.label_names)

    def _rows(self, path: str, field: str) -> list[dict[str, Any]]:
        rows = read_labelled_records(path, field)
        hp = self.hparams
        needed = [hp.text_field] + ([hp.text_pair_field] if hp.text_pair_field else []) + \
            ([] if hp.unlabelled else [hp.label_field])
        for i, row in enumerate(rows):
            missing = [name for name in needed if name not in row]
            if missing:
                raise ConfigError(f"{field}: record {i} has no {missing} (fields: {sorted(row)})")
        if not rows:
            raise ConfigError(f"{field} {path!r} holds no records")
        return rows

    def setup(self, stage: str | None = None) -> None:
        """Read both splits and fix the label order (from ``labels`` or the training data)."""
        if self.train_dataset is not None:
            return
        hp = self.hparams
        train, val = self._rows(hp.train_path, "train_path"), self._rows(hp.val_path, "val_path")
        if not hp.unlabelled:
            if self.label_names is None:
                values = {str(r[hp.label_field]) for r in train}
                self.label_names = sorted(values, key=lambda v: (not v.lstrip("-").isdigit(), int(v)
                                                                 if v.lstrip("-").isdigit() else 0, v))
            index = {name: i for i, name in enumerate(self.label_names)}
            for field, rows in (("train_path", train), ("val_path", val)):
                unknown = sorted({str(r[hp.label_field]) for r in rows} - set(index))
                if unknown:
                    raise ConfigError(f"{field}: labels {unknown[:5]} are not among {self.label_names}")
                for r in rows:
                    r["_label"] = index[str(r[hp.label_field])]
        self.train_dataset, self.val_dataset = train, val

    def _tokenize(self, tokenizer: Any, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        hp = self.hparams
        first = [str(r[hp.text_field]) for r in rows]
        second = [str(r[hp.text_pair_field]) for r in rows] if hp.text_pair_field else None
        encoded = tokenizer(first, second, truncation=True, max_length=hp.max_length, padding=True,
                            return_tensors="pt")
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def collate_fn(self) -> Callable[[list], dict[str, Any]]:
        """Tokenise a list of records for the student (``inputs``) and each named teacher."""
        def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
            batch: dict[str, Any] = {"inputs": self._tokenize(self.tokenizer, rows)}
            if self.teacher_tokenizers:
                batch["teacher_inputs"] = {f"{name}_{key}": value for name, tok in self.teacher_tokenizers.items()
                                           for key, value in self._tokenize(tok, rows).items()}
            if not self.hparams.unlabelled:
                batch["labels"] = torch.tensor([r["_label"] for r in rows])
            return batch
        return collate

    def _loader(self, dataset: Any, shuffle: bool):
        return epoch_loader(self, dataset, shuffle, self.collate_fn())
