"""The distillation step with the teacher in bfloat16 against float32, on this machine's CPU.

Same models (tiny Llama-style teacher 4 × 256 and student 2 × 128, V = 4,096, built from
configs), same in-memory batches, same optimizer, through ``lightning.Trainer`` +
``DistillationModule``; only ``Teacher(dtype=...)`` differs. Reports the steady-state seconds per
step of each (median of interleaved repeats), their ratio, the teacher forward alone in both
dtypes, and how far the bf16 teacher's distribution is from the fp32 one (mean KL per position
and the change of the distillation loss on the same student).

    python bench/bf16_teacher.py [--steps 20 --warmup 3 --repeats 5 --batch 8 --seq 128]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import tempfile
import time

import lightning as L
import torch
from overhead import (  # bench/ is on sys.path when run as a script
    Seconds,
    StepTimer,
    llama,
    make_batches,
)
from torch.utils.data import DataLoader

from lit_distill import DistillationModule, Teacher
from lit_distill.losses import CrossEntropy, ForwardKL, forward_kl


def run(student, teacher, dtype: str | None, batches, warmup: int, root: str) -> Seconds:
    module = DistillationModule(copy.deepcopy(student), {"kd": ForwardKL(weight=0.5), "ce": CrossEntropy(weight=0.5)},
                                teacher=Teacher(copy.deepcopy(teacher), dtype=dtype),
                                optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    return timed_fit(module, batches, warmup, root)


def timed_fit(module: DistillationModule, batches: list[dict], warmup: int, root: str) -> Seconds:
    """Fit ``module`` on ``batches`` (one step each) through a quiet ``lightning.Trainer``; wall and
    process CPU seconds per step after ``warmup`` steps."""
    timer = StepTimer(warmup, len(batches) - 1)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=len(batches), enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=False, logger=False, default_root_dir=root,
                        callbacks=[timer])
    with contextlib.redirect_stdout(sys.stderr):
        trainer.fit(module, DataLoader(batches, batch_size=None))
    steps = len(batches) - warmup
    return Seconds(timer.interval.wall / steps, timer.interval.cpu / steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=4096)
    ns = parser.parse_args()
    torch.manual_seed(0)
    student, teacher = llama(128, 2, ns.vocab), llama(256, 4, ns.vocab)
    batches = make_batches(ns.warmup + ns.steps, ns.batch, ns.seq, ns.vocab)
    times: dict[str, list[Seconds]] = {"float32": [], "bfloat16": []}
    with tempfile.TemporaryDirectory() as root:
        for repeat in range(ns.repeats):
            order = ["float32", "bfloat16"] if repeat % 2 == 0 else ["bfloat16", "float32"]
            for dtype in order:
                times[dtype].append(run(student, teacher, None if dtype == "float32" else dtype, batches,
                                        ns.warmup, root))
    fp32, bf16 = Teacher(copy.deepcopy(teacher)), Teacher(copy.deepcopy(teacher), dtype="bfloat16")
    forward = {"float32": [], "bfloat16": []}
    for _ in range(ns.repeats):
        for name, model in (("float32", fp32), ("bfloat16", bf16)):
            start = time.perf_counter()
            model(**batches[0]["inputs"])
            forward[name].append(time.perf_counter() - start)
    inputs, mask = batches[0]["inputs"], batches[0]["loss_mask"]
    with torch.no_grad():
        logits32, logits16 = fp32(**inputs).logits, bf16(**inputs).logits.float()
        student_logits = student(**inputs).logits
    result = {
        "bench": "bf16_teacher", "device": "cpu", "threads": torch.get_num_threads(),
        "cpu_bf16_flags": sorted({f for f in open("/proc/cpuinfo").read().split() if f in ("avx512_bf16", "amx_bf16")}),
        "s_per_step": {k: statistics.median(t.wall for t in v) for k, v in times.items()},
        "step_ratio_bf16_over_fp32": statistics.median(b.wall / f.wall for b, f in zip(
            times["bfloat16"], times["float32"], strict=True)),
        "cpu_step_ratio_bf16_over_fp32": statistics.median(b.cpu / f.cpu for b, f in zip(
            times["bfloat16"], times["float32"], strict=True)),
        "teacher_forward_ms": {k: 1000 * statistics.median(v) for k, v in forward.items()},
        "kl_fp32_teacher_to_bf16_teacher": float(forward_kl(logits16, logits32, mask)),
        "kd_loss": {"fp32_teacher": float(forward_kl(student_logits, logits32, mask)),
                    "bf16_teacher": float(forward_kl(student_logits, logits16, mask))},
        "repeats": {k: [t.wall for t in v] for k, v in times.items()},
        "cpu_repeats": {k: [t.cpu for t in v] for k, v in times.items()},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
