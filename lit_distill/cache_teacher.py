"""``python -m lit_distill cache-teacher``: run a fit config's teacher once and write its cache.

``python -m lit_distill cache-teacher --config FIT.yaml --out DIR [--top-k 128]`` builds the
config's teacher and data (the same fit config that distils online, through
:func:`lit_distill.build.build`), runs the teacher once over every sample of the train and
validation splits in index order, and writes ``DIR/train`` and ``DIR/val`` in the format of
:mod:`lit_distill.cache`. A rerun of the same command finishes an interrupted cache.
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
    SPLITS,
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
    parser.add_argument("--top-k", type=int, default=128, help="entries kept per position (default 128)")
    parser.add_argument("--samples-per-shard", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="samples per teacher forward (default: the data's batch_size)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="cache log_softmax(logits / T); train with the same temperature")
    parser.add_argument("--logprob-dtype", default="float16", choices=sorted(ENCODINGS),
                        help="float16/bfloat16 (version 1) or compact (version 2: ~297 B/position at k=128, V=1024)")
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
    done = {}
    for split in splits:
        dataset = datasets[split]
        if vocab is None:
            probe = run_teacher(data.collate_fn()([dataset[0]]))
            vocab = probe.shape[-1]
        done[split] = write_split(
            run_teacher, dataset, data.collate_fn(), Path(ns.out) / split, top_k=ns.top_k,
            samples_per_shard=ns.samples_per_shard,
            batch_size=ns.batch_size or getattr(getattr(data, "hparams", {}), "batch_size", None) or 8,
            vocab_size=vocab, data_vocab_size=data_vocab,
            tokenizer_fp=tokenizer_fingerprint(getattr(data, "tokenizer", None)), teacher=str(model_cfg),
            temperature=ns.temperature, logprob_dtype=ns.logprob_dtype, max_new_shards=ns.max_new_shards,
            progress=not ns.no_progress)
    return done


def main(args: Sequence[str]) -> None:
    """Entry point of ``python -m lit_distill cache-teacher``."""
    done = cache_teacher(args)
    for split, complete in done.items():
        print(f"{split}: {'complete' if complete else 'incomplete (rerun the same command to resume)'}")
