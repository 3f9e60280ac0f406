"""Experiment: ViT students on long-tailed digits, with and without distillation.

Arms (all the same student family, data, optimiser, schedule and number of epochs; the
configs under ``configs/vision/`` are used as they are, with the overrides listed below):

- ``baseline``: a plain ViT from scratch, cross-entropy only
  (``configs/vision/baseline/deit-tiny_digits-lt100.yaml``);
- ``deit``: DeiT-style hard distillation through a distillation token, the teacher sees the
  student's images (``configs/vision/deit/...``);
- ``deit_lt``: DeiT-LT: strong augmentation + mixup/cutmix seen by the teacher too (OOD
  distillation) and deferred re-weighting of the DIST loss in the last sixth of training
  (``configs/vision/deit_lt/...``);
- ``trg``: CE + KD + TRG token-relation losses (``configs/vision/trg/...``).

The teacher of every distillation arm is the same ResNet-18 trained with SAM by the framework
on the same long-tailed data (``configs/vision/deit_lt/resnet18-sam_...``), once per imbalance
factor. Accuracy is on the balanced validation split; the inference output is the CLS head for
plain ViTs and the mean of the CLS and DIST heads for distilled ones (DeiT). Head/medium/tail
groups follow the datamodule's thresholds (head > 30 training images, tail < 10).

To fit a 2-core CPU the student is a "ViT-micro" (DeiT-tiny's layout at width 96, depth 6,
3 heads; 0.7 M parameters) instead of DeiT-tiny's 192/12/3 (5.4 M): ``--width/--depth``.

Usage::

    python scripts/experiment_vision_lt.py                      # everything (~1 h on 2 cores)
    python scripts/experiment_vision_lt.py --trg-sweep          # the TRG default selection
    python scripts/experiment_vision_lt.py --imbalance 100 --arms baseline trg --seeds 0

Writes ``docs/experiments/vision_lt.{json,png}`` (and ``vision_lt_trg_sweep.json``) and prints
the table quoted, with the discussion, in ``docs/experiments/vision_lt.md``. Runs that were
trained by an interrupted invocation (same ``--work-dir``) are evaluated, not retrained;
``--combine`` merges result files from parallel invocations.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "vision"
ARMS = {
    "baseline": CONFIGS / "baseline" / "deit-tiny_digits-lt100.yaml",
    "deit": CONFIGS / "deit" / "deit-tiny_from_resnet18_digits-lt100.yaml",
    "deit_lt": CONFIGS / "deit_lt" / "deit-tiny_from_resnet18_digits-lt100.yaml",
    "trg": CONFIGS / "trg" / "deit-tiny_from_resnet18_digits-lt100.yaml",
}
TEACHER_CONFIG = CONFIGS / "deit_lt" / "resnet18-sam_teacher_digits-lt100.yaml"
LABELS = {"baseline": "ViT from scratch (CE)", "deit": "DeiT-style (hard distillation)",
          "deit_lt": "DeiT-LT (OOD + DRW)", "trg": "TRG (CE + KD + relations)"}
# TRG settings compared to choose the config's defaults (imbalance 100, one seed, same budget).
TRG_SWEEP = {
    "kd_only": {"trg_weight": 0.0},
    "sigma0.5_anneal": {},
    "sigma0.1_anneal": {"sigma": 0.1},
    "sigma0.5_fixed_tau0.1": {"anneal": False, "temperature": 0.1},
    "local_only": {"global_weight": 0.0, "contextual_weight": 0.0},
}


def _callbacks_yaml(arm: str, epochs: int, trg: dict) -> str:
    lines = ["trainer:", "  callbacks:"]
    if arm == "deit_lt":
        start = max(1, round(epochs * 5 / 6))  # the config's 50 of 60 epochs
        lines.append("    - {class_path: lit_distill.callbacks.DeferredReweighting, "
                     f"init_args: {{term: dist, start_epoch: {start}, beta: 0.9999}}}}")
    if arm == "trg" and trg.get("anneal", True):
        lines.append("    - {class_path: lit_distill.callbacks.ParameterSchedule, init_args: "
                     "{term: trg, attribute: temperature, start: 0.5, end: 0.05, shape: cosine}}")
    lines.append("    - {class_path: lit_distill.callbacks.ClassGroupAccuracy}")
    return "\n".join(lines) + "\n"


def _fit_args(arm: str, config: Path, imbalance: int, seed: int, epochs: int, width: int, depth: int,
              patch: int, root: Path, teacher_ckpt: Path | None, trg: dict) -> list[str]:
    override = root / "callbacks.yaml"
    override.write_text(_callbacks_yaml(arm, epochs, trg))
    kwargs = f"{{img_size: 32, patch_size: {patch}" + (f", embed_dim: {width}, depth: {depth}, num_heads: 3}}"
                                               if width else "}")
    args = ["fit", "--config", str(config), "--config", str(override),
            f"--seed_everything={seed}", f"--trainer.max_epochs={epochs}",
            f"--trainer.check_val_every_n_epoch={epochs}", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", f"--trainer.default_root_dir={root}",
            f"--data.init_args.imbalance_factor={imbalance}", f"--data.init_args.seed={seed}",
            f"--model.init_args.scheduler.init_args.T_max={epochs}"]
    if arm != "teacher":
        args.append(f"--model.init_args.student.init_args.model_kwargs={kwargs}")
    if teacher_ckpt is not None:
        args.append(f"--model.init_args.teacher.init_args.model.init_args.checkpoint={teacher_ckpt}")
    if arm == "trg":
        if width:
            args.append(f"--model.init_args.losses.trg.init_args.student_dim={width}")
        for key in ("sigma", "temperature", "local_weight", "global_weight", "contextual_weight"):
            if key in trg:
                args.append(f"--model.init_args.losses.trg.init_args.{key}={trg[key]}")
        if "trg_weight" in trg:
            args.append(f"--model.init_args.losses.trg.init_args.weight={trg['trg_weight']}")
    return args


def run_one(job: dict) -> dict:
    """Train one arm (or the teacher) in this process; return its accuracies."""
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lit_distill.build import run
    from lit_distill.callbacks import ClassGroupAccuracy

    root = Path(job["root"])
    root.mkdir(parents=True, exist_ok=True)
    arm = job["arm"]
    saved = root / "result.json"
    if arm == "teacher" and saved.exists():  # teachers are shared by runs with the same --work-dir
        return json.loads(saved.read_text())
    config = TEACHER_CONFIG if arm == "teacher" else ARMS[arm]
    teacher_ckpt = Path(job["teacher"]) if job.get("teacher") else None
    args = _fit_args(arm, config, job["imbalance"], job["seed"], job["epochs"], job["width"], job["depth"],
                     job.get("patch", 4), root, teacher_ckpt, job.get("trg", {}))
    start = time.time()
    finished = _finished_checkpoint(root, job["epochs"]) if arm != "teacher" else None
    if finished is not None:  # trained by an earlier, interrupted invocation: evaluate it
        cli = run("validate", (), [*args[1:], f"--ckpt_path={finished}"])
    else:
        cli = run("fit", (), args[1:])
    seconds = time.time() - start
    callback = next(c for c in cli.trainer.callbacks if isinstance(c, ClassGroupAccuracy))
    head = "avg" if "avg" in callback.per_class_accuracy else "cls"
    per_class = callback.per_class_accuracy[head].tolist()
    groups = cli.datamodule.class_groups
    result = {**{k: v for k, v in job.items() if k != "root"}, "head": head, "seconds": round(seconds, 1),
              "per_class": per_class, "class_counts": cli.datamodule.class_counts, "class_groups": groups,
              "overall": statistics.fmean(per_class)}
    for group, members in groups.items():
        result[group] = statistics.fmean(per_class[c] for c in members) if members else math.nan
    for name in ("cls", "dist"):
        if name in callback.per_class_accuracy:
            result[f"overall_{name}"] = statistics.fmean(callback.per_class_accuracy[name].tolist())
    if arm == "teacher":
        from lit_distill.export import main as export_main

        export_main(["--ckpt", cli.trainer.checkpoint_callback.last_model_path, "--out", str(root / "export")])
        result["checkpoint"] = str(root / "export" / "model_state_dict.pt")
        saved.write_text(json.dumps(result))
    print(f"[{arm} IF={job['imbalance']} seed={job['seed']} {job.get('tag', '')}] "
          f"overall {result['overall']:.3f} in {seconds:.0f}s", flush=True)
    return result


def _finished_checkpoint(root: Path, epochs: int) -> Path | None:
    """A ``last.ckpt`` under ``root`` saved after the final epoch, if an earlier run got there."""
    import torch

    for path in sorted(root.rglob("last.ckpt")):
        if torch.load(path, map_location="cpu", weights_only=True).get("epoch") == epochs - 1:
            return path
    return None


def _pool_map(jobs: list[dict], workers: int) -> list[dict]:
    if workers <= 1:
        return [run_one(job) for job in jobs]
    with mp.get_context("spawn").Pool(workers, maxtasksperchild=1) as pool:
        return pool.map(run_one, jobs, chunksize=1)


def _summary(results: list[dict], imbalances: list[int], arms: list[str]) -> list[dict]:
    rows = []
    for imbalance in imbalances:
        for arm in arms:
            runs = [r for r in results if r["arm"] == arm and r["imbalance"] == imbalance]
            if not runs:
                continue
            row = {"imbalance": imbalance, "arm": arm, "seeds": len(runs)}
            for key in ("overall", "head", "medium", "tail"):
                values = [r[key] for r in runs if not math.isnan(r[key])]
                row[key] = statistics.fmean(values) if values else math.nan
                row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            row["per_class"] = [statistics.fmean(r["per_class"][c] for r in runs)
                                for c in range(len(runs[0]["per_class"]))]
            rows.append(row)
    return rows


def _markdown(rows: list[dict], teachers: list[dict], meta: dict) -> str:
    lines = [f"Balanced validation accuracy (%), mean ± std over {meta['seeds']} seeds, "
             f"{meta['epochs']} epochs per run, ViT width {meta['width']} depth {meta['depth']} "
             f"patch {meta.get('patch', 4)}.", "",
             "| IF | student | overall | head | medium | tail |", "|---|---|---|---|---|---|"]
    fmt = lambda r, k: "–" if math.isnan(r[k]) else f"{100 * r[k]:.1f} ± {100 * r[k + '_std']:.1f}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['imbalance']} | {LABELS[r['arm']]} | {fmt(r, 'overall')} | {fmt(r, 'head')} | "
                     f"{fmt(r, 'medium')} | {fmt(r, 'tail')} |")
    for t in teachers:
        lines.append(f"| {t['imbalance']} | teacher: ResNet-18 + SAM | {100 * t['overall']:.1f} | "
                     f"{100 * t['head']:.1f} | {100 * t.get('medium', math.nan):.1f} | {100 * t['tail']:.1f} |")
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], teachers: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    imbalances = sorted({r["imbalance"] for r in rows})
    fig, axes = plt.subplots(1, len(imbalances), figsize=(6 * len(imbalances), 4), squeeze=False)
    for ax, imbalance in zip(axes[0], imbalances, strict=True):
        for r in (r for r in rows if r["imbalance"] == imbalance):
            ax.plot(range(len(r["per_class"])), [100 * v for v in r["per_class"]], marker="o",
                    label=LABELS[r["arm"]])
        for t in (t for t in teachers if t["imbalance"] == imbalance):
            ax.plot(range(len(t["per_class"])), [100 * v for v in t["per_class"]], "k--", label="teacher")
        ax.set_title(f"long-tailed digits, imbalance {imbalance}")
        ax.set_xlabel("class (0 = head ... 9 = tail)")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_xticks(range(10))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--imbalance", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=40, help="epochs of every student run")
    parser.add_argument("--teacher-epochs", type=int, default=40)
    parser.add_argument("--width", type=int, default=96, help="ViT width (0 = DeiT-tiny's 192/12)")
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--patch", type=int, default=8, help="ViT patch size on 32 px images")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel, one thread each")
    parser.add_argument("--work-dir", default=None, help="run directories (default: a temp dir)")
    parser.add_argument("--out", default=str(REPO / "docs" / "experiments" / "vision_lt"))
    parser.add_argument("--trg-sweep", action="store_true", help="compare TRG settings (IF 100, seed 0)")
    parser.add_argument("--combine", nargs="+", default=None, metavar="JSON",
                        help="no training: merge the runs of these result files into --out")
    args = parser.parse_args(argv)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="vision_lt_"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    common = {"epochs": args.epochs, "width": args.width, "depth": args.depth, "patch": args.patch}
    if args.combine:
        _write(out, *_combine([json.loads(Path(f).read_text()) for f in args.combine]))
        return

    imbalances = [100] if args.trg_sweep else args.imbalance
    teacher_jobs = [{"arm": "teacher", "imbalance": i, "seed": 0, "epochs": args.teacher_epochs, "width": 0,
                     "depth": 0, "root": str(work / f"teacher_if{i}")} for i in imbalances]
    teachers = _pool_map(teacher_jobs, min(args.workers, len(teacher_jobs)))
    ckpt = {t["imbalance"]: t["checkpoint"] for t in teachers}

    if args.trg_sweep:
        jobs = [{"arm": "trg", "imbalance": 100, "seed": 0, "tag": tag, "trg": setting, **common,
                 "teacher": ckpt[100], "root": str(work / f"sweep_{tag}")} for tag, setting in TRG_SWEEP.items()]
        results = _pool_map(jobs, args.workers)
        sweep = [{"setting": r["tag"], **r["trg"], "overall": r["overall"], "head": r["head"],
                  "tail": r["tail"]} for r in results]
        path = out.parent / f"{out.name}_trg_sweep.json"
        path.write_text(json.dumps({"teacher_overall": teachers[0]["overall"], "runs": sweep}, indent=2) + "\n")
        print(json.dumps(sweep, indent=2))
        return

    jobs = [{"arm": arm, "imbalance": i, "seed": s, **common, "teacher": None if arm == "baseline" else ckpt[i],
             "root": str(work / f"{arm}_if{i}_s{s}")}
            for i in imbalances for s in args.seeds for arm in args.arms]
    results = _pool_map(jobs, args.workers)
    meta = {**common, "seeds": len(args.seeds), "teacher_epochs": args.teacher_epochs,
            "commands": [" ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])]}
    _write(out, meta, results, teachers)


def _combine(files: list[dict]) -> tuple[dict, list[dict], list[dict]]:
    """One result set from several (later files win for the same arm/IF/seed)."""
    runs: dict[tuple, dict] = {}
    teachers: dict[int, dict] = {}
    for data in files:
        runs.update({(r["arm"], r["imbalance"], r["seed"]): r for r in data["runs"]})
        teachers.update({t["imbalance"]: t for t in data["teachers"]})
    meta = dict(files[0]["meta"])
    meta["commands"] = [c for data in files for c in data["meta"].get("commands", [])]
    meta["seeds"] = max(len({r["seed"] for r in runs.values() if r["arm"] == arm})
                        for arm in {r["arm"] for r in runs.values()})
    return meta, list(runs.values()), list(teachers.values())


def _write(out: Path, meta: dict, results: list[dict], teachers: list[dict]) -> None:
    imbalances = sorted({r["imbalance"] for r in results})
    arms = [a for a in ARMS if any(r["arm"] == a for r in results)]
    rows = _summary(results, imbalances, arms)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "summary": rows, "teachers": teachers,
                                                    "runs": results}, indent=2) + "\n")
    table = _markdown(rows, teachers, meta)
    _plot(rows, sorted(teachers, key=lambda t: t["imbalance"]), out.with_suffix(".png"))
    print(table)


if __name__ == "__main__":
    main()
