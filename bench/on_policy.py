"""The cost of an on-policy step: the same fit with every step on-policy vs every step off-policy.

Both runs train the same student from the same teacher (Llama-style, built from configs) on the
same prompt/response batches through ``lightning.Trainer`` and ``DistillationModule`` with
:class:`~lit_distill.on_policy.OnPolicyStep` (generalized JSD, β = 0.5): ``student_fraction: 0``
trains on the data's responses, ``1`` replaces them by the student's samples of the same length
(``max_new_tokens`` = the response length; the untrained student rarely stops early). Runs
alternate and repeat; prints one JSON object with seconds per step of each and their ratio.

    python bench/on_policy.py [--steps 12 --warmup 3 --repeats 3 --batch 8 --prompt 32 --response 64]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import tempfile

import lightning as L
import torch
from overhead import StepTimer, llama
from torch.utils.data import DataLoader

from lit_distill import DistillationModule
from lit_distill.losses import GeneralizedJSD
from lit_distill.on_policy import OnPolicyStep

PAD, EOS = 0, 2


def pair_batches(n: int, batch: int, prompt: int, response: int, vocab: int) -> list[dict]:
    """Random prompt/response rows, labels on the response only (shifted, as the text datamodule)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(3, vocab, (batch, prompt + response), generator=g)
        labels = torch.full_like(ids, -100)
        labels[:, prompt - 1:-1] = ids[:, prompt:]
        out.append({"inputs": {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                    "labels": labels, "loss_mask": labels != -100})
    return out


def run(student, teacher, batches, fraction: float, response: int, warmup: int, root: str) -> float:
    step = OnPolicyStep(student_fraction=fraction, max_new_tokens=response, pad_token_id=PAD, eos_token_id=EOS)
    module = DistillationModule(student=copy.deepcopy(student), teacher=copy.deepcopy(teacher),
                                losses={"jsd": GeneralizedJSD(beta=0.5)}, step=step,
                                optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    timer = StepTimer(warmup, len(batches) - 1)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=len(batches), enable_checkpointing=False,
                        enable_model_summary=False, logger=False, default_root_dir=root, callbacks=[timer])
    with contextlib.redirect_stdout(sys.stderr):
        trainer.fit(module, DataLoader(batches, batch_size=None))
    return timer.seconds / (len(batches) - 1 - warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--response", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=1024)
    ns = parser.parse_args()
    torch.manual_seed(0)
    student, teacher = llama(64, 2, ns.vocab), llama(128, 4, ns.vocab)  # the quickstart's shapes
    batches = pair_batches(ns.warmup + ns.steps, ns.batch, ns.prompt, ns.response, ns.vocab)
    off, on = [], []
    with tempfile.TemporaryDirectory() as root:
        for repeat in range(ns.repeats):
            runs = [(off, 0.0), (on, 1.0)]
            for times, fraction in runs if repeat % 2 == 0 else runs[::-1]:
                times.append(run(student, teacher, batches, fraction, ns.response, ns.warmup, root))
    print(json.dumps({
        "bench": "on_policy", "device": "cpu", "threads": torch.get_num_threads(), "batch": ns.batch,
        "prompt_tokens": ns.prompt, "response_tokens": ns.response, "vocab": ns.vocab,
        "off_policy_s_per_step": statistics.median(off), "on_policy_s_per_step": statistics.median(on),
        "on_policy_over_off_policy": statistics.median(a / b for a, b in zip(on, off, strict=True)),
        "repeats": {"off_policy": off, "on_policy": on},
    }, indent=2))


if __name__ == "__main__":
    main()
