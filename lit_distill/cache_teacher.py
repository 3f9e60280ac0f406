"""``python -m lit_distill cache-teacher``: run a fit config's teacher once and write its cache.

``python -m lit_distill cache-teacher --config FIT.yaml --out DIR [--top-k 128]`` builds the
config's teacher and data (the same fit config that distils online, through
:func:`lit_distill.build.build`), runs the teacher once over every sample of the train and
validation splits in index order, and writes ``DIR/train`` and ``DIR/val`` in the format of
:mod:`lit_distill.cache`. A rerun of the same command finishes an interrupted cache.

What a row is follows from the teacher's logits on the first sample: ``[B, L, V]`` (a causal LM,
or a token classifier on token data such as ``datamodules.TextDataModule``) gives one row per
token position; ``[B, C]`` (a sequence classifier, ``HFModel(task: sequence-classification)``,
e.g. on ``datamodules.TextClassificationDataModule``) one row per sample, with ``--top-k``
defaulting to ``C`` (exact). Per-token logits on data without token ids (a token classifier
on text-classification records) are refused: their rows would line up with nothing.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from datamodules.teacher_cache import CachedTeacherDataModule
from lit_distill.build import build
from lit_distill.cache import (
    ENCODINGS,
    POSITION_ROWS,
    SAMPLE_ROWS,
    SPLITS,
    sample_ids,
    teacher_vocab_size,
    tokenizer_fingerprint,
    write_split,
)
from lit_distill.contracts import side_inputs
from lit_distill.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lit_distill cache-teacher",
        description="Run a fit config's teacher once over its data and write sparse top-k log-probs, "
                    "token ids and tail mass in shards (resumable). Options not listed here are "
                    "passed to the config parser, e.g. --data.init_args.batch_size=32.")
    parser.add_argument("--config", action="append", required=True,
                        help="fit config YAML (model.init_args.teacher and data are used); repeatable")
    parser.add_argument("--out", required=True, help="cache directory (one subdirectory per split)")
    parser.add_argument("--top-k", type=int, default=None,
                        help="entries kept per row (default 128 per position; all C classes per sample)")
    parser.add_argument("--samples-per-shard", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="samples per teacher forward (default: the data's batch_size)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="cache log_softmax(logits / T); train with the same temperature")
    parser.add_argument("--logprob-dtype", default="float16", choices=sorted(ENCODINGS),
                        help="float16/bfloat16 (version 1), compact (version 2: 297 B/position at k=128, "
                             "V=1024; 409 at V=128,256) or knots (version 4: uint8 codes at 22 knot ranks, "
                             "188 B at V=1024, 300 at V=128,256; see lit_distill/cache_codec.py)")
    parser.add_argument("--splits", default=",".join(SPLITS), help="comma-separated, of: train,val")
    parser.add_argument("--max-new-shards", type=int, default=None,
                        help="stop after this many new shards per split (resume later)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _unwrap_data(datamodule: Any) -> Any:
    return datamodule.data if isinstance(datamodule, CachedTeacherDataModule) else datamodule


def cache_teacher(args: Sequence[str]) -> dict[str, bool]:
    """``cache-teacher``: returns ``{split: complete}``. See :func:`_parser` for the options."""
    ns, overrides = _parser().parse_known_args(list(args))
    splits = [s for s in ns.splits.split(",") if s]
    if not splits or any(s not in SPLITS for s in splits):
        raise ConfigError(f"cache-teacher --splits: '{ns.splits}'; valid: a comma-separated subset of {SPLITS}")
    if ns.temperature <= 0 or not math.isfinite(ns.temperature):
        raise ConfigError(f"cache-teacher --temperature: must be > 0, got {ns.temperature}")
    built = build(ns.config, overrides)
    teacher = built.model.teacher
    if teacher is None:
        raise ConfigError("model.init_args.teacher: cache-teacher needs a teacher in the config, got null")
    data = _unwrap_data(built.datamodule)
    if not callable(getattr(data, "collate_fn", None)):
        raise ConfigError(f"data: cache-teacher needs a datamodule with map-style train_dataset/val_dataset "
                          f"and a collate_fn() (e.g. datamodules.TextDataModule), got {type(data).__name__}")
    data.setup("fit")
    vocab = teacher.output_size
    data_vocab = teacher_vocab_size(data)

    def run_teacher(batch: dict[str, Any]) -> Tensor:
        out = teacher(**side_inputs(batch, "teacher"))
        if out.logits is None:
            raise ConfigError("model.init_args.teacher: returned no logits (compute_logits: false?); "
                              "cache-teacher needs the teacher's logits")
        return out.logits

    datasets = {"train": data.train_dataset, "val": data.val_dataset}
    model_cfg = getattr(teacher.model, "path", None) or type(teacher.model).__name__
    rows, vocab = _rows(run_teacher(data.collate_fn()([datasets[splits[0]][0]])), datasets[splits[0]][0], vocab)
    per_sample = rows == SAMPLE_ROWS
    done = {}
    for split in splits:
        done[split] = write_split(
            run_teacher, datasets[split], data.collate_fn(), Path(ns.out) / split,
            top_k=ns.top_k or (vocab if per_sample else 128), samples_per_shard=ns.samples_per_shard,
            batch_size=ns.batch_size or getattr(getattr(data, "hparams", {}), "batch_size", None) or 8,
            vocab_size=vocab, data_vocab_size=None if per_sample else data_vocab,
            tokenizer_fp=tokenizer_fingerprint(getattr(data, "tokenizer", None)), teacher=str(model_cfg),
            temperature=ns.temperature, logprob_dtype=ns.logprob_dtype, max_new_shards=ns.max_new_shards,
            progress=not ns.no_progress, rows=rows)
    return done


def _rows(probe: Tensor, sample: Any, vocab: int | None) -> tuple[str, int]:
    """The cache's rows and label space from the teacher's logits on one sample: ``[1, C]`` gives
    ``("sample", C)``, ``[1, L, V]`` ``("position", V)`` (V: the teacher's ``output_size`` if known)."""
    if probe.dim() == 2:
        return SAMPLE_ROWS, probe.shape[-1]
    if probe.dim() != 3:
        raise ConfigError(f"model.init_args.teacher: returned logits of shape {tuple(probe.shape)}; cache-teacher "
                          "caches [B, L, V] (one row per token position) or [B, C] (one row per sample)")
    try:
        sample_ids(sample)
    except ConfigError:
        raise ConfigError(f"model.init_args.teacher: returns per-token logits {tuple(probe.shape)} (e.g. "
                          "token-classification), but the data's samples carry no token ids to line the rows up "
                          "with; cache a token-level teacher on token data (e.g. datamodules.TextDataModule), or "
                          "a sequence classifier ([B, C], one row per sample)") from None
    return POSITION_ROWS, vocab or probe.shape[-1]


def main(args: Sequence[str]) -> None:
    """Entry point of ``python -m lit_distill cache-teacher``."""
    done = cache_teacher(args)
    for split, complete in done.items():
        print(f"{split}: {'complete' if complete else 'incomplete (rerun the same command to resume)'}")
