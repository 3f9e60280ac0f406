"""``python -m lit_distill speculate``: how many tokens a draft model saves its target.

    python -m lit_distill speculate --target DIR --draft DIR --data FILE [--gamma 4]

Both models (``save_pretrained`` directories or hub ids, one vocabulary) score the texts of
``FILE`` (plain text or prompt/response JSONL, read by ``datamodules.TextDataModule`` with the
target's tokenizer; with responses, only response tokens count); prints one JSON object with the
sampled and greedy acceptance rates and the expected tokens per target call for ``--gamma``
draft tokens (:mod:`lit_distill.speculative`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import torch

from lit_distill.errors import ConfigError
from lit_distill.speculative import AcceptanceTally


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lit_distill speculate", description=__doc__.split("\n")[0])
    p.add_argument("--target", required=True, help="the target model: a save_pretrained directory or hub id")
    p.add_argument("--draft", required=True, help="the draft model (same vocabulary as the target)")
    p.add_argument("--data", required=True, help="text or prompt/response JSONL file to score")
    p.add_argument("--tokenizer", help="tokenizer (default: the target's)")
    p.add_argument("--gamma", type=int, default=4, help="draft tokens per target call (default 4)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of both models")
    p.add_argument("--max-length", type=int, default=256, help="tokens per sequence (default 256)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, default=None, help="score at most this many batches")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="load both models in this dtype, e.g. bfloat16 (default: as saved)")
    return p


def load_causal_lm(path: str, field: str, device: str = "cpu", dtype: str | None = None):
    from transformers import AutoModelForCausalLM

    from lit_distill.models.base import parse_dtype
    from lit_distill.models.hf_loading import load_pretrained_checked

    torch_dtype = parse_dtype(dtype, "speculate --dtype")
    return load_pretrained_checked(AutoModelForCausalLM, path, field, "Qwen/Qwen2.5-0.5B",
                                   dtype=torch_dtype).eval().to(device)


@torch.no_grad()
def measure(target, draft, batches, gamma: int, temperature: float) -> dict:
    """Acceptance of ``draft`` against ``target`` over ``batches`` of ``TextDataModule`` batches."""
    tally = AcceptanceTally(gamma, temperature)
    device = next(target.parameters()).device
    for batch in batches:
        inputs = {key: value.to(device) for key, value in batch["inputs"].items()}
        target_logits = target(**inputs, use_cache=False).logits
        draft_logits = draft(**inputs, use_cache=False).logits
        tally.update(draft_logits, target_logits, batch["loss_mask"].to(device))
    return tally.result()


def main(args: Sequence[str]) -> None:
    from datamodules.text import TextDataModule

    ns = parser().parse_args(list(args))
    if ns.gamma < 1:
        raise ConfigError(f"speculate --gamma: must be >= 1, got {ns.gamma}")
    device = ns.device or ("cuda" if torch.cuda.is_available() else "cpu")
    target = load_causal_lm(ns.target, "speculate --target", device, ns.dtype)
    draft = load_causal_lm(ns.draft, "speculate --draft", device, ns.dtype)
    if draft.get_output_embeddings().weight.shape[0] > target.get_output_embeddings().weight.shape[0]:
        raise ConfigError("speculate --draft: the draft has more output logits than the target; a draft must "
                          "share its target's vocabulary")
    data = TextDataModule(tokenizer=ns.tokenizer or ns.target, train_path=ns.data, val_path=ns.data,
                          max_length=ns.max_length, batch_size=ns.batch_size)
    data.setup("validate")
    batches = (b for i, b in enumerate(data.val_dataloader()) if ns.limit is None or i < ns.limit)
    result = measure(target, draft, batches, ns.gamma, ns.temperature)
    print(json.dumps(result | {"target": ns.target, "draft": ns.draft, "data": ns.data}, indent=2))
