"""DeiT-LT on long-tailed digits with the authors' defaults: baseline vs DeiT vs DeiT-LT, one augmentation.

Every arm trains the same "ViT-micro" (DeiT-tiny's layout at width 96, depth 6, 3 heads, patch 8
on 32 px; the configs' DeiT-tiny does not fit this CPU budget) with the same data, epochs,
optimiser, schedule and DeiT-LT's augmentation (affine strong policy, mixup 0.8 / cutmix 1.0,
random erasing 0.25, label smoothing 0.1), so the arms differ only by what the method adds:

- ``baseline``: a plain ViT, CE on the mixed labels (``configs/vision/baseline/``, with the augmentation);
- ``deit``: a distillation token and head trained on the teacher's hard labels of the same mixed
  images (``configs/vision/deit/``, with the augmentation);
- ``deit_lt``: DeiT + deferred re-weighting of the DIST loss over the last 1/12 of the epochs, on
  unmixed images (``configs/vision/deit_lt/``).

The teacher (``configs/vision/deit_lt/resnet18-sam_...``: ResNet-18, SAM, logit-adjusted CE on
the student's views) is trained once per imbalance factor and checked before any student learns
from it: its balanced held-out accuracy must beat the baseline's, or the script stops; its
agreement with the dominant label of the student's mixed training views is reported.

Every run is ``python -m lit_distill fit`` (+ ``export``) through :mod:`lit_distill.experiment`;
a rerun skips finished runs. Writes ``docs/experiments/deit_lt.{md,json}`` (``--out``).

    python scripts/experiment_deit_lt.py [--imbalance 10 100 --epochs 60 --seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lit_distill.experiment import (  # noqa: E402
    Run,
    by_arm,
    expand,
    launch,
    markdown_table,
    mean_std,
    write_keeping_reading,
)

CONFIGS = REPO / "configs/vision"
TEACHER = CONFIGS / "deit_lt/resnet18-sam_teacher_digits-lt100.yaml"
ARMS = {"baseline": CONFIGS / "baseline/deit-tiny_digits-lt100.yaml",
        "deit": CONFIGS / "deit/deit-tiny_from_resnet18_digits-lt100.yaml",
        "deit_lt": CONFIGS / "deit_lt/deit-tiny_from_resnet18_digits-lt100.yaml"}
MICRO = "{img_size: 32, patch_size: 8, embed_dim: 96, depth: 6, num_heads: 3}"
AUGMENTATION = ["--data.init_args.augment=strong", "--data.init_args.strong_policy=affine",
                "--data.init_args.random_erasing=0.25", "--data.init_args.mixup_alpha=0.8",
                "--data.init_args.cutmix_alpha=1.0"]
# DeiT-LT's schedule for every arm (timm's cosine with 5 of 60 epochs of linear warm-up from 1e-6 down
# to 1e-5, per epoch), so the arms differ only by the method; ``total_steps`` is set to the run's epochs.
SCHEDULER = ("{{class_path: torch.optim.lr_scheduler.OneCycleLR, init_args: {{max_lr: 1.0e-3, total_steps: {epochs}, "
             "pct_start: 0.0833, anneal_strategy: cos, cycle_momentum: false, div_factor: 1000.0, final_div_factor: 0.1}}}}")
HEADS = ("cls", "dist", "avg")
GROUPS = ("head", "medium", "tail")


def schedule(epochs: int, imbalance: float) -> list[str]:
    return [f"--trainer.max_epochs={epochs}", f"--trainer.check_val_every_n_epoch={max(epochs // 6, 1)}",
            f"--data.init_args.imbalance_factor={imbalance}", "--trainer.enable_progress_bar=false",
            "--checkpoint.save_top_k=0"]


def student_overrides(arm: str, epochs: int) -> list[str]:
    """Everything but the arm's own method: the micro ViT, the augmentation, the schedule's length."""
    common = [f"--model.init_args.student.init_args.model_kwargs={MICRO}",
              f"--model.init_args.scheduler={SCHEDULER.format(epochs=epochs)}"]
    if arm == "deit_lt":  # the config's schedule and DRW (the last 1/12 of the epochs), stretched to ``epochs``
        start = epochs - max(round(epochs / 12), 1)
        callbacks = ("[{class_path: lit_distill.callbacks.DeferredReweighting, init_args: {term: dist, start_epoch: "
                     f"{start}, beta: 0.9999, stop_mixing: true}}}}, {{class_path: lit_distill.callbacks.ClassGroupAccuracy}}]")
        return [*common, f"--trainer.callbacks={callbacks}"]
    return [*common, *AUGMENTATION, "--model.init_args.losses.ce.init_args.label_smoothing=0.1"]


@torch.no_grad()
def teacher_agreement(teacher_dir: Path, imbalance: float, batches: int = 20) -> dict[str, float]:
    """How often the teacher's argmax on the student's mixed training views is their dominant label."""
    from lit_distill.build import build

    built = build(ARMS["deit_lt"], [f"--data.init_args.imbalance_factor={imbalance}",
                                    f"--model.init_args.teacher.init_args.model.init_args.checkpoint={teacher_dir / 'model_state_dict.pt'}",
                                    f"--model.init_args.student.init_args.model_kwargs={MICRO}"])
    data, teacher = built.datamodule, built.model.teacher.eval()
    data.setup("fit")
    agree = total = 0
    for i, batch in enumerate(data.train_dataloader()):
        if i == batches:
            break
        inputs = batch.get("teacher_inputs", batch["inputs"])
        agree += int((teacher(**inputs).logits.argmax(-1) == batch["labels"]).sum())
        total += len(batch["labels"])
    data.set_mixing(False)
    clean = [int((teacher(**b["inputs"]).logits.argmax(-1) == b["labels"]).sum()) for b in data.train_dataloader()]
    return {"mixed_views": agree / total, "unmixed_views": sum(clean) / len(data.train_dataset)}


def one_imbalance(imbalance: float, ns) -> dict:
    work = ns.work / f"if{imbalance:g}"
    teacher = launch([Run("teacher", [TEACHER], schedule(ns.teacher_epochs, imbalance) +
                          [f"--model.init_args.scheduler.init_args.T_max={ns.teacher_epochs}"], export=True)],
                     work, workers=1, cwd=REPO)[0]
    teacher_ckpt = f"--model.init_args.teacher.init_args.model.init_args.checkpoint={teacher.export_dir / 'model_state_dict.pt'}"
    baseline = launch(expand([Run("baseline", [ARMS["baseline"]], schedule(ns.epochs, imbalance)
                                  + student_overrides("baseline", ns.epochs))], ns.seeds), work, workers=1, cwd=REPO)
    teacher_acc = teacher.metrics().final["val/acc_cls"]
    baseline_acc = mean_std(r.metrics().final["val/acc_cls"] for r in baseline)
    agreement = teacher_agreement(teacher.export_dir, imbalance)
    check = {"teacher_accuracy": teacher_acc, "baseline_accuracy": baseline_acc.mean, "agreement": agreement,
             "passed": teacher_acc > baseline_acc.mean}
    if not check["passed"]:
        print(f"IF {imbalance:g}: teacher check failed: balanced accuracy {teacher_acc:.3f} does not beat the baseline "
              f"ViT ({baseline_acc.cell(3)}); not distilling from it", flush=True)
        return {"teacher_check": check, "arms": {"baseline": rows(baseline)}}
    distilled = launch(expand([Run(arm, [ARMS[arm]], schedule(ns.epochs, imbalance) + student_overrides(arm, ns.epochs)
                                   + [teacher_ckpt]) for arm in ("deit", "deit_lt")], ns.seeds), work, workers=1, cwd=REPO)
    return {"teacher_check": check, "arms": {arm: rows(runs) for arm, runs in by_arm(baseline + distilled).items()}}


def rows(runs) -> dict:
    finals = [r.metrics().final for r in runs]
    keys = [f"val/acc_{h}{'_' + g if g else ''}" for h in HEADS for g in ("", *GROUPS)]
    return {key: [f[key] for f in finals if key in f] for key in keys if any(key in f for f in finals)} | \
        {"trajectory_avg": [r.metrics().trajectories.get("val/acc_avg", r.metrics().trajectories.get("val/acc_cls"))
                            for r in runs]}


def write_report(out: Path, results: dict, command: str, seconds: float) -> None:
    lines = ["# DeiT-LT on long-tailed digits: baseline vs DeiT vs DeiT-LT (authors' defaults)", "",
             f"Rerun: `{command}` ({seconds:.0f} s on 2 cores). Raw numbers: `deit_lt.json`. Method: the script's docstring.", ""]
    for imbalance, result in results.items():
        check = result["teacher_check"]
        lines += [f"## Imbalance factor {imbalance}", "",
                  f"Teacher check: balanced held-out accuracy {check['teacher_accuracy']:.3f} vs the baseline ViT's "
                  f"{check['baseline_accuracy']:.3f} ({'passed' if check['passed'] else 'FAILED: no distillation run'}); "
                  f"teacher agreement with the dominant label of the student's mixed views "
                  f"{check['agreement']['mixed_views']:.3f}, on unmixed training views {check['agreement']['unmixed_views']:.3f}.", ""]
        table = []
        for arm, values in result["arms"].items():
            for head in HEADS:
                if f"val/acc_{head}" in values:
                    cells = [mean_std(values[f"val/acc_{head}"]).cell(3)]
                    cells += [mean_std(values[k]).cell(3) if (k := f"val/acc_{head}_{g}") in values else "-" for g in GROUPS]
                    table.append((arm, head, *cells))
        lines += [markdown_table(["arm", "head", "overall", *GROUPS], table), ""]
    write_keeping_reading(out / "deit_lt.md", "\n".join(lines))
    (out / "deit_lt.json").write_text(json.dumps(results, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--imbalance", type=float, nargs="+", default=[10.0, 100.0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--teacher-epochs", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=REPO / "docs/experiments")
    parser.add_argument("--work", type=Path, default=REPO / "artifacts/deit_lt_experiment")
    ns = parser.parse_args()
    ns.work = ns.work.resolve()
    os.chdir(REPO)
    began = time.perf_counter()
    results = {f"{imbalance:g}": one_imbalance(imbalance, ns) for imbalance in ns.imbalance}
    ns.out.mkdir(parents=True, exist_ok=True)
    write_report(ns.out, results, "python scripts/experiment_deit_lt.py " + " ".join(sys.argv[1:]),
                 time.perf_counter() - began)
    print(f"report: {ns.out / 'deit_lt.md'}")


if __name__ == "__main__":
    main()
