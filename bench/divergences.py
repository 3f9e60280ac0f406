"""Every divergence's forward + backward against a plain masked PyTorch implementation of its formula.

The plain versions are what a user would write: ``log_softmax`` of both sides (temperature
applied), the per-position divergence from the same formula, the mean over masked positions,
T², autograd for the gradient. Ours is the library function (closed-form student gradient when
the teacher needs none). Both get the same student logits ``[B, L, V]`` (requiring grad), a
teacher without gradient and a mask with ~10 % of positions off.

Time is the CPU time of the measuring thread (``time.thread_time``) with one torch thread, so
other work on a shared machine does not count; runs are interleaved and the median of paired
ratios is reported (ours / plain: below 1 is faster). Values and gradients are compared too.
The last entry is the usual step's pair, ``0.5·KL + 0.5·CE`` at T = 1: plain ``F.kl_div`` +
``F.cross_entropy`` against what the module runs for a ``ForwardKL`` + ``CrossEntropy`` pair
(:func:`lit_distill.losses.forward_kl_and_cross_entropy`).

    python bench/divergences.py [--batch 8 --seq 128 --vocab 4096 --repeats 9]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F

from lit_distill.losses import (
    forward_kl,
    forward_kl_and_cross_entropy,
    generalized_jsd,
    reverse_kl,
    skew_kl,
    skew_reverse_kl,
    total_variation,
)


def _mean(per_position, mask, temperature):
    return (per_position * mask).sum() / mask.sum().clamp_min(1) * temperature**2


def _log_mix(a, b, w):
    return torch.logaddexp(a + math.log(w), b + math.log1p(-w))


def plain(name: str, s, t, mask, temperature=1.0, beta=0.5, alpha=0.1):
    """The textbook masked implementation of each divergence (p = teacher, q = student)."""
    lq, lp = F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1)
    if name == "forward_kl":
        per = F.kl_div(lq, lp, log_target=True, reduction="none").sum(-1)
    elif name == "reverse_kl":
        per = F.kl_div(lp, lq, log_target=True, reduction="none").sum(-1)
    elif name == "generalized_jsd":
        lm = _log_mix(lp, lq, beta)
        per = beta * F.kl_div(lm, lp, log_target=True, reduction="none").sum(-1) + \
            (1 - beta) * F.kl_div(lm, lq, log_target=True, reduction="none").sum(-1)
    elif name == "skew_kl":
        per = F.kl_div(_log_mix(lp, lq, alpha), lp, log_target=True, reduction="none").sum(-1)
    elif name == "skew_reverse_kl":
        per = F.kl_div(_log_mix(lq, lp, alpha), lq, log_target=True, reduction="none").sum(-1)
    else:
        return ((lp.exp() - lq.exp()).abs().sum(-1) * 0.5 * mask).sum() / mask.sum().clamp_min(1)
    return _mean(per, mask, temperature)


OURS = {"forward_kl": forward_kl, "reverse_kl": reverse_kl, "generalized_jsd": generalized_jsd,
        "skew_kl": skew_kl, "skew_reverse_kl": skew_reverse_kl, "total_variation": total_variation}


def ours(name: str, s, t, mask, temperature=1.0):
    if name == "total_variation":
        return total_variation(s, t, mask)
    return OURS[name](s, t, mask, temperature=temperature)


def timed(fn, s0, t, mask, temperature) -> tuple[float, torch.Tensor, torch.Tensor]:
    s = s0.clone().requires_grad_()
    start = time.thread_time()
    value = fn(s, t, mask, temperature)
    value.backward()
    return time.thread_time() - start, value.detach(), s.grad


def compare(plain_fn, ours_fn, s0, t, mask, temperature, repeats) -> dict:
    """Interleaved CPU times of ``plain_fn`` and ``ours_fn`` (each ``fn(s, t, mask, T) -> value``),
    the median of the paired ratios, and how far the values and gradients differ."""
    for fn in (plain_fn, ours_fn):  # warm-up
        timed(fn, s0, t, mask, temperature)
    times = {plain_fn: [], ours_fn: []}
    outputs = {}
    for repeat in range(repeats):
        order = [plain_fn, ours_fn]
        for fn in order if repeat % 2 == 0 else order[::-1]:
            seconds, value, grad = timed(fn, s0, t, mask, temperature)
            times[fn].append(seconds)
            outputs[fn] = value, grad
    (plain_value, plain_grad), (our_value, our_grad) = outputs[plain_fn], outputs[ours_fn]
    return {"plain_ms": 1000 * statistics.median(times[plain_fn]), "ours_ms": 1000 * statistics.median(times[ours_fn]),
            "ratio": statistics.median(o / p for o, p in zip(times[ours_fn], times[plain_fn], strict=True)),
            "value_rel_diff": float((our_value - plain_value).abs() / plain_value.abs().clamp_min(1e-12)),
            "grad_max_abs_diff": float((our_grad - plain_grad).abs().max())}


def kl_and_ce(labels):
    """``0.5·KL + 0.5·CE`` as plain PyTorch and as the module runs a ForwardKL + CrossEntropy pair."""
    def plain_fn(s, t, mask, temperature):
        return 0.5 * plain("forward_kl", s, t, mask) + 0.5 * F.cross_entropy(s.flatten(0, 1), labels.flatten())

    def ours_fn(s, t, mask, temperature):
        kl, ce = forward_kl_and_cross_entropy(s, t, labels, mask)
        return 0.5 * kl + 0.5 * ce
    return plain_fn, ours_fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--temperature", type=float, default=1.0)
    ns = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    s0 = 2 * torch.randn(ns.batch, ns.seq, ns.vocab, generator=g)
    t = 2 * torch.randn(ns.batch, ns.seq, ns.vocab, generator=g)
    mask = torch.rand(ns.batch, ns.seq, generator=g) > 0.1
    labels = torch.randint(0, ns.vocab, (ns.batch, ns.seq), generator=g).masked_fill(~mask, -100)
    result = {"bench": "divergences", "shape": [ns.batch, ns.seq, ns.vocab], "temperature": ns.temperature,
              "threads": 1, "clock": "thread CPU time"}
    for name in OURS:
        temperature = 1.0 if name == "total_variation" else ns.temperature
        plain_fn = lambda s, t_, m, T, n=name: plain(n, s, t_, m, T)  # noqa: E731
        ours_fn = lambda s, t_, m, T, n=name: ours(n, s, t_, m, T)  # noqa: E731
        result[name] = compare(plain_fn, ours_fn, s0, t, mask, temperature, ns.repeats)
    result["forward_kl+cross_entropy (T=1)"] = compare(*kl_and_ce(labels), s0, t, mask, 1.0, ns.repeats)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
