"""Framework overhead: the same distillation step through lit_distill and a hand-written loop.

Both run in this process on the same models (tiny Llama-style teacher and
student built from configs), the same in-memory batches and the same optimizer:
teacher forward under no_grad, student forward/backward, AdamW step. The hand loop's
loss is plain PyTorch (``F.kl_div`` + ``F.cross_entropy``), not lit_distill's kernels, so the
ratio covers the whole cost of our step: Lightning, the module and the loss functions. The
lit_distill run uses ``lightning.Trainer`` with logging, progress bar and
metrics at their defaults (checkpointing off: the hand loop does not save
either). Runs alternate order and are repeated; steady-state time per step is taken
after warm-up steps. Prints one JSON object: ``time_ratio`` is the median over
repeats of lit_distill / hand (each pair run back to back), with the ratio of
the fastest runs and the absolute overhead per step beside it. A third contender, the hand loop
with lit_distill's fused KL + CE kernel, splits that ratio into the kernel's share
(``kernel_time_ratio``) and the framework's (``framework_time_ratio``: Lightning and the module
around the same kernel). ``cpu_time_ratio`` is the same
ratio on the process's CPU time (``time.process_time``): on a machine shared with other jobs
wall time mostly measures the neighbours, CPU time much less so.

Whole runs differ by 10–25 % on this machine, more than the gaps being measured, so the bench
also interleaves the contenders **step by step** in one Trainer run (``interleaved`` in the JSON):
after each lit_distill step, a callback runs one step of the hand loop, of the hand loop with our
kernel, and of lit_distill's module in a plain loop without a Trainer, on the same batch (each with
its own copies of the models and optimizer; they rotate which goes first). The last splits the
framework's share into the module's and Lightning's. A lit_distill step is everything from the
end of one callback to the start of the next (the Trainer's whole cycle: data, hooks, logging,
progress bar, its own step), so ``interleaved.time_ratio`` is the median over steps of
lit_distill / hand on neighbouring steps, which drift and interference hit alike.

    python bench/overhead.py [--steps 60 --warmup 10 --repeats 3 --batch 8 --seq 128]
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
from typing import NamedTuple

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lit_distill import DistillationModule
from lit_distill.losses import CrossEntropy, ForwardKL, forward_kl_and_cross_entropy
from lit_distill.models import HFCausalLM


def llama(hidden: int, layers: int, vocab: int) -> HFCausalLM:
    return HFCausalLM(config={"model_type": "llama", "vocab_size": vocab, "hidden_size": hidden,
                              "intermediate_size": 3 * hidden, "num_hidden_layers": layers,
                              "num_attention_heads": 4, "num_key_value_heads": 2,
                              "max_position_embeddings": 512})


def make_batches(n: int, batch: int, seq: int, vocab: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (batch, seq), generator=g)
        labels = torch.cat([ids[:, 1:], torch.full((batch, 1), -100)], dim=1)
        out.append({"inputs": {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                    "labels": labels, "loss_mask": labels != -100})
    return out


class Seconds(NamedTuple):
    """A timed interval: wall seconds and the process's CPU seconds (all its threads)."""

    wall: float
    cpu: float


class Stopwatch:
    """Wall and process CPU time since :meth:`start`."""

    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> Seconds:
        return Seconds(time.perf_counter() - self.wall, time.process_time() - self.cpu)


class StepTimer(L.Callback):
    """Time from the start of batch ``warmup`` to the end of batch ``last``: ``seconds`` (wall)
    and ``interval`` (wall and CPU)."""

    def __init__(self, warmup: int, last: int) -> None:
        self.warmup, self.last, self.watch = warmup, last, Stopwatch()
        self.interval = Seconds(0.0, 0.0)

    @property
    def seconds(self) -> float:
        return self.interval.wall

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.watch.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.last:
            self.interval = self.watch.read()


def distillation_module(student, teacher) -> DistillationModule:
    """lit_distill's module for the bench's objective (0.5 · forward KL + 0.5 · CE, AdamW), on copies."""
    return DistillationModule(student=copy.deepcopy(student), teacher=copy.deepcopy(teacher),
                              losses={"kd": ForwardKL(weight=0.5), "ce": CrossEntropy(weight=0.5)},
                              optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))


def fit_lit(student, teacher, batches, root: str, callback: L.Callback) -> None:
    """One lit_distill Trainer run over ``batches`` (logging and progress bar at their defaults)."""
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=len(batches), enable_checkpointing=False,
                        enable_model_summary=False, default_root_dir=root, callbacks=[callback])
    with contextlib.redirect_stdout(sys.stderr):  # the progress bar must not mix with the JSON
        trainer.fit(distillation_module(student, teacher), DataLoader(batches, batch_size=None))


def run_lit(student, teacher, batches, warmup: int, root: str) -> Seconds:
    timer = StepTimer(warmup, len(batches) - 1)
    fit_lit(student, teacher, batches, root, timer)
    return timer.interval


class HandLoop:
    """A hand-written training loop advanced one step at a time: own model copies and AdamW."""

    def __init__(self, student, teacher, loss_fn) -> None:
        self.student = copy.deepcopy(student).train()
        self.teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=1e-3)
        self.loss_fn = loss_fn

    def step(self, batch: dict) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(**batch["inputs"]).logits
        student_logits = self.student(**batch["inputs"]).logits
        loss = self.loss_fn(student_logits, teacher_logits, batch["labels"], batch["loss_mask"])
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.detach()


class ModuleLoop:
    """lit_distill's module stepped by a plain loop, without a Trainer: its ``distillation_loss``
    (teacher wrapper, term inputs, fused kernel, valid count), backward of the mean, AdamW.
    Beside the Trainer run it splits the framework's share into the module's and Lightning's."""

    def __init__(self, student, teacher) -> None:
        self.module = distillation_module(student, teacher)
        self.module.student.train()
        self.optimizer = torch.optim.AdamW(self.module.student.parameters(), lr=1e-3)

    def step(self, batch: dict) -> torch.Tensor:
        result = self.module.distillation_loss(batch)
        self.module._window_count = None  # the Trainer's gradient rescale would consume it
        self.optimizer.zero_grad()
        result.total.backward()
        self.optimizer.step()
        return result.total.detach()


class Interleaved(L.Callback):
    """After each lit_distill step, one step of each loop on the same batch, timed apart.

    ``times[name]`` holds each timed step's (wall, CPU) seconds, one per batch after ``warmup``
    (the same batches for every contender): the loops' from their own step, lit_distill's from
    the end of the previous batch's loop steps to the start of this batch's (the Trainer's
    whole cycle). ``last_loss[name]`` is each loop's loss on the last batch.
    """

    def __init__(self, loops: dict[str, HandLoop | ModuleLoop], warmup: int) -> None:
        self.loops, self.warmup = loops, warmup
        self.times: dict[str, list[Seconds]] = {"lit_distill": [], **{name: [] for name in loops}}
        self.last_loss: dict[str, float] = {}
        self.watch = Stopwatch()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        lit = self.watch.read()
        shift = batch_idx % len(self.loops)  # rotate which loop goes first
        names = list(self.loops)[shift:] + list(self.loops)[:shift]
        for name in names:
            watch = Stopwatch()
            loss = self.loops[name].step(batch)
            if batch_idx > self.warmup:
                self.times[name].append(watch.read())
            self.last_loss[name] = loss.item()
        if batch_idx > self.warmup:  # the interval for batch ``warmup`` began inside warm-up
            self.times["lit_distill"].append(lit)
        self.watch.start()


def run_interleaved(student, teacher, batches, warmup: int, root: str) -> Interleaved:
    """lit_distill, the plain hand loop, the hand loop with our kernel and the module without a
    Trainer, step by step; returns the callback (its ``times`` and ``last_loss``)."""
    loops = {"hand": HandLoop(student, teacher, plain_kd_loss),
             "hand_with_lit_kernel": HandLoop(student, teacher, lit_kernel_loss),
             "module_without_trainer": ModuleLoop(student, teacher)}
    timer = Interleaved(loops, warmup)
    fit_lit(student, teacher, batches, root, timer)
    return timer


def step_ratios(times: dict[str, list[Seconds]], over: str, under: str) -> dict[str, float]:
    """Median, quartiles and CPU-time median of per-step ``over / under`` on the same batches."""
    a, b = times[over], times[under]
    walls = sorted(x.wall / y.wall for x, y in zip(a, b, strict=True))
    q1, median, q3 = statistics.quantiles(walls, n=4) if len(walls) > 1 else walls * 3
    return {"median": median, "q1": q1, "q3": q3,
            "cpu_median": statistics.median(x.cpu / y.cpu for x, y in zip(a, b, strict=True))}


def plain_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                  mask: torch.Tensor) -> torch.Tensor:
    """0.5 · forward KL + 0.5 · CE as a user would write them in plain PyTorch (no lit_distill code)."""
    log_q = F.log_softmax(student_logits.float(), dim=-1)
    log_p = F.log_softmax(teacher_logits.float(), dim=-1)
    kl = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)
    kl = (kl * mask).sum() / mask.sum().clamp_min(1)
    ce = F.cross_entropy(student_logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
    return 0.5 * kl + 0.5 * ce


def lit_kernel_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                    mask: torch.Tensor) -> torch.Tensor:
    """The same 0.5 · forward KL + 0.5 · CE through lit_distill's fused kernel (what the module calls)."""
    kl, ce = forward_kl_and_cross_entropy(student_logits, teacher_logits, labels, mask)
    return 0.5 * kl + 0.5 * ce


def run_loop(student, teacher, batches, warmup: int, loss_fn=plain_kd_loss) -> tuple[Seconds, float, dict]:
    """A hand-written loop with ``loss_fn`` (default: plain PyTorch losses, so it measures our kernels
    too); returns (time after warm-up, last loss, ``{"teacher": last-batch teacher logits}``)."""
    loop, watch, loss = HandLoop(student, teacher, loss_fn), Stopwatch(), torch.zeros(())
    for i, batch in enumerate(batches):
        if i == warmup:
            watch.start()
        loss = loop.step(batch)
    elapsed = watch.read()
    with torch.no_grad():
        last = {"teacher": loop.teacher(**batch["inputs"]).logits}
    return elapsed, loss.item(), last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--interleaved-repeats", type=int, default=3,
                        help="Trainer runs of the step-by-step interleaved measurement (0: skip it)")
    parser.add_argument("--skip-runs", action="store_true",
                        help="only the interleaved measurement, not the whole-run repeats")
    ns = parser.parse_args()
    torch.manual_seed(0)
    student, teacher = llama(128, 2, ns.vocab), llama(256, 4, ns.vocab)
    batches = make_batches(ns.warmup + ns.steps, ns.batch, ns.seq, ns.vocab)
    lit, hand, kernel = [], [], []
    steps: dict[str, list[Seconds]] = {"lit_distill": [], "hand": [], "hand_with_lit_kernel": [],
                                       "module_without_trainer": []}
    with tempfile.TemporaryDirectory() as root:
        for _ in range(ns.interleaved_repeats):
            for name, times in run_interleaved(student, teacher, batches, ns.warmup, root).times.items():
                steps[name] += times
        for repeat in range(0 if ns.skip_runs else ns.repeats):  # rotate the order so drift hits every contender alike
            runs = [(hand, lambda: run_loop(student, teacher, batches, ns.warmup)[0]),
                    (lit, lambda: run_lit(student, teacher, batches, ns.warmup, root)),
                    (kernel, lambda: run_loop(student, teacher, batches, ns.warmup, lit_kernel_loss)[0])]
            for times, run in runs[repeat % 3:] + runs[:repeat % 3]:
                times.append(run())
    result = {"bench": "overhead", "device": "cpu", "threads": torch.get_num_threads(), "steps_timed": ns.steps,
              "batch": ns.batch, "seq": ns.seq, "vocab": ns.vocab}
    if steps["hand"]:
        result["interleaved"] = {
            "steps_paired": len(steps["hand"]),
            **{f"{name}_seconds_per_step": statistics.median(t.wall for t in times) for name, times in steps.items()},
            "time_ratio": step_ratios(steps, "lit_distill", "hand"),
            "kernel_time_ratio": step_ratios(steps, "hand_with_lit_kernel", "hand"),
            "framework_time_ratio": step_ratios(steps, "lit_distill", "hand_with_lit_kernel"),
            # the framework's share split: the module's own work, then Lightning's around it
            "module_time_ratio": step_ratios(steps, "module_without_trainer", "hand_with_lit_kernel"),
            "trainer_time_ratio": step_ratios(steps, "lit_distill", "module_without_trainer"),
        }
    if hand:
        result.update(whole_runs(lit, hand, kernel, ns.steps))
    print(json.dumps(result, indent=2))


def whole_runs(lit: list[Seconds], hand: list[Seconds], kernel: list[Seconds], steps: int) -> dict:
    """The whole-run measurement's keys: medians over repeats of paired run-time ratios."""
    walls = {"hand": [t.wall for t in hand], "lit_distill": [t.wall for t in lit]}
    cpus = {"hand": [t.cpu for t in hand], "lit_distill": [t.cpu for t in lit]}
    return {
        "hand_seconds_per_step": statistics.median(walls["hand"]) / steps,
        "lit_distill_seconds_per_step": statistics.median(walls["lit_distill"]) / steps,
        "time_ratio": statistics.median(a.wall / b.wall for a, b in zip(lit, hand, strict=True)),
        "time_ratio_of_minima": min(walls["lit_distill"]) / min(walls["hand"]),
        "cpu_time_ratio": statistics.median(a.cpu / b.cpu for a, b in zip(lit, hand, strict=True)),
        "overhead_ms_per_step": 1000 * (statistics.median(walls["lit_distill"]) - statistics.median(walls["hand"]))
        / steps,
        "repeats": walls, "cpu_repeats": cpus,
        # The hand loop with lit_distill's fused KL + CE kernel instead of the plain losses: splits the
        # gap into the kernel's share (hand_with_lit_kernel / hand) and the framework's (lit_distill /
        # hand_with_lit_kernel: Lightning and the module around the same kernel).
        "hand_with_lit_kernel_seconds_per_step": statistics.median(t.wall for t in kernel) / steps,
        "kernel_time_ratio": statistics.median(a.wall / b.wall for a, b in zip(kernel, hand, strict=True)),
        "kernel_cpu_time_ratio": statistics.median(a.cpu / b.cpu for a, b in zip(kernel, hand, strict=True)),
        "framework_time_ratio": statistics.median(a.wall / b.wall for a, b in zip(lit, kernel, strict=True)),
        "framework_cpu_time_ratio": statistics.median(a.cpu / b.cpu for a, b in zip(lit, kernel, strict=True)),
        "hand_with_lit_kernel_repeats": [t.wall for t in kernel],
    }


if __name__ == "__main__":
    main()
