"""LAD experiment on digit scenes: student without KD, with pixel KD, and with LAD; mIoU over seeds.

Arms (every student: the same architecture, steps, optimiser, schedule and data):

- ``no_kd``: pixel cross-entropy only (``teacher: null``).
- ``pixel_kd``: CE + pixel-wise KD (T = 1, weight 1) from a plain teacher: a bigger model of
  the same family (timm ``resnet18`` at half width + a wider light head, RGB input), trained once
  for ``--teacher-steps`` with CE.
- ``lad``: CE + 3·CWD (T = 4) from the LAD teacher: the student's own architecture with a
  widened stem (RGB ⊕ 100·label channel), trained once for ``--lad-teacher-steps`` with the
  dual path (CE₁ + CE₂ + 5·[CWD(o₁, sg o₂) + CWD(o₂, sg o₁)], random label encoding); it
  reads the fixed label encoding when distilling.

Held-out evaluation: validation scenes made of the ``val`` handwriting pool (never seen in
training). Teachers are reported on the same scenes (the LAD teacher is given the fixed label
encoding of the ground truth, so its mIoU is not comparable with the others: it sees the
answer). One CPU thread.

    .venv/bin/python scripts/experiment_lad.py            # full run, writes docs/experiments/lad.{md,json}
    .venv/bin/python scripts/experiment_lad.py --quick    # smoke run (tiny), writes nothing
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datamodules.segmentation import SegmentationDataModule  # noqa: E402
from lit_distill.callbacks.segmentation import SegmentationMetrics  # noqa: E402
from lit_distill.losses.segmentation import ChannelWiseDistillation, PixelCrossEntropy, PixelKD  # noqa: E402
from lit_distill.models.segmentation import TimmSegmentation  # noqa: E402
from lit_distill.module import DistillationModule  # noqa: E402
from lit_distill.teacher import Teacher  # noqa: E402
from recipes.lad import DualPathModel  # noqa: E402

STUDENT = {"name": "test_resnet", "out_indices": [1, 2, 4], "head_channels": 32}
PLAIN_TEACHER = {"name": "resnet18", "out_indices": [1, 2, 4], "head_channels": 64,
                 "model_kwargs": {"channels": [32, 64, 128, 256]}}  # a half-width ResNet-18


def data(args, seed: int, label_scale: float | None = None, **label) -> SegmentationDataModule:
    return SegmentationDataModule(
        source="digit_scenes", image_size=args.size, train_scenes=args.train_scenes, val_scenes=args.val_scenes,
        digit_size=(args.size // 4, args.size * 7 // 16), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        batch_size=args.batch_size, seed=seed, label_scale=args.label_scale if label_scale is None else label_scale, **label)


def sgd(lr: float, steps: int):
    def optimizer(params):
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)

    def scheduler(opt):
        return torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=steps, power=0.9)

    return optimizer, scheduler


def fit_and_eval(module: DistillationModule, dm: SegmentationDataModule, steps: int, seed: int) -> dict[str, float]:
    """Train ``steps`` optimiser steps (no validation during training), then validate once."""
    L.seed_everything(seed, verbose=False)
    common = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
              "enable_progress_bar": False, "enable_model_summary": False}
    L.Trainer(max_steps=steps, max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0, **common).fit(
        module, datamodule=dm)
    metrics = L.Trainer(callbacks=[SegmentationMetrics(max_images=0)], **common).validate(
        module, datamodule=dm, verbose=False)[0]
    return {k: float(v) for k, v in metrics.items() if "miou" in k or k.startswith("val/iou")}


def train_lad_teacher(args, scale: float) -> tuple[Teacher, dict]:
    """Stage 1 of LAD with the label channel scaled by ``scale``; returns the teacher and its report."""
    opt, sched = sgd(args.lad_teacher_lr, args.lad_teacher_steps)
    L.seed_everything(0, verbose=False)
    path2 = "student.features.path2_logits"
    lad = DistillationModule(
        DualPathModel(TimmSegmentation(num_classes=11, extra_input_channels=1, **STUDENT)),
        {"ce1": PixelCrossEntropy(), "ce2": PixelCrossEntropy(sources={"logits": path2}),
         "cwd12": ChannelWiseDistillation(4.0, 5.0, {"teacher_logits": path2}),
         "cwd21": ChannelWiseDistillation(4.0, 5.0, {"student_logits": path2, "teacher_logits": "student.logits"})},
        optimizer=opt, scheduler=sched)
    t0 = time.perf_counter()
    metrics = fit_and_eval(lad, data(args, 0, label_encoding="random", val_label_encoding="fixed",
                                     label_views=2, label_input="student", label_scale=scale),
                           args.lad_teacher_steps, 0)
    return Teacher(lad.student.inner), {
        "model": {**STUDENT, "extra_input_channels": 1}, "label_scale": scale, "steps": args.lad_teacher_steps,
        "lr": args.lad_teacher_lr,
        "miou_with_fixed_label_encoding": metrics["val/miou"], "seconds": round(time.perf_counter() - t0, 1),
        "params": sum(p.numel() for p in lad.student.parameters())}


def train_teachers(args) -> tuple[Teacher, Teacher, dict]:
    info: dict = {}
    lad, info["lad_teacher"] = train_lad_teacher(args, args.label_scale)
    print(json.dumps(info["lad_teacher"]), flush=True)
    opt, sched = sgd(args.lr, args.teacher_steps)
    L.seed_everything(0, verbose=False)
    plain = DistillationModule(TimmSegmentation(num_classes=11, **PLAIN_TEACHER),
                               {"ce": PixelCrossEntropy()}, optimizer=opt, scheduler=sched)
    t0 = time.perf_counter()
    plain_metrics = fit_and_eval(plain, data(args, 0), args.teacher_steps, 0)
    info["plain_teacher"] = {"model": PLAIN_TEACHER, "steps": args.teacher_steps, "miou": plain_metrics["val/miou"],
                             "seconds": round(time.perf_counter() - t0, 1),
                             "params": sum(p.numel() for p in plain.student.parameters())}
    print(json.dumps(info["plain_teacher"]), flush=True)
    for scale in args.also_label_scales:  # reported only
        info[f"lad_teacher_scale_{scale:g}"] = train_lad_teacher(args, scale)[1]
        print(json.dumps(info[f"lad_teacher_scale_{scale:g}"]), flush=True)
    return Teacher(plain.student), lad, info


def student_arm(args, arm: str, seed: int, plain: Teacher, lad: Teacher) -> dict[str, float]:
    opt, sched = sgd(args.student_lr, args.steps)
    L.seed_everything(seed, verbose=False)
    student = TimmSegmentation(num_classes=11, **STUDENT)
    if arm == "no_kd":
        module = DistillationModule(student, {"ce": PixelCrossEntropy()}, optimizer=opt, scheduler=sched)
        dm = data(args, seed)
    elif arm == "pixel_kd":
        module = DistillationModule(student, {"ce": PixelCrossEntropy(), "kd": PixelKD(temperature=1.0)},
                                    teacher=plain, optimizer=opt, scheduler=sched)
        dm = data(args, seed)
    else:
        module = DistillationModule(student, {"ce": PixelCrossEntropy(),
                                              "cwd": ChannelWiseDistillation(temperature=4.0, weight=3.0)},
                                    teacher=lad, optimizer=opt, scheduler=sched)
        dm = data(args, seed, label_encoding="fixed", label_input="teacher")
    return fit_and_eval(module, dm, args.steps, seed)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def write_docs(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    cfg = result["config"]
    t = result["teachers"]
    lines = [
        "# LAD on digit scenes: no KD vs pixel KD vs label-assisted distillation",
        "",
        "Rerun: `.venv/bin/python scripts/experiment_lad.py` (one CPU thread; "
        f"{result['seconds'] / 60:.1f} min wall for this run, on a 2-core machine shared with 4 other "
        "busy agents, load average ~8). Raw numbers: `lad.json`.",
        "",
        f"Data: generated digit scenes ({cfg['size']}x{cfg['size']} px, 1-4 digits, 11 classes incl. "
        f"background), {cfg['train_scenes']} training scenes from the train handwriting pool, "
        f"{cfg['val_scenes']} held-out scenes from the disjoint val pool; joint random scale "
        "(0.75-1.25) + crop. mIoU = mean over classes of IoU accumulated over all held-out pixels "
        "(torchmetrics `MulticlassJaccardIndex`).",
        "",
        f"Student: timm `{STUDENT['name']}` backbone + light head (levels {STUDENT['out_indices']}, "
        f"{STUDENT['head_channels']} channels), {cfg['steps']} SGD steps (lr {cfg.get('student_lr', cfg['lr'])}, momentum 0.9, "
        f"wd 1e-4, poly 0.9), batch {cfg['batch_size']}, the same for every arm; seeds {cfg['seeds']} "
        "(initialisation, data order, augmentation).",
        "",
        "| arm | student mIoU (mean ± std) | per seed |",
        "|---|---|---|",
    ]
    for arm, label in (("no_kd", "no KD (CE only)"), ("pixel_kd", "CE + pixel KD (T=1) from plain teacher"),
                       ("lad", "CE + 3·CWD (T=4) from LAD teacher (LAD)")):
        values = [r["val/miou"] for r in result["arms"][arm]]
        m, s = mean_std(values)
        lines.append(f"| {label} | {m:.4f} ± {s:.4f} | {', '.join(f'{v:.4f}' for v in values)} |")
    lines += [
        "",
        "| teacher | params | steps | held-out mIoU |",
        "|---|---|---|---|",
        f"| plain: timm `{PLAIN_TEACHER['name']}` (half width) + head, RGB | {t['plain_teacher']['params']:,} | "
        f"{t['plain_teacher']['steps']} | {t['plain_teacher']['miou']:.4f} |",
        f"| LAD: student architecture, RGB ⊕ {t['lad_teacher']['label_scale']:g}·label channel, dual path | {t['lad_teacher']['params']:,} | "
        f"{t['lad_teacher']['steps']} | {t['lad_teacher']['miou_with_fixed_label_encoding']:.4f} "
        "(fed the ground truth's fixed label encoding) |",
        *(f"| LAD, label channel scaled by {v['label_scale']:g} (not used by the students) | {v['params']:,} | "
          f"{v['steps']} | {v['miou_with_fixed_label_encoding']:.4f} |"
          for k, v in t.items() if k.startswith("lad_teacher_scale_")),
        "",
        "## Setup notes",
        "",
        "- Everything trains from scratch (no pretrained weights offline). The reference's SGD lr 1e-3 "
        "is for ImageNet-pretrained backbones; here SGD lr 0.2 (same momentum 0.9, weight decay 1e-4, "
        "poly schedule with power 0.9). Before this run, probes (seed 0, 1,200 steps, student without KD) "
        "gave mIoU 0.568 with SGD lr 0.2 and 0.722 with AdamW lr 3e-3; we kept SGD as in the reference, "
        "so the students are not saturated. At 300-400 steps every model was still near the "
        "all-background solution (mIoU ~0.09-0.13), hence 1,200 steps.",
        "- Label scale. The reference feeds 100·ℓ̃ (value and noise) into a new stem channel initialised "
        "small. From scratch at lr 0.2, a probe LAD teacher with scale 100 stayed at the all-background "
        "solution (mIoU 0.081 with the fixed encoding after 1,200 steps; 0.080 after 400 at lr 0.05). "

        "A likely cause (not investigated further): inputs of size ~100 give the new channel's weights "
        "steps ~100 times larger than the RGB weights', so the label channel dominates the stem. The teacher the LAD arm distils from therefore uses "
        f"scale {cfg['label_scale']:g} (chosen before its result was known); the scale-100 teacher is "
        "trained again in this run with the halved lr (next note) and reported above, not used.",
        f"- The LAD teacher trains with lr {cfg['lad_teacher_lr']:g}: its loss sums two CE terms on the "
        "same images (CE₁ + CE₂, each a per-image mean, normalised by the batch size as every term "
        "here), which doubles the supervised gradient; halving the lr keeps the step of the students'. "
        "A first run at lr 0.2 gave a LAD teacher (scale 1) with mIoU 0.263, and a probe with the CWD "
        "terms off (CE₁ + CE₂ only, lr 0.2) 0.283 with the fixed encoding, 0.283 with a random one and "
        "0.285 with the label channel zeroed: that teacher had not learned to use the label at all.",
        "- Does the LAD teacher use its label channel? A replica of this run's scale-1 teacher (same "
        "seed, same numbers: 0.4104 with the fixed encoding) scores 0.4087 with a random encoding and "
        "0.4077 with the label channel set to zero: it has learned to segment from RGB and all but "
        "ignores the label (new-channel weights start at N(0, 0.001²) and inputs are ~±1).",
        "- The LAD teacher is evaluated with the ground truth's fixed label encoding in its input, as "
        "it is used for distillation: its mIoU is an upper reference, not a fair comparison.",
        "- Fixed label values for 11 classes + the ignore class (K = 12): (k − K/2)·2.2/K, i.e. −1.1 "
        "to 0.92 in steps of 0.183 (VOC's (k − 11)/10 for K = 22); pixel noise N(0, 0.02²).",
        "- Teachers are trained once (seed 0). The seed sets the student's initialisation, data order "
        "and augmentation; the LAD arm also draws its label-channel noise from the same generator, so "
        "its augmentation stream differs from the other arms' at the same seed.",
        "",
        "## Reading",
        "",
        result["reading"],
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1200, help="optimiser steps of every student")
    parser.add_argument("--teacher-steps", type=int, default=1500, help="steps of the plain teacher")
    parser.add_argument("--lad-teacher-steps", type=int, default=1200, help="steps of the LAD teacher")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--train-scenes", type=int, default=2000)
    parser.add_argument("--val-scenes", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--student-lr", type=float, default=None, help="SGD lr of the students; default --lr")
    parser.add_argument("--lad-teacher-lr", type=float, default=None,
                        help="SGD lr of the LAD teacher; default lr / 2 (its loss sums two CE terms)")
    parser.add_argument("--label-scale", type=float, default=1.0,
                        help="LAD label channel = scale · ℓ̃ for the teacher the LAD arm uses")
    parser.add_argument("--also-label-scales", type=float, nargs="*", default=[100.0],
                        help="further LAD teachers trained and reported only (the reference's 100)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "experiments" / "lad.md")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run; writes nothing")
    parser.add_argument("--render", type=Path, default=None,
                        help="only rewrite the markdown from this JSON of an earlier run")
    args = parser.parse_args()
    if args.student_lr is None:
        args.student_lr = args.lr
    if args.lad_teacher_lr is None:
        args.lad_teacher_lr = args.lr / 2
    if args.render is not None:
        write_docs(json.loads(args.render.read_text()), args.out)
        return
    if args.quick:
        args.steps, args.teacher_steps, args.lad_teacher_steps, args.seeds = 4, 4, 4, [0]
        args.train_scenes, args.val_scenes, args.also_label_scales = 32, 16, [100.0]
    torch.set_num_threads(1)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*(does not have many workers|eval mode|LeafSpec).*")
    start = time.perf_counter()
    plain, lad, teachers = train_teachers(args)
    print(json.dumps(teachers), flush=True)
    arms: dict[str, list[dict]] = {"no_kd": [], "pixel_kd": [], "lad": []}
    for seed in args.seeds:
        for arm in arms:
            t0 = time.perf_counter()
            metrics = student_arm(args, arm, seed, plain, lad)
            metrics["seconds"] = round(time.perf_counter() - t0, 1)
            arms[arm].append({"seed": seed, **metrics})
            print(arm, seed, f"{metrics['val/miou']:.4f}", f"{metrics['seconds']}s", flush=True)
    summary = {arm: dict(zip(("mean", "std"), mean_std([r["val/miou"] for r in rows]), strict=True))
               for arm, rows in arms.items()}
    result = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "teachers": teachers, "arms": arms, "summary": summary,
              "seconds": round(time.perf_counter() - start, 1), "reading": ""}
    print(json.dumps(summary, indent=2))
    if args.quick:
        return
    base, best = summary["no_kd"], max(summary, key=lambda a: summary[a]["mean"])
    deltas = {a: summary[a]["mean"] - base["mean"] for a in ("pixel_kd", "lad")}
    pooled = math.sqrt((base["std"] ** 2 + max(s["std"] for s in summary.values()) ** 2) / 2)
    result["reading"] = (
        f"Best arm by mean: {best}. Mean mIoU change over no KD: pixel KD {deltas['pixel_kd']:+.4f}, "
        f"LAD {deltas['lad']:+.4f} (seed std up to {pooled:.4f}). With {len(args.seeds)} seeds, differences "
        "smaller than about two standard deviations are not evidence either way.")
    write_docs(result, args.out)
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
