"""LLaVA-MoD on digit-scene VQA with equal budgets: is preference distillation better than more mimic?

Every training stage is ``python -m lit_distill fit`` (+ ``export``) through :mod:`lit_distill.experiment`:

1. Data (:func:`datamodules.vlm.write_digit_vqa`, the question before the image tokens) and the
   frozen vision tower (``python -m recipes.llava_mod pretrain-vision``: a hand-written BCE loop,
   kept because the framework has no multi-label loss term; cached, deterministic).
2. Teacher: ``configs/vlm/llava_mod/tiny-teacher_sft.yaml`` (one teacher, seed 0), exported. It must
   beat the dense student's held-out answer accuracy or the script stops; its presence accuracy
   must reach ``--presence-bar`` or the POPE columns are dropped from the report (with the reason).
3. Dense student SFT per seed (the same config, the student's LM), exported, then sparse-upcycled
   (``python -m recipes.llava_mod upcycle``, routers seeded): the common start of every arm.
4. ``--mimic-steps`` N from the common start (stage-1 config; OneCycle over N steps): CE only,
   or mimic (forward KL + CE + 0.01·aux), exported.
5. ``--cont-steps`` M more steps from those exports, all at the same constant LR (``--cont-lr``),
   batch 32 sequences: SFT only (CE N → CE M, the total budget), mimic (→ mimic), mimic → CE,
   mimic → DPO (β 0.1 against the teacher, 16 data pairs per step).

Held-out metrics (``recipes.llava_mod.DigitVQAMetrics``, logged at every validation, so every
continuation has a trajectory): answer accuracy per question type, POPE presence metrics, and the
mean log p(chosen) / log p(rejected) of the held-out preference pairs and the first answer token's
probability mass on chosen, rejected and every other token.

    python scripts/experiment_llava_mod.py [--seeds 0 1 2]
    python scripts/experiment_llava_mod.py --seeds 0 --teacher-steps 60 --teacher-lr 3e-3 --dense-steps 4 --lr 1e-5 \\
        --mimic-steps 4 --cont-steps 4 --evals 2 --train-scenes 20 --val-scenes 8 --vision-steps 10 \\
        --work /tmp/lm_smoke --out /tmp/lm_smoke/out   # the smoke this run was checked with
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lit_distill.errors import ConfigError  # noqa: E402
from lit_distill.experiment import (  # noqa: E402
    Run,
    by_arm,
    expand,
    launch,
    markdown_table,
    mean_std,
    plot_trajectories,
    write_keeping_reading,
)
from recipes.llava_mod import tower_presence_accuracy  # noqa: E402

CONFIGS = "configs/vlm/llava_mod"
TEACHER = f"{CONFIGS}/tiny-teacher_sft.yaml"
STAGE1 = f"{CONFIGS}/tiny-moe-student_from_tiny-teacher_stage1-mimic.yaml"
STAGE2 = f"{CONFIGS}/tiny-moe-student_from_tiny-teacher_stage2-preference.yaml"
MOE = {"every": 2, "num_experts": 4, "top_k": 2, "capacity_factor": 1.5}
STUDENT_LM = ("{model_type: llama, hidden_size: 48, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4, "
              "num_key_value_heads: 2, max_position_embeddings: 64, tie_word_embeddings: true}")
AUX = "aux: {class_path: lit_distill.losses.MoEAuxLoss, init_args: {weight: 0.01}}"
CE = "ce: {class_path: lit_distill.losses.CrossEntropy}"
LOSSES = {"ce": f"{{{CE}, {AUX}}}",
          "mimic": f"{{kd: {{class_path: lit_distill.losses.ForwardKL}}, {CE}, {AUX}}}",
          "dpo": f"{{dpo: {{class_path: lit_distill.losses.DPO, init_args: {{beta: 0.1}}}}, {AUX}}}"}
NO_TEACHER = "--model.init_args.teacher=null"
METRICS = ["acc_all", "acc_count", "acc_presence", "acc_position", "pope_acc", "pope_f1", "pope_yes_ratio",
           "false_yes_absent"]
PREFERENCE = ["logp_chosen", "logp_rejected", "p_chosen", "p_rejected", "p_other"]


def data_flags(work: Path, pairs: bool = False) -> list[str]:
    data = work / "data"
    train, val = ("train_pairs", "val_pairs") if pairs else ("train", "val")
    callback = ('{"class_path": "recipes.llava_mod.DigitVQAMetrics", "init_args": {"pairs_path": "%s"}}'
                % (data / "val_pairs.json"))
    return [f"--data.init_args.tokenizer={data / 'tokenizer'}", f"--data.init_args.train_path={data / f'{train}.json'}",
            f"--data.init_args.val_path={data / f'{val}.json'}", "--data.init_args.seed={seed}",
            f"--trainer.callbacks+={callback}", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
            "--checkpoint.save_top_k=0"]


def schedule(steps: int, lr: float | None, evals: int = 1, one_cycle: bool = True) -> list[str]:
    """``steps`` optimizer steps, validated ``evals`` times; OneCycle to ``lr`` or a constant ``lr``."""
    flags = [f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={max(steps // evals, 1)}",
             f"--trainer.log_every_n_steps={max(min(steps // 10, 50), 1)}"]
    if lr is not None:
        flags.append(f"--model.init_args.optimizer.init_args.lr={lr}")
    if one_cycle:
        return [*flags, f"--model.init_args.scheduler.init_args.total_steps={steps}",
                *([f"--model.init_args.scheduler.init_args.max_lr={lr}"] if lr is not None else [])]
    return [*flags, "--model.init_args.scheduler=null"]


def teacher_flags(teacher: Path) -> list[str]:
    model = "--model.init_args.teacher.init_args.model.init_args"
    return [f"{model}.lm_path={teacher / 'lm'}", f"{model}.init_from={teacher}"]


def vision(ns) -> Path:
    path = ns.work / f"vision_{ns.vision_steps}steps.pt"
    if not path.exists():  # deterministic: a rerun reuses it
        subprocess.run([sys.executable, "-m", "recipes.llava_mod", "pretrain-vision", "--out", str(path),
                        "--steps", str(ns.vision_steps)], check=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return path


def final(result, keys=METRICS + PREFERENCE) -> dict[str, float]:
    values = result.metrics().final
    return {key: values[f"val/{key}"] for key in keys}


def teacher_run(ns, tower: Path) -> Run:
    common = [*data_flags(ns.work), f"--model.init_args.student.init_args.vision.init_args.checkpoint={tower}", NO_TEACHER]
    return Run("teacher", [TEACHER], [*common, *schedule(ns.teacher_steps, ns.teacher_lr, evals=4)], group="teacher",
               export=True)


def dense_run(ns, tower: Path) -> Run:
    common = [*data_flags(ns.work), f"--model.init_args.student.init_args.vision.init_args.checkpoint={tower}", NO_TEACHER]
    return Run("dense student", [TEACHER], [*common, *schedule(ns.dense_steps, ns.lr),
                                             f"--model.init_args.student.init_args.lm_config={STUDENT_LM}"],
               group="dense", export=True)


def teacher_check(teacher: dict[str, float], students: list[dict[str, float]]) -> str | None:
    """One-line failure message when the teacher's held-out answer accuracy does not beat every
    dense student baseline (distilling it could not help), else None."""
    best = max(s["acc_all"] for s in students)
    if teacher["acc_all"] > best:
        return None
    return (f"teacher check failed: teacher answer acc {teacher['acc_all']:.3f} does not beat the dense "
            f"student baseline {best:.3f}; train the teacher longer (--teacher-steps)")


def upcycled(ns, dense) -> dict[int, Path]:
    starts = {}
    for result in dense:
        out = ns.work / "upcycled" / f"seed{result.run.seed}"
        if not (out / "composition.json").exists():
            subprocess.run([sys.executable, "-m", "recipes.llava_mod", "upcycle", "--dense", str(result.export_dir),
                            "--out", str(out), "--moe", json.dumps(MOE), "--seed", str(result.run.seed)],
                           check=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"})
        starts[result.run.seed] = out
    return starts


def init(path: str | Path) -> str:
    return f"--model.init_args.student.init_args.init_from={path}"


def stage_n(ns, name: str, tower: Path, teacher: Path) -> Run:
    """N steps (OneCycle) of CE or mimic from the upcycled common start (init_from brings the tower too)."""
    loss = "ce" if name == "ce" else "mimic"
    return Run(name, [STAGE1], [*data_flags(ns.work), *teacher_flags(teacher), *schedule(ns.mimic_steps, ns.lr),
                                f"--model.init_args.student.init_args.vision.init_args.checkpoint={tower}",
                                init(ns.work / "upcycled/seed{seed}"), f"--model.init_args.losses={LOSSES[loss]}",
                                *([NO_TEACHER] if loss == "ce" else [])], group="stage_n", export=True)


def continuation(ns, name: str, loss: str, starts: dict, teacher: Path) -> list[Run]:
    """M steps at the constant continuation LR from each seed's stage-N export ``starts[seed]``."""
    config, pairs = (STAGE2, True) if loss == "dpo" else (STAGE1, False)
    flags = [*data_flags(ns.work, pairs), *teacher_flags(teacher), *schedule(ns.cont_steps, ns.cont_lr, ns.evals, False),
             "--model.init_args.optimizer.init_args.weight_decay=0.01", f"--model.init_args.losses={LOSSES[loss]}",
             *([NO_TEACHER] if loss == "ce" else [])]
    if config == STAGE1:
        flags.append(f"--model.init_args.student.init_args.vision.init_args.checkpoint={ns.tower}")
    return [Run(name, [config], [*flags, init(starts[seed])], seed=seed, group="continuation") for seed in ns.seeds]


ARMS = [("mimic (→ mimic)", "mimic"), ("mimic → CE", "ce"), ("mimic → DPO", "dpo")]
SFT_ONLY = "SFT only (CE → CE)"


def pipeline(ns, tower: Path):
    """Teacher ‖ (dense → upcycle → CE for N steps → CE for M steps); check; mimic N; the mimic continuations."""
    teacher_dir = ns.work / "teacher/teacher/seed0/export"
    workers = len(ns.seeds)

    def sft_side():
        dense = launch(expand([dense_run(ns, tower)], ns.seeds), ns.work, workers=workers, cwd=REPO)
        upcycled(ns, dense)
        ce = launch(expand([stage_n(ns, "ce", tower, teacher_dir)], ns.seeds), ns.work, workers=workers, cwd=REPO)
        sft = launch(continuation(ns, SFT_ONLY, "ce", {r.run.seed: r.export_dir for r in ce}, teacher_dir),
                     ns.work, workers=workers, cwd=REPO)
        return dense, ce, sft

    with ThreadPoolExecutor(2) as pool:
        teacher_job = pool.submit(launch, [teacher_run(ns, tower)], ns.work, 1, REPO)
        sft_job = pool.submit(sft_side)
        (teacher,), (dense, ce, sft) = teacher_job.result(), sft_job.result()
    t, baselines = final(teacher), [final(r) for r in dense]
    print("teacher", t, "\ndense", baselines, flush=True)
    failure = teacher_check(t, baselines)
    if failure:
        raise SystemExit(failure)
    mimic = launch(expand([stage_n(ns, "mimic", tower, teacher_dir)], ns.seeds), ns.work, workers=workers, cwd=REPO)
    starts = {r.run.seed: r.export_dir for r in mimic}
    runs = [run for name, loss in ARMS for run in continuation(ns, name, loss, starts, teacher_dir)]
    conts = launch(runs, ns.work, workers=len(runs), cwd=REPO)  # one round: no slot idles behind a straggler
    return teacher, dense, ce + mimic, sft + conts


def trajectories(results, start: dict) -> dict:
    """Per arm and key: the mean over seeds at each continuation step (step 0 = the stage-N export)."""
    curves = {}
    for arm, runs in by_arm(results).items():
        origin = "ce" if arm.startswith("SFT") else "mimic"
        per_key = {}
        for key in ["acc_all", "acc_count", *PREFERENCE]:
            series = [[(0, start[(origin, r.run.seed)][key])] + [(s + 1, v) for s, v in r.metrics().trajectories[f"val/{key}"]]
                      for r in runs]
            steps = [s for s, _ in series[0]]
            per_key[key] = [[step, mean_std(dict(c)[step] for c in series).mean] for step in steps]
            if key in ("logp_chosen", "logp_rejected", "p_other"):
                per_key[f"{key}_curves"] = series
        curves[arm] = per_key
    return curves


def report(ns, result: dict, command: str) -> None:
    pope = result["teacher"]["acc_presence"] >= ns.presence_bar
    keys = METRICS if pope else METRICS[:4]
    rows = [["teacher (dense, SFT)", 1, *(f"{result['teacher'][k]:.3f}" for k in keys)]]
    for arm, values in result["arms"].items():
        rows.append([arm, len(values), *(mean_std(v[k] for v in values).cell(3) for k in keys)])
    pref = [["teacher (the DPO reference)", *(f"{result['teacher'][k]:.3f}" for k in PREFERENCE)]]
    pref += [[arm, *(mean_std(v[k] for v in values).cell(3) for k in PREFERENCE)]
             for arm, values in result["arms"].items() if arm.startswith("stage N") or arm in result["trajectories"]]
    traj = []
    for arm, curves in result["trajectories"].items():
        for (step, acc), (_, lc), (_, lr), (_, po) in zip(curves["acc_all"], curves["logp_chosen"],
                                                          curves["logp_rejected"], curves["p_other"], strict=True):
            traj.append([arm, step, f"{acc:.3f}", f"{lc:.3f}", f"{lr:.3f}", f"{po:.3f}"])
    t = result["teacher"]
    steps = ", ".join(f"{v:.3f} at step {s + 1}" for s, v in result["teacher_trajectory"])
    presence = (f"Teacher check: held-out answer accuracy {t['acc_all']:.3f} beats every dense student; presence "
                f"accuracy {t['acc_presence']:.3f} (bar {ns.presence_bar}; during its training: {steps}; the frozen "
                f"tower's own digit head answers the same questions at {result['tower_presence_acc']:.3f}): "
                + ("passed, so the POPE columns are reported." if pope else
                   "**failed**, so the POPE columns are dropped: a teacher at chance on presence cannot teach it, "
                   "and the students' POPE numbers would measure their yes/no prior, not hallucination."))
    text = f"""# LLaVA-MoD on digit-scene VQA: equal mimic budgets, then DPO vs mimic vs CE

Rerun: `{command}` (one thread per run, up to 9 runs at once on the shared 2-core machine; the runs' fit + export times sum to {result['run_seconds'] / 60:.0f} min, measured when each ran; finished runs are skipped on a rerun).
Raw numbers: `llava_mod.json`; method: the script's docstring. Every stage is `python -m lit_distill fit`.

Setup: {ns.train_scenes} training scenes, {ns.val_scenes} held-out scenes ({result['num_val']} questions, held-out
handwriting), question before the image tokens. Teacher LM 96 wide, 4 layers, {ns.teacher_steps} steps (lr
{ns.teacher_lr}); student LM 48 wide, 2 layers: dense SFT {ns.dense_steps} steps, upcycled to MoE {MOE}; then
{ns.mimic_steps} steps (OneCycle, lr {ns.lr}) of CE or mimic; then {ns.cont_steps} more steps for every arm at a constant
lr {ns.cont_lr} (batch 32 sequences; DPO: 16 pairs). Seeds {ns.seeds}, mean ± std.

{presence}

## Held-out accuracy (after {ns.mimic_steps} + {ns.cont_steps} steps; stage-N rows after {ns.mimic_steps})

{markdown_table(["model", "n", *keys], rows)}

## Held-out preference pairs (stage N: after its N steps; the arms: end of the continuation)

log p = summed log-probability of the answer token and EOS; p = probability of the answer's first token;
p_other = the rest of that position's mass.

{markdown_table(["arm", *PREFERENCE], pref)}

## Trajectories during the continuation (mean over seeds; step 0 = the stage-N export)

{markdown_table(["arm", "step", "acc_all", "log p(chosen)", "log p(rejected)", "p_other"], traj)}

![log p(chosen) and log p(rejected)](llava_mod_logp.png)

DPO's training loss (mean of the logged steps, per seed; ln 2 = 0.693 is a zero margin over the teacher):
{", ".join(f"{mean_std(v for _, v in curve).mean:.4f}" for curve in result["dpo_train_loss"])}.
"""
    ns.out.mkdir(parents=True, exist_ok=True)
    write_keeping_reading(ns.out / "llava_mod.md", text)
    (ns.out / "llava_mod.json").write_text(json.dumps(result, indent=2) + "\n")
    curves = {f"{arm}: {key.split('_')[1]}": c[f"{key}_curves"] for arm, c in result["trajectories"].items()
              for key in ("logp_chosen", "logp_rejected")}
    plot_trajectories(curves, "held-out log p (answer + EOS)", ns.out / "llava_mod_logp.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--vision-steps", type=int, default=1000)
    parser.add_argument("--train-scenes", type=int, default=1500)
    parser.add_argument("--val-scenes", type=int, default=200)
    parser.add_argument("--teacher-steps", type=int, default=250)
    parser.add_argument("--teacher-lr", type=float, default=2e-3)
    parser.add_argument("--presence-bar", type=float, default=0.65, help="teacher presence accuracy for POPE")
    parser.add_argument("--dense-steps", type=int, default=100)
    parser.add_argument("--mimic-steps", type=int, default=150, help="N: stage N of every arm")
    parser.add_argument("--cont-steps", type=int, default=100, help="M: the continuation of every arm")
    parser.add_argument("--lr", type=float, default=1e-3, help="dense SFT and stage N (OneCycle)")
    parser.add_argument("--cont-lr", type=float, default=1e-4, help="every continuation (constant)")
    parser.add_argument("--evals", type=int, default=4, help="validations during the continuation")
    parser.add_argument("--out", type=Path, default=REPO / "docs/experiments")
    parser.add_argument("--work", type=Path, default=REPO / "artifacts/llava_mod_experiment")
    ns = parser.parse_args()
    ns.work = ns.work.resolve()
    os.chdir(REPO)
    began = time.perf_counter()
    if not (ns.work / "data/val_pairs.json").exists():
        subprocess.run([sys.executable, "-m", "recipes.llava_mod", "make-data", "--out", str(ns.work / "data"),
                        "--train-scenes", str(ns.train_scenes), "--val-scenes", str(ns.val_scenes)], check=True, cwd=REPO)
    ns.tower = vision(ns)
    try:
        teacher, dense, firsts, conts = pipeline(ns, ns.tower)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    t, baselines = final(teacher), [final(r) for r in dense]
    start = {(r.run.name, r.run.seed): final(r) for r in firsts}
    arms = {"dense student (common start, before MoE)": baselines,
            **{f"stage N: {name}": [final(r) for r in runs] for name, runs in by_arm(firsts).items()},
            **{arm: [final(r) for r in runs] for arm, runs in by_arm(conts).items()}}
    result = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(ns).items()}, "teacher": t,
              "tower_presence_acc": tower_presence_accuracy(ns.tower, ns.work / "data/val.json"),
              "teacher_trajectory": teacher.metrics().trajectories.get("val/acc_presence", []), "arms": arms,
              "trajectories": trajectories(conts, start),
              "dpo_train_loss": [r.metrics().trajectories.get("train/dpo", []) for r in by_arm(conts).get("mimic → DPO", [])], "num_val": len(json.loads((ns.work / "data/val.json").read_text())),
              "seconds": time.perf_counter() - began,
              "run_seconds": sum(r.seconds for r in [teacher, *dense, *firsts, *conts])}
    report(ns, result, "python scripts/experiment_llava_mod.py " + " ".join(sys.argv[1:]))
    print(f"report: {ns.out / 'llava_mod.md'}")


if __name__ == "__main__":
    main()
