"""LAD on hard digit scenes: CE vs CE + CWD from the LAD teacher vs the same teacher with its label zeroed.

The recipe as LAD's authors run it, at this machine's scale (``configs/segmentation/lad/``):

1. Baseline: the RGB student trained from scratch with pixel CE
   (``test-resnet_digit-scenes-hard.yaml``), seed 0, exported.
2. LAD teacher: the same network with its stem widened to RGB ⊕ label channel (new weights
   0.1·randn), fine-tuned from the baseline (``init_from``) with the dual path
   (``test-resnet-lad_teacher_digit-scenes.yaml``), seed 0, exported. ``LabelChannelCheck``
   logs its held-out mIoU with the fixed label encoding fed and with the channel zeroed.
   ``--teacher-encoding``: the authors train it with random label encodings (``random``); here
   every such teacher ignored its label (docs/experiments/lad.md), so the default trains it with
   the fixed encoding it is distilled with (``fixed``).
3. Students, every arm fine-tuned from the same baseline with the same steps, optimiser and
   data (``test-resnet_from_test-resnet-lad_digit-scenes.yaml``): ``ce`` (no teacher),
   ``lad`` (CE + 3·CWD at T = 4 from the teacher fed the fixed label encoding) and
   ``lad_label_zeroed`` (the same teacher, its label channel zeroed: ``label_scale 0``).
   The distilling arms log each term's gradient share (``GradientShare``).

Teacher check (after the ``ce`` arm, before distilling): the teacher's mIoU must beat the ``ce``
students' mean and drop by at least ``--min-label-drop`` when its label channel is zeroed;
otherwise the script stops with a one-line message. ``--stop-after teacher`` trains the
baseline and the teacher only and prints the check (lr probes).

Every run is ``python -m lit_distill fit`` (+ ``export``) through :mod:`lit_distill.experiment`;
a rerun skips finished runs. Writes ``docs/experiments/lad.{md,json}`` (``--out``).

    python scripts/experiment_lad.py                                  # full run
    python scripts/experiment_lad.py --stop-after teacher --teacher-lr 1e-3 --teacher-steps 300
    python scripts/experiment_lad.py --baseline-steps 4 --teacher-steps 4 --steps 4 --seeds 0 \\
        --min-label-drop -1 --out /tmp/lad_smoke --work /tmp/lad_smoke --tiny   # the path only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lit_distill.errors import ConfigError  # noqa: E402
from lit_distill.experiment import (  # noqa: E402
    Run,
    RunResult,
    by_arm,
    expand,
    launch,
    markdown_table,
    mean_std,
    write_keeping_reading,
)

CONFIGS = "configs/segmentation/lad"
BASELINE = f"{CONFIGS}/test-resnet_digit-scenes-hard.yaml"
TEACHER = f"{CONFIGS}/test-resnet-lad_teacher_digit-scenes.yaml"
STUDENT = f"{CONFIGS}/test-resnet_from_test-resnet-lad_digit-scenes.yaml"
TINY = ["--data.init_args.train_scenes=8", "--data.init_args.val_scenes=4", "--data.init_args.batch_size=4"]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--checkpoint.save_top_k=0"]
# every step logged: GradientShare measures on steps Lightning's default log interval skips
GRADIENT_SHARE = ['--trainer.callbacks+={"class_path": "lit_distill.callbacks.GradientShare", '
                  '"init_args": {"every_n_steps": 25}}', "--trainer.log_every_n_steps=1"]
ARMS = {"ce": "CE only (no teacher)", "lad": "CE + 3·CWD from the LAD teacher, label fed (LAD)",
        "lad_label_zeroed": "CE + 3·CWD from the same teacher, its label channel zeroed"}


def optimizer(kind: str, lr: float) -> str:
    """The CLI override of the optimiser: SGD (momentum 0.9) as the authors, or AdamW; wd 1e-4."""
    if kind == "sgd":
        return f"--model.init_args.optimizer={{class_path: torch.optim.SGD, init_args: {{lr: {lr}, momentum: 0.9, weight_decay: 1.0e-4}}}}"
    return f"--model.init_args.optimizer={{class_path: torch.optim.AdamW, init_args: {{lr: {lr}, weight_decay: 1.0e-4}}}}"


def schedule(steps: int, val_every: int) -> list[str]:
    """Steps, the poly schedule's length and validation every ``val_every`` steps (and at the end)."""
    return [f"--trainer.max_steps={steps}", f"--model.init_args.scheduler.init_args.total_iters={steps}",
            f"--trainer.val_check_interval={min(val_every, steps)}", "--trainer.check_val_every_n_epoch=null"]


def baseline(ns) -> RunResult:
    """Stage 1: the no-KD student from scratch (seed 0), exported; every later run starts from it."""
    overrides = [*schedule(ns.baseline_steps, ns.baseline_steps), *QUIET, *ns.extra]
    return launch([Run("baseline", [BASELINE], overrides, group="baseline", export=True)], ns.work, workers=1, cwd=REPO)[0]


def teacher(ns, init: str) -> RunResult:
    """Stage 2: the LAD teacher fine-tuned from the baseline weights ``init`` (seed 0), exported."""
    name = f"lad_teacher_{ns.teacher_optimizer}_lr{ns.teacher_lr:g}_scale{ns.label_scale:g}_{ns.teacher_steps}steps"
    name += "" if ns.teacher_encoding == "random" else f"_{ns.teacher_encoding}"
    overrides = [*schedule(ns.teacher_steps, ns.teacher_steps), optimizer(ns.teacher_optimizer, ns.teacher_lr),
                 f"--model.init_args.student.init_args.model.init_args.init_from={init}",
                 f"--data.init_args.label_scale={ns.label_scale:g}", *QUIET, *ns.extra]
    if ns.teacher_encoding != "random":
        overrides.append(f"--data.init_args.label_encoding={ns.teacher_encoding}")
    return launch([Run(name, [TEACHER], overrides, group="teacher", export=True)], ns.work, workers=1, cwd=REPO)[0]


def stem_label_share(init: str, scales: list[float], images: int = 64) -> dict[str, float]:
    """Share of the widened stem's output variance that comes from the label channel, per label scale.

    The baseline's weights widened as the LAD teacher starts (new channel 0.1·randn, seed 0), on
    ``images`` held-out scenes with a random label encoding: ``var(W_label * ℓ) / (var(W_rgb * x) +
    var(W_label * ℓ))`` over the stem convolution's outputs (bias left out). No training.
    """
    import torch

    from datamodules.segmentation import SegmentationDataModule, label_encoding
    from lit_distill.models.segmentation import TimmSegmentation

    config = {k: v for k, v in __import__("yaml").safe_load(Path(REPO / BASELINE).read_text())["data"]["init_args"].items()
              if k != "source"}
    dm = SegmentationDataModule(source="digit_scenes", **{**config, "val_scenes": images, "batch_size": images})
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    rgb, masks = batch["inputs"]["pixel_values"], batch["labels"]  # [B, 3, H, W], [B, H, W]
    torch.manual_seed(0)
    model = TimmSegmentation("test_resnet", num_classes=11, out_indices=[1, 2, 4], head_channels=32,
                             extra_input_channels=1, init_from=init)
    conv = model.module.get_submodule(model.stem_path)
    shares = {}
    with torch.no_grad():
        rgb_part = torch.nn.functional.conv2d(rgb, conv.weight[:, :3], None, conv.stride, conv.padding)
        for scale in scales:
            g = torch.Generator().manual_seed(0)
            label = torch.stack([label_encoding(m, 11, "random", scale=scale, generator=g) for m in masks])[:, None]
            label_part = torch.nn.functional.conv2d(label, conv.weight[:, 3:], None, conv.stride, conv.padding)
            shares[f"{scale:g}"] = float(label_part.var() / (rgb_part.var() + label_part.var()))
    return shares


def teacher_check(result: RunResult) -> dict[str, float]:
    """The teacher's last LabelChannelCheck values (held-out mIoU, label fed / zeroed / drop)."""
    final = result.metrics().final
    return {"miou_label_fed": final["val/miou_label_fed"], "miou_label_zeroed": final["val/miou_label_zeroed"],
            "miou_label_drop": final["val/miou_label_drop"], "miou": final["val/miou"]}


def check_failure(check: dict[str, float], ce_mean: float, min_drop: float) -> str | None:
    """None if the teacher (fed its label) beats the CE students and loses ≥ ``min_drop`` mIoU with
    its label channel zeroed; else the one-line reason."""
    if check["miou_label_fed"] > ce_mean and check["miou_label_drop"] >= min_drop:
        return None
    return (f"teacher check failed: LAD teacher mIoU {check['miou_label_fed']:.4f} (label fed) vs CE students "
            f"{ce_mean:.4f}, {check['miou_label_drop']:+.4f} when its label channel is zeroed (need > CE and a "
            f"drop ≥ {min_drop:g}); not distilling from it")


def students(ns, arms: list[str], init: str, teacher_weights: str | None) -> list[RunResult]:
    """Stage 3: ``arms`` × seeds, each fine-tuned from ``init`` with the same steps, optimiser and data."""
    common = [*schedule(ns.steps, ns.steps), optimizer(ns.optimizer, ns.lr),
              f"--model.init_args.student.init_args.init_from={init}",
              f"--data.init_args.label_scale={ns.label_scale:g}", *QUIET, *ns.extra]
    per_arm = {
        "ce": ["--model.init_args.teacher=null", "--model.init_args.losses={ce: {class_path: lit_distill.losses.PixelCrossEntropy}}",
               "--data.init_args.label_encoding=none"],
        "lad": [f"--model.init_args.teacher.init_args.model.init_args.checkpoint={teacher_weights}", *GRADIENT_SHARE],
        "lad_label_zeroed": [f"--model.init_args.teacher.init_args.model.init_args.checkpoint={teacher_weights}",
                             *GRADIENT_SHARE, "--data.init_args.label_scale=0"],
    }
    runs = [Run(arm, [STUDENT], [*common, *per_arm[arm]], group=f"students_{ns.optimizer}_lr{ns.lr:g}_{ns.steps}steps")
            for arm in arms]
    return launch(expand(runs, ns.seeds), ns.work, workers=1, cwd=REPO)


def arm_report(runs: list[RunResult]) -> dict:
    """Per seed: held-out mIoU, the teacher's mIoU as fed, and the mean last gradient shares."""
    finals = [r.metrics().final for r in runs]
    shares = {k.split("/", 1)[1]: mean_std(f[k] for f in finals if k in f).mean
              for k in finals[0] if k.startswith("grad_share/")}
    return {"seeds": [r.run.seed for r in runs], "miou": [f["val/miou"] for f in finals],
            "teacher_miou": [f["val/teacher_miou"] for f in finals if "val/teacher_miou" in f],
            "grad_share_last": shares, "seconds": [r.seconds for r in runs]}


def write_report(out: Path, result: dict, command: str) -> None:
    """``out/lad.{md,json}``; a hand-written ``## Reading`` section of an existing ``lad.md`` is kept."""
    t, arms = result["teacher"], result["arms"]
    rows = [(ARMS[arm], mean_std(a["miou"]).cell(), ", ".join(f"{x:.4f}" for x in a["miou"]),
             f"{mean_std(a['teacher_miou']).mean:.4f}" if a["teacher_miou"] else "-",
             ", ".join(f"{k} {v:.2f}" for k, v in a["grad_share_last"].items()) or "-") for arm, a in arms.items()]
    ce = mean_std(arms["ce"]["miou"]) if "ce" in arms else None
    lines = ["# LAD on hard digit scenes: CE vs CE + CWD from the LAD teacher (label fed / zeroed)\n",
             f"Rerun: `{command}` ({result['seconds'] / 60:.1f} min on this machine's 2 shared cores). Raw numbers: "
             "`lad.json`. Method, configs and stages: the script's docstring.\n",
             f"Baseline (no KD, from scratch, {result['config']['baseline_steps']} steps, seed 0): mIoU "
             f"{result['baseline_miou']:.4f}. Every student below starts from it.\n",
             "Label channel's share of the widened stem's output variance at the start of fine-tuning "
             "(`stem_label_share`, random encoding, held-out scenes): "
             + ", ".join(f"scale {k}: {v:.3f}" for k, v in result["stem_label_share"].items()) + ".\n",
             "## Teacher check\n",
             markdown_table(["LAD teacher (fine-tuned from the baseline)", "mIoU label fed", "label zeroed", "drop"],
                            [(t["name"], f"{t['miou_label_fed']:.4f}", f"{t['miou_label_zeroed']:.4f}",
                              f"{t['miou_label_drop']:+.4f}")]),
             "",
             f"Passes: fed mIoU {t['miou_label_fed']:.4f} > CE students' mean "
             f"{ce.mean if ce else float('nan'):.4f}, and drop {t['miou_label_drop']:.4f} ≥ "
             f"{result['config']['min_label_drop']}.\n" if result.get("check_passed") else
             f"**Failed**: {result.get('check_message', 'not run')}\n",
             "## Students (held-out mIoU, mean ± std over seeds)\n",
             markdown_table(["arm", "mIoU", "per seed", "teacher mIoU as fed", "gradient share (last measurement)"], rows),
             ""]
    for arm in ("lad", "lad_label_zeroed"):
        if ce and arm in arms:
            d = mean_std(arms[arm]["miou"]).mean - ce.mean
            spread = max(ce.std, mean_std(arms[arm]["miou"]).std)
            lines.append(f"- {arm} − ce: {d:+.4f} (largest seed std {spread:.4f}; "
                         f"{'beyond' if abs(d) > 2 * spread else 'within'} two standard deviations).")
    write_keeping_reading(out / "lad.md", "\n".join(lines) + "\n")
    (out / "lad.json").write_text(json.dumps(result, indent=2) + "\n")


def experiment(ns) -> dict:
    """Baseline → teacher → CE students → teacher check → distilled students; the result dict."""
    began = time.perf_counter()
    base = baseline(ns)
    init = str(base.export_dir / "model_state_dict.pt")
    lad = teacher(ns, init)
    check = {"name": lad.run.name, **teacher_check(lad)}
    result = {"config": {k: v for k, v in vars(ns).items() if k not in ("work", "out")},
              "baseline_miou": base.metrics().final["val/miou"], "teacher": check, "arms": {},
              "stem_label_share": stem_label_share(init, [1.0, 10.0, 100.0])}
    print(f"baseline mIoU {result['baseline_miou']:.4f}; teacher {json.dumps(check)}", flush=True)
    if ns.stop_after == "teacher":
        return result
    ce = students(ns, ["ce"], init, None)
    result["arms"]["ce"] = arm_report(ce)
    failure = check_failure(check, mean_std(result["arms"]["ce"]["miou"]).mean, ns.min_label_drop)
    if failure:
        result["check_message"] = failure
        return result
    result["check_passed"] = True
    kd = students(ns, ["lad", "lad_label_zeroed"], init, str(lad.export_dir / "model_state_dict.pt"))
    for arm, runs in by_arm(kd).items():
        result["arms"][arm] = arm_report(runs)
    result["seconds"] = time.perf_counter() - began
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline-steps", type=int, default=1500, help="no-KD baseline from scratch")
    parser.add_argument("--teacher-steps", type=int, default=400, help="LAD teacher fine-tuning steps")
    parser.add_argument("--teacher-optimizer", choices=["sgd", "adamw"], default="adamw")
    parser.add_argument("--teacher-lr", type=float, default=1e-3)
    parser.add_argument("--teacher-encoding", choices=["random", "fixed"], default="fixed",
                        help="label encoding the teacher trains with (authors: random; validation: fixed)")
    parser.add_argument("--label-scale", type=float, default=1.0, help="label channel = scale · ℓ̃ (authors: 100)")
    parser.add_argument("--steps", type=int, default=400, help="fine-tuning steps of every student arm")
    parser.add_argument("--optimizer", choices=["sgd", "adamw"], default="adamw", help="students' optimiser")
    parser.add_argument("--lr", type=float, default=1e-3, help="students' lr")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--min-label-drop", type=float, default=0.02,
                        help="the teacher's mIoU must fall by at least this when its label channel is zeroed")
    parser.add_argument("--stop-after", choices=["teacher", "all"], default="all")
    parser.add_argument("--tiny", action="store_true", help="8 training scenes, 4 held out (smoke runs)")
    parser.add_argument("--out", type=Path, default=REPO / "docs/experiments")
    parser.add_argument("--work", type=Path, default=REPO / "artifacts/lad_experiment", help="runs and exports")
    ns = parser.parse_args()
    ns.work, ns.extra = ns.work.resolve(), TINY if ns.tiny else []
    os.chdir(REPO)
    try:
        result = experiment(ns)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    if ns.stop_after == "teacher":
        return
    command = "python scripts/experiment_lad.py " + " ".join(sys.argv[1:])
    ns.out.mkdir(parents=True, exist_ok=True)
    write_report(ns.out, {**result, "seconds": result.get("seconds", 0.0)}, command.strip())
    print(f"report: {ns.out / 'lad.md'}")
    if "check_message" in result:
        raise SystemExit(f"error: {result['check_message']}")


if __name__ == "__main__":
    main()
