"""``python -m lit_distill generate``: a config's model answers its data's prompts, as JSONL.

``python -m lit_distill generate --config FIT.yaml --out DIR`` builds the config (through
:func:`lit_distill.build.build`), takes its teacher (``--model student`` for the student,
``--ckpt`` for a trained one), and answers every prompt of the data's train and validation
splits, batched, with the model's KV cache, writing ``DIR/<split>/shard-NNNNN.jsonl`` records
``{<prompt_field>: prompt, <response_field>: response, "index": i, "sample": j}`` that
``TextDataModule`` and ``CrossTokenizerDataModule`` read as they are: sequence-level KD is then
an ordinary ``fit`` with ``--data.init_args.train_path=DIR/train``.

Plain-text documents have no prompt: ``--prefix-tokens N`` prompts with each document's first N
tokens. Each shard is drawn under its own seed (from ``--seed``, the split and the shard), so a
rerun after an interruption writes the same records; ``DIR/<split>/manifest.json`` records the
settings and a rerun with other settings is refused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from datamodules.text import special_prefix
from lit_distill.build import build
from lit_distill.errors import ConfigError
from lit_distill.export import build_student, load_checkpoint_file
from lit_distill.sampling import SamplingOptions, hf_generator, sample_responses

SPLITS = ("train", "val")
MANIFEST = "manifest.json"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lit_distill generate",
        description="Answer the prompts of a fit config's data with its teacher (or student) and write "
                    "prompt/response JSONL shards (resumable). Options not listed here are passed to the "
                    "config parser, e.g. --data.init_args.val_path=prompts.jsonl.")
    parser.add_argument("--config", action="append", required=True, help="fit config YAML; repeatable")
    parser.add_argument("--out", required=True, help="output directory (one subdirectory per split)")
    parser.add_argument("--model", choices=("teacher", "student"), default="teacher",
                        help="which of the config's models answers (default: teacher)")
    parser.add_argument("--ckpt", default=None,
                        help="a fit checkpoint whose student answers (implies --model student)")
    parser.add_argument("--splits", default=",".join(SPLITS), help="comma-separated, of: train,val")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens per response at most")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    parser.add_argument("--num-samples", type=int, default=1, help="responses per prompt")
    parser.add_argument("--prefix-tokens", type=int, default=None,
                        help="prompt plain-text documents with their first N tokens")
    parser.add_argument("--batch-size", type=int, default=None, help="prompts per generate call "
                        "(default: the data's batch_size)")
    parser.add_argument("--prompts-per-shard", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0, help="base seed of every shard's draw")
    parser.add_argument("--max-new-shards", type=int, default=None,
                        help="stop after this many new shards per split (resume later)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _prompts(records: list, tokenizer, prefix_tokens: int | None, where: str) -> list[tuple[str, list[int]]]:
    """(prompt text, prompt token ids) per record: a pair's prompt, or a document's first tokens."""
    prefix = special_prefix(tokenizer)
    prompts = []
    for record in records:
        if isinstance(record, tuple):
            prompts.append((record[0], prefix + tokenizer(record[0], add_special_tokens=False)["input_ids"]))
            continue
        if prefix_tokens is None:
            raise ConfigError(f"data: {where} holds plain-text documents, which have no prompt; use "
                              "prompt/response JSONL, or --prefix-tokens N to prompt with each document's "
                              "first N tokens")
        ids = tokenizer(record, add_special_tokens=False)["input_ids"][:prefix_tokens]
        if ids:
            prompts.append((tokenizer.decode(ids), prefix + ids))
    return prompts


def _shard_seed(seed: int, split: str, shard: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{split}/{shard}".encode()).digest()[:8], "little") >> 1


def _check_manifest(split_dir: Path, settings: dict[str, Any]) -> None:
    """Write the split's settings, or refuse a directory made with other settings."""
    path = split_dir / MANIFEST
    if path.exists():
        recorded = json.loads(path.read_text())
        changed = sorted(k for k in {*settings, *recorded} if settings.get(k) != recorded.get(k))
        if changed:
            raise ConfigError(f"generate --out: {split_dir} was written with other settings ({', '.join(changed)} "
                              "differ); use another --out or delete it")
        return
    split_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2, sort_keys=True))


def _write_atomic(path: Path, lines: list[str]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(lines))
    os.replace(tmp, path)


def generate_split(model: torch.nn.Module, tokenizer, prompts: list[tuple[str, list[int]]], split_dir: Path, *,
                   options: SamplingOptions, fields: tuple[str, str], batch_size: int, prompts_per_shard: int,
                   seed: int, split: str, max_new_shards: int | None = None,
                   progress: bool = True) -> dict[str, float]:
    """Answer ``prompts`` into JSONL shards under ``split_dir``; finished shards are skipped.

    Returns:
        ``{"complete": 0/1, "responses": n, "tokens": generated tokens, "seconds": wall time}`` of
        the shards written by this call.
    """
    from tqdm import tqdm

    split_dir.mkdir(parents=True, exist_ok=True)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    shards = range(0, len(prompts), prompts_per_shard)
    stats = {"responses": 0, "tokens": 0, "seconds": 0.0}
    new_shards = 0
    bar = tqdm(total=len(prompts), desc=f"generate {split}", unit="prompt", disable=not progress)
    for shard_index, start in enumerate(shards):
        path = split_dir / f"shard-{shard_index:05d}.jsonl"
        chunk = prompts[start:start + prompts_per_shard]
        if path.exists():
            bar.update(len(chunk))
            continue
        if max_new_shards is not None and new_shards >= max_new_shards:
            break
        torch.manual_seed(_shard_seed(seed, split, shard_index))
        lines, began = [], time.perf_counter()
        for offset in range(0, len(chunk), batch_size):
            batch = chunk[offset:offset + batch_size]
            drawn = sample_responses(model, [ids for _, ids in batch], options, pad_token_id=pad_id,
                                     eos_token_id=tokenizer.eos_token_id)
            for k, ((text, _), responses) in enumerate(zip(batch, drawn, strict=True)):
                for j, (tokens, ended) in enumerate(responses):
                    stats["tokens"] += len(tokens) + int(ended)
                    record = {fields[0]: text, fields[1]: tokenizer.decode(tokens, skip_special_tokens=True),
                              "index": start + offset + k, "sample": j}
                    lines.append(json.dumps(record, ensure_ascii=False) + "\n")
            bar.update(len(batch))
        _write_atomic(path, lines)
        stats["seconds"] += time.perf_counter() - began
        stats["responses"] += len(lines)
        new_shards += 1
    bar.close()
    complete = all((split_dir / f"shard-{i:05d}.jsonl").exists() for i in range(len(shards)))
    return {"complete": float(complete), **stats}


def _answering_model(built: Any, ns: argparse.Namespace) -> torch.nn.Module:
    if ns.ckpt is not None:
        return build_student(load_checkpoint_file(ns.ckpt, "generate --ckpt"))
    model = built.model.teacher if ns.model == "teacher" else built.model.student
    if model is None:
        raise ConfigError("model.init_args.teacher: the config has no teacher (null); answer with "
                          "--model student, or give a teacher")
    return model


def generate(args: Sequence[str]) -> dict[str, dict[str, float]]:
    """``generate``: returns per split ``{complete, responses, tokens, seconds}``. See :func:`_parser`."""
    ns, overrides = _parser().parse_known_args(list(args))
    splits = [s for s in ns.splits.split(",") if s]
    if not splits or any(s not in SPLITS for s in splits):
        raise ConfigError(f"generate --splits: '{ns.splits}'; valid: a comma-separated subset of {SPLITS}")
    if ns.prefix_tokens is not None and ns.prefix_tokens < 1:
        raise ConfigError(f"generate --prefix-tokens: must be >= 1, got {ns.prefix_tokens}")
    for name in ("batch_size", "prompts_per_shard"):
        if (value := getattr(ns, name)) is not None and value < 1:
            raise ConfigError(f"generate --{name.replace('_', '-')}: must be >= 1, got {value}")
    options = SamplingOptions(ns.max_new_tokens, ns.temperature, ns.top_p, ns.num_samples)
    built = build(ns.config, overrides)
    data = built.datamodule
    if not callable(getattr(data, "split_records", None)) or getattr(data, "tokenizer", None) is None:
        raise ConfigError(f"data: generate reads prompts from a text datamodule (e.g. datamodules.TextDataModule), "
                          f"got {type(data).__name__}")
    model = hf_generator(_answering_model(built, ns), f"generate --model {ns.model}").eval()
    hp = data.hparams
    batch_size = ns.batch_size or hp.batch_size
    records = data.split_records()
    results = {}
    for split in splits:
        prompts = _prompts(records[split][0], data.tokenizer, ns.prefix_tokens, records[split][1])
        settings = {"model": ns.model, "ckpt": ns.ckpt, "options": vars(options), "prefix_tokens": ns.prefix_tokens,
                    "seed": ns.seed, "prompts_per_shard": ns.prompts_per_shard, "batch_size": batch_size,
                    "prompts": len(prompts), "fields": [hp.prompt_field, hp.response_field]}
        split_dir = Path(ns.out) / split
        _check_manifest(split_dir, settings)
        results[split] = generate_split(
            model, data.tokenizer, prompts, split_dir, options=options, batch_size=batch_size,
            fields=(hp.prompt_field, hp.response_field), prompts_per_shard=ns.prompts_per_shard, seed=ns.seed,
            split=split, max_new_shards=ns.max_new_shards, progress=not ns.no_progress)
    return results


def main(args: Sequence[str]) -> None:
    """Entry point of ``python -m lit_distill generate``."""
    for split, result in generate(args).items():
        rate = result["tokens"] / result["seconds"] if result["seconds"] else 0.0
        state = "complete" if result["complete"] else "incomplete (rerun the same command to resume)"
        print(f"{split}: {state}; wrote {int(result['responses'])} responses, {int(result['tokens'])} tokens "
              f"in {result['seconds']:.1f} s ({rate:.0f} tokens/s)")
