"""Serve offline teacher caches (``lit_distill.cache``) with another datamodule's batches.

``CachedTeacherDataModule(data=<a datamodule>, cache_dir=DIR)`` yields the wrapped
datamodule's batches unchanged, plus (``B`` batch, ``L`` its padded length, ``k`` the
cache's top-k)::

    "teacher_topk_ids":      LongTensor[B, L, k]   # the teacher's top-k token ids
    "teacher_topk_logprobs": Tensor[B, L, k]       # their log-probs (the cache's float16/bfloat16)
    "teacher_tail_mass":     FloatTensor[B, L]     # 1 − Σ top-k probabilities
    "teacher_temperature":   float                 # the temperature the cache was written at
    "sample_index":          LongTensor[B]         # index of each sample in its split

aligned by sample index and position (right padding: position ``t`` of a sample is
position ``t`` of its cached entry). Padded positions hold ids ``0..k-1``, log-probs 0
and tail 0; they are outside ``loss_mask``. Train batches come from ``DIR/train``,
validation and test batches from ``DIR/val``; ``predict`` serves the wrapped batches only.

Named caches, ``caches: {b: DIR_B, ...}`` (beside ``cache_dir`` or instead of it), are the
cached members of a multi-teacher ensemble: each one's rows go into the batch's teacher inputs
(``teacher_inputs``, created from ``inputs`` when the batch has none), where a
``lit_distill.models.MultiModel`` teacher hands them to a ``lit_distill.models.CachedTopK``
member::

    teacher_inputs["b_topk_ids"]       LongTensor[B, L, k_b]
    teacher_inputs["b_topk_logprobs"]  Tensor[B, L, k_b]
    teacher_inputs["b_tail_mass"]      FloatTensor[B, L]
    teacher_inputs["b_temperature"]    float                # the temperature the cache was written at
    teacher_inputs["b_vocab_size"]     int                  # the cache's V (C for a classifier)

A cache of a sequence-level teacher (a sequence classifier, logits ``[B, C]``; one row per
sample, see ``lit_distill.cache``) is served per sample, without the position axis: ids and
log-probs ``[B, k]``, tail ``[B]``, so a ``CachedTopK`` member returns logits ``[B, C]`` like the
live classifier. Its samples are matched by content (e.g. ``datamodules.TextClassificationDataModule``
records: text and label) and its class count against the data's ``num_classes``; the
tokenizer is not compared, because per-sample rows line up with no tokenizer's positions (the
student and the live teachers may tokenise the texts their own way). Cross-tokenizer
batches (``datamodules.CrossTokenizerDataModule``) get rows per TEACHER position, padded to the
teacher's length (the cache is written in the teacher's own tokens), which ALM and ULD read
through a ``CachedTopK`` member beside the batch's byte alignment.

The wrapped datamodule must have map-style ``train_dataset`` / ``val_dataset`` whose
samples carry ``input_ids`` (e.g. :class:`datamodules.TextDataModule`), or, for caches of
sample rows, any samples of plain values (e.g. :class:`datamodules.TextClassificationDataModule`'s
records). Its own
loader class, sampler, batch size and collate function are kept (so a resumable loader
stays resumable): each sample is paired with its index before collation, which is how
the batch finds its cached rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lit_distill.cache import (
    TeacherCache,
    sample_ids,
    samples_fingerprint,
    teacher_vocab_size,
    tokenizer_fingerprint,
)
from lit_distill.errors import ConfigError, MissingPathError


class _Indexed(Dataset):
    """``dataset[i]`` as ``(i, dataset[i])``."""

    def __init__(self, dataset: Sequence[Any]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.dataset[index]


class _CacheCollator:
    """Collates with the wrapped collator, then adds the cached teacher rows of each sample.

    ``caches`` maps None (the unnamed ``cache_dir``: top-level ``teacher_*`` keys) and member
    names (``<name>_*`` keys in ``teacher_inputs``) to the split's caches.
    """

    def __init__(self, collate: Callable[[list], dict[str, Any]], caches: dict[str | None, TeacherCache]) -> None:
        self.collate = collate
        self.caches = caches

    def __call__(self, pairs: list[tuple[int, Any]]) -> dict[str, Any]:
        indices = [i for i, _ in pairs]
        batch = self.collate([sample for _, sample in pairs])
        for name, cache in self.caches.items():
            ids, logprobs, tail = _sample_rows(cache, pairs) if cache.per_sample \
                else _rows(cache, pairs, _batch_length(batch))
            if name is None:
                batch.update(teacher_topk_ids=ids, teacher_topk_logprobs=logprobs, teacher_tail_mass=tail,
                             teacher_temperature=float(cache.manifest["temperature"]))
                continue
            if "teacher_inputs" not in batch:
                if not isinstance(batch.get("inputs"), dict):
                    raise ConfigError("data.init_args.caches: the wrapped batches have neither 'teacher_inputs' "
                                      "nor 'inputs' to add the cached rows to")
                batch["teacher_inputs"] = dict(batch["inputs"])
            batch["teacher_inputs"].update({f"{name}_topk_ids": ids, f"{name}_topk_logprobs": logprobs,
                                            f"{name}_tail_mass": tail,
                                            f"{name}_temperature": float(cache.manifest["temperature"]),
                                            f"{name}_vocab_size": int(cache.manifest["vocab_size"])})
        batch["sample_index"] = torch.tensor(indices, dtype=torch.long)
        return batch


def _rows(cache: TeacherCache, pairs: list[tuple[int, Any]], length: int) -> tuple[Tensor, Tensor, Tensor]:
    """The cached rows of a batch's samples, right-padded to ``length``: ids ``[B, L, k]``,
    log-probs ``[B, L, k]``, tail ``[B, L]`` (see the module docstring for the padding)."""
    k = cache.top_k
    rows = [cache[i] for i, _ in pairs]
    ids = torch.arange(k).repeat(len(pairs), length, 1)
    logprobs = torch.zeros(len(pairs), length, k, dtype=rows[0][1].dtype)
    tail = torch.zeros(len(pairs), length)
    for b, ((i, sample), (c_ids, c_lp, c_tail)) in enumerate(zip(pairs, rows, strict=True)):
        n = c_ids.shape[0]
        if n != len(sample_ids(sample)) or n > length:
            raise ConfigError(f"data: sample {i} has {len(sample_ids(sample))} tokens but the teacher "
                              f"cache '{cache.dir}' holds {n} positions for it; the cache was "
                              "written for other data")
        ids[b, :n], logprobs[b, :n], tail[b, :n] = c_ids, c_lp, c_tail
    return ids, logprobs, tail


def _sample_rows(cache: TeacherCache, pairs: list[tuple[int, Any]]) -> tuple[Tensor, Tensor, Tensor]:
    """The rows of a cache of sample rows (one per sample): ids ``[B, k]``, log-probs ``[B, k]``, tail ``[B]``."""
    rows = [cache[i] for i, _ in pairs]
    return tuple(torch.cat(parts) for parts in zip(*rows, strict=True))


def _batch_length(batch: dict[str, Any]) -> int:
    """Positions of the batch's teacher tokens: the teacher's own ``input_ids`` when it has some
    (cross-tokenizer batches), else the labels' or inputs' length."""
    teacher = batch.get("teacher_inputs")
    if isinstance(teacher, dict) and isinstance(teacher.get("input_ids"), torch.Tensor):
        return teacher["input_ids"].shape[1]
    labels = batch.get("labels")
    if isinstance(labels, torch.Tensor) and labels.dim() == 2:
        return labels.shape[1]
    inputs = batch.get("inputs") or batch.get("student_inputs") or {}
    if "input_ids" in inputs:
        return inputs["input_ids"].shape[1]
    raise ConfigError("data: CachedTeacherDataModule needs token batches with labels or input_ids [B, L]")


class CachedTeacherDataModule(LightningDataModule):
    """Another datamodule's batches plus the cached sparse teacher outputs for each sample.

    Train from it with a loss that reads the batch (``lit_distill.losses.SparseForwardKL``)
    and ``teacher: null``: the teacher never runs. Or, with named ``caches``, mix cached and
    live teachers in one ensemble: the named rows go to ``CachedTopK`` members of a
    ``MultiModel`` teacher (``EnsembleKD`` reads them as ``teachers.<name>.logits``; config:
    ``configs/text/multi_teacher/tiny-llama-student_from_live+cached-teachers_local.yaml``; sequence
    classifiers, cached one row per sample:
    ``configs/text/multi_teacher/tiny-bert-student_from_live+cached-bert-teachers_local.yaml``).
    Batch keys: see the module docstring.

    Args:
        data: the datamodule the caches were written from (same files, tokenizer, lengths
            and packing), e.g. a ``datamodules.TextDataModule``.
        cache_dir: directory written by ``python -m lit_distill cache-teacher --out``, served
            as the top-level ``teacher_*`` keys; None when only named caches are served.
        caches: member name -> such a directory, served in ``teacher_inputs`` as
            ``<name>_topk_ids`` etc. Names as ``MultiModel`` members: non-empty, no dots.

    Raises:
        MissingPathError: a cache directory does not exist.
        ConfigError: neither ``cache_dir`` nor ``caches``; at setup, a cache that is incomplete
            or does not match the data (sample count, token ids and lengths, tokenizer, vocabulary;
            for a classifier's sample rows: the records' content and the number of classes).
    """

    def __init__(self, data: LightningDataModule, cache_dir: str | None = None,
                 caches: dict[str, str] | None = None) -> None:
        super().__init__()
        self.data = data
        if cache_dir is None and not caches:
            raise ConfigError("data.init_args: give cache_dir (a teacher: null run) and/or caches: {member: DIR} "
                              "(cached members of a MultiModel teacher)")
        self.cache_dirs: dict[str | None, Path] = {}
        if cache_dir is not None:
            self.cache_dirs[None] = self._directory(cache_dir, "data.init_args.cache_dir")
        for name, directory in (caches or {}).items():
            if not name or "." in name:
                raise ConfigError(f"data.init_args.caches: name '{name}' must be non-empty and without dots "
                                  "(a MultiModel member name)")
            self.cache_dirs[name] = self._directory(directory, f"data.init_args.caches.{name}")
        self.cache_dir = self.cache_dirs.get(None)
        self.caches: dict[str, dict[str | None, TeacherCache]] = {}  # split -> {name: cache}

    @staticmethod
    def _directory(directory: str, field: str) -> Path:
        path = Path(directory)
        if not path.is_dir():
            raise MissingPathError(f"{field}: no directory '{directory}'; write it with "
                                   "`python -m lit_distill cache-teacher --config FIT.yaml --out DIR`")
        return path

    @property
    def vocab_size(self) -> int:
        """The wrapped datamodule's vocabulary size (linked into the student by the CLI)."""
        return self.data.vocab_size

    @property
    def pad_token_id(self) -> int:
        """The wrapped datamodule's pad id."""
        return self.data.pad_token_id

    @property
    def num_classes(self) -> int | None:
        """The wrapped datamodule's number of classes (linked into a classifier student); an
        AttributeError when it has none, so the CLI skips that link for token data."""
        return self.data.num_classes

    def prepare_data(self) -> None:
        self.data.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        """Set up the wrapped datamodule, open the cached splits and check they match it."""
        self.data.trainer = self.trainer
        self.data.setup(stage)
        if self.caches:
            return
        for split, dataset in (("train", self.data.train_dataset), ("val", self.data.val_dataset)):
            fingerprint = samples_fingerprint(dataset)
            opened = {}
            for name, directory in self.cache_dirs.items():
                opened[name] = TeacherCache(directory / split)
                self._check(opened[name], dataset, split, fingerprint,
                            "data.init_args.cache_dir" if name is None else f"data.init_args.caches.{name}")
            self.caches[split] = opened

    def _check(self, cache: TeacherCache, dataset: Sequence[Any], split: str, fingerprint: str,
               field: str) -> None:
        field = f"{field} ('{cache.dir}')"
        manifest = cache.manifest
        if manifest["num_samples"] != len(dataset):
            raise ConfigError(f"{field}: the cache holds {manifest['num_samples']} {split} samples but the data "
                              f"has {len(dataset)}; it was written for other data or settings")
        if cache.per_sample:
            self._check_sample_rows(cache, split, fingerprint, field)
            return
        vocab = teacher_vocab_size(self.data)
        if vocab is not None and manifest.get("data_vocab_size") not in (None, vocab):
            raise ConfigError(f"{field}: written with a {manifest['data_vocab_size']}-token vocabulary but "
                              f"the data's tokenizer has {vocab}")
        tokenizer = tokenizer_fingerprint(getattr(self.data, "tokenizer", None))
        if None not in (tokenizer, manifest.get("tokenizer_fingerprint")) \
                and tokenizer != manifest["tokenizer_fingerprint"]:
            raise ConfigError(f"{field}: written with another tokenizer than data.init_args.tokenizer")
        if fingerprint != manifest["samples_fingerprint"]:
            raise ConfigError(f"{field}: the {split} samples' token ids or lengths differ from the ones the "
                              "cache was written for (other files, max_length, packing or seed?)")

    def _check_sample_rows(self, cache: TeacherCache, split: str, fingerprint: str, field: str) -> None:
        """A cache of sample rows: its class count against the data's, its samples by content."""
        classes = getattr(self.data, "num_classes", None)
        if classes is not None and classes != cache.manifest["vocab_size"]:
            raise ConfigError(f"{field}: a classifier cache of {cache.manifest['vocab_size']} classes, but the "
                              f"data has {classes} (labels {getattr(self.data, 'label_names', '?')}); write the "
                              "cache from a teacher of the data's classes")
        if fingerprint != cache.manifest["samples_fingerprint"]:
            raise ConfigError(f"{field}: the {split} samples (texts, labels, order) differ from the ones the "
                              "cache was written for (other files, labels or split?)")

    def _wrap(self, loader: DataLoader, split: str) -> DataLoader:
        if split not in self.caches:
            raise RuntimeError("call setup() before requesting dataloaders")
        common = {"collate_fn": _CacheCollator(loader.collate_fn, self.caches[split]),
                  "num_workers": loader.num_workers, "pin_memory": loader.pin_memory,
                  "persistent_workers": loader.persistent_workers}
        dataset = _Indexed(loader.dataset)
        if loader.batch_size is None:  # a custom batch sampler: keep it
            return DataLoader(dataset, batch_sampler=loader.batch_sampler, **common)
        # the same loader class (e.g. a resumable one), sampler and batch size
        return type(loader)(dataset, batch_size=loader.batch_size, sampler=loader.sampler,
                            drop_last=loader.drop_last, **common)

    def train_dataloader(self) -> DataLoader:
        """The wrapped training batches plus their cached teacher rows (``DIR/train``)."""
        self.data.trainer = self.trainer
        return self._wrap(self.data.train_dataloader(), "train")

    def val_dataloader(self) -> DataLoader:
        """The wrapped validation batches plus their cached teacher rows (``DIR/val``)."""
        self.data.trainer = self.trainer
        return self._wrap(self.data.val_dataloader(), "val")

    def test_dataloader(self) -> DataLoader:
        """Same as :meth:`val_dataloader`."""
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """The wrapped datamodule's predict batches (no teacher needed)."""
        self.data.trainer = self.trainer
        return self.data.predict_dataloader()

    def state_dict(self) -> dict[str, Any]:
        return self.data.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.data.load_state_dict(state_dict)
