"""TRG on long-tailed digits: CE / CE+KD / CE+KD+TRG / CE+TRG, KD at temperature 1 and 4.

Every arm trains the same "ViT-micro" student as ``experiment_deit_lt.py`` (width 96, depth 6,
patch 8 on 32 px: a 4x4 token grid, the size of the teacher's ``layer2`` map) with the same data
(standard augmentation, no mixing), epochs and DeiT-LT's warm-up + cosine schedule, from the
same teacher: the logit-adjusted ResNet-18 of the DeiT-LT experiment (trained there, or here
with the same command when missing), checked first: its balanced held-out accuracy must beat the
CE-only student's, or the script stops.

TRG's three relations are weighted from measured gradients, not guessed. A short probe run
(``probe``) trains CE + KD(T=4) + one TRG term per relation (the other two relations at weight
0) with :class:`lit_distill.callbacks.GradientShare` on the student's transformer blocks; each
relation's weight is then set so that its mean gradient norm over the probe equals a third of
CE's (the three together pull as hard as the labels). The weights and the probe's norms are in
the report. TRG samples 8 of the 16 tokens per image (``num_tokens``), so the sampling acts.
Every distillation arm logs ``grad_share/*`` during training.

Every run is ``python -m lit_distill fit`` through :mod:`lit_distill.experiment`; a rerun skips
finished runs. Writes ``docs/experiments/trg.{md,json}`` (``--out``).

    python scripts/experiment_trg.py [--imbalance 10 --epochs 60 --seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from experiment_deit_lt import MICRO, SCHEDULER, TEACHER, schedule  # noqa: E402

from lit_distill.experiment import (  # noqa: E402
    Run,
    by_arm,
    expand,
    launch,
    markdown_table,
    mean_std,
    write_keeping_reading,
)

CONFIG = REPO / "configs/vision/trg/deit-tiny_from_resnet18_digits-lt100.yaml"
PARTS = ("local", "global", "contextual")
CE = "ce: {class_path: lit_distill.losses.CrossEntropy}"
GROUPS = ("head", "medium", "tail")
BLOCKS = "{class_path: lit_distill.callbacks.GradientShare, init_args: {parameters: ['student.*blocks.*'], every_n_steps: %d}}"
GROUP_ACCURACY = "{class_path: lit_distill.callbacks.ClassGroupAccuracy}"
TEMPERATURE = ("{class_path: lit_distill.callbacks.ParameterSchedule, init_args: "
               "{term: trg, attribute: temperature, start: 0.5, end: 0.05, shape: cosine}}")


def kd(temperature: float) -> str:
    return f"kd: {{class_path: lit_distill.losses.ForwardKL, init_args: {{temperature: {temperature}}}}}"


def trg(name: str, weights: dict[str, float]) -> str:
    parts = ", ".join(f"{part}_weight: {weights.get(part, 0.0):.6g}" for part in PARTS)
    return (f"{name}: {{class_path: lit_distill.losses.TRG, init_args: {{student_dim: 96, teacher_dim: 128, "
            f"num_tokens: 8, k: 8, sigma: 0.5, temperature: 0.5, projection_dim: 128, {parts}, "
            "sources: {teacher_tokens: teacher.features.layer2}}}")


def common(epochs: int, imbalance: float) -> list[str]:
    return [*schedule(epochs, imbalance), f"--model.init_args.student.init_args.model_kwargs={MICRO}",
            f"--model.init_args.scheduler={SCHEDULER.format(epochs=epochs)}"]


def probe_weights(probe) -> tuple[dict[str, float], dict[str, float]]:
    """Mean gradient norm of each probed term; each relation's weight = (CE's norm / 3) / its norm."""
    trajectories = probe.metrics().trajectories
    norms = {key.split("/", 1)[1]: statistics.fmean(v for _, v in points)
             for key, points in trajectories.items() if key.startswith("grad_norm/")}
    weights = {part: (norms["ce"] / len(PARTS)) / norms[f"trg_{part}"] for part in PARTS}
    return norms, weights


def arms(weights: dict[str, float], base: list[str]) -> list[Run]:
    """The distillation arms, each with ``base`` (schedule, student, teacher checkpoint) first."""
    relation = trg("trg", weights)
    callbacks = lambda *extra: f"--trainer.callbacks=[{', '.join([GROUP_ACCURACY, BLOCKS % 20, *extra])}]"  # noqa: E731
    runs = []
    for t in (1.0, 4.0):
        runs.append(Run(f"CE + KD (T={t:g})", [CONFIG], [*base, f"--model.init_args.losses={{{CE}, {kd(t)}}}",
                                                        callbacks()]))
        runs.append(Run(f"CE + KD (T={t:g}) + TRG", [CONFIG], [*base, f"--model.init_args.losses={{{CE}, {kd(t)}, {relation}}}",
                                                               callbacks(TEMPERATURE)]))
    runs.append(Run("CE + TRG", [CONFIG], [*base, f"--model.init_args.losses={{{CE}, {relation}}}", callbacks(TEMPERATURE)]))
    return runs


def one_imbalance(imbalance: float, ns) -> dict:
    teacher = launch([Run("teacher", [TEACHER], schedule(ns.teacher_epochs, imbalance) +
                          [f"--model.init_args.scheduler.init_args.T_max={ns.teacher_epochs}"], export=True)],
                     ns.teacher_work / f"if{imbalance:g}", workers=1, cwd=REPO)[0]
    teacher_ckpt = f"--model.init_args.teacher.init_args.model.init_args.checkpoint={teacher.export_dir / 'model_state_dict.pt'}"
    work = ns.work / f"if{imbalance:g}"
    base = common(ns.epochs, imbalance)
    baseline = launch(expand([Run("CE", [CONFIG], [*base, "--model.init_args.teacher=null", f"--model.init_args.losses={{{CE}}}",
                                                   f"--trainer.callbacks=[{GROUP_ACCURACY}]"])], ns.seeds), work, workers=1, cwd=REPO)
    teacher_acc = teacher.metrics().final["val/acc_cls"]
    baseline_acc = mean_std(r.metrics().final["val/acc_cls"] for r in baseline)
    check = {"teacher_accuracy": teacher_acc, "baseline_accuracy": baseline_acc.mean, "passed": teacher_acc > baseline_acc.mean}
    if not check["passed"]:
        print(f"IF {imbalance:g}: teacher check failed: balanced accuracy {teacher_acc:.3f} does not beat the CE-only "
              f"student ({baseline_acc.cell(3)}); not distilling from it", flush=True)
        return {"teacher_check": check, "arms": {"CE": rows(baseline)}}
    probe_losses = ", ".join([CE, kd(4.0), *(trg(f"trg_{part}", {part: 1.0}) for part in PARTS)])
    probe = launch([Run("probe", [CONFIG], [*schedule(1, imbalance), f"--model.init_args.student.init_args.model_kwargs={MICRO}",
                                            teacher_ckpt, f"--model.init_args.losses={{{probe_losses}}}",
                                            f"--trainer.max_steps={ns.probe_steps}", f"--trainer.callbacks=[{BLOCKS % 5}]",
                                            "--trainer.limit_val_batches=0"])], work, workers=1, cwd=REPO)[0]
    norms, weights = probe_weights(probe)
    print(f"IF {imbalance:g}: probe gradient norms {norms}; relation weights {weights}", flush=True)
    distilled = launch(expand(arms(weights, [*base, teacher_ckpt]), ns.seeds), work, workers=1, cwd=REPO)
    return {"teacher_check": check, "probe": {"grad_norm": norms, "relation_weights": weights},
            "arms": {arm: rows(runs) for arm, runs in by_arm(baseline + distilled).items()}}


def rows(runs) -> dict:
    finals = [r.metrics().final for r in runs]
    keys = ["val/acc_cls", *(f"val/acc_cls_{g}" for g in GROUPS)]
    shares = sorted({k for f in finals for k in f if k.startswith("grad_share/")})
    return {key: [f[key] for f in finals if key in f] for key in [*keys, *shares] if any(key in f for f in finals)} | \
        {"trajectory": [r.metrics().trajectories.get("val/acc_cls") for r in runs]}


def write_report(out: Path, results: dict, command: str, seconds: float) -> None:
    lines = ["# TRG on long-tailed digits: CE / CE+KD / CE+KD+TRG / CE+TRG", "",
             f"Rerun: `{command}` ({seconds:.0f} s on 2 cores). Raw numbers: `trg.json`. Method: the script's docstring.", ""]
    for imbalance, result in results.items():
        check = result["teacher_check"]
        lines += [f"## Imbalance factor {imbalance}", "",
                  f"Teacher check: balanced held-out accuracy {check['teacher_accuracy']:.3f} vs the CE-only student's "
                  f"{check['baseline_accuracy']:.3f} ({'passed' if check['passed'] else 'FAILED: no distillation run'}).", ""]
        if "probe" in result:
            probe = result["probe"]
            lines += ["Probe (gradient norms on the student's blocks, mean over the probe; relation weights set to CE/3): "
                      + ", ".join(f"{k} {v:.3g}" for k, v in probe["grad_norm"].items()) + "; weights "
                      + ", ".join(f"{k} {v:.3g}" for k, v in probe["relation_weights"].items()) + ".", ""]
        table = []
        for arm, values in result["arms"].items():
            cells = [mean_std(values[k]).cell(3) if (k := f"val/acc_cls{'_' + g if g else ''}") in values else "-"
                     for g in ("", *GROUPS)]
            shares = ", ".join(f"{k.split('/', 1)[1]} {mean_std(v).mean:.2f}" for k, v in values.items() if k.startswith("grad_share/"))
            table.append((arm, *cells, shares or "-"))
        lines += [markdown_table(["arm", "overall", *GROUPS, "gradient share at the end"], table), ""]
    write_keeping_reading(out / "trg.md", "\n".join(lines))
    (out / "trg.json").write_text(json.dumps(results, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--imbalance", type=float, nargs="+", default=[10.0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--teacher-epochs", type=int, default=60, help="as in experiment_deit_lt.py, so its teacher is reused")
    parser.add_argument("--probe-steps", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=REPO / "docs/experiments")
    parser.add_argument("--work", type=Path, default=REPO / "artifacts/trg_experiment")
    parser.add_argument("--teacher-work", type=Path, default=REPO / "artifacts/deit_lt_experiment",
                        help="where the DeiT-LT experiment keeps its teachers")
    ns = parser.parse_args()
    ns.work, ns.teacher_work = ns.work.resolve(), ns.teacher_work.resolve()
    os.chdir(REPO)
    began = time.perf_counter()
    results = {f"{imbalance:g}": one_imbalance(imbalance, ns) for imbalance in ns.imbalance}
    ns.out.mkdir(parents=True, exist_ok=True)
    write_report(ns.out, results, "python scripts/experiment_trg.py " + " ".join(sys.argv[1:]), time.perf_counter() - began)
    print(f"report: {ns.out / 'trg.md'}")


if __name__ == "__main__":
    main()
