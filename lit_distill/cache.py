"""The offline teacher cache's file format: sparse top-k log-probabilities written once, read while training.

:func:`write_split` writes one split and :class:`TeacherCache` reads it; the
``cache-teacher`` command (:mod:`lit_distill.cache_teacher`) runs a config's teacher to
produce it, and ``datamodules.CachedTeacherDataModule`` serves it with the batches. This
module needs neither: per split, ``DIR/<split>/`` holds

- ``manifest.json``: what the cache holds and what it was made from (sample count, token
  positions, k, vocabulary, dtypes, temperature, fingerprints of the tokenizer and of the
  samples, the teacher, ``rows``), and ``complete`` once every shard exists.
- ``shard-00000.safetensors``, ...: ``samples_per_shard`` consecutive samples each, with
  every position of every sample, concatenated (``T`` = the shard's positions):

  - ``topk_ids`` ``[T, k]``: the teacher's k most probable token ids, most probable
    first, in the smallest integer dtype holding the vocabulary (uint8/uint16/int32);
  - ``topk_logprobs`` ``[T, k]``: their log-probabilities (float16 or bfloat16);
  - ``tail_mass`` ``[T]`` float32: 1 − Σ top-k probabilities, computed as
    ``exp(logsumexp)`` of the other log-probs (keeps a tiny tail accurate; 0 at k = V); with
    ``--logprob-dtype compact``/``knots`` the tensors of :mod:`lit_distill.cache_codec` instead;
  - ``lengths`` ``[n]`` int32 and ``sample_index`` ``[n]`` int64 of the shard's samples.

``rows`` says what a row is: ``position`` (a token-level teacher, logits ``[B, L, V]``; the
default, as in manifests written before the field): one row per token position, ``V`` the
vocabulary; or ``sample`` (a sequence classifier, logits ``[B, C]``; version 3, so that readers
of versions 1-2 refuse it): one row per sample (``lengths`` all 1), ``vocab_size`` = ``C`` classes,
``data_vocab_size`` null, and the samples fingerprinted by content (a text-classification
record's text and label), as the rows line up with samples, not with any tokenizer's positions.

Resumable: every shard is written to a temporary file and renamed into place, so a shard
file either is complete or does not exist. A rerun with the same settings skips finished
shards, deletes leftover temporary files and redoes the unfinished shard; other settings
in an existing cache directory are refused (ConfigError) instead of being mixed in.

:class:`TeacherCache` reads one split by sample index (memory-mapped, one slice per sample).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lit_distill.errors import ConfigError

FORMAT = "lit_distill.teacher_cache"
VERSION = 2  # written for the compact encoding; version-1 caches still read
SAMPLE_ROWS_VERSION = 3  # written for one row per sample (float16, bfloat16 or compact)
KNOTS_VERSION = 4  # written for the knots encoding (either rows), so that readers of versions 1-3 refuse it
READABLE_VERSIONS = (1, 2, 3, 4)
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
# Manifest fields that identify the content; a resumed run must agree on all of them.
_IDENTITY = ("format", "version", "rows", "split", "num_samples", "num_positions", "samples_per_shard",
             "num_shards", "top_k", "vocab_size", "data_vocab_size", "id_dtype", "logprob_dtype",
             "temperature", "tokenizer_fingerprint", "samples_fingerprint", "teacher")
LOGPROB_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
COMPACT = "compact"  # lit_distill.cache_codec: bit-packed ids + uint8 log-probs (version 2)
KNOTS = "knots"  # lit_distill.cache_codec: bit-packed ids + uint8 codes at knot ranks (version 4)
ENCODINGS = (*LOGPROB_DTYPES, COMPACT, KNOTS)
POSITION_ROWS, SAMPLE_ROWS = "position", "sample"  # the manifest's ``rows``: per token position / per sample
ROWS = (POSITION_ROWS, SAMPLE_ROWS)


def manifest_rows(manifest: dict[str, Any]) -> str:
    """``rows`` of a manifest: ``position`` or ``sample`` (versions 1 and 2 have no field: positions)."""
    return manifest.get("rows", POSITION_ROWS)


def id_dtype(vocab_size: int) -> torch.dtype:
    """Smallest integer dtype that holds every id of a ``vocab_size`` vocabulary."""
    if vocab_size <= 2**8:
        return torch.uint8
    if vocab_size <= 2**16:
        return torch.uint16
    return torch.int32


def shard_name(index: int) -> str:
    """File name of shard ``index``."""
    return f"shard-{index:05d}.safetensors"


def tokenizer_fingerprint(tokenizer: Any) -> str | None:
    """SHA-256 of a tokenizer's full definition (vocabulary, merges, specials); None without one."""
    if tokenizer is None:
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _token_ids(sample: Any) -> Tensor | None:
    if isinstance(sample, dict):
        if "input_ids" in sample:
            return sample["input_ids"]
        if isinstance(sample.get("teacher"), dict) and "input_ids" in sample["teacher"]:
            return sample["teacher"]["input_ids"]
        if isinstance(sample.get("inputs"), dict) and "input_ids" in sample["inputs"]:
            return sample["inputs"]["input_ids"]
    return None


def sample_ids(sample: Any) -> Tensor:
    """The teacher's token ids ``[n]`` of one dataset sample: ``input_ids`` (one tokenizer), its
    ``inputs``, or the ``teacher`` side of a cross-tokenizer sample (``datamodules.cross_tokenizer``:
    the cache is written in the teacher's own tokens)."""
    ids = _token_ids(sample)
    if ids is None:
        raise ConfigError("teacher cache: dataset samples must be dicts with 'input_ids' (token ids [n]); "
                          f"got {type(sample).__name__}"
                          + (f" with keys {sorted(sample)}" if isinstance(sample, dict) else ""))
    return ids


def _json_value(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.tolist()
    raise ConfigError(f"teacher cache: a dataset sample holds a {type(value).__name__}, which cannot be "
                      "fingerprinted; samples must be token ids or records of plain values (texts, labels)")


def teacher_vocab_size(data: Any) -> int | None:
    """The size of the vocabulary a datamodule's teacher tokens use: its ``teacher_vocab_size``
    (cross-tokenizer data), else its ``vocab_size``; None if it has neither."""
    return getattr(data, "teacher_vocab_size", None) or getattr(data, "vocab_size", None)


def samples_fingerprint(dataset: Sequence[Any]) -> str:
    """SHA-256 over every sample in index order: its length and token ids when it has some, else (a
    record tokenised only when batched, e.g. ``datamodules.TextClassificationDataModule``'s text,
    label and class index) its canonical JSON."""
    digest = hashlib.sha256()
    for sample in dataset:
        ids = _token_ids(sample)
        if ids is None:
            if not isinstance(sample, dict):
                sample_ids(sample)  # raises: neither token ids nor a record
            record = json.dumps(sample, sort_keys=True, default=_json_value).encode()
            digest.update(b"record" + len(record).to_bytes(8, "little") + record)
            continue
        ids = ids.to(torch.int64).contiguous()
        digest.update(len(ids).to_bytes(8, "little"))
        digest.update(ids.numpy().tobytes())
    return digest.hexdigest()


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def read_manifest(split_dir: str | Path) -> dict[str, Any]:
    """The manifest of one cached split; ConfigError if there is none."""
    path = Path(split_dir) / MANIFEST
    if not path.exists():
        raise ConfigError(f"teacher cache: no {MANIFEST} in '{split_dir}'; write the cache with "
                          "`python -m lit_distill cache-teacher --config FIT.yaml --out DIR`")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") not in READABLE_VERSIONS:
        raise ConfigError(f"teacher cache: '{path}' is version {manifest.get('version')!r} of "
                          f"{manifest.get('format')!r}; this reader reads {FORMAT} versions {READABLE_VERSIONS}")
    if manifest_rows(manifest) not in ROWS:
        raise ConfigError(f"teacher cache: '{path}' has rows {manifest['rows']!r}; this reader reads {ROWS}")
    return manifest


@torch.no_grad()
def sparse_teacher(logits: Tensor, top_k: int, temperature: float, vocab_limit: int | None = None
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k ids ``[..., k]``, their log-probs ``[..., k]`` (float32) and the tail mass ``[...]``.

    Args:
        logits: ``[..., V]`` teacher logits.
        top_k: k (at most V).
        temperature: divides the logits before the log-softmax.
        vocab_limit: keep only the first ``vocab_limit`` logits (a teacher whose vocabulary
            is padded beyond the tokenizer's); None keeps all.
    """
    if vocab_limit is not None:
        logits = logits[..., :vocab_limit]
    log_p = torch.log_softmax(logits.float() / temperature, dim=-1)
    values, ids = log_p.topk(top_k, dim=-1)
    tail = log_p.scatter_(-1, ids, float("-inf")).logsumexp(-1).exp()
    return ids, values, tail


class _Progress:
    """A tqdm bar over samples (or nothing)."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="sample")

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def write_split(run_teacher: Callable[[dict[str, Any]], Tensor], dataset: Sequence[Any],
                collate: Callable[[list], dict[str, Any]], split_dir: str | Path, *, top_k: int,
                samples_per_shard: int, batch_size: int, vocab_size: int, data_vocab_size: int | None,
                tokenizer_fp: str | None, teacher: str, temperature: float = 1.0,
                logprob_dtype: str = "float16", max_new_shards: int | None = None,
                progress: bool = True, rows: str = POSITION_ROWS) -> bool:
    """Write (or finish) the cache of one split; True once every shard exists.

    Args:
        run_teacher: batch -> teacher logits ``[B, L, V]`` (``rows="position"``) or ``[B, C]``
            (``rows="sample"``).
        dataset: map-style dataset in index order: samples with ``input_ids`` ``[n]`` (position
            rows), or any samples :func:`samples_fingerprint` reads (sample rows).
        collate: the datamodule's collate function (right-padding, ``inputs`` etc.).
        split_dir: output directory of this split.
        top_k: entries kept per row.
        samples_per_shard: samples per shard file.
        batch_size: samples per teacher forward (batches never cross a shard).
        vocab_size: the teacher's logit dimension (V, or C classes for sample rows).
        data_vocab_size: the tokenizer's size (the teacher's logits are cut to it if larger);
            None for sample rows, whose classes are no tokenizer's.
        tokenizer_fp: fingerprint of the data's tokenizer (see :func:`tokenizer_fingerprint`).
        teacher: a description of the teacher (its path or class), recorded in the manifest.
        temperature: the teacher's log-probs are those of ``softmax(logits / temperature)``.
        logprob_dtype: ``float16``, ``bfloat16``, ``compact`` or ``knots`` (:mod:`lit_distill.cache_codec`).
        max_new_shards: stop after writing this many shards (an interruption on purpose);
            None writes them all.
        progress: show a progress bar.
        rows: ``position`` (one row per token position) or ``sample`` (one row per sample).
    """
    split_dir = Path(split_dir)
    if logprob_dtype not in ENCODINGS:
        raise ConfigError(f"cache-teacher --logprob-dtype: '{logprob_dtype}' is not one of {sorted(ENCODINGS)}")
    per_sample = rows == SAMPLE_ROWS
    if rows not in ROWS or (per_sample and data_vocab_size is not None):  # sample rows hold classes, not tokens
        raise ValueError(f"write_split: rows {rows!r} with data_vocab_size {data_vocab_size!r}")
    kept_vocab = min(vocab_size, data_vocab_size or vocab_size)
    if not 0 < top_k <= kept_vocab:
        what = "the number of classes" if per_sample else "the vocabulary"
        raise ConfigError(f"cache-teacher --top-k: must be in [1, {kept_vocab}] ({what}), got {top_k}")
    if samples_per_shard <= 0 or batch_size <= 0:
        raise ConfigError("cache-teacher: --samples-per-shard and --batch-size must be positive")
    if not len(dataset):
        raise ConfigError(f"cache-teacher: the {split_dir.name} split has no samples")
    lengths = [1] * len(dataset) if per_sample else [len(sample_ids(s)) for s in dataset]
    version = (KNOTS_VERSION if logprob_dtype == KNOTS else SAMPLE_ROWS_VERSION if per_sample
               else VERSION if logprob_dtype == COMPACT else 1)
    manifest = {
        "format": FORMAT, "version": version, "split": split_dir.name, "num_samples": len(dataset),
        "num_positions": sum(lengths), "samples_per_shard": samples_per_shard,
        "num_shards": math.ceil(len(dataset) / samples_per_shard), "top_k": top_k,
        "vocab_size": kept_vocab, "data_vocab_size": data_vocab_size,
        "id_dtype": str(id_dtype(kept_vocab)).removeprefix("torch."), "logprob_dtype": logprob_dtype,
        "tail_dtype": "float16" if logprob_dtype == KNOTS else "float32", "temperature": float(temperature),
        "tokenizer_fingerprint": tokenizer_fp, "samples_fingerprint": samples_fingerprint(dataset),
        "teacher": teacher, "rows": rows, "complete": False,
    }
    split_dir.mkdir(parents=True, exist_ok=True)
    if (split_dir / MANIFEST).exists():
        old = read_manifest(split_dir)
        old = {**old, "rows": manifest_rows(old)}  # a version-1/2 cache (no field) resumes as position rows
        diff = [f"{key}: {old.get(key)!r} in the cache vs {manifest[key]!r} now"
                for key in _IDENTITY if old.get(key) != manifest[key]]
        if diff:
            raise ConfigError(f"cache-teacher --out: '{split_dir}' holds a cache made with other settings "
                              f"({'; '.join(diff[:3])}); write to another directory or delete it")
    for leftover in split_dir.glob("*.tmp"):
        leftover.unlink()  # a shard or manifest whose writing was interrupted
    _write_json(split_dir / MANIFEST, manifest)

    from safetensors.torch import save_file

    todo = [j for j in range(manifest["num_shards"]) if not (split_dir / shard_name(j)).exists()]
    if max_new_shards is not None:
        todo = todo[:max_new_shards]
    bar = _Progress(sum(min(samples_per_shard, len(dataset) - j * samples_per_shard) for j in todo),
                    f"cache {split_dir.name}", progress)
    try:
        for j in todo:
            first, stop = j * samples_per_shard, min((j + 1) * samples_per_shard, len(dataset))
            ids_parts, lp_parts, tail_parts = [], [], []
            for start in range(first, stop, batch_size):
                indices = range(start, min(start + batch_size, stop))
                logits = run_teacher(collate([dataset[i] for i in indices]))
                _check_logits(logits, len(indices), per_sample)
                ids, log_p, tail = sparse_teacher(logits, top_k, temperature, kept_vocab)
                if per_sample:  # [B, k] -> one row per sample
                    ids, log_p, tail = ids[:, None], log_p[:, None], tail[:, None]
                for row, i in enumerate(indices):
                    n = lengths[i]
                    ids_parts.append(ids[row, :n])
                    lp_parts.append(log_p[row, :n])
                    tail_parts.append(tail[row, :n])
                bar.update(len(indices))
            tensors = _encode(torch.cat(ids_parts), torch.cat(lp_parts), torch.cat(tail_parts), logprob_dtype,
                              kept_vocab)
            tensors.update({
                "lengths": torch.tensor(lengths[first:stop], dtype=torch.int32),
                "sample_index": torch.arange(first, stop, dtype=torch.int64),
            })
            path = split_dir / shard_name(j)
            tmp = path.with_name(path.name + ".tmp")
            save_file(tensors, str(tmp))
            os.replace(tmp, path)
    finally:
        bar.close()
    complete = all((split_dir / shard_name(j)).exists() for j in range(manifest["num_shards"]))
    if complete:
        _write_json(split_dir / MANIFEST, {**manifest, "complete": True})
    return complete


def _check_logits(logits: Tensor, batch: int, per_sample: bool) -> None:
    """Refuse teacher logits whose shape is not the cache's rows: ``[B, C]`` or ``[B, L, V]``."""
    want = 2 if per_sample else 3
    if logits.dim() != want or logits.shape[0] != batch:
        shape = "[B, C] (one row per sample)" if per_sample else "[B, L, V] (one row per position)"
        raise ConfigError(f"cache-teacher: the teacher returned logits of shape {tuple(logits.shape)} for a batch "
                          f"of {batch} samples; this cache holds {shape}")


def _encode(ids: Tensor, log_p: Tensor, tail: Tensor, encoding: str, vocab_size: int) -> dict[str, Tensor]:
    """One shard's top-k tensors and tail (ids, log-probs ``[T, k]``, tail ``[T]``) in ``encoding``."""
    if encoding in (COMPACT, KNOTS):
        from lit_distill import cache_codec

        return cache_codec.encode_shard(ids, log_p, tail, encoding, vocab_size)
    return {"topk_ids": ids.to(id_dtype(vocab_size)).contiguous(),
            "topk_logprobs": log_p.to(LOGPROB_DTYPES[encoding]).contiguous(), "tail_mass": tail.float().contiguous()}


class TeacherCache:
    """Reads one cached split by sample index.

    Args:
        split_dir: a split directory written by :func:`write_split` (``DIR/train``, ...).

    Raises:
        ConfigError: no manifest, another format, or an incomplete cache.
    """

    def __init__(self, split_dir: str | Path) -> None:
        self.dir = Path(split_dir)
        self.manifest = read_manifest(self.dir)
        if not self.manifest.get("complete"):
            raise ConfigError(f"teacher cache '{self.dir}' is incomplete (interrupted?); rerun the same "
                              "`python -m lit_distill cache-teacher` command to finish it")
        self.samples_per_shard = self.manifest["samples_per_shard"]
        self.top_k = self.manifest["top_k"]
        self.per_sample = manifest_rows(self.manifest) == SAMPLE_ROWS  # rows [1, k] per sample
        self._offsets: dict[int, list[int]] = {}
        self._handles: dict[int, Any] = {}

    def __len__(self) -> int:
        return self.manifest["num_samples"]

    def __getstate__(self) -> dict[str, Any]:  # file handles stay in their process (DataLoader workers)
        return {**self.__dict__, "_handles": {}}

    def _open(self, shard: int) -> tuple[Any, list[int]]:
        if shard not in self._handles:
            from safetensors import safe_open

            handle = safe_open(str(self.dir / shard_name(shard)), framework="pt")
            lengths = handle.get_tensor("lengths").tolist()
            self._offsets[shard] = [0, *torch.tensor(lengths).cumsum(0).tolist()]
            self._handles[shard] = handle
        return self._handles[shard], self._offsets[shard]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        """``(topk_ids [n, k] int64, topk_logprobs [n, k] stored dtype, tail_mass [n] float32)``, ``n``
        the sample's positions (1 for a cache of sample rows)."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} outside the cache's {len(self)} samples")
        shard, local = divmod(index, self.samples_per_shard)
        handle, offsets = self._open(shard)
        rows = slice(offsets[local], offsets[local + 1])
        tail = handle.get_slice("tail_mass")[rows].float()
        if self.manifest.get("logprob_dtype") in (COMPACT, KNOTS):
            from lit_distill import cache_codec

            return (*cache_codec.decode_rows(handle, rows, self.manifest["logprob_dtype"], self.top_k,
                                             self.manifest["vocab_size"]), tail)
        return handle.get_slice("topk_ids")[rows].long(), handle.get_slice("topk_logprobs")[rows], tail
