"""Offline teacher cache vs the online teacher on the quickstart setup.

1. Builds the quickstart's data, tokenizer and teacher if they are missing
   (``artifacts/quickstart``, as ``python -m lit_distill quickstart`` does).
2. Caches the teacher with ``cache-teacher`` for each cache spec ``k`` or ``k:encoding``
   (default 16, 128, 1024 = the whole vocabulary, a control without truncation, 128:compact,
   the version-2 encoding, and 128:knots, version 4; a bare ``k`` stores float16 log-probs) and
   measures the bytes on disk per cached position and the teacher's tail mass. Each encoding is
   also written for random LLM-shaped logits at V = 128,256 (Llama-3's vocabulary; bytes on disk),
   and, given the k = V cache, its decoding error is measured on the teacher's held-out
   distributions (KL and total variation of the k + 1 collapsed bins against float64).
3. Trains the quickstart student (``configs/text/kd/quickstart-student_from_quickstart-teacher.yaml``: 0.5·forward KL + 0.5·CE)
   with the online teacher, and the same student from each cache
   (``configs/text/kd/quickstart-student_from_quickstart-teacher_cache.yaml``: 0.5·sparse forward KL + 0.5·CE, no
   teacher), for the same steps and seeds.
   Every run is ``python -m lit_distill fit`` + ``export`` through ``lit_distill.experiment``
   (``--workers`` at a time, in ``artifacts/teacher_cache_experiment/students``); finished runs
   are skipped on a rerun, so an interrupted experiment continues where it stopped.
4. Evaluates every exported student on the held-out split: cross-entropy, the dense forward
   KL to the teacher, and the sparse forward KL from each cache (the loss gap between the
   sparse objective and the dense one at the same student). Every encoded cache is also
   compared with the float16 cache of the same k, paired by seed.

Writes ``docs/experiments/teacher_cache.json`` and ``.md`` (``--out``), keeping the
report's hand-written ``## Reading`` section. About 10-15 min on 2 cores.

Usage::

    python scripts/experiment_teacher_cache.py [--steps 150 --seeds 0 1 2 --caches 16 128 1024 128:compact 128:knots]
    python scripts/experiment_teacher_cache.py --steps 4 --seeds 0 --caches 16 --out /tmp/smoke   # the path only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lit_distill import cache_codec  # noqa: E402
from lit_distill.cache import TeacherCache, write_split  # noqa: E402
from lit_distill.cache_teacher import cache_teacher  # noqa: E402
from lit_distill.experiment import (  # noqa: E402
    Run,
    Stat,
    by_arm,
    expand,
    launch,
    markdown_table,
    mean_std,
    write_keeping_reading,
)
from lit_distill.losses import cross_entropy, forward_kl, sparse_forward_kl  # noqa: E402

WORK = REPO / "artifacts/teacher_cache_experiment"
ONLINE = "configs/text/kd/quickstart-student_from_quickstart-teacher.yaml"
CACHED = "configs/text/kd/quickstart-student_from_quickstart-teacher_cache.yaml"


def schedule(steps: int) -> list[str]:
    """Overrides of every student run: ``steps`` steps, one validation at the end, only last.ckpt."""
    return [f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={steps}",
            f"--model.init_args.scheduler.init_args.total_steps={steps}", "--trainer.enable_progress_bar=false",
            "--trainer.callbacks=[]", "--checkpoint.save_top_k=0"]


def prepare() -> None:
    from lit_distill.quickstart import WORKDIR, prepare_data, train_teacher

    prepare_data(REPO / WORKDIR)
    train_teacher(REPO / WORKDIR, retrain=False)


def parse_cache(spec: str) -> tuple[int, str]:
    """``"128"`` -> ``(128, "float16")``, ``"128:knots"`` -> ``(128, "knots")``."""
    k, _, encoding = spec.partition(":")
    return int(k), encoding or "float16"


def cache_name(k: int, encoding: str) -> str:
    """The arm / metric suffix of a cache: ``k128`` for float16, ``k128_compact`` otherwise."""
    return f"k{k}" if encoding == "float16" else f"k{k}_{encoding}"


def write_cache(k: int, encoding: str) -> dict:
    out = WORK / f"cache_{cache_name(k, encoding)}"
    timing = out / "seconds.json"  # the wall time of the call that wrote the cache (a rerun only checks it)
    start = time.perf_counter()
    done = cache_teacher(["--config", ONLINE, "--out", str(out), "--top-k", str(k), "--no-progress",
                          "--logprob-dtype", encoding, f"--trainer.default_root_dir={WORK / 'runs/cache'}"])
    assert all(done.values()), done
    if not timing.exists():
        timing.write_text(json.dumps({"seconds": round(time.perf_counter() - start, 1)}) + "\n")
    manifest = json.loads((out / "train/manifest.json").read_text())
    size = sum(p.stat().st_size for p in (out / "train").glob("shard-*.safetensors"))
    tails = torch.cat([load_file(p)["tail_mass"] for p in sorted((out / "val").glob("shard-*.safetensors"))])
    return {"val_tail_mass_mean": round(float(tails.mean()), 5),
            "val_tail_mass_median": round(float(tails.median()), 5),
            "k": k, "name": cache_name(k, encoding), "dir": str(out.relative_to(REPO)), "seconds": json.loads(timing.read_text())["seconds"],
            "bytes": size, "positions": manifest["num_positions"],
            "bytes_per_position": round(size / manifest["num_positions"], 1),
            "id_dtype": manifest["id_dtype"], "logprob_dtype": manifest["logprob_dtype"]}


LLM_VOCAB = 128_256  # Llama-3


@torch.no_grad()
def llm_vocab_bytes(k: int, encoding: str, samples: int = 4, length: int = 128) -> dict:
    """Bytes on disk per position of ``encoding`` at V = 128,256: a cache of random LLM-shaped
    logits (a Gaussian bulk plus a few strongly boosted tokens) written by ``write_split``."""
    def logits(batch: dict) -> torch.Tensor:
        g = torch.Generator().manual_seed(batch["index"])
        z = torch.randn(1, length, LLM_VOCAB, generator=g) * 2.0
        boosted = torch.randint(0, LLM_VOCAB, (1, length, 40), generator=g)
        amplitude = torch.empty(1, length, 1).uniform_(5, 30, generator=g)
        return z.scatter_add(-1, boosted, torch.rand(1, length, 40, generator=g) ** 3 * amplitude)

    out = WORK / "llm_vocab" / cache_name(k, encoding)
    dataset = [{"input_ids": torch.zeros(length, dtype=torch.long), "index": i} for i in range(samples)]
    write_split(logits, dataset, lambda batch: {"index": batch[0]["index"]}, out, top_k=k, samples_per_shard=samples,
                batch_size=1, vocab_size=LLM_VOCAB, data_vocab_size=None, tokenizer_fp=None, teacher="random",
                logprob_dtype=encoding, progress=False)
    size = sum(p.stat().st_size for p in out.glob("shard-*.safetensors"))
    per_shard = 0  # the safetensors header and the per-shard tensors: lengths, sample_index, knot_ranks
    for path in out.glob("shard-*.safetensors"):
        shard = load_file(path)
        per_shard += 8 + int.from_bytes(path.read_bytes()[:8], "little")
        per_shard += sum(shard[name].nbytes for name in ("lengths", "sample_index", "knot_ranks") if name in shard)
    positions = samples * length
    return {"llm_vocab": LLM_VOCAB, "llm_bytes_per_position": round(size / positions, 1),
            "llm_payload_per_position": round((size - per_shard) / positions, 2)}


def decode_as(encoding: str, log_p: torch.Tensor, tail: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What a cache in ``encoding`` reads back for sorted top-k log-probs ``[T, k]`` and tail ``[T]``."""
    if encoding == "knots":
        top1, step, codes = cache_codec.encode_knots(log_p)
        return cache_codec.decode_knots(top1, step, codes, log_p.shape[1]), tail.half().float()
    if encoding == "compact":
        return cache_codec.decode_logprobs(*cache_codec.encode_logprobs(log_p)), tail
    return log_p.to(getattr(torch, encoding)).float(), tail


@torch.no_grad()
def decoding_error(full_dir: Path, k: int, encoding: str) -> dict:
    """Mean (max) KL and total variation between the teacher's held-out top-k + tail bins (float64,
    from the k = V cache, renormalised) and what ``encoding`` decodes, over every position."""
    kls, tvs = [], []
    for path in sorted((full_dir / "val").glob("shard-*.safetensors")):
        full = load_file(path)["topk_logprobs"].double()
        full = full - full.logsumexp(-1, keepdim=True)
        log_p, tail = full[:, :k], full[:, k:].logsumexp(-1).exp()
        dec, dec_tail = decode_as(encoding, log_p.float(), tail.float())
        p = torch.cat([log_p.exp(), tail[:, None]], -1)
        q = torch.cat([dec.double().exp(), dec_tail.double()[:, None]], -1)
        q = q / q.sum(-1, keepdim=True)  # the sparse loss's gradient targets the normalised bins
        kls.append((p * (p.clamp_min(1e-300).log() - q.clamp_min(1e-300).log())).sum(-1))
        tvs.append((p - q).abs().sum(-1) / 2)
    kl, tv = torch.cat(kls), torch.cat(tvs)
    return {"decode_kl_mean": float(kl.mean()), "decode_kl_max": float(kl.max()),
            "decode_tv_mean": float(tv.mean()), "decode_tv_max": float(tv.max())}


@torch.no_grad()
def evaluate(student, teacher, data, caches: dict[str, TeacherCache]) -> dict[str, float]:
    """Token means over the held-out split of CE, dense forward KL and each cache's sparse KL."""
    sums = {"ce": 0.0, "dense_kl": 0.0, **{f"sparse_kl_{name}": 0.0 for name in caches}}
    count = 0
    collate = data.collate_fn()
    dataset = data.val_dataset
    for start in range(0, len(dataset), 32):
        indices = list(range(start, min(start + 32, len(dataset))))
        batch = collate([dataset[i] for i in indices])
        mask = batch["loss_mask"]
        n = int(mask.sum())
        logits = student(**batch["inputs"]).logits
        t_logits = teacher(**batch["inputs"]).logits
        sums["ce"] += float(cross_entropy(logits, batch["labels"])) * n
        sums["dense_kl"] += float(forward_kl(logits, t_logits, mask)) * n
        for name, cache in caches.items():
            k = cache.top_k
            rows = [cache[i] for i in indices]
            length = mask.shape[1]
            ids = torch.arange(k).repeat(len(indices), length, 1)
            logp = torch.zeros(len(indices), length, k)
            tail = torch.zeros(len(indices), length)
            for b, (c_ids, c_lp, c_tail) in enumerate(rows):
                m = c_ids.shape[0]
                ids[b, :m], logp[b, :m], tail[b, :m] = c_ids, c_lp.float(), c_tail
            sums[f"sparse_kl_{name}"] += float(sparse_forward_kl(logits, ids, logp, tail, mask)) * n
        count += n
    return {key: value / count for key, value in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--caches", nargs="+", default=["16", "128", "1024", "128:compact", "128:knots"],
                        help="caches as k or k:encoding (float16, bfloat16, compact, knots); 1024 = the whole "
                             "vocabulary (a control: no truncation)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="student runs trained at once")
    parser.add_argument("--out", type=Path, default=REPO / "docs/experiments", help="where the report goes")
    ns = parser.parse_args()
    torch.set_num_threads(1)
    os.chdir(REPO)  # the configs use paths relative to the repository root
    total_start = time.perf_counter()
    prepare()
    caches_info = [write_cache(*parse_cache(spec)) for spec in ns.caches]
    full = next((c for c in caches_info if c["logprob_dtype"] == "float16" and c["k"] == 1024), None)
    for c in caches_info:
        encoding = c["logprob_dtype"]
        c.update(llm_vocab_bytes(c["k"], encoding))
        if full is not None and c["k"] < full["k"]:
            c.update(decoding_error(REPO / full["dir"], c["k"], encoding))
    caches = {c["name"]: TeacherCache(REPO / c["dir"] / "val") for c in caches_info}

    arms = [Run("online teacher", [ONLINE], schedule(ns.steps), group="students", export=True)]
    arms += [Run(f"cache {c['name']}", [CACHED], [f"--data.init_args.cache_dir={c['dir']}", *schedule(ns.steps)],
                 group="students", export=True) for c in caches_info]
    results = launch(expand(arms, ns.seeds), WORK, workers=ns.workers, cwd=REPO)

    from lit_distill.models import HFCausalLM

    teacher = HFCausalLM(path="artifacts/quickstart/teacher").eval()
    data = val_data()
    runs = []
    for result in sorted(results, key=lambda r: r.run.seed):  # seed-major, arms in order, as before
        student = HFCausalLM(path=str(result.export_dir)).eval()
        metrics = evaluate(student, teacher, data, caches)
        runs.append({"seed": result.run.seed, "arm": result.run.name, "train_seconds": result.seconds,
                     **{k: round(v, 5) for k, v in metrics.items()}})
    print(json.dumps(runs), flush=True)

    keys = ["ce", "dense_kl", *[f"sparse_kl_{c['name']}" for c in caches_info], "train_seconds"]
    online_ce = {r["seed"]: r["ce"] for r in runs if r["arm"] == "online teacher"}
    stats = {}
    for arm in by_arm(results):
        rows = [r for r in runs if r["arm"] == arm]
        stats[arm] = {key: mean_std(r[key] for r in rows) for key in keys}
        stats[arm]["ce_gap_vs_online"] = mean_std(r["ce"] - online_ce[r["seed"]] for r in rows)
    paired = paired_vs_float16(runs, caches_info)
    summary = {arm: {key: {"mean": s.mean, "std": s.std} for key, s in row.items()} for arm, row in stats.items()}
    result = {"steps": ns.steps, "seeds": ns.seeds, "workers": ns.workers, "caches": caches_info, "runs": runs,
              "summary": summary, "paired_vs_float16": paired, "teacher_val_ce": round(evaluate(teacher, teacher, data, {})["ce"], 5),
              "seconds_total": round(time.perf_counter() - total_start, 1)}
    ns.out.mkdir(parents=True, exist_ok=True)
    (ns.out / "teacher_cache.json").write_text(json.dumps(result, indent=2) + "\n")
    table = _table(result, stats)
    write_keeping_reading(ns.out / "teacher_cache.md", _HEADER.format(**result, seeds_n=len(ns.seeds)) + table + "\n")
    print(table)


def paired_vs_float16(runs: list[dict], caches_info: list[dict]) -> dict[str, dict]:
    """Per encoded cache arm: held-out CE minus that of the float16 cache arm of the same k, per seed."""
    ce = {(r["arm"], r["seed"]): r["ce"] for r in runs}
    out = {}
    for c in caches_info:
        base = f"cache {cache_name(c['k'], 'float16')}"
        arm = f"cache {c['name']}"
        seeds = sorted(seed for a, seed in ce if a == arm and (base, seed) in ce)
        if c["logprob_dtype"] == "float16" or not seeds:
            continue
        diffs = {seed: round(ce[(arm, seed)] - ce[(base, seed)], 5) for seed in seeds}
        stat = mean_std(diffs.values())
        out[arm] = {"vs": base, "per_seed": diffs, "mean": stat.mean, "std": stat.std}
    return out


def val_data():
    """The quickstart's text data (``configs/text/kd/quickstart-student_from_quickstart-teacher.yaml``'s settings), set up for its val split."""
    from datamodules.text import TextDataModule

    data = TextDataModule(tokenizer="artifacts/quickstart/tokenizer", train_path="artifacts/quickstart/data/train.txt",
                          val_path="artifacts/quickstart/data/val.txt", max_length=128, pack=True)
    data.setup("fit")
    return data


_HEADER = """# Offline teacher cache vs online teacher

`python scripts/experiment_teacher_cache.py` (generated; {seconds_total} s, {workers} runs at a time).
Quickstart setup: the 4-layer teacher in `artifacts/quickstart/teacher`, a 1,024-token BPE
tokenizer, packed 128-token blocks of the local English corpus, the 2-layer student of
`configs/text/kd/quickstart-student_from_quickstart-teacher.yaml` trained {steps} steps (batch 16, OneCycle) with 0.5·KD + 0.5·CE,
seeds {seeds} ({seeds_n} per arm). Online: dense forward KL against the teacher run every
step. Cache k: sparse forward KL (top-k + tail bin, `SparseForwardKL`) against
`cache-teacher --top-k k`, `teacher: null`. All students are evaluated on the held-out
split (val.txt): CE, the dense forward KL to the (re-run) teacher, and the sparse KL of
each cache. Held-out teacher CE: {teacher_val_ce}. Mean ± std over seeds; the CE gap is
paired by seed. "train s": wall time of a run's `fit` and `export` commands (process start-up
included) while {workers} runs shared the machine. Second table: "B/position at V = 128,256": the
same encoding written (`write_split`) for 4 × 128 positions of random LLM-shaped logits: the
per-position tensors' bytes, and in brackets all bytes on disk per position (the shard's header,
lengths and indices included: about 0.02 B/position more at the default 256 × 128-token shards); "decoding KL/TV": over every held-out position, the KL and total variation
from the teacher's top-k + tail bins (float64, from the k = 1024 cache) to what the encoding reads
back (bins normalised, as the sparse loss's gradient sees them).

"""


def _table(result: dict, stats: dict[str, dict[str, Stat]]) -> str:
    names = [c["name"] for c in result["caches"]]
    arms = markdown_table(
        ["arm", "held-out CE", "CE gap vs online", "dense KL to teacher", *[f"sparse KL ({n})" for n in names],
         "train s"],
        [[arm, s["ce"].cell(), s["ce_gap_vs_online"].cell(), s["dense_kl"].cell(),
          *[s[f"sparse_kl_{n}"].cell() for n in names], f"{s['train_seconds'].mean:.0f}"] for arm, s in stats.items()])
    sizes = markdown_table(
        ["cache", "bytes on disk per cached position", f"B/position at V = {LLM_VOCAB:,}: payload (on disk)", "ids",
         "log-probs", "held-out tail mass mean (median)", "decoding KL mean (max)", "decoding TV mean (max)",
         "cache seconds (train+val)"],
        [[c["name"], c["bytes_per_position"], f"{c['llm_payload_per_position']:g} ({c['llm_bytes_per_position']})",
          c["id_dtype"], c["logprob_dtype"],
          f"{c['val_tail_mass_mean']:.4f} ({c['val_tail_mass_median']:.4f})",
          f"{c['decode_kl_mean']:.2e} ({c['decode_kl_max']:.2e})" if "decode_kl_mean" in c else "–",
          f"{c['decode_tv_mean']:.2e} ({c['decode_tv_max']:.2e})" if "decode_tv_mean" in c else "–", c["seconds"]]
         for c in result["caches"]])
    seeds = result["seeds"]
    pairs = markdown_table(
        ["arm", "paired with", *[f"seed {s}" for s in seeds], "mean ± std"],
        [[arm, p["vs"], *[f"{p['per_seed'].get(s, p['per_seed'].get(str(s), float('nan'))):+.4f}" for s in seeds],
          f"{p['mean']:+.4f} ± {p['std']:.4f}"] for arm, p in result["paired_vs_float16"].items()])
    return arms + "\n\n" + sizes + "\n\nHeld-out CE of each encoded cache arm minus the float16 cache arm of the same k:\n\n" + pairs


if __name__ == "__main__":
    main()
