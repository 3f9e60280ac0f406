"""The GPU measurements of ``bench/gpu.sh``: a realistic KD step, the fused loss at Liger's shapes,
DDP and FSDP2 smoke runs. Needs only torch, lightning and transformers plus this repository.

Parts (``--part``, default ``all``; each writes ``<out>/<part>.json``, ``all`` also ``gpu.json``):

- ``kd_step``: a ~0.5B student (Qwen2.5-0.5B's shape) distilled from a ~1.5B teacher
  (Qwen2.5-1.5B's shape), both built from configs with random weights, bf16, fused forward KL +
  fused CE from hidden states (no ``[tokens, V]`` logits), AdamW, through ``lightning.Trainer`` and
  ``DistillationModule``. Reports tokens/s and MFU = tokens/s × (2·N_teacher + 6·N_student) /
  the GPU's bf16 dense peak (``--peak-tflops``, default H200/H100 SXM: 989).
- ``fused_loss``: forward KL and generalized JSD (β = 0.5) from hidden states × heads at
  BT = 8,192, H = 4,096, V = 128,256, bf16 (Liger-Kernel's published shapes; Liger reports fused
  linear JSD 8.7 GB / 183 ms and torch 56.4 GB / 195 ms on an H100): peak memory and time of
  naive (full logits), chunked (full logits, chunked loss) and fused (logits a chunk at a time).
- ``ddp`` / ``fsdp2``: three steps of a tiny distillation under DDP and under FSDP2
  (``ModelParallelStrategy`` + ``configure_model``) on one GPU with NCCL, each in a subprocess.

``--smoke`` shrinks every size so the script runs on a CPU (gloo) in a minute: that is how it is
tested without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QWEN_05B = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
            "num_key_value_heads": 2}
QWEN_15B = {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
            "num_key_value_heads": 2}
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2}


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def llama(shape: dict, vocab: int, dtype: str, compute_logits: bool = True):
    from lit_distill.models import HFCausalLM

    config = {"model_type": "qwen2", "vocab_size": vocab, "max_position_embeddings": 4096,
              "tie_word_embeddings": False, **shape}
    with device():  # initialise on the GPU: a 1.5B model built on the CPU takes minutes
        return HFCausalLM(config=config, dtype=dtype, compute_logits=compute_logits)


def batches(n: int, batch: int, seq: int, vocab: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (batch, seq), generator=g)
        labels = torch.cat([ids[:, 1:], torch.full((batch, 1), -100)], 1)
        out.append({"inputs": {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, "labels": labels,
                    "loss_mask": labels != -100})
    return out


class StepTimer(L.Callback):
    """Wall time of every training batch from ``warmup`` on (synchronised with the GPU)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.times, self.start = warmup, [], 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        sync()
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        sync()
        if batch_idx >= self.warmup:
            self.times.append(time.perf_counter() - self.start)


def kd_step(smoke: bool, peak_tflops: float) -> dict:
    from torch.utils.data import DataLoader

    from lit_distill import DistillationModule, Teacher
    from lit_distill.losses import FusedCrossEntropy, FusedForwardKL

    vocab, batch, seq, steps, warmup = (512, 2, 64, 4, 1) if smoke else (151936, 4, 2048, 12, 3)
    dtype = "float32" if smoke else "bfloat16"
    student = llama(TINY if smoke else QWEN_05B, vocab, dtype, compute_logits=False)
    teacher = llama(TINY if smoke else QWEN_15B, vocab, dtype, compute_logits=False)
    n_student = sum(p.numel() for p in student.parameters())
    n_teacher = sum(p.numel() for p in teacher.parameters())
    module = DistillationModule(student, {"kd": FusedForwardKL(weight=0.5, chunk_size=1024),
                                          "ce": FusedCrossEntropy(weight=0.5, chunk_size=1024)},
                                teacher=Teacher(teacher), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-5))
    timer = StepTimer(warmup)
    trainer = L.Trainer(accelerator="auto", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, DataLoader(batches(steps, batch, seq, vocab), batch_size=None))
    seconds = statistics.median(timer.times)
    tokens_per_s = batch * seq / seconds
    flops_per_token = 2 * n_teacher + 6 * n_student
    return {"student_params": n_student, "teacher_params": n_teacher, "batch": batch, "seq": seq, "vocab": vocab,
            "dtype": dtype, "s_per_step": seconds, "tokens_per_s": tokens_per_s,
            "mfu": tokens_per_s * flops_per_token / (peak_tflops * 1e12),
            "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None}


def fused_loss(smoke: bool) -> dict:
    from lit_distill.losses import forward_kl, generalized_jsd
    from lit_distill.losses.fused import fused_forward_kl, fused_generalized_jsd

    tokens, hidden, vocab, chunk = (256, 32, 1000, 64) if smoke else (8192, 4096, 128256, 1024)
    dtype = torch.float32 if smoke else torch.bfloat16
    dev = device()
    g = torch.Generator(device=dev).manual_seed(0)

    def tensor(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, device=dev)).to(dtype)

    hs, ws, ht, wt = tensor(tokens, hidden), tensor(vocab, hidden, scale=0.02), tensor(tokens, hidden), \
        tensor(vocab, hidden, scale=0.02)
    paths = {
        "forward_kl": {
            "naive": lambda a, b: forward_kl(a @ b.T, ht @ wt.T),
            "chunked": lambda a, b: forward_kl(a @ b.T, ht @ wt.T, chunk_size=chunk),
            "fused": lambda a, b: fused_forward_kl(a, b, ht, wt, chunk_size=chunk)},
        "jsd": {
            "naive": lambda a, b: generalized_jsd(a @ b.T, ht @ wt.T, beta=0.5),
            "chunked": lambda a, b: generalized_jsd(a @ b.T, ht @ wt.T, beta=0.5, chunk_size=chunk),
            "fused": lambda a, b: fused_generalized_jsd(a, b, ht, wt, beta=0.5, chunk_size=chunk)}}
    result: dict = {"tokens": tokens, "hidden": hidden, "vocab": vocab, "dtype": str(dtype)}
    for loss, fns in paths.items():
        result[loss] = {}
        for name, fn in fns.items():
            times, peak, value = [], None, None
            for _ in range(3):
                a, b = hs.detach().requires_grad_(), ws.detach().requires_grad_()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                sync()
                start = time.perf_counter()
                out = fn(a, b)
                out.backward()
                sync()
                times.append(time.perf_counter() - start)
                value = float(out.detach())
                if torch.cuda.is_available():
                    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
                del a, b, out
            result[loss][name] = {"ms": 1000 * statistics.median(times[1:]), "peak_mb": peak, "value": value}
    return result


def smoke_run(kind: str, smoke: bool) -> dict:
    """Three distillation steps under DDP or FSDP2 on one device, in this process."""
    from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
    from torch.utils.data import DataLoader

    from lit_distill import DistillationModule, Teacher
    from lit_distill.losses import CrossEntropy, ForwardKL

    vocab = 256
    module = DistillationModule(llama(TINY, vocab, "float32"), {"kd": ForwardKL(weight=0.5),
                                                                 "ce": CrossEntropy(weight=0.5)},
                                teacher=Teacher(llama(TINY, vocab, "float32")))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    strategy = DDPStrategy(process_group_backend=backend) if kind == "ddp" else \
        ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1)
    trainer = L.Trainer(accelerator="auto", devices=1, strategy=strategy, max_steps=3, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    start = time.perf_counter()
    trainer.fit(module, DataLoader(batches(3, 2, 32, vocab), batch_size=None))
    return {"ok": trainer.global_step == 3, "backend": backend, "seconds": time.perf_counter() - start,
            "loss": float(trainer.callback_metrics.get("train/loss", float("nan")))}


def run_part(part: str, args: argparse.Namespace) -> dict:
    if part == "kd_step":
        return kd_step(args.smoke, args.peak_tflops)
    if part == "fused_loss":
        return fused_loss(args.smoke)
    return smoke_run(part, args.smoke)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for the JSON results")
    parser.add_argument("--part", default="all", choices=["all", "kd_step", "fused_loss", "ddp", "fsdp2"])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: runs on a CPU in about a minute")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (H200: 989)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.part != "all":
        (out / f"{args.part}.json").write_text(json.dumps(run_part(args.part, args), indent=2))
        return
    summary = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               "torch": torch.__version__, "smoke": args.smoke}
    for part in ("kd_step", "fused_loss", "ddp", "fsdp2"):  # each in its own process: one CUDA context,
        command = [sys.executable, __file__, "--out", str(out), "--part", part,  # no process group reuse
                   "--peak-tflops", str(args.peak_tflops), *(["--smoke"] if args.smoke else [])]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        result_file = out / f"{part}.json"
        summary[part] = json.loads(result_file.read_text()) if done.returncode == 0 and result_file.exists() else {
            "error": done.stderr.strip().splitlines()[-5:], "returncode": done.returncode}
        summary[part]["wall_s"] = round(time.perf_counter() - start, 1)
        print(f"{part}: {'ok' if done.returncode == 0 else 'FAILED'} ({summary[part]['wall_s']} s)", file=sys.stderr)
    (out / "gpu.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
