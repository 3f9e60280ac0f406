"""Generation throughput: lit_distill's ``generate`` path against a plain ``model.generate`` loop.

Both answer the same prompts with the same model (a Llama-style LM built from a config, the
quickstart teacher's shape by default) in the same batches, greedily, with the KV cache. The
plain loop calls ``model.generate`` on pre-padded batches and keeps the token ids; ours is
:func:`lit_distill.generate.generate_split`, i.e. what ``python -m lit_distill generate`` runs
per split: its own generation config, EOS cuts, detokenisation and JSONL shards on disk. Runs
alternate order and repeat; prints one JSON object with tokens/s of each and their ratio
(median over back-to-back pairs).

    python bench/generate.py [--prompts 64 --prompt-tokens 32 --new-tokens 64 --batch 16 --repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from overhead import llama

from datamodules.local_corpus import collect_documents
from datamodules.tokenizer_training import load_tokenizer, train_tokenizer
from lit_distill.generate import generate_split
from lit_distill.sampling import SamplingOptions, left_pad


def corpus_tokenizer(root: Path, vocab: int):
    """A byte-level BPE trained on ~300 KB of the local corpus, and the documents."""
    docs = collect_documents(max_chars=300_000)
    (root / "corpus.txt").write_text("\n\n".join(docs))
    return load_tokenizer(str(train_tokenizer([root / "corpus.txt"], root / "tok", vocab))), docs


def run_plain(model, prompts: list[list[int]], batch: int, new_tokens: int, pad_id: int, eos_id: int) -> tuple[float, int]:
    """``model.generate`` per batch, token ids kept in memory: (seconds, generated tokens)."""
    tokens, began = 0, time.perf_counter()
    for start in range(0, len(prompts), batch):
        input_ids, attention_mask = left_pad(prompts[start:start + batch], pad_id)
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                             max_new_tokens=new_tokens, pad_token_id=pad_id, eos_token_id=eos_id)
        new = out[:, input_ids.shape[1]:]
        tokens += int(((new != pad_id).cumprod(-1)).sum())
    return time.perf_counter() - began, tokens


def run_ours(model, tokenizer, prompts, batch: int, new_tokens: int, root: Path, repeat: int) -> tuple[float, int]:
    """lit_distill's generate path into a fresh directory: (seconds, generated tokens)."""
    began = time.perf_counter()
    stats = generate_split(model, tokenizer, prompts, root / f"ours{repeat}", options=SamplingOptions(new_tokens, 0.0),
                           fields=("prompt", "response"), batch_size=batch, prompts_per_shard=len(prompts), seed=0,
                           split="train", progress=False)
    return time.perf_counter() - began, int(stats["tokens"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=1024)
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tokenizer, docs = corpus_tokenizer(root, ns.vocab)
        torch.manual_seed(0)
        model = llama(ns.hidden, ns.layers, len(tokenizer)).model.eval()
        ids = [tokenizer(d, add_special_tokens=False)["input_ids"][:ns.prompt_tokens] for d in docs]
        ids = [p for p in ids if len(p) == ns.prompt_tokens][:ns.prompts]
        prompts = [(tokenizer.decode(p), p) for p in ids]
        plain, ours = [], []
        with torch.no_grad():
            run_plain(model, ids[:ns.batch], ns.batch, 4, tokenizer.pad_token_id, tokenizer.eos_token_id)  # warm-up
            for repeat in range(ns.repeats):
                runs = [("plain", lambda: run_plain(model, ids, ns.batch, ns.new_tokens, tokenizer.pad_token_id,
                                                    tokenizer.eos_token_id)),
                        ("ours", lambda r=repeat: run_ours(model, tokenizer, prompts, ns.batch, ns.new_tokens, root, r))]
                for name, run in runs if repeat % 2 == 0 else runs[::-1]:
                    (plain if name == "plain" else ours).append(run())
    if {t for _, t in plain} != {t for _, t in ours}:
        raise SystemExit(f"the two paths generated different token counts: {plain} vs {ours}")
    tokens = plain[0][1]
    ratios = [o / p for (o, _), (p, _) in zip(ours, plain, strict=True)]
    print(json.dumps({
        "bench": "generate", "device": "cpu", "threads": torch.get_num_threads(), "prompts": len(ids),
        "prompt_tokens": ns.prompt_tokens, "new_tokens": ns.new_tokens, "batch": ns.batch,
        "model": {"hidden": ns.hidden, "layers": ns.layers, "vocab": len(tokenizer)},
        "generated_tokens": tokens,
        "plain_tokens_per_s": tokens / statistics.median(s for s, _ in plain),
        "lit_distill_tokens_per_s": tokens / statistics.median(s for s, _ in ours),
        "time_ratio": statistics.median(ratios),
        "repeats": {"plain": [s for s, _ in plain], "lit_distill": [s for s, _ in ours]},
    }, indent=2))


if __name__ == "__main__":
    main()
