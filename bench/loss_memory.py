"""Peak extra memory and wall time of forward KL forward+backward from hidden states × LM heads.

Usage::

    python bench/loss_memory.py [--vocab 131072 --tokens 4096 --student-dim 256 --teacher-dim 512
                                 --chunk-size 1024 --fused-chunk-size 256 --repeats 3 --threads 1]
    python bench/loss_memory.py --quick          # tiny sizes, a smoke test

Inputs: float32 last hidden states ``[tokens, D]`` and LM heads ``[vocab, D]`` of a
student (hidden states and head require grad) and a teacher (constants). Three paths,
each producing the loss and the gradients of the student's hidden states and head:

- ``naive``: materialise both ``[tokens, vocab]`` logits, ``forward_kl`` in one shot.
- ``chunked``: materialise both logits, ``forward_kl(chunk_size=...)``.
- ``fused``: ``fused_forward_kl`` (logits only ever exist one chunk at a time).
- ``sparse`` and ``fused_sparse`` (with ``--cache-k K``, default 128; 0 leaves them out): the
  teacher as an offline cache holds (its top-K log-probs, ids and tail mass, computed once
  outside the timed steps); ``sparse`` materialises the student's logits for
  ``sparse_forward_kl``, ``fused_sparse`` is ``fused_sparse_forward_kl`` (neither side ever
  holds ``[tokens, vocab]`` logits). They are compared with each other, not with naive.
- ``torchtune`` (only if torchtune imports; bench extra): materialise both logits,
  torchtune's ``ForwardKLWithChunkedOutputLoss`` over ``--torchtune-chunks`` chunks (its default 8).
  Its value is the teacher cross-entropy −Σ p log q = KL + H(p): same gradients, and the
  value matches naive's once H(p) (measured once, outside the timed steps) is subtracted.

Peak memory is measured above the baseline taken after the inputs are allocated
(and includes the gradients ``.grad`` of the student's hidden states and head, which
every path must produce):

- CUDA: ``torch.cuda.max_memory_allocated`` minus ``memory_allocated`` before the step.
- CPU: process RSS (``/proc/self/status``), sampled by a background thread every
  ~1 ms; where the kernel allows resetting the high-water mark
  (``/proc/self/clear_refs``), ``VmHWM`` is read too and the larger is kept.

Time: wall seconds, and on CPU also the CPU seconds of the measuring thread
(``time.thread_time``; with ``--threads 1`` all compute runs in that thread), which is
what to compare on a machine shared with other work: wall time there mostly measures
the neighbours.

Prints one JSON object: device, sizes, ``naive``, ``chunked`` and ``fused``
``{peak_mb, seconds, cpu_seconds}`` (peak over repeats, median times; the paths run
interleaved, in an order that rotates every round), their ratios against naive,
and whether values and gradients of each path match naive's (rtol 1e-5 on the value,
1e-4 on the gradients).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import statistics
import threading
import time

import torch

from lit_distill.cache import sparse_teacher
from lit_distill.losses import (
    forward_kl,
    fused_forward_kl,
    fused_sparse_forward_kl,
    sparse_forward_kl,
)

MB = 2**20
CACHE_KEYS = ("topk_ids", "topk_logprobs", "tail_mass")  # the order sparse_teacher returns them in


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _release_freed_memory() -> None:
    gc.collect()
    try:  # hand freed heap pages back to the OS so the next baseline is honest
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _PeakRSS:
    """Context manager recording the peak RSS (bytes) while it is open."""

    def __init__(self, period_s: float = 0.001) -> None:
        self.period_s = period_s
        self.peak = 0
        self._stop = threading.Event()
        self._hwm_reset = False

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _status_kb("VmRSS") * 1024)
            time.sleep(self.period_s)

    def __enter__(self) -> _PeakRSS:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
            self._hwm_reset = True
        except OSError:
            pass
        self.baseline = _status_kb("VmRSS") * 1024
        self.peak = self.baseline
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status_kb("VmRSS") * 1024)
        if self._hwm_reset:
            self.peak = max(self.peak, _status_kb("VmHWM") * 1024)


def _step(inputs: dict[str, torch.Tensor], path: str, chunk_size: int) -> torch.Tensor:
    hs, ws, ht, wt = inputs["hs"], inputs["ws"], inputs["ht"], inputs["wt"]
    if path in ("sparse", "fused_sparse"):  # the teacher is its cached top-k rows
        cached = inputs["topk_ids"], inputs["topk_logprobs"], inputs["tail_mass"]
        if path == "sparse":
            loss = sparse_forward_kl(hs @ ws.T, *cached)
        else:
            loss = fused_sparse_forward_kl(hs, ws, *cached, chunk_size=chunk_size)
    elif path == "fused":
        loss = fused_forward_kl(hs, ws, ht, wt, chunk_size=chunk_size)
    elif path == "torchtune":
        from torchtune.modules.loss import ForwardKLWithChunkedOutputLoss

        with torch.no_grad():
            teacher_logits = (ht @ wt.T)[None]
        labels = torch.zeros(1, hs.shape[0], dtype=torch.long, device=hs.device)  # every position counts
        loss = ForwardKLWithChunkedOutputLoss(num_output_chunks=chunk_size)(
            list((hs @ ws.T)[None].chunk(chunk_size, dim=1)), list(teacher_logits.chunk(chunk_size, dim=1)), labels)
    else:
        with torch.no_grad():
            teacher_logits = ht @ wt.T
        loss = forward_kl(hs @ ws.T, teacher_logits, chunk_size=None if path == "naive" else chunk_size)
    loss.backward()
    return loss.detach()


def _clear_grads(inputs: dict[str, torch.Tensor]) -> None:
    for x in inputs.values():
        if x.is_floating_point():
            x.grad = None


def _measure(inputs, path, chunk_size, device) -> tuple[float, float, torch.Tensor]:
    """One forward+backward: (peak extra MiB, (wall s, CPU s of this thread or None), loss);
    leaves the student's ``.grad`` set."""
    _clear_grads(inputs)
    _release_freed_memory()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        loss = _step(inputs, path, chunk_size)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        return (torch.cuda.max_memory_allocated() - base) / MB, (seconds, None), loss
    with _PeakRSS() as rss:
        start, cpu_start = time.perf_counter(), time.thread_time()
        loss = _step(inputs, path, chunk_size)
        seconds, cpu_seconds = time.perf_counter() - start, time.thread_time() - cpu_start
    return (rss.peak - rss.baseline) / MB, (seconds, cpu_seconds), loss


def _run_all(inputs, chunk_sizes: dict[str, int | None], device, repeats) -> dict[str, tuple]:
    """Every path ``repeats`` times, interleaved (the order rotates each round, so drifting
    machine load hits every path alike): ``{path: (stats, loss, [grad hs, grad ws])}``."""
    paths = list(chunk_sizes)
    peaks: dict[str, list[float]] = {p: [] for p in paths}
    times: dict[str, list[float]] = {p: [] for p in paths}
    cpu: dict[str, list[float]] = {p: [] for p in paths}
    last: dict[str, tuple] = {}
    for round_ in range(repeats):
        for path in paths[round_ % len(paths):] + paths[:round_ % len(paths)]:
            peak, (seconds, cpu_seconds), loss = _measure(inputs, path, chunk_sizes[path], device)
            peaks[path].append(peak)
            times[path].append(seconds)
            if cpu_seconds is not None:
                cpu[path].append(cpu_seconds)
            last[path] = (loss, [inputs["hs"].grad, inputs["ws"].grad])
            _clear_grads(inputs)
    stats = {p: {"peak_mb": round(max(peaks[p]), 1), "seconds": round(statistics.median(times[p]), 3),
                 "seconds_all": [round(t, 3) for t in times[p]]} for p in paths}
    for p in paths:
        if cpu[p]:
            stats[p].update(cpu_seconds=round(statistics.median(cpu[p]), 3),
                            cpu_seconds_all=[round(t, 3) for t in cpu[p]])
    return {p: (stats[p], *last[p]) for p in paths}


def _matches(loss, grads, loss_ref, grads_ref) -> bool:
    return bool(torch.allclose(loss, loss_ref, rtol=1e-5, atol=0) and all(
        torch.allclose(a, b, rtol=1e-4, atol=1e-9) for a, b in zip(grads, grads_ref, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, default=131072)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--student-dim", type=int, default=256)
    parser.add_argument("--teacher-dim", type=int, default=512)
    parser.add_argument("--chunk-size", type=int, default=1024, help="chunk of the chunked path")
    parser.add_argument("--fused-chunk-size", type=int, default=256, help="chunk of the fused path")
    parser.add_argument("--cache-k", type=int, default=128, help="top-k of the cached-teacher paths (0: leave out)")
    parser.add_argument("--torchtune-chunks", type=int, default=8, help="num_output_chunks of torchtune's loss")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (vocab 4096, 256 tokens)")
    args = parser.parse_args()
    if args.quick:
        args.vocab, args.tokens, args.chunk_size, args.fused_chunk_size, args.repeats = 4096, 256, 64, 32, 2
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    warm = {"hs": torch.randn(8, 4, device=device, requires_grad=True),  # one-time setup costs
            "ws": torch.randn(64, 4, device=device, requires_grad=True),
            "ht": torch.randn(8, 4, device=device), "wt": torch.randn(64, 4, device=device)}
    try:
        import torchtune.modules.loss  # noqa: F401
        tune = True
    except Exception:  # missing, or its torchao dependency fails to import
        tune = False
    if args.cache_k:
        warm.update(zip(CACHE_KEYS, sparse_teacher(warm["ht"] @ warm["wt"].T, 8, 1.0), strict=True))
    for path in ("naive", "chunked", "fused") + (("torchtune",) if tune else ()) + \
            (("sparse", "fused_sparse") if args.cache_k else ()):
        _step(warm, path, 4)

    gen = torch.Generator(device=device).manual_seed(0)
    n, v, ds, dt = args.tokens, args.vocab, args.student_dim, args.teacher_dim
    # scaled so that the logits have standard deviation 2, as in an LM's output
    inputs = {"hs": torch.randn(n, ds, generator=gen, device=device).requires_grad_(),
              "ws": torch.randn(v, ds, generator=gen, device=device).mul_(2 / ds**0.5).requires_grad_(),
              "ht": torch.randn(n, dt, generator=gen, device=device),
              "wt": torch.randn(v, dt, generator=gen, device=device).mul_(2 / dt**0.5)}

    chunk_sizes = {"naive": None, "chunked": args.chunk_size, "fused": args.fused_chunk_size}
    if tune:
        chunk_sizes["torchtune"] = args.torchtune_chunks
    if args.cache_k:
        with torch.no_grad():  # the cache, written once
            rows = sparse_teacher(inputs["ht"] @ inputs["wt"].T, args.cache_k, 1.0)
        inputs.update(zip(CACHE_KEYS, rows, strict=True))
        chunk_sizes.update(sparse=None, fused_sparse=args.fused_chunk_size)
    results = _run_all(inputs, chunk_sizes, device, args.repeats)
    (naive, loss_naive, grads_naive), (chunked, loss_chunked, grads_chunked), (fused, loss_fused, grads_fused) = (
        results["naive"], results["chunked"], results["fused"])
    extra = {}
    if tune:
        tt, loss_tt, grads_tt = results["torchtune"]
        with torch.no_grad():  # H(p) of the teacher, to turn torchtune's value into the KL
            log_p = torch.log_softmax(inputs["ht"] @ inputs["wt"].T, dim=-1)
            entropy = -(log_p.exp() * log_p).sum(-1).mean()
            del log_p
        extra = {"torchtune": tt, "torchtune_peak_ratio": round(tt["peak_mb"] / naive["peak_mb"], 4),
                 "torchtune_time_ratios": {f"torchtune_{kind}": round(tt[key] / naive[key], 4)
                                           for kind, key in (("wall", "seconds"), ("cpu", "cpu_seconds"))
                                           if key in tt},
                 "torchtune_loss": loss_tt.item(), "teacher_entropy": entropy.item(),
                 "torchtune_values_match": _matches(loss_tt - entropy, grads_tt, loss_naive, grads_naive)}
    if args.cache_k:
        (sp, loss_sp, grads_sp), (fsp, loss_fsp, grads_fsp) = results["sparse"], results["fused_sparse"]
        extra.update(cache_k=args.cache_k, sparse=sp, fused_sparse=fsp,
                     fused_sparse_peak_ratio_to_sparse=round(fsp["peak_mb"] / sp["peak_mb"], 4),
                     fused_sparse_time_ratios_to_sparse={kind: round(fsp[key] / sp[key], 4) for kind, key in
                                                         (("wall", "seconds"), ("cpu", "cpu_seconds")) if key in fsp},
                     fused_sparse_values_match=_matches(loss_fsp, grads_fsp, loss_sp, grads_sp),
                     sparse_loss=loss_sp.item())
    print(json.dumps({
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "vocab": v, "tokens": n, "student_dim": ds, "teacher_dim": dt,
        "chunk_size": args.chunk_size, "fused_chunk_size": args.fused_chunk_size,
        "logits_mb_each": round(n * v * 4 / MB, 1),
        "naive": naive, "chunked": chunked, "fused": fused,
        "chunked_peak_ratio": round(chunked["peak_mb"] / naive["peak_mb"], 4),
        "fused_peak_ratio": round(fused["peak_mb"] / naive["peak_mb"], 4),
        "time_ratios": {f"{p}_{kind}": round(r[key] / naive[key], 4)
                        for p, r in (("chunked", chunked), ("fused", fused))
                        for kind, key in (("wall", "seconds"), ("cpu", "cpu_seconds")) if key in r},
        "values_match": {"chunked": _matches(loss_chunked, grads_chunked, loss_naive, grads_naive),
                         "fused": _matches(loss_fused, grads_fused, loss_naive, grads_naive)},
        "loss": {"naive": loss_naive.item(), "chunked": loss_chunked.item(), "fused": loss_fused.item()},
        **extra,
    }))


if __name__ == "__main__":
    main()
