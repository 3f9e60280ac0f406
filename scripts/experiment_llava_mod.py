"""LLaVA-MoD on digit-scene VQA with equal budgets: does mimic beat CE, and is DPO better than more mimic?

Every training stage is ``python -m lit_distill fit`` (+ ``export``) through :mod:`lit_distill.experiment`,
one run at a time by default (``--workers 1 --threads 1``: the machine is shared):

1. Data (:func:`datamodules.vlm.write_digit_vqa`, the question before the image tokens) and the
   frozen vision tower (``configs/vlm/llava_mod/tiny-vision_presence.yaml``: multi-label BCE on which
   digits a scene holds), exported; its head's held-out presence accuracy is reported.
2. Teacher: ``tiny-teacher_sft.yaml`` (one teacher, seed 0), exported, validated ``--teacher-evals``
   times (a trajectory). Its presence accuracy must reach ``--presence-bar`` or the POPE columns are
   dropped from the report (with the reason).
3. Dense student SFT per seed (the same config, the student's LM), exported, then sparse-upcycled
   (``python -m recipes.llava_mod upcycle``, routers seeded): the common start of every arm.
4. ``--mimic-steps`` N from the common start (stage-1 config; OneCycle over N steps) of CE, then
   ``--cont-steps`` M more CE steps at the constant ``--cont-lr`` ("SFT only", the student baseline).
   The teacher must beat every seed of that baseline by ``--teacher-margin`` held-out answer accuracy
   (the end of the students' budget), or the script stops with one line.
5. N steps of mimic (forward KL + CE + 0.01·aux; ``GradientShare`` logs the KL's share of the gradient)
   from the same start, then M steps at the same constant LR, batch 32 sequences: mimic (→ mimic),
   mimic → CE, mimic → DPO (β 0.1 against the teacher, 16 data pairs per step).
6. Held-out measurements of every final student against the teacher (:func:`recipes.llava_mod.teacher_gap`:
   KL(teacher ‖ student) and greedy agreement at the answer position, per question type).

Held-out metrics during training (``recipes.llava_mod.DigitVQAMetrics``, every validation, so every run
has a trajectory): answer accuracy per question type, POPE presence metrics, and the mean log p(chosen) /
log p(rejected) of the held-out preference pairs with the first answer token's mass on chosen, rejected
and every other token.

    python scripts/experiment_llava_mod.py [--seeds 0 1 2]
    python scripts/experiment_llava_mod.py --seeds 0 --teacher-steps 60 --teacher-lr 3e-3 --dense-steps 4 --lr 1e-5 \\
        --mimic-steps 4 --cont-steps 4 --evals 2 --train-scenes 20 --val-scenes 8 --vision-steps 30 --vision-scenes 64 \\
        --teacher-margin -1 --work /tmp/lm_smoke --out /tmp/lm_smoke/out   # the smoke this run was checked with
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from lit_distill.errors import ConfigError  # noqa: E402
from lit_distill.experiment import (  # noqa: E402
    Run,
    by_arm,
    expand,
    last_checkpoint,
    launch,
    markdown_table,
    mean_std,
    plot_trajectories,
    write_keeping_reading,
)
from recipes.llava_mod import load_model, teacher_gap, tower_presence_accuracy  # noqa: E402

CONFIGS = "configs/vlm/llava_mod"
VISION = f"{CONFIGS}/tiny-vision_presence.yaml"
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
GRADIENT_SHARE = ('--trainer.callbacks+={"class_path": "lit_distill.callbacks.GradientShare", '
                  '"init_args": {"every_n_steps": 25, "terms": ["kd", "ce"]}}')
QUIET = ["--trainer.enable_progress_bar=false", "--checkpoint.save_top_k=0"]
METRICS = ["acc_all", "acc_count", "acc_presence", "acc_position", "pope_acc", "pope_f1", "pope_yes_ratio",
           "false_yes_absent"]
PREFERENCE = ["logp_chosen", "logp_rejected", "p_chosen", "p_rejected", "p_other"]
GAP = ["kl_all", "kl_count", "kl_presence", "kl_position", "agree_all", "agree_position"]


def data_flags(work: Path, pairs: bool = False) -> list[str]:
    data = work / "data"
    train, val = ("train_pairs", "val_pairs") if pairs else ("train", "val")
    callback = ('{"class_path": "recipes.llava_mod.DigitVQAMetrics", "init_args": {"pairs_path": "%s"}}'
                % (data / "val_pairs.json"))
    return [f"--data.init_args.tokenizer={data / 'tokenizer'}", f"--data.init_args.train_path={data / f'{train}.json'}",
            f"--data.init_args.val_path={data / f'{val}.json'}", "--data.init_args.seed={seed}",
            f"--trainer.callbacks+={callback}", "--trainer.limit_val_batches=1", *QUIET]


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


def tower_flag(ns) -> str:
    return f"--model.init_args.student.init_args.vision.init_args.checkpoint={ns.tower}"


def vision_run(ns) -> Run:
    """The frozen tower of every VLM: multi-label digit presence, validated 4 times."""
    return Run("vision tower", [VISION], [*schedule(ns.vision_steps, None, evals=4), *QUIET,
                                          f"--data.init_args.train_scenes={ns.vision_scenes}"], group="vision", export=True)


def final(result, keys=METRICS + PREFERENCE) -> dict[str, float]:
    values = result.metrics().final
    return {key: values[f"val/{key}"] for key in keys}


def teacher_run(ns) -> Run:
    return Run("teacher", [TEACHER], [*data_flags(ns.work), tower_flag(ns), NO_TEACHER,
                                      *schedule(ns.teacher_steps, ns.teacher_lr, evals=ns.teacher_evals)],
               group="teacher", export=True)


def dense_run(ns) -> Run:
    return Run("dense student", [TEACHER], [*data_flags(ns.work), tower_flag(ns), NO_TEACHER, *schedule(ns.dense_steps, ns.lr),
                                             f"--model.init_args.student.init_args.lm_config={STUDENT_LM}"],
               group="dense", export=True)


def teacher_check(teacher: dict[str, float], students: list[dict[str, float]], margin: float = 0.0) -> str | None:
    """One-line failure message when the teacher's held-out answer accuracy does not beat every
    student baseline (the SFT-only students at the end of their budget) by ``margin``, else None."""
    best = max(s["acc_all"] for s in students)
    if teacher["acc_all"] > best + margin:
        return None
    return (f"teacher check failed: teacher answer acc {teacher['acc_all']:.3f} does not beat the student "
            f"baseline {best:.3f} by {margin}; train the teacher longer (--teacher-steps) or give the students less")


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


def clip(ns) -> list[str]:
    """The Trainer flag that clips the gradient norm at ``--clip`` (the authors' HF Trainer: 1.0), or none."""
    return [] if ns.clip is None else [f"--trainer.gradient_clip_val={ns.clip}"]


def stage_n(ns, name: str, teacher: Path) -> Run:
    """N steps (OneCycle) of CE or mimic from the upcycled common start (init_from brings the tower too)."""
    loss = "ce" if name == "ce" else "mimic"
    return Run(name, [STAGE1], [*data_flags(ns.work), *teacher_flags(teacher), *schedule(ns.mimic_steps, ns.lr, ns.evals),
                                tower_flag(ns), init(ns.work / "upcycled/seed{seed}"), f"--model.init_args.losses={LOSSES[loss]}",
                                *([NO_TEACHER] if loss == "ce" else [GRADIENT_SHARE]), *clip(ns)], group="stage_n", export=True)


def continuation(ns, name: str, loss: str, starts: dict, teacher: Path) -> list[Run]:
    """M steps at the constant continuation LR from each seed's stage-N export ``starts[seed]``."""
    config, pairs = (STAGE2, True) if loss == "dpo" else (STAGE1, False)
    flags = [*data_flags(ns.work, pairs), *teacher_flags(teacher), *schedule(ns.cont_steps, ns.cont_lr, ns.evals, False),
             "--model.init_args.optimizer.init_args.weight_decay=0.01", f"--model.init_args.losses={LOSSES[loss]}",
             *({"ce": [NO_TEACHER], "mimic": [GRADIENT_SHARE]}.get(loss, [])), *clip(ns)]
    if config == STAGE1:
        flags.append(tower_flag(ns))
    return [Run(name, [config], [*flags, init(starts[seed])], seed=seed, group="continuation") for seed in ns.seeds]


ARMS = [("mimic (→ mimic)", "mimic"), ("mimic → CE", "ce"), ("mimic → DPO", "dpo")]
SFT_ONLY = "SFT only (CE → CE)"


def pipeline(ns):
    """Tower → teacher → dense → upcycle → CE N → CE M; the teacher check; mimic N → the mimic continuations."""
    def run(runs):
        return launch(runs, ns.work, workers=ns.workers, cwd=REPO, threads=ns.threads)

    (tower,) = run([vision_run(ns)])
    ns.tower = tower.export_dir / "model_state_dict.pt"
    (teacher,) = run([teacher_run(ns)])
    teacher_dir = teacher.export_dir
    dense = run(expand([dense_run(ns)], ns.seeds))
    upcycled(ns, dense)
    ce = run(expand([stage_n(ns, "ce", teacher_dir)], ns.seeds))
    sft = run(continuation(ns, SFT_ONLY, "ce", {r.run.seed: r.export_dir for r in ce}, teacher_dir))
    print("teacher", final(teacher), "\nSFT only", [final(r) for r in sft], flush=True)
    failure = teacher_check(final(teacher), [final(r) for r in sft], ns.teacher_margin)
    if failure:
        raise SystemExit(failure)
    mimic = run(expand([stage_n(ns, "mimic", teacher_dir)], ns.seeds))
    starts = {r.run.seed: r.export_dir for r in mimic}
    conts = run([r for name, loss in ARMS for r in continuation(ns, name, loss, starts, teacher_dir)])
    return tower, teacher, dense, ce + mimic, sft + conts


def gaps(ns, teacher, arms: dict) -> dict[str, list[dict[str, float]]]:
    """:func:`recipes.llava_mod.teacher_gap` of every run's final student, by arm (cached in the work dir)."""
    from datamodules.vlm import VLMDataModule

    cache_path = ns.work / "teacher_gap.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    data = VLMDataModule(str(ns.work / "data/tokenizer"), str(ns.work / "data/val.json"), str(ns.work / "data/val.json"))
    reference = None
    for result in (r for runs in arms.values() for r in runs):
        if result.run.label not in cache:
            reference = reference or load_model(last_checkpoint(teacher.directory))
            cache[result.run.label] = teacher_gap(load_model(last_checkpoint(result.directory)), reference, data,
                                                  str(ns.work / "data/val_pairs.json"))
            cache_path.write_text(json.dumps(cache, indent=1))
    return {arm: [cache[r.run.label] for r in runs] for arm, runs in arms.items()}


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


def curve(runs, key: str) -> list[tuple[int, float, float]]:
    """``(optimizer step, mean, std)`` over seeds of a logged ``key`` at the steps every seed logged."""
    points = [dict(r.metrics().trajectories.get(key, [])) for r in runs]
    steps = sorted(set.intersection(*(set(p) for p in points)))
    stats = [mean_std(p[step] for p in points) for step in steps]
    return [(step + 1, stat.mean, stat.std) for step, stat in zip(steps, stats, strict=True)]


def report(ns, result: dict, command: str) -> None:
    pope = result["teacher"]["acc_presence"] >= ns.presence_bar
    keys = METRICS if pope else METRICS[:4]
    rows = [["teacher (dense, SFT)", 1, *(f"{result['teacher'][k]:.3f}" for k in keys)]]
    rows += [[arm, len(values), *(mean_std(v[k] for v in values).cell(3) for k in keys)] for arm, values in result["arms"].items()]
    gap = [[arm, *(mean_std(v[k] for v in values).cell(3) for k in GAP)] for arm, values in result["gaps"].items()]
    pref = [["teacher (the DPO reference)", *(f"{result['teacher'][k]:.3f}" for k in PREFERENCE)]]
    pref += [[arm, *(mean_std(v[k] for v in values).cell(3) for k in PREFERENCE)]
             for arm, values in result["arms"].items() if arm.startswith("stage N") or arm in result["trajectories"]]
    traj = [[arm, step, f"{acc:.3f}", f"{lc:.3f}", f"{lr:.3f}", f"{po:.3f}"] for arm, c in result["trajectories"].items()
            for (step, acc), (_, lc), (_, lr), (_, po) in zip(c["acc_all"], c["logp_chosen"], c["logp_rejected"],
                                                              c["p_other"], strict=True)]
    stage = [[arm, *(f"{m:.3f} ± {sd:.3f} @{step}" for step, m, sd in points)] for arm, points in result["stage_n_curves"].items()]
    t, tt, tower = result["teacher"], result["teacher_trajectory"], result["tower"]
    history = "; ".join(f"step {step}: {m:.3f}" for step, m, _ in tt["acc_all"])
    presence = ", ".join(f"{m:.3f}" for _, m, _ in tt["acc_presence"])
    best = max(v["acc_all"] for v in result["arms"][SFT_ONLY])
    check = (f"Teacher check: held-out answer accuracy {t['acc_all']:.3f} (during training: {history}) beats every seed "
             f"of the student baseline (SFT only, end of its {ns.mimic_steps + ns.cont_steps} steps; best seed {best:.3f}) "
             f"by more than {ns.teacher_margin}. Presence accuracy {t['acc_presence']:.3f} (bar {ns.presence_bar}; at "
             f"each validation: {presence}; the frozen tower's own digit head answers the same questions at "
             f"{result['tower_presence_acc']:.3f}): " + ("passed, so the POPE columns are reported." if pope else
             "**failed**, so the POPE columns are dropped: a teacher at chance on presence cannot teach it, and the "
             "students' POPE numbers would measure their yes/no prior, not hallucination."))
    shares = "; ".join(f"{arm}: {mean_std(v).cell(3)}" for arm, v in result["grad_share_kd"].items())
    text = f"""# LLaVA-MoD on digit-scene VQA: equal mimic budgets, then DPO vs mimic vs CE

Rerun: `{command}` (finished runs are skipped on a rerun; the runs' fit + export times sum to {result['run_seconds'] / 60:.0f} min,
{ns.workers} run(s) at a time, {ns.threads} thread(s) each, on a 2-core machine shared with other jobs).
Raw numbers: `llava_mod.json`; method: the script's docstring. Every stage is `python -m lit_distill fit`.

Setup: {ns.train_scenes} training scenes, {ns.val_scenes} held-out scenes ({result['num_val']} questions, held-out
handwriting), question before the image tokens. Vision tower: {ns.vision_steps} steps of multi-label BCE
(`tiny-vision_presence.yaml`), held-out label accuracy {tower['label_acc']:.3f}, exact digit set {tower['exact_set_acc']:.3f}.
Teacher LM 96 wide, 4 layers, {ns.teacher_steps} steps (OneCycle, lr {ns.teacher_lr}); student LM 48 wide, 2 layers:
dense SFT {ns.dense_steps} steps, upcycled to MoE {MOE}; then {ns.mimic_steps} steps (OneCycle, lr {ns.lr}) of CE or
mimic; then {ns.cont_steps} more steps for every arm at a constant lr {ns.cont_lr} (batch 32 sequences; DPO: 16 pairs).
Seeds {ns.seeds}, mean ± std.

{check}

## Held-out accuracy (after {ns.mimic_steps} + {ns.cont_steps} steps; stage-N rows after {ns.mimic_steps})

{markdown_table(["model", "n", *keys], rows)}

## Distance to the teacher on held-out questions (answer position)

KL(teacher ‖ student) over the whole vocabulary (nats) and the share of questions where the student's greedy
token is the teacher's (`recipes.llava_mod.teacher_gap`), all and per question type.

{markdown_table(["model", *GAP], gap)}

KL's share of the gradient norm (GradientShare, kd vs ce, mean of the logged steps per seed): {shares}.

## Stage N: held-out answer accuracy at each validation (mean ± std over seeds @ step)

{markdown_table(["arm", *(f"eval {i + 1}" for i in range(max(len(r) - 1 for r in stage)))], stage)}

## Held-out preference pairs (stage N: after its N steps; the arms: end of the continuation)

log p = summed log-probability of the answer token and EOS; p = probability of the answer's first token;
p_other = the rest of that position's mass.

{markdown_table(["arm", *PREFERENCE], pref)}

## Trajectories during the continuation (mean over seeds; step 0 = the stage-N export)

{markdown_table(["arm", "step", "acc_all", "log p(chosen)", "log p(rejected)", "p_other"], traj)}

![log p(chosen) and log p(rejected)](llava_mod_logp.png)

DPO's training loss (mean of the logged steps, per seed; ln 2 = 0.693 is a zero margin over the teacher):
{", ".join(f"{mean_std(v for _, v in c).mean:.4f}" for c in result["dpo_train_loss"])}.
"""
    ns.out.mkdir(parents=True, exist_ok=True)
    write_keeping_reading(ns.out / "llava_mod.md", text)
    (ns.out / "llava_mod.json").write_text(json.dumps(result, indent=2) + "\n")
    curves = {f"{arm}: {key.split('_')[1]}": c[f"{key}_curves"] for arm, c in result["trajectories"].items()
              for key in ("logp_chosen", "logp_rejected")}
    plot_trajectories(curves, "held-out log p (answer + EOS)", ns.out / "llava_mod_logp.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--seeds", type=int, nargs="+", default=[0, 1, 2])
    add("--vision-steps", type=int, default=1000)
    add("--vision-scenes", type=int, default=6000, help="training scenes of the vision tower")
    add("--train-scenes", type=int, default=1500)
    add("--val-scenes", type=int, default=200)
    add("--teacher-steps", type=int, default=3000)
    add("--teacher-lr", type=float, default=1e-3)
    add("--teacher-evals", type=int, default=6, help="validations of the teacher (its trajectory)")
    add("--teacher-margin", type=float, default=0.02, help="teacher acc over the best SFT-only seed")
    add("--presence-bar", type=float, default=0.65, help="teacher presence accuracy for POPE")
    add("--dense-steps", type=int, default=200)
    add("--mimic-steps", type=int, default=200, help="N: stage N of every arm")
    add("--cont-steps", type=int, default=100, help="M: the continuation of every arm")
    add("--lr", type=float, default=1e-3, help="dense SFT and stage N (OneCycle)")
    add("--cont-lr", type=float, default=1e-4, help="every continuation (constant)")
    add("--evals", type=int, default=4, help="validations during stage N and the continuation")
    add("--clip", type=float, default=None, help="gradient-norm clip of stage N and every continuation")
    add("--workers", type=int, default=1, help="runs at once")
    add("--threads", type=int, default=1, help="torch threads per run")
    add("--out", type=Path, default=REPO / "docs/experiments")
    add("--work", type=Path, default=REPO / "artifacts/llava_mod_experiment")
    ns = parser.parse_args()
    ns.work = ns.work.resolve()
    os.chdir(REPO)
    torch.set_num_threads(ns.threads)
    began = time.perf_counter()
    if not (ns.work / "data/val_pairs.json").exists():
        subprocess.run([sys.executable, "-m", "recipes.llava_mod", "make-data", "--out", str(ns.work / "data"),
                        "--train-scenes", str(ns.train_scenes), "--val-scenes", str(ns.val_scenes)], check=True, cwd=REPO)
    try:
        tower, teacher, dense, firsts, conts = pipeline(ns)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    start = {(r.run.name, r.run.seed): final(r) for r in firsts}
    rename = {"dense student": "dense student (common start, before MoE)", "ce": "stage N: ce", "mimic": "stage N: mimic"}
    named = {rename.get(arm, arm): runs for arm, runs in by_arm([*dense, *firsts, *conts]).items()}
    result = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(ns).items()}, "teacher": final(teacher),
              "tower": {k: tower.metrics().final[f"val/{k}"] for k in ("label_acc", "exact_set_acc", "bce")},
              "tower_presence_acc": tower_presence_accuracy(ns.tower, ns.work / "data/val.json"),
              "teacher_trajectory": {k: curve([teacher], f"val/{k}") for k in ("acc_all", "acc_presence")},
              "arms": {arm: [final(r) for r in runs] for arm, runs in named.items()}, "gaps": gaps(ns, teacher, named),
              "stage_n_curves": {arm: curve(runs, "val/acc_all") for arm, runs in named.items() if arm.startswith("stage N")},
              "grad_share_kd": {arm: [mean_std(v for _, v in r.metrics().trajectories["grad_share/kd"]).mean for r in runs]
                                for arm, runs in named.items() if arm in ("stage N: mimic", "mimic (→ mimic)")},
              "trajectories": trajectories(conts, start),
              "dpo_train_loss": [r.metrics().trajectories.get("train/dpo", []) for r in by_arm(conts).get("mimic → DPO", [])],
              "num_val": len(json.loads((ns.work / "data/val.json").read_text())), "seconds": time.perf_counter() - began,
              "run_seconds": sum(r.seconds for r in [tower, teacher, *dense, *firsts, *conts])}
    report(ns, result, "python scripts/experiment_llava_mod.py " + " ".join(sys.argv[1:]))
    print(f"report: {ns.out / 'llava_mod.md'}")


if __name__ == "__main__":
    main()
