"""Serve an offline teacher cache (``lit_distill.cache``) with another datamodule's batches.

``CachedTeacherDataModule(data=<a datamodule>, cache_dir=DIR)`` yields the wrapped
datamodule's batches unchanged, plus (``B`` batch, ``L`` its padded length, ``k`` the
cache's top-k)::

    "teacher_topk_ids":      LongTensor[B, L, k]   # the teacher's top-k token ids
    "teacher_topk_logprobs": Tensor[B, L, k]       # their log-probs (the cache's float16/bfloat16)
    "teacher_tail_mass":     FloatTensor[B, L]     # 1 − Σ top-k probabilities
    "sample_index":          LongTensor[B]         # index of each sample in its split

aligned by sample index and position (right padding: position ``t`` of a sample is
position ``t`` of its cached entry). Padded positions hold ids ``0..k-1``, log-probs 0
and tail 0; they are outside ``loss_mask``. Train batches come from ``DIR/train``,
validation and test batches from ``DIR/val``; ``predict`` serves the wrapped batches only.

The wrapped datamodule must have map-style ``train_dataset`` / ``val_dataset`` whose
samples carry ``input_ids`` (e.g. :class:`datamodules.TextDataModule`). Its own
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
from torch.utils.data import DataLoader, Dataset

from lit_distill.cache import TeacherCache, sample_ids, samples_fingerprint, tokenizer_fingerprint
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
    """Collates with the wrapped collator, then adds the cached teacher rows of each sample."""

    def __init__(self, collate: Callable[[list], dict[str, Any]], cache: TeacherCache) -> None:
        self.collate = collate
        self.cache = cache

    def __call__(self, pairs: list[tuple[int, Any]]) -> dict[str, Any]:
        indices = [i for i, _ in pairs]
        batch = self.collate([sample for _, sample in pairs])
        length = _batch_length(batch)
        k = self.cache.top_k
        rows = [self.cache[i] for i in indices]
        ids = torch.arange(k).repeat(len(pairs), length, 1)
        logprobs = torch.zeros(len(pairs), length, k, dtype=rows[0][1].dtype)
        tail = torch.zeros(len(pairs), length)
        for b, ((i, sample), (c_ids, c_lp, c_tail)) in enumerate(zip(pairs, rows, strict=True)):
            n = c_ids.shape[0]
            if n != len(sample_ids(sample)) or n > length:
                raise ConfigError(f"data: sample {i} has {len(sample_ids(sample))} tokens but the teacher "
                                  f"cache '{self.cache.dir}' holds {n} positions for it; the cache was "
                                  "written for other data")
            ids[b, :n], logprobs[b, :n], tail[b, :n] = c_ids, c_lp, c_tail
        batch.update(teacher_topk_ids=ids, teacher_topk_logprobs=logprobs, teacher_tail_mass=tail,
                     sample_index=torch.tensor(indices, dtype=torch.long))
        return batch


def _batch_length(batch: dict[str, Any]) -> int:
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
    and ``teacher: null``: the teacher never runs. Batch keys: see the module docstring.

    Args:
        data: the datamodule the cache was written from (same files, tokenizer, lengths
            and packing), e.g. a ``datamodules.TextDataModule``.
        cache_dir: directory written by ``python -m lit_distill cache-teacher --out``.

    Raises:
        ConfigError: at setup, when the cache is missing, incomplete or does not match the
            data (sample count, token ids and lengths, tokenizer, vocabulary).
    """

    def __init__(self, data: LightningDataModule, cache_dir: str) -> None:
        super().__init__()
        self.data = data
        self.cache_dir = Path(cache_dir)
        if not self.cache_dir.is_dir():
            raise MissingPathError(f"data.init_args.cache_dir: no directory '{cache_dir}'; write it with "
                                   "`python -m lit_distill cache-teacher --config FIT.yaml --out DIR`")
        self.caches: dict[str, TeacherCache] = {}

    @property
    def vocab_size(self) -> int:
        """The wrapped datamodule's vocabulary size (linked into the student by the CLI)."""
        return self.data.vocab_size

    @property
    def pad_token_id(self) -> int:
        """The wrapped datamodule's pad id."""
        return self.data.pad_token_id

    def prepare_data(self) -> None:
        self.data.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        """Set up the wrapped datamodule, open the cached splits and check they match it."""
        self.data.trainer = self.trainer
        self.data.setup(stage)
        if self.caches:
            return
        for split, dataset in (("train", self.data.train_dataset), ("val", self.data.val_dataset)):
            cache = TeacherCache(self.cache_dir / split)
            self._check(cache, dataset, split)
            self.caches[split] = cache

    def _check(self, cache: TeacherCache, dataset: Sequence[Any], split: str) -> None:
        field = f"data.init_args.cache_dir ('{cache.dir}')"
        manifest = cache.manifest
        if manifest["num_samples"] != len(dataset):
            raise ConfigError(f"{field}: the cache holds {manifest['num_samples']} {split} samples but the data "
                              f"has {len(dataset)}; it was written for other data or settings")
        vocab = getattr(self.data, "vocab_size", None)
        if vocab is not None and manifest.get("data_vocab_size") not in (None, vocab):
            raise ConfigError(f"{field}: written with a {manifest['data_vocab_size']}-token vocabulary but "
                              f"the data's tokenizer has {vocab}")
        fingerprint = tokenizer_fingerprint(getattr(self.data, "tokenizer", None))
        if None not in (fingerprint, manifest.get("tokenizer_fingerprint")) \
                and fingerprint != manifest["tokenizer_fingerprint"]:
            raise ConfigError(f"{field}: written with another tokenizer than data.init_args.tokenizer")
        if samples_fingerprint(dataset) != manifest["samples_fingerprint"]:
            raise ConfigError(f"{field}: the {split} samples' token ids or lengths differ from the ones the "
                              "cache was written for (other files, max_length, packing or seed?)")

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
