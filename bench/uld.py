"""ULD speed and accuracy: exact and top-k paths against a per-sample full-sort reference.

Usage::

    python bench/uld.py [--batch 4 --length 64 --vs 32000 --vt 50257 --top-k 64 --repeats 3
                         --dist zipf|gaussian]

The reference is ULD written the way the authors' code computes it: a Python loop over
samples, boolean selection of the answer positions, a full descending sort of both
vocabularies, explicit zero padding, L1, per-sample mean. ``exact_vs_reference`` and
``topk_vs_reference`` are time ratios (lower is faster; goals: exact ≤ 1, top-k ≤ 0.2).

Logits ``student [B, L, Vs]`` (requires grad) and ``teacher [B, L, Vt]`` (no grad),
every position paired (B·L compared positions, 256 by default). ``--dist zipf`` (default)
draws peaked, LM-like distributions: logit = −a·log(rank) + small noise with a random
rank per position; ``gaussian`` draws ``N(0, logit_std²)``, which has much heavier tails
than a trained LM. The three paths run in turn, ``repeats`` rounds (a neighbour's load falls on
each alike); per path the median forward + backward wall time (``seconds``, the ratios), the
minimum (``min_seconds``: the least disturbed call; ``exact_vs_reference_min``) and the median
process CPU time over all threads (``cpu_seconds``). The error is
``exact − top_k`` on the loss (never negative up to rounding); ``error_bound_mean`` is the
documented per-pair bound ``2·min(τ_q, τ_p)`` reduced like the loss (per-sample mean,
then batch mean), so ``abs_error <= error_bound_mean`` must hold; ``tail_mass_mean`` is
the mean top-k tail mass per side. Gaussian logits have heavier tails than a trained
LM's, so the error here is pessimistic; raise ``--logit-std`` for peakier distributions.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import Seconds, Stopwatch  # noqa: E402

from lit_distill.losses.cross_tokenizer import (  # noqa: E402
    _paired_rows,
    _pairing,
    _reduce_pairs,
    _top_probs,
    uld,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_interleaved(contenders: dict, student, repeats, device) -> dict[str, dict]:
    """Forward + backward of each ``contenders[name]()`` in turn, ``repeats`` rounds, so a
    neighbour's load falls on every contender alike.

    Returns, per name: median wall seconds, the minimum (the least disturbed call), median
    process CPU seconds (all threads) and the last loss value.
    """
    times: dict[str, list[Seconds]] = {name: [] for name in contenders}
    values: dict[str, float] = {}
    for _ in range(repeats):
        for name, loss_fn in contenders.items():
            student.grad = None
            _sync(device)
            watch = Stopwatch()
            loss = loss_fn()
            loss.backward()
            _sync(device)
            times[name].append(watch.read())
            values[name] = loss.item()
    return {name: {"seconds": round(statistics.median(t.wall for t in runs), 4),
                   "min_seconds": round(min(t.wall for t in runs), 4),
                   "cpu_seconds": round(statistics.median(t.cpu for t in runs), 4),
                   "loss": values[name]} for name, runs in times.items()}


@torch.no_grad()
def _bound(student, teacher, ms, mt, top_k) -> tuple[float, float, float]:
    """(loss-level bound 2·min(τ_q, τ_p), mean student tail, mean teacher tail)."""
    pos_s, pos_t, valid, n = _pairing(ms, mt)
    _, tail_q = _top_probs(_paired_rows(student, pos_s, valid, 1.0, torch.float32), top_k)
    _, tail_p = _top_probs(_paired_rows(teacher, pos_t, valid, 1.0, torch.float32), top_k)
    bound = _reduce_pairs(2 * torch.minimum(tail_q, tail_p), valid, n)
    return bound.item(), tail_q[valid].mean().item(), tail_p[valid].mean().item()


def _logits(b, length, vocab, args, gen, device) -> torch.Tensor:
    if args.dist == "gaussian":
        return torch.randn(b, length, vocab, generator=gen, device=device).mul_(args.logit_std)
    ranks = torch.rand(b, length, vocab, generator=gen, device=device).argsort(-1).add_(1)
    noise = torch.randn(b, length, vocab, generator=gen, device=device).mul_(0.1)
    return ranks.float().log_().mul_(-args.zipf_a).add_(noise)


def reference_uld(student, teacher, student_mask, teacher_mask) -> torch.Tensor:
    """Per-sample loop, full sorts and explicit padding, as in the authors' implementation."""
    per_sample = []
    for b in range(student.shape[0]):
        s, t = student[b][student_mask[b]], teacher[b][teacher_mask[b]]
        n = min(s.shape[0], t.shape[0])
        if n == 0:
            continue
        q = torch.softmax(s[:n].float(), -1).sort(-1, descending=True).values
        p = torch.softmax(t[:n].float(), -1).sort(-1, descending=True).values
        width = max(q.shape[-1], p.shape[-1])
        q = torch.nn.functional.pad(q, (0, width - q.shape[-1]))
        p = torch.nn.functional.pad(p, (0, width - p.shape[-1]))
        per_sample.append((q - p).abs().sum(-1).mean())
    return torch.stack(per_sample).mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--vs", type=int, default=32000, help="student vocabulary size")
    parser.add_argument("--vt", type=int, default=50257, help="teacher vocabulary size")
    parser.add_argument("--top-k", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--logit-std", type=float, default=4.0, help="gaussian: std of the logits")
    parser.add_argument("--dist", choices=["zipf", "gaussian"], default="zipf")
    parser.add_argument("--zipf-a", type=float, default=1.5, help="zipf: logit = -a * log(rank)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)

    gen = torch.Generator(device=device).manual_seed(0)
    b, length = args.batch, args.length
    student = _logits(b, length, args.vs, args, gen, device).requires_grad_()
    teacher = _logits(b, length, args.vt, args, gen, device)
    ms = torch.ones(b, length, dtype=torch.bool, device=device)
    mt = torch.ones_like(ms)

    small = (student[:1, :2, :128].detach().requires_grad_(), teacher[:1, :2, :128])
    for top_k in (None, args.top_k):  # one-time setup costs (kernels, allocator)
        uld(*small, ms[:1, :2], mt[:1, :2], top_k=top_k).backward()

    timed = _time_interleaved({"reference": lambda: reference_uld(student, teacher, ms, mt),
                               "exact": lambda: uld(student, teacher, ms, mt),
                               "topk": lambda: uld(student, teacher, ms, mt, top_k=args.top_k)},
                              student, args.repeats, device)
    reference_s, exact_s, topk_s = (timed[name]["seconds"] for name in ("reference", "exact", "topk"))
    reference, exact, fast = (timed[name]["loss"] for name in ("reference", "exact", "topk"))
    bound, tail_q, tail_p = _bound(student.detach(), teacher, ms, mt, args.top_k)
    error = exact - fast
    print(json.dumps({
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "batch": b, "length": length, "vs": args.vs, "vt": args.vt, "top_k": args.top_k,
        "logit_std": args.logit_std, "repeats": args.repeats,
        "dist": args.dist,
        "reference": timed["reference"],
        "exact": timed["exact"],
        "exact_vs_reference": round(exact_s / reference_s, 4),
        "exact_vs_reference_min": round(timed["exact"]["min_seconds"] / timed["reference"]["min_seconds"], 4),
        "exact_vs_reference_cpu": round(timed["exact"]["cpu_seconds"] / timed["reference"]["cpu_seconds"], 4),
        "topk_vs_reference": round(topk_s / reference_s, 4),
        "exact_matches_reference": abs(exact - reference) <= 1e-4 * max(abs(reference), 1e-6),
        "topk": timed["topk"],
        "topk_vs_exact": round(topk_s / exact_s, 4),
        "abs_error": error,
        "rel_error": error / exact if exact else 0.0,
        "error_bound_mean": bound,
        "within_bound": -1e-6 <= error <= bound + 1e-6,
        "tail_mass_mean": {"student": tail_q, "teacher": tail_p},
    }))


if __name__ == "__main__":
    main()
